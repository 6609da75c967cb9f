"""The CTR model zoo on a tiny synthetic prepared table: every registered model, both embedding backends.

Each model must learn (its loss falls), give one finite logit per row, export with torch.export to a program
that gives the eager output (so it can be served), and reject unknown config keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from feature_store.config import (
    CategoricalFeature,
    FeaturesConfig,
    MultiValuedFeature,
    NumericFeature,
    SequenceFeature,
)
from feature_store.spec_fit import SpecFitter
from training.common.data import table_to_tensors
from training.common.embedding import TorchRecEmbedding, copy_weights, fuse_embeddings, torchrec_available
from training.common.features import GROUP, LABEL, FeatureLayout, seq_key, seq_len_key
from training.ranking.models import MODELS, build_model

N_ROWS = 256
N_ITEMS = 30
SEQ_LEN = 5
BACKENDS = [
    "fused",
    pytest.param("torchrec", marks=pytest.mark.skipif(not torchrec_available(),
                                                      reason="torchrec / fbgemm-gpu(-cpu) not installed")),
]
# small hidden sizes keep 30 steps on 2 CPU cores fast; every model not listed runs with its defaults
SMALL: dict[str, dict[str, Any]] = {
    "wide_deep": {"mlp": [32, 16]},
    "deepfm": {"mlp": [32, 16]},
    "dcnv2": {"mlp": [32, 16], "cross_layers": 2},
    "dlrm": {"bottom_mlp": [16], "top_mlp": [32, 16]},
    "din": {"attention_mlp": [16], "mlp": [32, 16]},
    "finalmlp": {"mlp1": [32, 16], "mlp2": [32, 16], "gate_mlp": [16], "num_heads": 2},
}

# TorchRec warns through the root logger that non-strict KJT export is slow: that one record is dropped, at the
# root logger itself (a level there would hide every other test's warnings for the rest of the session)
logging.getLogger().addFilter(lambda r: not r.getMessage().startswith("Trying to non-strict torch.export KJT"))


# ----------------------------------------------------------------------------------------------- helpers


def raw_table(seed: int = 0) -> pa.Table:
    """Raw events whose click depends on the item (item_id % 3 == 0), with 10% of labels flipped."""
    rng = np.random.default_rng(seed)
    item = rng.integers(0, N_ITEMS, N_ROWS)
    click = (item % 3 == 0) ^ (rng.random(N_ROWS) < 0.1)
    tags = [[f"t{t}" for t in rng.choice(6, rng.integers(0, 4), replace=False)] for _ in range(N_ROWS)]
    hist = [rng.integers(0, N_ITEMS, rng.integers(0, SEQ_LEN + 2)).tolist() for _ in range(N_ROWS)]
    return pa.table({
        "user_id": rng.integers(0, 40, N_ROWS),
        "item_id": item,
        "category": [f"c{i % 5}" for i in item],
        "price": rng.normal(10.0, 3.0, N_ROWS),
        "age": rng.uniform(18, 70, N_ROWS),
        "tags": pa.array(tags, pa.list_(pa.string())),
        "hist_items": pa.array(hist, pa.list_(pa.int64())),
        "click": click.astype(np.int64),
    })


def features_config(*, dense: bool = True, sequence: bool = True) -> FeaturesConfig:
    numeric = [NumericFeature(name="age", transform="bucketize", buckets=4)]
    if dense:
        numeric.append(NumericFeature(name="price", transform="standardize"))
    return FeaturesConfig(
        label="click",
        categorical=[CategoricalFeature(name="user_id"), CategoricalFeature(name="item_id"),
                     CategoricalFeature(name="category")],
        numeric=numeric,
        multi_valued=[MultiValuedFeature(name="tags", separator=None, max_len=3)],
        sequence=[SequenceFeature(name="hist_items", source="item_id", max_len=SEQ_LEN)] if sequence else [],
    )


def prepared(*, dense: bool = True, sequence: bool = True) -> tuple[FeatureLayout, dict[str, torch.Tensor]]:
    """Fit the spec on the raw table, transform it, and turn it into the layout and one full batch."""
    table = raw_table()
    spec = SpecFitter(features_config(dense=dense, sequence=sequence)).fit(table)
    layout = FeatureLayout.from_spec(spec)
    return layout, table_to_tensors(spec.transform(table), layout)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run far faster on one intra-op thread (no thread hand-off per small op); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[FeatureLayout, dict[str, torch.Tensor]]:
    return prepared()


def features_only(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a served model receives: the batch without label and group."""
    return {k: v for k, v in batch.items() if k not in (LABEL, GROUP)}


def make(name: str, layout: FeatureLayout, backend: str = "fused", **extra: Any) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, layout, {**SMALL.get(name, {}), "embedding_backend": backend, "embedding_dim": 8,
                                      **extra})


