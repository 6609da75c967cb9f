"""Non-neural retrieval baselines on a users x items CSR matrix: most popular, item-KNN, implicit ALS and BPR.

Each baseline has the same two steps: `fit(train_csr) -> self`, then `scores(user_codes) -> B x n_items`
float32 numpy scores (higher is better), the shape `training.retrieval.evaluate.evaluate_scores` ranks. Fit time
is kept in `fit_seconds`. Hyper-parameters are validated by a small config object per baseline (`config`).
The matrix-factorisation baselines wrap the CPU models of the `implicit` package (imported inside `fit`);
they are seeded (`seed`), use as many threads as the process may run on, and keep BLAS single-threaded while
fitting, as `implicit` asks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from feature_store.config import StrictModel

__all__ = [
    "BASELINES",
    "ALSConfig",
    "BPRConfig",
    "ImplicitALS",
    "ImplicitBPR",
    "ItemKNN",
    "ItemKNNConfig",
    "MostPopular",
    "Recommender",
    "as_csr",
]


def as_csr(m: Any, name: str, fn: str) -> sp.csr_matrix:
    """`m` as a canonical float32 CSR copy: sorted indices, duplicates summed, explicit zeros dropped."""
    if not sp.issparse(m):
        raise ValueError(
            f"{fn}: '{name}' must be a scipy.sparse users x items matrix, got {type(m).__name__}; "
            "build it with Interactions.to_csr()"
        )
    out = sp.csr_matrix(m, dtype=np.float32, copy=True)
    out.sum_duplicates()
    out.eliminate_zeros()
    return out


def _binary(m: Any, fn: str) -> sp.csr_matrix:
    """`m` as a float32 CSR copy whose non-zeros are all 1."""
    out = as_csr(m, "train", fn)
    out.data[:] = 1.0
    return out


def _threads() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Recommender(Protocol):
    """What `evaluate_scores` and `run_baselines` need of a baseline."""

    fit_seconds: float

    def fit(self, train: sp.spmatrix) -> Recommender: ...

    def scores(self, users: np.ndarray) -> np.ndarray: ...


class _Baseline:
    """Shared bookkeeping: catalogue sizes after fit, user-code checks, fit time."""

    name = "baseline"

    def __init__(self) -> None:
        self.n_users = 0
        self.n_items = 0
        self.fit_seconds = 0.0
        self._fitted = False

    def fit(self, train: sp.spmatrix) -> _Baseline:
        raise NotImplementedError

    def scores(self, users: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _start_fit(self, train: sp.spmatrix) -> None:
        self.n_users, self.n_items = train.shape
        self._fitted = True

    def _users(self, users: np.ndarray) -> np.ndarray:
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__}.scores: call fit(train_csr) first")
        u = np.asarray(users).reshape(-1)
        if not np.issubdtype(u.dtype, np.integer):
            raise ValueError(f"{type(self).__name__}.scores: user codes must be integers, got dtype {u.dtype}")
        u = u.astype(np.int64, copy=False)
        if u.size and (u.min() < 0 or u.max() >= self.n_users):
            raise ValueError(
                f"{type(self).__name__}.scores: user codes must lie in 0..{self.n_users - 1} (the rows of the "
                f"train matrix), got {int(u.min())}..{int(u.max())}"
            )
        return u


# ---------------------------------------------------------------------------------------- most popular
class MostPopular(_Baseline):
    """Every user gets the same ranking: items by their train interaction count (column sums of train).

    With a binary matrix (`Interactions.to_csr()`) the count is the number of users who interacted.
    """

    name = "most_popular"

    def __init__(self) -> None:
        super().__init__()
        self.popularity = np.zeros(0, dtype=np.float32)

    def fit(self, train: sp.spmatrix) -> MostPopular:
        t0 = time.perf_counter()
        x = as_csr(train, "train", "MostPopular.fit")
        self._start_fit(x)
        self.popularity = np.bincount(x.indices, weights=x.data, minlength=self.n_items).astype(np.float32)
        self.fit_seconds = time.perf_counter() - t0
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        u = self._users(users)
        return np.tile(self.popularity, (u.size, 1))


# ---------------------------------------------------------------------------------------- item KNN
class ItemKNNConfig(StrictModel):
    """Item-KNN: `neighbours` most similar items kept per item (None keeps all)."""

    neighbours: int | None = Field(200, gt=0)


def _top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of each CSR row (ties: lower column first); one lexsort, no row loop."""
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data, rows))  # by row, then value descending, then column
    rank = np.arange(order.size, dtype=np.int64) - m.indptr[rows[order]]
    keep = np.sort(order[rank < k])
    out = sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)
    out.sort_indices()
    return out


class ItemKNN(_Baseline):
    """Item-based nearest neighbours on the binarised train matrix X (users x items).

    similarity(i, j) = |users of i and j| / sqrt(|users of i| * |users of j|) (cosine), self-similarity 0;
    for each item j only its `neighbours` most similar items i are kept. score(u, j) = sum of
    similarity(i, j) over the items i of user u: one sparse product X[users] @ S. The item x item
    co-occurrence X^T X is built once in `fit` (sparse; its size grows with catalogue density).
    """

    name = "item_knn"

    def __init__(self, neighbours: int | None = 200) -> None:
        super().__init__()
        self.config = ItemKNNConfig(neighbours=neighbours)
        self.similarity = sp.csr_matrix((0, 0), dtype=np.float32)
        self._train = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, train: sp.spmatrix) -> ItemKNN:
        t0 = time.perf_counter()
        x = _binary(train, "ItemKNN.fit")
        self._start_fit(x)
        co = (x.T @ x).tocsr()  # items x items co-occurrence counts
        co.sort_indices()
        norm = np.sqrt(np.bincount(x.indices, minlength=self.n_items)).astype(np.float32)
        rows = np.repeat(np.arange(self.n_items, dtype=np.int64), np.diff(co.indptr))
        co.data = co.data / (norm[rows] * norm[co.indices])
        co.data[rows == co.indices] = 0.0
        co.eliminate_zeros()
        if self.config.neighbours is not None:
            co = _top_per_row(co, self.config.neighbours)  # row j: the neighbours of item j
        self.similarity = co.T.tocsr().astype(np.float32)  # column j: the neighbours of item j
        self._train = x
        self.fit_seconds = time.perf_counter() - t0
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        u = self._users(users)
        return np.asarray((self._train[u] @ self.similarity).toarray(), dtype=np.float32)


# ---------------------------------------------------------------------------------------- implicit MF
class ALSConfig(StrictModel):
    """implicit's ALS: confidence of an observed pair = alpha * value (1 for a binary matrix)."""

    factors: int = Field(64, gt=0)
    regularization: float = Field(0.05, ge=0)
    iterations: int = Field(15, gt=0)
    alpha: float = Field(10.0, gt=0)
    seed: int = 0
    num_threads: int | None = Field(None, gt=0, description="None: every core this process may use")


class BPRConfig(StrictModel):
    """implicit's BPR (SGD on sampled (user, positive, negative) triples; negatives checked to be unseen)."""

    factors: int = Field(64, gt=0)
    learning_rate: float = Field(0.05, gt=0)
    regularization: float = Field(0.01, ge=0)
    iterations: int = Field(100, gt=0)
    seed: int = 0
    num_threads: int | None = Field(None, gt=0, description="None: every core this process may use")


class _FactorModel(_Baseline):
    """A fitted user x factor and item x factor pair; score = dot product."""

    config: Any  # the subclass's config; its `num_threads` (None = all usable cores) sizes the fit

    def __init__(self) -> None:
        super().__init__()
        self.user_factors = np.zeros((0, 0), dtype=np.float32)
        self.item_factors = np.zeros((0, 0), dtype=np.float32)

    def _fit_implicit(self, x: sp.csr_matrix, make_model: Callable[[int], Any]) -> None:
        """Fit the implicit model `make_model(num_threads)` on `x` with BLAS held to one thread; keeps the
        factors and the fit time."""
        from threadpoolctl import threadpool_limits

        t0 = time.perf_counter()
        self._start_fit(x)
        with threadpool_limits(1, "blas"):
            model = make_model(self.config.num_threads or _threads())
            model.fit(x, show_progress=False)  # implicit >= 0.5: the user x item matrix
        self.user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self.fit_seconds = time.perf_counter() - t0

    def scores(self, users: np.ndarray) -> np.ndarray:
        u = self._users(users)
        return self.user_factors[u] @ self.item_factors.T


class ImplicitALS(_FactorModel):
    """Weighted matrix factorisation by alternating least squares (Hu, Koren, Volinsky 2008), implicit's CPU model.

    The train matrix is used as given: binary from `Interactions.to_csr()`, or counts/weights for more
    confidence in repeated pairs. Deterministic for a seed (each user/item solve is independent).
    """

    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        iterations: int = 15,
        alpha: float = 10.0,
        seed: int = 0,
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.config = ALSConfig(
            factors=factors, regularization=regularization, iterations=iterations, alpha=alpha, seed=seed,
            num_threads=num_threads,
        )

    def fit(self, train: sp.spmatrix) -> ImplicitALS:
        from implicit.cpu.als import AlternatingLeastSquares

        c = self.config
        self._fit_implicit(as_csr(train, "train", "ImplicitALS.fit"), lambda threads: AlternatingLeastSquares(
            factors=c.factors, regularization=c.regularization, alpha=c.alpha, iterations=c.iterations,
            random_state=c.seed, num_threads=threads))
        return self


class ImplicitBPR(_FactorModel):
    """Bayesian personalised ranking (Rendle et al. 2009), implicit's CPU model, on the binarised matrix.

    The item factors carry a bias column (the user side holds a constant 1 there), so the dot product is the
    model's score. Seeded; with several threads the SGD updates race (Hogwild), so exact figures may vary.
    """

    name = "bpr"

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.05,
        regularization: float = 0.01,
        iterations: int = 100,
        seed: int = 0,
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.config = BPRConfig(
            factors=factors, learning_rate=learning_rate, regularization=regularization, iterations=iterations,
            seed=seed, num_threads=num_threads,
        )

    def fit(self, train: sp.spmatrix) -> ImplicitBPR:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        c = self.config
        self._fit_implicit(_binary(train, "ImplicitBPR.fit"), lambda threads: BayesianPersonalizedRanking(
            factors=c.factors, learning_rate=c.learning_rate, regularization=c.regularization,
            iterations=c.iterations, random_state=c.seed, num_threads=threads, verify_negative_samples=True))
        return self


BASELINES: dict[str, type[_Baseline]] = {
    "most_popular": MostPopular,
    "item_knn": ItemKNN,
    "als": ImplicitALS,
    "bpr": ImplicitBPR,
}
