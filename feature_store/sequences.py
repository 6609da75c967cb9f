"""Behaviour sequences: each event's history of the same user's earlier items, and each user's latest history.

A history holds the items of the user's events strictly before the event's time (events at the same
second are not history of each other), optionally only events with a positive `positive` column, most
recent last, at most `max_len` of them. Built columnar: the history candidates are sorted by (user, time)
once, every event finds its window with two `searchsorted` calls, and the list column is assembled from
offsets and one gather; no loop over rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.offline import as_array, composite_keys, encode_keys, int_times, require_columns

_MAX_INT32_OFFSET = 2**31 - 1


def _candidates(
    events: pa.Table, user: str, item: str, ts: str, positive: str | None, as_of: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, pa.Array]:
    """(user codes, times, time validity, candidate rows sorted by (user, time), user dictionary)."""
    require_columns(events, [user, item, ts] + ([positive] if positive else []), "events")
    codes, dictionary = encode_keys(as_array(events.column(user)))
    t, valid = int_times(events.column(ts), ts)
    ok = valid & (codes >= 0) & pc.is_valid(as_array(events.column(item))).to_numpy(zero_copy_only=False)
    if positive is not None:
        pos = as_array(events.column(positive))
        if not (
            pa.types.is_integer(pos.type) or pa.types.is_floating(pos.type) or pa.types.is_boolean(pos.type)
        ):
            raise TypeError(f"events: positive column '{positive}' has type {pos.type}; expected a number")
        ok &= pc.fill_null(pc.greater(pos.cast(pa.float64()), 0.0), False).to_numpy(zero_copy_only=False)
    if as_of is not None:
        ok &= t <= as_of
    rows = np.flatnonzero(ok)
    (comp,) = composite_keys([codes[rows]], [t[rows]])
    rows = rows[np.argsort(comp, kind="stable")]
    return codes, t, valid, rows, dictionary


def _list_array(values: pa.Array, offsets: np.ndarray) -> pa.Array:
    if offsets[-1] > _MAX_INT32_OFFSET:
        return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def _gather(items: pa.Array, rows: np.ndarray, start: np.ndarray, length: np.ndarray) -> pa.Array:
    """List array whose i-th list is items[rows[start[i] : start[i] + length[i]]]."""
    offsets = np.zeros(len(length) + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])
    flat = np.repeat(start - offsets[:-1], length) + np.arange(offsets[-1], dtype=np.int64)
    return _list_array(items.take(pa.array(rows[flat], pa.int64())), offsets)


def history_sequences(
    events: pa.Table,
    *,
    user: str,
    item: str,
    ts: str = "ts",
    max_len: int,
    positive: str | None = None,
) -> pa.ListArray:
    """For each event (same order), the items of the user's events strictly before it, most recent last.

    Args:
        events: rows with `user`, `item`, `ts` (int64 Unix seconds) and optionally `positive`.
        max_len: keep at most the `max_len` most recent items.
        positive: when given, only events with `positive > 0` count as history (e.g. clicks, purchases).

    Events with a null user or time get an empty history; events with a null user, item or time are never
    history. Items at the same time keep their input order. Returns a list<item type> array (large_list
    past 2^31 values), one entry per event.
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    codes, t, valid, rows, _ = _candidates(events, user, item, ts, positive)
    items = as_array(events.column(item))
    e_ok = valid & (codes >= 0)
    safe_codes = np.where(e_ok, codes, 0)
    t_min = int(t[valid].min()) if valid.any() else 0
    t_eff = np.where(valid, t, t_min)  # null times: any valid value keeps the key range tight
    cand_comp, event_comp, user_start_comp = composite_keys(
        [codes[rows], safe_codes, safe_codes], [t[rows], t_eff, np.full(len(t), t_min)]
    )
    end = np.searchsorted(cand_comp, event_comp, side="left")
    first = np.searchsorted(cand_comp, user_start_comp, side="left")
    length = np.where(e_ok, np.minimum(end - first, max_len), 0)
    return _gather(items, rows, end - length, length)


def latest_histories(
    events: pa.Table,
    *,
    user: str,
    item: str,
    ts: str = "ts",
    max_len: int,
    positive: str | None = None,
    as_of: int | None = None,
) -> pa.Table:
    """One row per user with history up to `as_of` (all rows when None): the last `max_len` items.

    This is the history a request after `as_of` sees (events at exactly `as_of` included). Columns: `user`,
    `history` (list, most recent last), `ts` (time of the newest item). Users without any history item are
    left out; rows come in order of the user's first appearance.
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    codes, t, _, rows, dictionary = _candidates(events, user, item, ts, positive, as_of)
    items = as_array(events.column(item))
    sorted_codes = codes[rows]
    last = np.flatnonzero(np.r_[sorted_codes[1:] != sorted_codes[:-1], True]) if len(rows) else rows
    first = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if len(rows) else rows
    length = np.minimum(last - first + 1, max_len)
    return pa.table(
        {
            user: dictionary.take(pa.array(sorted_codes[last], pa.int64())),
            "history": _gather(items, rows, last + 1 - length, length),
            ts: pa.array(t[rows[last]], pa.int64()),
        }
    )
