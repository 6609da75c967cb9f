"""The FAISS candidate index over item embeddings: build (with a recall guard), search with exclusions, save/load.

Scores are inner products (the two-tower model emits L2-normalised item vectors). The faiss index stores item
*positions* 0..n-1; `ItemIndex.item_ids` maps a position to the raw item id. `build_index` refuses to return an
approximate index whose recall@k against exact search, measured on real user query vectors, is below the floor
(`IndexRecallError`). `faiss` is imported inside the functions that use it, so importing this module needs numpy
and pydantic only.
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

log = logging.getLogger("recforge.index")

INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "item_ids.npy", "index.json"
ITEM_EMBEDDINGS, QUERY_EMBEDDINGS = "item_embeddings.parquet", "query_embeddings.parquet"
PRODUCER = "`recforge train retrieval`"
FORMAT_VERSION = 1
IndexType = Literal["flat", "ivf_flat", "hnsw", "ivf_pq"]


class IndexRecallError(ValueError):
    """The built approximate index returns too few of the exact top-k items; the message says what to try."""


class IndexConfig(StrictModel):
    """`index:` section: the index type and its parameters, the recall guard and the faiss thread count."""

    type: Literal["auto", "flat", "ivf_flat", "hnsw", "ivf_pq"] = "auto"
    nlist: int | None = Field(None, gt=0, description="IVF lists; None = about 4*sqrt(n_items)")
    nprobe: int = Field(16, gt=0, description="IVF lists visited per query")
    hnsw_m: int = Field(32, ge=2, description="HNSW links per node")
    ef_construction: int = Field(200, gt=0)
    ef_search: int = Field(128, gt=0)
    pq_m: int | None = Field(None, gt=0, description="PQ sub-quantizers; None = dim // 4; must divide dim")
    pq_bits: int = Field(8, ge=1, le=16, description="bits per PQ code")
    recall_k: int = Field(100, gt=0)
    recall_floor: float = Field(0.95, gt=0, le=1)
    recall_queries: int = Field(1000, gt=0, description="query vectors used by the recall check")
    auto_exact_max: int = Field(100_000, ge=0, description="auto: exact search up to this many items, HNSW above")
    threads: int | None = Field(None, gt=0, description="faiss OpenMP threads; None = faiss default (all cores)")

    @model_validator(mode="after")
    def _combinations(self) -> IndexConfig:
        ivf = self.type in ("ivf_flat", "ivf_pq")
        if self.nlist is not None and not ivf:
            raise ValueError(f"'nlist' applies only to type 'ivf_flat' or 'ivf_pq', not '{self.type}'; remove it")
        if self.pq_m is not None and self.type != "ivf_pq":
            raise ValueError(f"'pq_m' applies only to type 'ivf_pq', not '{self.type}'; remove it")
        if ivf and self.nlist is not None and self.nprobe > self.nlist:
            raise ValueError(f"'nprobe' ({self.nprobe}) cannot exceed 'nlist' ({self.nlist}); lower nprobe")
        return self


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import faiss

        faiss.omp_set_num_threads(threads)


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
    """A built faiss index over item positions, the position -> raw item id map, build parameters and recall.

    Args:
        index: the faiss index (inner-product metric) holding `len(item_ids)` vectors at ids 0..n-1.
        item_ids: int64 array, position -> raw item id (unique).
        build_params: `type` (flat|ivf_flat|hnsw|ivf_pq) and that type's parameters (nprobe, ef_search, ...).
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

    def positions(self, raw_ids: np.ndarray) -> np.ndarray:
        """Positions of the raw ids that are in the index (ids not in the corpus are dropped)."""
        raw = np.asarray(raw_ids, dtype=np.int64).ravel()
        at = np.minimum(np.searchsorted(self._sorted, raw), max(self.n_items - 1, 0))
        found = self._sorted[at] == raw if self.n_items else np.zeros(raw.shape, bool)
        return self._order[at[found]]

    def _params(self, selector: Any) -> Any:
        import faiss

        t = self.build_params["type"]
        if t in ("ivf_flat", "ivf_pq"):
            return faiss.SearchParametersIVF(sel=selector, nprobe=int(self.build_params["nprobe"]))
        if t == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=int(self.build_params["ef_search"]))
        return None if selector is None else faiss.SearchParameters(sel=selector)

    def _raw_search(self, q: np.ndarray, k: int, selector: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Positions (-1 where none) and inner products of the top-k, for the faiss index as built."""
        _set_threads(self.build_params.get("threads"))
        dist, pos = self.index.search(q, k, params=self._params(selector))
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
            exclude_all: raw item ids excluded for every query (e.g. out of stock); applied inside faiss through
                an ID selector, so the index never spends result slots on them.

        Returns:
            ids (B x n int64) and scores (B x n float32). Excluded items are never returned; a row the corpus
            cannot fill (or an approximate index cannot reach) is padded with id -1 and score -inf.
        """
        import faiss

        if int(n) < 1:
            raise ValueError(f"'n' must be at least 1, got {n}")
        n = int(n)
        q = _as_matrix(user_vectors, "user_vectors", self.dim)
        b, total = len(q), self.n_items
        excl, counts = self._row_exclusions(exclude, b)
        selector, bitmap, available = None, None, total
        if exclude_all is not None and len(np.asarray(exclude_all)):
            allowed = np.ones(total, dtype=bool)
            allowed[self.positions(exclude_all)] = False
            available = int(allowed.sum())
            bitmap = np.packbits(allowed, bitorder="little")  # referenced until the searches are done
            selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        ids = np.full((b, n), -1, dtype=np.int64)
        scores = np.full((b, n), -np.inf, dtype=np.float32)
        rows = np.arange(b)
        extra = int(np.quantile(counts, 0.9)) if b and excl.size else 0
        k = min(available, n + extra)
        while rows.size and k > 0:
            pos, dist = self._raw_search(q[rows], k, selector)
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
            if k >= available or not short.any():
                break
            rows = rows[short]
            k = min(available, max(2 * k, n + int(counts[rows].max())))
        del bitmap
        return ids, scores

    def save(self, directory: Path | str) -> Path:
        """Write index.faiss, item_ids.npy and index.json (last, so a complete index.json means a complete save)."""
        import faiss

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(out / INDEX_FILE))
        np.save(out / IDS_FILE, self.item_ids, allow_pickle=False)
        meta = {"format_version": FORMAT_VERSION, "type": self.type, "params": self.build_params, "dim": self.dim,
                "n_items": self.n_items, "recall": self.recall, "faiss_version": faiss.__version__,
                "build_seconds": self.timings}
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, directory: Path | str) -> ItemIndex:
        """Read a directory written by `save`; checks that the three files exist and agree (n_items, dim)."""
        import faiss

        src = Path(directory)
        for name in (META_FILE, INDEX_FILE, IDS_FILE):
            if not (src / name).is_file():
                raise FileNotFoundError(f"{src / name}: missing; an index directory holds {META_FILE}, {INDEX_FILE} "
                                        f"and {IDS_FILE} (written by `recforge index build`); rebuild it")
        try:
            meta = json.loads((src / META_FILE).read_text())
            n_items, dim, params = int(meta["n_items"]), int(meta["dim"]), dict(meta["params"])
            if params["type"] not in ("flat", "ivf_flat", "hnsw", "ivf_pq"):
                raise ValueError(f"unknown index type {params['type']!r}")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{src / META_FILE}: not a valid index description ({e}); rebuild the index") from e
        try:
            index = faiss.read_index(str(src / INDEX_FILE))
        except RuntimeError as e:
            raise ValueError(f"{src / INDEX_FILE}: faiss cannot read it ({e}); rebuild the index") from e
        ids = np.load(src / IDS_FILE, allow_pickle=False)
        if ids.ndim != 1 or ids.dtype != np.int64 or len(ids) != n_items:
            raise ValueError(f"{src / IDS_FILE}: expected {n_items} int64 item ids (n_items in {META_FILE}), got "
                             f"shape {ids.shape} {ids.dtype}; the files come from different builds, rebuild")
        if index.ntotal != n_items or index.d != dim:
            raise ValueError(f"{src / INDEX_FILE}: holds {index.ntotal} vectors of dim {index.d}, {META_FILE} says "
                             f"{n_items} of dim {dim}; the files come from different builds, rebuild")
        _tune(index, params)
        return cls(index, ids, params, meta.get("recall", {}), meta.get("build_seconds", {}))


