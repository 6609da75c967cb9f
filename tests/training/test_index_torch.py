"""Tests of the torch exact index (`index.type: torch_exact`) on CPU: equal to FAISS flat, exclusions, chunked scans,
persistence, the recall guard, and a process in which faiss cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from training.index.build import build_index
from training.index.config import IndexConfig
from training.index.faiss_index import ItemIndex
from training.index.torch_exact import TorchExactIndex

REPO = Path(__file__).resolve().parents[2]
N_ITEMS, DIM, N_QUERIES = 3000, 32, 200


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random unit item vectors, raw ids that are not positions, and random unit queries."""
    rng = np.random.default_rng(7)
    items = _unit(rng.standard_normal((N_ITEMS, DIM)))
    queries = _unit(rng.standard_normal((N_QUERIES, DIM)))
    ids = rng.permutation(20 * N_ITEMS)[:N_ITEMS].astype(np.int64) * 3 + 11
    return items, ids, queries


def _torch_cfg(**kwargs: Any) -> IndexConfig:
    return IndexConfig(type="torch_exact", device="cpu", **kwargs)


def _exclusions(ids: np.ndarray, items: np.ndarray, queries: np.ndarray, seed: int
                ) -> tuple[list[np.ndarray], np.ndarray]:
    """Per query: its own exact top 8 plus 20 random items (query 3: all but 5 items; query 4: none; query 5: ids
    outside the corpus); for all queries: 300 random items plus ids outside the corpus."""
    rng = np.random.default_rng(seed)
    top = np.argsort(-(queries @ items.T), axis=1)[:, :8]
    exclude = [np.concatenate([ids[top[i]], rng.choice(ids, 20)]) for i in range(len(queries))]
    exclude[3] = ids[5:]
    exclude[4] = np.array([], dtype=np.int64)
    exclude[5] = np.array([-7, 10**13])
    exclude_all = np.concatenate([rng.choice(ids[5:], 300, replace=False), [-1, 4]])
    return exclude, exclude_all


def _assert_same_results(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray],
                         items: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> None:
    """Same ids in the same order and scores within 1e-5, except where two items' exact (float64) scores differ by
    less than float32 can resolve (1e-6): such ties may be ordered either way, and they are rare (< 0.1%)."""
    (got_ids, got_scores), (want_ids, want_scores) = got, want
    assert got_ids.shape == want_ids.shape and got_ids.dtype == np.int64 and got_scores.dtype == np.float32
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    rows, cols = np.nonzero(got_ids != want_ids)
    assert len(rows) <= 0.001 * got_ids.size, f"{len(rows)} of {got_ids.size} ids differ"
    pos = np.argsort(ids)
    at = lambda raw: pos[np.searchsorted(ids[pos], raw)]  # noqa: E731 - raw id -> position
    a, b = got_ids[rows, cols], want_ids[rows, cols]
    assert (a >= 0).all() and (b >= 0).all(), "one side padded where the other found an item"
    exact = lambda p: np.einsum("ij,ij->i", queries[rows].astype(np.float64), items[p].astype(np.float64))  # noqa: E731
    np.testing.assert_allclose(exact(at(a)), exact(at(b)), atol=1e-6)


