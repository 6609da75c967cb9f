"""Precision-marketing user profiles: RFM and category affinity, as daily point-in-time snapshots.

A profile value is only visible once its UTC day has ended: the snapshot of day D carries `ts` = the start
of day D+1, and is joined onto events with `offline.point_in_time_join` semantics (snapshot ts <= event ts).
So a purchase earlier on the event's own day is never visible to that event, and training rows never see
what the serving path could not have known.

The profile as of a time T (`UserProfiles.latest`, `rfm_segments`, written online by materialize) holds every
purchase before T. When the data ends before T (as at materialize's default T, one second after the last event
or purchase), T's own day is complete, so its snapshot counts too (`snapshot_cutoff`): the last day's purchases
are in the online profile and segment. Before the end of the data, the next-day rule above holds (a day's snapshot would
also hold that day's purchases after T).

- RFM: `rfm_snapshots` (cumulative order count / amount net of returns and the last purchase time per user
  and day),
  `add_rfm_features` (float32 recency in days, frequency, monetary; null before the first purchase day),
  `rfm_segments` (quintile scores and a named segment from `SEGMENT_RULES`).
- Category affinity: `category_affinity_snapshots` (cumulative per-category counts as a fixed-size
  list<float32>), `fit_idf` and `add_category_affinity` (L2-normalised TF-IDF weights).
- `fit_user_profiles` / `build_user_profiles` / `latest_user_profiles`: all of it from a `ProfilesConfig`,
  with the category list and the IDF fitted on data before the train cut-off only.

Snapshot tables have the columns: <user key>, `ts` (int64, validity start) and their values.

Kept as one module (about 570 lines) because the RFM and category-affinity builders share the day-snapshot
rule above and its helpers (`_user_day_groups`, `_snapshot_indices`, `_per_user_cumsum`), and `UserProfiles`
composes both; a split would leave the visibility rule in a third module that neither half reads alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.config import ProfilesConfig
from feature_store.offline import (
    as_array,
    asof_indices,
    composite_keys,
    encode_keys,
    int_times,
    latest_per_key,
    point_in_time_join,
    require_columns,
    unify_keys,
)

DAY_SECONDS = 86_400
SNAPSHOT_TS = "ts"
COUNTS_COLUMN = "category_counts"
RFM_COLUMNS = ("rfm_recency_days", "rfm_frequency", "rfm_monetary")

# Segment rule table, evaluated top to bottom; the first row whose score ranges all hold names the user.
# (segment, (r_min, r_max), (f_min, f_max), (m_min, m_max)); scores are 1..5, 5 = best. Every one of the
# 125 score combinations matches a row (tests check it).
SEGMENT_RULES: tuple[tuple[str, tuple[int, int], tuple[int, int], tuple[int, int]], ...] = (
    ("champions", (4, 5), (4, 5), (4, 5)),  # bought recently, often, and spent the most
    ("loyal", (3, 5), (3, 5), (1, 5)),  # recent enough and frequent
    ("new", (4, 5), (1, 1), (1, 5)),  # recent, among the least frequent (first purchases)
    ("potential", (3, 5), (1, 2), (1, 5)),  # recent, not yet frequent
    ("at_risk", (1, 2), (3, 5), (1, 5)),  # used to buy often, not lately
    ("hibernating", (2, 2), (1, 2), (1, 5)),  # infrequent and a while ago
    ("lost", (1, 1), (1, 2), (1, 5)),  # infrequent and the longest ago
)


# ------------------------------------------------------------------------------------------------ helpers


def _check_new_columns(table: pa.Table, names: list[str]) -> None:
    clash = [n for n in names if n in table.column_names]
    if clash:
        raise ValueError(
            f"the events already have column(s) {clash} that the profile features would add; "
            f"rename or drop them first (or pass another name=)"
        )


def _user_day_groups(
    user: pa.Array, times: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, pa.Array]:
    """Sort `rows` by (user, day); return (sorted rows, group starts, group user codes, group days, users)."""
    codes, dictionary = encode_keys(user)
    rows = rows[codes[rows] >= 0]
    day = times[rows] // DAY_SECONDS
    (comp,) = composite_keys([codes[rows]], [day])
    order = np.argsort(comp, kind="stable")
    comp_s = comp[order]
    starts = np.flatnonzero(np.r_[True, comp_s[1:] != comp_s[:-1]]) if len(rows) else np.empty(0, np.int64)
    sorted_rows = rows[order]
    return sorted_rows, starts, codes[sorted_rows[starts]], day[order][starts], dictionary


def _per_user_cumsum(values: np.ndarray, group_codes: np.ndarray) -> np.ndarray:
    """Cumulative sum along axis 0 that restarts wherever the user code changes (groups sorted by user)."""
    if len(values) == 0:
        return values.copy()
    cum = np.cumsum(values, axis=0)
    first = np.flatnonzero(np.r_[True, group_codes[1:] != group_codes[:-1]])
    segment = np.cumsum(np.r_[True, group_codes[1:] != group_codes[:-1]]) - 1
    base = (cum - values)[first]
    return cum - base[segment]


def _snapshot_indices(
    events: pa.Table, snapshots: pa.Table, user_key: str, ts: str, ttl_seconds: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """(index of the snapshot valid at each event or -1, event times)."""
    require_columns(events, [user_key, ts], "events")
    require_columns(snapshots, [user_key, SNAPSHOT_TS], "profile snapshots")
    e_keys, s_keys = unify_keys(
        as_array(events.column(user_key)),
        as_array(snapshots.column(user_key)),
        f"events.{user_key}",
        f"snapshots.{user_key}",
    )
    s_codes, dictionary = encode_keys(s_keys)
    e_codes, _ = encode_keys(e_keys, dictionary)
    e_t, e_valid = int_times(events.column(ts), ts)
    s_t, s_valid = int_times(snapshots.column(SNAPSHOT_TS), SNAPSHOT_TS)
    idx = asof_indices(np.where(e_valid, e_codes, -1), e_t, np.where(s_valid, s_codes, -1), s_t, ttl_seconds)
    return idx, e_t


def _vectors(column: pa.Array | pa.ChunkedArray, name: str) -> np.ndarray:
    """A list<float> column of equal-length, non-null vectors as a float32 [rows, width] matrix."""
    arr = as_array(column)
    if arr.null_count:
        raise ValueError(f"column '{name}' has {arr.null_count} null vectors; snapshots must have none")
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and (lengths != width).any():
            raise ValueError(
                f"column '{name}': vectors have different lengths {sorted(set(lengths.tolist()))}"
            )
    else:
        raise TypeError(f"column '{name}' has type {arr.type}; expected a list of floats")
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(arr), width)


def _fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """A [rows, width] matrix as fixed_size_list<float32>[width]; no copy when it is C-contiguous float32."""
    width = matrix.shape[1]
    flat = np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), width)


# ---------------------------------------------------------------------------------------------------- RFM


def rfm_snapshots(
    purchases: pa.Table, *, user_key: str, ts: str = "ts", amount: str = "revenue", order: str | None = None
) -> pa.Table:
    """One row per (user, UTC day with purchases or returns), valid from the start of the next day.

    Columns: `user_key`, `ts` (start of the next UTC day), `last_purchase_ts` (the user's newest purchase up
    to that day), `frequency` (cumulative purchases: distinct values of `order` when given, so one basket of
    many lines is one purchase (a purchase row without an order id counts once), else purchase rows),
    `monetary` (cumulative `amount`; a null amount counts as a purchase of 0). A row with a negative amount is
    a return: it lowers monetary on its own day and is not a purchase (it changes neither frequency nor
    `last_purchase_ts`). A user's snapshots start on the day of their first purchase (returns before it still
    count in monetary). Rows with a null user or time are skipped. Rows are ordered by user (first
    appearance), then day.
    """
    require_columns(purchases, [user_key, ts, amount, *([order] if order else [])], "purchases")
    t, valid = int_times(purchases.column(ts), ts)
    money = as_array(purchases.column(amount))
    if not (pa.types.is_integer(money.type) or pa.types.is_floating(money.type)):
        raise TypeError(f"purchases: amount column '{amount}' has type {money.type}; expected a number")
    amt = pc.fill_null(money.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    is_purchase = amt >= 0
    rows, starts, g_codes, g_days, users = _user_day_groups(
        as_array(purchases.column(user_key)), t, np.flatnonzero(valid)
    )
    user_codes, _ = encode_keys(as_array(purchases.column(user_key)))
    counted = is_purchase & valid & (user_codes >= 0)
    if order is not None:
        counted &= _first_of_each_order(user_codes, as_array(purchases.column(order)), t, counted)
    if len(rows):
        count = np.add.reduceat(counted[rows].astype(np.int64), starts)
        spent = np.add.reduceat(amt[rows], starts)
        newest = np.maximum.reduceat(np.where(is_purchase[rows], t[rows], np.iinfo(np.int64).min), starts)
        bought = np.maximum.reduceat(is_purchase[rows], starts)
    else:
        count, spent, newest = (np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int64))
        bought = np.empty(0, bool)
    # days with returns only carry the newest purchase of an earlier day of the same user forward
    source = np.maximum.accumulate(np.where(bought, np.arange(len(starts)), -1)) if len(starts) else starts
    since_first = (source >= 0) & (g_codes[np.clip(source, 0, None)] == g_codes)
    keep = np.flatnonzero(since_first)
    return pa.table(
        {
            user_key: users.take(pa.array(g_codes[keep], pa.int64())),
            SNAPSHOT_TS: pa.array((g_days[keep] + 1) * DAY_SECONDS, pa.int64()),
            "last_purchase_ts": pa.array(newest[source[keep]], pa.int64()),
            "frequency": pa.array(_per_user_cumsum(count, g_codes)[keep], pa.int64()),
            "monetary": pa.array(_per_user_cumsum(spent, g_codes)[keep], pa.float64()),
        }
    )


def _first_of_each_order(user_codes: np.ndarray, orders: pa.Array, t: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """True on the earliest counted row of each (user, order) pair; every counted row without an order id."""
    o_codes, dictionary = encode_keys(orders)
    n = len(o_codes)
    o_codes = np.where(o_codes < 0, len(dictionary) + np.arange(n), o_codes)  # no order id: its own order
    rows = np.flatnonzero(counted)
    pair = user_codes[rows] * (len(dictionary) + n) + o_codes[rows]
    order = np.lexsort((rows, t[rows], pair))
    pair_s = pair[order]
    first = np.zeros(n, bool)
    first[rows[order][np.r_[True, pair_s[1:] != pair_s[:-1]][: len(rows)]]] = True
    return first


def add_rfm_features(
    events: pa.Table,
    snapshots: pa.Table,
    *,
    user_key: str,
    ts: str = "ts",
    ttl_seconds: float | None = None,
) -> pa.Table:
    """Add float32 `rfm_recency_days`, `rfm_frequency`, `rfm_monetary` as known at each event's time.

    Recency is `(event ts - last_purchase_ts) / 86400`. All three are null where the user had no purchase
    before the event's UTC day (or the newest snapshot is older than `ttl_seconds`).
    """
    _check_new_columns(events, list(RFM_COLUMNS))
    require_columns(snapshots, ["last_purchase_ts", "frequency", "monetary"], "RFM snapshots")
    idx, e_t = _snapshot_indices(events, snapshots, user_key, ts, ttl_seconds)
    miss = idx < 0
    safe = np.clip(idx, 0, None)

    def col(name: str) -> np.ndarray:
        values = as_array(snapshots.column(name)).to_numpy(zero_copy_only=False)
        return values[safe] if len(values) else np.zeros(len(idx), values.dtype)

    recency = (e_t - col("last_purchase_ts")) / DAY_SECONDS
    out = events
    for name, values in zip(RFM_COLUMNS, (recency, col("frequency"), col("monetary"))):
        out = out.append_column(name, pa.array(values.astype(np.float32), pa.float32(), mask=miss))
    return out


def _fifths(values: np.ndarray) -> np.ndarray:
    """Score 1..5 = 1 + floor(5 * share of users with a strictly lower value); ties share a score."""
    n = len(values)
    if n == 0:
        return np.empty(0, np.int8)
    lower = np.searchsorted(np.sort(values), values, side="left")
    return (1 + (5 * lower) // n).astype(np.int8)


def snapshot_cutoff(as_of: int, data_end_ts: int | None) -> int:
    """The latest snapshot `ts` a profile as of `as_of` may use: `as_of` itself (the days ended by then), or
    the end of `as_of`'s UTC day when the data ends at or before `as_of` (`data_end_ts`: one second after the
    newest purchase or return), since that day then holds nothing later than `as_of`."""
    if data_end_ts is not None and as_of >= data_end_ts:
        return (as_of // DAY_SECONDS + 1) * DAY_SECONDS
    return as_of


def rfm_segments(
    snapshots: pa.Table, *, as_of: int, user_key: str, data_end_ts: int | None = None
) -> pa.Table:
    """Each user's RFM at `as_of` (newest snapshot with ts <= `snapshot_cutoff(as_of, data_end_ts)`: with
    `data_end_ts` at or before `as_of`, the purchases of `as_of`'s own day count) with scores and a segment.

    Scores (int8, 1..5, 5 = best) are quintiles over the users present: a user's score is 1 + floor(5 x the
    share of users with a strictly worse value), so ties share a score. Recency is scored on the last
    purchase time (more recent = higher), frequency and monetary on their values. The segment is the first
    row of `SEGMENT_RULES` whose ranges hold. Columns: user_key, recency_days, frequency, monetary,
    r_score, f_score, m_score, segment.
    """
    latest = latest_per_key(snapshots, user_key, SNAPSHOT_TS, snapshot_cutoff(as_of, data_end_ts))
    last = as_array(latest.column("last_purchase_ts")).to_numpy(zero_copy_only=False).astype(np.int64)
    freq = as_array(latest.column("frequency")).to_numpy(zero_copy_only=False).astype(np.float64)
    money = as_array(latest.column("monetary")).to_numpy(zero_copy_only=False).astype(np.float64)
    r, f, m = _fifths(last), _fifths(freq), _fifths(money)
    return pa.table(
        {
            user_key: latest.column(user_key),
            "recency_days": pa.array((as_of - last) / DAY_SECONDS, pa.float64()),
            "frequency": pa.array(freq.astype(np.int64)),
            "monetary": pa.array(money),
            "r_score": pa.array(r, pa.int8()),
            "f_score": pa.array(f, pa.int8()),
            "m_score": pa.array(m, pa.int8()),
            "segment": pa.array(segment_of(r, f, m), pa.string()),
        }
    )


def segment_of(r: np.ndarray, f: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Segment names for score arrays, by `SEGMENT_RULES` (first match wins)."""
    r, f, m = np.asarray(r), np.asarray(f), np.asarray(m)
    conditions = [
        (r >= r0) & (r <= r1) & (f >= f0) & (f <= f1) & (m >= m0) & (m <= m1)
        for _, (r0, r1), (f0, f1), (m0, m1) in SEGMENT_RULES
    ]
    names = [rule[0] for rule in SEGMENT_RULES]
    return np.select(conditions, np.array(names, dtype=object), default="unscored")


# ------------------------------------------------------------------------------------- category affinity


def category_affinity_snapshots(
    interactions: pa.Table,
    *,
    user_key: str,
    category: str,
    ts: str = "ts",
    categories: list[str] | None = None,
) -> tuple[pa.Table, list[str]]:
    """Daily cumulative per-category interaction counts per user, valid from the start of the next day.

    Categories are compared as strings (an integer category 12 is "12"). `categories` fixes the vector
    order and width; rows whose category is not in it (or is null) are not counted. Default: the sorted
    distinct categories of `interactions` (sorted in their own type, then written as strings).
    Returns (table of user_key, ts, `category_counts` fixed_size_list<float32>[C], the categories).
    """
    require_columns(interactions, [user_key, ts, category], "interactions")
    cat_col = as_array(interactions.column(category))
    if categories is None:
        uniq = pc.drop_null(pc.unique(cat_col))
        uniq = uniq.take(pc.sort_indices(uniq))
        categories = [str(v) for v in uniq.to_pylist()]
    else:
        categories = [str(c) for c in categories]
        dupes = sorted({c for c in categories if categories.count(c) > 1})
        if dupes:
            raise ValueError(f"categories {dupes} are listed more than once; list each category once")
    if not categories:
        raise ValueError(
            f"interactions: column '{category}' has no non-null categories; there is nothing to build "
            f"affinity from (disable profiles.category or fix the category join)"
        )
    cat_codes, _ = encode_keys(cat_col.cast(pa.string()), pa.array(categories, pa.string()))
    t, valid = int_times(interactions.column(ts), ts)
    rows, starts, g_codes, g_days, users = _user_day_groups(
        as_array(interactions.column(user_key)), t, np.flatnonzero(valid & (cat_codes >= 0))
    )
    width = len(categories)
    group_of_row = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(rows)]))
    counts = np.bincount(group_of_row * width + cat_codes[rows], minlength=len(starts) * width)
    cumulative = _per_user_cumsum(counts.reshape(len(starts), width), g_codes)
    table = pa.table(
        {
            user_key: users.take(pa.array(g_codes, pa.int64())),
            SNAPSHOT_TS: pa.array((g_days + 1) * DAY_SECONDS, pa.int64()),
            COUNTS_COLUMN: _fixed_list(cumulative),
        }
    )
    return table, categories


def fit_idf(
    snapshots_or_counts: pa.Table | np.ndarray, as_of: int | None = None, *, user_key: str | None = None
) -> np.ndarray:
    """IDF per category, `log((1 + N) / (1 + df)) + 1`, over users' latest counts.

    Given affinity snapshots, each user's newest snapshot with ts <= `as_of` is used (N = those users,
    df = how many of them have a count > 0); the user key column is the one besides ts and counts unless
    named. Given a [users, categories] count matrix, it is used as is.
    """
    if isinstance(snapshots_or_counts, pa.Table):
        table = snapshots_or_counts
        if user_key is None:
            others = [c for c in table.column_names if c not in (SNAPSHOT_TS, COUNTS_COLUMN)]
            if len(others) != 1:
                raise ValueError(f"fit_idf: cannot tell the user key among {others}; pass user_key=")
            user_key = others[0]
        require_columns(table, [user_key, SNAPSHOT_TS, COUNTS_COLUMN], "affinity snapshots")
        counts = _vectors(
            latest_per_key(table, user_key, SNAPSHOT_TS, as_of).column(COUNTS_COLUMN), COUNTS_COLUMN
        )
    else:
        counts = np.asarray(snapshots_or_counts, dtype=np.float64)
        if counts.ndim != 2:
            raise ValueError(f"fit_idf: expected a [users, categories] matrix, got shape {counts.shape}")
    n_users = counts.shape[0]
    df = (counts > 0).sum(axis=0)
    return np.log((1.0 + n_users) / (1.0 + df)) + 1.0


def add_category_affinity(
    events: pa.Table,
    snapshots: pa.Table,
    idf: np.ndarray,
    *,
    user_key: str,
    ts: str = "ts",
    ttl_seconds: float | None = None,
    name: str = "cat_affinity",
    block_rows: int = 65_536,
) -> pa.Table:
    """Add `name`: fixed_size_list<float32>[C] of L2-normalised TF-IDF weights as known at each event.

    tf = count / total count of the user's snapshot valid at the event; weight = tf * idf, then divided by
    its L2 norm. Events without history (or whose snapshot is older than the TTL) get a vector of zeros.
    """
    _check_new_columns(events, [name])
    require_columns(snapshots, [COUNTS_COLUMN], "affinity snapshots")
    idf = np.asarray(idf, dtype=np.float64)
    matrix = _vectors(snapshots.column(COUNTS_COLUMN), COUNTS_COLUMN)
    width = matrix.shape[1] if snapshots.num_rows else len(idf)
    if len(idf) != width:
        raise ValueError(
            f"idf has {len(idf)} values but the snapshots' '{COUNTS_COLUMN}' vectors have {width}; fit the "
            f"IDF on the same snapshots (same categories)"
        )
    weights = _tfidf_weights(matrix.reshape(snapshots.num_rows, width), idf, block_rows)
    idx, _ = _snapshot_indices(events, snapshots, user_key, ts, ttl_seconds)
    np.putmask(idx, idx < 0, len(weights) - 1)  # events without a valid snapshot read the zero row
    out = np.take(weights, idx, axis=0)
    return events.append_column(name, _fixed_list(out))


def _tfidf_weights(counts: np.ndarray, idf: np.ndarray, block_rows: int) -> np.ndarray:
    """float32 [rows + 1, C]: each count row's L2-normalised TF-IDF weights (float64 math), then a zero row.

    Computed once per snapshot row (not per event), `block_rows` rows at a time to bound the float64
    temporaries.
    """
    out = np.zeros((len(counts) + 1, len(idf)), dtype=np.float32)
    for lo in range(0, len(counts), block_rows):
        block = counts[lo : lo + block_rows].astype(np.float64)
        total = block.sum(axis=1, keepdims=True)
        weights = block / np.where(total > 0, total, 1.0) * idf
        norm = np.sqrt((weights**2).sum(axis=1, keepdims=True))
        out[lo : lo + len(block)] = weights / np.where(norm > 0, norm, 1.0)
    return out


# ----------------------------------------------------------------------------------------- the whole thing


@dataclass(frozen=True)
class UserProfiles:
    """Fitted profile state: the snapshots, the affinity categories and the IDF fitted before the cut-off."""

    user_key: str
    rfm: pa.Table
    affinity: pa.Table | None
    categories: list[str]
    idf: np.ndarray | None
    ttl_seconds: float | None = None
    affinity_name: str = "cat_affinity"
    data_end_ts: int | None = None  # one second after the newest purchase or return (see `snapshot_cutoff`)

    def add_to(self, events: pa.Table, ts: str = "ts") -> pa.Table:
        """RFM columns and (when enabled) the affinity vector, point-in-time, added to `events`."""
        out = add_rfm_features(events, self.rfm, user_key=self.user_key, ts=ts, ttl_seconds=self.ttl_seconds)
        if self.affinity is not None and self.idf is not None:
            out = add_category_affinity(
                out,
                self.affinity,
                self.idf,
                user_key=self.user_key,
                ts=ts,
                ttl_seconds=self.ttl_seconds,
                name=self.affinity_name,
            )
        return out

    def latest(self, as_of: int) -> pa.Table:
        """One row per user with a purchase before `as_of`: the profile a request at `as_of` sees. The days
        before `as_of`'s count, and `as_of`'s own day too once the data has ended (`snapshot_cutoff`).

        Columns: user key, ts (= as_of), last_purchase_ts, the RFM columns (recency relative to `as_of`) and
        the affinity vector.
        """
        cutoff = snapshot_cutoff(as_of, self.data_end_ts)
        newest = latest_per_key(self.rfm, self.user_key, SNAPSHOT_TS, cutoff)
        users = pa.table(
            {
                self.user_key: newest.column(self.user_key),
                SNAPSHOT_TS: pa.array(np.full(newest.num_rows, cutoff, dtype=np.int64)),
                "last_purchase_ts": newest.column("last_purchase_ts"),
            }
        )
        out = self.add_to(users, ts=SNAPSHOT_TS)
        if cutoff != as_of:  # recency counts from `as_of`, not from the end of its day
            last = as_array(out.column("last_purchase_ts")).to_numpy(zero_copy_only=False)
            hidden = as_array(out.column("rfm_recency_days")).is_null().to_numpy(zero_copy_only=False)
            recency = pa.array(((as_of - last) / DAY_SECONDS).astype(np.float32), pa.float32(), mask=hidden)
            out = out.set_column(out.column_names.index("rfm_recency_days"), "rfm_recency_days", recency)
        return out.set_column(out.column_names.index(SNAPSHOT_TS), SNAPSHOT_TS,
                              pa.array(np.full(out.num_rows, as_of, dtype=np.int64)))


