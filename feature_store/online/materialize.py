"""Materialization: pick the latest row per key (as of a time) from an offline table and write it online.

Selection is columnar: filter `ts <= as_of`, stable-sort by (key, ts), keep each key's last row. Among rows
with the same key and the same ts, the one later in the input wins. Rows with a null ts count as oldest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.online.base import OnlineStore, epoch_seconds


@dataclass(frozen=True)
class MaterializeReport:
    """Counts of one materialization: rows read, rows at or before `as_of`, entities written, seconds."""

    entity: str
    rows_in: int
    rows_as_of: int
    entities_written: int
    seconds: float
    as_of: int | None
    version: int


def latest_per_key(table: pa.Table, *, key: str, ts_column: str, as_of: int | None = None) -> pa.Table:
    """The latest row of each key with `ts_column <= as_of` (all rows when None), columnar (sort + take)."""
    for role, col in (("key", key), ("ts_column", ts_column)):
        if col not in table.column_names:
            raise KeyError(f"materialize: {role} '{col}' is not a column; columns: {table.column_names}")
    if as_of is not None:
        table = table.filter(pc.less_equal(epoch_seconds(table.column(ts_column)), as_of))
    if table.num_rows == 0:
        return table
    ts = pc.fill_null(pc.cast(epoch_seconds(table.column(ts_column)), pa.float64(), safe=False), -np.inf)
    order = pc.sort_indices(  # stable: among equal (key, ts) the later input row stays last
        pa.table({"k": table.column(key), "t": ts}), sort_keys=[("k", "ascending"), ("t", "ascending")]
    )
    keys = table.column(key).take(order).combine_chunks()
    if pa.types.is_dictionary(keys.type):
        keys = keys.dictionary_decode()
    # a row is its key's last when the next sorted key differs (null keys group together, at the end)
    differs = pc.fill_null(pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)), False)
    null_edge = pc.not_equal(keys.slice(1).is_null(), keys.slice(0, len(keys) - 1).is_null())
    last = np.append(pc.or_(differs, null_edge).to_numpy(zero_copy_only=False), True)
    return table.take(order.filter(pa.array(last)))


def materialize(
    store: OnlineStore,
    entity: str,
    table: pa.Table,
    *,
    key: str,
    ts_column: str,
    ttl_seconds: float | None = None,
    features: Sequence[str] | None = None,
    as_of: int | None = None,
) -> MaterializeReport:
    """Write the latest row per `key` (ts <= `as_of`) of `table` as `entity`'s online view.

    Args:
        store: the online store to write to.
        entity: view name, e.g. "users".
        table: offline rows, several per key allowed.
        key / ts_column: key column and seconds-since-epoch (or timestamp) column.
        ttl_seconds: TTL of the view (None: rows never expire).
        features: columns to keep (default: all but `key`); `ts_column` is always kept, TTL reads it.
        as_of: ignore rows after this time (seconds since the epoch); None: all rows.
    """
    start = time.perf_counter()
    if features is None:
        keep = [c for c in table.column_names if c != key]
    else:
        missing = [c for c in features if c not in table.column_names]
        if missing:
            raise KeyError(
                f"materialize '{entity}': features {missing} are not columns of the table; "
                f"columns: {table.column_names}"
            )
        keep = [c for c in features if c != key]
        if ts_column not in keep:
            keep.append(ts_column)
    if ts_column == key:
        raise ValueError(f"materialize '{entity}': ts_column '{ts_column}' must differ from key '{key}'")
    selected = latest_per_key(table.select([key, *keep]), key=key, ts_column=ts_column, as_of=as_of)
    rows_as_of = table.num_rows if as_of is None else int(
        pc.sum(pc.less_equal(epoch_seconds(table.column(ts_column)), as_of)).as_py() or 0
    )
    written = store.write(entity, selected, key=key, ts_column=ts_column, ttl_seconds=ttl_seconds)
    return MaterializeReport(
        entity=entity,
        rows_in=table.num_rows,
        rows_as_of=rows_as_of,
        entities_written=written,
        seconds=time.perf_counter() - start,
        as_of=as_of,
        version=store.entities()[entity].version,
    )
