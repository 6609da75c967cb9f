"""Connecting to Ray: a local single-node Ray by default, an existing cluster when an address is given.

Every stage that distributes work (feature preparation, Ray Train) calls `ensure_ray` and nothing else, so
the choice between laptop and cluster is one config value (`prepare.ray_address` / `--ray-address`).
"""

from __future__ import annotations

import logging
import os
from typing import Any


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Start (or attach to) Ray once per process; returns the `ray` module.

    address None starts a local Ray with `num_cpus` CPUs (default: all); "auto" or "ray://host:port"
    attaches to a running cluster.
    """
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # A local Ray's processes inherit these. Ray Serve kills an HTTP proxy whose readiness check takes > 5 s three
    # times in a row; on a busy 2-core machine starting the proxy's worker (its imports) alone can take 20 s.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "30")
    import ray

    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {
        "ignore_reinit_error": True,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    if address:
        kwargs["address"] = address
    else:  # a fresh local Ray even where RAY_ADDRESS or a `ray start` cluster exists: local means local
        kwargs["address"] = "local"
        kwargs["include_dashboard"] = False
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray
