"""Embedding backends agree for identical weights; the loaders yield every row once per epoch, seeded;
the optimizer setup gives embeddings their own optimizer, learning rate and schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from feature_store.config import FeaturesConfig
from feature_store.spec_fit import SpecFitter
from training.common.config import OptimConfig
from training.common.data import InMemoryBatches, StreamingBatches, table_to_tensors
from training.common.embedding import FusedEmbedding, TorchRecEmbedding, copy_weights
from training.common.features import SPARSE, FeatureLayout, bag_len_key, seq_key
from training.common.optim import CombinedOptimizer
from training.ranking.models import build_model
from training.ranking.task import CTRTask

CFG = FeaturesConfig.model_validate({
    "label": "y",
    "categorical": [{"name": "user_id"}, {"name": "item_id"}, {"name": "city"}],
    "numeric": [{"name": "price"}, {"name": "age", "transform": "bucketize", "buckets": 4}],
    "multi_valued": [{"name": "tags", "max_len": 3}],
    "sequence": [{"name": "hist", "source": "item_id", "max_len": 4}],
    "vector": [{"name": "vec", "dim": 2}],
})


def raw_table(n: int = 2000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    items = rng.integers(1, 60, n)
    return pa.table({
        "user_id": rng.integers(1, 200, n), "item_id": items, "city": rng.choice(["a", "b", "c"], n),
        "price": rng.gamma(2.0, 3.0, n), "age": rng.integers(18, 70, n),
        "tags": [list(rng.choice(["x", "y", "z", "w"], rng.integers(0, 5))) for _ in range(n)],
        "hist": [list(rng.integers(1, 60, rng.integers(0, 7))) for _ in range(n)],
        "vec": [list(rng.random(2)) for _ in range(n)],
        "y": (items % 3 == 0).astype(np.float32),
    })


@pytest.fixture(scope="module")
def prepared() -> tuple[FeatureLayout, pa.Table]:
    t = raw_table()
    spec = SpecFitter(CFG).fit(t)
    return FeatureLayout.from_spec(spec), spec.transform(t)


def test_layout_comes_from_the_spec(prepared: tuple[FeatureLayout, pa.Table]) -> None:
    layout, _ = prepared
    assert [f.name for f in layout.sparse] == ["user_id", "item_id", "city", "age"]
    assert [f.name for f in layout.bags] == ["tags"] and layout.sequences[0].source == "item_id"
    assert layout.dense_dim == 1 + 2 and layout.user_field == "user_id" and layout.item_field == "item_id"


def test_fused_and_torchrec_backends_give_identical_outputs(prepared: tuple[FeatureLayout, pa.Table]) -> None:
    layout, table = prepared
    batch = table_to_tensors(table.slice(0, 256), layout)
    fused, trec = FusedEmbedding(layout, 8), TorchRecEmbedding(layout, 8)
    copy_weights(fused, trec)
    a, b = fused(batch), trec(batch)
    torch.testing.assert_close(a.pooled, b.pooled, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a.sequences["hist"][0], b.sequences["hist"][0])
    for backend in ("fused", "torchrec"):  # same weights through a whole model
        torch.manual_seed(0)
        m1 = build_model("dcnv2", layout, {"embedding_backend": "fused", "embedding_dim": 8})
        m2 = build_model("dcnv2", layout, {"embedding_backend": backend, "embedding_dim": 8})
        m2.load_state_dict({k: v for k, v in m1.state_dict().items() if not k.startswith("embedding.")},
                           strict=False)
        copy_weights(m1.embedding, m2.embedding)
        torch.testing.assert_close(m1(batch), m2(batch), rtol=1e-5, atol=1e-6)


def test_empty_bags_pool_to_zero(prepared: tuple[FeatureLayout, pa.Table]) -> None:
    layout, table = prepared
    batch = table_to_tensors(table.slice(0, 300), layout)
    empty = batch[bag_len_key("tags")] == 0
    assert empty.any()
    out = FusedEmbedding(layout, 4)(batch)
    assert torch.all(out.pooled[empty, len(layout.sparse)] == 0)


def test_in_memory_batches_cover_every_row_once_with_a_seeded_order(prepared: tuple[FeatureLayout, pa.Table]) -> None:
    layout, table = prepared
    tensors = table_to_tensors(table, layout)
    tensors["row"] = torch.arange(table.num_rows)
    a = [b["row"] for b in InMemoryBatches(tensors, 300, shuffle=True, seed=1)]
    b = [b["row"] for b in InMemoryBatches(tensors, 300, shuffle=True, seed=1)]
    assert torch.equal(torch.cat(a).sort().values, torch.arange(table.num_rows))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    it = InMemoryBatches(tensors, 300, shuffle=True, seed=1)
    first = torch.cat([x["row"] for x in it])
    second = torch.cat([x["row"] for x in it])
    assert not torch.equal(first, second)  # a new permutation each epoch
    assert len(it) == 7 and len(a[-1]) == 2000 - 6 * 300


def test_streaming_batches_match_the_in_memory_rows(prepared: tuple[FeatureLayout, pa.Table], tmp_path: Path) -> None:
    layout, table = prepared
    for i in range(0, table.num_rows, 500):
        pq.write_table(table.slice(i, 500), tmp_path / f"part-{i:05d}.parquet", row_group_size=250)
    stream = StreamingBatches(tmp_path, layout, 128, shuffle=True, buffer_rows=400, seed=3)
    batches = list(stream)
    assert sum(len(b["label"]) for b in batches) == table.num_rows == stream.n
    got = torch.cat([b[SPARSE] for b in batches])
    want = table_to_tensors(table, layout)[SPARSE]
    key = lambda s: s[:, 0] * 10**6 + s[:, 1] * 10**3 + s[:, 2]  # noqa: E731
    assert torch.equal(torch.sort(key(got)).values, torch.sort(key(want)).values)
    assert torch.cat([b[seq_key("hist")] for b in batches]).shape == (table.num_rows, 4)


def test_streaming_in_order_yields_every_row_once_in_file_order(prepared: tuple[FeatureLayout, pa.Table],
                                                                 tmp_path: Path) -> None:
    """What streamed evaluation reads: every row exactly once, in file order, in full batches but the last; a
    buffer no larger than a batch (which once made the drain emit nothing and loop forever) still terminates."""
    layout, table = prepared
    for i in range(0, table.num_rows, 500):
        pq.write_table(table.slice(i, 500), tmp_path / f"part-{i:05d}.parquet", row_group_size=250)
    want = table_to_tensors(table, layout)
    for buffer_rows in (0, 128, 10_000):
        batches = list(StreamingBatches(tmp_path, layout, 128, shuffle=False, buffer_rows=buffer_rows))
        assert [len(b["label"]) for b in batches[:-1]] == [128] * (len(batches) - 1)
        for key in (SPARSE, "label", seq_key("hist")):
            assert torch.equal(torch.cat([b[key] for b in batches]), want[key]), (buffer_rows, key)
    shuffled = list(StreamingBatches(tmp_path, layout, 128, shuffle=True, buffer_rows=128, seed=1))
    assert sum(len(b["label"]) for b in shuffled) == table.num_rows


def _concatenating_stream(files: list[Path], layout: FeatureLayout, batch: int, buffer_rows: int,
                          seed: int) -> list[dict[str, torch.Tensor]]:
    """Reference: the shuffle buffer as a concatenation (each row group appended with torch.cat, the kept half
    gathered), the streaming loader's algorithm before its buffer was allocated once."""
    g = torch.Generator().manual_seed(seed * 1_000_003)
    out, buf = [], None
    keep = buffer_rows // 2

    def drain(b: dict[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
        n = len(b["label"])
        order = torch.randperm(n, generator=g)
        emit = ((n - keep) // batch) * batch
        out.extend({k: v[order[lo: lo + batch]] for k, v in b.items()} for lo in range(0, emit, batch))
        return {k: v[order[emit:]] for k, v in b.items()}

    for f in files:
        pf = pq.ParquetFile(f)
        for i in range(pf.num_row_groups):
            part = table_to_tensors(pf.read_row_group(i), layout)
            buf = part if buf is None else {k: torch.cat([buf[k], part[k]]) for k in part}
            while len(buf["label"]) >= buffer_rows:
                buf = drain(buf, keep)
    rest = drain(buf, 0)
    return [*out, rest] if len(rest["label"]) else out


def test_streaming_shuffle_buffer_yields_exactly_the_batches_of_a_concatenated_buffer(
        prepared: tuple[FeatureLayout, pa.Table], tmp_path: Path) -> None:
    """The buffer allocated once (row groups copied into free slots, batches gathered through the live slots) is
    the same shuffle as concatenating the buffer: same batches, same rows, same order, over row groups of uneven
    sizes (the last of each file smaller) that make the buffer grow and wrap."""
    layout, table = prepared
    for i in range(0, table.num_rows, 700):
        pq.write_table(table.slice(i, 700), tmp_path / f"part-{i:05d}.parquet", row_group_size=300)
    files = sorted(tmp_path.glob("*.parquet"))
    for buffer_rows in (256, 600, 1000):
        got = list(StreamingBatches(tmp_path, layout, 128, shuffle=True, buffer_rows=buffer_rows, seed=0))
        want = _concatenating_stream(files, layout, 128, max(buffer_rows, 256), seed=0)
        assert len(got) == len(want) and sum(len(b["label"]) for b in got) == table.num_rows
        for a, b in zip(got, want):
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a), buffer_rows


def test_host_fed_batches_through_staging_buffers_equal_the_plain_host_batches(
        prepared: tuple[FeatureLayout, pa.Table]) -> None:
    """The host-fed path (a split too large for the GPU: gathered into two alternating staging buffers, pinned and
    copied non-blocking on CUDA) yields exactly the plain path's batches, for every epoch's permutation, even
    though the buffers are reused: a yielded batch must not change when the next one is gathered."""
    layout, table = prepared
    tensors = table_to_tensors(table, layout)
    for shuffle in (True, False):
        plain = InMemoryBatches(tensors, 96, shuffle=shuffle, seed=5)
        fed = InMemoryBatches(tensors, 96, shuffle=shuffle, seed=5, feed_device="cpu")
        for _ in range(2):  # two epochs: two permutations
            got, want = list(fed), list(plain)
            assert len(got) == len(want) > 2
            for g, w in zip(got, want, strict=True):
                assert g.keys() == w.keys() and all(torch.equal(g[k], w[k]) for k in w)


@pytest.mark.parametrize("embedding", ["adam", "adagrad"])
def test_embeddings_get_their_own_optimizer_and_learning_rate(prepared: tuple[FeatureLayout, pa.Table],
                                                              embedding: str) -> None:
    layout, _ = prepared
    model = build_model("deepfm", layout, {"embedding_dim": 4, "embedding_backend": "fused"})
    task = CTRTask(model, OptimConfig(dense="adamw", dense_lr=1e-3, embedding=embedding, embedding_lr=0.05))
    opt = task.configure_optimizers()
    assert isinstance(opt, CombinedOptimizer)
    dense_opt, emb_opt = opt.optimizers
    assert isinstance(dense_opt, torch.optim.AdamW)
    assert type(emb_opt).__name__.lower() == embedding
    emb_params = {id(p) for g in emb_opt.param_groups for p in g["params"]}
    assert id(model.embedding.weight.weight) in emb_params and emb_opt.param_groups[0]["lr"] == 0.05
    assert not emb_params & {id(p) for g in dense_opt.param_groups for p in g["params"]}


def test_warmup_and_cosine_decay_schedule_every_group(prepared: tuple[FeatureLayout, pa.Table]) -> None:
    layout, table = prepared
    model = build_model("dcnv2", layout, {"embedding_dim": 4})
    task = CTRTask(model, OptimConfig(warmup_steps=4, decay="cosine", dense_lr=1e-2, embedding_lr=1e-1),
                   total_steps=20, steps_per_epoch=10)
    conf = task.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    batch = table_to_tensors(table.slice(0, 64), layout)
    lrs = []
    for _ in range(20):
        torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch["label"]).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    lrs_np = np.array(lrs)
    assert lrs_np[0, 0] == pytest.approx(1e-2 * 2 / 4) and lrs_np[0, -1] == pytest.approx(1e-1 * 2 / 4)
    assert lrs_np[2, 0] == pytest.approx(1e-2)  # warm-up done
    assert lrs_np[-1, 0] < 1e-3  # decayed


def test_data_parallel_ranks_take_disjoint_equal_shares(prepared: tuple[FeatureLayout, pa.Table]) -> None:
    layout, table = prepared
    tensors = table_to_tensors(table, layout)
    tensors["row"] = torch.arange(table.num_rows)
    shares = [torch.cat([b["row"] for b in InMemoryBatches(tensors, 128, shuffle=True, seed=4, rank=r,
                                                            world_size=3)]) for r in range(3)]
    assert {len(s) for s in shares} == {table.num_rows // 3}
    union = torch.cat(shares)
    assert len(torch.unique(union)) == len(union)


def test_add_sides_of_one_user_row_and_gathered_item_rows_equals_the_joined_tables_tensors(
        prepared: tuple[FeatureLayout, pa.Table]) -> None:
    from training.common.data import add_sides

    layout, table = prepared
    user_side = ["user_id", "city", "age", "hist", "vec"]
    item_side = ["item_id", "price", "tags"]
    items = table.slice(0, 50).select(item_side)
    slots = np.array([7, 3, 3, 49, 0, 12])
    one = table.slice(100, 1)
    joined = pa.table({**{c: one.column(c).take(pa.array(np.zeros(len(slots), np.int64))) for c in user_side},
                       **{c: items.column(c).take(pa.array(slots)) for c in item_side}})
    want = table_to_tensors(joined, layout)
    got = add_sides(table_to_tensors(items, layout, only=set(item_side)), torch.from_numpy(slots),
                    table_to_tensors(one, layout, only=set(user_side)), layout)
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
