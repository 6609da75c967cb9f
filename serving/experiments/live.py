"""Experiments inside a serving replica: which arm a request gets (`ExperimentRouter`), the arms' model versions
loaded beside the champion (`PinnedVersions`), and the exposures published to the event bus off the request path
(`ExposureLog`).

Nothing here may fail a request: the router answers None (the champion) whenever it cannot decide, and counts
why; a pinned version that is not loaded yet makes the ingress answer with the champion and log the exposure
without an arm (serving.app); exposures wait in a bounded queue while the bus is away, and any beyond
`experiments.max_pending_exposures` are counted as dropped in `GET /experiments`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.experiments.assign import in_slice, pick, traffic_salt, unit_point
from serving.experiments.store import ExperimentState, ExperimentStore

log = logging.getLogger("recforge.serving")
RETRY_S = 30.0  # a pinned version that failed to load is tried again after this long


@dataclass(frozen=True)
class ExperimentSource:
    """Where a replica reads the running experiments, how often, and the scenario (the traffic hash's salt)."""

    path: str
    poll_s: float
    scenario: str


@dataclass(frozen=True)
class Route:
    """The arm a request was assigned to and what it serves (registry versions; None = the served alias)."""

    experiment: str
    arm: str
    policy: str
    ranker: str | None
    retriever: str | None


@dataclass(frozen=True)
class _Live:
    state: ExperimentState
    shares: tuple[float, ...]
    salt: str


class ExperimentRouter:
    """Assigns requests to the running experiments' arms; the state is re-read every `poll_s` in a daemon thread
    and swapped as one reference (a request sees one consistent set of experiments).

    `ready(state)`: whether this replica has every arm's versions loaded. Until it does, the experiment's users
    get the champion here, outside the experiment (nothing is logged for them): otherwise the arms whose versions
    load later would lose their first users to the champion, and the split would be biased from the start."""

    def __init__(self, source: ExperimentSource, *, poll: bool = True,
                 ready: Callable[[ExperimentState], bool] | None = None) -> None:
        self.source = source
        self.ready = ready  # whether this replica can serve every arm of an experiment (its versions loaded)
        self._ready: set[str] = set()
        self.store = ExperimentStore(Path(source.path))
        self._live: tuple[_Live, ...] = ()
        self.errors = 0  # routing failures answered with the champion
        self.last_error: str | None = None
        self.refreshed_at: float | None = None
        self._stop = threading.Event()
        self.refresh()
        if poll:
            threading.Thread(target=self._poll, name="experiments-poll", daemon=True).start()

    def refresh(self) -> None:
        try:
            states = self.store.running()
        except Exception as exc:  # a broken or locked state file: keep what was read last
            self.last_error = f"reading {self.source.path}: {type(exc).__name__}: {exc}"
            log.warning("experiments: %s", self.last_error)
            return
        self._live = tuple(_Live(s, s.shares, s.definition.salt or s.name) for s in states)
        self.refreshed_at = time.time()

    def _poll(self) -> None:
        while not self._stop.wait(self.source.poll_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()

    def route(self, user_id: Any) -> Route | None:
        """The user's arm in the running experiment whose traffic slice holds them, or None (the champion)."""
        live = self._live
        if not live:
            return None
        try:
            point = unit_point(traffic_salt(self.source.scenario), user_id)
            for exp in live:
                t = exp.state.definition.traffic
                if not in_slice(point, t.offset, t.share):
                    continue
                if not self._is_ready(exp.state):
                    return None  # this replica joins the experiment once every arm's version is loaded
                arm = exp.state.arms[int(pick(unit_point(exp.salt, user_id), exp.shares))]
                return Route(exp.state.name, arm.name, arm.policy, arm.ranker, arm.retriever)
        except Exception as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
        return None

    def _is_ready(self, state: ExperimentState) -> bool:
        if self.ready is None or state.name in self._ready:
            return True
        if self.ready(state):
            self._ready.add(state.name)
            return True
        return False

    def versions(self, role: str) -> set[str]:
        """The registry versions the running experiments' arms pin for `role` ("ranker" | "retriever")."""
        return {v for exp in self._live for a in exp.state.arms if (v := getattr(a, role)) is not None}

    def status(self) -> dict[str, Any]:
        """`ready`: whether this replica routes the experiment's users to their arms yet (every arm's versions
        loaded here); until then it answers them with the champion."""
        return {"running": [{"name": e.state.name, "shares": dict(zip(e.state.arm_names, e.shares)),
                             "ready": self._is_ready(e.state)} for e in self._live],
                "refreshed_at": self.refreshed_at, "routing_errors": self.errors, "last_error": self.last_error}


class PinnedVersions:
    """The versions a model deployment serves besides its alias: one `ModelSlot` per version the running
    experiments pin, loaded in the background when an experiment starts and unloaded when it stops.

    `make_slot(version)` builds a (not yet started) slot for a version; `current(version)` is the loaded model
    of that version, or None while it loads (the ingress then serves the champion)."""

    def __init__(self, role: str, source: ExperimentSource, alias_slot: Any,
                 make_slot: Callable[[str], Any]) -> None:
        self.role = role
        self.alias_slot = alias_slot
        self.make_slot = make_slot
        self.router = ExperimentRouter(source, poll=False)  # refreshed by this object's own thread
        self._slots: dict[str, Any] = {}
        self._tried: dict[str, float] = {}
        self._stop = threading.Event()
        self.sync()
        self._thread = threading.Thread(target=self._poll, name=f"pinned-{role}", daemon=True)
        self._thread.start()

    def has(self, version: str | None) -> bool:
        """Whether `version` can be served now (None: the alias's)."""
        return version is None or self.current(version) is not None

    def current(self, version: str | None) -> Any:
        champion = self.alias_slot.current()
        if version is None or (champion is not None and champion.ref.version == version):
            return champion
        slot = self._slots.get(version)
        return slot.current() if slot is not None else None

    def loaded(self) -> list[Any]:
        """The pinned versions loaded now."""
        return [m for s in list(self._slots.values()) if (m := s.current()) is not None]

    def sync(self) -> None:
        """Load the versions newly pinned, unload those no running experiment needs."""
        want = self.router.versions(self.role)
        now = time.monotonic()
        for version in sorted(want - set(self._slots)):
            slot = self.make_slot(version)
            self._tried[version] = now
            slot.check()
            self._slots[version] = slot
        for version, slot in self._slots.items():  # a failed load is retried, at most every RETRY_S
            if slot.current() is None and now - self._tried.get(version, 0.0) >= RETRY_S:
                self._tried[version] = now
                slot.check(force=True)
        for version in set(self._slots) - want:
            self._slots.pop(version).stop()

    def _poll(self) -> None:
        while not self._stop.wait(self.router.source.poll_s):
            self.router.refresh()
            with contextlib.suppress(Exception):  # a failed load is kept in its slot's last_error
                self.sync()

    def stop(self) -> None:
        self._stop.set()
        self.router.stop()
        for slot in self._slots.values():
            slot.stop()

    def status(self) -> dict[str, Any]:
        return {v: {"loaded": s.current() is not None, "last_error": s.last_error} for v, s in self._slots.items()}


class ExposureLog:
    """Exposure events handed over by the request path (`put`, a deque append) and published to the event bus by
    a daemon thread in batches gathered for `idle_s` (`publish(events) -> rejected count`, raising OSError while
    the bus is away).
    Events wait while the bus is away; above `max_pending` the oldest are dropped and counted."""

    def __init__(self, publish: Callable[[list[dict[str, Any]]], int], max_pending: int, batch: int = 1000,
                 idle_s: float = 0.5) -> None:
        self._publish = publish
        self.max_pending = max_pending
        self.batch = batch
        self.idle_s = idle_s
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.queued = self.published = self.rejected = self.dropped = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="exposure-log", daemon=True)
        self._thread.start()

    def put(self, events: list[dict[str, Any]]) -> None:
        self._queue.extend(events)
        self.queued += len(events)
        over = len(self._queue) - self.max_pending
        for _ in range(max(over, 0)):
            with contextlib.suppress(IndexError):
                self._queue.popleft()
                self.dropped += 1

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            if len(self._queue) < self.batch:  # gather: one bus entry per `idle_s`, not one per answer (every
                self._stop.wait(self.idle_s)   # entry costs the stream processor a commit)
            if not self._queue:
                continue
            n = min(len(self._queue), self.batch)
            chunk = [self._queue[i] for i in range(n)]
            try:
                self.rejected += self._publish(chunk)
            except Exception as exc:  # the bus is away: keep the events, retry with a growing pause
                self.last_error = f"{type(exc).__name__}: {exc}"
                backoff = min(max(backoff * 2, 0.1), 5.0)
                self._stop.wait(backoff)
                continue
            backoff = 0.0
            for _ in range(n):
                self._queue.popleft()
            self.published += n

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is published (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue

    def stop(self) -> None:
        self.flush(2.0)
        self._stop.set()

    def status(self) -> dict[str, Any]:
        return {"queued": self.queued, "published": self.published, "rejected": self.rejected,
                "dropped": self.dropped, "pending": len(self._queue), "last_error": self.last_error}


def exposure_events(exposure_id: str, user_id: Any, items: list[Any], route: Route | None, versions: dict[str, str],
                    event_type: str, now: float, max_value_length: int = 1024) -> list[dict[str, Any]]:
    """An answer's exposure in the event contract's shape: one event per answer (not per shown item: measured,
    ten events per answer made the bus and the stream processor cost /recommend a third of its p99 on 2 cores,
    docs/benchmarks.md), `item_id` the first shown item, the shown items in order as JSON text in
    `context.items`, the experiment, arm and versions in `context`. A list longer than the contract's
    `max_value_length` is split over several events `<exposure_id>.<n>` (`context.offset`: the position of
    their first item, 0-based). Nothing shown, nothing logged."""
    if not items:
        return []
    context: dict[str, Any] = {"experiment": route.experiment if route else None, "arm": route.arm if route else None,
                               **{f"{role}_version": v for role, v in versions.items()}}
    chunks: list[tuple[int, list[Any]]] = []
    start = 0
    while start < len(items):
        end = start + 1
        while end < len(items) and len(json.dumps(items[start:end + 1])) <= max_value_length:
            end += 1
        chunks.append((start, items[start:end]))
        start = end
    return [{"event_id": exposure_id if n == 0 else f"{exposure_id}.{n}", "ts": now, "user_id": user_id,
             "item_id": part[0], "type": event_type, "exposure_id": exposure_id,
             "context": {**context, "items": json.dumps(part), "offset": offset}}
            for n, (offset, part) in enumerate(chunks)]
