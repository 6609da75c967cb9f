"""The embedded event bus: consumer groups over a durable log in one SQLite file (WAL mode).

Tables: `entries(id, payload, n, added)` is the log (AUTOINCREMENT: an id is never reused, also after a trim);
`groups(name, last_id)` is each group's last delivered entry; `pending(grp, id, consumer, delivered, deliveries)`
what was read and not acknowledged; `rejected(...)` the dead-letter log. A publish is one INSERT committed with
`synchronous=FULL`, so an accepted batch survives a power cut, not only a killed process. A read moves a group's
`last_id` and records the pending rows in one IMMEDIATE transaction, so two consumers of one group never get the
same entry. Readers wait by polling `max(id)` (a read-only query on the WAL snapshot, about 10 us) every
millisecond or so until `block_ms` ends.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from feature_store.events.bus import Entry, EventBus, decode, encode, reason_kind, rejected_text

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL,
                                    n INTEGER NOT NULL, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (grp TEXT NOT NULL, id INTEGER NOT NULL, consumer TEXT NOT NULL,
                                    delivered REAL NOT NULL, deliveries INTEGER NOT NULL, PRIMARY KEY (grp, id));
CREATE TABLE IF NOT EXISTS rejected (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, event_id TEXT,
                                     kind TEXT NOT NULL, reason TEXT NOT NULL, event TEXT);
"""
POLL_S = 0.001  # the first pause of a read that found nothing
IDLE_POLL_S = 0.016  # the longest, reached after a few empty polls in a row (see `SQLiteBus.read`)


