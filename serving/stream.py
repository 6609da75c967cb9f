"""The stream processor beside the app (`events.stream.serve: true`): a Ray actor that runs the same loop as
`recforge stream run` (feature_store.events.runner) until the app stops.

One actor per app, named after the scenario (serving.actors), so a second `start_app` of the same scenario on this
Ray finds it instead of starting a second processor that would race the first for the same consumer group. When
the loop fails (the bus or the store away for
longer than their retries), the actor logs why and starts it again after a backoff: nothing is lost meanwhile,
since unacknowledged entries stay pending on the bus and are taken up again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from feature_store.config import FeatureStoreConfig
from feature_store.secrets import scrub
from serving.actors import start_actor, stop_actors

log = logging.getLogger("recforge.stream")

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


PREFIX = "recforge-stream-"


def actor_name(scenario: str) -> str:
    return f"{PREFIX}{scenario}"


class StreamLoop:
    """The processor loop in a thread of this process, restarted after a failure (see module docstring)."""

    def __init__(self, cfg: FeatureStoreConfig) -> None:
        self.cfg = cfg
        self._stop = threading.Event()
        self.runs = 0
        self.last_error: str | None = None
        self.last_report: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, name="recforge-stream", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from feature_store.events.runner import run_stream

        failures = 0
        while not self._stop.is_set():
            self.runs += 1
            try:
                self.last_report = run_stream(self.cfg, stop=self._stop)
                failures = 0
            except Exception as exc:
                self.last_error = scrub(f"{type(exc).__name__}: {exc}")
                wait = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
                failures += 1
                log.warning("stream processor stopped (%s); starting it again in %.0f s", self.last_error, wait)
                self._stop.wait(wait)

    def status(self) -> dict[str, Any]:
        return {"running": self._thread.is_alive(), "runs": self.runs, "last_error": self.last_error}

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Stop after the batch in hand is committed and acknowledged; the last run's report."""
        self._stop.set()
        self._thread.join(timeout)
        return {**self.status(), "report": self.last_report}


def start_stream(scenario: str, cfg: FeatureStoreConfig) -> Any:
    """The scenario's processor actor on the connected Ray: the running one, else a new one."""
    return start_actor(StreamLoop, actor_name(scenario), cfg)


def stop_streams(timeout: float = 30.0) -> list[dict[str, Any]]:
    """Stop every processor actor started on the connected Ray (`start_stream`); their last statuses."""
    return stop_actors(PREFIX, timeout)
