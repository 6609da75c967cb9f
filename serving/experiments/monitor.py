"""The experiment monitor beside the app: a Ray actor (serving.actors) that, for every running experiment, reads
its result from the offline event log every `allocation.update_s` and applies `manage.monitor_step` (guardrail
stops, Thompson sampling shares). It is the only writer of allocations while the app runs, so two replicas can
never disagree on who decides. Its failures are logged and kept in `status()`; the loop goes on (the serving
replicas keep the last allocation meanwhile)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from feature_store.secrets import scrub
from serving.actors import start_actor, stop_actors
from serving.config import AppSettings

log = logging.getLogger("recforge.serving")

PREFIX = "recforge-experiments-"
TICK_S = 1.0


class MonitorLoop:
    """The monitor's loop in a thread of this process (see the module docstring)."""

    def __init__(self, app: AppSettings) -> None:
        self.app = app
        self._stop = threading.Event()
        self.passes = 0
        self.actions: list[dict[str, Any]] = []
        self.last_error: str | None = None
        self._last: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="recforge-experiments", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from serving.experiments.manage import analyze_state, monitor_step, store_of

        while not self._stop.wait(TICK_S):
            try:
                now = time.time()
                for state in store_of(self.app).running():
                    if now - self._last.get(state.name, state.started_at) < state.definition.allocation.update_s:
                        continue
                    self._last[state.name] = now
                    res = analyze_state(self.app, state, now=now, looks=0)
                    for action in monitor_step(self.app, state, res, now=now):
                        self.actions = [*self.actions[-99:], {"experiment": state.name, **action}]
                        log.info("experiment %s: %s", state.name, action["reason"])
                self.passes += 1
            except Exception as exc:
                self.last_error = scrub(f"{type(exc).__name__}: {exc}")
                log.warning("experiment monitor: %s", self.last_error)

    def status(self) -> dict[str, Any]:
        return {"running": self._thread.is_alive(), "passes": self.passes, "last_error": self.last_error,
                "actions": self.actions[-10:]}

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout)
        return self.status()


def actor_name(scenario: str) -> str:
    return f"{PREFIX}{scenario}"


def start_monitor(app: AppSettings) -> Any:
    return start_actor(MonitorLoop, actor_name(app.name), app)


def stop_monitors(timeout: float = 30.0) -> list[dict[str, Any]]:
    return stop_actors(PREFIX, timeout)