def _purchase_categories(purchases: pa.Table, items: pa.Table | None, cfg: ProfilesConfig) -> pa.Table:
    """Purchases with the category column; taken from the items table (its newest row per item) if needed."""
    category = cfg.category
    assert category is not None
    if category in purchases.column_names:
        return purchases
    if items is None or cfg.category_table is None:
        raise ValueError(
            f"profiles.category '{category}' is not a column of the purchases (they have "
            f"{purchases.column_names}) and no category table is given; set profiles.category_table "
            f"or profiles.category: null to disable affinity"
        )
    require_columns(items, [cfg.item_key, category], f"table '{cfg.category_table}'")
    if SNAPSHOT_TS in items.column_names:
        items = latest_per_key(items, cfg.item_key, SNAPSHOT_TS)
    return point_in_time_join(
        purchases, items, key=cfg.item_key, feature_ts=None, ttl_seconds=None, columns=[category]
    )


def _train_categories(purchases: pa.Table, category: str, train_end_ts: int, top_n: int | None) -> list[str]:
    t, valid = int_times(purchases.column(SNAPSHOT_TS), SNAPSHOT_TS)
    cats = as_array(purchases.column(category)).filter(pa.array(valid & (t < train_end_ts)))
    counts = pc.value_counts(pc.drop_null(cats.cast(pa.string())))
    values = counts.field("values").to_pylist()
    freq = counts.field("counts").to_pylist()
    if not values:
        raise ValueError(
            f"no purchase before train_end_ts={train_end_ts} has a '{category}'; affinity categories are "
            f"fitted on train data only: check the category join or the split"
        )
    ranked = sorted(zip(values, freq), key=lambda vc: (-vc[1], vc[0]))  # over distinct categories only
    keep = ranked[:top_n] if top_n is not None else ranked
    return sorted(v for v, _ in keep)


