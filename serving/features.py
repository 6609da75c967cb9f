"""Request rows from the online store: a user's and a list of items' latest features, merged into raw rows.

The online store holds one view per entity (`recforge materialize`): views keyed by the scenario's user key (the
`user` entity, `user_profile`, `user_history`, ...) and views keyed by its item key (the `item` entity). A request
row is the raw row a model's feature spec reads: the user key, the item key, every user-side and item-side feature
the views hold, and the request's context (request-time columns such as channel, device or hour), the context
overriding stored values. Columns no view and no context supplies stay null, which the spec turns into its
out-of-vocabulary index or numeric fill, exactly as it does offline.

Lookups are columnar: one store read per view for the whole id list, values aligned by the store.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.events.features import POPULARITY_VIEW
from feature_store.online import OnlineStore
from feature_store.online.base import EntityInfo, normalize_id, normalize_ids

Columns = dict[str, list[Any]]
MAX_CACHED_ITEMS = 2_000_000  # ItemInputs: items one ranker replica keeps transformed in memory


@dataclass
class UserFeatures:
    """One user's merged features: `known` when any user view holds the id; `key` is the id as the store types it
    (an int for an integer key column); `values` maps feature name -> value (views in name order, first wins)."""

    key: Any
    known: bool
    values: dict[str, Any]
    expired: list[str]
    side_key: Any = None  # fast request path: `serving.inference.request_side_key` with the request's context


@dataclass
class ItemFeatures:
    """Features of a list of items, aligned with the ids asked for: `known[i]` when an item view holds id i."""

    keys: list[Any]
    known: np.ndarray
    columns: Columns


def canonical_ids(ids: Sequence[Any], key_type: str) -> list[Any]:
    """Ids as the store types its keys (`"42"` -> 42 for an integer key); ids that cannot be keys stay as given."""
    text = normalize_ids(list(ids), key_type)
    try:
        typed = pc.cast(text, pa.int64()) if key_type == "int" else text
    except pa.ArrowInvalid:  # beyond int64 (a uint64 key): exact Python ints
        typed = pa.array([None if t is None else int(t) for t in text.to_pylist()], pa.uint64())
    valid = typed.is_valid().to_numpy(zero_copy_only=False)
    out = np.empty(len(ids), dtype=object)
    out[:] = list(ids)
    converted = np.empty(len(ids), dtype=object)
    converted[:] = typed.to_pylist()
    out[valid] = converted[valid]
    return out.tolist()


def canonical_id(id_: Any, key_type: str) -> Any:
    """`canonical_ids` of one id, without Arrow."""
    text = normalize_id(id_, key_type)
    if text is None:
        return id_
    return int(text) if key_type == "int" else text


class FeatureReader:
    """Reads request rows' features from an online store.

    Args:
        store: the scenario's online store (SQLite or Redis).
        user_key / item_key: the raw key columns of the feature spec (`features.user_key` / `item_key`).
        refresh_seconds: how long the list of views is cached (a `recforge materialize` may add views).
        one_read: read a user's views together (see `user`).
    """

    def __init__(self, store: OnlineStore, user_key: str, item_key: str, refresh_seconds: float = 5.0,
                 one_read: bool = False) -> None:
        self.store = store
        self.one_read = one_read
        self.user_key = user_key
        self.item_key = item_key
        self.refresh_seconds = refresh_seconds
        self._views: tuple[float, list[EntityInfo], list[EntityInfo]] | None = None

    def views(self) -> tuple[list[EntityInfo], list[EntityInfo]]:
        """(user views, item views), each in name order; cached for `refresh_seconds`."""
        now = time.monotonic()
        if self._views is None or now - self._views[0] > self.refresh_seconds:
            infos = sorted(self.store.entities().values(), key=lambda i: i.name)
            self._views = (now, [i for i in infos if i.key == self.user_key],
                           [i for i in infos if i.key == self.item_key])
        return self._views[1], self._views[2]

    def user(self, user_id: Any, wanted: Collection[str] | None = None) -> UserFeatures:
        """The user's features from every user-keyed view; with `wanted`, only those features (views holding none
        of them are not read). With `one_read`, the views are read together (`OnlineStore.read_row`: one
        transaction in SQLite, two round trips in Redis), else one read per view."""
        user_views, _ = self.views()
        plan: dict[str, list[str]] = {}
        taken: set[str] = set()
        last: EntityInfo | None = None
        for info in user_views:
            names = [n for n in info.features
                     if n != info.ts_column and n not in taken and (wanted is None or n in wanted)]
            if names:
                plan[info.name] = names
                taken.update(names)
                last = info
        if self.one_read:
            got = self.store.read_row(plan, user_id)
        else:
            got = {view: self.store.read(view, [user_id], names) for view, names in plan.items()}
        values: dict[str, Any] = {}
        expired: list[str] = []
        known = False
        for view, names in plan.items():
            for n in names:
                status = got[view].status[n][0]
                known |= status != "missing"
                if status == "expired":
                    expired.append(n)
                values[n] = got[view].values[n][0]
        key = user_id if last is None else canonical_id(user_id, last.key_type)
        return UserFeatures(key=key, known=known, values=values, expired=expired)

    def items(self, item_ids: Sequence[Any], wanted: Collection[str] | None = None) -> ItemFeatures:
        """Features of `item_ids` from every item-keyed view, in the order of the ids (`wanted` as in `user`)."""
        _, item_views = self.views()
        n = len(item_ids)
        columns: Columns = {}
        known = np.zeros(n, dtype=bool)
        keys = list(item_ids)
        for info in item_views:
            names = [c for c in info.features
                     if c != info.ts_column and c not in columns and (wanted is None or c in wanted)]
            if not names:
                continue
            got = self.store.read(info.name, list(item_ids), names)
            for c in names:
                known |= np.asarray(got.status[c], dtype=object) != "missing"
                columns[c] = got.values[c]
            keys = canonical_ids(list(item_ids), info.key_type)
        return ItemFeatures(keys=keys, known=known, columns=columns)


def _broadcast(value: Any, n: int) -> pa.Array:
    """`value` repeated n times as an Arrow array (typed once, like a column of n equal raw values)."""
    return pa.array([value]).take(pa.array(np.zeros(n, dtype=np.int64)))


def assemble_rows(user: UserFeatures, items: ItemFeatures, context: Mapping[str, Any] | None, *,
                  user_key: str, item_key: str, take: np.ndarray | None = None) -> pa.Table:
    """Raw rows pairing the user with each item (rows `take` of `items`, default all), built column by column:
    user key, item key, user features, item features, then the context, which overrides stored values. The
    columns are typed as `pa.Table.from_pylist` would type the same rows."""
    idx = pa.array(np.arange(len(items.keys)) if take is None else np.asarray(take, dtype=np.int64))
    n = len(idx)
    keys = np.empty(len(items.keys), dtype=object)
    keys[:] = items.keys
    cols: dict[str, pa.Array] = {user_key: _broadcast(user.key, n),
                                 item_key: pa.array(keys[idx.to_numpy()].tolist())}
    for name, value in user.values.items():
        cols.setdefault(name, _broadcast(value, n))
    for name, values in items.columns.items():
        cols.setdefault(name, pa.array(values).take(idx))
    for name, value in (context or {}).items():
        cols[name] = _broadcast(value, n)
    return pa.table(cols)


def user_row(user: UserFeatures, context: Mapping[str, Any] | None, *, user_key: str) -> pa.Table:
    """The one-row raw input of a user tower: user key, stored user features, context on top."""
    cols: dict[str, pa.Array] = {user_key: pa.array([user.key]), **{k: pa.array([v]) for k, v in user.values.items()}}
    for name, value in (context or {}).items():
        cols[name] = pa.array([value])
    return pa.table(cols)


def seen_items(user: UserFeatures, columns: Sequence[str]) -> list[Any]:
    """Item ids in the user's behaviour histories (`columns`: sequence features over the item key)."""
    lists = [user.values[c] for c in columns if isinstance(user.values.get(c), list)]
    return [i for values in lists for i in values]


