"""`recforge stream run`: the stream processor and the offline log writer in one loop, until stopped.

Each turn applies one batch to the online store (waiting up to `events.stream.poll_ms` for events) and writes
what the offline group has waiting to the log. It stops on SIGINT/SIGTERM (after the batch in hand is committed
and acknowledged), after `seconds`, or with `until_idle` once both groups have nothing left. The report holds
the counts, the rates and the freshness of the applied events (commit time - the time they were accepted).
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import numpy as np

from feature_store import progress
from feature_store.config import FeatureStoreConfig
from feature_store.events.ingest import OfflineLog
from feature_store.events.processor import GROUP, StreamProcessor
from feature_store.events.scenario import open_bus
from feature_store.online import describe_store, open_store


class _LogThread:
    """The offline log writer on its own bus connection and thread, so that writing a file (up to
    `events.log_flush_events` events to Parquet) never holds up the processor's next batch: on one loop, every
    flush delayed the events arriving meanwhile by its duration (freshness p99 on Redis, docs/benchmarks.md)."""

    def __init__(self, cfg: FeatureStoreConfig) -> None:
        self.poll_ms = cfg.events.stream.poll_ms
        self.bus = open_bus(cfg)
        self.log = OfflineLog(cfg, self.bus)
        self.logged = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recforge-event-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.logged += self.log.step(block_ms=self.poll_ms)
            self.logged += self.log.flush()
        except BaseException as exc:  # raised in the stream's thread by `check` / `stop`
            self.error = exc
        finally:
            self.bus.close()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def stop(self) -> int:
        """Write what is held, stop; the events written in all."""
        self._stop.set()
        self._thread.join()
        self.check()
        return self.logged


def run_stream(cfg: FeatureStoreConfig, *, seconds: float | None = None, until_idle: bool = False,
               stop: threading.Event | None = None) -> dict[str, Any]:
    stop = stop or threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    t0 = time.perf_counter()
    totals = {"entries": 0, "events": 0, "applied": 0, "duplicates": 0, "too_late": 0, "redelivered": 0,
              "logged": 0}
    fresh: list[float] = []
    try:
        with open_store(cfg) as store, open_bus(cfg) as bus, progress.step("stream", unit="events") as prog:
            proc = StreamProcessor(cfg, store, bus)
            writer = _LogThread(cfg)
            try:
                _loop(proc, writer, bus, prog, totals, fresh, stop, t0, seconds, until_idle)
            finally:
                totals["logged"] = writer.stop()
            proc.close()
            state = proc.state()
            lag = bus.lag(GROUP)
            bus_text = getattr(bus, "describe", lambda: bus.name)()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    elapsed = time.perf_counter() - t0
    q = np.quantile(np.asarray(fresh), [0.5, 0.99]) * 1000 if fresh else [None, None]
    return {"store": describe_store(cfg), "bus": bus_text, "seconds": round(elapsed, 3), **totals,
            "events_per_second": round(totals["applied"] / elapsed, 1) if elapsed > 0 else None,
            "freshness_ms": {"p50": None if q[0] is None else round(float(q[0]), 2),
                             "p99": None if q[1] is None else round(float(q[1]), 2)},
            "state": {"watermark": state.watermark, "applied": state.applied, "duplicates": state.duplicates,
                      "too_late": state.too_late},
            "lag": lag}


def _loop(proc: StreamProcessor, writer: _LogThread, bus: Any, prog: Any, totals: dict[str, int],
          fresh: list[float], stop: threading.Event, t0: float, seconds: float | None, until_idle: bool) -> None:
    """Apply batches until stopped, `seconds` passed, or (`until_idle`) both groups have nothing left to read."""
    while not stop.is_set():
        writer.check()
        rep = proc.step()
        for k in ("entries", "events", "applied", "duplicates", "too_late", "redelivered"):
            totals[k] += getattr(rep, k)
        fresh += rep.freshness_s
        if rep.events:
            prog.advance(rep.events, applied=totals["applied"])
        if seconds is not None and time.perf_counter() - t0 >= seconds:
            return
        # the log writer's held entries stay pending until its last flush: only its unread ones count
        if until_idle and not rep.entries and not any(bus.lag(GROUP).values()) \
                and not bus.lag(OfflineLog.GROUP)["unread"]:
            return
