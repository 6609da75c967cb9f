"""Distributed training: per-rank data, the shardable TorchRec layer, Ray Train workers and sharded DMP."""

from __future__ import annotations

import tempfile
from itertools import pairwise
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from training.common.config import OptimConfig
from training.common.data import RankStreamingBatches, load_split
from training.common.embedding import torchrec_available
from training.common.features import LABEL, FeatureLayout
from training.ranking.bundle import load_bundle
from training.ranking.config import TrainConfig
from training.ranking.models import build_model, model_config
from training.ranking.run import train_ctr
from training.ranking.strategies.shardable import (
    build_shardable_model,
    fused_embedding_optimizer,
    shardable_embeddings,
)
from training.ranking.strategies.sharded import shard_bounds

ROOT = Path(__file__).resolve().parents[2]
DCN = {"embedding_dim": 8, "mlp": [64, 32], "cross_layers": 2}


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory: pytest.TempPathFactory, ray_local: object) -> Path:
    """A tiny synthetic scenario run through the real prepare job (16k train / 2k valid / 2k test rows)."""
    from feature_store.prepare import prepare
    from recforge.config import load

    out = tmp_path_factory.mktemp("distributed")
    cfg = load(str(ROOT / "configs" / "demo.yaml"), ["source.n_users=500", "source.n_items=200",
                                                     "source.n_impressions=20000", "source.n_categories=6",
                                                     f"output_dir={out}"])
    prepare(cfg)
    return out


def _job_dir(prepared_root: Path, tmp_path: Path) -> Path:
    """An output dir of its own whose `prepared` points at the shared prepared data."""
    (tmp_path / "prepared").symlink_to(prepared_root / "prepared", target_is_directory=True)
    return tmp_path


def _layout(prepared_root: Path) -> FeatureLayout:
    from feature_store.spec import FeatureSpec

    return FeatureLayout.from_spec(FeatureSpec.load(prepared_root / "prepared" / "spec"))


# ---------------------------------------------------------------------------------------- per-rank data


