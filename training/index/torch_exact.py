"""The exact top-N index on torch (index type `torch_exact`): the float32 item matrix on the CPU or a CUDA device,
scanned in chunks with a running top-k merge, exclusions masked to -inf before each top-k.
`training.index.faiss_index.ItemIndex` wraps it behind the same query API as the faiss indexes;
this module needs torch and numpy only."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np


def _torch_device(requested: str) -> Any:
    """`index.device` as a torch.device: auto = cuda when torch sees a CUDA device, else cpu."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("index.device is 'cuda' but torch sees no CUDA device here; set index.device to 'auto' "
                         "or 'cpu' (or load the index with device='cpu')")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _cuda_free_bytes() -> int | None:
    """Free memory of the current CUDA device, or None where torch (or CUDA) is not available."""
    try:
        import torch
    except ImportError:
        return None
    return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None


@contextlib.contextmanager
def _fp32_matmul(device_type: str, allow_tf32: bool) -> Iterator[None]:
    """float32 matmuls in IEEE float32 on `device_type` (TF32 on CUDA only when `allow_tf32`), whatever the global
    matmul precision says (Lightning or a user may have set TF32 / bf16); restored on exit."""
    import torch

    backend = torch.backends.cuda.matmul if device_type == "cuda" else getattr(torch.backends.mkldnn, "matmul", None)
    if backend is None or not hasattr(backend, "fp32_precision"):  # torch < 2.9: the legacy CUDA flag
        if device_type != "cuda":
            yield
            return
        before_flag = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before_flag
        return
    before = backend.fp32_precision
    backend.fp32_precision = "tf32" if allow_tf32 and device_type == "cuda" else "ieee"
    try:
        yield
    finally:
        backend.fp32_precision = before


class TorchExactIndex:
    """Exact inner-product top-k on torch: the float32 item matrix on `device`, scored `query_batch` queries x
    `chunk_items` items per matmul, with a running top-k merge across chunks (the score block never exceeds
    query_batch x chunk_items floats, so corpora that do not fit at once are still searched exactly).

    Exclusions are applied inside the scan: scores of excluded items are set to -inf before each top-k (a
    broadcast mask for items excluded for all queries, an index_put of (row, position) pairs per chunk for
    per-query ones), so a result slot is never spent on an excluded item. float32 matmul in IEEE precision
    (bf16 is not used; TF32 on CUDA only with `allow_tf32`).

    Args:
        vectors: n x d float32 item vectors (row = position).
        device: "auto" (cuda when present), "cpu" or "cuda".
        chunk_items: items per matmul chunk.
        query_batch: queries per matmul.
        allow_tf32: let CUDA matmuls use TF32.
        copy: copy `vectors` (False: share the array's memory on CPU; the caller must not change it).
    """

    def __init__(self, vectors: np.ndarray, *, device: str = "auto", chunk_items: int = 262_144,
                 query_batch: int = 256, allow_tf32: bool = False, copy: bool = True) -> None:
        import torch

        self.device = _torch_device(device)
        arr = np.ascontiguousarray(vectors, dtype=np.float32)
        self.vectors = torch.from_numpy(arr).to(self.device, copy=copy or self.device.type != "cpu")
        self.chunk_items, self.query_batch, self.allow_tf32 = int(chunk_items), int(query_batch), bool(allow_tf32)

    @property
    def d(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def ntotal(self) -> int:
        return int(self.vectors.shape[0])

    def _exclusions(self, excl: np.ndarray | None, r0: int, r1: int) -> tuple[Any, Any, list[int]] | None:
        """Per-query exclusions of query rows r0..r1 as device tensors (local row, position) sorted by position,
        and the offsets where each item chunk's pairs start (so a chunk takes a slice, no loop over queries)."""
        import torch

        if excl is None or not excl.size:
            return None
        n = self.ntotal
        lo, hi = np.searchsorted(excl, [r0 * n, r1 * n])
        if hi == lo:
            return None
        keys = excl[lo:hi]
        pos = keys % n
        order = np.argsort(pos, kind="stable")
        pos, rows = pos[order], keys[order] // n - r0
        edges = np.searchsorted(pos, np.arange(0, n + self.chunk_items, self.chunk_items)).tolist()
        return (torch.from_numpy(rows).to(self.device), torch.from_numpy(pos).to(self.device), edges)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               excl: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k positions (-1 where none) and scores (-inf where none) of each query row, best first.

        Args:
            queries: B x d float32.
            k: results per query (at most n).
            allowed: n bools, False = excluded for every query (None: all allowed).
            excl: sorted unique keys `row * n + position` of per-query exclusions (row = query row here).
        """
        import torch

        n, b = self.ntotal, len(queries)
        k = min(int(k), n)
        pos_out = np.full((b, k), -1, dtype=np.int64)
        score_out = np.full((b, k), -np.inf, dtype=np.float32)
        if b == 0 or k == 0:
            return pos_out, score_out
        banned = None if allowed is None else torch.from_numpy(~np.asarray(allowed, dtype=bool)).to(self.device)
        neg_inf = float("-inf")
        parts: list[tuple[Any, Any]] = []
        with torch.inference_mode(), _fp32_matmul(self.device.type, self.allow_tf32):
            for r0 in range(0, b, self.query_batch):
                r1 = min(b, r0 + self.query_batch)
                q = torch.from_numpy(np.ascontiguousarray(queries[r0:r1], dtype=np.float32)).to(self.device)
                ex = self._exclusions(excl, r0, r1)
                best_s = best_i = None
                for j, c0 in enumerate(range(0, n, self.chunk_items)):
                    c1 = min(n, c0 + self.chunk_items)
                    s = q @ self.vectors[c0:c1].T
                    if banned is not None:
                        s.masked_fill_(banned[c0:c1], neg_inf)
                    if ex is not None and ex[2][j + 1] > ex[2][j]:
                        sl = slice(ex[2][j], ex[2][j + 1])
                        s[ex[0][sl], ex[1][sl] - c0] = neg_inf
                    top_s, top_i = s.topk(min(k, c1 - c0), dim=1)
                    top_i += c0
                    if best_s is None:
                        best_s, best_i = top_s, top_i
                    else:
                        cat_s, cat_i = torch.cat([best_s, top_s], 1), torch.cat([best_i, top_i], 1)
                        best_s, sel = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
                        best_i = cat_i.gather(1, sel)
                parts.append((best_s, torch.where(torch.isneginf(best_s), -1, best_i)))
            scores = torch.cat([p[0] for p in parts]).cpu().numpy()
            positions = torch.cat([p[1] for p in parts]).cpu().numpy()
        pos_out[:, : positions.shape[1]] = positions
        score_out[:, : scores.shape[1]] = scores
        return pos_out, score_out
