"""Ingestion and the offline log: the one path every event takes into the bus, and from the bus into Parquet.

`ingest` checks a batch (feature_store.events.contract), publishes the accepted events as one bus entry and keeps
every rejected one with its reason in the dead-letter log; `POST /events` and `recforge events push` both call it.
`read_event_file` reads CSV / JSONL / Parquet files for push (replay, backfill): a line that is not an event is
rejected with its file and line, never skipped.

`OfflineLog` is the bus's second consumer group: it writes every accepted event (too-late ones included) to
Parquet, one folder per UTC day (`date=YYYY-MM-DD/part-<first entry>-<last entry>.parquet`, written to a
temporary name and renamed), then acknowledges. An entry written but not acknowledged (a kill in between) is
written again under another name; `read_log` keeps the first row of each `event_id`, which also drops a
client's repeated events, so the log read back holds every accepted event once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store import pseudonymise
from feature_store.config import FeatureStoreConfig
from feature_store.events.bus import Entry, EventBus
from feature_store.events.contract import Unreadable, check_events, concat, first_occurrence
from feature_store.events.scenario import log_dir

PUSH_CHUNK = 10_000  # events per bus entry when pushing a file


@dataclass
class IngestReport:
    received: int = 0
    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)

    def to_dict(self, max_rejected: int | None = None) -> dict[str, Any]:
        shown = self.rejected if max_rejected is None else self.rejected[:max_rejected]
        return {"received": self.received, "accepted": self.accepted, "rejected_count": len(self.rejected),
                "rejected": shown, "entries": self.entries}


def ingest(raws: Sequence[Any], cfg: FeatureStoreConfig, bus: EventBus, *,
           where: Sequence[str] | None = None, now: float | None = None, pseudonymised: bool = False) -> IngestReport:
    """Check `raws`, publish the accepted ones (one entry), keep the rejected ones; `where[i]` (e.g. "file:12")
    prefixes event i's reason. With `pseudonymisation.enabled`, user ids and personal context values become
    pseudonyms first (feature_store.pseudonymise), so neither the bus nor the dead-letter log holds a raw one;
    `pseudonymised`: the events already carry pseudonyms (the serving app's exposures)."""
    p = None if pseudonymised else pseudonymise.cached(cfg.pseudonymisation)
    if p is not None:
        raws = [dataclasses.replace(r, text=pseudonymise.WITHHELD) if isinstance(r, Unreadable) else p.event(r)
                for r in raws]
    checked = check_events(raws, cfg.events, now=now)
    report = IngestReport(received=len(raws), accepted=checked.accepted.num_rows)
    if checked.accepted.num_rows:
        report.entries.append(bus.publish(checked.accepted))
    if checked.rejected:
        dead = []
        for r in checked.rejected:
            reason = f"{where[r.index]}: {r.reason}" if where is not None and r.index >= 0 else r.reason
            dead.append((r.event_id, reason, r.event))
            report.rejected.append({"index": r.index, "event_id": r.event_id, "reason": reason})
        bus.reject(dead)
    return report


# ------------------------------------------------------------------------------------------------ files


def read_event_file(path: Path) -> Iterator[tuple[list[Any], list[str]]]:
    """Chunks of (raw events, "file:line" of each) from a .jsonl/.ndjson, .csv/.tsv or .parquet file. CSV and
    Parquet columns are the event's fields; `context.<key>` columns become context keys."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        yield from _jsonl(path)
        return
    if suffix in (".csv", ".tsv"):
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","))
        first_line = 2
    elif suffix in (".parquet", ".pq"):
        table = pq.read_table(path)
        first_line = 1
    else:
        raise ValueError(f"{path}: unknown event file type '{suffix}'; use .jsonl, .csv, .tsv or .parquet")
    ctx = [c for c in table.column_names if c.startswith("context.")]
    for start in range(0, table.num_rows, PUSH_CHUNK):
        rows = table.slice(start, PUSH_CHUNK).to_pylist()
        for row in rows:
            for c in ctx:
                v = row.pop(c)
                if v is not None:
                    row.setdefault("context", {})[c.removeprefix("context.")] = v
            for k in [k for k, v in row.items() if v is None and k in ("value", "context", "exposure_id")]:
                del row[k]
        label = "row" if first_line == 1 else "line"
        yield rows, [f"{path.name}:{label} {start + i + first_line}" for i in range(len(rows))]


def _jsonl(path: Path) -> Iterator[tuple[list[Any], list[str]]]:
    raws: list[Any] = []
    where: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                raws.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raws.append(Unreadable(f"not JSON ({exc.msg} at column {exc.colno})", line[:1000]))
            where.append(f"{path.name}:line {number}")
            if len(raws) >= PUSH_CHUNK:
                yield raws, where
                raws, where = [], []
    if raws:
        yield raws, where


def push(cfg: FeatureStoreConfig, bus: EventBus, path: Path, *, progress: Any = None) -> dict[str, Any]:
    """`recforge events push FILE`: every event of the file through `ingest`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such event file")
    t0 = time.perf_counter()
    total = IngestReport()
    for raws, where in read_event_file(path):
        report = ingest(raws, cfg, bus, where=where)
        total.received += report.received
        total.accepted += report.accepted
        total.rejected += report.rejected
        total.entries += report.entries
        if progress is not None:
            progress(report.received)
    out = total.to_dict(max_rejected=20)
    out.update(file=str(path), seconds=round(time.perf_counter() - t0, 3))
    return out


# ------------------------------------------------------------------------------------------ offline log


_UNSAFE = re.compile(r"[^0-9A-Za-z_-]")


class OfflineLog:
    """The offline log writer: the bus's `offline` group -> Parquet by UTC day (see the module docstring)."""

    GROUP = "offline"
    CONSUMER = "offline-log"

    def __init__(self, cfg: FeatureStoreConfig, bus: EventBus) -> None:
        self.cfg, self.bus, self.root = cfg, bus, log_dir(cfg)
        self.bus.ensure_group(self.GROUP)
        self._started = False
        self._held: list[Entry] = []  # read, not written yet: pending on the bus until `flush`
        self._held_events = 0
        self._held_since = 0.0

    def step(self, block_ms: int = 0, count: int = 256) -> int:
        """Take what the group has waiting; write (and acknowledge) once `events.log_flush_events` wait or the
        oldest waited `events.log_flush_s`. Returns the events written."""
        entries: list[Entry] = []
        if not self._started:
            self._started = True
            entries = self.bus.pending(self.GROUP, self.CONSUMER, count=count)
        if not entries:
            entries = self.bus.read(self.GROUP, self.CONSUMER, count=count, block_ms=block_ms)
        if entries:
            if not self._held:
                self._held_since = time.monotonic()
            self._held += entries
            self._held_events += sum(e.events.num_rows for e in entries)
        e = self.cfg.events
        if self._held and (self._held_events >= e.log_flush_events or
                           time.monotonic() - self._held_since >= e.log_flush_s):
            return self.flush()
        return 0

    def flush(self) -> int:
        """Write every held entry as one file per UTC day and acknowledge them; returns the events written."""
        if not self._held:
            return 0
        entries, self._held, self._held_events = self._held, [], 0
        events = concat([e.events for e in entries], self.cfg.events.id_type)
        self.write(events, f"{_UNSAFE.sub('_', entries[0].id)}-{_UNSAFE.sub('_', entries[-1].id)}")
        self.bus.ack(self.GROUP, [e.id for e in entries])
        return events.num_rows

    def write(self, events: pa.Table, name: str) -> None:
        days = pc.strftime(pc.cast(pc.multiply(events.column("ts"), 1_000_000), pa.timestamp("us", "UTC")),
                           format="%Y-%m-%d")
        for day in pc.unique(days).to_pylist():
            part = events.filter(pc.equal(days, day))
            folder = self.root / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"part-{name}.parquet"
            tmp = folder / f".{final.name}.{os.getpid()}.tmp"
            pq.write_table(part, tmp)
            tmp.replace(final)


def _entry_order(path: Path) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", path.stem.removeprefix("part-"))
    return tuple(int(n) for n in numbers)


def read_log(root: Path, id_type: str) -> pa.Table:
    """Every event of the offline log once (the first row of each `event_id`, in log order)."""
    files = sorted(root.glob("date=*/part-*.parquet"), key=lambda p: (_entry_order(p), p.parent.name))
    if not files:
        return concat([], id_type)
    table = concat([pq.read_table(f) for f in files], id_type)
    return table.filter(pa.array(first_occurrence(table.column("event_id"))))
