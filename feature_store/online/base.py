"""The online-store contract: the `OnlineStore` ABC, its result types and the value/key codec backends share.

An online store holds, per entity (users, items, ...), one *feature view*: the latest feature values of each
entity key, written as a whole and replaced atomically by the next write. Serving reads it by key.

Semantics every backend follows:
- `write` replaces the entity's whole view with the table given (one row per key; duplicate or null keys are
  errors). Every column except the key is a feature, the timestamp column included (it is what TTL reads,
  int/float seconds since the Unix epoch; a `timestamp` column is stored as int64 seconds).
- `read` returns `OnlineFeatures` in the order of the ids asked for. Each value has a status: "present",
  "missing" (unknown id or null value) or "expired" (the row's timestamp is older than `now - ttl`; the value
  is then None). TTL is checked at read time, so the same data can be read "as of" any `now`.
- Values keep their Arrow types' Python forms: int, float (exactly: NaN, inf and -0.0 included), str, bool,
  None, and lists of these (list<int64> histories, list<float32> vectors, nested lists).

Key rule: keys are stored as the text of their canonical Arrow value (an int64 key 42 is stored as "42").
For an entity whose key column is an integer type, an id given as 42, numpy.int64(42), 42.0 or "42"
(also "+42", "042") finds the row of key 42; for an entity whose key column is a string type, only str ids
match, compared exactly, so 42 does not find the key "42". Ids that cannot be a key (None, 42.5, "abc" for
an int key) are simply "missing".

Codec: each feature value is stored as compact JSON text built columnar with pyarrow.compute (floats use the
shortest text that round-trips exactly); reads decode a whole column with one `json.loads` call.
"""

from __future__ import annotations

import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Status = Literal["present", "missing", "expired"]
WRITE_BATCH_ROWS = 20_000
_INT_TEXT = re.compile(r"^[+-]?[0-9]+$")


# ------------------------------------------------------------------------------------------ result types


@dataclass
class OnlineFeatures:
    """Features of `ids` (in their order): `values[name][i]` and `status[name][i]` belong to `ids[i]`."""

    ids: list[Any]
    names: list[str]
    values: dict[str, list[Any]]
    status: dict[str, list[str]]

    def to_rows(self) -> list[dict[str, Any] | None]:
        """One dict per id (name -> value, None where not present), or None where no feature is present."""
        if not self.names:
            return [{} for _ in self.ids]
        present = np.zeros(len(self.ids), dtype=bool)
        for name in self.names:
            present |= np.asarray(self.status[name], dtype=object) == "present"
        columns = [self.values[n] for n in self.names]
        return [dict(zip(self.names, vals)) if ok else None for ok, *vals in zip(present, *columns)]


@dataclass(frozen=True)
class EntityInfo:
    """What an entity's current feature view holds: features (name -> Arrow type text), TTL, size, version."""

    name: str
    key: str
    key_type: Literal["int", "string"]
    ts_column: str
    features: dict[str, str]
    ttl_seconds: float | None
    rows: int
    written_at: float
    version: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EntityInfo:
        return cls(**json.loads(text))

    def resolve(self, names: Sequence[str] | None) -> list[str]:
        """The feature names to read (all by default); unknown names raise KeyError listing the known ones."""
        if names is None:
            return list(self.features)
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in self.features]
        if unknown:
            raise KeyError(
                f"entity '{self.name}' has no feature(s) {unknown}; its features are {list(self.features)}"
            )
        return list(names)


@dataclass
class Fetched:
    """What a backend returns for one read, from one consistent version: per id, found flag, ts and texts."""

    info: EntityInfo
    names: list[str]
    found: np.ndarray  # bool, one per id
    ts: np.ndarray  # float64 seconds (nan where unknown), one per id
    texts: dict[str, np.ndarray] = field(default_factory=dict)  # object arrays of JSON text or None


