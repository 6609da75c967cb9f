"""Loops that run beside the app as named Ray actors (the stream processor, the experiment monitor): one per
scenario and kind, found again by name, stopped with the app.

An actor is named `<prefix><scenario>` in the `recforge` namespace, so a second `start_app` of the same scenario
on this Ray finds the running one instead of starting a second loop that would race the first. It takes no Ray
CPU reservation (it would otherwise compete with the replicas for the cluster's slots and could wait unscheduled
on a small machine); its work is bounded by what it processes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from feature_store.secrets import scrub

log = logging.getLogger("recforge.serving")

NAMESPACE = "recforge"
_handles: dict[str, Any] = {}


def start_actor(cls: type, name: str, *args: Any) -> Any:
    """The named actor of `cls` on the connected Ray: the running one, else a new one built with `args` (its
    constructor starts the loop; `status()` answering means it runs)."""
    import ray

    actor = ray.remote(num_cpus=0)(cls).options(  # type: ignore[attr-defined]
        name=name, namespace=NAMESPACE, get_if_exists=True, max_restarts=-1)
    handle = actor.remote(*args)
    ray.get(handle.status.remote())
    _handles[name] = handle  # a named actor still goes when its last handle does; it lives while this process
    return handle


def stop_actors(prefix: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Stop (`stop(timeout)`, then kill) every actor named `prefix...` on the connected Ray; their last statuses."""
    import ray
    from ray.util import list_named_actors

    names = [a["name"] for a in list_named_actors(all_namespaces=True)
             if a.get("namespace") == NAMESPACE and a["name"].startswith(prefix)]
    out = []
    for name in names:
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            continue
        try:
            out.append(ray.get(handle.stop.remote(timeout), timeout=timeout + 10))
        except Exception as exc:
            log.warning("%s did not stop cleanly (%s)", name, scrub(str(exc)))
        ray.kill(handle, no_restart=True)
        _handles.pop(name, None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # gone, so that a start right after makes a new one
            try:
                ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                break
            time.sleep(0.1)
    return out
