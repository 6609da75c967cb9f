"""The features events keep fresh, as functions shared by the batch job and the stream processor.

Each view is a function of a user's (or item's) events, written so that applying it to the stored row plus new
events gives what applying it to all the events would: the batch path (`recforge materialize`) calls the same
function once over the whole log, the processor over (stored rows as events) + (new events), so online equals
offline by construction, not by a second implementation.

- `user_history` (`history_view`): per sequence feature the last `max_len` items (positive events only when the
  feature says so), most recent last, with each item's time in `<name>_ts`; the view's `ts` is the newest item's
  time. `sequences.latest_histories` builds it; the stored items carry their times, so a late event is merged
  into its place.
- `user_activity` (`activity_view`): per user the count of each event type (`n_<type>`), purchases (events of
  `events.purchase_types`), revenue (their summed `value`), `last_purchase_ts`, and `ts` (the newest event).
  Counts, sums and maxima combine exactly (revenue up to float rounding: ~1e-15 relative).
- `item_popularity` (`popularity_view`): per item the count of each event type and `trend`, positive events
  weighted by half-life decay to the item's newest event `ts`: sum 2^-((ts - t_i) / half_life). Two partial
  scores combine by decaying the older to the newer `ts` (exact up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.config import FeatureStoreConfig
from feature_store.sequences import latest_histories

HISTORY_VIEW = "user_history"
ACTIVITY_VIEW = "user_activity"
POPULARITY_VIEW = "item_popularity"
LABEL = "_positive"


@dataclass(frozen=True)
class Sequence:
    name: str
    column: str  # the event column the history holds (the item key, or an item attribute)
    max_len: int
    positive_only: bool


@dataclass(frozen=True)
class StreamFeatures:
    """What the views need from a scenario's config."""

    user_key: str
    item_key: str
    types: tuple[str, ...]
    positive_types: tuple[str, ...]
    purchase_types: tuple[str, ...]
    sequences: tuple[Sequence, ...]
    half_life_s: float

    @classmethod
    def from_config(cls, cfg: FeatureStoreConfig) -> StreamFeatures:
        f, e = cfg.features, cfg.events
        cats = {c.name: c.column or c.name for c in f.categorical}
        seqs = tuple(Sequence(s.name, cats.get(s.source, s.source), s.max_len, s.positive_only) for s in f.sequence)
        return cls(f.user_key, f.item_key, tuple(e.types), tuple(e.positive_types), tuple(e.purchase_types), seqs,
                   e.stream.popularity_half_life_hours * 3600.0)

    def type_columns(self) -> list[str]:
        return [f"n_{t}" for t in self.types]


def interactions(events: pa.Table, sf: StreamFeatures) -> pa.Table:
    """Event-log rows (`contract.event_schema`) as interaction rows: the scenario's key names, a positive flag."""
    t = events.select(["user_id", "item_id", "ts", "type", "value"]).rename_columns(
        [sf.user_key, sf.item_key, "ts", "type", "value"])
    positive = pc.is_in(t.column("type"), value_set=pa.array(list(sf.positive_types), pa.string()))
    return t.append_column(LABEL, pc.cast(positive, pa.int8()))


# --------------------------------------------------------------------------------------------- histories


def history_view(rows: pa.Table, sf: StreamFeatures, *, stored: pa.Table | None = None,
                 as_of: int | None = None) -> pa.Table | None:
    """[user key, <seq>..., <seq>_ts..., ts] for users with any history item; None without sequence features.

    `stored`: rows of this view already written (the stream's state for the users in `rows`): their items go
    before the new events, as the log has them, so the result is the history of all the events together."""
    if not sf.sequences:
        return None
    parts = []
    for seq in sf.sequences:
        part = rows.select([sf.user_key, seq.column, "ts", LABEL])
        if stored is not None and stored.num_rows:
            part = pa.concat_tables([_stored_rows(stored, seq, sf, part.schema), part])
        parts.append(latest_histories(part, user=sf.user_key, item=seq.column, ts="ts", max_len=seq.max_len,
                                      positive=LABEL if seq.positive_only else None, as_of=as_of, times=True))
    # one row per user holding any sequence (Arrow's join takes no list columns: aligned with index_in + take)
    users = pc.unique(pa.chunked_array([p.column(sf.user_key) for p in parts]).combine_chunks())
    out: dict[str, Any] = {sf.user_key: users}
    newest: Any = None
    for seq, part in zip(sf.sequences, parts):
        pos = pc.index_in(users, value_set=part.column(sf.user_key).combine_chunks())
        out[seq.name] = part.column("history").take(pos)
        out[f"{seq.name}_ts"] = part.column("history_ts").take(pos)
        t = part.column("ts").take(pos)
        newest = t if newest is None else pc.max_element_wise(newest, t)
    schema = pa.schema([(sf.user_key, rows.schema.field(sf.user_key).type),
                        *((s.name, pa.list_(rows.schema.field(s.column).type)) for s in sf.sequences),
                        *((f"{s.name}_ts", pa.list_(pa.int64())) for s in sf.sequences), ("ts", pa.int64())])
    return pa.table({**{c: out[c] for c in schema.names[:-1]}, "ts": newest}).cast(schema)


def _stored_rows(stored: pa.Table, seq: Sequence, sf: StreamFeatures, schema: pa.Schema) -> pa.Table:
    """One sequence of a stored history view as positive interaction rows, in the stored (time) order."""
    items = stored.column(seq.name).combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(items), 0).to_numpy(zero_copy_only=False)
    users = pc.take(stored.column(sf.user_key), pa.array(np.repeat(np.arange(stored.num_rows), lengths)))
    flat = pc.list_flatten(items)
    return pa.table({sf.user_key: users, seq.column: flat,
                     "ts": pc.list_flatten(stored.column(f"{seq.name}_ts").combine_chunks()),
                     LABEL: pa.array(np.ones(len(flat), np.int8))}).cast(schema)


