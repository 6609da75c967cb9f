"""The candidate index over item embeddings: build (with a recall guard), search with exclusions, save/load.

Scores are inner products (the two-tower model emits L2-normalised item vectors). Two kinds of index store item
*positions* 0..n-1 behind one query API (`ItemIndex`): faiss indexes (flat, ivf_flat, hnsw, ivf_pq) and
`TorchExactIndex` (type `torch_exact`), an exact float32 matmul + top-k on torch (CPU or CUDA) that scans the
corpus in chunks with a running top-k merge and masks exclusions to -inf before each top-k.
`ItemIndex.item_ids` maps a position to the raw item id; exclusion bookkeeping, id mapping, padding and the
recall figures are shared by both kinds. `build_index` refuses to return an approximate index whose recall@k
against exact search, measured on real user query vectors, is below the floor (`IndexRecallError`). `faiss` and
`torch` are imported inside the functions that use them, so importing this module needs numpy and pydantic only,
and `torch_exact` works where faiss is not installed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from feature_store.config import StrictModel
from training.index.torch_exact import TorchExactIndex, _cuda_free_bytes, _torch_device

log = logging.getLogger("recforge.index")

INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "item_ids.npy", "index.json"
VECTORS_FILE = "vectors.npy"  # torch_exact: the float32 item matrix (its "index" file)
ITEM_EMBEDDINGS, QUERY_EMBEDDINGS = "item_embeddings.parquet", "query_embeddings.parquet"
PRODUCER = "`recforge train retrieval`"
FORMAT_VERSION = 1
IndexType = Literal["flat", "ivf_flat", "hnsw", "ivf_pq", "torch_exact"]
FAISS_TYPES = ("flat", "ivf_flat", "hnsw", "ivf_pq")
AUTO_GPU_SHARE = 0.25  # auto on CUDA: torch_exact when the item matrix takes at most this share of free GPU memory


class IndexRecallError(ValueError):
    """The built approximate index returns too few of the exact top-k items; the message says what to try."""


class IndexConfig(StrictModel):
    """The candidate index of `recforge index build` over the retrieval bundle's item vectors: its type and
    parameters, and the recall guard. Every build measures recall@`recall_k` against exact search on real
    held-out user vectors; below `recall_floor` the build fails (exit code 3) with the figures and what to
    change, so a bad index is never written.

    `torch_exact` is exact inner-product search on torch (no faiss needed): a float32 matmul of `query_batch`
    queries against `chunk_items` items at a time, merged into a running top-k, so corpora that do not fit one
    matmul are still searched exactly; exclusions are masked to -inf inside the scan. `device` places it;
    `ItemIndex.load(dir, device=...)` can move a saved index. Matmuls run in IEEE float32 whatever the global
    matmul precision (never bf16) unless `allow_tf32`. It saves `vectors.npy` instead of `index.faiss`.

    `type: auto` picks: on a machine where torch sees a CUDA device (and `device` is not `cpu`), `torch_exact`
    when the n x dim float32 matrix takes at most 25% of the free GPU memory; otherwise (always on a CPU-only
    machine) `flat` up to `auto_exact_max` items and `hnsw` above. An index built by `auto` on a GPU machine is
    therefore exact search; set `type` explicitly when it will be served from CPU-only machines.
    """

    type: Literal["auto", "flat", "ivf_flat", "hnsw", "ivf_pq", "torch_exact"] = Field(
        "auto", description="flat: exact faiss search; ivf_flat, hnsw, ivf_pq: approximate faiss indexes (faster "
                            "on large corpora; ivf_pq also compresses the vectors); torch_exact: exact search on "
                            "torch, CPU or CUDA; auto: see above")
    nlist: int | None = Field(None, gt=0, description="ivf_flat, ivf_pq: number of IVF lists; null = about "
                                                      "4 sqrt(n_items)")
    nprobe: int = Field(16, gt=0, description="IVF lists visited per query (at most `nlist`): more = higher recall, "
                                              "slower search")
    hnsw_m: int = Field(32, ge=2, description="hnsw: links per node: more = higher recall, more memory")
    ef_construction: int = Field(200, gt=0, description="hnsw: candidate list size while building: more = a better "
                                                        "graph, slower build")
    ef_search: int = Field(128, gt=0, description="hnsw: candidate list size per query: more = higher recall, "
                                                  "slower search")
    pq_m: int | None = Field(None, gt=0, description="ivf_pq: sub-quantizers per vector (must divide the "
                                                     "dimension); null = dim / 4")
    pq_bits: int = Field(8, ge=1, le=16, description="ivf_pq: bits per sub-quantizer code")
    recall_k: int = Field(100, gt=0, description="the recall guard measures recall@this against exact search")
    recall_floor: float = Field(0.95, gt=0, le=1, description="the build fails (exit 3) below this recall@k")
    recall_queries: int = Field(1000, gt=0, description="held-out user vectors the recall guard queries")
    auto_exact_max: int = Field(100_000, ge=0, description="auto without a usable GPU: exact `flat` up to this many "
                                                           "items, `hnsw` above")
    threads: int | None = Field(None, gt=0, description="faiss OpenMP threads; null = faiss default (all cores)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="torch_exact: where the item matrix lives and is searched; auto = cuda when torch sees "
                            "one")
    chunk_items: int = Field(262_144, gt=0, description="torch_exact: items scored per matmul (running top-k "
                                                        "merge); lower it when a chunk does not fit memory")
    query_batch: int = Field(256, gt=0, description="torch_exact: queries per matmul")
    allow_tf32: bool = Field(False, description="torch_exact on CUDA: TF32 matmuls (faster, scores off by about "
                                                "1e-3); false = IEEE float32, exact to float32 rounding")

    @model_validator(mode="after")
    def _combinations(self) -> IndexConfig:
        if self.device == "cuda" and self.type in FAISS_TYPES:
            raise ValueError(f"'device: cuda' applies only to type 'torch_exact' or 'auto' (faiss type "
                             f"'{self.type}' searches on the CPU here); remove it or use type 'torch_exact'")
        ivf = self.type in ("ivf_flat", "ivf_pq")
        if self.nlist is not None and not ivf:
            raise ValueError(f"'nlist' applies only to type 'ivf_flat' or 'ivf_pq', not '{self.type}'; remove it")
        if self.pq_m is not None and self.type != "ivf_pq":
            raise ValueError(f"'pq_m' applies only to type 'ivf_pq', not '{self.type}'; remove it")
        if ivf and self.nlist is not None and self.nprobe > self.nlist:
            raise ValueError(f"'nprobe' ({self.nprobe}) cannot exceed 'nlist' ({self.nlist}); lower nprobe")
        return self


def _faiss(kind: str = "flat") -> Any:
    """The faiss module, or an error saying how to get it (or to use torch_exact) where it is not installed."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError(f"index type '{kind}' needs faiss, which is not installed here ({e}); install faiss-cpu "
                          f"(make install) or set index.type: torch_exact (exact search on torch)") from e
    return faiss


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        _faiss().omp_set_num_threads(threads)