def fit_user_profiles(
    purchases: pa.Table, items: pa.Table | None, cfg: ProfilesConfig, *, train_end_ts: int
) -> UserProfiles:
    """Snapshots of all purchases; affinity categories (top `cfg.n_categories` by train count, else all train
    categories, sorted) and IDF from data before `train_end_ts` only. Purchases have a `ts` column."""
    rfm = rfm_snapshots(purchases, user_key=cfg.user_key, ts=SNAPSHOT_TS, amount=cfg.amount, order=cfg.order)
    ttl = cfg.ttl_days * DAY_SECONDS if cfg.ttl_days is not None else None
    t, valid = int_times(purchases.column(SNAPSHOT_TS), SNAPSHOT_TS)
    data_end = int(t[valid].max()) + 1 if valid.any() else None
    if cfg.category is None:
        return UserProfiles(cfg.user_key, rfm, None, [], None, ttl, data_end_ts=data_end)
    # affinity counts what users bought: returns (negative amounts) are not interactions
    bought = pc.invert(pc.fill_null(pc.less(purchases.column(cfg.amount), 0), False))
    with_cat = _purchase_categories(purchases.filter(bought), items, cfg)
    categories = _train_categories(with_cat, cfg.category, train_end_ts, cfg.n_categories)
    affinity, categories = category_affinity_snapshots(
        with_cat, user_key=cfg.user_key, category=cfg.category, ts=SNAPSHOT_TS, categories=categories
    )
    idf = fit_idf(affinity, train_end_ts, user_key=cfg.user_key)
    return UserProfiles(cfg.user_key, rfm, affinity, categories, idf, ttl, data_end_ts=data_end)


def build_user_profiles(
    events: pa.Table, purchases: pa.Table, items: pa.Table | None, cfg: ProfilesConfig, *, train_end_ts: int
) -> pa.Table:
    """`events` (time column `ts`) with RFM and affinity columns; see `fit_user_profiles`.

    Computes regardless of `cfg.enabled` (the caller decides whether to call it).
    """
    return fit_user_profiles(purchases, items, cfg, train_end_ts=train_end_ts).add_to(events)


def latest_user_profiles(
    purchases: pa.Table, items: pa.Table | None, cfg: ProfilesConfig, *, train_end_ts: int, as_of: int
) -> pa.Table:
    """One row per user: the profile valid at `as_of` (for the online store); see `UserProfiles.latest`."""
    return fit_user_profiles(purchases, items, cfg, train_end_ts=train_end_ts).latest(as_of)
