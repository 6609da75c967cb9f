"""The CUDA paths on a real GPU: every CTR model trains in bf16 autocast with the fused embedding, the fused
embedding and torch_exact give the CPU results, GPU-resident batches equal host batches, the Lightning path
trains in bf16-mixed, and the two-tower model trains. Skipped where torch sees no CUDA device.

Needs only torch, numpy, pyarrow and pytorch_lightning (plus pydantic/PyYAML, which the package itself needs);
anything else is guarded with pytest.importorskip.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from tests.training.test_device_paths import N_ITEMS, synthetic_layout, synthetic_tensors
from training.common.config import OptimConfig
from training.common.data import InMemoryBatches
from training.common.embedding import FusedEmbedding
from training.common.features import LABEL
from training.index.build import build_index
from training.index.config import IndexConfig
from training.ranking.models import MODELS, build_model
from training.ranking.task import CTRTask

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = torch.device("cuda")
STEPS = 30
SMALL: dict[str, dict[str, Any]] = {
    "wide_deep": {"mlp": [64, 32]},
    "deepfm": {"mlp": [64, 32]},
    "dcnv2": {"mlp": [64, 32], "cross_layers": 2},
    "dlrm": {"bottom_mlp": [16], "top_mlp": [64, 32]},
    "din": {"attention_mlp": [16], "mlp": [64, 32]},
    "finalmlp": {"mlp1": [64, 32], "mlp2": [64, 32], "gate_mlp": [16], "num_heads": 2},
}
FAST = OptimConfig(dense_lr=1e-2, embedding_lr=5e-2)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, synthetic_layout(), {**SMALL.get(name, {}), "embedding_backend": "fused",
                                                  "embedding_dim": 8})


def _bf16() -> Any:
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_ctr_model_trains_on_cuda_in_bf16_and_its_loss_falls(name: str) -> None:
    model = _model(name).to(DEVICE)
    assert isinstance(model.embedding, FusedEmbedding)
    opt = CTRTask(model, FAST).configure_optimizers()
    batches = InMemoryBatches(synthetic_tensors(4096, seed=0), 512, shuffle=True, seed=0, device=DEVICE)
    losses = []
    step = 0
    while step < STEPS:
        for batch in batches:
            with _bf16():
                logits = model(batch)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch[LABEL])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step == STEPS:
                break
    assert logits.shape == (512,) and logits.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert np.isfinite(losses).all()
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first - 0.05, f"{name}: loss {first:.4f} -> {last:.4f}"


def test_fused_embedding_and_a_model_give_the_cpu_outputs_on_cuda() -> None:
    layout = synthetic_layout()
    torch.manual_seed(1)
    cpu = FusedEmbedding(layout, 16, init_std=0.1)
    gpu = copy.deepcopy(cpu).to(DEVICE)
    batch = synthetic_tensors(300, seed=2)
    batch_gpu = {k: v.to(DEVICE) for k, v in batch.items()}
    with torch.no_grad():
        want = cpu(batch)
        exact = gpu(batch_gpu)  # fp32: a gather and masked means, equal to rounding
        with _bf16():
            mixed = gpu(batch_gpu)
    torch.testing.assert_close(exact.pooled.cpu(), want.pooled, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mixed.pooled.float().cpu(), want.pooled, atol=1e-3, rtol=1.6e-2)
    seq, lengths = mixed.sequences["hist_items"]
    torch.testing.assert_close(seq.float().cpu(), want.sequences["hist_items"][0], atol=1e-3, rtol=1.6e-2)
    assert torch.equal(lengths.cpu(), want.sequences["hist_items"][1])
    model_cpu = _model("dcnv2").eval()
    model_gpu = copy.deepcopy(model_cpu).to(DEVICE)
    with torch.no_grad(), _bf16():
        logits = model_gpu(batch_gpu).float().cpu()
    with torch.no_grad():
        ref = model_cpu(batch)
    assert (logits - ref).abs().max() < 0.05 and np.corrcoef(logits.numpy(), ref.numpy())[0, 1] > 0.999


def test_torch_exact_on_cuda_equals_torch_exact_on_cpu_even_with_global_tf32() -> None:
    rng = np.random.default_rng(4)
    items = rng.standard_normal((20_000, 64)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = items[rng.integers(0, 20_000, 500)] + 0.3 * rng.standard_normal((500, 64)).astype(np.float32)
    ids = rng.permutation(10**6)[:20_000].astype(np.int64)
    exclude = [rng.choice(ids, 50) for _ in range(500)]
    exclude_all = rng.choice(ids, 2000, replace=False)
    common = {"type": "torch_exact", "chunk_items": 7000, "query_batch": 128, "recall_k": 50, "recall_queries": 200}
    cpu = build_index(items, ids, IndexConfig(device="cpu", **common), queries)
    gpu = build_index(items, ids, IndexConfig(device="cuda", **common), queries)
    assert gpu.device.startswith("cuda") and gpu.recall["recall_at_k"] >= 0.999  # float32 near-ties at rank 50
    want_ids, want_scores = cpu.search(queries, 100, exclude=exclude, exclude_all=exclude_all)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 everywhere: the index must still multiply in IEEE fp32
    try:
        got_ids, got_scores = gpu.search(queries, 100, exclude=exclude, exclude_all=exclude_all)
    finally:
        torch.set_float32_matmul_precision(before)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    differ = got_ids != want_ids
    assert differ.mean() < 1e-3  # only float32 near-ties may swap
    np.testing.assert_allclose(got_scores[differ], want_scores[differ], atol=1e-6)
    assert not np.isin(got_ids, exclude_all).any()
    assert not any(np.isin(got_ids[i], exclude[i]).any() for i in range(500))


def test_gpu_resident_batches_equal_host_batches() -> None:
    tensors = synthetic_tensors(5000, seed=3)
    resident = InMemoryBatches(tensors, 512, shuffle=True, seed=9, device=DEVICE)
    host = InMemoryBatches(tensors, 512, shuffle=True, seed=9, pin_memory=True)
    assert all(v.device.type == "cuda" for v in resident.tensors.values())
    assert all(v.is_pinned() for v in host.tensors.values())
    for epoch in range(2):
        resident.set_epoch(epoch)
        host.set_epoch(epoch)
        pairs = list(zip(resident, host, strict=True))
        assert len(pairs) == 10
        for r, h in pairs:
            assert r.keys() == h.keys()
            for k in r:
                assert r[k].device.type == "cuda" and torch.equal(r[k].cpu(), h[k]), k


def test_lightning_trains_on_cuda_in_bf16_mixed() -> None:
    import pytorch_lightning as pl

    from training.ranking.run import lightning_precision

    precision = lightning_precision("auto", "auto")
    assert precision == "bf16-mixed"
    losses: list[float] = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            losses.append(float(outputs["loss"]))

    task = CTRTask(_model("dcnv2"), FAST)
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision=precision, max_steps=STEPS, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Losses()])
    trainer.fit(task, train_dataloaders=InMemoryBatches(synthetic_tensors(4096, seed=0), 512, shuffle=True,
                                                        pin_memory=True))
    assert trainer.strategy.root_device.type == "cuda" and len(losses) == STEPS
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05


def test_two_tower_runs_forward_and_backward_on_cuda() -> None:
    from training.retrieval.config import TwoTowerConfig
    from training.retrieval.layout import TowerLayout
    from training.retrieval.model import TwoTower, sampled_softmax_loss

    layout = synthetic_layout()  # tables: user_id, item_id, category, tags
    towers = TowerLayout(layout=layout, user_fields=(0, 3), item_fields=(1, 2), user_sequences=("hist_items",),
                         user_dense=(0,), item_dense=(1,))
    torch.manual_seed(0)
    model = TwoTower(towers, TwoTowerConfig(embedding_dim=16, tower_mlp=[32], output_dim=16)).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = {k: v.to(DEVICE) for k, v in synthetic_tensors(1024, seed=5).items()}
    codes = batch["sparse"][:, 1]
    log_q = torch.log(torch.bincount(codes, minlength=N_ITEMS + 1).float().clamp(min=1) / len(codes))[codes]
    losses = []
    for _ in range(20):
        with _bf16():
            user, item = model(batch)
            loss = sampled_softmax_loss(user, item, codes, log_q, model.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        assert model.embedding.weight.weight.grad is not None
        assert torch.isfinite(model.embedding.weight.weight.grad).all()
        opt.step()
        losses.append(float(loss.detach()))
    assert user.device.type == "cuda" and user.shape == (1024, 16)
    torch.testing.assert_close(user.float().norm(dim=1), torch.ones(1024, device=DEVICE), atol=1e-2, rtol=0)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
