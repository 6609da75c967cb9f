"""The Redis online store: one hash per entity row under a per-version key prefix, flipped atomically.

Keys, for namespace `ns`:
- `ns:entities` hash: entity name -> JSON of its current `EntityInfo` plus the version's `token`;
  setting that one field is the atomic flip from the previous version to the new one;
- `ns:r:<token>:<key text>` hash per row: field "t" = the row's timestamp (always present, so it marks that
  the row exists), field "<i>" = JSON text of feature i (absent when the value is null);
- `ns:pending` hash: token -> entity for writes in progress, so that the rows of a write that died halfway
  are deleted by the entity's next write.

A write pipelines HSETs under a fresh token, flips `ns:entities[entity]`, then deletes the previous token's
rows with SCAN + UNLINK in batches. A read fetches all rows and re-reads the pointer in one MULTI/EXEC; when
the pointer moved meanwhile (a write flipped and may have deleted the rows read), it reads again.
One writer per entity at a time; any number of readers.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
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
from feature_store.secrets import redact_url, scrub

PIPELINE_ROWS = 5_000
SCAN_COUNT = 2_000
READ_RETRIES = 5
UNLINK_PASSES = 5


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


# Replace whole rows (DEL, then HSET: a value that is null now must not leave the old one behind) inside the
# stream's MULTI: ARGV is (key, n, n field/value words)... One EVAL per REPLACE_ARGS words instead of two commands
# per row: the client's command packing, not Redis, bounded the stream on Redis (scripts.bench.events).
REPLACE_ROWS = """
local i, n = 1, #ARGV
while i <= n do
  local key, count = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(ARGV, i + 2, i + 1 + count))
  i = i + 2 + count
end
return 0
"""
REPLACE_ARGS = 50_000
# The stream lease (ARGV: key, owner, ttl ms, a dead holder or ""): taken when free (expired keys are gone), ours or
# the dead holder's; the holder afterwards is returned.
CLAIM = """
local cur = redis.call('GET', ARGV[1])
if (not cur) or cur == ARGV[2] or (ARGV[4] ~= '' and cur == ARGV[4]) then
  redis.call('SET', ARGV[1], ARGV[2], 'PX', ARGV[3])
  return ARGV[2]
