"""The offline store: point-in-time joins of entity feature tables onto events, and Parquet tables on disk.

A point-in-time join gives every event row the values of the newest feature row with the same key whose
timestamp is at or before the event's timestamp (and, with a TTL, not older than the TTL), so values from the
future never leak into training data. A feature table without a timestamp is static: a plain left join on a
unique key. Joins keep the events' rows, their order and their count exactly, and add columns only.

Everything is columnar: keys become integer codes (`encode_keys`), (key, time) pairs become one sortable int64
(`composite_keys`), and the lookup is a `numpy.searchsorted` over the sorted feature rows. `profiles` and
`sequences` build on the same helpers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.config import EntityConfig

_TABLE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


# ------------------------------------------------------------------------------------------------- helpers


def as_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous Arrow array from a column (chunks combined; dictionary columns decoded)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    return arr


def require_columns(table: pa.Table, columns: Sequence[str], what: str) -> None:
    """Raise a `KeyError` naming the missing columns of `table` (described as `what`) and the ones it has."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise KeyError(f"{what}: column(s) {missing} not found; it has {table.column_names}")


def _key_kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    return str(t)


def unify_keys(a: pa.Array, b: pa.Array, a_name: str, b_name: str) -> tuple[pa.Array, pa.Array]:
    """Cast two key arrays to one type (int64 or string); a type mismatch is an error naming both columns."""
    ka, kb = _key_kind(a.type), _key_kind(b.type)
    if ka != kb or ka not in ("int", "string"):
        raise TypeError(
            f"key {a_name} has type {a.type} but {b_name} has type {b.type}; keys must both be integers or "
            f"both strings: cast one of them before joining"
        )
    target = pa.int64() if ka == "int" else pa.string()
    return a.cast(target), b.cast(target)


def encode_keys(keys: pa.Array, dictionary: pa.Array | None = None) -> tuple[np.ndarray, pa.Array]:
    """Integer codes for `keys` (-1 for null or for keys absent from `dictionary`), and the dictionary.

    Without `dictionary`, codes number the distinct keys in order of first appearance.
    """
    keys = as_array(keys)
    if dictionary is None:
        enc = pc.dictionary_encode(keys)
        codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return codes, enc.dictionary
    idx = pc.index_in(keys, value_set=dictionary)
    return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64), dictionary


