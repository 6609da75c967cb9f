"""The stream processor: events from the bus applied to the online features, exactly once in effect.

One step: take entries (first those this consumer left pending when it died, then those another consumer left
pending for `events.stream.reclaim_idle_s`, then new ones, up to `events.stream.max_batch_events`), drop what was
applied before, apply the rest with the view functions of `feature_store.events.features` to the stored rows of
the users and items they touch, and commit, in one online-store transaction, the changed rows, the applied event
ids and entry ids, and the processor's state (watermark, counters). Only then are the entries acknowledged.

Why that is exactly once: a commit is all or nothing; an entry acknowledged was committed; an entry committed
but not acknowledged (killed in between) comes back and is recognised by its id (nothing counted twice); an
event sent twice (a client's retry, another entry) is recognised by its `event_id` while the dedupe window
(`events.dedupe_window_s`, event time) remembers it, which is at least the allowed lateness: an event older than
that is too late anyway. A view rewritten by `recforge materialize` between the read and the commit aborts the
commit (VersionChanged) and the step is computed again from the new rows.

Lateness: the watermark is the newest event time applied. An event within `events.allowed_lateness_s` of it is
applied in event-time order (the views are functions of the events' times, not of arrival); an older one is
counted `too_late`, not applied, and stays in the offline log for the next batch job.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.config import FeatureStoreConfig
from feature_store.events.bus import Entry, EventBus
from feature_store.events.contract import concat, first_occurrence
from feature_store.events.features import (
    ACTIVITY_VIEW,
    HISTORY_VIEW,
    POPULARITY_VIEW,
    TAGS_VIEW,
    StreamFeatures,
    activity_view,
    combine_activity,
    combine_popularity,
    history_view,
    interactions,
    popularity_view,
    tags_view,
    with_attributes,
)
from feature_store.online.base import OnlineStore, StreamBusy, StreamCommit, VersionChanged, prepare_write

log = logging.getLogger(__name__)
GROUP = "online"  # the consumer group, also the name of the stream's state in the online store
OFFLINE_GROUP = "offline"  # the consumer group of the offline log writer
ENTRY_PREFIX = "entry:"  # applied-id marks of committed bus entries
MAX_RETRIES = 20


@dataclass
class StreamState:
    """What the processor commits with every batch (the online store keeps it under the group's name)."""

    watermark: int | None = None  # newest event time applied
    applied: int = 0
    duplicates: int = 0
    too_late: int = 0
    batches: int = 0
    entries: int = 0
    committed_at: float | None = None

    @classmethod
    def load(cls, doc: dict[str, Any] | None) -> StreamState:
        return cls(**doc) if doc else cls()


@dataclass
class StepReport:
    entries: int = 0
    events: int = 0
    applied: int = 0
    duplicates: int = 0
    too_late: int = 0
    redelivered: int = 0
    seconds: float = 0.0
    freshness_s: list[float] = field(default_factory=list)  # commit time - received_at, per applied event


CONSUMER = "processor"


def owner_id(consumer: str) -> str:
    """This processor's lease identity: host, pid and a random part (two processors of one process differ)."""
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex[:8],
                       "consumer": consumer}, separators=(",", ":"))


