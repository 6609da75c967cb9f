"""Retrieval evaluation protocol: full-corpus scoring of the same held-out queries for every method.

Everything works on dense integer codes (users 0..U-1, items 0..I-1; `training.retrieval.data` maps raw ids):
`evaluate_scores` asks a score function for every item of the catalogue for each user with test items (in user
batches), masks the items the user saw, takes the top K_max and scores it with `ranking_metrics` (the single
implementation, in `training.common.topk_metrics`); `run_baselines` fits the baselines of
`training.retrieval.baselines` and scores them the same way, and `evaluate_two_tower` scores the two-tower model's
vectors, so the model and the baselines meet identical users, items and masks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from training.common.topk_metrics import ranking_metrics
from training.retrieval.baselines import BASELINES, as_csr
from training.retrieval.data import QuerySet, RetrievalData
from training.retrieval.model import TwoTower, embed

ScoreFn = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]
DEFAULT_KS: tuple[int, ...] = (10, 20, 50, 100)


# ---------------------------------------------------------------------------------------- full-corpus scoring
def _score_tensor(raw: Any, n_rows: int, n_items: int | None) -> torch.Tensor:
    """Scores from a score function as a writable float32 tensor of shape n_rows x n_items (any width if None)."""
    if isinstance(raw, torch.Tensor):
        s = raw.detach()
        s = s.float() if s.dtype != torch.float32 else s
    else:
        arr = np.asarray(raw)
        if not arr.flags.writeable or arr.dtype != np.float32:
            arr = np.array(arr, dtype=np.float32)
        s = torch.from_numpy(arr)
    if s.ndim != 2 or s.shape[0] != n_rows or (n_items is not None and s.shape[1] != n_items):
        raise ValueError(
            f"top_k: score_fn returned shape {tuple(s.shape)} for {n_rows} users; it must return one score per "
            f"item of the whole catalogue: {n_rows} x {'n_items' if n_items is None else n_items}"
        )
    return s


def top_k(
    score_fn: ScoreFn,
    users: np.ndarray,
    k: int,
    train: sp.spmatrix | None = None,
    batch_users: int = 1024,
) -> np.ndarray:
    """The k best items of the whole catalogue per user: a len(users) x k int64 array, best first.

    Args:
        score_fn: user codes (int64, length B) -> B x n_items scores (numpy or torch, any device; higher is
            better). The returned array/tensor is overwritten in place (train items set to -inf), so return a
            fresh one per call. A NaN score is an error.
        users: user codes to rank for.
        k: items per user; must not exceed n_items.
        train: when given (n_users x n_items sparse), each user's train items are masked out. An item scored
            -inf (masked) is never returned: its place holds -1, also when fewer than k items remain.
        batch_users: users scored per call of score_fn.
    """
    fn = "top_k"
    u = np.asarray(users).reshape(-1).astype(np.int64)
    seen_m = as_csr(train, "train", fn) if train is not None else None
    if batch_users < 1:
        raise ValueError(f"{fn}: batch_users must be >= 1, got {batch_users}")
    out = np.empty((u.size, k), dtype=np.int64)
    for start in range(0, u.size, batch_users):  # a loop over batches of users, not over rows or items
        batch = u[start : start + batch_users]
        s = _score_tensor(score_fn(batch), batch.size, None if seen_m is None else seen_m.shape[1])
        if not 1 <= k <= s.shape[1]:
            raise ValueError(f"{fn}: k={k} must lie in 1..n_items={s.shape[1]}")
        nan_rows = torch.isnan(s).any(dim=1)
        if bool(nan_rows.any()):
            bad = int(batch[int(nan_rows.nonzero()[0, 0])])
            raise ValueError(f"{fn}: score_fn returned NaN scores (first for user code {bad}); fix the model")
        if seen_m is not None:
            seen = seen_m[batch]
            rows = torch.from_numpy(np.repeat(np.arange(batch.size, dtype=np.int64), np.diff(seen.indptr)))
            cols = torch.from_numpy(seen.indices.astype(np.int64))
            s[rows.to(s.device), cols.to(s.device)] = -math.inf
        values, index = torch.topk(s, k, dim=1)
        index = index.masked_fill(torch.isneginf(values), -1)
        out[start : start + batch.size] = index.cpu().numpy()
    return out


def evaluate_scores(
    score_fn: ScoreFn,
    train: sp.spmatrix,
    test: sp.spmatrix,
    ks: Sequence[int] = DEFAULT_KS,
    batch_users: int = 1024,
    exclude_train: bool = True,
) -> dict[str, float]:
    """Rank the whole catalogue for every user with test items and score the top K_max against test.

    Args:
        score_fn: as in `top_k` (user codes -> B x n_items scores; the result is overwritten in place).
        train, test: n_users x n_items scipy sparse matrices on the same codes (any non-zero counts as seen /
            relevant).
        ks: cut-offs; K_max = max(ks) must not exceed n_items.
        batch_users: users scored per call of score_fn.
        exclude_train: mask the items each user has in train (they can never be recommended, nor count as a
            hit when a user meets the same item again in test).
    Returns:
        recall@K (hits in top K / |test items|, NOT / min(K, |test items|)), ndcg@K (binary gains, ideal DCG
        over min(K, |test items|)), hit_rate@K, mrr (first hit within K_max), all averaged over the users that
        have at least one test item, plus `users` (how many were evaluated) and `seconds` (wall time).
    """
    t0 = time.perf_counter()
    fn = "evaluate_scores"
    train_m, test_m = as_csr(train, "train", fn), as_csr(test, "test", fn)
    if train_m.shape != test_m.shape:
        raise ValueError(
            f"{fn}: 'train' is {train_m.shape} but 'test' is {test_m.shape}; both must be n_users x n_items "
            "on the same codes"
        )
    n_items = test_m.shape[1]
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1 or max(ks) > n_items:
        raise ValueError(f"{fn}: every K in ks={ks} must lie in 1..n_items={n_items}")
    users = np.flatnonzero(np.diff(test_m.indptr) > 0).astype(np.int64)
    ranked = top_k(score_fn, users, max(ks), train_m if exclude_train else None, batch_users)
    metrics = ranking_metrics(ranked, test_m[users], ks, pad_id=-1)
    metrics.pop("n_users", None)
    metrics.pop("n_users_skipped", None)
    metrics["users"] = float(users.size)
    metrics["seconds"] = time.perf_counter() - t0
    return metrics


# ---------------------------------------------------------------------------------------- baselines
BASELINE_NAMES: tuple[str, ...] = ("most_popular", "item_knn", "als", "bpr")


def run_baselines(
    train: sp.spmatrix,
    test: sp.spmatrix,
    ks: Sequence[int] = DEFAULT_KS,
    names: Sequence[str] = BASELINE_NAMES,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    batch_users: int = 1024,
) -> dict[str, dict[str, float]]:
    """Fit each named baseline on `train` and score it with `evaluate_scores` against `test`.

    Args:
        names: any of "most_popular", "item_knn", "als", "bpr".
        params: optional constructor keyword arguments per name, e.g. {"als": {"factors": 32}}.
    Returns:
        name -> the metrics of `evaluate_scores` plus `fit_seconds`.
    """
    params = dict(params or {})
    unknown = sorted((set(names) | set(params)) - set(BASELINES))
    if unknown:
        raise ValueError(f"run_baselines: unknown baseline name(s) {unknown}; choose from {sorted(BASELINES)}")
    out: dict[str, dict[str, float]] = {}
    for name in names:
        model = BASELINES[name](**dict(params.get(name, {}))).fit(train)
        metrics = evaluate_scores(model.scores, train, test, ks=ks, batch_users=batch_users)
        metrics["fit_seconds"] = model.fit_seconds
        out[name] = metrics
    return out


def evaluate_two_tower(model: TwoTower, data: RetrievalData, queries: QuerySet, ks: list[int],
                       device: torch.device | None = None) -> dict[str, float]:
    """Full-corpus ranking of the queries' users with the model's vectors; seen items excluded."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    items = embed(model.item, data.corpus, device)
    users = torch.zeros((data.n_users, items.shape[1]))
    users[torch.from_numpy(queries.users)] = embed(model.user, queries.batch, device)
    model.train(was_training)

    def scores(codes: np.ndarray) -> torch.Tensor:
        return users[torch.from_numpy(codes)] @ items.T

    return evaluate_scores(scores, queries.seen, queries.truth, ks=ks)
