"""Retrieval evaluation protocol: interactions on dense codes, the per-user time split and full-corpus scoring.

Everything works on dense integer codes: users 0..U-1 and items 0..I-1 (the caller maps raw ids to codes,
e.g. with `np.unique(raw, return_inverse=True)`). The protocol:

1. `per_user_time_split` holds out each user's chronologically latest interactions as test;
2. `evaluate_scores` asks a score function for every item of the catalogue for each user with test items
   (in user batches), masks the items the user saw in train, takes the top K_max and scores it with
   `ranking_metrics` (the single implementation in `training.common.metrics`, re-exported here);
3. `run_baselines` fits the baselines of `training.retrieval.baselines` (re-exported here) and scores them
   the same way, so a learned model (the two-tower) and the baselines meet identical users, items and masks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from training.common.metrics import ranking_metrics
from training.retrieval.baselines import (
    BASELINES,
    ImplicitALS,
    ImplicitBPR,
    ItemKNN,
    MostPopular,
    as_csr,
)

__all__ = [
    "BASELINES",
    "ImplicitALS",
    "ImplicitBPR",
    "Interactions",
    "ItemKNN",
    "MostPopular",
    "ScoreFn",
    "evaluate_scores",
    "per_user_time_split",
    "ranking_metrics",
    "run_baselines",
    "top_k",
]

ScoreFn = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]
DEFAULT_KS: tuple[int, ...] = (10, 20, 50, 100)


# ---------------------------------------------------------------------------------------- interactions
@dataclass(frozen=True)
class Interactions:
    """One row per (user, item, time) event, on dense codes; arrays are int64 and of equal length.

    Args:
        user: user codes in 0..n_users-1.
        item: item codes in 0..n_items-1.
        ts: event times (any int64 clock, e.g. unix seconds); only their order is used.
        n_users, n_items: sizes of the code spaces (users/items without events are allowed).
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    n_users: int
    n_items: int

    def __post_init__(self) -> None:
        n = np.shape(self.user)[0] if np.ndim(self.user) == 1 else -1
        for name, bound in (("user", self.n_users), ("item", self.n_items), ("ts", None)):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 1 or arr.shape[0] != n:
                raise ValueError(
                    f"Interactions: '{name}' must be a 1-D array as long as 'user' ({n}), got shape {arr.shape}"
                )
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(
                    f"Interactions: '{name}' must hold integers, got dtype {arr.dtype}; map raw ids to dense "
                    "codes first (np.unique(raw, return_inverse=True)) and times to int64"
                )
            arr = arr.astype(np.int64, copy=False)
            if bound is not None and arr.size:
                bad = np.flatnonzero((arr < 0) | (arr >= bound))
                if bad.size:
                    raise ValueError(
                        f"Interactions: '{name}' codes must lie in 0..{bound - 1} (n_{name}s={bound}), found "
                        f"{arr[bad[0]]} at index {bad[0]}; raise n_{name}s or re-map the ids to dense codes"
                    )
            object.__setattr__(self, name, arr)
        if self.n_users < 0 or self.n_items < 0:
            raise ValueError(f"Interactions: n_users ({self.n_users}) and n_items ({self.n_items}) must be >= 0")

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def subset(self, rows: np.ndarray) -> Interactions:
        """The interactions selected by a boolean mask or an index array, same code spaces, same order."""
        return Interactions(self.user[rows], self.item[rows], self.ts[rows], self.n_users, self.n_items)

    def to_csr(self, weights: np.ndarray | None = None) -> sp.csr_matrix:
        """The n_users x n_items float32 CSR matrix of these interactions, column indices sorted.

        Without `weights` the matrix is BINARY: a (user, item) pair seen several times is stored once as 1.
        With `weights` (one float per interaction) repeated pairs are SUMMED.
        """
        if weights is None:
            data = np.ones(len(self), dtype=np.float32)
        else:
            data = np.asarray(weights, dtype=np.float32).reshape(-1)
            if data.shape[0] != len(self):
                raise ValueError(
                    f"Interactions.to_csr: 'weights' has {data.shape[0]} values for {len(self)} interactions; "
                    "give one weight per interaction"
                )
        m = sp.coo_matrix((data, (self.user, self.item)), shape=(self.n_users, self.n_items)).tocsr()
        m.sum_duplicates()
        if weights is None:
            m.data[:] = 1.0
        return m


# ---------------------------------------------------------------------------------------- split
def latest_mask(user: np.ndarray, ts: np.ndarray, fraction: float, min_train: int = 1) -> np.ndarray:
    """Boolean mask of each user's chronologically latest ceil(fraction * n_u) rows.

    Capped so that at least `min_train` of a user's rows stay unmasked (a user with fewer than min_train + 1
    rows is never masked). Equal times are ordered by input position (the later row counts as later). `user`
    holds non-negative integer codes. One lexsort and cumulative counts, no loop over users.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"per_user_time_split: test_fraction must lie in (0, 1), got {fraction}")
    if min_train < 0:
        raise ValueError(f"per_user_time_split: min_train must be >= 0, got {min_train}")
    n = len(user)
    position = np.arange(n, dtype=np.int64)
    order = np.lexsort((position, ts, user))  # by user, then time, then input position
    counts = np.bincount(user, minlength=int(user.max()) + 1 if n else 0).astype(np.int64)
    starts = np.cumsum(counts) - counts
    user_sorted = user[order]
    rank = position - starts[user_sorted]  # 0 = the user's oldest interaction
    # ceil with a small tolerance: 0.1 * 30 is 3.0000000000000004 in floating point and must give 3
    n_test = np.ceil(fraction * counts - 1e-9).astype(np.int64)
    n_test = np.clip(np.minimum(n_test, counts - min_train), 0, None)
    mask = np.empty(n, dtype=bool)
    mask[order] = rank >= (counts - n_test)[user_sorted]
    return mask


def per_user_time_split(
    inter: Interactions, test_fraction: float = 0.2, min_train: int = 1
) -> tuple[Interactions, Interactions]:
    """Hold out each user's chronologically latest interactions (`latest_mask`): returns (train, test), both in
    the input's row order."""
    is_test = latest_mask(inter.user, inter.ts, test_fraction, min_train)
    return inter.subset(~is_test), inter.subset(is_test)


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