def _dead(holder: str) -> bool:
    """Whether `holder` (an `owner_id`) is a process of this host that no longer runs, or an earlier processor
    of this very process (left open): its lease can be taken at once instead of after it expires."""
    try:
        h = json.loads(holder)
    except ValueError:
        return False
    if not isinstance(h, dict) or h.get("host") != socket.gethostname() or not isinstance(h.get("pid"), int):
        return False
    if h["pid"] == os.getpid():
        return True
    try:
        os.kill(h["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def consumer_name() -> str:
    """The processor's consumer name: one and the same across restarts, so a restarted processor first takes
    back the entries it left pending, before any newer one, and the log order (which lateness is judged by) is
    kept. One processor runs per scenario; `reclaim` takes over entries of any other consumer name after
    `events.stream.reclaim_idle_s`."""
    return CONSUMER


class StreamProcessor:
    """Applies the bus's events to the online store (see the module docstring)."""

    def __init__(self, cfg: FeatureStoreConfig, store: OnlineStore, bus: EventBus, *,
                 consumer: str | None = None, on_commit: Callable[[], None] | None = None) -> None:
        self.cfg, self.store, self.bus = cfg, store, bus
        self.sf = StreamFeatures.from_config(cfg)
        self.consumer = consumer or consumer_name()
        self.on_commit = on_commit  # tests: a hook between the commit and the acknowledgement
        self.max_events = cfg.events.stream.max_batch_events
        self.bus.ensure_group(GROUP)
        self.bus.ensure_group(OFFLINE_GROUP)  # before any trim: the offline log must see every entry too
        self._last_prune = 0.0
        self._missing_views: set[str] = set()  # item views warned about once
        self._last_commit = 0.0  # time.monotonic() of the last commit (events.stream.min_interval_ms)
        self._started = False
        self._per_entry: float | None = None
        self.owner = owner_id(self.consumer)
        self.lease_ttl_s = cfg.events.stream.reclaim_idle_s
        self._renewed = 0.0  # time.monotonic() of the last lease claim

    # -------------------------------------------------------------------------------------------- the lease
    def _hold(self) -> None:
        """Take or renew the stream's lease (every third of its time to live): one processor per scenario."""
        if time.monotonic() - self._renewed < self.lease_ttl_s / 3:
            return
        holder = self.store.claim_stream(GROUP, self.owner, self.lease_ttl_s)
        if holder != self.owner and _dead(holder):
            log.info("stream: taking over the lease of %s (no longer running)", holder)
            holder = self.store.claim_stream(GROUP, self.owner, self.lease_ttl_s, steal_from=holder)
        if holder != self.owner:
            raise StreamBusy(f"another stream processor runs for this scenario ({holder}); stop it (`recforge "
                             f"stream run`, or the app started with events.stream.serve) or, if it died on "
                             f"another machine, wait events.stream.reclaim_idle_s ({self.lease_ttl_s:g} s)")
        self._renewed = time.monotonic()

    def close(self) -> None:
        """Give the lease up (another processor may start at once)."""
        self.store.release_stream(GROUP, self.owner)
        self._renewed = 0.0

    # -------------------------------------------------------------------------------------------- reading
    def _take(self, block_ms: int) -> list[Entry]:
        s = self.cfg.events.stream
        # entries per read, from the events per entry seen so far: a batch stays near max_batch_events
        per_entry = self._per_entry or float(self.max_events)  # one entry first, until sizes are known
        count = int(max(1, min(1000, self.max_events // max(1.0, per_entry))))
        if not self._started:  # entries this consumer name left pending (a restart under the same name)
            self._started = True
            mine = self.bus.pending(GROUP, self.consumer, count=count)
            if mine:
                return mine
        taken = self.bus.reclaim(GROUP, self.consumer, min_idle_s=s.reclaim_idle_s, count=count)
        if taken:
            return taken
        entries = self.bus.read(GROUP, self.consumer, count=count, block_ms=block_ms)
        total = sum(e.events.num_rows for e in entries)
        if entries:
            seen = total / len(entries)
            self._per_entry = seen if self._per_entry is None else 0.8 * self._per_entry + 0.2 * seen
        while entries and total < self.max_events:  # fill the batch with what is already there
            left = int(max(1, min(1000, (self.max_events - total) // max(1.0, self._per_entry))))
            more = self.bus.read(GROUP, self.consumer, count=left, block_ms=0)
            if not more:
                break
            entries += more
            total += sum(e.events.num_rows for e in more)
        return entries

    def step(self, block_ms: int | None = None) -> StepReport:
        """Take, apply and acknowledge one batch of entries (waits up to `block_ms` for the first)."""
        wait = self._last_commit + self.cfg.events.stream.min_interval_ms / 1000 - time.monotonic()
        if wait > 0 and block_ms is None:
            time.sleep(wait)
        self._hold()
        t0 = time.perf_counter()
        entries = self._take(self.cfg.events.stream.poll_ms if block_ms is None else block_ms)
        report = StepReport(entries=len(entries))
        if entries:
            for attempt in range(MAX_RETRIES):
                try:
                    self._apply(entries, report)
                    break
                except VersionChanged as exc:
                    log.info("stream: %s; recomputing the batch (attempt %d)", exc, attempt + 1)
                    report = StepReport(entries=len(entries))
            else:
                raise RuntimeError(f"stream: the online views changed under {MAX_RETRIES} consecutive commits; is "
                                   "a materialize rewriting them in a loop?")
            if self.on_commit is not None:
                self.on_commit()
            self.bus.ack(GROUP, [e.id for e in entries])
            self._last_commit = time.monotonic()
        self._maybe_prune()
        report.seconds = time.perf_counter() - t0
        return report

    # ------------------------------------------------------------------------------------------- applying
    def _entry_mark(self, entry: Entry) -> str:
        """The applied-id mark of a committed bus entry: its id qualified by the bus's identity, so that the
        entries of another bus (or of a bus file made again) with the same ids are not taken for redeliveries
        and skipped (entry ids of a SQLite bus count from 1 in every file)."""
        bus = self.bus.identity()
        return f"{ENTRY_PREFIX}{bus}:{entry.id}" if bus else ENTRY_PREFIX + entry.id

    def _apply(self, entries: list[Entry], report: StepReport) -> None:
        state = StreamState.load(self.store.stream_state(GROUP))
        entry_marks = [self._entry_mark(e) for e in entries]
        done = self.store.applied(GROUP, entry_marks)
        fresh = [e for e, d in zip(entries, done) if not d]
        report.redelivered = len(entries) - len(fresh)
        events = concat([e.events for e in fresh], self.cfg.events.id_type)
        report.events = events.num_rows
        if not fresh:
            return
        ids = events.column("event_id")
        first = first_occurrence(ids)
        seen = self.store.applied(GROUP, ids.to_pylist())
        dup = seen | ~first
        late = _too_late(events.column("ts").to_numpy(), ~dup, state.watermark,
                         self.cfg.events.allowed_lateness_s)
        keep = ~dup & ~late
        applied = events.filter(pa.array(keep))
        report.duplicates, report.too_late, report.applied = int(dup.sum()), int(late.sum()), int(keep.sum())
        upserts, new_rows = self._changes(applied) if applied.num_rows else ({}, {})
        if applied.num_rows:
            top = int(pc.max(applied.column("ts")).as_py())
            state.watermark = top if state.watermark is None else max(state.watermark, top)
        state.applied += report.applied
        state.duplicates += report.duplicates
        state.too_late += report.too_late
        state.batches += 1
        state.entries += len(fresh)
        state.committed_at = time.time()
        marks = [*applied.column("event_id").to_pylist(), *(self._entry_mark(e) for e in fresh)]
        marks_ts = [*applied.column("ts").to_pylist(), *([state.watermark or 0] * len(fresh))]
        self.store.commit_stream(GROUP, StreamCommit(upserts=upserts, new_rows=new_rows, applied_ids=marks,
                                                     applied_ts=marks_ts, state=asdict(state), owner=self.owner,
                                                     lease_ttl_s=self.lease_ttl_s))
        self._renewed = time.monotonic()
        if report.duplicates:
            dup_ids = events.filter(pa.array(dup)).column("event_id").to_pylist()
            self.bus.reject([(i, "event_id: already applied (a repeated event; not applied again)", None)
                             for i in dup_ids])
        received = applied.column("received_at").to_numpy()
        report.freshness_s = (state.committed_at - received).tolist()

    def _changes(self, applied: pa.Table) -> tuple[dict[str, tuple[Any, int]], dict[str, int]]:
        """The rows of every view the applied events change, computed from their stored rows + the events."""
        sf = self.sf
        rows = interactions(applied, sf)
        upserts: dict[str, tuple[Any, int]] = {}
        new_rows: dict[str, int] = {}
        users = pc.unique(rows.column(sf.user_key))
        items = pc.unique(rows.column(sf.item_key))
        current = self.store.entities()  # one listing per step; a view is created only when it is missing
        if sf.attribute_views:
            rows = with_attributes(rows, self._attributes(items, current), sf)

        def view_info(name: str, empty: pa.Table, key: str) -> Any:
            return current.get(name) or self.store.ensure_view(name, empty, key=key, ts_column="ts")

        # user views whose function takes the stored rows itself (None when the scenario has no such view)
        for name, view_fn in ((HISTORY_VIEW, history_view), (TAGS_VIEW, tags_view)):
            empty = view_fn(rows.slice(0, 0), sf)
            if empty is None:
                continue
            info = view_info(name, empty, sf.user_key)
            stored, found = self._stored(name, users, empty.schema)
            view = view_fn(rows, sf, stored=stored)
            assert view is not None
            self._add(upserts, new_rows, name, view, sf.user_key, info.version, view.num_rows - found)

        fresh = activity_view(rows, sf)
        info = view_info(ACTIVITY_VIEW, fresh.slice(0, 0), sf.user_key)
        stored, found = self._stored(ACTIVITY_VIEW, users, fresh.schema)
        view = combine_activity(stored, fresh, sf) if found else fresh
        self._add(upserts, new_rows, ACTIVITY_VIEW, view, sf.user_key, info.version, view.num_rows - found)

        fresh = popularity_view(rows, sf)
        info = view_info(POPULARITY_VIEW, fresh.slice(0, 0), sf.item_key)
        stored, found = self._stored(POPULARITY_VIEW, items, fresh.schema)
        view = combine_popularity(stored, fresh, sf) if found else fresh
        self._add(upserts, new_rows, POPULARITY_VIEW, view, sf.item_key, info.version, len(items) - found)
        return upserts, new_rows

    @staticmethod
    def _add(upserts: dict[str, tuple[Any, int]], new_rows: dict[str, int], name: str, view: pa.Table, key: str,
             version: int, added: int) -> None:
        upserts[name] = (prepare_write(name, view, key=key, ts_column="ts", ttl_seconds=None), version)
        new_rows[name] = max(0, added)

    def _attributes(self, items: pa.Array, current: dict[str, Any]) -> pa.Table:
        """The item attributes the views need (`StreamFeatures.attribute_views`), read from the online item views
        the batch job wrote: [item key, attribute...], null where the store has no value."""
        cols: dict[str, Any] = {self.sf.item_key: items}
        ids = items.to_pylist()
        for column, view in self.sf.attribute_views:
            info = current.get(view)
            if info is None or column not in info.features:
                if view not in self._missing_views:
                    self._missing_views.add(view)
                    log.warning("stream: online view '%s' with '%s' is missing (run `recforge materialize`); "
                                "events are applied without that attribute meanwhile", view, column)
                cols[column] = pa.nulls(len(ids), pa.string())
                continue
            got = self.store.read(view, ids, [column])
            cols[column] = pa.array(got.values[column], _arrow_type(info.features[column]))
        return pa.table(cols)

    def _stored(self, view: str, keys: pa.Array, schema: pa.Schema) -> tuple[pa.Table, int]:
        """The stored rows of `keys` in `view` (those it holds), typed as `schema`; and how many there were."""
        key = schema.names[0]
        names = schema.names[1:]
        got = self.store.read(view, keys.to_pylist(), names)
        found = np.zeros(len(keys), dtype=bool)
        for n in names:
            found |= np.asarray(got.status[n], dtype=object) == "present"
        take = pa.array(np.flatnonzero(found))
        cols = {key: keys.take(take)}
        for n in names:
            values = [v for v, f in zip(got.values[n], found) if f]
            cols[n] = pa.array(values, schema.field(n).type)
        return pa.table(cols, schema=schema), int(found.sum())

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < 60:
            return
        self._last_prune = now
        state = StreamState.load(self.store.stream_state(GROUP))
        if state.watermark is not None:
            self.store.prune_applied(GROUP, int(state.watermark - self.cfg.events.dedupe_window_s))
        self.bus.trim()

    def state(self) -> StreamState:
        return StreamState.load(self.store.stream_state(GROUP))


def _too_late(ts: np.ndarray, candidate: np.ndarray, watermark: int | None, lateness: float) -> np.ndarray:
    """Events older than the newest earlier event (in log order, the stored watermark included) by more than
    `lateness`. Decided event by event, so the answer does not depend on how the log was cut into batches."""
    prior = np.where(candidate, ts, np.iinfo(np.int64).min).astype(np.float64)
    prior = np.maximum.accumulate(np.concatenate([[-np.inf if watermark is None else float(watermark)], prior]))
    return candidate & (ts < prior[:-1] - lateness)


def _arrow_type(text: str) -> pa.DataType | None:
    """The Arrow type an online view records as text (None: let Arrow infer it from the values)."""
    try:
        return pa.type_for_alias(text)
    except ValueError:
        return None
