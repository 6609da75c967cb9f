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
TAGS_VIEW = "user_tags"
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
    tag_column: str | None = None
    attribute_views: tuple[tuple[str, str], ...] = ()  # (item attribute, the item entity view holding it)

    @classmethod
    def from_config(cls, cfg: FeatureStoreConfig) -> StreamFeatures:
        f, e = cfg.features, cfg.events
        cats = {c.name: c.source_column for c in f.categorical}
        seqs = tuple(Sequence(s.name, cats.get(s.source, s.source), s.max_len, s.positive_only) for s in f.sequence)
        tag = e.stream.tag_column
        wanted = {q.column for q in seqs if q.column != f.item_key} | ({tag} if tag else set())
        views = {c: name for name, ent in cfg.entities.items() if ent.key == f.item_key
                 for c in ent.features if c in wanted}
        return cls(f.user_key, f.item_key, tuple(e.types), tuple(e.positive_types), tuple(e.purchase_types), seqs,
                   e.stream.popularity_half_life_hours * 3600.0, tag, tuple(sorted(views.items())))

    def type_columns(self) -> list[str]:
        return [f"n_{t}" for t in self.types]


def interactions(events: pa.Table, sf: StreamFeatures) -> pa.Table:
    """Event-log rows (`contract.event_schema`) as interaction rows: the scenario's key names, a positive flag."""
    t = events.select(["user_id", "item_id", "ts", "type", "value"]).rename_columns(
        [sf.user_key, sf.item_key, "ts", "type", "value"])
    positive = pc.is_in(t.column("type"), value_set=pa.array(list(sf.positive_types), pa.string()))
    return t.append_column(LABEL, pc.cast(positive, pa.int8()))


def with_attributes(rows: pa.Table, attributes: pa.Table, sf: StreamFeatures) -> pa.Table:
    """`rows` with the item attributes the views need (`attributes`: item key + one column each, one row per
    item); an item without a row gets nulls."""
    pos = pc.index_in(rows.column(sf.item_key), value_set=attributes.column(sf.item_key).combine_chunks())
    for name in attributes.column_names:
        if name != sf.item_key and name not in rows.column_names:
            rows = rows.append_column(name, attributes.column(name).combine_chunks().take(pos))
    return rows


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
    # one row per user holding any sequence (Arrow's join takes no list columns: aligned with index_in + take);
    # a sequence no event of `rows` enters comes back with an untyped (null) user column
    key_type = rows.schema.field(sf.user_key).type
    users = pc.unique(pa.concat_arrays([p.column(sf.user_key).cast(key_type).combine_chunks() for p in parts]))
    out: dict[str, Any] = {sf.user_key: users}
    newest: Any = None
    for seq, part in zip(sf.sequences, parts):
        pos = pc.index_in(users, value_set=part.column(sf.user_key).cast(key_type).combine_chunks())
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


# ------------------------------------------------------------------------------------------------ tags


def tags_view(rows: pa.Table, sf: StreamFeatures, *, stored: pa.Table | None = None) -> pa.Table | None:
    """[user key, tags, tag_counts, ts]: per user, the count of positive events per value of the item attribute
    `tag_column` (tags in ascending order, counts aligned), `ts` the newest counted event; None without a
    tag column. `stored`: rows of this view already written for these users; their counts add to the new ones."""
    tag = sf.tag_column
    if tag is None:
        return None
    positive = pc.and_(pc.greater(rows.column(LABEL), 0), pc.is_valid(rows.column(tag)))
    fresh = rows.filter(positive)
    parts = [pa.table({"u": fresh.column(sf.user_key), "t": fresh.column(tag),
                       "n": pa.array(np.ones(fresh.num_rows, np.int64)), "ts": fresh.column("ts")})]
    if stored is not None and stored.num_rows:
        lengths = pc.fill_null(pc.list_value_length(stored.column("tags")), 0).to_numpy(zero_copy_only=False)
        rep = pa.array(np.repeat(np.arange(stored.num_rows), lengths))
        parts.insert(0, pa.table({"u": pc.take(stored.column(sf.user_key), rep),
                                  "t": pc.list_flatten(stored.column("tags").combine_chunks()),
                                  "n": pc.list_flatten(stored.column("tag_counts").combine_chunks()),
                                  "ts": pc.take(stored.column("ts"), rep)}).cast(parts[0].schema))
    counts = pa.concat_tables(parts).group_by(["u", "t"]).aggregate([("n", "sum"), ("ts", "max")])
    counts = counts.sort_by([("u", "ascending"), ("t", "ascending")])
    users, idx = _groups(counts.column("u"))
    n = len(users)
    offsets = pa.array(np.concatenate([[0], np.cumsum(np.bincount(idx, minlength=n))]).astype(np.int32))
    schema = pa.schema([(sf.user_key, rows.schema.field(sf.user_key).type),
                        ("tags", pa.list_(rows.schema.field(tag).type)), ("tag_counts", pa.list_(pa.int64())),
                        ("ts", pa.int64())])
    return pa.table({sf.user_key: users,
                     "tags": pa.ListArray.from_arrays(offsets, counts.column("t").combine_chunks()),
                     "tag_counts": pa.ListArray.from_arrays(offsets, counts.column("n_sum").combine_chunks()),
                     "ts": pa.array(_group_max(idx, counts.column("ts_max").to_numpy(), n))}).cast(schema)


