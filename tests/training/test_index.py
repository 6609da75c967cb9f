"""Tests of training/index/ (config.py, faiss_index.py, build.py): exactness against numpy brute force, the
recall guard, exclusions, persistence."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from training.index.build import build_from_embeddings, build_index
from training.index.config import IndexConfig, IndexRecallError
from training.index.faiss_index import ItemIndex

N_ITEMS, DIM, N_CLUSTERS = 5000, 32, 50


def _cfg(**kwargs: Any) -> IndexConfig:
    """One faiss thread: OpenMP spin-waits make multi-threaded training crawl on a busy 2-core machine."""
    return IndexConfig(threads=1, **kwargs)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n_items: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit item vectors around cluster centres, raw ids that are not positions, and queries near the centres."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((N_CLUSTERS, DIM)))
    items = _unit(centres[rng.integers(0, N_CLUSTERS, n_items)] + 0.15 * rng.standard_normal((n_items, DIM)))
    queries = _unit(centres[rng.integers(0, N_CLUSTERS, n_queries)] + 0.2 * rng.standard_normal((n_queries, DIM)))
    ids = rng.permutation(10 * n_items)[:n_items].astype(np.int64) * 7 + 3
    return items, ids, queries


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _clustered(N_ITEMS, 300, seed=11)


@pytest.fixture(scope="module")
def flat(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> ItemIndex:
    items, ids, queries = data
    return build_index(items, ids, _cfg(type="flat"), queries)


def _brute_force(items: np.ndarray, ids: np.ndarray, queries: np.ndarray, n: int,
                 banned: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-n raw ids and scores; `banned` (queries x items bool) masks items out (padded with -1 / -inf)."""
    scores = queries.astype(np.float64) @ items.T.astype(np.float64)
    if banned is not None:
        scores[banned] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    best = np.take_along_axis(scores, top, axis=1)
    return np.where(np.isfinite(best), ids[top], -1), best


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(x, y)) / a.shape[1] for x, y in zip(a, b)]))


def test_exact_index_records_recall_one_and_equals_brute_force(flat: ItemIndex, data: tuple) -> None:
    items, ids, queries = data
    assert flat.type == "flat" and flat.n_items == N_ITEMS and flat.dim == DIM
    assert flat.recall["recall_at_k"] == 1.0 and flat.recall["k"] == 100 and flat.recall["queries"] == 300
    got_ids, got_scores = flat.search(queries, 20)
    want_ids, want_scores = _brute_force(items, ids, queries, 20)
    assert got_ids.dtype == np.int64 and got_scores.dtype == np.float32 and got_ids.shape == (300, 20)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)


@pytest.mark.parametrize("cfg", [_cfg(type="ivf_flat", nlist=64, nprobe=16),
                                 _cfg(type="hnsw", hnsw_m=16, ef_search=128),
                                 _cfg(type="ivf_pq", nlist=32, nprobe=16, pq_m=16, pq_bits=8,
                                      recall_floor=0.9)],
                         ids=["ivf_flat", "hnsw", "ivf_pq"])
def test_approximate_indexes_reach_the_floor_with_good_params(cfg: IndexConfig, data: tuple) -> None:
    items, ids, queries = data
    item = build_index(items, ids, cfg, queries)
    assert item.type == cfg.type
    assert cfg.recall_floor <= item.recall["recall_at_k"] < 1.0
    assert item.recall["worst_query"] <= item.recall["recall_at_k"]
    got, _ = item.search(queries, 100)
    want, _ = _brute_force(items, ids, queries, 100)
    # the guard's figure is the recall that search really delivers
    assert _overlap(got, want) == pytest.approx(item.recall["recall_at_k"], abs=2e-3)


@pytest.mark.parametrize("cfg", [_cfg(type="ivf_flat", nlist=256, nprobe=1),
                                 _cfg(type="ivf_pq", nlist=16, nprobe=4, pq_m=4, pq_bits=2)],
                         ids=["ivf_flat_nprobe1", "ivf_pq_2bits"])