def complete(table: pa.Table, needed: Sequence[str]) -> pa.Table:
    """`table` with every `needed` column present (absent ones all null), so a spec never meets a missing column."""
    for c in needed:
        if c not in table.column_names:
            table = table.append_column(c, pa.nulls(table.num_rows))
    return table


# Item views the event stream processor keeps fresh: it upserts their rows in place, without a new version, so
# a cache keyed by the views' versions would outlive them (feature_store.events.features).
STREAM_ITEM_VIEWS = frozenset({POPULARITY_VIEW})


class ItemInputs:
    """The item side of a ranker's model inputs, transformed once per item and kept in memory.

    A ranking request pairs one user (and its context) with many items. Every spec feature reads one raw column,
    so the model inputs split into the item side (features whose raw column comes from the item views and not
    from a user view: the item key, category, price, ...) and the request side (the user's features and the
    context). `rows` transforms the request side once, repeats it per item and takes the item side from this
    cache, which reads and transforms an item only the first time it is asked for: the same table the spec
    makes from `assemble_rows`, without re-reading and re-transforming the same items on every request.

    The cache belongs to one model version (its spec) and holds while the item views keep their versions (a
    `recforge materialize` writes a new version: the cache starts over). `usable` is False, and the ranker
    takes the uncached path, where an item view has a TTL (a cached value could outlive it), where the model reads
    a feature of an item view the event stream keeps fresh (`STREAM_ITEM_VIEWS`: rows updated in place) or where the
    request's context names an item-side column.

    Args:
        spec: the ranker's feature spec.
        reader: the replica's online-store reader.
    """

    def __init__(self, spec: Any, reader: FeatureReader, layout: Any = None) -> None:
        self.spec = spec
        self.reader = reader
        self.layout = layout  # the ranker's FeatureLayout: with it, the item side is also kept as model inputs
        self._reads = frozenset(spec.raw_columns())  # raw columns the model reads (a fixed spec: computed once)
        self._tensors: dict[str, Any] | None = None  # item-side model inputs, one row per slot (`batch`)
        self._int_keys = np.empty(0, np.int64)  # integer keys: the cached ids sorted, and their slots
        self._int_slots = np.empty(0, np.int64)
        self._stamp: tuple[tuple[str, int], ...] | None = None
        self._slots: dict[Any, int] = {}
        self._table: pa.Table | None = None  # item-side transformed columns, one row per slot
        self.item_side: list[str] = []  # spec features read from the item views
        self.request_side: list[str] = []  # the others: the user's features and the context
        self.item_columns: set[str] = set()  # raw columns the item views supply (and no user view)
        self._item_raw: list[str] = []  # raw columns the item-side features read
        self._request_raw: list[str] = []  # and the request-side ones
        self.key_type = "string"
        self.misses = 0
        self.generation = 0
        self.split: Any = None  # the ranker's serving.inference.SplitScorer over these slots (fast path)

    def _sync(self) -> bool:
        """Bind to the current item views (restarting the cache when they changed); False when not cacheable."""
        user_views, item_views = self.reader.views()
        if not item_views or any(v.ttl_seconds is not None
                                 or (v.name in STREAM_ITEM_VIEWS and not self._reads.isdisjoint(v.features))
                                 for v in item_views):
            return False
        stamp = tuple((v.name, v.version) for v in item_views)
        if stamp != self._stamp:
            from_users = {n for v in user_views for n in v.features} | {self.reader.user_key}
            cols = {n for v in item_views for n in v.features if n != v.ts_column} | {self.reader.item_key}
            self.item_columns = cols - from_users
            self.item_side = [f.name for f in self.spec.features if f.column in self.item_columns]
            self.request_side = [f.name for f in self.spec.features if f.column not in self.item_columns]
            self._item_raw = sorted({self.spec.feature(n).column for n in self.item_side})
            self._request_raw = sorted({self.spec.feature(n).column for n in self.request_side})
            self.key_type = item_views[0].key_type
            self._restart(stamp)
        return True

    def _restart(self, stamp: tuple[tuple[str, int], ...] | None) -> None:
        self.generation += 1  # what was derived from the slots (serving.inference.SplitScorer) starts over too
        self._stamp, self._slots, self._table, self._tensors = stamp, {}, None, None
        self._int_keys, self._int_slots = np.empty(0, np.int64), np.empty(0, np.int64)

    def usable(self, context: Mapping[str, Any] | None) -> bool:
        return self._sync() and not any(k in self.item_columns for k in (context or {}))

    def _add(self, keys: list[Any]) -> None:
        """Read and transform `keys` (canonical ids); the ones the store knows get slots, the others stay out (an
        unknown id costs a store read per request, as without the cache, but no memory)."""
        if len(self._slots) + len(keys) > MAX_CACHED_ITEMS:  # a catalogue beyond this: start over, stay bounded
            self._restart(self._stamp)
        items = self.reader.items(keys, self._item_raw)
        self.misses += len(keys)
        take = np.flatnonzero(items.known)
        if not len(take):
            return
        pick = take.tolist()
        raw = pa.table({self.reader.item_key: pa.array([items.keys[j] for j in pick]),
                        **{c: pa.array([v[j] for j in pick]) for c, v in items.columns.items()}})
        part = self.spec.transform(complete(raw, self._item_raw), with_label=False, features=self.item_side)
        base = 0 if self._table is None else self._table.num_rows
        for i, j in enumerate(pick):
            self._slots[keys[j]] = base + i
        self._table = part if self._table is None else pa.concat_tables([self._table, part]).combine_chunks()
        if self.layout is not None:
            import torch

            from training.common.data import table_to_tensors

            mine = table_to_tensors(part, self.layout, only=set(self.item_side))
            self._tensors = mine if self._tensors is None else {
                k: torch.cat([self._tensors[k], v]) for k, v in mine.items()}
        if self.key_type == "int":
            ints = np.fromiter(self._slots, dtype=np.int64, count=len(self._slots)) if all(
                type(k) is int and -2**63 <= k < 2**63 for k in self._slots) else np.empty(0, np.int64)
            order = np.argsort(ints, kind="stable")
            self._int_keys = ints[order]
            self._int_slots = np.fromiter(self._slots.values(), dtype=np.int64, count=len(ints))[order] \
                if len(ints) else np.empty(0, np.int64)

    def lookup(self, item_ids: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(slot per id, -1 where the store does not know the id; known per id), reading and transforming the ids
        not cached yet."""
        keys = canonical_ids(item_ids, self.key_type)
        missing = list(dict.fromkeys(k for k in keys if k not in self._slots))
        if missing:
            self._add(missing)
        slots = np.fromiter((self._slots.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        return slots, slots >= 0

    def lookup_ids(self, item_ids: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """`lookup`, by binary search over the cached integer keys when the ids are all cached integers (what the
        retriever returns), without converting ids one by one; anything else takes `lookup`."""
        ids = np.asarray(item_ids)
        keys = self._int_keys
        if self.key_type == "int" and ids.ndim == 1 and len(keys) and (
                ids.dtype.kind == "i" or (ids.dtype.kind == "u" and ids.dtype.itemsize < 8)):
            ids = ids.astype(np.int64, copy=False)
            at = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
            if (keys[at] == ids).all():
                return self._int_slots[at], np.ones(len(ids), dtype=bool)
        return self.lookup(list(item_ids))

    def batch(self, slots: np.ndarray, request_side: dict[str, Any]) -> dict[str, Any]:
        """Model inputs of the cached items `slots` with one request side (`table_to_tensors(..., only=
        request_side features)` of the user's row): a gather from the cached item inputs, no Arrow."""
        import torch

        from training.common.data import add_sides

        assert self._tensors is not None and self.layout is not None
        return add_sides(self._tensors, torch.from_numpy(np.ascontiguousarray(slots, dtype=np.int64)),
                         request_side, self.layout)

    def tensors(self) -> dict[str, Any]:
        """The cached item-side model inputs, one row per slot."""
        assert self._tensors is not None
        return self._tensors

    def request_features(self) -> tuple[list[str], list[str]]:
        """(the request-side features, the raw columns they read), for the current item views."""
        return self.request_side, self._request_raw

    def rows(self, user: UserFeatures, context: Mapping[str, Any] | None, slots: np.ndarray) -> pa.Table:
        """Model inputs (the spec's feature columns, in its order) of the user with the cached items `slots`."""
        assert self._table is not None or not len(slots)
        one = complete(user_row(user, context, user_key=self.reader.user_key), self._request_raw)
        mine = self.spec.transform(one, with_label=False, features=self.request_side)
        mine = mine.take(np.zeros(len(slots), dtype=np.int64))
        theirs = self._table.take(slots) if self._table is not None else None
        return pa.table({f.name: (mine.column(f.name) if f.name in self.request_side else theirs.column(f.name))
                         for f in self.spec.features})

    def stats(self) -> dict[str, int]:
        """What `/models` shows: items held transformed, and ids read from the store so far."""
        return {"items": len(self._slots), "reads": self.misses}
