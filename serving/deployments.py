"""The model deployments of the Ray Serve app (ranker, retriever) and the model lifecycle they share.

Each model replica reads the online store itself (`serving.features.FeatureReader`, in process): the retriever
the user's features, the ranker the candidates' (and for /predict the user's) item features. A Serve call between
replicas costs several milliseconds of CPU on both sides (docs/benchmarks.md, Serving), so a separate feature
deployment would add two calls to every /recommend; the user's features travel from the retriever to the ranker
with the candidates instead of being read twice.

The model lifecycle (which version a deployment serves, swapped atomically when its alias moves) is
`serving.slots`. Besides the alias's version, a deployment serves the versions the running experiments' arms pin
(`PinnedVersions`), loaded beside it; a request names the version it wants (None: the alias's).

Every answer carries the version that produced it (`ModelRef`) and its stage times. Deployments return results
(`Scored`, `Candidates`) rather than raising, so request errors reach the HTTP ingress as data it maps to status
codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from ray import serve

from serving.experiments.live import ExperimentSource, PinnedVersions
from serving.features import (
    FeatureReader,
    ItemInputs,
    UserFeatures,
    assemble_rows,
    complete,
    seen_items,
    user_row,
)
from serving.inference import RankerGraph, SplitScorer, request_side_key, shared_user_side, spec_id
from serving.slots import Loaded, ModelRef, ModelSlot, ModelSource, iso, load_ranker, load_retriever

log = logging.getLogger("recforge.serving")


@dataclass(frozen=True)
class ReplicaSettings:
    """Compute settings of a model replica: torch threads and device ("cpu" or "cuda")."""

    threads: int = 1
    device: str = "cpu"
    request_path: str = "fast"  # serving.request_path
    user_cache_size: int = 20_000  # serving.user_cache_size

    @property
    def fast(self) -> bool:
        return self.request_path == "fast"


def _torch_threads(settings: ReplicaSettings) -> None:
    import torch

    torch.set_num_threads(max(1, settings.threads))


# ------------------------------------------------------------------------------------------------ experiments
def _pinned(source: ModelSource, alias_slot: ModelSlot, loader: Callable[[Path], Any],
            experiments: ExperimentSource | None) -> PinnedVersions | None:
    """The experiment arms' versions of this model, loaded beside the alias's (None: no experiments)."""
    if experiments is None:
        return None
    return PinnedVersions(source.role, experiments, alias_slot,
                          lambda v: ModelSlot(dataclasses.replace(source, version=v), loader))


def _current(slot: ModelSlot, versions: PinnedVersions | None, version: str | None) -> Loaded | None:
    if version is None or versions is None:
        return slot.current()
    return versions.current(version)


def _not_loaded(slot: ModelSlot, version: str | None) -> str:
    if version is None:
        return slot.unavailable()
    return f"{slot.source.role} version {version} (an experiment arm) is not loaded"


def _pinned_status(versions: PinnedVersions | None) -> dict[str, Any]:
    return {"experiment_versions": versions.status()} if versions is not None else {}


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class RankerBatching:
    """How the ranker groups concurrent requests into one forward pass (`@serve.batch`): at most `max_size`
    requests, waiting up to `wait_s` for the batch to fill; `max_size` 1 scores each request at once."""

    max_size: int = 1
    wait_s: float = 0.001


@dataclass(frozen=True)
class StoreSettings:
    """The online store the model replicas read (`online_store` config as JSON, its default SQLite path), the
    spec's user/item key columns and the user features that hold already-seen item ids (behaviour histories)."""

    config: dict[str, Any]
    default_path: str
    user_key: str
    item_key: str
    seen_columns: tuple[str, ...] = ()

    def open(self, one_read: bool = False) -> FeatureReader:
        from feature_store.config import RedisOnlineStoreConfig, SQLiteOnlineStoreConfig
        from feature_store.online import open_online_store

        kind = SQLiteOnlineStoreConfig if self.config.get("type", "sqlite") == "sqlite" else RedisOnlineStoreConfig
        store = open_online_store(kind.model_validate(self.config), Path(self.default_path))
        return FeatureReader(store, self.user_key, self.item_key, one_read=one_read)