def test_recall_guard_rejects_a_bad_index_with_the_figures(cfg: IndexConfig, data: tuple) -> None:
    items, ids, queries = data
    with pytest.raises(IndexRecallError) as err:
        build_index(items, ids, cfg, queries)
    msg = str(err.value)
    measured = float(re.search(r"recall@100 = ([0-9.]+) over 300 queries", msg).group(1))
    assert measured < 0.6
    assert "index.recall_floor = 0.95" in msg and f"'{cfg.type}'" in msg
    assert f"'nprobe': {cfg.nprobe}" in msg and "raise index.nprobe" in msg and "'flat'" in msg
    assert isinstance(err.value, ValueError)


def test_excluded_items_are_never_returned_and_rows_fill_with_the_next_best(flat: ItemIndex, data: tuple) -> None:
    items, ids, queries = data
    rng = np.random.default_rng(5)
    b, n = 40, 25
    q = queries[:b]
    exact_order = np.argsort(-(q @ items.T), axis=1)
    # per query: its own top 10 plus 15 random items; query 0 bans its top 3000 (forces a deeper re-search)
    exclude = [np.concatenate([ids[exact_order[i, :10]], rng.choice(ids, 15)]) for i in range(b)]
    exclude[0] = ids[exact_order[0, :3000]]
    exclude[1] = np.array([], dtype=np.int64)
    exclude[2] = np.array([-5, 10**12])  # ids outside the corpus are ignored
    exclude_all = np.concatenate([rng.choice(ids, 400, replace=False), [-1, 2]])
    banned = np.isin(ids[None, :], exclude_all).repeat(b, axis=0)
    for i, ex in enumerate(exclude):
        banned[i] |= np.isin(ids, ex)
    want_ids, want_scores = _brute_force(items, ids, q, n, banned)
    got_ids, got_scores = flat.search(q, n, exclude=exclude, exclude_all=exclude_all)
    assert (got_ids >= 0).all()
    assert not np.isin(got_ids, exclude_all).any()
    assert not any(np.isin(got_ids[i], exclude[i]).any() for i in range(b))
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    # an approximate index obeys the exclusions too and still fills every row
    hnsw = build_index(items, ids, _cfg(type="hnsw", hnsw_m=16), queries)
    h_ids, h_scores = hnsw.search(q, n, exclude=exclude, exclude_all=exclude_all)
    assert (h_ids >= 0).all() and np.isfinite(h_scores).all()
    assert not np.isin(h_ids, exclude_all).any()
    assert not any(np.isin(h_ids[i], exclude[i]).any() for i in range(b))
    assert _overlap(h_ids, want_ids) > 0.9


def test_rows_the_corpus_cannot_fill_are_padded_with_minus_one_and_minus_inf(data: tuple) -> None:
    items, ids, queries = data
    item = build_index(items[:50], ids[:50], _cfg(type="flat", recall_k=10), queries)
    exclude_all = ids[:40]
    got_ids, got_scores = item.search(queries[:3], 15, exclude=[ids[40:43], [], ids[40:50]],
                                      exclude_all=exclude_all)
    assert sorted(got_ids[0, :7]) == sorted(ids[43:50]) and (got_ids[0, 7:] == -1).all()
    assert sorted(got_ids[1, :10]) == sorted(ids[40:50]) and (got_ids[1, 10:] == -1).all()
    assert (got_ids[2] == -1).all() and np.isneginf(got_scores[2]).all()
    assert np.isneginf(got_scores[0, 7:]).all() and np.isfinite(got_scores[0, :7]).all()
    assert (np.diff(got_scores[1, :10]) <= 0).all()


@pytest.mark.parametrize("cfg", [_cfg(type="hnsw", hnsw_m=16),
                                 _cfg(type="ivf_pq", nlist=32, nprobe=8, pq_m=8, recall_floor=0.3)],
                         ids=["hnsw", "ivf_pq"])
