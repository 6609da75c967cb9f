"""Top-K retrieval metrics: recall@K, ndcg@K, hit_rate@K and MRR of ranked item lists, columnar.

The ranked lists and the relevant sets become (user, item) int64 keys; one sort and a binary search find the
hits, cumulative sums give every cut-off at once; no Python loop over users. The input conventions are those
of `training.common.metrics` (numpy arrays or torch tensors, `ValueError` naming the argument).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from training.common.metrics import ArrayLike, _prefixed

RelevantLike = Any  # list[np.ndarray] | tuple[indptr, indices] | scipy.sparse.csr_matrix

__all__ = ["ranking_metrics"]


def _relevant_csr(relevant: RelevantLike, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) from a list of per-user id arrays, an (indptr, indices) tuple or a scipy CSR."""
    if hasattr(relevant, "indptr") and hasattr(relevant, "indices"):  # scipy.sparse CSR (row = user)
        relevant = (np.asarray(relevant.indptr), np.asarray(relevant.indices))
    if isinstance(relevant, tuple):
        if len(relevant) != 2:
            raise ValueError(
                "ranking_metrics: a tuple 'relevant' is read as CSR (indptr, indices) but has "
                f"{len(relevant)} parts; pass per-user arrays as a list instead"
            )
        indptr = np.asarray(relevant[0])
        indices = np.asarray(relevant[1]).reshape(-1)
        if indptr.ndim != 1 or indptr.shape[0] != n_users + 1 or not np.issubdtype(indptr.dtype, np.integer):
            raise ValueError(
                "ranking_metrics: CSR 'relevant' indptr must be 1-D integers of length n_users + 1 = "
                f"{n_users + 1}, got shape {indptr.shape} dtype {indptr.dtype}; "
                "pass per-user arrays as a list instead"
            )
        indptr = indptr.astype(np.int64)
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.shape[0]:
            raise ValueError(
                "ranking_metrics: 'relevant' (indptr, indices) is not a valid CSR: indptr must start at 0, "
                f"never decrease and end at len(indices) = {indices.shape[0]}"
            )
        return indptr, indices
    if len(relevant) != n_users:
        raise ValueError(
            f"ranking_metrics: 'ranked_item_ids' has {n_users} users (rows) but 'relevant' has "
            f"{len(relevant)} entries; give one array of relevant item ids per ranked user, in the same order"
        )
    lengths = np.fromiter((np.size(r) for r in relevant), dtype=np.int64, count=n_users)
    indptr = np.concatenate(([0], np.cumsum(lengths)))
    parts = [np.asarray(r).reshape(-1) for r in relevant]
    indices = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return indptr, indices