class SQLiteBus(EventBus):
    """Event bus in one SQLite file; one connection per instance, safe to share between threads."""

    name = "sqlite"

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._pause = POLL_S  # the next pause of an empty read; doubles while the bus stays empty
        try:
            self._con = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.executescript(SCHEMA)
            self._con.execute("INSERT OR IGNORE INTO meta VALUES ('identity', ?)", (uuid.uuid4().hex,))
            self._identity = str(self._con.execute("SELECT v FROM meta WHERE k = 'identity'").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise sqlite3.DatabaseError(f"event bus '{self.path}': cannot open it as SQLite ({exc}); point "
                                        "events.bus.path at a new file or a bus this tool wrote") from exc

    def __repr__(self) -> str:
        return f"SQLiteBus({str(self.path)!r})"

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def identity(self) -> str:
        """A random id made when the file was created: entry ids count from 1 in every bus file, so another bus
        (or this path's file deleted and made again) reuses them."""
        return self._identity

    def _tx(self) -> _Tx:
        return _Tx(self._con, self._lock)

    def publish(self, events: pa.Table) -> str:
        payload = encode(events)
        with self._tx() as con:
            cur = con.execute("INSERT INTO entries (payload, n, added) VALUES (?, ?, ?)",
                              (payload, events.num_rows, time.time()))
        return str(cur.lastrowid)

    def ensure_group(self, group: str) -> None:
        with self._tx() as con:
            con.execute("INSERT OR IGNORE INTO groups (name, last_id) VALUES (?, 0)", (group,))

    def _last_id(self, group: str) -> int:
        row = self._con.execute("SELECT last_id FROM groups WHERE name = ?", (group,)).fetchone()
        if row is None:
            raise KeyError(f"event bus: no consumer group '{group}' (ensure_group first)")
        return int(row[0])

    def read(self, group: str, consumer: str, *, count: int, block_ms: int) -> list[Entry]:
        deadline = time.monotonic() + block_ms / 1000
        while True:
            with self._lock:
                newest = self._con.execute("SELECT max(id) FROM entries").fetchone()[0] or 0
                if newest > self._last_id(group):
                    with self._tx() as con:
                        last = self._last_id(group)
                        rows = con.execute("SELECT id, payload FROM entries WHERE id > ? ORDER BY id LIMIT ?",
                                           (last, count)).fetchall()
                        if rows:
                            now = time.time()
                            con.executemany("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, 1)",
                                            [(group, r[0], consumer, now) for r in rows])
                            con.execute("UPDATE groups SET last_id = ? WHERE name = ?", (rows[-1][0], group))
                    if rows:
                        self._pause = POLL_S
                        return [Entry(str(i), decode(p)) for i, p in rows]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            # SQLite cannot wake a reader, so an empty bus is polled: every 1 ms while events flow, backing off to
            # IDLE_POLL_S while none come. Why: the stream loop and its log writer each polled at 1 ms, about 70 ms
            # of CPU per second on an idle bus beside the serving replicas (2-core machine, docs/benchmarks.md,
            # Experiments); an event on an idle bus waits at most IDLE_POLL_S more.
            time.sleep(min(self._pause, left))
            self._pause = min(self._pause * 2, IDLE_POLL_S)

    def pending(self, group: str, consumer: str, *, count: int) -> list[Entry]:
        with self._lock:
            rows = self._con.execute(
                "SELECT p.id, e.payload FROM pending p JOIN entries e ON e.id = p.id "
                "WHERE p.grp = ? AND p.consumer = ? ORDER BY p.id LIMIT ?", (group, consumer, count)).fetchall()
        return [Entry(str(i), decode(p)) for i, p in rows]

    def reclaim(self, group: str, consumer: str, *, min_idle_s: float, count: int) -> list[Entry]:
        with self._tx() as con:
            rows = con.execute(
                "SELECT p.id, e.payload FROM pending p JOIN entries e ON e.id = p.id "
                "WHERE p.grp = ? AND p.delivered <= ? ORDER BY p.id LIMIT ?",
                (group, time.time() - min_idle_s, count)).fetchall()
            con.executemany("UPDATE pending SET consumer = ?, delivered = ?, deliveries = deliveries + 1 "
                            "WHERE grp = ? AND id = ?", [(consumer, time.time(), group, r[0]) for r in rows])
        return [Entry(str(i), decode(p)) for i, p in rows]

    def ack(self, group: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._tx() as con:
            con.executemany("DELETE FROM pending WHERE grp = ? AND id = ?", [(group, int(i)) for i in ids])

    def lag(self, group: str) -> dict[str, int]:
        with self._lock:
            last = self._last_id(group)
            pending = self._con.execute("SELECT count(*) FROM pending WHERE grp = ?", (group,)).fetchone()[0]
            unread = self._con.execute("SELECT count(*) FROM entries WHERE id > ?", (last,)).fetchone()[0]
        return {"pending": int(pending), "unread": int(unread)}

    def trim(self) -> int:
        with self._tx() as con:
            groups = con.execute("SELECT name, last_id FROM groups").fetchall()
            if not groups:
                return 0
            floor = min(last for _, last in groups)  # entries after it are unread by some group
            oldest = con.execute("SELECT min(id) FROM pending").fetchone()[0]
            if oldest is not None:
                floor = min(floor, int(oldest) - 1)
            cur = con.execute("DELETE FROM entries WHERE id <= ?", (floor,))
        return int(cur.rowcount or 0)

    def reject(self, rejected: Sequence[tuple[str | None, str, Any]]) -> None:
        if not rejected:
            return
        now = time.time()
        with self._tx() as con:
            con.executemany("INSERT INTO rejected (at, event_id, kind, reason, event) VALUES (?, ?, ?, ?, ?)",
                            [(now, eid, reason_kind(reason), reason, rejected_text(event))
                             for eid, reason, event in rejected])

    def rejected(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._con.execute("SELECT at, event_id, reason, event FROM rejected ORDER BY seq DESC LIMIT ?",
                                     (limit,)).fetchall()
        return [{"at": at, "event_id": eid, "reason": reason, "event": event} for at, eid, reason, event in rows]

    def rejected_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._con.execute("SELECT kind, count(*) FROM rejected GROUP BY kind ORDER BY 2 DESC").fetchall()
        return {k: int(n) for k, n in rows}

    def close(self) -> None:
        with self._lock:
            self._con.close()


class _Tx:
    """An IMMEDIATE transaction under the instance lock: committed on exit, rolled back on an exception."""

    def __init__(self, con: sqlite3.Connection, lock: threading.RLock) -> None:
        self.con, self.lock = con, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.con.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.con

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.con.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.lock.release()