def _as_matrix(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    """A C-contiguous float32 (rows x dim) view or copy of `x`; errors name the argument."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"'{name}' must be a 2-D array (rows x dim), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"'{name}' has dimension {arr.shape[1]} but the index has {dim}; use vectors of the "
                         f"same model that produced the item embeddings")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"'{name}' must hold floats, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"'{name}' row {int(np.argmax(bad))} holds NaN or inf ({int(bad.sum())} rows in all); "
                         f"fix the embeddings before indexing")
    return arr


class ItemIndex:
    """A built index over item positions (faiss or `TorchExactIndex`), the position -> raw item id map, build
    parameters and recall. Both kinds share the query API, the exclusion bookkeeping and persistence.

    Args:
        index: the faiss index (inner-product metric) or `TorchExactIndex` holding `len(item_ids)` vectors at
            positions 0..n-1.
        item_ids: int64 array, position -> raw item id (unique).
        build_params: `type` (flat|ivf_flat|hnsw|ivf_pq|torch_exact) and that type's parameters (nprobe,
            ef_search, device, chunk_items, ...).
        recall: measured recall figures (`recall_at_k`, `k`, `queries`, `floor`, ...).
        timings: seconds spent training, adding and checking recall.
    """

    def __init__(self, index: Any, item_ids: np.ndarray, build_params: dict[str, Any], recall: dict[str, Any],
                 timings: dict[str, float] | None = None) -> None:
        self.index = index
        self.item_ids = np.ascontiguousarray(item_ids, dtype=np.int64)
        self.build_params = dict(build_params)
        self.recall = dict(recall)
        self.timings = dict(timings or {})
        self._order = np.argsort(self.item_ids, kind="stable")
        self._sorted = self.item_ids[self._order]

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def type(self) -> str:
        return str(self.build_params["type"])

    @property
    def device(self) -> str:
        """Where searches run: the torch device of a torch_exact index, "cpu" for faiss."""
        return str(self.index.device) if isinstance(self.index, TorchExactIndex) else "cpu"

    def positions(self, raw_ids: np.ndarray) -> np.ndarray:
        """Positions of the raw ids that are in the index (ids not in the corpus are dropped)."""
        raw = np.asarray(raw_ids, dtype=np.int64).ravel()
        at = np.minimum(np.searchsorted(self._sorted, raw), max(self.n_items - 1, 0))
        found = self._sorted[at] == raw if self.n_items else np.zeros(raw.shape, bool)
        return self._order[at[found]]

    def _params(self, selector: Any) -> Any:
        faiss = _faiss(self.type)
        t = self.build_params["type"]
        if t in ("ivf_flat", "ivf_pq"):
            return faiss.SearchParametersIVF(sel=selector, nprobe=int(self.build_params["nprobe"]))
        if t == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=int(self.build_params["ef_search"]))
        return None if selector is None else faiss.SearchParameters(sel=selector)

    def _raw_search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None,
                    excl: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Positions (-1 where none) and inner products of the top-k of the index as built. `allowed` (n bools)
        bans items for every query; `excl` (sorted keys row*n+position, rows of `q`) bans per query, which only
        torch_exact applies inside its scan (faiss results are filtered afterwards by `search`)."""
        if isinstance(self.index, TorchExactIndex):
            return self.index.search(q, k, allowed, excl)
        faiss = _faiss(self.type)
        _set_threads(self.build_params.get("threads"))
        bitmap = None if allowed is None else np.packbits(allowed, bitorder="little")  # alive until the search ends
        selector = None if bitmap is None else faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        dist, pos = self.index.search(q, k, params=self._params(selector))
        del bitmap
        return pos, dist

    def _row_exclusions(self, exclude: Sequence[np.ndarray] | None, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Sorted unique keys row*n_items+position of the per-query exclusions, and their count per row."""
        if exclude is None:
            return np.empty(0, np.int64), np.zeros(b, np.int64)
        if len(exclude) != b:
            raise ValueError(f"'exclude' has {len(exclude)} arrays for {b} user vectors; give one array of raw "
                             f"item ids per query (an empty array for none)")
        arrays = [np.asarray(a, dtype=np.int64).ravel() for a in exclude]
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=b)
        raw = np.concatenate(arrays) if b else np.empty(0, np.int64)
        rows = np.repeat(np.arange(b, dtype=np.int64), lengths)
        at = np.minimum(np.searchsorted(self._sorted, raw), max(self.n_items - 1, 0))
        found = self._sorted[at] == raw if self.n_items else np.zeros(raw.shape, bool)
        keys = np.unique(rows[found] * self.n_items + self._order[at[found]])
        return keys, np.bincount(keys // max(self.n_items, 1), minlength=b).astype(np.int64)

    def search(self, user_vectors: np.ndarray, n: int, exclude: Sequence[np.ndarray] | None = None,
               exclude_all: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-`n` raw item ids and inner-product scores per user vector, best first.

        Args:
            user_vectors: B x dim float32 query vectors.
            n: items per query.
            exclude: per-query exclusions, one array of raw item ids per query (e.g. already purchased).
            exclude_all: raw item ids excluded for every query (e.g. out of stock); applied inside the index (a faiss
                ID selector, or a -inf mask in torch_exact), so it never spends result slots on them.

        Returns:
            ids (B x n int64) and scores (B x n float32). Excluded items are never returned; a row the corpus
            cannot fill (or an approximate index cannot reach) is padded with id -1 and score -inf.
            torch_exact masks the per-query exclusions inside its scan too (one pass); faiss indexes fetch a few
            more than `n` and search again deeper for rows whose exclusions used up the results.
        """
        if int(n) < 1:
            raise ValueError(f"'n' must be at least 1, got {n}")
        n = int(n)
        q = _as_matrix(user_vectors, "user_vectors", self.dim)
        b, total = len(q), self.n_items
        excl, counts = self._row_exclusions(exclude, b)
        allowed, available = None, total
        if exclude_all is not None and len(np.asarray(exclude_all)):
            allowed = np.ones(total, dtype=bool)
            allowed[self.positions(exclude_all)] = False
            available = int(allowed.sum())
        ids = np.full((b, n), -1, dtype=np.int64)
        scores = np.full((b, n), -np.inf, dtype=np.float32)
        rows = np.arange(b)
        one_pass = isinstance(self.index, TorchExactIndex)  # exclusions masked inside: deeper search finds no more
        extra = int(np.quantile(counts, 0.9)) if b and excl.size and not one_pass else 0
        k = min(available, n + extra)
        while rows.size and k > 0:
            pos, dist = self._raw_search(q[rows], k, allowed, excl if one_pass else None)
            keep = pos >= 0
            if excl.size:
                key = rows[:, None].astype(np.int64) * total + pos
                at = np.minimum(np.searchsorted(excl, key), excl.size - 1)
                keep &= excl[at] != key
            order = np.argsort(~keep, axis=1, kind="stable")[:, : min(n, k)]  # kept first, rank order intact
            got = np.take_along_axis(keep, order, axis=1)
            top = np.take_along_axis(pos, order, axis=1)
            ids[rows, : order.shape[1]] = np.where(got, self.item_ids[np.maximum(top, 0)], -1)
            scores[rows, : order.shape[1]] = np.where(got, np.take_along_axis(dist, order, axis=1), -np.inf)
            short = keep.sum(axis=1) < n
            if one_pass or k >= available or not short.any():
                break
            rows = rows[short]
            k = min(available, max(2 * k, n + int(counts[rows].max())))
        return ids, scores

    def save(self, directory: Path | str) -> Path:
        """Write index.faiss (torch_exact: vectors.npy), item_ids.npy and index.json (last, so a complete
        index.json means a complete save)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if isinstance(self.index, TorchExactIndex):
            import torch

            np.save(out / VECTORS_FILE, self.index.vectors.cpu().numpy(), allow_pickle=False)
            version = {"torch_version": torch.__version__}
        else:
            faiss = _faiss(self.type)
            faiss.write_index(self.index, str(out / INDEX_FILE))
            version = {"faiss_version": faiss.__version__}
        np.save(out / IDS_FILE, self.item_ids, allow_pickle=False)
        meta = {"format_version": FORMAT_VERSION, "type": self.type, "params": self.build_params, "dim": self.dim,
                "n_items": self.n_items, "recall": self.recall, **version, "build_seconds": self.timings}
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, directory: Path | str, *, device: str | None = None) -> ItemIndex:
        """Read a directory written by `save`; checks that the three files exist and agree (n_items, dim).

        `device` (auto|cpu|cuda) places a torch_exact index; None = the `device` it was built with."""
        src = Path(directory)
        what = (f"an index directory holds {META_FILE}, {INDEX_FILE} ({VECTORS_FILE} for torch_exact) and {IDS_FILE} "
                f"(written by `recforge index build`); rebuild it")
        if not (src / META_FILE).is_file():
            raise FileNotFoundError(f"{src / META_FILE}: missing; {what}")
        try:
            meta = json.loads((src / META_FILE).read_text())
            n_items, dim, params = int(meta["n_items"]), int(meta["dim"]), dict(meta["params"])
            if params["type"] not in (*FAISS_TYPES, "torch_exact"):
                raise ValueError(f"unknown index type {params['type']!r}")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{src / META_FILE}: not a valid index description ({e}); rebuild the index") from e
        data_file = VECTORS_FILE if params["type"] == "torch_exact" else INDEX_FILE
        for name in (data_file, IDS_FILE):
            if not (src / name).is_file():
                raise FileNotFoundError(f"{src / name}: missing; {what}")
        if params["type"] == "torch_exact":
            vectors = np.load(src / VECTORS_FILE, allow_pickle=False)
            if vectors.ndim != 2 or vectors.dtype != np.float32:
                raise ValueError(f"{src / VECTORS_FILE}: expected an n x d float32 matrix, got shape {vectors.shape} "
                                 f"{vectors.dtype}; rebuild the index")
            index: Any = TorchExactIndex(vectors, device=device or params.get("device", "auto"),
                                         chunk_items=params["chunk_items"], query_batch=params["query_batch"],
                                         allow_tf32=params.get("allow_tf32", False), copy=False)
        else:
            faiss = _faiss(params["type"])
            try:
                index = faiss.read_index(str(src / INDEX_FILE))
            except RuntimeError as e:
                raise ValueError(f"{src / INDEX_FILE}: faiss cannot read it ({e}); rebuild the index") from e
        ids = np.load(src / IDS_FILE, allow_pickle=False)
        if ids.ndim != 1 or ids.dtype != np.int64 or len(ids) != n_items:
            raise ValueError(f"{src / IDS_FILE}: expected {n_items} int64 item ids (n_items in {META_FILE}), got "
                             f"shape {ids.shape} {ids.dtype}; the files come from different builds, rebuild")
        if index.ntotal != n_items or index.d != dim:
            raise ValueError(f"{src / data_file}: holds {index.ntotal} vectors of dim {index.d}, {META_FILE} says "
                             f"{n_items} of dim {dim}; the files come from different builds, rebuild")
        _tune(index, params)
        return cls(index, ids, params, meta.get("recall", {}), meta.get("build_seconds", {}))


def _tune(index: Any, params: dict[str, Any]) -> None:
    """Apply the query-time knobs (nprobe, efSearch) stored in `params` to a faiss index."""
    if params["type"] in ("ivf_flat", "ivf_pq"):
        _faiss(params["type"]).extract_index_ivf(index).nprobe = int(params["nprobe"])
    elif params["type"] == "hnsw":
        index.hnsw.efSearch = int(params["ef_search"])


def _auto_type(cfg: IndexConfig, n: int, dim: int) -> IndexType:
    """`type: auto`: torch_exact when torch sees a CUDA device (and `device` is not cpu) and the n x dim float32
    matrix takes at most AUTO_GPU_SHARE of its free memory; otherwise (always on a CPU-only machine) faiss exact
    search up to `auto_exact_max` items and HNSW above."""
    free = _cuda_free_bytes() if cfg.device != "cpu" else None
    if free is not None and 4 * n * dim <= AUTO_GPU_SHARE * free:
        return "torch_exact"
    if cfg.device == "cuda":
        _torch_device("cuda")  # names the problem where no CUDA device is visible
        raise ValueError(f"index.device is 'cuda' but {n} x {dim} float32 vectors exceed {AUTO_GPU_SHARE:.0%} of "
                         f"the free GPU memory; set index.device: auto (CPU faiss) or type 'torch_exact' with a "
                         f"smaller chunk_items")
    return "flat" if n <= cfg.auto_exact_max else "hnsw"


def _resolve(cfg: IndexConfig, n: int, dim: int) -> dict[str, Any]:
    """The concrete type and parameters for a corpus of n x dim; data-dependent checks name the config field."""
    kind: IndexType = _auto_type(cfg, n, dim) if cfg.type == "auto" else cfg.type
    params: dict[str, Any] = {"type": kind, "requested": cfg.type, "threads": cfg.threads}
    if kind == "torch_exact":
        _torch_device(cfg.device)  # a missing CUDA device fails here, before any work
        params |= {"device": cfg.device, "chunk_items": cfg.chunk_items, "query_batch": cfg.query_batch,
                   "allow_tf32": cfg.allow_tf32}
    if kind == "hnsw":
        params |= {"hnsw_m": cfg.hnsw_m, "ef_construction": cfg.ef_construction, "ef_search": cfg.ef_search}
    if kind in ("ivf_flat", "ivf_pq"):
        nlist = cfg.nlist if cfg.nlist is not None else max(1, min(n, round(4 * math.sqrt(n))))
        if nlist > n:
            raise ValueError(f"index.nlist={nlist} exceeds the number of items ({n}); use at most {n} lists "
                             f"(about 4*sqrt(n) = {round(4 * math.sqrt(n))}) or type 'flat'")
        params |= {"nlist": nlist, "nprobe": min(cfg.nprobe, nlist)}
    if kind == "ivf_pq":
        pq_m = cfg.pq_m if cfg.pq_m is not None else max(1, dim // 4)
        if dim % pq_m:
            raise ValueError(f"index.pq_m={pq_m} must divide the embedding dimension {dim}; choose one of "
                             f"{[m for m in range(1, dim + 1) if dim % m == 0]}")
        if n < 2**cfg.pq_bits:
            raise ValueError(f"index.pq_bits={cfg.pq_bits} needs at least {2**cfg.pq_bits} items to train its "
                             f"codebooks, the corpus has {n}; lower pq_bits or use type 'ivf_flat'")
        params |= {"pq_m": pq_m, "pq_bits": cfg.pq_bits}
    return params


def _make(params: dict[str, Any], dim: int) -> Any:
    faiss = _faiss(params["type"])
    ip = faiss.METRIC_INNER_PRODUCT
    if params["type"] == "flat":
        return faiss.IndexFlatIP(dim)
    if params["type"] == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["hnsw_m"], ip)
        index.hnsw.efConstruction = params["ef_construction"]
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if params["type"] == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], ip)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["pq_m"], params["pq_bits"], ip)
    return index  # faiss's Python wrapper keeps `quantizer` referenced by the index


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Positions of the exact inner-product top-k of each query: faiss IndexFlatIP where faiss is installed (an
    implementation independent of torch_exact), else `TorchExactIndex` on the CPU."""
    try:
        import faiss
    except ImportError:
        return TorchExactIndex(vectors, device="cpu", copy=False).search(queries, k)[0]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    return exact.search(queries, k)[1]


def measure_recall(item: ItemIndex, vectors: np.ndarray, queries: np.ndarray, k: int) -> dict[str, Any]:
    """recall@k of `item` against exact inner-product search over `vectors`: mean over queries of |approx ∩ exact|/k."""
    k = min(k, item.n_items)
    truth = exact_top_k(vectors, queries, k)
    approx, _ = item._raw_search(queries, k)
    rows = np.arange(len(queries), dtype=np.int64)[:, None] * item.n_items
    truth_keys = np.sort((rows + truth).ravel())
    keys = rows + approx
    at = np.minimum(np.searchsorted(truth_keys, keys), truth_keys.size - 1)
    per_query = ((truth_keys[at] == keys) & (approx >= 0)).sum(axis=1) / k
    return {"recall_at_k": float(per_query.mean()), "k": int(k), "queries": len(queries),
            "worst_query": float(per_query.min()), "p10_query": float(np.quantile(per_query, 0.1))}


def build_index(vectors: np.ndarray, item_ids: np.ndarray, cfg: IndexConfig, queries: np.ndarray, *,
                seed: int = 0) -> ItemIndex:
    """Build the index `cfg` asks for over `vectors` (n x d), then check its recall on real user `queries`.

    Raises:
        IndexRecallError: recall@`cfg.recall_k` against exact search is below `cfg.recall_floor`.
        ValueError: malformed inputs or a config that does not fit the data (the message names the field).
    """
    vectors = _as_matrix(vectors, "vectors")
    n, dim = vectors.shape
    if n == 0:
        raise ValueError("'vectors' is empty; there are no item embeddings to index")
    ids = np.asarray(item_ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"'item_ids' must be {n} integers (one per vector row), got shape {ids.shape} {ids.dtype}")
    ids = ids.astype(np.int64)
    sorted_ids = np.sort(ids)
    dup = sorted_ids[1:] == sorted_ids[:-1]
    if dup.any():
        raise ValueError(f"'item_ids' holds duplicates (e.g. {int(sorted_ids[1:][dup][0])}, {int(dup.sum())} "
                         f"repeats); each item must appear once in the embeddings")
    queries = _as_matrix(queries, "queries", dim)
    if len(queries) == 0:
        raise ValueError("'queries' is empty; the recall check needs real user query vectors")
    params = _resolve(cfg, n, dim)
    rng = np.random.default_rng(seed)
    if params["type"] == "torch_exact":
        t0 = t1 = time.perf_counter()
        index: Any = TorchExactIndex(vectors, device=params["device"], chunk_items=params["chunk_items"],
                                     query_batch=params["query_batch"], allow_tf32=params["allow_tf32"])
    else:
        _set_threads(cfg.threads)
        index = _make(params, dim)
        t0 = time.perf_counter()
        if not index.is_trained:
            need = 256 * params["nlist"]
            if params["type"] == "ivf_pq":
                need = max(need, 64 << cfg.pq_bits)  # PQ codebooks want tens of points per centroid
            sample = vectors if n <= need else vectors[np.sort(rng.choice(n, size=need, replace=False))]
            params["train_size"] = len(sample)
            index.train(sample)
        t1 = time.perf_counter()
        index.add(vectors)
        _tune(index, params)
    t2 = time.perf_counter()
    item = ItemIndex(index, ids, params, {})
    checked = queries if len(queries) <= cfg.recall_queries else queries[
        np.sort(rng.choice(len(queries), size=cfg.recall_queries, replace=False))]
    item.recall = measure_recall(item, vectors, checked, cfg.recall_k) | {"floor": cfg.recall_floor}
    t3 = time.perf_counter()
    item.timings = {"train": t1 - t0, "add": t2 - t1, "check": t3 - t2, "total": t3 - t0}
    knobs = {k: v for k, v in params.items() if k not in ("type", "requested")}
    r = item.recall
    log.info("built %s index: %d items x %d dims, params %s; train %.2fs, add %.2fs, recall check %.2fs; "
             "recall@%d %.4f over %d queries (floor %.2f)", params["type"], n, dim, knobs, t1 - t0, t2 - t1,
             t3 - t2, r["k"], r["recall_at_k"], r["queries"], cfg.recall_floor)
    if r["recall_at_k"] < cfg.recall_floor:
        hint = {"ivf_flat": "raise index.nprobe (or lower index.nlist)",
                "ivf_pq": "raise index.nprobe, index.pq_m or index.pq_bits",
                "hnsw": "raise index.ef_search (or index.hnsw_m / index.ef_construction)"}.get(params["type"], "")
        raise IndexRecallError(
            f"index recall@{r['k']} = {r['recall_at_k']:.4f} over {r['queries']} queries is below "
            f"index.recall_floor = {cfg.recall_floor} for type '{params['type']}' with {knobs}; "
            f"{hint + ', ' if hint else ''}or use index.type 'flat' (exact search)")
    return item


def _read_embeddings(path: Path, columns: list[str]) -> dict[str, Any]:
    """Columns of one embeddings Parquet file; `embedding` as an (n x d) float32 view of Arrow's flat values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; it is written by {PRODUCER} (run it first, or point "
                                f"the index build at that command's embeddings directory)")
    names = pq.read_schema(path).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (has {names}); re-create the file with {PRODUCER}")
    table = pq.read_table(path, columns=columns)
    out: dict[str, Any] = {}
    chunked = table.column("embedding")
    emb = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()  # one chunk: no copy
    if not pa.types.is_fixed_size_list(emb.type) or not pa.types.is_floating(emb.type.value_type):
        raise ValueError(f"{path}: column 'embedding' has type {emb.type}, expected fixed_size_list<float32>[d]; "
                         f"re-create the file with {PRODUCER}")
    if emb.null_count:
        raise ValueError(f"{path}: column 'embedding' has {emb.null_count} null rows; every row needs a vector")
    flat = emb.flatten()
    if flat.type != pa.float32():
        flat = flat.cast(pa.float32())
    values = flat.to_numpy(zero_copy_only=flat.null_count == 0)
    out["embedding"] = values.reshape(len(emb), emb.type.list_size)
    for name in ("item_id", "item_code"):
        if name not in columns:
            continue
        col = table.column(name)
        if not pa.types.is_integer(col.type) or col.null_count:
            raise ValueError(f"{path}: column '{name}' must be non-null integers, got {col.type} with "
                             f"{col.null_count} nulls; re-create the file with {PRODUCER}")
        out["item_id"] = col.to_numpy().astype(np.int64, copy=False)
    return out


def build_from_embeddings(embeddings_dir: Path, cfg: IndexConfig, out_dir: Path) -> ItemIndex:
    """Read item_embeddings.parquet and query_embeddings.parquet from `embeddings_dir`, build, save to `out_dir`."""
    import pyarrow.parquet as pq

    src = Path(embeddings_dir)
    path = src / ITEM_EMBEDDINGS
    # a retrieval bundle's corpus position `item_code` when present (raw ids may be strings), else integer item ids
    code = path.is_file() and "item_code" in pq.read_schema(path).names
    items = _read_embeddings(path, ["item_code" if code else "item_id", "embedding"])
    queries = _read_embeddings(src / QUERY_EMBEDDINGS, ["embedding"])["embedding"]
    if queries.shape[1] != items["embedding"].shape[1]:
        raise ValueError(f"{src / QUERY_EMBEDDINGS}: vectors of dim {queries.shape[1]}, but {ITEM_EMBEDDINGS} has "
                         f"dim {items['embedding'].shape[1]}; both must come from the same {PRODUCER} run")
    item = build_index(items["embedding"], items["item_id"], cfg, queries)
    item.save(out_dir)
    log.info("saved %s index of %d items to %s", item.type, item.n_items, out_dir)
    return item