end
return cur
"""
RELEASE = """
if redis.call('GET', ARGV[1]) == ARGV[2] then redis.call('DEL', ARGV[1]) end
return 0
"""
# Read many rows in one call: ARGV is (prefix, n, n fields, ids...); the reply is one HMGET reply per id.
READ_ROWS = """
local prefix, nf = ARGV[1], tonumber(ARGV[2])
local fields = {unpack(ARGV, 3, 2 + nf)}
local out = {}
for i = 3 + nf, #ARGV do
  out[#out + 1] = redis.call('HMGET', prefix .. ARGV[i], unpack(fields))
end
return out
"""
READ_KEYS = 20_000


class RedisOnlineStore(OnlineStore):
    """Online store in Redis (any server speaking the Redis protocol: Redis, Valkey, KeyDB).

    Args:
        url: e.g. "redis://127.0.0.1:6379/0".
        namespace: prefix of every key this store owns; stores with different namespaces never meet.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", namespace: str = "recforge") -> None:
        import redis  # imported here so the online package works without the client where Redis is unused

        if not namespace:
            raise ValueError("online_store.namespace must be a non-empty string, e.g. 'recforge'")
        self.url = url
        self.namespace = namespace
        self._redis_errors = (redis.RedisError,)
        try:
            self._r = redis.Redis.from_url(url, decode_responses=True)
            self._r.ping()
        except (redis.RedisError, ValueError) as exc:
            raise ConnectionError(
                f"online store: cannot reach Redis at online_store.url={redact_url(url)!r} "
                f"({scrub(str(exc))}); start the server or "
                "fix the URL (redis://HOST:PORT/DB)"
            ) from exc
        self._entities_key = f"{namespace}:entities"
        self._pending_key = f"{namespace}:pending"
        self._added_key = f"{namespace}:added"  # entity -> rows a stream added since its last whole write
        self._watch_error = redis.WatchError

    def __repr__(self) -> str:
        return f"RedisOnlineStore({redact_url(self.url)!r}, namespace={self.namespace!r})"

    def _row_prefix(self, token: str) -> str:
        return f"{self.namespace}:r:{token}:"

    def _unlink_version(self, token: str) -> None:
        """Delete every row of one version: SCAN its prefix and UNLINK in batches, until a pass finds none.

        SCAN promises only the keys present for the whole scan, and the UNLINKs shrink the keyspace's table
        while it runs; a Redis 7.0 server was seen to skip one row of 40 100 that way, which then lingered
        with no pointer or pending entry left to find it. So passes repeat until one finds nothing.
        """
        match = _glob_escape(self._row_prefix(token)) + "*"
        for _ in range(UNLINK_PASSES):
            found = 0
            batch: list[str] = []
            for k in self._r.scan_iter(match=match, count=SCAN_COUNT):
                batch.append(k)
                if len(batch) >= SCAN_COUNT:
                    found += self._r.unlink(*batch)
                    batch = []
            if batch:
                found += self._r.unlink(*batch)
            if not found:
                return
        raise RuntimeError(
            f"online store: rows under {self._row_prefix(token)}* were still found after {UNLINK_PASSES} "
            "delete passes; another process keeps writing under this version's prefix (two writers of one "
            f"entity in namespace {self.namespace!r}?): stop it and write the entity again"
        )

    # ------------------------------------------------------------------------------------------- writes
    def _write_prepared(self, prepared: PreparedWrite) -> None:
        entity = prepared.info.name
        for token, owner in self._r.hgetall(self._pending_key).items():  # rows of writes that died
            if owner == entity:
                self._unlink_version(token)
                self._r.hdel(self._pending_key, token)
        token = uuid.uuid4().hex
        prefix = self._row_prefix(token)
        fields = [str(i) for i in range(len(prepared.feature_columns))]
        self._r.hset(self._pending_key, token, entity)
        try:
            for keys, _ts, feats in prepared.batches():
                ts_texts = feats[prepared.ts_index]
                pipe = self._r.pipeline(transaction=False)
                for start in range(0, len(keys), PIPELINE_ROWS):
                    stop = start + PIPELINE_ROWS
                    # one HSET per row: Redis has no columnar write; fields of null values are left out
                    for k, t, *values in zip(keys[start:stop], ts_texts[start:stop],
                                             *(f[start:stop] for f in feats)):
                        pairs = [x for fv in zip(fields, values) if fv[1] is not None for x in fv]
                        pipe.execute_command("HSET", prefix + k, "t", "null" if t is None else t, *pairs)
                    pipe.execute()
            old = self._r.hget(self._entities_key, entity)
            version = int(json.loads(old)["version"]) + 1 if old else 1
            info = replace(prepared.info, version=version, written_at=time.time())
            pointer = json.dumps({**asdict(info), "token": token}, separators=(",", ":"))
            flip = self._r.pipeline(transaction=True)
            flip.hset(self._entities_key, entity, pointer)
            flip.hdel(self._pending_key, token)
            flip.hdel(self._added_key, entity)
            flip.execute()
        except BaseException:
            try:  # best effort; if this fails too, the entity's next write removes the rows
                self._unlink_version(token)
                self._r.hdel(self._pending_key, token)
            except (RuntimeError, *self._redis_errors):
                pass
            raise
        if old:
            self._unlink_version(json.loads(old)["token"])

    # ------------------------------------------------------------------------------------------- stream
    def _stream_key(self, stream: str, what: str) -> str:
        return f"{self.namespace}:stream:{stream}:{what}"

    def _commit_stream(self, stream: str, commit: StreamCommit) -> None:
        """One MULTI/EXEC under WATCH of the entity pointers: a whole write (flip) meanwhile aborts it."""
        lease = self._stream_key(stream, "lease")
        with self._r.pipeline(transaction=True) as pipe:
            pipe.watch(self._entities_key, lease)
            if commit.owner is not None:
                held = pipe.get(lease)
                holder = held.decode() if isinstance(held, bytes) else held
                if holder != commit.owner:
                    raise LeaseLost(f"stream '{stream}': the lease is held by {holder or 'nobody'}")
            tokens = {}
            for entity, (_, version) in commit.upserts.items():
                raw = pipe.hget(self._entities_key, entity)
                if raw is None:
                    raise unknown_entity(entity, self._r.hkeys(self._entities_key))
                data = json.loads(raw)
                if int(data["version"]) != version:
                    raise VersionChanged(f"online view '{entity}' is at version {data['version']}, the stream "
                                         f"read version {version}")
                tokens[entity] = data["token"]
            pipe.multi()
            for entity, (prepared, _) in commit.upserts.items():
                prefix = self._row_prefix(tokens[entity])
                fields = [str(i) for i in range(len(prepared.feature_columns))]
                for keys, _ts, feats in prepared.batches():
                    ts_texts = feats[prepared.ts_index]
                    args: list[Any] = []
                    for k, t, *values in zip(keys, ts_texts, *feats):
                        pairs = [x for fv in zip(fields, values) if fv[1] is not None for x in fv]
                        args += [prefix + k, len(pairs) + 2, "t", "null" if t is None else t, *pairs]
                    start = 0
                    while start < len(args):  # whole rows per call
                        end = start
                        while end < len(args) and end - start < REPLACE_ARGS:
                            end += 2 + int(args[end + 1])
                        pipe.eval(REPLACE_ROWS, 0, *args[start:end])
                        start = end
                if commit.new_rows.get(entity):
                    pipe.hincrby(self._added_key, entity, commit.new_rows[entity])
            if commit.applied_ids:
                pipe.zadd(self._stream_key(stream, "applied"), dict(zip(commit.applied_ids, commit.applied_ts)))
            pipe.set(self._stream_key(stream, "state"), json.dumps(commit.state))
            if commit.owner is not None:
                pipe.pexpire(lease, int(commit.lease_ttl_s * 1000))
            try:
                pipe.execute()
            except self._watch_error:
                raise VersionChanged("an online view was rewritten during the stream's commit") from None

    def claim_stream(self, stream: str, owner: str, ttl_s: float, *, steal_from: str | None = None) -> str:
        got = self._r.eval(CLAIM, 0, self._stream_key(stream, "lease"), owner, int(ttl_s * 1000), steal_from or "")
        return got.decode() if isinstance(got, bytes) else str(got)

    def release_stream(self, stream: str, owner: str) -> None:
        self._r.eval(RELEASE, 0, self._stream_key(stream, "lease"), owner)

    def applied(self, stream: str, ids: Sequence[str]) -> np.ndarray:
        ids = list(ids)
        if not ids:
            return np.zeros(0, dtype=bool)
        scores = self._r.execute_command("ZMSCORE", self._stream_key(stream, "applied"), *ids)
        return np.fromiter((x is not None for x in scores), dtype=bool, count=len(ids))

    def stream_state(self, stream: str) -> dict[str, Any] | None:
        raw = self._r.get(self._stream_key(stream, "state"))
        return None if raw is None else json.loads(raw)

    def prune_applied(self, stream: str, before_ts: int) -> int:
        return int(self._r.zremrangebyscore(self._stream_key(stream, "applied"), "-inf", f"({before_ts}"))

    # -------------------------------------------------------------------------------------------- reads
    def _pointer(self, entity: str) -> tuple[EntityInfo, str, str]:
        raw = self._r.hget(self._entities_key, entity)
        if raw is None:
            raise unknown_entity(entity, self._r.hkeys(self._entities_key))
        data = json.loads(raw)
        token = data.pop("token")
        return EntityInfo(**data), token, raw

    def _fetch(self, entity: str, ids: Sequence[Any], names: Sequence[str] | None) -> Fetched:
        info, token, raw = self._pointer(entity)
        for _ in range(READ_RETRIES):
            wanted = info.resolve(names)
            index = {n: str(i) for i, n in enumerate(info.features)}
            fields = ["t", *(index[n] for n in wanted)]
            keys = normalize_ids(ids, info.key_type)
            unique = pc.unique(keys.drop_null())
            prefix = self._row_prefix(token)
            pipe = self._r.pipeline(transaction=True)  # rows and pointer from one instant
            wanted_keys = unique.to_pylist()
            for start in range(0, len(wanted_keys), READ_KEYS):
                pipe.eval(READ_ROWS, 0, prefix, len(fields), *fields, *wanted_keys[start:start + READ_KEYS])
            pipe.hget(self._entities_key, entity)
            *parts, now_raw = pipe.execute()
            rows = [row for part in parts for row in part]
            if now_raw == raw:
                return _align(info, wanted, keys, unique, rows)
            if now_raw is None:
                raise unknown_entity(entity, self._r.hkeys(self._entities_key))
            info, token, raw = self._pointer(entity)
        raise RuntimeError(
            f"online entity '{entity}' changed during {READ_RETRIES} consecutive reads; writes to it are too "
            "frequent for consistent reads"
        )

    def read_row(self, names: Mapping[str, Sequence[str] | None], id_: Any, *,
                 now: float | None = None) -> dict[str, OnlineFeatures]:
        """One id from several views in two round trips whatever their number (the views' pointers, then every
        row with the pointers again in one MULTI: rows from one instant, as `_fetch` reads them)."""
        entities = list(names)
        if not entities:
            return {}
        for _ in range(READ_RETRIES):
            raws = self._r.hmget(self._entities_key, entities)
            for entity, raw in zip(entities, raws):
                if raw is None:
                    raise unknown_entity(entity, self._r.hkeys(self._entities_key))
            plan: list[tuple[str, EntityInfo, list[str], str | None]] = []
            pipe = self._r.pipeline(transaction=True)
            for entity, raw in zip(entities, raws):
                data = json.loads(raw)
                token = data.pop("token")
                info = EntityInfo(**data)
                wanted = info.resolve(names[entity])
                index = {n: str(i) for i, n in enumerate(info.features)}
                key = normalize_id(id_, info.key_type)
                plan.append((entity, info, wanted, key))
                if key is not None:
                    pipe.hmget(self._row_prefix(token) + key, ["t", *(index[n] for n in wanted)])
            pipe.hmget(self._entities_key, entities)
            *rows, now_raws = pipe.execute()
            if list(now_raws) != list(raws):
                continue  # a view was rewritten between the two round trips: read again
            out: dict[str, OnlineFeatures] = {}
            fetched = iter(rows)
            for entity, info, wanted, key in plan:
                got = next(fetched) if key is not None else None
                if got is None or got[0] is None:  # no such row
                    out[entity] = self._row_features(info, wanted, id_, None, None, now)
                    continue
                ts = None if got[0] == "null" else float(got[0])
                out[entity] = self._row_features(info, wanted, id_, ts, got[1:], now)
            return out
        raise RuntimeError(f"online views {entities} changed during {READ_RETRIES} consecutive reads; writes to "
                           "them are too frequent for consistent reads")

    def entities(self) -> dict[str, EntityInfo]:
        out = {}
        added = self._r.hgetall(self._added_key)
        for name, raw in sorted(self._r.hgetall(self._entities_key).items()):
            data = json.loads(raw)
            data.pop("token")
            data["rows"] += int(added.get(name, 0))
            out[name] = EntityInfo(**data)
        return out

    def close(self) -> None:
        self._r.close()


def _align(
    info: EntityInfo, names: list[str], keys: pa.StringArray, unique: pa.Array, rows: list[list[Any]]
) -> Fetched:
    """Put fetched hashes (one per unique key) in the order of the requested keys: index_in + take."""
    n = len(keys)
    pos = pc.index_in(keys, value_set=unique)
    if len(rows) == 0:
        empty = np.full(n, None, dtype=object)
        return Fetched(info, names, np.zeros(n, dtype=bool), np.full(n, np.nan), dict.fromkeys(names, empty))
    take = pos.fill_null(0).to_numpy(zero_copy_only=False)
    columns = list(zip(*rows))
    t = np.empty(len(rows), dtype=object)
    t[:] = columns[0]
    exists = np.not_equal(t, None)
    found = pos.is_valid().to_numpy(zero_copy_only=False) & exists[take]
    t[~exists | (t == "null")] = "NaN"
    ts = t.astype(np.float64)[take]
    texts = {}
    for name, col in zip(names, columns[1:]):
        values = np.empty(len(col), dtype=object)
        values[:] = col
        texts[name] = values[take]
    return Fetched(info, names, found, ts, texts)