# ---------------------------------------------------------------------------------------------- activity


NO_TIME = np.iinfo(np.int64).min  # "no such event" in an int64 maximum


def _groups(keys: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(the distinct keys in order of appearance, each row's position among them)."""
    uniq = pc.unique(keys)
    return uniq, pc.index_in(keys, value_set=uniq).to_numpy(zero_copy_only=False)


def _group_sum(idx: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per group, the float64 sum of `values` (np.bincount gives int64 zeros when no row is weighted)."""
    return np.bincount(idx, weights=values, minlength=n).astype(np.float64, copy=False)


def _group_max(idx: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, NO_TIME, np.int64)
    np.maximum.at(out, idx, values)
    return out


def _type_counts(rows: pa.Table, idx: np.ndarray, n: int, types: tuple[str, ...]) -> dict[str, pa.Array]:
    """`n_<type>`: per group, the count of each event type, as int64 arrays."""
    return {f"n_{t}": pa.array(np.bincount(idx[pc.equal(rows.column("type"), t).to_numpy(zero_copy_only=False)],
                                           minlength=n).astype(np.int64)) for t in types}


def _combined(a: pa.Table, b: pa.Table, key: str, counts: list[str]) -> tuple[pa.Table, np.ndarray, dict[str, Any]]:
    """Stored rows `a` and fresh rows `b` of one view as one table, its group positions, and the key column and
    summed count columns of the combined view."""
    both = pa.concat_tables([a.select(b.column_names).cast(b.schema), b])
    uniq, idx = _groups(both.column(key))
    out: dict[str, Any] = {key: uniq}
    for c in counts:
        out[c] = pa.array(_group_sum(idx, both.column(c).to_numpy(), len(uniq)).astype(np.int64))
    return both, idx, out


def activity_view(rows: pa.Table, sf: StreamFeatures) -> pa.Table:
    """[user key, n_<type>..., purchases, revenue, last_purchase_ts, ts], one row per user with events."""
    uniq, idx = _groups(rows.column(sf.user_key))
    n = len(uniq)
    ts = rows.column("ts").to_numpy()
    bought = pc.is_in(rows.column("type"), value_set=pa.array(list(sf.purchase_types), pa.string())).to_numpy(
        zero_copy_only=False)
    value = pc.fill_null(rows.column("value"), 0.0).to_numpy()
    purchases = np.bincount(idx[bought], minlength=n).astype(np.int64)
    last_buy = _group_max(idx[bought], ts[bought], n)
    return pa.table({sf.user_key: uniq, **_type_counts(rows, idx, n, sf.types), "purchases": pa.array(purchases),
                     "revenue": pa.array(_group_sum(idx[bought], value[bought], n)),
                     "last_purchase_ts": pa.array(last_buy, mask=purchases == 0),
                     "ts": pa.array(_group_max(idx, ts, n))})


def combine_activity(a: pa.Table, b: pa.Table, sf: StreamFeatures) -> pa.Table:
    """The activity of a's and b's events together (a: stored rows, b: new events' activity)."""
    both, idx, out = _combined(a, b, sf.user_key, [*sf.type_columns(), "purchases"])
    n = len(out[sf.user_key])
    out["revenue"] = pa.array(_group_sum(idx, both.column("revenue").to_numpy(), n))
    for c in ("last_purchase_ts", "ts"):
        m = _group_max(idx, pc.fill_null(both.column(c), NO_TIME).to_numpy(), n)
        out[c] = pa.array(m, mask=m == NO_TIME)
    return pa.table(out)


# -------------------------------------------------------------------------------------------- popularity


def popularity_view(rows: pa.Table, sf: StreamFeatures) -> pa.Table:
    """[item key, n_<type>..., trend, ts], one row per item with events."""
    uniq, idx = _groups(rows.column(sf.item_key))
    n = len(uniq)
    ts = rows.column("ts").to_numpy()
    newest = _group_max(idx, ts, n)
    positive = rows.column(LABEL).to_numpy(zero_copy_only=False) > 0
    trend = _group_sum(idx, np.exp2(-(newest[idx] - ts) / sf.half_life_s) * positive, n)
    return pa.table({sf.item_key: uniq, **_type_counts(rows, idx, n, sf.types), "trend": pa.array(trend),
                     "ts": pa.array(newest)})


def combine_popularity(a: pa.Table, b: pa.Table, sf: StreamFeatures) -> pa.Table:
    """The popularity of a's and b's events together: counts add, trends decay to the newer `ts` and add."""
    both, idx, out = _combined(a, b, sf.item_key, sf.type_columns())
    ts = both.column("ts").to_numpy()
    newest = _group_max(idx, ts, len(out[sf.item_key]))
    decayed = both.column("trend").to_numpy() * np.exp2(-(newest[idx] - ts) / sf.half_life_s)
    out["trend"] = pa.array(_group_sum(idx, decayed, len(newest)))
    out["ts"] = pa.array(newest)
    return pa.table(out)
