"""The embedded online store: one SQLite file (stdlib sqlite3, WAL mode), one table per entity version.

Layout: a metadata table `recforge_online_entities(name, table_name, info)` points each entity at the table
that holds its current version; that table has one row per key: `key TEXT PRIMARY KEY, ts, f0, f1, ...`
(feature i's JSON text in column f<i>, NULL for a null value; names and types live in `info`).

A write runs in one IMMEDIATE transaction: create a fresh table, fill it with `executemany` batch by batch,
flip the pointer row, drop the previous table, commit. Until the commit, readers (other connections and
processes) keep reading the previous version; an exception rolls the transaction back and a killed process
leaves a journal SQLite rolls back on the next open, so the previous version always stays complete.
Reads run in one read transaction (a WAL snapshot): pointer and rows come from the same version.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.online.base import (
    EntityInfo,
    Fetched,
    LeaseLost,
    OnlineFeatures,
    OnlineStore,
    PreparedWrite,
    StreamCommit,
    VersionChanged,
    normalize_id,
    normalize_ids,
    unknown_entity,
)

META_TABLE = "recforge_online_entities"
APPLIED_TABLE = "recforge_stream_applied"  # (stream, event id, event ts): the dedupe window
STATE_TABLE = "recforge_stream_state"  # (stream, JSON state)
LEASE_TABLE = "recforge_stream_lease"  # (stream, owner, expires): one processor per stream
READ_CHUNK = 500  # keys per `IN (...)`: far below SQLite's bound-parameter limit


class SQLiteOnlineStore(OnlineStore):
    """Online store in one SQLite file; safe to share between threads (one connection, one lock).

    Within one instance a write holds the lock, so its reads wait; other instances and processes (e.g. the
    serving replicas) keep reading the previous version while it runs.

    Args:
        path: the database file (created with its parent folders when absent).
        timeout: seconds a writer waits for another process's write lock before failing.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._con = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")
            self._con.execute(
                f"CREATE TABLE IF NOT EXISTS {META_TABLE} "
                "(name TEXT PRIMARY KEY, table_name TEXT NOT NULL, info TEXT NOT NULL)"
            )
            self._con.execute(f"CREATE TABLE IF NOT EXISTS {APPLIED_TABLE} (stream TEXT NOT NULL, id TEXT NOT NULL, "
                              "ts INTEGER NOT NULL, PRIMARY KEY (stream, id)) WITHOUT ROWID")
            self._con.execute(f"CREATE INDEX IF NOT EXISTS {APPLIED_TABLE}_ts ON {APPLIED_TABLE} (stream, ts)")
            self._con.execute(f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (name TEXT PRIMARY KEY, state TEXT NOT NULL)")
            self._con.execute(f"CREATE TABLE IF NOT EXISTS {LEASE_TABLE} (stream TEXT PRIMARY KEY, "
                              "owner TEXT NOT NULL, expires REAL NOT NULL)")
        except sqlite3.DatabaseError as exc:
            raise sqlite3.DatabaseError(
                f"online store '{self.path}': cannot open it as SQLite ({exc}); point online_store.path at "
                "a new file or an online store this tool wrote"
            ) from exc

    def __repr__(self) -> str:
        return f"SQLiteOnlineStore({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------- writes
    def _write_prepared(self, prepared: PreparedWrite) -> None:
        n_feat = len(prepared.feature_columns)
        table_name = f"fv_{uuid.uuid4().hex}"
        cols = "".join(f", f{i}" for i in range(n_feat))
        insert = f"INSERT INTO {table_name} VALUES (?, ?{', ?' * n_feat})"
        entity = prepared.info.name
        with self._lock:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute(f"CREATE TABLE {table_name} (key TEXT PRIMARY KEY, ts{cols}) WITHOUT ROWID")
                for keys, ts, feats in prepared.batches():
                    con.executemany(insert, zip(keys, ts, *feats))
                old = con.execute(
                    f"SELECT table_name, info FROM {META_TABLE} WHERE name = ?", (entity,)
                ).fetchone()
                version = EntityInfo.from_json(old[1]).version + 1 if old else 1
                info = replace(prepared.info, version=version, written_at=time.time())
                con.execute(
                    f"INSERT OR REPLACE INTO {META_TABLE} (name, table_name, info) VALUES (?, ?, ?)",
                    (entity, table_name, info.to_json()),
                )
                if old:
                    con.execute(f"DROP TABLE IF EXISTS {old[0]}")
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------------------------------- stream
    def _commit_stream(self, stream: str, commit: StreamCommit) -> None:
        with self._lock:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                if commit.owner is not None:
                    held = con.execute(f"SELECT owner FROM {LEASE_TABLE} WHERE stream = ?", (stream,)).fetchone()
                    if held is None or held[0] != commit.owner:
                        raise LeaseLost(f"stream '{stream}': the lease is held by {held[0] if held else 'nobody'}")
                    con.execute(f"UPDATE {LEASE_TABLE} SET expires = ? WHERE stream = ?",
                                (time.time() + commit.lease_ttl_s, stream))
                for entity, (prepared, version) in commit.upserts.items():
                    row = con.execute(f"SELECT table_name, info FROM {META_TABLE} WHERE name = ?",
                                      (entity,)).fetchone()
                    if row is None:
                        raise unknown_entity(entity, [r[0] for r in con.execute(f"SELECT name FROM {META_TABLE}")])
                    info = EntityInfo.from_json(row[1])
                    if info.version != version:
                        raise VersionChanged(f"online view '{entity}' is at version {info.version}, the stream "
                                             f"read version {version}")
                    n_feat = len(prepared.feature_columns)
                    insert = f"INSERT OR REPLACE INTO {row[0]} VALUES (?, ?{', ?' * n_feat})"
                    for keys, ts, feats in prepared.batches():
                        con.executemany(insert, zip(keys, ts, *feats))
                    added = commit.new_rows.get(entity, 0)
                    if added:
                        con.execute(f"UPDATE {META_TABLE} SET info = ? WHERE name = ?",
                                    (replace(info, rows=info.rows + added).to_json(), entity))
                con.executemany(f"INSERT OR IGNORE INTO {APPLIED_TABLE} VALUES (?, ?, ?)",
                                zip([stream] * len(commit.applied_ids), commit.applied_ids, commit.applied_ts))
                con.execute(f"INSERT OR REPLACE INTO {STATE_TABLE} VALUES (?, ?)", (stream, json.dumps(commit.state)))
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    def claim_stream(self, stream: str, owner: str, ttl_s: float, *, steal_from: str | None = None) -> str:
        with self._lock:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute(f"SELECT owner, expires FROM {LEASE_TABLE} WHERE stream = ?", (stream,)).fetchone()
                now = time.time()
                holder = row[0] if row else owner
                if row is None or row[1] < now or row[0] in (owner, steal_from):
                    con.execute(f"INSERT OR REPLACE INTO {LEASE_TABLE} VALUES (?, ?, ?)", (stream, owner, now + ttl_s))
                    holder = owner
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        return holder

    def release_stream(self, stream: str, owner: str) -> None:
        with self._lock:
            self._con.execute(f"DELETE FROM {LEASE_TABLE} WHERE stream = ? AND owner = ?", (stream, owner))

    def applied(self, stream: str, ids: Sequence[str]) -> np.ndarray:
        ids = list(ids)
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(ids), READ_CHUNK):
                chunk = ids[start : start + READ_CHUNK]
                marks = ",".join("?" * len(chunk))
                found.update(r[0] for r in self._con.execute(
                    f"SELECT id FROM {APPLIED_TABLE} WHERE stream = ? AND id IN ({marks})", [stream, *chunk]))
        return np.fromiter((i in found for i in ids), dtype=bool, count=len(ids))

    def stream_state(self, stream: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._con.execute(f"SELECT state FROM {STATE_TABLE} WHERE name = ?", (stream,)).fetchone()
        return None if row is None else json.loads(row[0])

    def prune_applied(self, stream: str, before_ts: int) -> int:
        with self._lock:
            cur = self._con.execute(f"DELETE FROM {APPLIED_TABLE} WHERE stream = ? AND ts < ?", (stream, before_ts))
        return int(cur.rowcount or 0)

    # -------------------------------------------------------------------------------------------- reads
    def _fetch(self, entity: str, ids: Sequence[Any], names: Sequence[str] | None) -> Fetched:
        with self._lock:
            con = self._con
            con.execute("BEGIN")  # one snapshot for the pointer and the rows
            try:
                row = con.execute(
                    f"SELECT table_name, info FROM {META_TABLE} WHERE name = ?", (entity,)
                ).fetchone()
                if row is None:
                    known = [r[0] for r in con.execute(f"SELECT name FROM {META_TABLE}")]
                    raise unknown_entity(entity, known)
                table_name, info = row[0], EntityInfo.from_json(row[1])
                wanted = info.resolve(names)
                index = {n: i for i, n in enumerate(info.features)}
                keys = normalize_ids(ids, info.key_type)
                unique = pc.unique(keys.drop_null()).to_pylist()
                select = ", ".join(["key", "ts", *(f"f{index[n]}" for n in wanted)])
                rows: list[tuple[Any, ...]] = []
                for start in range(0, len(unique), READ_CHUNK):
                    chunk = unique[start : start + READ_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows += con.execute(
                        f"SELECT {select} FROM {table_name} WHERE key IN ({marks})", chunk
                    ).fetchall()
            finally:
                con.execute("COMMIT")
        return _align(info, wanted, keys, rows)

    def read_row(self, names: Mapping[str, Sequence[str] | None], id_: Any, *,
                 now: float | None = None) -> dict[str, OnlineFeatures]:
        """One id from several views in one transaction (one snapshot), one indexed SELECT per view."""
        found: list[tuple[str, EntityInfo, list[str], tuple[Any, ...] | None]] = []
        with self._lock:
            con = self._con
            con.execute("BEGIN")
            try:
                for entity, names_wanted in names.items():
                    row = con.execute(f"SELECT table_name, info FROM {META_TABLE} WHERE name = ?",
                                      (entity,)).fetchone()
                    if row is None:
                        raise unknown_entity(entity, [r[0] for r in con.execute(f"SELECT name FROM {META_TABLE}")])
                    info = EntityInfo.from_json(row[1])
                    wanted = info.resolve(names_wanted)
                    key = normalize_id(id_, info.key_type)
                    got = None
                    if key is not None:
                        index = {n: i for i, n in enumerate(info.features)}
                        select = ", ".join(["ts", *(f"f{index[n]}" for n in wanted)])
                        got = con.execute(f"SELECT {select} FROM {row[0]} WHERE key = ?", (key,)).fetchone()
                    found.append((entity, info, wanted, got))
            finally:
                con.execute("COMMIT")
        return {entity: self._row_features(info, wanted, id_, None if got is None else got[0],
                                           None if got is None else got[1:], now)
                for entity, info, wanted, got in found}

    def entities(self) -> dict[str, EntityInfo]:
        with self._lock:
            rows = self._con.execute(f"SELECT name, info FROM {META_TABLE} ORDER BY name").fetchall()
        return {name: EntityInfo.from_json(info) for name, info in rows}

    def close(self) -> None:
        with self._lock:
            self._con.close()


def _align(info: EntityInfo, names: list[str], keys: pa.StringArray, rows: list[tuple[Any, ...]]) -> Fetched:
    """Put fetched rows in the order of the requested keys (columnar: index_in + take)."""
    n = len(keys)
    if not rows:
        empty = np.full(n, None, dtype=object)
        return Fetched(info, names, np.zeros(n, dtype=bool), np.full(n, np.nan),
                       {name: empty for name in names})
    columns = list(zip(*rows))
    pos = pc.index_in(keys, value_set=pa.array(columns[0], pa.string()))
    found = pos.is_valid().to_numpy(zero_copy_only=False)
    take = pos.fill_null(0).to_numpy(zero_copy_only=False)
    ts = np.asarray(columns[1], dtype=np.float64)[take]
    texts = {}
    for name, col in zip(names, columns[2:]):
        values = np.empty(len(col), dtype=object)
        values[:] = col
        texts[name] = values[take]
    return Fetched(info, names, found, ts, texts)
