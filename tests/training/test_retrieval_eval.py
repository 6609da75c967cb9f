"""Tests of training/retrieval/evaluate.py and training/retrieval/baselines.py: metrics, split, masking, baselines."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from tests.conftest import dataset
from training.common.topk_metrics import ranking_metrics
from training.retrieval.baselines import ImplicitALS, ImplicitBPR, ItemKNN, MostPopular
from training.retrieval.data import latest_mask
from training.retrieval.evaluate import evaluate_scores, run_baselines, top_k


@dataclass(frozen=True)
class Interactions:
    """(user, item, time) rows on dense codes, as the tests build them; `to_csr` is the binary matrix."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    n_users: int
    n_items: int

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, rows: np.ndarray) -> Interactions:
        return Interactions(self.user[rows], self.item[rows], self.ts[rows], self.n_users, self.n_items)

    def to_csr(self) -> sp.csr_matrix:
        m = sp.csr_matrix((np.ones(len(self), np.float32), (self.user, self.item)), shape=(self.n_users, self.n_items))
        m.data[:] = 1.0
        return m


def per_user_time_split(inter: Interactions, test_fraction: float, min_train: int = 1,
                        ) -> tuple[Interactions, Interactions]:
    is_test = latest_mask(inter.user, inter.ts, test_fraction, min_train)
    return inter.subset(~is_test), inter.subset(is_test)


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """A binary users x items matrix from per-user item lists."""
    user = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    item = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if user.size else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(user.size, np.float32), (user, item)), shape=(len(rows), n_items))