@dataclass
class PreparedWrite:
    """A validated write: the view's info and a lazy stream of encoded batches (keys, ts, feature texts)."""

    info: EntityInfo
    table: pa.Table
    ts_index: int

    @property
    def feature_columns(self) -> list[str]:
        return list(self.info.features)

    def batches(self, rows: int = WRITE_BATCH_ROWS) -> Iterator[tuple[list[str], list[Any], list[list[Any]]]]:
        """Yield (key texts, ts seconds, [JSON texts of each feature]) per batch.

        Encoding happens lazily, batch by batch, so memory stays bounded (a value that cannot be encoded
        fails mid-write, which the backends' atomic writes absorb)."""
        for batch in self.table.to_batches(max_chunksize=rows):
            if batch.num_rows == 0:
                continue
            keys = batch.column(0).to_pylist()
            ts = batch.column(1 + self.ts_index).to_pylist()
            feats = [encode_json(batch.column(i)).to_pylist() for i in range(1, batch.num_columns)]
            yield keys, ts, feats


class VersionChanged(RuntimeError):
    """A view was rewritten as a whole (materialize) between a stream's read and its commit: read again."""


class StreamBusy(RuntimeError):
    """Another processor holds this scenario's stream lease: the message names it and what to do."""


class LeaseLost(StreamBusy):
    """The stream's lease is held by another processor now: this one's commit was refused, nothing applied."""


@dataclass
class StreamCommit:
    """What one stream batch changes, committed atomically by `OnlineStore.commit_stream`.

    `upserts`: rows to write into each view's current version (validated with `prepare_write`), keyed by view,
    with the version the rows were computed from; `new_rows`: how many of those keys the view did not hold yet;
    `applied_ids` / `applied_ts`: event ids now applied (remembered for dedupe, pruned by event time);
    `state`: the processor's own state (watermark, counters), stored under the stream's name."""

    upserts: dict[str, tuple[PreparedWrite, int]]
    new_rows: dict[str, int]
    applied_ids: list[str]
    applied_ts: list[int]
    state: dict[str, Any]
    owner: str | None = None  # the lease holder committing (checked and renewed in the same transaction)
    lease_ttl_s: float = 30.0


# ------------------------------------------------------------------------------------------------ codec