def bce(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(model(batch), batch[LABEL])


# ------------------------------------------------------------------------------------------------- tests


def test_synthetic_layout_has_every_input_kind(data: tuple[FeatureLayout, dict[str, torch.Tensor]]) -> None:
    layout, batch = data
    assert [f.name for f in layout.sparse] == ["user_id", "item_id", "category", "age"]
    assert [f.name for f in layout.bags] == ["tags"]
    assert [s.name for s in layout.sequences] == ["hist_items"] and layout.item_field == "item_id"
    assert layout.dense_dim == 1
    assert batch[seq_len_key("hist_items")].max() == SEQ_LEN and batch[seq_len_key("hist_items")].min() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_loss_falls_in_30_adam_steps(
    name: str, backend: str, data: tuple[FeatureLayout, dict[str, torch.Tensor]]
) -> None:
    layout, batch = data
    model = make(name, layout, backend)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    with torch.no_grad():
        before = bce(model, batch).item()
    for _ in range(30):
        loss = bce(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = bce(model, batch).item()
    assert after < before - 0.1, f"{name}/{backend}: loss {before:.4f} -> {after:.4f} did not fall"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_gives_one_finite_logit_per_row(
    name: str, backend: str, data: tuple[FeatureLayout, dict[str, torch.Tensor]]
) -> None:
    layout, batch = data
    logits = make(name, layout, backend).eval()(features_only(batch))
    assert logits.shape == (N_ROWS,)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_exported_program_gives_the_eager_output(
    name: str, backend: str, data: tuple[FeatureLayout, dict[str, torch.Tensor]]
) -> None:
    layout, batch = data
    inputs = features_only({k: v[:64] for k, v in batch.items()})
    model = make(name, layout, backend).eval()
    with torch.no_grad():
        eager = model(inputs)
    program = torch.export.export(model, (inputs,), strict=False)
    with torch.no_grad():
        exported = program.module()(inputs)
    torch.testing.assert_close(exported, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_runs_without_dense_features(name: str) -> None:
    layout, batch = prepared(dense=False)
    assert layout.dense_dim == 0
    logits = make(name, layout).eval()(batch)
    assert logits.shape == (N_ROWS,) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unknown_config_key_is_rejected_naming_the_key(
    name: str, data: tuple[FeatureLayout, dict[str, torch.Tensor]]
) -> None:
    with pytest.raises(ValueError, match=rf"model '{name}' config: .*nope"):
        build_model(name, data[0], {"nope": 1})


@pytest.mark.parametrize("low_rank", [None, 4])
@pytest.mark.parametrize("structure", ["stacked", "parallel"])
def test_dcnv2_stacked_and_parallel_with_and_without_low_rank_all_run(
    structure: str, low_rank: int | None, data: tuple[FeatureLayout, dict[str, torch.Tensor]]
) -> None:
    layout, batch = data
    model = make("dcnv2", layout, structure=structure, low_rank=low_rank)
    loss = bce(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert (model.cross.w is None) == (low_rank is not None)


def test_din_without_a_sequence_raises_a_clear_error() -> None:
    layout, _ = prepared(sequence=False)
    with pytest.raises(ValueError, match=r"model 'din' needs a behaviour sequence.*source: item_id"):
        build_model("din", layout)


def test_din_without_an_item_field_raises_a_clear_error(
    data: tuple[FeatureLayout, dict[str, torch.Tensor]]
) -> None:
    full = data[0]
    layout = FeatureLayout(full.sparse, full.bags, full.sequences, full.dense_names, full.dense_dim,
                           user_field="user_id", item_field=None)
    with pytest.raises(ValueError, match=r"model 'din' needs the item field"):
        build_model("din", layout)


@pytest.mark.parametrize("softmax", [False, True])
def test_din_attention_ignores_padded_history_positions(
    softmax: bool, data: tuple[FeatureLayout, dict[str, torch.Tensor]]
) -> None:
    layout, batch = data
    model = make("din", layout, attention_softmax=softmax).eval()
    lengths = batch[seq_len_key("hist_items")]
    padded = torch.arange(SEQ_LEN)[None, :] >= lengths[:, None]
    assert padded.any()
    noisy = dict(batch)
    noisy[seq_key("hist_items")] = torch.where(padded, torch.randint(1, N_ITEMS, padded.shape),
                                               batch[seq_key("hist_items")])
    with torch.no_grad():
        torch.testing.assert_close(model(noisy), model(batch))
        shuffled = dict(batch)
        shuffled[seq_key("hist_items")] = batch[seq_key("hist_items")].roll(1, dims=0)
        assert not torch.allclose(model(shuffled), model(batch)), "the history must change the score"


@pytest.mark.skipif(not torchrec_available(), reason="torchrec / fbgemm-gpu(-cpu) not installed")
def test_dlrm_on_torchrec_uses_torchrecs_dlrm_and_matches_our_implementation(
    data: tuple[FeatureLayout, dict[str, torch.Tensor]]
) -> None:
    from torchrec.models.dlrm import DLRM as TorchRecDLRM

    layout, batch = data
    ours, theirs = make("dlrm", layout, "fused").eval(), make("dlrm", layout, "torchrec").eval()
    assert not ours.uses_torchrec_dlrm and theirs.uses_torchrec_dlrm
    assert isinstance(theirs.dlrm, TorchRecDLRM)
    copy_weights(ours.embedding, theirs.embedding)
    our_linears = [m for m in (*ours.bottom.modules(), *ours.top.modules()) if isinstance(m, nn.Linear)]
    arches = (theirs.dlrm.dense_arch, theirs.dlrm.over_arch)
    their_linears = [m for arch in arches for m in arch.modules() if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in our_linears] == [tuple(m.weight.shape) for m in their_linears]
    with torch.no_grad():
        for src, dst in zip(our_linears, their_linears, strict=True):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        torch.testing.assert_close(theirs(batch), ours(batch), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torchrec_available(), reason="torchrec / fbgemm-gpu(-cpu) not installed")
def test_dlrm_on_torchrec_without_dense_features_falls_back_to_our_implementation() -> None:
    layout, batch = prepared(dense=False)
    model = make("dlrm", layout, "torchrec")
    assert not model.uses_torchrec_dlrm and model.bottom is None
    assert model(batch).shape == (N_ROWS,)


def test_lr_weights_are_width_one_whatever_the_embedding_dim(
    data: tuple[FeatureLayout, dict[str, torch.Tensor]]
) -> None:
    layout = data[0]
    small = build_model("lr", layout, {"embedding_dim": 4})
    large = build_model("lr", layout, {"embedding_dim": 64})
    n_ids = sum(f.cardinality for f in layout.tables)
    count = sum(p.numel() for p in small.parameters())
    assert count == sum(p.numel() for p in large.parameters()) == n_ids + layout.dense_dim + 1


def test_finalmlp_heads_that_do_not_divide_the_streams_are_rejected(
    data: tuple[FeatureLayout, dict[str, torch.Tensor]]
) -> None:
    with pytest.raises(ValueError, match=r"num_heads \(3\) must divide"):
        build_model("finalmlp", data[0], {"mlp1": [32, 16], "mlp2": [16], "num_heads": 3})


@pytest.mark.skipif(not torchrec_available(), reason="torchrec / fbgemm-gpu(-cpu) not installed")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fusing_torchrec_embeddings_for_serving_keeps_every_models_output(
    name: str, data: tuple[FeatureLayout, dict[str, torch.Tensor]]
) -> None:
    layout, batch = data
    model = make(name, layout, "torchrec").eval()
    tables = sum(isinstance(m, TorchRecEmbedding) for m in model.modules())  # 2 with a first-order (width-1) one
    with torch.no_grad():
        before = model(features_only(batch))
        replaced = fuse_embeddings(model)
        after = model(features_only(batch))
    kept = getattr(model, "keeps_torchrec_embedding", False)  # TorchRec's own DLRM arch reads the collection
    assert replaced == (0 if kept else tables) and tables >= 1
    assert any(isinstance(m, TorchRecEmbedding) for m in model.modules()) == kept
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)


def bundle_of(name: str, backend: str, tmp_path: Path) -> tuple[nn.Module, Path, dict[str, torch.Tensor]]:
    """A model of `name` with `backend` embeddings saved as a ranker bundle; (model, bundle dir, served batch)."""
    from training.ranking.bundle import save_bundle

    table = raw_table()
    spec = SpecFitter(features_config()).fit(table)
    spec.save(tmp_path / "spec")
    layout = FeatureLayout.from_spec(spec)
    model = make(name, layout, backend).eval()
    bundle = save_bundle(tmp_path / "bundle", model_name=name, model=model, spec_dir=tmp_path / "spec")
    return model, bundle, features_only(table_to_tensors(spec.transform(table), layout))


@pytest.mark.skipif(not torchrec_available(), reason="torchrec / fbgemm-gpu(-cpu) not installed")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_torchrec_bundle_loaded_fused_for_serving_gives_the_trained_models_output(name: str,
                                                                                     tmp_path: Path) -> None:
    """`load_bundle(fused=True)` builds the model with one fused table and stacks the TorchRec tables' weights into
    it in the layout's order (a wrong order or a missed table changes the output); TorchRec's own DLRM arch keeps
    its collection."""
    from training.ranking.bundle import load_bundle

    model, bundle, batch = bundle_of(name, "torchrec", tmp_path)
    ranker = load_bundle(bundle, fused=True)
    kept = getattr(model, "keeps_torchrec_embedding", False)
    assert any(isinstance(m, TorchRecEmbedding) for m in ranker.model.modules()) == kept
    assert not ranker.model.training
    with torch.no_grad():
        torch.testing.assert_close(ranker.model(batch), model(batch), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torchrec_available(), reason="torchrec / fbgemm-gpu(-cpu) not installed")
def test_a_serving_replica_loads_a_torchrec_trained_ranker_without_importing_torchrec(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    _, bundle, _ = bundle_of("dcnv2", "torchrec", tmp_path)
    code = ("import sys; from pathlib import Path; from serving.slots import load_ranker; "
            f"r = load_ranker('cpu')(Path({str(bundle)!r})); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchrec', 'fbgemm_gpu')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