def test_save_load_round_trip_returns_identical_results(cfg: IndexConfig, data: tuple, tmp_path: Path) -> None:
    items, ids, queries = data
    item = build_index(items, ids, cfg, queries)
    item.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["index.faiss", "index.json", "item_ids.npy"]
    back = ItemIndex.load(tmp_path / "idx")
    assert back.type == cfg.type and back.n_items == N_ITEMS and back.dim == DIM
    assert back.build_params == item.build_params and back.recall == item.recall
    excl = [ids[:5]] * 50
    a = item.search(queries[:50], 30, exclude=excl, exclude_all=ids[100:200])
    b = back.search(queries[:50], 30, exclude=excl, exclude_all=ids[100:200])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_load_names_the_missing_or_mismatched_file(flat: ItemIndex, tmp_path: Path) -> None:
    flat.save(tmp_path / "a")
    (tmp_path / "a" / "item_ids.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"item_ids\.npy: missing"):
        ItemIndex.load(tmp_path / "a")
    flat.save(tmp_path / "b")
    np.save(tmp_path / "b" / "item_ids.npy", flat.item_ids[:-1])
    with pytest.raises(ValueError, match=r"item_ids\.npy: expected 5000 int64 item ids"):
        ItemIndex.load(tmp_path / "b")


def test_auto_picks_exact_up_to_the_threshold_and_hnsw_above(data: tuple) -> None:
    items, ids, queries = data
    small = build_index(items[:2000], ids[:2000], _cfg(auto_exact_max=2000), queries[:50])
    large = build_index(items[:2001], ids[:2001], _cfg(auto_exact_max=2000, hnsw_m=8), queries[:50])
    assert small.type == "flat" and small.recall["recall_at_k"] == 1.0
    assert large.type == "hnsw" and large.build_params["requested"] == "auto"
    assert large.build_params["hnsw_m"] == 8 and large.index.ntotal == 2001


def test_bad_config_combinations_raise_naming_the_field(data: tuple) -> None:
    items, ids, queries = data
    for kwargs, field in [({"type": "flat", "nlist": 10}, "nlist"), ({"type": "hnsw", "pq_m": 4}, "pq_m"),
                          ({"type": "ivf_flat", "nlist": 8, "nprobe": 9}, "nprobe"),
                          ({"recall_floor": 0.0}, "recall_floor"), ({"recall_floor": 1.2}, "recall_floor"),
                          ({"pq_bits": 0}, "pq_bits"), ({"nprobes": 3}, "nprobes")]:
        with pytest.raises(ValidationError, match=field):
            _cfg(**kwargs)
    with pytest.raises(ValueError, match=r"index\.pq_m=5 must divide the embedding dimension 32"):
        build_index(items, ids, _cfg(type="ivf_pq", nlist=16, pq_m=5), queries)
    with pytest.raises(ValueError, match=r"index\.nlist=100 exceeds the number of items \(50\)"):
        build_index(items[:50], ids[:50], _cfg(type="ivf_flat", nlist=100), queries)
    with pytest.raises(ValueError, match="'item_ids' holds duplicates"):
        build_index(items[:10], np.zeros(10, np.int64), _cfg(type="flat"), queries)
    with pytest.raises(ValueError, match="'queries' has dimension 16 but the index has 32"):
        build_index(items, ids, _cfg(type="flat"), queries[:, :16])


def _embedding_column(x: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), x.shape[1])


def test_build_from_embeddings_reads_parquet_builds_and_saves(data: tuple, tmp_path: Path) -> None:
    items, ids, queries = data
    emb = tmp_path / "emb"
    emb.mkdir()
    pq.write_table(pa.table({"item_id": ids, "embedding": _embedding_column(items)}), emb / "item_embeddings.parquet")
    with pytest.raises(FileNotFoundError, match=r"query_embeddings\.parquet: not found.*recforge train retrieval"):
        build_from_embeddings(emb, _cfg(type="flat"), tmp_path / "out")
    pq.write_table(pa.table({"vector": _embedding_column(queries)}), emb / "query_embeddings.parquet")
    with pytest.raises(ValueError, match=r"query_embeddings\.parquet: missing column\(s\) \['embedding'\]"):
        build_from_embeddings(emb, _cfg(type="flat"), tmp_path / "out")
    pq.write_table(pa.table({"embedding": _embedding_column(queries)}), emb / "query_embeddings.parquet")
    item = build_from_embeddings(emb, _cfg(type="flat"), tmp_path / "out")
    assert item.recall["recall_at_k"] == 1.0 and item.recall["queries"] == 300
    back = ItemIndex.load(tmp_path / "out")
    np.testing.assert_array_equal(back.item_ids, ids)
    np.testing.assert_array_equal(back.search(queries[:5], 10)[0], _brute_force(items, ids, queries[:5], 10)[0])
