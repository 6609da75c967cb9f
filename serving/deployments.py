"""The model deployments of the Ray Serve app (ranker, retriever) and the model lifecycle they share.

Each model replica reads the online store itself (`serving.features.FeatureReader`, in process): the retriever
the user's features, the ranker the candidates' (and for /predict the user's) item features. A Serve call between
replicas costs several milliseconds of CPU on both sides (docs/benchmarks.md, Serving), so a separate feature
deployment would add two calls to every /recommend; the user's features travel from the retriever to the ranker
with the candidates instead of being read twice.

Lifecycle (`ModelSlot`): a model deployment serves `models:/<name>@<alias>` of the MLflow registry. At start it
resolves the alias, downloads that version's artifacts (a ranker bundle or a retrieval bundle) and loads them; a
background thread then checks the alias every `poll_seconds` and, when it points at another version, loads that
version next to the serving one and swaps one reference: a request reads the reference once, so it is answered
entirely by the old or entirely by the new version and none is dropped. A version that fails to load (missing
files, wrong format, a broken state dict) leaves the old version serving; the error is kept for `/models` and
that version is not retried until the alias moves again or an admin reload forces it.

Every answer carries the version that produced it (`ModelRef`) and its stage times. Deployments return results
(`Scored`, `Candidates`) rather than raising, so request errors reach the HTTP ingress as data it maps to status
codes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from ray import serve

from serving.features import (
    FeatureReader,
    ItemInputs,
    UserFeatures,
    assemble_rows,
    complete,
    seen_items,
    user_row,
)

log = logging.getLogger("recforge.serving")


# ------------------------------------------------------------------------------------------------ lifecycle
@dataclass(frozen=True)
class ModelSource:
    """Which registered model a deployment serves and how often it checks the alias."""

    role: str  # "ranker" | "retriever"
    name: str
    alias: str
    tracking_uri: str
    poll_seconds: float


@dataclass(frozen=True)
class ReplicaSettings:
    """Compute settings of a model replica: torch threads and device ("cpu" or "cuda")."""

    threads: int = 1
    device: str = "cpu"


@dataclass(frozen=True)
class ModelRef:
    """The registry version that answered a request."""

    name: str
    version: str
    alias: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "alias": self.alias}


@dataclass(frozen=True)
class Loaded:
    """A loaded model version: `model` is a `Ranker` or a `Retriever`."""

    ref: ModelRef
    run_id: str | None
    model: Any
    loaded_at: float
    path: Path


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class ModelSlot:
    """The version a deployment serves, swapped atomically when the alias moves (see the module docstring).

    Args:
        source: registered model, alias, tracking URI and poll interval.
        loader: bundle directory -> loaded model (raises when the directory is not a usable bundle).
    """

    def __init__(self, source: ModelSource, loader: Callable[[Path], Any]) -> None:
        self.source = source
        self.loader = loader
        self._current: Loaded | None = None
        self._lock = threading.Lock()  # one check at a time (poll thread and admin reload)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_version: str | None = None
        self.last_error: dict[str, Any] | None = None
        self.last_check: float | None = None
        self.swaps = 0
        self._dir = Path(tempfile.mkdtemp(prefix=f"recforge-{source.role}-"))
        self._client: Any = None

    @property
    def uri(self) -> str:
        return f"models:/{self.source.name}@{self.source.alias}"

    def current(self) -> Loaded | None:
        """The serving version (read once per request: one reference, so a swap never splits a request)."""
        return self._current

    def _registry(self) -> Any:
        if self._client is None:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            import mlflow

            uri = self.source.tracking_uri
            self._client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        return self._client

    def check(self, force: bool = False) -> bool:
        """Resolve the alias and load its version when it differs from the serving one; True when swapped.
        Never raises: a failure is recorded in `last_error` and the serving version stays."""
        with self._lock:
            self.last_check = time.time()
            version = None
            try:
                mv = self._registry().get_model_version_by_alias(self.source.name, self.source.alias)
                version = str(mv.version)
                current = self._current
                if current is not None and current.ref.version == version and not force:
                    self.last_error = None
                    return False
                if version == self._failed_version and not force:
                    return False
                loaded = self._load(version, mv.run_id)
            except Exception as exc:
                self._failed_version = version
                self.last_error = {"version": version, "error": f"{type(exc).__name__}: {exc}",
                                   "at": _iso(time.time())}
                log.warning("%s: version %s not loaded, %s keeps serving: %s", self.uri, version,
                            self._current.ref.version if self._current else "nothing", exc)
                return False
            old, self._current = self._current, loaded  # the swap: one reference assignment
            self._failed_version, self.last_error = None, None
            self.swaps += 1
            if old is not None and old.path != loaded.path:
                shutil.rmtree(old.path.parent, ignore_errors=True)
            log.info("%s: now serving version %s", self.uri, version)
            return True

    def _load(self, version: str, run_id: str | None) -> Loaded:
        import mlflow

        client = self._registry()
        dst = Path(tempfile.mkdtemp(prefix=f"v{version}-", dir=self._dir))
        try:
            uri = client.get_model_version_download_uri(self.source.name, version)
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst),
                                                            tracking_uri=self.source.tracking_uri))
            model = self.loader(path)
        except BaseException:
            shutil.rmtree(dst, ignore_errors=True)
            raise
        ref = ModelRef(self.source.name, version, self.source.alias)
        return Loaded(ref=ref, run_id=run_id, model=model, loaded_at=time.time(), path=path)

    def start(self) -> None:
        """First check now (so a replica starts serving), then poll in a daemon thread."""
        self.check()
        self._thread = threading.Thread(target=self._poll, name=f"poll-{self.source.role}", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.source.poll_seconds):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        shutil.rmtree(self._dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        """What `/models` shows: serving version, since when, last check and the last load error."""
        cur = self._current
        return {
            "model": self.uri,
            "name": self.source.name,
            "alias": self.source.alias,
            "version": cur.ref.version if cur else None,
            "run_id": cur.run_id if cur else None,
            "loaded_at": _iso(cur.loaded_at) if cur else None,
            "last_check": _iso(self.last_check),
            "poll_seconds": self.source.poll_seconds,
            "swaps": self.swaps,
            "last_error": self.last_error,
            "replica_pid": os.getpid(),
        }

    def unavailable(self) -> str:
        why = self.last_error["error"] if self.last_error else "not loaded yet"
        return f"{self.source.role} {self.uri}: no version loaded ({why})"


def _torch_threads(settings: ReplicaSettings) -> None:
    import torch

    torch.set_num_threads(max(1, settings.threads))


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

    def open(self) -> FeatureReader:
        from feature_store.config import RedisOnlineStoreConfig, SQLiteOnlineStoreConfig
        from feature_store.online import open_online_store

        kind = SQLiteOnlineStoreConfig if self.config.get("type", "sqlite") == "sqlite" else RedisOnlineStoreConfig
        store = open_online_store(kind.model_validate(self.config), Path(self.default_path))
        return FeatureReader(store, self.user_key, self.item_key)


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


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1e3, 3)


# ------------------------------------------------------------------------------------------------ ranker
@dataclass
class _Job:
    loaded: Loaded
    table: pa.Table  # spec-transformed rows


def _load_ranker(device: str) -> Callable[[Path], Any]:
    def load(path: Path) -> Any:
        from training.common.embedding import fuse_embeddings
        from training.ranking.bundle import load_bundle

        ranker = load_bundle(path)
        fuse_embeddings(ranker.model)  # same outputs; no KeyedJaggedTensor per request
        ranker.model.to(device)
        return ranker

    return load


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
                 batching: RankerBatching = RankerBatching()) -> None:
        loopback_replica_grpc()
        _torch_threads(settings)
        self.settings = settings
        self.store = store
        self.batching = batching
        self._batched.set_max_batch_size(batching.max_size)
        self._batched.set_batch_wait_timeout_s(batching.wait_s)
        self.reader = store.open()
        self._items: tuple[Loaded, ItemInputs] | None = None
        self.slot = ModelSlot(source, _load_ranker(settings.device))
        self.slot.start()

    async def predict(self, user_id: Any, item_ids: Sequence[Any], context: dict[str, Any] | None) -> Scored:
        """Click probability of each item for the user (features from the online store, context on top)."""
        t0 = time.perf_counter()
        loaded = self.slot.current()
        user = self.reader.user(user_id, set(loaded.model.spec.raw_columns()) if loaded is not None else None)
        return await self._score(user, item_ids, context, _ms(t0))

    async def rank(self, user: UserFeatures, item_ids: Sequence[Any], context: dict[str, Any] | None) -> Scored:
        """Like `predict` for a user whose features were already read (by the retriever)."""
        return await self._score(user, item_ids, context, 0.0)

    async def _score(self, user: UserFeatures, item_ids: Sequence[Any], context: dict[str, Any] | None,
                     user_ms: float) -> Scored:
        loaded = self.slot.current()  # one version for the whole request
        if loaded is None:
            return Scored(error=self.slot.unavailable())
        spec = loaded.model.spec
        raw = spec.raw_columns()
        unknown = [k for k in (context or {}) if k not in raw]
        if unknown:
            return Scored(error=f"unknown context field(s) {unknown}; the model reads: {', '.join(raw)}",
                          error_field=f"context.{unknown[0]}")
        t0 = time.perf_counter()
        cache = self._item_inputs(loaded)
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

    def _item_inputs(self, loaded: Loaded) -> ItemInputs:
        """The item-side cache of the serving version (a new one when the version changed)."""
        cache = self._items
        if cache is None or cache[0] is not loaded:
            cache = self._items = (loaded, ItemInputs(loaded.model.spec, self.reader))
        return cache[1]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.001)  # sizes set per instance from RankerBatching
    async def _batched(self, jobs: list[_Job]) -> list[np.ndarray]:
        return await asyncio.to_thread(score_transformed, jobs, self.settings.device)

    async def status(self) -> dict[str, Any]:
        users, items = self.reader.views()
        cache = self._items[1].stats() if self._items is not None else {"items": 0, "reads": 0}
        return {**self.slot.status(), "item_cache": cache, "online_store": {
            "store": repr(self.reader.store), "user_views": [v.name for v in users],
            "item_views": [v.name for v in items],
            "views": {v.name: {"rows": v.rows, "version": v.version, "written_at": _iso(v.written_at)}
                      for v in (*users, *items)}}}

    async def reload(self) -> dict[str, Any]:
        await asyncio.to_thread(self.slot.check, True)
        return self.slot.status()

    def __del__(self) -> None:
        self.slot.stop()


# ------------------------------------------------------------------------------------------------ retriever
def _load_retriever(path: Path) -> Any:
    from training.retrieval.bundle import load_retriever

    return load_retriever(path)


@serve.deployment
class RetrieverModel:
    """The two-tower retriever: reads the user's online features, user tower -> top-N items of the index with
    the user's history excluded; users the online store does not know get the most popular items."""

    def __init__(self, source: ModelSource, settings: ReplicaSettings, store: StoreSettings) -> None:
        loopback_replica_grpc()
        _torch_threads(settings)
        self.store = store
        self.reader = store.open()
        self.slot = ModelSlot(source, _load_retriever)
        self.slot.start()

    async def candidates(self, user_id: Any, context: dict[str, Any] | None, n: int,
                         exclude_seen: bool = True) -> Candidates:
        loaded = self.slot.current()
        if loaded is None:
            return Candidates(error=self.slot.unavailable())
        retriever = loaded.model
        t0 = time.perf_counter()
        user = self.reader.user(user_id, set(retriever.spec.raw_columns()))  # what the ranker reads too
        seen = seen_items(user, self.store.seen_columns) if exclude_seen else []
        features_ms = _ms(t0)
        t1 = time.perf_counter()
        if not user.known:
            ids = retriever.popular(n, exclude=seen)
            return Candidates(ids=ids.tolist(), scores=[None] * len(ids), user=user, fallback="popular",
                              model=loaded.ref, ms={"features": features_ms, "retrieval": _ms(t1)})
        row = user_row(user, context, user_key=self.store.user_key)
        try:
            vectors = retriever.user_vectors(complete(row, retriever.user_columns))
        except (ValueError, TypeError, pa.ArrowException) as exc:
            return Candidates(error=f"the request's values do not fit the retriever's feature spec: {exc}",
                              error_field="context")
        ids, scores = retriever.search(vectors, n, exclude=[seen] if seen else None)
        keep = np.isfinite(scores[0])
        return Candidates(ids=ids[0][keep].tolist(), scores=scores[0][keep].astype(np.float64).tolist(), user=user,
                          model=loaded.ref, ms={"features": features_ms, "retrieval": _ms(t1)})

    async def status(self) -> dict[str, Any]:
        return self.slot.status()

    async def reload(self) -> dict[str, Any]:
        await asyncio.to_thread(self.slot.check, True)
        return self.slot.status()

    def __del__(self) -> None:
        self.slot.stop()