# ---------------------------------------------------------------------------------------------- activity


def _type_counts(rows: pa.Table, key: str, types: tuple[str, ...]) -> dict[str, pa.Array]:
    """Per key (in the order of `pc.unique(rows[key])`): the count of each type, as int64 arrays."""
    keys = rows.column(key)
    uniq = pc.unique(keys)
    idx = pc.index_in(keys, value_set=uniq).to_numpy(zero_copy_only=False)
    out = {}
    for t in types:
        mask = pc.equal(rows.column("type"), t).to_numpy(zero_copy_only=False)
        out[f"n_{t}"] = pa.array(np.bincount(idx[mask], minlength=len(uniq)).astype(np.int64))
    return {key: uniq, **out}  # type: ignore[dict-item]


def activity_view(rows: pa.Table, sf: StreamFeatures) -> pa.Table:
    """[user key, n_<type>..., purchases, revenue, last_purchase_ts, ts], one row per user with events."""
    cols = _type_counts(rows, sf.user_key, sf.types)
    uniq = cols[sf.user_key]
    n = len(uniq)
    idx = pc.index_in(rows.column(sf.user_key), value_set=uniq).to_numpy(zero_copy_only=False)
    ts = rows.column("ts").to_numpy()
    bought = pc.is_in(rows.column("type"), value_set=pa.array(list(sf.purchase_types), pa.string())).to_numpy(
        zero_copy_only=False)
    value = pc.fill_null(rows.column("value"), 0.0).to_numpy()
    purchases = np.bincount(idx[bought], minlength=n).astype(np.int64)
    revenue = np.zeros(n, np.float64)
    np.add.at(revenue, idx[bought], value[bought])
    last_buy = np.full(n, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(last_buy, idx[bought], ts[bought])
    newest = np.full(n, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(newest, idx, ts)
    return pa.table({**cols, "purchases": pa.array(purchases), "revenue": pa.array(revenue),
                     "last_purchase_ts": pa.array(last_buy, mask=purchases == 0), "ts": pa.array(newest)})


def combine_activity(a: pa.Table, b: pa.Table, sf: StreamFeatures) -> pa.Table:
    """The activity of a's and b's events together (a: stored rows, b: new events' activity)."""
    both = pa.concat_tables([a.select(b.column_names).cast(b.schema), b])
    key = both.column(sf.user_key)
    uniq = pc.unique(key)
    idx = pc.index_in(key, value_set=uniq).to_numpy(zero_copy_only=False)
    n = len(uniq)
    out: dict[str, pa.Array] = {sf.user_key: uniq}
    for c in [*sf.type_columns(), "purchases"]:
        out[c] = pa.array(np.bincount(idx, weights=both.column(c).to_numpy(), minlength=n).astype(np.int64))
    revenue = np.zeros(n, np.float64)
    np.add.at(revenue, idx, both.column("revenue").to_numpy())
    out["revenue"] = pa.array(revenue)
    for c in ("last_purchase_ts", "ts"):
        v = pc.fill_null(both.column(c), np.iinfo(np.int64).min).to_numpy()
        m = np.full(n, np.iinfo(np.int64).min, np.int64)
        np.maximum.at(m, idx, v)
        out[c] = pa.array(m, mask=m == np.iinfo(np.int64).min)
    return pa.table(out)


# -------------------------------------------------------------------------------------------- popularity


def popularity_view(rows: pa.Table, sf: StreamFeatures) -> pa.Table:
    """[item key, n_<type>..., trend, ts], one row per item with events."""
    cols = _type_counts(rows, sf.item_key, sf.types)
    uniq = cols[sf.item_key]
    n = len(uniq)
    idx = pc.index_in(rows.column(sf.item_key), value_set=uniq).to_numpy(zero_copy_only=False)
    ts = rows.column("ts").to_numpy()
    newest = np.full(n, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(newest, idx, ts)
    positive = rows.column(LABEL).to_numpy(zero_copy_only=False) > 0
    weight = np.exp2(-(newest[idx] - ts) / sf.half_life_s) * positive
    trend = np.zeros(n, np.float64)
    np.add.at(trend, idx, weight)
    return pa.table({**cols, "trend": pa.array(trend), "ts": pa.array(newest)})


def combine_popularity(a: pa.Table, b: pa.Table, sf: StreamFeatures) -> pa.Table:
    """The popularity of a's and b's events together: counts add, trends decay to the newer `ts` and add."""
    both = pa.concat_tables([a.select(b.column_names).cast(b.schema), b])
    key = both.column(sf.item_key)
    uniq = pc.unique(key)
    idx = pc.index_in(key, value_set=uniq).to_numpy(zero_copy_only=False)
    n = len(uniq)
    out: dict[str, pa.Array] = {sf.item_key: uniq}
    for c in sf.type_columns():
        out[c] = pa.array(np.bincount(idx, weights=both.column(c).to_numpy(), minlength=n).astype(np.int64))
    ts = both.column("ts").to_numpy()
    newest = np.full(n, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(newest, idx, ts)
    trend = np.zeros(n, np.float64)
    np.add.at(trend, idx, both.column("trend").to_numpy() * np.exp2(-(newest[idx] - ts) / sf.half_life_s))
    out["trend"] = pa.array(trend)
    out["ts"] = pa.array(newest)
    return pa.table(out)