def _brute_force(items: np.ndarray, ids: np.ndarray, queries: np.ndarray, n: int,
                 exclude: list[np.ndarray] | None = None, exclude_all: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ items.T.astype(np.float64)
    if exclude_all is not None:
        scores[:, np.isin(ids, exclude_all)] = -np.inf
    for i, ex in enumerate(exclude or []):
        scores[i, np.isin(ids, ex)] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    best = np.take_along_axis(scores, top, axis=1)
    return np.where(np.isfinite(best), ids[top], -1), best


@pytest.mark.parametrize(("chunk_items", "query_batch", "n"), [(97, 64, 20), (777, 1000, 150), (10**6, 33, 100)],
                         ids=["chunks_smaller_than_n", "uneven_chunks", "one_chunk"])
def test_torch_exact_equals_faiss_flat_including_exclusions(data: tuple, chunk_items: int, query_batch: int,
                                                            n: int) -> None:
    pytest.importorskip("faiss")
    items, ids, queries = data
    flat = build_index(items, ids, IndexConfig(type="flat", threads=1), queries)
    exact = build_index(items, ids, _torch_cfg(chunk_items=chunk_items, query_batch=query_batch), queries)
    assert exact.type == "torch_exact" and exact.device == "cpu" and exact.index.ntotal == N_ITEMS
    got = exact.search(queries, n)
    assert got[0].shape == (N_QUERIES, n) and (got[0] >= 0).all()
    _assert_same_results(got, flat.search(queries, n), items, ids, queries)
    exclude, exclude_all = _exclusions(ids, items, queries, seed=chunk_items)
    got = exact.search(queries, n, exclude=exclude, exclude_all=exclude_all)
    _assert_same_results(got, flat.search(queries, n, exclude=exclude, exclude_all=exclude_all), items, ids, queries)
    assert (got[0][3, :5] >= 0).all() and (got[0][3, 5:] == -1).all()  # only 5 items left for query 3
    assert not np.isin(got[0][got[0] >= 0], exclude_all).any()  # -1 is padding (and an excluded id)


def test_excluded_ids_are_never_returned_and_short_rows_are_padded(data: tuple) -> None:
    items, ids, queries = data
    exact = build_index(items, ids, _torch_cfg(chunk_items=500, query_batch=50), queries)
    exclude, exclude_all = _exclusions(ids, items, queries, seed=3)
    got_ids, got_scores = exact.search(queries, 40, exclude=exclude, exclude_all=exclude_all)
    assert not np.isin(got_ids[got_ids >= 0], exclude_all).any()  # -1 is padding (and an excluded id)
    assert not any(np.isin(got_ids[i], exclude[i]).any() for i in range(N_QUERIES))
    want = _brute_force(items, ids, queries, 40, exclude, exclude_all)
    _assert_same_results((got_ids, got_scores), (want[0], want[1].astype(np.float32)), items, ids, queries)
    assert sorted(got_ids[3, :5]) == sorted(ids[:5]) and np.isneginf(got_scores[3, 5:]).all()
    assert (got_ids[np.arange(N_QUERIES) != 3] >= 0).all()
    # a corpus smaller than n: every item once, then padding
    small = build_index(items[:12], ids[:12], _torch_cfg(chunk_items=5, recall_k=10), queries)
    s_ids, s_scores = small.search(queries[:2], 20, exclude=[ids[:2], []])
    assert sorted(s_ids[0, :10]) == sorted(ids[2:12]) and (s_ids[0, 10:] == -1).all()
    assert sorted(s_ids[1, :12]) == sorted(ids[:12]) and (s_ids[1, 12:] == -1).all()
    assert (np.diff(s_scores[1, :12]) <= 0).all() and np.isneginf(s_scores[1, 12:]).all()


def test_recall_guard_records_recall_one_for_torch_exact(data: tuple) -> None:
    items, ids, queries = data
    exact = build_index(items, ids, _torch_cfg(chunk_items=256, recall_k=50, recall_queries=150), queries)
    assert exact.recall["recall_at_k"] == 1.0 and exact.recall["worst_query"] == 1.0
    assert exact.recall["k"] == 50 and exact.recall["queries"] == 150 and exact.recall["floor"] == 0.95
    assert set(exact.timings) == {"train", "add", "check", "total"} and exact.timings["train"] == 0.0


def test_save_load_round_trip_is_identical(data: tuple, tmp_path: Path) -> None:
    items, ids, queries = data
    exact = build_index(items, ids, _torch_cfg(chunk_items=640, query_batch=70), queries)
    exact.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["index.json", "item_ids.npy", "vectors.npy"]
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["type"] == "torch_exact" and meta["torch_version"] == torch.__version__ and "faiss_version" not in meta
    back = ItemIndex.load(tmp_path / "idx")
    assert back.type == "torch_exact" and back.n_items == N_ITEMS and back.dim == DIM and back.device == "cpu"
    assert back.build_params == exact.build_params and back.recall == exact.recall
    assert back.index.chunk_items == 640 and back.index.query_batch == 70
    exclude, exclude_all = _exclusions(ids, items, queries, seed=9)
    a = exact.search(queries, 30, exclude=exclude, exclude_all=exclude_all)
    b = back.search(queries, 30, exclude=exclude, exclude_all=exclude_all)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    (tmp_path / "idx" / "vectors.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"vectors\.npy: missing"):
        ItemIndex.load(tmp_path / "idx")


def test_chunked_scan_equals_one_matmul_and_topk(data: tuple) -> None:
    items, _, queries = data
    whole = torch.from_numpy(queries) @ torch.from_numpy(items).T
    want_scores, want_pos = whole.topk(25, dim=1)
    pos, scores = TorchExactIndex(items, device="cpu", chunk_items=101, query_batch=17).search(queries, 25)
    np.testing.assert_array_equal(pos, want_pos.numpy())
    np.testing.assert_allclose(scores, want_scores.numpy(), atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only rules of type auto and device cuda")
def test_auto_never_picks_torch_exact_without_cuda_and_device_cuda_fails_clearly(data: tuple) -> None:
    pytest.importorskip("faiss")
    items, ids, queries = data
    auto = build_index(items, ids, IndexConfig(threads=1, auto_exact_max=N_ITEMS), queries[:20])
    assert auto.type == "flat" and auto.device == "cpu"
    with pytest.raises(ValueError, match=r"index\.device is 'cuda' but torch sees no CUDA device"):
        build_index(items, ids, IndexConfig(type="torch_exact", device="cuda"), queries)
    with pytest.raises(ValidationError, match="'device: cuda' applies only to type 'torch_exact'"):
        IndexConfig(type="hnsw", device="cuda")
    with pytest.raises(ValidationError, match="chunk_items"):
        IndexConfig(type="torch_exact", chunk_items=0)


FAISS_BLOCKED = textwrap.dedent("""
    import json, sys, tempfile
    sys.modules["faiss"] = None  # `import faiss` now fails as if it were not installed
    import numpy as np
    from training.index.build import build_index
    from training.index.config import IndexConfig
    from training.index.faiss_index import ItemIndex
    rng = np.random.default_rng(0)
    items = rng.standard_normal((800, 16)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = items[:40] + 0.1 * rng.standard_normal((40, 16)).astype(np.float32)
    ids = np.arange(800, dtype=np.int64) * 5 + 1
    item = build_index(items, ids, IndexConfig(type="torch_exact", chunk_items=300, query_batch=16), queries)
    exclude = [ids[i : i + 3] for i in range(40)]
    got, scores = item.search(queries, 10, exclude=exclude, exclude_all=ids[100:200])
    with tempfile.TemporaryDirectory() as d:
        item.save(d)
        again, _ = ItemIndex.load(d).search(queries, 10, exclude=exclude, exclude_all=ids[100:200])
    try:
        build_index(items, ids, IndexConfig(type="hnsw"), queries)
        flat_error = ""
    except ImportError as e:
        flat_error = str(e)
    s = queries.astype(np.float64) @ items.T.astype(np.float64)
    s[:, 100:200] = -np.inf
    for i in range(40):
        s[i, i : i + 3] = -np.inf
    want = ids[np.argsort(-s, axis=1)[:, :10]]
    print(json.dumps({"faiss_module": repr(sys.modules["faiss"]), "recall": item.recall["recall_at_k"],
                      "equal": bool((got == want).all()), "reloaded_equal": bool((again == got).all()),
                      "device": item.device, "flat_error": flat_error}))
""")


def test_torch_exact_builds_searches_and_saves_without_faiss() -> None:
    proc = subprocess.run([sys.executable, "-c", FAISS_BLOCKED], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["faiss_module"] == "None"  # nothing imported faiss behind the block
    assert out["recall"] == 1.0 and out["equal"] and out["reloaded_equal"]
    assert out["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert "index type 'hnsw' needs faiss" in out["flat_error"] and "torch_exact" in out["flat_error"]