def _unsupported(arr_type: pa.DataType) -> bool:
    t = arr_type
    if pa.types.is_dictionary(t):
        return _unsupported(t.value_type)
    if (
        pa.types.is_null(t)
        or pa.types.is_boolean(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string_view(t)
    ):
        return False
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _unsupported(t.value_type)
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return _unsupported(t.value_type)
    return True


def check_feature_type(name: str, arr_type: pa.DataType) -> None:
    """Raise TypeError naming the column when its type cannot be stored online."""
    if _unsupported(arr_type):
        raise TypeError(
            f"feature column '{name}' has Arrow type {arr_type}, which the online store cannot hold; "
            "supported: bool, integers, floats, strings and (nested) lists of them. Cast it first "
            "(e.g. timestamps to int64 seconds, decimals to float64) or leave it out of the features."
        )


def encode_json(arr: pa.Array) -> pa.StringArray:
    """JSON text of every value of `arr` (null -> null), computed columnar; floats round-trip exactly."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return encode_json(arr.dictionary_decode())
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_boolean(t) or pa.types.is_integer(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_floating(t):
        text = pc.cast(pc.cast(arr, pa.float64()), pa.string())  # shortest text that parses back exactly
        integral = pc.match_substring_regex(text, r"^-?[0-9]+$")  # "1" -> "1.0" so it decodes as a float
        text = pc.if_else(integral, pc.binary_join_element_wise(text, ".0", ""), text)
        for arrow_text, json_text in (("nan", "NaN"), ("inf", "Infinity"), ("-inf", "-Infinity")):
            text = pc.if_else(pc.equal(text, arrow_text), json_text, text)
        return text
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        text = pc.replace_substring(pc.cast(arr, pa.string()), "\\", "\\\\")
        # control characters stay raw: decode_json parses with strict=False
        text = pc.replace_substring(text, '"', '\\"')
        return pc.binary_join_element_wise('"', text, '"', "")
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or (
        pa.types.is_list_view(t) or pa.types.is_large_list_view(t)
    ):
        lists = arr if pa.types.is_list(t) else arr.cast(pa.list_(t.value_type))
        offsets = lists.offsets  # absolute into lists.values, also when `lists` is a slice
        first, last = offsets[0].as_py(), offsets[-1].as_py()
        items = pc.fill_null(encode_json(lists.values.slice(first, last - first)), "null")
        rebased = pc.subtract(offsets, pa.scalar(first, offsets.type))
        joined = pc.binary_join(pa.ListArray.from_arrays(rebased, items, mask=lists.is_null()), ",")
        return pc.binary_join_element_wise("[", joined, "]", "")
    check_feature_type("<value>", t)
    raise AssertionError("unreachable")  # pragma: no cover


def decode_json(texts: np.ndarray, keep: np.ndarray) -> list[Any]:
    """Decode an object array of JSON texts in one call; positions where `keep` is False become None."""
    if len(texts) == 0:
        return []
    payload = np.where(keep, texts, "null")
    return json.loads("[" + ",".join(payload.tolist()) + "]", strict=False)


# ------------------------------------------------------------------------------------------------- keys


def _key_kind(name: str, arr_type: pa.DataType) -> Literal["int", "string"]:
    t = arr_type.value_type if pa.types.is_dictionary(arr_type) else arr_type
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    raise TypeError(
        f"key column '{name}' has Arrow type {arr_type}; online keys must be integers or strings. "
        "Cast the column (e.g. pc.cast(col, pa.int64())) before writing."
    )


def _ints_as_text(values: list[Any]) -> list[str | None]:
    """Slow path for ids Arrow cannot type as one column (mixed types, huge ints): one id at a time."""
    out: list[str | None] = []
    for v in values:
        if isinstance(v, bool | np.bool_) or v is None:
            out.append(None)
        elif isinstance(v, int | np.integer):
            out.append(str(int(v)))
        elif isinstance(v, float | np.floating):
            out.append(str(int(v)) if np.isfinite(v) and float(v).is_integer() else None)
        elif isinstance(v, str) and _INT_TEXT.match(v.strip()):
            out.append(str(int(v.strip())))
        else:
            out.append(None)
    return out


def normalize_ids(ids: Sequence[Any] | np.ndarray | pa.Array, key_type: str) -> pa.StringArray:
    """Map ids to the stored key text (None where an id cannot be a key of this entity); see the key rule."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    try:
        arr = ids if isinstance(ids, pa.Array) else pa.array(ids, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        raw = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        if key_type == "int":
            return pa.array(_ints_as_text(raw), pa.string())
        return pa.array([v if isinstance(v, str) else None for v in raw], pa.string())
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    is_text = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    if key_type == "string":
        return pc.cast(arr, pa.string()) if is_text else pa.nulls(len(arr), pa.string())
    if pa.types.is_integer(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_floating(t):
        whole = pc.and_(pc.is_finite(arr), pc.equal(pc.floor(arr), arr))
        whole = pc.and_(whole, pc.less(pc.abs(arr), 2.0**63))
        return pc.cast(pc.cast(pc.if_else(whole, arr, None), pa.int64()), pa.string())
    if is_text:
        text = pc.utf8_trim_whitespace(pc.cast(arr, pa.string()))
        ok = pc.match_substring_regex(text, _INT_TEXT.pattern)
        try:
            return pc.cast(pc.cast(pc.if_else(ok, text, None), pa.int64()), pa.string())
        except pa.ArrowInvalid:  # beyond int64 (a uint64 key): exact Python ints
            return pa.array(_ints_as_text(arr.to_pylist()), pa.string())
    return pa.nulls(len(arr), pa.string())


def normalize_id(value: Any, key_type: str) -> str | None:
    """`normalize_ids` of one id, without Arrow (a single-id read costs a few microseconds, not two casts);
    equal to `normalize_ids([value], key_type)[0]` for every id (tests/feature_store check it)."""
    if value is None or isinstance(value, bool | np.bool_):
        return None
    if key_type == "string":
        return value if isinstance(value, str) else (None if isinstance(value, int | float | np.number) else
                                                     normalize_ids([value], key_type)[0].as_py())
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        return str(int(v)) if np.isfinite(v) and v.is_integer() and abs(v) < 2.0**63 else None
    if isinstance(value, str):
        text = value.strip()
        return str(int(text)) if _INT_TEXT.match(text) and text.isascii() else None
    return normalize_ids([value], key_type)[0].as_py()


# -------------------------------------------------------------------------------------------- the store


def epoch_seconds(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A timestamp column as int64 seconds since the epoch (sub-second parts dropped); others unchanged."""
    if not pa.types.is_timestamp(col.type):
        return col
    floored = pc.floor_temporal(col, unit="second")
    return pc.cast(floored.cast(pa.timestamp("s", col.type.tz), safe=False), pa.int64())


def prepare_write(
    entity: str, table: pa.Table, *, key: str, ts_column: str, ttl_seconds: float | None
) -> PreparedWrite:
    """Validate a view (columns, key and ts types, null/duplicate keys, TTL) and order it for writing.

    The returned info has version 0: the backend sets the real one inside its write transaction."""
    if not entity:
        raise ValueError("entity name must be a non-empty string, e.g. 'users'")
    cols = table.column_names
    for role, col in (("key", key), ("ts_column", ts_column)):
        if col not in cols:
            raise KeyError(f"write '{entity}': {role} '{col}' is not a column of the table; columns: {cols}")
    if len(set(cols)) != len(cols):
        raise ValueError(f"write '{entity}': repeated column names in {cols}; rename them")
    if ttl_seconds is not None and not ttl_seconds > 0:
        raise ValueError(f"write '{entity}': ttl_seconds must be > 0 or None, got {ttl_seconds}")
    key_type = _key_kind(key, table.schema.field(key).type)
    keys = table.column(key)
    if pa.types.is_dictionary(keys.type):
        keys = keys.cast(keys.type.value_type)
    n_null = keys.null_count
    if n_null:
        first = pc.index(pc.is_null(keys), True).as_py()
        raise ValueError(
            f"write '{entity}': key column '{key}' has {n_null} null value(s) (first at row {first}); "
            "drop or fill those rows before writing"
        )
    if pc.count_distinct(keys).as_py() != table.num_rows:
        counts = pa.table({"k": keys}).group_by("k").aggregate([("k", "count")])
        dupes = counts.filter(pc.greater(counts.column("k_count"), 1)).column("k").to_pylist()
        raise ValueError(
            f"write '{entity}': key column '{key}' repeats {len(dupes)} key(s), e.g. {dupes[:5]}; an online "
            "view holds one row per key: keep the latest row per key (feature_store.online.materialize)"
        )
    ts = table.column(ts_column)
    ts_type = ts.type
    if pa.types.is_timestamp(ts_type):
        ts = epoch_seconds(ts)
    elif not (pa.types.is_integer(ts_type) or pa.types.is_floating(ts_type)):
        raise TypeError(
            f"write '{entity}': ts_column '{ts_column}' has Arrow type {ts_type}; it must hold seconds since "
            "the Unix epoch (int or float) or be a timestamp"
        )
    if ttl_seconds is not None and ts.null_count:
        raise ValueError(
            f"write '{entity}': ts_column '{ts_column}' has {ts.null_count} null value(s) but ttl_seconds is "
            f"{ttl_seconds}: a row without a time cannot expire. Fill or drop them, or write without a TTL"
        )
    features = [c for c in cols if c != key]
    for name in features:
        if name != ts_column:
            check_feature_type(name, table.schema.field(name).type)
    key_text = pc.cast(keys, pa.string())
    data = {"__key__": key_text, **{c: (ts if c == ts_column else table.column(c)) for c in features}}
    ordered = pa.table(data).take(pc.sort_indices(key_text))  # key order: faster B-tree / hash inserts
    info = EntityInfo(
        name=entity,
        key=key,
        key_type=key_type,
        ts_column=ts_column,
        features={c: str(ordered.schema.field(c).type) for c in features},
        ttl_seconds=None if ttl_seconds is None else float(ttl_seconds),
        rows=table.num_rows,
        written_at=time.time(),
        version=0,
    )
    return PreparedWrite(info=info, table=ordered, ts_index=features.index(ts_column))


def unknown_entity(entity: str, known: Sequence[str]) -> KeyError:
    return KeyError(
        f"unknown online entity '{entity}'; known entities: {sorted(known)}. Materialize it first "
        "(feature_store.online.materialize)"
    )


class OnlineStore(ABC):
    """Latest feature values per entity key, replaced atomically per entity, read by key with TTL."""

    # -- backend hooks --------------------------------------------------------------------------------
    @abstractmethod
    def _write_prepared(self, prepared: PreparedWrite) -> None:
        """Store `prepared` as the entity's next version atomically, then drop the previous one."""

    @abstractmethod
    def _fetch(self, entity: str, ids: Sequence[Any], names: Sequence[str] | None) -> Fetched:
        """Look ids up in one consistent version (normalise them with `normalize_ids(ids, info.key_type)`)."""

    @abstractmethod
    def entities(self) -> dict[str, EntityInfo]:
        """Every entity's current view: features with Arrow types, TTL, row count, written_at, version."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the data stays."""

    @abstractmethod
    def _commit_stream(self, stream: str, commit: StreamCommit) -> None:
        """Apply `commit` in one transaction; raise VersionChanged (nothing applied) when a view's version is
        not the one given."""

    @abstractmethod
    def claim_stream(self, stream: str, owner: str, ttl_s: float, *, steal_from: str | None = None) -> str:
        """Take or renew `stream`'s lease for `owner` when it is free, expired, already `owner`'s or
        `steal_from`'s (a holder known to be dead); returns the holder afterwards (`owner` when it succeeded).
        One processor per stream: a second one is refused while the first renews its lease."""

    @abstractmethod
    def release_stream(self, stream: str, owner: str) -> None:
        """Give `stream`'s lease up, if `owner` holds it."""

    @abstractmethod
    def applied(self, stream: str, ids: Sequence[str]) -> np.ndarray:
        """Which of `ids` (event ids) `stream` has applied and still remembers: bool per id."""

    @abstractmethod
    def stream_state(self, stream: str) -> dict[str, Any] | None:
        """The state `stream` committed last, None before its first commit."""

    @abstractmethod
    def prune_applied(self, stream: str, before_ts: int) -> int:
        """Forget applied ids of events older than `before_ts` (event time); returns how many."""

    # -- public API -----------------------------------------------------------------------------------
    def write(
        self, entity: str, table: pa.Table, *, key: str, ts_column: str, ttl_seconds: float | None
    ) -> int:
        """Replace `entity`'s whole view atomically with `table` (one row per `key`); return rows written.

        Args:
            entity: view name, e.g. "users".
            table: one row per key; every column but `key` becomes a feature.
            key: the key column (integer or string type).
            ts_column: seconds since the epoch at which each row became valid; TTL is measured from it.
            ttl_seconds: rows older than `now - ttl_seconds` read as "expired"; None: never expire.
        """
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        prepared = prepare_write(entity, table, key=key, ts_column=ts_column, ttl_seconds=ttl_seconds)
        self._write_prepared(prepared)
        return prepared.info.rows

    def ensure_view(self, entity: str, empty: pa.Table, *, key: str, ts_column: str,
                    ttl_seconds: float | None = None) -> EntityInfo:
        """The view's info, first writing it empty (with `empty`'s schema) when it does not exist yet."""
        info = self.entities().get(entity)
        if info is None:
            self.write(entity, empty.slice(0, 0), key=key, ts_column=ts_column, ttl_seconds=ttl_seconds)
            info = self.entities()[entity]
        return info

    def commit_stream(self, stream: str, commit: StreamCommit) -> None:
        """Upsert rows into views, remember the applied event ids and store the stream's state, all or nothing
        (see StreamCommit). Raises VersionChanged when a view was rewritten meanwhile, LeaseLost when
        `commit.owner` no longer holds the stream's lease, ValueError when the rows' features are not the
        view's."""
        current = self.entities()
        for entity, (prepared, _) in commit.upserts.items():
            info = current.get(entity)
            if info is None:
                raise unknown_entity(entity, list(current))
            if prepared.info.features != info.features or prepared.info.key_type != info.key_type:
                raise ValueError(
                    f"online view '{entity}' holds features {info.features} ({info.key_type} keys) but the stream "
                    f"computed {prepared.info.features} ({prepared.info.key_type} keys): the view was written by "
                    "another configuration; run `recforge materialize` with this one")
        self._commit_stream(stream, commit)

    def read(
        self,
        entity: str,
        ids: Sequence[Any],
        names: Sequence[str] | None = None,
        *,
        now: float | None = None,
    ) -> OnlineFeatures:
        """Features `names` (default: all) of `ids`, in the order of `ids`, with a status per value.

        Raises KeyError naming the entity and the known ones when `entity` was never written, or naming the
        unknown features and the known ones when `names` has one the view lacks.
        """
        id_list = ids.tolist() if isinstance(ids, np.ndarray | pa.Array | pa.ChunkedArray) else list(ids)
        got = self._fetch(entity, ids, names)
        now = time.time() if now is None else float(now)
        found = got.found
        ttl = got.info.ttl_seconds
        expired = found & (got.ts < now - ttl) if ttl is not None else np.zeros(len(found), dtype=bool)
        live = found & ~expired
        values: dict[str, list[Any]] = {}
        status: dict[str, list[str]] = {}
        for name in got.names:
            texts = got.texts[name]
            present = live & np.not_equal(texts, None)
            values[name] = decode_json(texts, present)
            status[name] = np.where(present, "present", np.where(expired, "expired", "missing")).tolist()
        return OnlineFeatures(ids=id_list, names=list(got.names), values=values, status=status)

    def read_row(self, names: Mapping[str, Sequence[str] | None], id_: Any, *,
                 now: float | None = None) -> dict[str, OnlineFeatures]:
        """One id's features from several views (view -> feature names, None: all), as `read` of `[id_]` per
        view. A request reads one user from every user view: backends read the views in one transaction (SQLite)
        or one round trip (Redis) where they can; this default reads them one by one."""
        return {entity: self.read(entity, [id_], wanted, now=now) for entity, wanted in names.items()}

    @staticmethod
    def _row_features(info: EntityInfo, wanted: list[str], id_: Any, ts: float | None,
                      texts: Sequence[str | None] | None, now: float | None) -> OnlineFeatures:
        """`read`'s answer for one id from its row (None: not found): the same values and statuses."""
        now = time.time() if now is None else float(now)
        found = texts is not None
        expired = found and info.ttl_seconds is not None and ts is not None and ts < now - info.ttl_seconds
        values: dict[str, list[Any]] = {}
        status: dict[str, list[str]] = {}
        for i, name in enumerate(wanted):
            text = texts[i] if texts is not None else None
            present = found and not expired and text is not None
            values[name] = [json.loads(text, strict=False) if present else None]
            status[name] = ["present" if present else ("expired" if expired else "missing")]
        return OnlineFeatures(ids=[id_], names=list(wanted), values=values, status=status)

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
