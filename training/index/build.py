"""Building the candidate index: the `type: auto` choice, the concrete parameters, `build_index` with its recall
guard, and `build_from_embeddings` (what `recforge index build` runs).

`build_index` refuses to return an approximate index whose recall@k against exact search (`exact_top_k`,
`measure_recall`), measured on real user query vectors, is below the floor (`IndexRecallError`). `faiss`,
`torch` and `pyarrow` are imported inside the functions that use them, so `torch_exact` builds where faiss is
not installed.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.index.config import IndexConfig, IndexRecallError, IndexType
from training.index.faiss_index import ItemIndex, _as_matrix, _faiss, _set_threads, _tune
from training.index.torch_exact import TorchExactIndex, _cuda_free_bytes, _torch_device

log = logging.getLogger("recforge.index")

ITEM_EMBEDDINGS, QUERY_EMBEDDINGS = "item_embeddings.parquet", "query_embeddings.parquet"
PRODUCER = "`recforge train retrieval`"
AUTO_GPU_SHARE = 0.25  # auto on CUDA: torch_exact when the item matrix takes at most this share of free GPU memory


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
