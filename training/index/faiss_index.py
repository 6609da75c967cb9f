"""The candidate index over item embeddings: `ItemIndex`, its search with exclusions, and save/load.

Scores are inner products (the two-tower model emits L2-normalised item vectors). Two kinds of index store item
*positions* 0..n-1 behind one query API (`ItemIndex`): faiss indexes (flat, ivf_flat, hnsw, ivf_pq) and
`TorchExactIndex` (type `torch_exact`), an exact float32 matmul + top-k on torch (CPU or CUDA) that scans the
corpus in chunks with a running top-k merge and masks exclusions to -inf before each top-k.
`ItemIndex.item_ids` maps a position to the raw item id; exclusion bookkeeping, id mapping, padding and the
recall figures are shared by both kinds. Building (type choice, parameters, the recall guard) is
`training.index.build`; the configuration is `training.index.config`. `faiss` and `torch` are imported inside
the functions that use them, so importing this module needs numpy only, and `torch_exact` works where faiss is
not installed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.index.config import FAISS_TYPES
from training.index.torch_exact import TorchExactIndex

INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "item_ids.npy", "index.json"
VECTORS_FILE = "vectors.npy"  # torch_exact: the float32 item matrix (its "index" file)
FORMAT_VERSION = 1


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