@dataclass
class Scored:
    """Ranker answer, aligned with the item ids asked for: a click probability per item the online store knows
    (None and known False for the others), whether it knew the user, the version that scored, stage times (ms).
    `error_field` names the request field at fault (a 422); any other error means no model is loaded (a 503)."""

    scores: list[float | None] = field(default_factory=list)
    known: list[bool] = field(default_factory=list)
    user_known: bool = False
    model: ModelRef | None = None
    ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    error_field: str | None = None


@dataclass
class Candidates:
    """Retriever answer: candidate item ids (best first) with their retrieval scores (None for the popularity
    fallback), the user's features (handed on to the ranker) and stage times (ms)."""

    ids: list[Any] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    user: UserFeatures | None = None
    fallback: str | None = None
    model: ModelRef | None = None
    ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    error_field: str | None = None


def _side_key(user: UserFeatures, context: dict[str, Any] | None) -> Any:
    """The user-side cache key of this request, computed once (the retriever's is handed to the ranker with
    the user's features: both see the same context)."""
    if user.side_key is None:
        user.side_key = request_side_key(user.key, user.values, context)
    return user.side_key


def _user_transform(spec: Any, user: UserFeatures, context: dict[str, Any] | None,
                    user_key: str) -> Callable[[list[str]], dict[str, Any]]:
    """`UserSide.transformed`'s transform: the user's raw row (key, stored features, context on top, as
    `user_row` builds it) through `spec.transform_row` for `feats` (absent columns are null)."""
    def transform(feats: list[str]) -> dict[str, Any]:
        return spec.transform_row({user_key: user.key, **user.values, **(context or {})}, feats)

    return transform


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1e3, 3)


# ------------------------------------------------------------------------------------------------ ranker
@dataclass
class _Job:
    loaded: Loaded
    table: pa.Table  # spec-transformed rows


def score_transformed(jobs: Sequence[_Job], device: str) -> list[np.ndarray]:
    """Score several requests' transformed rows with one forward pass per model version."""
    import torch

    from training.common.data import table_to_tensors

    out: list[np.ndarray | None] = [None] * len(jobs)
    groups: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(id(job.loaded), []).append(i)
    for members in groups.values():
        ranker = jobs[members[0]].loaded.model
        tables = [jobs[i].table for i in members]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        batch = table_to_tensors(table, ranker.layout)
        if device != "cpu":
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.inference_mode():
            probs = torch.sigmoid(ranker.model(batch).float()).cpu().numpy()
        bounds = np.cumsum([0, *(t.num_rows for t in tables)])
        for j, i in enumerate(members):
            out[i] = probs[bounds[j]: bounds[j + 1]]
    return [p if p is not None else np.empty(0, np.float32) for p in out]


def loopback_replica_grpc() -> None:
    """Make this Serve replica's inter-deployment gRPC server listen on loopback when the Ray it runs on does.

    Ray Serve 2.60 binds that server to `[::]:0` whatever the node's address: every interface, no authentication,
    and a way around the edge's limits (it calls the replica's handlers directly). On a local Ray, which RecForge
    keeps on loopback (feature_store.raycluster), nothing from another machine needs it. The replica starts the
    server after the deployment's constructor returns, so the constructor calling this is in time; on a cluster
    (a non-loopback node address) it changes nothing."""
    import ray
    from ray.serve._private import replica

    if not ray.is_initialized() or ray.util.get_node_ip_address() not in ("127.0.0.1", "::1", "localhost"):
        return
    add = replica.add_port_to_grpc_server
    if getattr(add, "recforge_loopback", False):
        return

    def add_loopback(server: Any, address: str) -> int:
        return add(server, address.replace("[::]:", "127.0.0.1:", 1))

    add_loopback.recforge_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_loopback