def _tune(index: Any, params: dict[str, Any]) -> None:
    """Apply the query-time knobs (nprobe, efSearch) stored in `params` to a faiss index."""
    import faiss

    if params["type"] in ("ivf_flat", "ivf_pq"):
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    elif params["type"] == "hnsw":
        index.hnsw.efSearch = int(params["ef_search"])


def _resolve(cfg: IndexConfig, n: int, dim: int) -> dict[str, Any]:
    """The concrete type and parameters for a corpus of n x dim; data-dependent checks name the config field."""
    kind: IndexType = ("flat" if n <= cfg.auto_exact_max else "hnsw") if cfg.type == "auto" else cfg.type
    params: dict[str, Any] = {"type": kind, "requested": cfg.type, "threads": cfg.threads}
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
    import faiss

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


def measure_recall(item: ItemIndex, vectors: np.ndarray, queries: np.ndarray, k: int) -> dict[str, Any]:
    """recall@k of `item` against exact inner-product search over `vectors`: mean over queries of |approx ∩ exact|/k."""
    import faiss

    k = min(k, item.n_items)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(queries, k)
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
    _set_threads(cfg.threads)
    rng = np.random.default_rng(seed)
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
    if "item_id" in columns:
        col = table.column("item_id")
        if not pa.types.is_integer(col.type) or col.null_count:
            raise ValueError(f"{path}: column 'item_id' must be non-null integers, got {col.type} with "
                             f"{col.null_count} nulls; re-create the file with {PRODUCER}")
        out["item_id"] = col.to_numpy().astype(np.int64, copy=False)
    return out


def build_from_embeddings(embeddings_dir: Path, cfg: IndexConfig, out_dir: Path) -> ItemIndex:
    """Read item_embeddings.parquet and query_embeddings.parquet from `embeddings_dir`, build, save to `out_dir`."""
    src = Path(embeddings_dir)
    items = _read_embeddings(src / ITEM_EMBEDDINGS, ["item_id", "embedding"])
    queries = _read_embeddings(src / QUERY_EMBEDDINGS, ["embedding"])["embedding"]
    if queries.shape[1] != items["embedding"].shape[1]:
        raise ValueError(f"{src / QUERY_EMBEDDINGS}: vectors of dim {queries.shape[1]}, but {ITEM_EMBEDDINGS} has "
                         f"dim {items['embedding'].shape[1]}; both must come from the same {PRODUCER} run")
    item = build_index(items["embedding"], items["item_id"], cfg, queries)
    item.save(out_dir)
    log.info("saved %s index of %d items to %s", item.type, item.n_items, out_dir)
    return item