def int_times(column: pa.Array | pa.ChunkedArray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(int64 Unix seconds with 0 where null, validity mask) from an integer or timestamp column `name`."""
    arr = as_array(column)
    if pa.types.is_timestamp(arr.type):
        arr = arr.cast(pa.timestamp("s", tz=arr.type.tz), safe=False).cast(pa.int64())
    elif pa.types.is_integer(arr.type):
        arr = arr.cast(pa.int64())
    else:
        raise TypeError(
            f"time column '{name}' has type {arr.type}; expected int64 Unix seconds (or an Arrow timestamp): "
            f"convert it when reading the source"
        )
    valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
    return pc.fill_null(arr, 0).to_numpy(zero_copy_only=False).astype(np.int64), valid


def composite_keys(codes: Sequence[np.ndarray], times: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Map (code >= 0, time) pairs of several arrays into one int64 each, ordered by code then time.

    Uses `code * span + (time - t_min)` when that fits in int64, else the dense rank of the time values.
    Pairs with equal (code, time) map to equal integers across all the arrays.
    """
    all_t = np.concatenate([np.asarray(t, dtype=np.int64) for t in times]) if times else np.empty(0, np.int64)
    n_codes = max((int(c.max()) + 1 for c in codes if len(c)), default=1)
    if len(all_t) == 0:
        return [np.asarray(c, dtype=np.int64) for c in codes]
    t_min, t_max = int(all_t.min()), int(all_t.max())
    span = t_max - t_min + 2
    if n_codes * span < 2**62:
        return [c.astype(np.int64) * span + (t - t_min) for c, t in zip(codes, times)]
    uniq, inverse = np.unique(all_t, return_inverse=True)
    out, start = [], 0
    for c, t in zip(codes, times):
        rank = inverse[start : start + len(t)]
        start += len(t)
        out.append(c.astype(np.int64) * (len(uniq) + 1) + rank)
    return out


def asof_indices(
    event_codes: np.ndarray,
    event_times: np.ndarray,
    feature_codes: np.ndarray,
    feature_times: np.ndarray,
    ttl_seconds: float | None = None,
) -> np.ndarray:
    """For each event, the index of the newest feature row with the same code and time <= the event's time.

    Codes < 0 never match. With a TTL, a match older than `ttl_seconds` (event - feature time > ttl) is
    dropped. Among feature rows with equal (code, time), the last one in input order wins. Returns int64
    indices into the feature arrays, -1 where there is no match.
    """
    n = len(event_codes)
    f_ok = np.flatnonzero(feature_codes >= 0)
    if n == 0 or len(f_ok) == 0:
        return np.full(n, -1, dtype=np.int64)
    e_ok = event_codes >= 0
    e_comp, f_comp = composite_keys(
        [np.where(e_ok, event_codes, 0), feature_codes[f_ok]], [event_times, feature_times[f_ok]]
    )
    order = np.argsort(f_comp, kind="stable")
    f_sorted = f_comp[order]
    pos = np.searchsorted(f_sorted, e_comp, side="right") - 1
    pos_c = np.clip(pos, 0, None)
    rows = f_ok[order[pos_c]]
    ok = e_ok & (pos >= 0) & (feature_codes[rows] == event_codes)
    if ttl_seconds is not None:
        ok &= (event_times - feature_times[rows]) <= ttl_seconds
    return np.where(ok, rows, -1)


def take_rows(table: pa.Table, indices: np.ndarray) -> pa.Table:
    """`table.take(indices)` where -1 yields a row of nulls."""
    idx = pa.array(np.clip(indices, 0, None), type=pa.int64(), mask=indices < 0)
    if table.num_rows == 0:
        return pa.table(
            {name: pa.nulls(len(indices), f.type) for name, f in zip(table.column_names, table.schema)}
        )
    return table.take(idx)


# ------------------------------------------------------------------------------------------ point-in-time


def point_in_time_join(
    events: pa.Table,
    features: pa.Table,
    *,
    key: str,
    features_key: str | None = None,
    event_ts: str = "ts",
    feature_ts: str | None,
    ttl_seconds: float | None,
    columns: list[str],
    prefix: str = "",
) -> pa.Table:
    """Add `columns` of `features` to `events`, as known at each event's time.

    Args:
        events: the table to enrich; its rows, order and count are kept exactly.
        features: the feature rows; `feature_ts` says when each row became valid.
        key: the key column of `events` (and of `features` unless `features_key` is given).
        event_ts: the events' time column (int64 Unix seconds).
        feature_ts: the features' time column; None = a static table (one row per key, plain left join).
        ttl_seconds: a match is used only when `event time - feature time <= ttl_seconds`; None = no limit.
        columns: feature columns to add; added as `prefix + column`.

    A feature row stamped exactly at the event time is used; later rows never are. Events with a null or
    unknown key (or a null time) get nulls. Feature rows with a null key or null time are ignored; among
    rows with the same key and time the last in input order wins.
    """
    fkey = features_key or key
    require_columns(events, [key] + ([event_ts] if feature_ts is not None else []), "events")
    require_columns(
        features,
        [fkey, *columns] + ([feature_ts] if feature_ts is not None else []),
        f"feature table joined on '{fkey}'",
    )
    new_names = [prefix + c for c in columns]
    clash = [c for c in new_names if c in events.column_names]
    if clash:
        raise ValueError(
            f"joining {columns} would add column(s) {clash} that the events already have; pass a prefix "
            f"(e.g. prefix='{fkey}_') or drop the event column first"
        )
    dupes = sorted({c for c in new_names if new_names.count(c) > 1})
    if dupes:
        raise ValueError(f"columns {dupes} are requested more than once; list each feature column once")

    e_keys, f_keys = unify_keys(
        as_array(events.column(key)), as_array(features.column(fkey)), f"events.{key}", f"features.{fkey}"
    )
    f_codes, dictionary = encode_keys(f_keys)
    e_codes, _ = encode_keys(e_keys, dictionary)

    if feature_ts is None:
        idx = _static_indices(e_codes, f_codes, f_keys, fkey)
    else:
        e_t, e_valid = int_times(events.column(event_ts), event_ts)
        f_t, f_valid = int_times(features.column(feature_ts), feature_ts)
        idx = asof_indices(
            np.where(e_valid, e_codes, -1), e_t, np.where(f_valid, f_codes, -1), f_t, ttl_seconds
        )

    joined = take_rows(features.select(columns), idx)
    out = events
    for name, col in zip(new_names, joined.columns):
        out = out.append_column(pa.field(name, col.type), col)
    return out


def _static_indices(e_codes: np.ndarray, f_codes: np.ndarray, f_keys: pa.Array, fkey: str) -> np.ndarray:
    valid = np.flatnonzero(f_codes >= 0)
    n_keys = int(f_codes.max()) + 1 if len(valid) else 0
    counts = np.bincount(f_codes[valid], minlength=n_keys)
    if len(valid) and counts.max() > 1:
        first = int(np.argmax(counts > 1))
        example = f_keys[int(valid[np.argmax(f_codes[valid] == first)])].as_py()
        raise ValueError(
            f"static feature table: key column '{fkey}' has duplicate values (e.g. {example!r} on "
            f"{int(counts[first])} rows); a table without a timestamp column needs one row per key: "
            f"deduplicate it, or configure its timestamp so it is joined point-in-time"
        )
    row_of_code = np.full(max(n_keys, 1), -1, dtype=np.int64)
    row_of_code[f_codes[valid]] = valid
    return np.where(e_codes >= 0, row_of_code[np.clip(e_codes, 0, None)], -1)


def latest_per_key(table: pa.Table, key: str, ts: str, as_of: int | None = None) -> pa.Table:
    """The newest row per key with `ts <= as_of` (all rows when None); null keys/times are dropped.

    Rows come out in order of the key's first appearance in `table`; ties on time go to the later row.
    """
    require_columns(table, [key, ts], "table")
    codes, _ = encode_keys(as_array(table.column(key)))
    t, valid = int_times(table.column(ts), ts)
    ok = valid & (codes >= 0)
    if as_of is not None:
        ok &= t <= as_of
    rows = np.flatnonzero(ok)
    if len(rows) == 0:
        return table.slice(0, 0)
    (comp,) = composite_keys([codes[rows]], [t[rows]])
    order = rows[np.argsort(comp, kind="stable")]
    sorted_codes = codes[order]
    last = np.flatnonzero(np.r_[sorted_codes[1:] != sorted_codes[:-1], True])
    return table.take(pa.array(order[last]))


# ------------------------------------------------------------------------------------------------- store


class OfflineStore:
    """Named Arrow tables kept as Parquet files under `root` (`root/<name>.parquet`)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        if not _TABLE_NAME.match(name):
            raise ValueError(
                f"table name {name!r} is not allowed: use letters, digits, '_', '-' and '.' (no '/')"
            )
        return self.root / f"{name}.parquet"

    def write_table(self, name: str, table: pa.Table) -> Path:
        """Write (or replace) table `name`; the file appears whole or not at all."""
        path = self._path(name)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path

    def read_table(self, name: str) -> pa.Table:
        path = self._path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"offline store {self.root}: no table '{name}' ({path} does not exist); tables here: "
                f"{self.names()}. Write it first with OfflineStore.write_table."
            )
        return pq.read_table(path)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.parquet") if not p.name.startswith("."))

    def get_historical_features(
        self,
        events: pa.Table,
        entities: Mapping[str, tuple[pa.Table | None, EntityConfig]],
        event_ts: str = "ts",
        prefixes: Mapping[str, str] | None = None,
    ) -> pa.Table:
        """Join every entity's configured features onto `events`, point-in-time (or static without timestamp).

        Each value of `entities` is (feature table, its EntityConfig); a None table is read from this store
        under `EntityConfig.table`. The events' key column has the name `EntityConfig.key`. `prefixes` maps an
        entity name to a prefix for its columns (default: none; a clash with an event column is an error).
        """
        out = events
        for name, (table, cfg) in entities.items():
            feats = self.read_table(cfg.table) if table is None else table
            if cfg.key not in out.column_names:
                raise KeyError(
                    f"entity '{name}': the events have no key column '{cfg.key}' (they have "
                    f"{out.column_names}); set the entity's key to the events' column name"
                )
            ttl = cfg.ttl_days * 86400.0 if cfg.ttl_days is not None else None
            out = point_in_time_join(
                out,
                feats,
                key=cfg.key,
                event_ts=event_ts,
                feature_ts=cfg.timestamp,
                ttl_seconds=ttl,
                columns=list(cfg.features),
                prefix=(prefixes or {}).get(name, ""),
            )
        return out