@serve.deployment
class RankerModel:
    """The CTR ranker: reads the user's and the items' online features, builds the raw rows, scores them;
    concurrent requests are scored in one batch (`@serve.batch`, sized by `RankerBatching`)."""

    def __init__(self, source: ModelSource, settings: ReplicaSettings, store: StoreSettings,
                 batching: RankerBatching = RankerBatching(), experiments: ExperimentSource | None = None) -> None:
        loopback_replica_grpc()
        _torch_threads(settings)
        self.settings = settings
        self.store = store
        self.batching = batching
        self._batched.set_max_batch_size(batching.max_size)
        self._batched.set_batch_wait_timeout_s(batching.wait_s)
        self.reader = store.open(one_read=settings.fast)
        self._items: dict[int, tuple[Loaded, ItemInputs]] = {}
        self.user_side = shared_user_side(settings.user_cache_size) if settings.fast else None
        self.slot = ModelSlot(source, load_ranker(settings.device, settings.fast))
        self.slot.start()
        self.versions = _pinned(source, self.slot, load_ranker(settings.device, settings.fast), experiments)

    async def predict(self, user_id: Any, item_ids: Sequence[Any], context: dict[str, Any] | None) -> Scored:
        """Click probability of each item for the user (features from the online store, context on top)."""
        t0 = time.perf_counter()
        loaded = self.slot.current()
        user = self.reader.user(user_id, set(loaded.model.spec.raw_columns()) if loaded is not None else None)
        return await self._score(user, item_ids, context, _ms(t0))

    async def rank(self, user: UserFeatures, item_ids: Sequence[Any], context: dict[str, Any] | None,
                   version: str | None = None) -> Scored:
        """Like `predict` for a user whose features were already read (by the retriever); `version`: an
        experiment arm's pinned version instead of the alias's (an error while it is not loaded)."""
        return await self._score(user, item_ids, context, 0.0, version)

    async def _score(self, user: UserFeatures, item_ids: Sequence[Any], context: dict[str, Any] | None,
                     user_ms: float, version: str | None = None) -> Scored:
        loaded = _current(self.slot, self.versions, version)  # one version for the whole request
        if loaded is None:
            return Scored(error=_not_loaded(self.slot, version))
        spec = loaded.model.spec
        raw = spec.raw_columns()
        unknown = [k for k in (context or {}) if k not in raw]
        if unknown:
            return Scored(error=f"unknown context field(s) {unknown}; the model reads: {', '.join(raw)}",
                          error_field=f"context.{unknown[0]}")
        t0 = time.perf_counter()
        cache = self._item_inputs(loaded)
        if self.settings.fast and cache.usable(context) and self.batching.max_size <= 1:
            return self._score_fast(loaded, cache, user, item_ids, context, user_ms, t0)
        fast = cache.usable(context)
        if fast:  # item side from the in-memory cache (serving.features.ItemInputs)
            slots, known_mask = cache.lookup(item_ids)
        else:
            items = self.reader.items(item_ids, set(raw))
            known_mask = items.known
        known = np.flatnonzero(known_mask)
        features_ms = user_ms + _ms(t0)
        t1 = time.perf_counter()
        scores = np.full(len(item_ids), None, dtype=object)
        if len(known):
            try:
                if fast:
                    table = cache.rows(user, context, slots[known])
                else:
                    rows = assemble_rows(user, items, context, user_key=self.store.user_key,
                                         item_key=self.store.item_key, take=known)
                    table = spec.transform(complete(rows, raw), with_label=False)
            except (ValueError, TypeError, pa.ArrowException) as exc:
                return Scored(error=f"the request's values do not fit the model's feature spec: {exc}",
                              error_field="context")
            job = _Job(loaded, table)
            if self.batching.max_size > 1:
                probs = await self._batched(job)
            else:  # nothing to group: score here, without the batch queue's task switches
                probs = score_transformed([job], self.settings.device)[0]
            scores[known] = probs.astype(np.float64)
        return Scored(scores=scores.tolist(), known=known_mask.tolist(), user_known=user.known, model=loaded.ref,
                      ms={"features": features_ms, "ranking": _ms(t1)})

    def _score_fast(self, loaded: Loaded, cache: ItemInputs, user: UserFeatures, item_ids: Sequence[Any],
                    context: dict[str, Any] | None, user_ms: float, t0: float) -> Scored:
        """serving.request_path fast: the item side gathered from the cache's model inputs, the request side
        from the user-side cache (one transform per user and context, shared with the retriever), one forward
        pass of the inference graph chosen at start-up (`serving.inference.RankerGraph`)."""
        slots, known_mask = cache.lookup_ids(item_ids)
        known = np.flatnonzero(known_mask)
        features_ms = user_ms + _ms(t0)
        t1 = time.perf_counter()
        scores = np.full(len(item_ids), np.nan)
        if len(known):
            features, _ = cache.request_features()
            key = _side_key(user, context)
            ranker = loaded.model
            assert self.user_side is not None

            split = self._split(loaded, cache)
            split = split if split is not None and split.verified is not False else None

            def request_side() -> tuple[dict[str, Any], Any]:
                from training.common.data import row_to_tensors

                transform = _user_transform(ranker.spec, user, context, self.store.user_key)
                row = self.user_side.transformed(key, spec_id(ranker.spec), "ranker", features, transform)
                one = row_to_tensors(row, ranker.layout, only=set(features))
                return one, split.request(cache.batch(slots[known[:1]], one)) if split is not None else None

            try:
                mine, parts = self.user_side.get(  # the request-side features too: they follow the item views
                    key, ("ranker", loaded.ref.name, loaded.ref.version, tuple(features)), request_side)
            except (ValueError, TypeError, pa.ArrowException) as exc:
                return Scored(error=f"the request's values do not fit the model's feature spec: {exc}",
                              error_field="context")
            if split is not None and parts is not None:
                import torch

                split.items(cache.tensors(), cache.generation)
                probs = split.probabilities(torch.from_numpy(slots[known]), parts)
                if split.verified is None:  # the first request: checked against the model's forward
                    split.check(probs, self._graph(loaded).probabilities(cache.batch(slots[known], mine)))
                scores[known] = probs
            else:
                batch = cache.batch(slots[known], mine)
                if self.settings.device != "cpu":
                    batch = {k: v.to(self.settings.device, non_blocking=True) for k, v in batch.items()}
                scores[known] = self._graph(loaded).probabilities(batch)
        out = np.empty(len(scores), dtype=object)
        out[:] = scores.tolist()
        out[~known_mask] = None
        return Scored(scores=out.tolist(), known=known_mask.tolist(), user_known=user.known, model=loaded.ref,
                      ms={"features": features_ms, "ranking": _ms(t1)})

    @staticmethod
    def _graph(loaded: Loaded) -> RankerGraph:
        """The version's inference graph (chosen when it loaded, see `serving.slots.load_ranker`)."""
        graph = loaded.model.inference
        if graph is None:  # loaded by another loader (tests): choose now
            graph = loaded.model.inference = RankerGraph(loaded.model.model, loaded.model.layout)
        return graph

    def _split(self, loaded: Loaded, cache: ItemInputs) -> SplitScorer | None:
        """The version's split scorer over the item cache's slots (None: the model is not splittable, or runs
        on a GPU, where one batched forward is what it is built for)."""
        model = loaded.model.model
        if self.settings.device != "cpu" or not getattr(model, "splittable", False):
            return None
        features, _ = cache.request_features()
        if cache.split is None or cache.split.model is not model or cache.split.request_features != features:
            cache.split = SplitScorer(model, loaded.model.layout, cache.item_side, features)
        return cache.split

    def _item_inputs(self, loaded: Loaded) -> ItemInputs:
        """The item-side cache of a served version (one per version: an experiment serves several side by side;
        the caches of versions no longer served are dropped)."""
        cache = self._items.get(id(loaded))
        if cache is None or cache[0] is not loaded:
            served = {id(m) for m in (self.slot.current(), *self._pinned_loaded()) if m is not None}
            self._items = {k: v for k, v in self._items.items() if k in served}
            layout = loaded.model.layout if self.settings.fast else None
            cache = self._items[id(loaded)] = (loaded, ItemInputs(loaded.model.spec, self.reader, layout))
        return cache[1]

    def _pinned_loaded(self) -> list[Loaded]:
        return self.versions.loaded() if self.versions is not None else []

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.001)  # sizes set per instance from RankerBatching
    async def _batched(self, jobs: list[_Job]) -> list[np.ndarray]:
        return await asyncio.to_thread(score_transformed, jobs, self.settings.device)

    async def status(self) -> dict[str, Any]:
        users, items = self.reader.views()
        current = self.slot.current()
        mine = self._items.get(id(current)) if current is not None else None
        cache = mine[1].stats() if mine is not None else {"items": 0, "reads": 0}
        fast = {"request_path": self.settings.request_path}
        if self.user_side is not None:
            fast["user_cache"] = self.user_side.stats()
        if current is not None and current.model.inference is not None:
            fast["inference"] = current.model.inference.status()
            if mine is not None and mine[1].split is not None:
                fast["inference"].update(mine[1].split.status())
        return {**self.slot.status(), **_pinned_status(self.versions), "item_cache": cache, **fast, "online_store": {
            "store": repr(self.reader.store), "user_views": [v.name for v in users],
            "item_views": [v.name for v in items],
            "views": {v.name: {"rows": v.rows, "version": v.version, "written_at": iso(v.written_at)}
                      for v in (*users, *items)}}}

    async def reload(self) -> dict[str, Any]:
        await asyncio.to_thread(self.slot.check, True)
        return self.slot.status()

    def __del__(self) -> None:
        self.slot.stop()
        if self.versions is not None:
            self.versions.stop()