def test_eval_slices_cover_every_row_once_with_sizes_within_one() -> None:
    for n, world in [(2000, 2), (5, 4), (7, 3), (4, 4)]:
        bounds = [shard_bounds(n, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in pairwise(bounds))
        sizes = [hi - lo for lo, hi in bounds]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_streaming_ranks_stop_after_the_same_number_of_full_batches(prepared_root: Path, tmp_path: Path) -> None:
    table = pq.read_table(next((prepared_root / "prepared" / "train").glob("*.parquet")))
    split = tmp_path / "train"
    split.mkdir()
    pq.write_table(table.slice(0, 7000), split / "part-0.parquet", row_group_size=1000)  # 7 row groups: 4 + 3
    layout = _layout(prepared_root)
    ranks = [RankStreamingBatches(split, layout, 256, rank=r, world_size=2, buffer_rows=2048, seed=1)
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3000 // 256
    for r in ranks:
        batches = list(r)
        assert len(batches) == len(r) and all(len(b[LABEL]) == 256 for b in batches)
    with pytest.raises(ValueError, match="row groups"):
        RankStreamingBatches(split, layout, 4096, rank=0, world_size=2)


# ------------------------------------------------------------------------------- shardable TorchRec layer

needs_torchrec = pytest.mark.skipif(not torchrec_available(), reason="torchrec + fbgemm-gpu(-cpu) not installed")


@needs_torchrec
def test_shardable_layer_scores_like_the_plain_torchrec_model_with_sequences(prepared_root: Path) -> None:
    layout = _layout(prepared_root)
    assert layout.sequences, "the demo scenario has a behaviour sequence; this test needs one"
    plain = build_model("dcnv2", layout, model_config("dcnv2", {**DCN, "embedding_backend": "torchrec"})).eval()
    shardable = build_shardable_model("dcnv2", layout, DCN).eval()
    shardable.load_state_dict(plain.state_dict(), strict=True)  # same keys: weights move unchanged
    batch = {k: v[:64] for k, v in load_split(prepared_root / "prepared" / "valid", layout).items()}
    assert (batch[f"seq_len:{layout.sequences[0].name}"] == 0).any(), "want empty sequences in the batch too"
    with torch.no_grad():
        torch.testing.assert_close(shardable(batch), plain(batch), rtol=1e-5, atol=1e-6)
    assert len(shardable_embeddings(shardable)) == 1


@needs_torchrec
def test_sharded_mode_rejects_a_model_that_attends_over_unpooled_sequences(prepared_root: Path) -> None:
    with pytest.raises(ValueError, match=r"model 'din'.*cannot train sharded"):
        build_shardable_model("din", _layout(prepared_root), {})


@needs_torchrec
def test_sharded_mode_rejects_tables_fbgemm_cannot_shard_and_names_the_culprit() -> None:
    from training.common.features import Field

    layout = FeatureLayout(sparse=(Field("a", 10), Field("b", 5)), bags=(), sequences=(), dense_names=("x",),
                           dense_dim=1)
    with pytest.raises(ValueError, match=r"'deepfm' has embedding tables of width \[1\]"):
        build_shardable_model("deepfm", layout, {"embedding_dim": 8})  # its LR term is width 1
    with pytest.raises(ValueError, match=r"'dcnv2' has embedding tables of width \[6\]"):
        build_shardable_model("dcnv2", layout, {"embedding_dim": 6})
    with pytest.raises(ValueError, match=r"dlrm\.sparse_arch\.embedding_bag_collection"):
        build_shardable_model("dlrm", layout, {"embedding_dim": 4})
    assert len(shardable_embeddings(build_shardable_model("finalmlp", layout, {"embedding_dim": 4}))) == 1


def test_sharded_mode_on_cpu_rejects_adam_for_tables_and_names_the_fix() -> None:
    with pytest.raises(ValueError, match=r"train\.optim\.embedding: adagrad"):
        fused_embedding_optimizer(OptimConfig(embedding="adam"), "cpu")
    cls, kwargs = fused_embedding_optimizer(OptimConfig(embedding="adagrad", embedding_lr=0.05), "cpu")
    assert cls is torch.optim.Adagrad and kwargs == {"lr": 0.05}


# ------------------------------------------------------------------------------------ end-to-end (slow)


def _cfg(**kw: object) -> TrainConfig:
    runtime: dict[str, object] = {
        "accelerator": "cpu",  # gloo / CPU workers even where a GPU is present
        "precision": "32",  # the workers' report and the driver's re-evaluation compare exactly
        **{k: kw.pop(k) for k in ("ray_workers", "devices") if k in kw}}
    base: dict[str, object] = dict(model="dcnv2", batch_size=512, max_epochs=3, model_params={"dcnv2": DCN},
                                   runtime=runtime, optim={"dense_lr": 0.003, "embedding_lr": 0.01},
                                   tracking={"log_model": False})
    base.update(kw)
    return TrainConfig.model_validate(base)


@pytest.mark.slow
def test_ray_train_two_cpu_workers_train_on_shards_track_the_run_and_leave_no_temp_folder(prepared_root: Path,
                                                                                          tmp_path: Path) -> None:
    out = _job_dir(prepared_root, tmp_path)
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("lightning_checkpoints-*"))
    result = train_ctr(out, "dist", _cfg(ray_workers=2)).to_dict()
    assert set(temp.glob("lightning_checkpoints-*")) - before == set()  # the workers' checkpoint folders removed

    assert result["distributed"]["workers"] == 2 and result["epochs_run"] >= 2
    assert result["global_steps"] == result["epochs_run"] * 16  # 8000 rows per worker / 512: each its own half
    losses = result["history"]["train/loss"]
    assert losses[-1] < losses[0], f"train loss did not fall: {losses}"
    assert result["valid"]["auc"] > 0.55 and result["valid"]["n"] == 2000
    # the workers validated on the whole split, and the best checkpoint's report matches the driver's re-evaluation
    reported = result["distributed"]["reported_valid"]
    assert reported["n"] == 2000
    assert reported["auc"] == pytest.approx(result["valid"]["auc"], abs=1e-5)
    assert result["test"]["n"] == 2000 and 0.5 < result["test"]["auc"] <= 1.0

    run = mlflow.MlflowClient(result["mlflow"]["tracking_uri"]).get_run(result["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/auc"] == pytest.approx(result["test"]["auc"])
    assert "valid/auc" in run.data.metrics
    assert Path(result["best_checkpoint"]).is_file()
    ranker = load_bundle(result["bundle"])
    assert ranker.info["model"] == "dcnv2"


@pytest.mark.slow
def test_ray_train_refuses_more_workers_than_the_cluster_has_cpus(prepared_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ray_workers=64 needs 64 CPUs"):
        train_ctr(_job_dir(prepared_root, tmp_path), "dist", _cfg(ray_workers=64))


@pytest.mark.slow
@needs_torchrec
def test_torchrec_sharded_two_gloo_ranks_hold_different_tables(prepared_root: Path, tmp_path: Path) -> None:
    out = _job_dir(prepared_root, tmp_path)
    cfg = _cfg(optim={"dense_lr": 0.003, "embedding": "adagrad", "embedding_lr": 0.05}, sharded=True, devices=2)
    result = train_ctr(out, "dist", cfg).to_dict()

    dist = result["distributed"]
    assert dist["backend"] == "gloo" and dist["world_size"] == 2
    assert {p["sharding_type"] for p in dist["plan"].values()} <= {"table_wise", "row_wise"}
    held = {r: {k for k, shards in dist["local_shards"][r].items() if shards} for r in ("0", "1")}
    assert held["0"] and held["1"] and not held["0"] & held["1"], f"ranks must hold different tables: {held}"
    assert held["0"] | held["1"] == set(dist["local_shards"]["0"])
    # rank 0's gathered full weights, scored by a plain model, reproduce the sharded model's validation
    assert dist["sharded_valid"]["auc"] == pytest.approx(result["valid"]["auc"], abs=1e-6)
    assert result["test"]["auc"] > 0.55 and result["test"]["n"] == 2000
    losses = result["history"]["train/loss"]
    assert losses[-1] < losses[0], f"train loss did not fall: {losses}"

    run = mlflow.MlflowClient(result["mlflow"]["tracking_uri"]).get_run(result["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and "test/auc" in run.data.metrics
    ranker = load_bundle(result["bundle"])  # loads as a plain embedding_backend: torchrec model
    test = load_split(out / "prepared" / "test", ranker.layout)
    with torch.no_grad():
        probs = torch.sigmoid(ranker.model(test)).numpy()
    from training.common.metrics import auc

    assert auc(test[LABEL].numpy(), probs) == pytest.approx(result["test"]["auc"], abs=1e-6)
    assert np.isfinite(probs).all()
