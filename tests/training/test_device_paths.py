"""The device code paths on CPU tensors (what CI runs; tests/training/test_gpu.py runs the same on CUDA):
resident InMemoryBatches give the host batches, and torch_exact with an explicit device searches exactly.

`synthetic_layout` / `synthetic_tensors` are small model inputs built without a feature spec (every kind of
field: sparse, bag, sequence, dense), shared with the GPU tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.common.data import InMemoryBatches
from training.common.features import (
    DENSE,
    GROUP,
    LABEL,
    SPARSE,
    FeatureLayout,
    Field,
    SequenceField,
    bag_key,
    bag_len_key,
    seq_key,
    seq_len_key,
)
from training.index.build import build_index
from training.index.config import IndexConfig
from training.index.faiss_index import ItemIndex

N_USERS, N_ITEMS, N_CATS, N_TAGS, BAG_LEN, SEQ_LEN = 50, 40, 6, 8, 3, 5


def synthetic_layout() -> FeatureLayout:
    """user_id, item_id, category (sparse), tags (bag), hist_items (sequence over item_id), two dense columns;
    cardinalities include row 0 (OOV / padding)."""
    return FeatureLayout(
        sparse=(Field("user_id", N_USERS + 1), Field("item_id", N_ITEMS + 1), Field("category", N_CATS + 1)),
        bags=(Field("tags", N_TAGS + 1, BAG_LEN),),
        sequences=(SequenceField("hist_items", "item_id", SEQ_LEN),),
        dense_names=("price", "age"), dense_dim=2, user_field="user_id", item_field="item_id")


def synthetic_tensors(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n rows whose label is item_id % 3 == 0 with 10% of labels flipped (a model can learn it)."""
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(1, N_USERS + 1, (n,), generator=g)
    item = torch.randint(1, N_ITEMS + 1, (n,), generator=g)
    sparse = torch.stack([user, item, item % N_CATS + 1], dim=1)
    bag_len = torch.randint(0, BAG_LEN + 1, (n,), generator=g)
    bag = torch.randint(1, N_TAGS + 1, (n, BAG_LEN), generator=g) * (torch.arange(BAG_LEN)[None] < bag_len[:, None])
    seq_len = torch.randint(0, SEQ_LEN + 1, (n,), generator=g)
    seq = torch.randint(1, N_ITEMS + 1, (n, SEQ_LEN), generator=g) * (torch.arange(SEQ_LEN)[None] < seq_len[:, None])
    flip = torch.rand(n, generator=g) < 0.1
    label = ((item % 3 == 0) ^ flip).float()
    return {SPARSE: sparse, DENSE: torch.randn(n, 2, generator=g), bag_key("tags"): bag, bag_len_key("tags"): bag_len,
            seq_key("hist_items"): seq, seq_len_key("hist_items"): seq_len, LABEL: label, GROUP: user.clone()}


def _epochs(batches: InMemoryBatches, epochs: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for e in range(epochs):
        batches.set_epoch(e)
        out.extend({k: v.cpu() for k, v in b.items()} for b in batches)
    return out


@pytest.mark.parametrize(("shuffle", "rank", "world"), [(True, 0, 1), (False, 0, 1), (True, 1, 2)],
                         ids=["shuffled", "in_order", "rank1_of_2"])
def test_resident_batches_equal_host_batches(shuffle: bool, rank: int, world: int) -> None:
    tensors = synthetic_tensors(1000, seed=1)
    host = _epochs(InMemoryBatches(tensors, 96, shuffle=shuffle, seed=5, rank=rank, world_size=world,
                                   pin_memory=True), 2)
    resident = InMemoryBatches(tensors, 96, shuffle=shuffle, seed=5, rank=rank, world_size=world, device="cpu")
    assert all(v.device.type == "cpu" for v in resident.tensors.values())
    got = _epochs(resident, 2)
    per_epoch = 1000 // world
    assert len(got) == len(host) == 2 * -(-per_epoch // 96)
    for a, b in zip(got, host, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    first = torch.cat([b[GROUP] for b in got[: len(got) // 2]])
    assert len(first) == per_epoch
    if shuffle and world == 1:  # a new seeded order of the same rows each epoch
        second = torch.cat([b[GROUP] for b in got[len(got) // 2:]])
        assert not torch.equal(first, second) and torch.equal(first.sort().values, second.sort().values)


def test_torch_exact_on_an_explicit_cpu_device_searches_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    items = rng.standard_normal((1200, 24)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = items[rng.integers(0, 1200, 90)] + 0.2 * rng.standard_normal((90, 24)).astype(np.float32)
    ids = np.arange(1200, dtype=np.int64) * 2 + 1
    cfg = IndexConfig(type="torch_exact", device="cpu", chunk_items=250, query_batch=32)
    item = build_index(items, ids, cfg, queries)
    assert item.device == "cpu" and item.index.vectors.device.type == "cpu" and item.recall["recall_at_k"] == 1.0
    exclude = [ids[i:i + 4] for i in range(90)]
    got_ids, got_scores = item.search(queries, 15, exclude=exclude, exclude_all=ids[:300])
    scores = queries.astype(np.float64) @ items.T.astype(np.float64)
    scores[:, :300] = -np.inf
    for i in range(90):
        scores[i, i:i + 4] = -np.inf
    top = np.argsort(-scores, axis=1)[:, :15]
    np.testing.assert_array_equal(got_ids, ids[top])
    np.testing.assert_allclose(got_scores, np.take_along_axis(scores, top, axis=1), atol=1e-5)
    item.save(tmp_path / "idx")
    back = ItemIndex.load(tmp_path / "idx", device="cpu")
    assert back.device == "cpu" and back.build_params["device"] == "cpu"
    np.testing.assert_array_equal(back.search(queries, 15, exclude=exclude, exclude_all=ids[:300])[0], got_ids)