# ------------------------------------------------------------------------------------------------ retriever
@serve.deployment
class RetrieverModel:
    """The two-tower retriever: reads the user's online features, user tower -> top-N items of the index with
    the user's history excluded; users the online store does not know get the most popular items."""

    def __init__(self, source: ModelSource, settings: ReplicaSettings, store: StoreSettings,
                 experiments: ExperimentSource | None = None) -> None:
        loopback_replica_grpc()
        _torch_threads(settings)
        self.store = store
        self.settings = settings
        self.reader = store.open(one_read=settings.fast)
        self.user_side = shared_user_side(settings.user_cache_size) if settings.fast else None
        self.slot = ModelSlot(source, load_retriever)
        self.slot.start()
        self.versions = _pinned(source, self.slot, load_retriever, experiments)

    async def candidates(self, user_id: Any, context: dict[str, Any] | None, n: int,
                         exclude_seen: bool = True, version: str | None = None, popular: bool = False) -> Candidates:
        """Top-`n` candidates for the user; `version`: an experiment arm's pinned version (an error while it is
        not loaded); `popular`: the most popular items whoever the user is (the non-model arm)."""
        loaded = _current(self.slot, self.versions, version)
        if loaded is None:
            return Candidates(error=_not_loaded(self.slot, version))
        retriever = loaded.model
        t0 = time.perf_counter()
        user = self.reader.user(user_id, set(retriever.spec.raw_columns()))  # what the ranker reads too
        seen = seen_items(user, self.store.seen_columns) if exclude_seen else []
        features_ms = _ms(t0)
        t1 = time.perf_counter()
        if popular or not user.known:
            ids = retriever.popular(n, exclude=seen)
            return Candidates(ids=ids.tolist(), scores=[None] * len(ids), user=user,
                              fallback=None if popular else "popular",
                              model=loaded.ref, ms={"features": features_ms, "retrieval": _ms(t1)})
        try:  # the context's values become Arrow columns here: a list mixing text and numbers is refused
            if self.user_side is not None:
                vectors = self._user_vector(loaded, user, context)
            else:
                row = user_row(user, context, user_key=self.store.user_key)
                vectors = retriever.user_vectors(complete(row, retriever.user_columns))
        except (ValueError, TypeError, pa.ArrowException) as exc:
            return Candidates(error=f"the request's values do not fit the retriever's feature spec: {exc}",
                              error_field="context")
        ids, scores = retriever.search(vectors, n, exclude=[seen] if seen else None)
        keep = np.isfinite(scores[0])
        return Candidates(ids=ids[0][keep].tolist(), scores=scores[0][keep].astype(np.float64).tolist(), user=user,
                          model=loaded.ref, ms={"features": features_ms, "retrieval": _ms(t1)})

    def _user_vector(self, loaded: Loaded, user: UserFeatures, context: dict[str, Any] | None) -> np.ndarray:
        """serving.request_path fast: the user tower's vector from the user-side cache (computed from the
        shared transform of the user's row on a miss)."""
        retriever = loaded.model
        assert self.user_side is not None
        key = _side_key(user, context)

        def vector() -> np.ndarray:
            transform = _user_transform(retriever.spec, user, context, self.store.user_key)
            row = self.user_side.transformed(key, spec_id(retriever.spec), "retriever",
                                             list(retriever.cfg.user_features), transform)
            return retriever.user_vector_of_row(row)

        return self.user_side.get(key, ("retriever", loaded.ref.name, loaded.ref.version), vector)

    async def status(self) -> dict[str, Any]:
        cache = {"user_cache": self.user_side.stats()} if self.user_side is not None else {}
        return {**self.slot.status(), **_pinned_status(self.versions), **cache}

    async def reload(self) -> dict[str, Any]:
        await asyncio.to_thread(self.slot.check, True)
        return self.slot.status()

    def __del__(self) -> None:
        self.slot.stop()
        if self.versions is not None:
            self.versions.stop()