# ---------------------------------------------------------------------------------------- metrics
def test_ranking_metrics_equal_hand_computed_values_on_a_tiny_ranking() -> None:
    topk = np.array([
        [3, 1, 7, 5],  # truth {1, 5, 9}: hits at ranks 2 and 4
        [2, 4, 6, 8],  # truth {2}: hit at rank 1
        [0, 1, 2, 3],  # no truth: not evaluated
        [0, 1, 2, 3],  # truth {9}: no hit
    ])
    truth = _csr([[1, 5, 9], [2], [], [9]], n_items=10)
    m = ranking_metrics(topk, truth, ks=(2, 4))

    d2, d3, d5 = 1 / math.log2(3), 1 / math.log2(4), 1 / math.log2(5)  # discounts at ranks 2, 3, 4
    assert m["n_users"] == 3 and m["n_users_skipped"] == 1
    assert m["recall@2"] == pytest.approx((1 / 3 + 1 + 0) / 3)  # 4/9
    assert m["recall@4"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # 5/9
    assert m["ndcg@2"] == pytest.approx((d2 / (1 + d2) + 1 + 0) / 3)  # 0.462284
    assert m["ndcg@4"] == pytest.approx(((d2 + d5) / (1 + d2 + d3) + 1 + 0) / 3)  # 0.499397
    assert m["ndcg@2"] == pytest.approx(0.462284, abs=1e-6)
    assert m["ndcg@4"] == pytest.approx(0.499397, abs=1e-6)
    assert m["hit_rate@2"] == pytest.approx(2 / 3)
    assert m["hit_rate@4"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_evaluate_scores_reaches_perfect_metrics_for_an_oracle_and_counts_users() -> None:
    train = _csr([[0, 1], [2], [3], [4]], n_items=8)
    test = _csr([[5], [6, 7], [], [0]], n_items=8)
    oracle = test.toarray()
    m = evaluate_scores(lambda u: oracle[u].astype(np.float32), train, test, ks=(1, 2), batch_users=2)
    assert m["users"] == 3  # user 2 has no test item
    assert m["recall@2"] == pytest.approx(1.0)
    assert m["recall@1"] == pytest.approx((1 + 0.5 + 1) / 3)  # user 1 has two test items, one fits in K=1
    assert m["ndcg@2"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx(1.0)
    assert m["seconds"] >= 0
    as_tensor = evaluate_scores(lambda u: torch.from_numpy(oracle[u]).to(torch.bfloat16), train, test, ks=(1, 2))
    assert as_tensor["recall@1"] == pytest.approx(m["recall@1"]) and as_tensor["ndcg@2"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- split
def test_time_split_holds_out_each_users_latest_interactions_with_input_order_breaking_ties() -> None:
    user = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2])
    ts = np.array([50, 10, 40, 20, 30, 1, 2, 3, 4, 5, 6, 7, 9, 9, 8, 100])
    item = np.arange(user.size)
    inter = Interactions(user, item, ts, n_users=3, n_items=user.size)
    train, test = per_user_time_split(inter, test_fraction=0.3)
    # user 0: ceil(0.3 * 5) = 2 test (ts 50, 40); user 1: ceil(0.3 * 10) = 3 test (the two ts=9 and ts=8);
    # user 2 has one interaction, fewer than min_train + 1 = 2: all train
    assert sorted(test.item.tolist()) == [0, 2, 12, 13, 14]
    assert sorted(train.item.tolist()) == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 15]
    assert len(train) + len(test) == len(inter)

    # a tie at the boundary goes by input position: the later row is the later event
    tie = Interactions(np.zeros(4, np.int64), np.arange(4), np.array([1, 5, 5, 0]), 1, 4)
    _, tie_test = per_user_time_split(tie, test_fraction=0.25)
    assert tie_test.item.tolist() == [2]


def test_time_split_never_puts_a_test_interaction_before_that_users_train_ones() -> None:
    rng = np.random.default_rng(0)
    n_users, n = 300, 20_000
    user = rng.integers(0, n_users, n)
    ts = rng.integers(0, 1_000, n)  # many ties
    inter = Interactions(user, rng.integers(0, 500, n), ts, n_users, 500)
    train, test = per_user_time_split(inter, test_fraction=0.2, min_train=3)
    last_train = np.full(n_users, -1)
    np.maximum.at(last_train, train.user, train.ts)
    first_test = np.full(n_users, np.iinfo(np.int64).max)
    np.minimum.at(first_test, test.user, test.ts)
    has_test = np.bincount(test.user, minlength=n_users) > 0
    assert np.all(first_test[has_test] >= last_train[has_test])
    counts = np.bincount(user, minlength=n_users)
    expected = np.where(counts >= 4, np.minimum(np.ceil(0.2 * counts - 1e-9), counts - 3), 0)
    assert np.array_equal(np.bincount(test.user, minlength=n_users), expected)


# ---------------------------------------------------------------------------------------- masking
def test_seen_in_train_items_never_appear_in_the_evaluated_top_k() -> None:
    rng = np.random.default_rng(1)
    n_users, n_items = 40, 30
    train = sp.random(n_users, n_items, density=0.3, format="csr", random_state=2, dtype=np.float32)
    train.data[:] = 1
    dense_train = train.toarray() > 0

    def train_first(u: np.ndarray) -> np.ndarray:  # a model that loves the items already seen
        return (dense_train[u] * 100 + rng.random((u.size, n_items))).astype(np.float32)

    ranked = top_k(train_first, np.arange(n_users), k=n_items, train=train, batch_users=7)
    valid = ranked >= 0
    rows = np.repeat(np.arange(n_users)[:, None], n_items, axis=1)
    assert not dense_train[rows[valid], ranked[valid]].any()
    assert np.array_equal(valid.sum(axis=1), n_items - dense_train.sum(axis=1))  # the rest is padding (-1)

    # a user that meets a train item again in test: masked, it cannot count as a hit even when K exceeds the
    # number of unseen items (items 8 and 9 are left, item 0 is both seen and in test)
    seen = _csr([list(range(8))], 10)
    again = _csr([[0, 9]], 10)
    m = evaluate_scores(lambda u: np.tile(np.arange(10, 0, -1, dtype=np.float32), (u.size, 1)), seen, again, ks=(5,))
    assert m["recall@5"] == pytest.approx(0.5)
    unmasked = evaluate_scores(
        lambda u: np.tile(np.arange(10, 0, -1, dtype=np.float32), (u.size, 1)), seen, again, ks=(5,),
        exclude_train=False,
    )
    assert unmasked["recall@5"] == pytest.approx(0.5)  # item 0 at rank 1, item 9 at rank 10 > 5
    assert unmasked["mrr"] == pytest.approx(1.0) and m["mrr"] == pytest.approx(1 / 2)  # 9 is second after 8


# ---------------------------------------------------------------------------------------- baselines
def test_most_popular_ranks_items_by_train_counts() -> None:
    train = _csr([[3, 1, 4, 0], [3, 1, 4], [3, 1], [3]], n_items=5)
    model = MostPopular().fit(train)
    s = model.scores(np.array([0, 3]))
    assert s.shape == (2, 5) and s.dtype == np.float32
    assert s[0].tolist() == [1, 3, 0, 4, 2]
    assert np.argsort(-s[1], kind="stable").tolist() == [3, 1, 4, 0, 2]


def test_item_knn_scores_the_most_co_consumed_item_first_and_prunes_neighbours() -> None:
    # users 0-2 took items {0, 1}; user 3 {0, 2}; user 4 {2, 3}; user 5 only item 0
    train = _csr([[0, 1], [0, 1], [0, 1], [0, 2], [2, 3], [0]], n_items=4)
    s = ItemKNN(neighbours=None).fit(train).scores(np.array([5]))[0]
    # item 0 has 5 users, item 1 has 3, item 2 has 2, item 3 has 1; cosine: sim(0, 1) = 3 / sqrt(5 * 3),
    # sim(0, 2) = 1 / sqrt(5 * 2), sim(0, 3) = 0, self-similarity 0
    assert s.tolist() == pytest.approx([0.0, 3 / math.sqrt(15), 1 / math.sqrt(10), 0.0])
    assert int(np.argmax(s)) == 1
    # one neighbour per item: item 2's nearest is item 3 (1 / sqrt(2) > 1 / sqrt(10)), so item 0 no longer
    # votes for item 2
    s1 = ItemKNN(neighbours=1).fit(train).scores(np.array([5]))[0]
    assert s1.tolist() == pytest.approx([0.0, 3 / math.sqrt(15), 0.0, 0.0])


def _planted_blocks(seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """120 users, 60 items in 4 groups of 15; each user takes 8 random items of its own group only."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n_groups, per_user = 120, 60, 4, 8
    group = np.arange(n_users) % n_groups
    offsets = np.argsort(rng.random((n_users, n_items // n_groups)), axis=1)[:, :per_user]
    item = (group[:, None] * (n_items // n_groups) + offsets).reshape(-1)
    user = np.repeat(np.arange(n_users), per_user)
    inter = Interactions(user, item, rng.integers(0, 10_000, user.size), n_users, n_items)
    train, test = per_user_time_split(inter, test_fraction=0.25)  # 6 train, 2 test items per user
    return train.to_csr(), test.to_csr()


def test_als_and_bpr_beat_random_on_a_planted_block_structure() -> None:
    train, test = _planted_blocks()
    rng = np.random.default_rng(3)
    random = evaluate_scores(lambda u: rng.random((u.size, 60), dtype=np.float32), train, test, ks=(10,))
    # the reference: 10 of the 54 unseen items drawn at random find 10/54 = 0.185 of the test items on average
    assert 0.1 < random["recall@10"] < 0.3, random
    als = ImplicitALS(factors=8, iterations=10, num_threads=1).fit(train)
    bpr = ImplicitBPR(factors=8, iterations=100, num_threads=1).fit(train)
    m_als = evaluate_scores(als.scores, train, test, ks=(10,))
    m_bpr = evaluate_scores(bpr.scores, train, test, ks=(10,))
    # each user has 9 unseen items of its own group: a model that learned the groups ranks them first
    assert m_als["recall@10"] > max(0.9, 3 * random["recall@10"]), (m_als, random)
    assert m_bpr["recall@10"] > max(0.9, 3 * random["recall@10"]), (m_bpr, random)
    assert als.fit_seconds > 0 and bpr.fit_seconds > 0
    assert als.item_factors.shape == (60, 8)


def test_run_baselines_rejects_an_unknown_name_listing_the_known_ones() -> None:
    train, test = _planted_blocks()
    with pytest.raises(ValueError, match=r"unknown baseline name\(s\) \['knn'\]; choose from .*'item_knn'"):
        run_baselines(train, test, names=("knn",))


@pytest.mark.slow
def test_item_knn_and_als_beat_most_popular_on_movielens_100k() -> None:
    raw = np.loadtxt(dataset("ml-100k") / "u.data", dtype=np.int64)  # user item rating ts
    raw = raw[raw[:, 2] >= 4]
    _, user = np.unique(raw[:, 0], return_inverse=True)
    _, item = np.unique(raw[:, 1], return_inverse=True)
    inter = Interactions(user, item, raw[:, 3], int(user.max()) + 1, int(item.max()) + 1)
    train, test = per_user_time_split(inter, test_fraction=0.2)
    res = run_baselines(train.to_csr(), test.to_csr(), ks=(10, 20, 50, 100), names=("most_popular", "item_knn", "als"))
    table = {name: {k: round(v, 4) for k, v in m.items() if k in ("recall@20", "ndcg@10", "fit_seconds")}
             for name, m in res.items()}
    assert res["most_popular"]["users"] == 942, table
    pop = res["most_popular"]["recall@20"]
    assert res["item_knn"]["recall@20"] > pop, table
    assert res["als"]["recall@20"] > pop, table