def ranking_metrics(
    ranked_item_ids: ArrayLike,
    relevant: RelevantLike,
    ks: Sequence[int] = (10, 20, 50, 100),
    pad_id: int | None = -1,
    prefix: str = "",
) -> dict[str, float]:
    """Top-K retrieval metrics averaged over users that have at least one relevant item.

    Args:
        ranked_item_ids: n_users x K_max integer item ids, best first; `pad_id` pads short lists (never hits).
            A repeated id in a row counts once (at its first position).
        relevant: per user, the relevant (held-out) item ids: a list of arrays (one per row), or CSR-like: a
            tuple (indptr, indices) with indptr of length n_users + 1, or a scipy CSR matrix (row = user,
            column index = item id). Duplicates count once.
        ks: cut-offs, each <= K_max.
    Returns:
        recall@K = hits in top K / |relevant| (NOT / min(|relevant|, K): a user with more relevant items
        than K cannot reach 1), ndcg@K (binary gains, ideal DCG over min(|relevant|, K) items),
        hit_rate@K (at least one hit), mrr (1 / rank of the first hit within K_max, 0 if none),
        n_users (evaluated) and n_users_skipped (no relevant item, excluded from every average).
    """
    ranked = np.asarray(ranked_item_ids.detach().cpu().numpy() if hasattr(ranked_item_ids, "detach")
                        else ranked_item_ids)
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(
            f"ranking_metrics: 'ranked_item_ids' must be an integer n_users x K_max array, got shape "
            f"{ranked.shape} dtype {ranked.dtype}"
        )
    n_users, k_max = ranked.shape
    ks = tuple(int(k) for k in ks)
    bad_k = [k for k in ks if k < 1 or k > k_max]
    if bad_k:
        raise ValueError(
            f"ranking_metrics: ks {bad_k} outside 1..K_max={k_max}; retrieve more items or lower ks"
        )
    indptr, indices = _relevant_csr(relevant, n_users)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"ranking_metrics: relevant item ids must be integers, got dtype {indices.dtype}")
    rel_user = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(indptr))

    # Composite (user, item) keys: user * span + item offset; densify ids when that would overflow int64.
    all_ids = np.concatenate((ranked.reshape(-1).astype(np.int64), indices.astype(np.int64)))
    if all_ids.size == 0:
        lo, span = 0, 1
        r_code, i_code = ranked.reshape(-1).astype(np.int64), indices.astype(np.int64)
    else:
        lo, hi = int(all_ids.min()), int(all_ids.max())
        span = hi - lo + 1
        if span <= (2**62) // max(n_users, 1):
            r_code, i_code = ranked.reshape(-1).astype(np.int64) - lo, indices.astype(np.int64) - lo
        else:
            _, inv = np.unique(all_ids, return_inverse=True)
            span = int(inv.max()) + 1
            r_code, i_code = inv[: ranked.size], inv[ranked.size :]
    rel_keys = np.sort(rel_user * span + i_code)
    if rel_keys.size > 1:  # deduplicate
        rel_keys = rel_keys[np.concatenate(([True], rel_keys[1:] != rel_keys[:-1]))]
    n_rel = np.bincount(rel_keys // span, minlength=n_users)
    row = np.repeat(np.arange(n_users, dtype=np.int64), k_max)
    q = row * span + r_code
    pos = np.searchsorted(rel_keys, q)
    hit = np.zeros(q.shape[0], dtype=bool)
    inside = pos < rel_keys.shape[0]
    hit[inside] = rel_keys[pos[inside]] == q[inside]
    hit = hit.reshape(n_users, k_max)
    if pad_id is not None:
        hit &= ranked != pad_id
    hit_at = np.flatnonzero(hit)  # a repeated id counts once: among equal (user, item) hits keep the first
    if hit_at.size > 1:
        o = np.argsort(q[hit_at], kind="stable")
        sk = q[hit_at][o]
        hit.reshape(-1)[hit_at[o[1:][sk[1:] == sk[:-1]]]] = False

    eligible = n_rel > 0
    out: dict[str, float] = {}
    h = hit[eligible]
    nr = n_rel[eligible].astype(np.float64)
    n_eval = int(eligible.sum())
    discount = 1.0 / np.log2(np.arange(k_max, dtype=np.float64) + 2.0)
    ideal = np.cumsum(discount)
    cum_hits = np.cumsum(h, axis=1)
    dcg = np.cumsum(h * discount, axis=1)
    nan = float("nan")
    for k in ks:
        hits_k = cum_hits[:, k - 1] if n_eval else np.zeros(0)
        idcg = ideal[np.minimum(nr, k).astype(np.int64) - 1] if n_eval else np.ones(0)
        out[f"recall@{k}"] = float(np.mean(hits_k / nr)) if n_eval else nan
        out[f"ndcg@{k}"] = float(np.mean(dcg[:, k - 1] / idcg)) if n_eval else nan
        out[f"hit_rate@{k}"] = float(np.mean(hits_k > 0)) if n_eval else nan
    any_hit = h.any(axis=1)
    first = np.argmax(h, axis=1)
    out["mrr"] = float(np.mean(np.where(any_hit, 1.0 / (first + 1.0), 0.0))) if n_eval else nan
    out["n_users"] = float(n_eval)
    out["n_users_skipped"] = float(n_users - n_eval)
    return {_prefixed(prefix, k): v for k, v in out.items()}

