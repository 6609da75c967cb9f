"""Behaviour sequences: each event's history of the same user's earlier items, and each user's latest history.

A history holds the items of the user's events strictly before the event's time (events at the same
second are not history of each other), optionally only events with a positive `positive` column, most
recent last, at most `max_len` of them. Built columnar: the events are sorted by (user, time) once (a
packed-key sort), each event's window into the sorted history candidates follows from running counts,
and the list column is gathered from offsets in bounded chunks into one preallocated array; no loop over
rows and no [events, max_len] matrix.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.offline import as_array, composite_keys, encode_keys, int_times, require_columns

_MAX_INT32_OFFSET = 2**31 - 1
_GATHER_CHUNK_VALUES = 1 << 20  # history values built per gather step: bounds each temporary to ~8 MiB


def _masks(
    events: pa.Table, user: str, item: str, ts: str, positive: str | None, as_of: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, pa.Array]:
    """(user codes, times, time validity, history-candidate mask, user dictionary)."""
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
    return codes, t, valid, ok, dictionary


def _stable_sort(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, sorted keys) with `order == np.argsort(keys, kind="stable")` for int64 `keys`.

    When the key range leaves room, each key and its position are packed into one int64 and sorted with the
    (SIMD) plain sort, which is several times faster than numpy's stable argsort; ties keep their order
    because the position is the low bits.
    """
    n = len(keys)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    lo = int(keys.min())
    bits = max(1, (n - 1).bit_length())
    if int(keys.max()) - lo >= 1 << (63 - bits):
        order = np.argsort(keys, kind="stable")
        return order, keys[order]
    packed = keys - lo
    packed <<= bits
    packed |= np.arange(n, dtype=np.int64)
    packed.sort()
    order = packed & ((1 << bits) - 1)
    packed >>= bits
    packed += lo
    return order, packed


def _candidates(
    events: pa.Table, user: str, item: str, ts: str, positive: str | None, as_of: int | None = None
) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(user codes, times, candidate rows sorted by (user, time), user dictionary)."""
    codes, t, _, ok, dictionary = _masks(events, user, item, ts, positive, as_of)
    rows = np.flatnonzero(ok)
    (comp,) = composite_keys([codes[rows]], [t[rows]])
    return codes, t, rows[_stable_sort(comp)[0]], dictionary


def _list_array(values: pa.Array, offsets: np.ndarray) -> pa.Array:
    if offsets[-1] > _MAX_INT32_OFFSET:
        return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def _gather(items: pa.Array, rows: np.ndarray, start: np.ndarray, length: np.ndarray) -> pa.Array:
    """List array whose i-th list is items[rows[start[i] : start[i] + length[i]]].

    The flat positions are built for a bounded number of values at a time and written into one
    preallocated array: numeric items are gathered straight into the output values, other types into an
    int64 index that one Arrow `take` resolves.
    """
    offsets = np.zeros(len(length) + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])
    total = int(offsets[-1])
    source = items.take(pa.array(rows, pa.int64()))
    numeric = pa.types.is_integer(items.type) or pa.types.is_floating(items.type)
    src = source.to_numpy(zero_copy_only=False) if numeric else np.empty(0, np.int64)
    out = np.empty(total, dtype=src.dtype)
    step = max(1, _GATHER_CHUNK_VALUES // max(1, int(length.max(initial=0))))
    ramp = np.arange(min(total, step * int(length.max(initial=0))), dtype=np.int64)
    for lo in range(0, len(length), step):
        hi = min(lo + step, len(length))
        a, b = int(offsets[lo]), int(offsets[hi])
        if a == b:
            continue
        flat = np.repeat(start[lo:hi] - (offsets[lo:hi] - a), length[lo:hi])
        flat += ramp[: b - a]
        if numeric:
            np.take(src, flat, out=out[a:b], mode="clip")  # positions are in range; "clip" skips a buffer
        else:
            out[a:b] = flat
    values = pa.array(out, type=items.type) if numeric else source.take(pa.array(out, pa.int64()))
    return _list_array(values, offsets)


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
    codes, t, valid, ok, _ = _masks(events, user, item, ts, positive)
    rows, start, length = _history_windows(codes, t, valid, ok, max_len)
    del codes, t, valid, ok  # only the windows are needed from here; frees room for the output
    return _gather(as_array(events.column(item)), rows, start, length)


def _history_windows(
    codes: np.ndarray, t: np.ndarray, valid: np.ndarray, ok: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate rows sorted by (user, time), per-event window start into them, per-event window length).

    One sort of the events by (user, time); the candidates before an event are a running count over that
    order, taken at the first event of the event's (user, time), resp. of its user.
    """
    n = len(codes)
    start = np.zeros(n, dtype=np.int64)
    length = np.zeros(n, dtype=np.int64)
    e_rows = np.flatnonzero(valid & (codes >= 0))  # the events that can have a history
    if len(e_rows) == 0:
        return e_rows, start, length
    (comp,) = composite_keys([codes[e_rows]], [t[e_rows]])
    order, comp = _stable_sort(comp)
    e_rows = e_rows[order]  # sorted by (user, time), input order within equal times
    del order
    is_cand = ok[e_rows]
    rows = e_rows[is_cand]  # the history candidates sorted by (user, time): the lists are windows of it
    before = np.cumsum(is_cand)
    before -= is_cand  # candidates sorted before each event
    # `before` never decreases, so a running maximum carries each group's first value through the group.
    new_time = np.empty(len(comp), dtype=bool)
    new_time[0] = True
    np.not_equal(comp[1:], comp[:-1], out=new_time[1:])
    del comp
    end = np.maximum.accumulate(np.where(new_time, before, 0))
    user_codes = codes[e_rows]
    new_user = new_time  # reuse: the user's first event also starts a new time
    np.not_equal(user_codes[1:], user_codes[:-1], out=new_user[1:])
    del user_codes
    window = np.maximum.accumulate(np.where(new_user, before, 0))  # candidates before the user's first event
    del before, new_user
    np.subtract(end, window, out=window)
    np.minimum(window, max_len, out=window)
    length[e_rows] = window
    np.subtract(end, window, out=end)
    start[e_rows] = end
    return rows, start, length


def latest_histories(
    events: pa.Table,
    *,
    user: str,
    item: str,
    ts: str = "ts",
    max_len: int,
    positive: str | None = None,
    as_of: int | None = None,
    times: bool = False,
) -> pa.Table:
    """One row per user with history up to `as_of` (all rows when None): the last `max_len` items.

    This is the history a request after `as_of` sees (events at exactly `as_of` included). Columns: `user`,
    `history` (list, most recent last), `ts` (time of the newest item), and with `times` also `history_ts` (each
    item's time: what the stream processor needs to merge a late event into a stored history). Users without
    any history item are left out; rows come in order of the user's first appearance; events at the same time
    keep their row order.
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    codes, t, rows, dictionary = _candidates(events, user, item, ts, positive, as_of)
    items = as_array(events.column(item))
    sorted_codes = codes[rows]
    last = np.flatnonzero(np.r_[sorted_codes[1:] != sorted_codes[:-1], True]) if len(rows) else rows
    first = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if len(rows) else rows
    length = np.minimum(last - first + 1, max_len)
    columns = {
        user: dictionary.take(pa.array(sorted_codes[last], pa.int64())),
        "history": _gather(items, rows, last + 1 - length, length),
        ts: pa.array(t[rows[last]], pa.int64()),
    }
    if times:
        columns["history_ts"] = _gather(pa.array(t, pa.int64()), rows, last + 1 - length, length)
    return pa.table(columns)
