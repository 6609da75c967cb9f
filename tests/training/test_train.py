"""The CTR training job: a real Lightning run tracked in a real MLflow SQLite store, the ranker bundle scores raw
rows like the prepared path, and a killed run resumed from its last checkpoint matches an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch.overrides import TorchFunctionMode

from feature_store.prepare import assemble_events, prepare, read_prepared
from feature_store.readers import read_source
from recforge.config import RecForgeConfig, load
from tests.conftest import ROOT, record_figures
from training.common.data import InMemoryBatches, load_split
from training.ranking.bundle import load_bundle
from training.ranking.run import train_ctr

pytestmark = pytest.mark.slow

SMALL = ["source.n_users=800", "source.n_items=200", "source.n_impressions=40000", "source.n_categories=6",
         "prepare.batch_rows=10000", "train.batch_size=512", "train.max_epochs=2", "train.runtime.num_threads=1",
         "train.early_stopping.patience=10"]


@pytest.fixture(scope="module")
def prepared_cfg(tmp_path_factory: pytest.TempPathFactory, ray_local: object) -> RecForgeConfig:
    out = tmp_path_factory.mktemp("train")
    cfg = load(ROOT / "configs" / "demo.yaml", [*SMALL, f"output_dir={out}"])
    prepare(cfg)
    return cfg


@pytest.fixture(scope="module")
def trained(prepared_cfg: RecForgeConfig) -> dict:
    os.environ["RECFORGE_PROGRESS"] = "0"
    return train_ctr(prepared_cfg.output_dir, prepared_cfg.name, prepared_cfg.train,
                     config_doc=prepared_cfg.model_dump(mode="json")).to_dict()


def test_training_beats_chance_and_reports_valid_and_test_metrics(trained: dict) -> None:
    assert trained["epochs_run"] == 2
    for split in ("valid", "test"):
        m = trained[split]
        assert 0.6 < m["auc"] <= 1.0
        assert 0 < m["logloss"] < 0.5
        assert 0.5 < m["calibration"] < 2.0
        assert "gauc" in m


def test_mlflow_run_holds_config_lineage_metrics_plots_and_model(trained: dict) -> None:
    import mlflow

    ml = trained["mlflow"]
    client = mlflow.MlflowClient(ml["tracking_uri"])
    run = client.get_run(ml["run_id"])
    assert run.data.params["train.model"] == "dcnv2"
    assert run.data.params["source.n_impressions"] == "40000"
    assert run.data.tags["recforge.data_hash"] == trained["lineage"]["recforge.data_hash"]
    assert len(run.data.tags["recforge.spec_fingerprint"]) == 64
    assert run.data.metrics["test/auc"] == pytest.approx(trained["test"]["auc"])
    history = client.get_metric_history(ml["run_id"], "valid/auc")
    assert len(history) == 2  # one per epoch
    names = {a.path for a in client.list_artifacts(ml["run_id"])}
    assert {"resolved_config.yaml", "test_metrics.json", "plots", "ranker"} <= names
    plots = {Path(a.path).name for a in client.list_artifacts(ml["run_id"], "plots")}
    assert plots == {"loss_curves.png", "roc.png", "reliability.png"}
    ranker = {Path(a.path).name for a in client.list_artifacts(ml["run_id"], "ranker")}
    assert {"bundle.json", "state_dict.pt", "spec"} <= ranker


def test_bundle_scores_raw_rows_exactly_like_the_prepared_batches(prepared_cfg: RecForgeConfig,
                                                                  trained: dict) -> None:
    ranker = load_bundle(trained["bundle"])
    raw = read_source(prepared_cfg.source, Path(prepared_cfg.output_dir) / "raw")
    assembled = assemble_events(prepared_cfg, raw)
    raw_test = assembled.table.filter(pa.array(assembled.codes == 2)).slice(0, 300)
    online = ranker.score(raw_test.to_pylist())
    tensors = load_split(Path(prepared_cfg.output_dir) / "prepared" / "test", ranker.layout)
    batch = next(iter(InMemoryBatches(tensors, 300, shuffle=False)))
    with torch.no_grad():
        offline = torch.sigmoid(ranker.model(batch)).numpy()
    np.testing.assert_allclose(online, offline, rtol=1e-5, atol=1e-6)
    assert ranker.info["exported_program"] is True


def test_a_compiled_job_writes_a_bundle_that_an_uncompiled_model_loads_with_the_same_outputs(
        prepared_cfg: RecForgeConfig) -> None:
    """`train.compile: on` on the CPU: the job really trains a compiled model (dynamo captured graphs), and its
    bundle has the plain model's state_dict keys, loads into an uncompiled model and scores as the compiled model
    with the same weights does."""
    from torch._dynamo.utils import counters

    from training.common.trainer import compile_in_place
    from training.ranking.models import build_model

    os.environ["RECFORGE_PROGRESS"] = "0"
    # one batch per split (batch above every split's rows): the fewest shapes for dynamo to compile; the smallest
    # model with the fused embedding (CUDA's `auto`; TorchRec's KeyedJaggedTensor breaks the graph 20 times), as
    # inductor's C++ compile on 2 cores is most of this test: 13 s for lr against 22 for dlrm
    cfg = prepared_cfg.train.model_copy(update={"model": "lr", "compile": "on", "max_epochs": 1,
                                                "batch_size": 65_536,
                                                "model_params": {"lr": {"embedding_backend": "fused"}}})
    graphs = counters["stats"]["unique_graphs"]
    result = train_ctr(prepared_cfg.output_dir, prepared_cfg.name, cfg,
                       config_doc=prepared_cfg.model_dump(mode="json")).to_dict()
    assert result["compiled"] is True and counters["stats"]["unique_graphs"] > graphs
    bundle = Path(result["bundle"])
    ranker = load_bundle(bundle)  # built uncompiled
    state = torch.load(bundle / "state_dict.pt", weights_only=True)
    assert list(state) == list(build_model("lr", ranker.layout, ranker.info["model_config"]).state_dict())
    assert not any("_orig_mod" in k for k in state)
    compiled = build_model("lr", ranker.layout, ranker.info["model_config"])
    compiled.load_state_dict(state)
    assert compile_in_place([compiled.eval()], "on", cfg.runtime)
    tensors = load_split(Path(prepared_cfg.output_dir) / "prepared" / "test", ranker.layout)
    batch = next(iter(InMemoryBatches(tensors, 256, shuffle=False)))
    with torch.no_grad():
        torch.testing.assert_close(ranker.model(batch), compiled(batch), rtol=1e-5, atol=1e-5)
    assert ranker.info["exported_program"] is True


def test_a_step_limit_inside_the_first_epoch_still_validates_and_keeps_the_best_checkpoint(
        prepared_cfg: RecForgeConfig) -> None:
    """`train.max_steps` below one epoch: Lightning validates only at an epoch's end, so before the fix the job had
    no valid metric and early stopping raised on it; now the limit ends the epoch with a validation."""
    os.environ["RECFORGE_PROGRESS"] = "0"
    cfg = prepared_cfg.train.model_copy(update={"model": "lr", "max_steps": 10, "max_epochs": 3})
    result = train_ctr(prepared_cfg.output_dir, prepared_cfg.name, cfg,
                       config_doc=prepared_cfg.model_dump(mode="json")).to_dict()
    assert result["global_steps"] == 10  # 62 steps make one epoch here
    assert result["valid"]["n"] > 0 and 0.0 <= result["valid"]["auc"] <= 1.0
    assert Path(result["best_checkpoint"]).name == "best.ckpt" and Path(result["best_checkpoint"]).is_file()
    assert result["test"]["n"] > 0


def test_a_second_job_in_the_same_folder_keeps_one_best_and_one_last_checkpoint_of_its_own(
        prepared_cfg: RecForgeConfig, tmp_path: Path) -> None:
    """Before: a fresh job beside a previous job's checkpoints wrote best-v1.ckpt and last-v1.ckpt (and the step and
    epoch callbacks each kept their own last), so `train.resume` would continue from the previous job's last.ckpt."""
    os.environ["RECFORGE_PROGRESS"] = "0"
    out = copy_scenario(prepared_cfg, tmp_path / "twice").parent
    stage = out / "train" / "lr" / "checkpoints"
    for steps in (12, 10):
        cfg = prepared_cfg.train.model_copy(update={"model": "lr", "max_steps": steps, "checkpoint_every_n_steps": 4})
        result = train_ctr(out, prepared_cfg.name, cfg).to_dict()
        assert result["global_steps"] == steps
        assert sorted(p.name for p in stage.iterdir()) == ["best.ckpt", "last.ckpt"]
        assert Path(result["best_checkpoint"]) == stage / "best.ckpt"
        assert torch.load(stage / "last.ckpt", weights_only=True)["global_step"] == steps  # this job's end


class HostReads(TorchFunctionMode):
    """Counts the calls that read a tensor's value back to the host (`.item()`, `float(t)`, `.tolist()`, ...): on
    CUDA each one waits for the GPU to finish everything queued before it."""

    READS = frozenset({"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"})

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "__name__", "") in self.READS:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


class ReadsPerStep(pl.Callback):
    """The host reads of each training step: from one batch's start to the next's (the step, its logging and
    checkpoint callbacks), every step under its own `HostReads`."""

    def __init__(self) -> None:
        self.steps: list[list[str]] = []
        self._mode: HostReads | None = None

    def _close(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.steps.append(self._mode.calls)
            self._mode = None

    def on_train_batch_start(self, *args: Any) -> None:
        self._close()
        self._mode = HostReads()
        self._mode.__enter__()

    def on_train_epoch_end(self, *args: Any) -> None:
        self._close()


@pytest.mark.parametrize("streaming", [False, True])
def test_a_training_step_reads_no_tensor_value_back_to_the_host(prepared_cfg: RecForgeConfig, streaming: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """No host sync per step (on CUDA, a read of a device tensor's value stalls the GPU queue): the loss is summed
    on its device and `train/loss` is not a progress-bar metric (Lightning converted those with `.item()` after
    every batch: one read per step before). CUDA's embedding (`auto` there: fused); the last step, which holds
    the epoch's validation, is left out."""
    import training.ranking.strategies.local as local

    os.environ["RECFORGE_PROGRESS"] = "0"
    probe = ReadsPerStep()
    build = local.build_trainer
    monkeypatch.setattr(local, "build_trainer",
                        lambda *a, callbacks=None, **k: build(*a, callbacks=[probe, *(callbacks or [])], **k))
    cfg = prepared_cfg.train.model_copy(update={
        "model": "dcnv2", "streaming": streaming, "max_steps": 30, "batch_size": 256,
        "checkpoint_every_n_steps": 10, "model_params": {"dcnv2": {"embedding_backend": "fused"}}})
    train_ctr(prepared_cfg.output_dir, prepared_cfg.name, cfg)
    assert len(probe.steps) == 30
    reads = {i: calls for i, calls in enumerate(probe.steps[1:-1], start=1) if calls}
    assert reads == {}, reads


def test_compile_reads_yaml_on_and_off_and_auto_compiles_on_cuda_only() -> None:
    from training.common.config import RuntimeConfig
    from training.common.trainer import compile_enabled
    from training.ranking.config import TrainConfig
    from training.retrieval.config import RetrievalConfig

    assert TrainConfig.model_validate({"compile": True}).compile == "on"
    assert RetrievalConfig.model_validate({"compile": False}).compile == "off"
    assert TrainConfig().compile == RetrievalConfig().compile == "auto"
    cpu = RuntimeConfig(accelerator="cpu")
    assert not compile_enabled("auto", cpu) and compile_enabled("on", cpu) and not compile_enabled("off", cpu)
    assert compile_enabled("auto", RuntimeConfig()) == torch.cuda.is_available()
    with pytest.raises(ValueError, match=r"train\.compile: on does not apply to train\.sharded"):
        TrainConfig.model_validate({"compile": "on", "sharded": True})


# A training job in its own process that SIGKILLs itself right after optimiser step KILL_AT (a kill -9 at a known
# step: the test then knows exactly how many steps the kill cost); without KILL_AT it trains to the end and prints
# its result as JSON. Test code only: the product has no such hook.
KILLABLE_JOB = """
import json, os, signal, sys
import pytorch_lightning as pl
import training.ranking.strategies.local as local
from recforge import logs
from recforge.config import load
from training.ranking.run import train_ctr

logs.setup(False)
config, kill_at = sys.argv[1], int(sys.argv[2])
build = local.build_trainer

class Kill(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

local.build_trainer = lambda *a, callbacks=None, **k: build(*a, callbacks=[*(callbacks or []), Kill()], **k)
cfg = load(config, sys.argv[3:])
print("RESULT " + json.dumps(train_ctr(cfg.output_dir, cfg.name, cfg.train).to_dict(), default=str))
"""
EVERY = 40  # train.checkpoint_every_n_steps of the kill tests


def copy_scenario(prepared_cfg: RecForgeConfig, out: Path) -> Path:
    """A scenario folder with the prepared data of `prepared_cfg` and a config pointing at it."""
    shutil.copytree(Path(prepared_cfg.output_dir) / "prepared", out / "prepared")
    doc = prepared_cfg.model_dump(mode="json")
    doc["output_dir"] = str(out)
    (out / "cfg.yaml").write_text(yaml.safe_dump(doc))
    return out / "cfg.yaml"


def killable(config: Path, kill_at: int, *overrides: str) -> tuple[int, dict | None, str]:
    """Run KILLABLE_JOB: (return code, its result or None when killed, stderr)."""
    env = {**os.environ, "RECFORGE_PROGRESS": "0"}
    done = subprocess.run([sys.executable, "-c", KILLABLE_JOB, str(config), str(kill_at), *overrides], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    result = next((json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    return done.returncode, result, done.stderr


def test_a_job_killed_at_a_random_step_resumes_with_at_most_n_steps_lost(prepared_cfg: RecForgeConfig,
                                                                         tmp_path: Path) -> None:
    """kill -9 at a random step mid-epoch: `runs list` shows the run KILLED; `--resume` says what it resumes from,
    continues the same MLflow run, loses at most `checkpoint_every_n_steps` steps, and ends where an uninterrupted
    run ends (same seed: the resumed epoch continues the same batch order)."""
    from recforge.cli import main

    overrides = ["train.max_epochs=2", "train.batch_size=256", f"train.checkpoint_every_n_steps={EVERY}"]
    straight_cfg = copy_scenario(prepared_cfg, tmp_path / "straight")
    rc, expected, err = killable(straight_cfg, -1, *overrides)
    assert rc == 0 and expected is not None, err[-2000:]
    total = expected["global_steps"]
    kill_at = int(np.random.default_rng(int(time.time())).integers(EVERY + 1, total - EVERY))
    killed_cfg = copy_scenario(prepared_cfg, tmp_path / "killed")
    rc, _, err = killable(killed_cfg, kill_at, *overrides)
    assert rc == -signal.SIGKILL, err[-2000:]
    stage = tmp_path / "killed" / "train" / "dcnv2"
    run_id = (stage / "mlflow_run_id").read_text().strip()
    saved = torch.load(stage / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]

    assert main(["runs", "list", "--config", str(killed_cfg), "--json"]) == 0  # marks the dead run
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'killed' / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "KILLED"
    assert "ended without finishing the run" in client.get_run(run_id).data.tags["recforge.killed"]

    rc, resumed, err = killable(killed_cfg, -1, *overrides, "train.resume=true")
    assert rc == 0 and resumed is not None, err[-2000:]
    assert f"resuming from {stage / 'checkpoints' / 'last.ckpt'}" in err
    assert resumed["resumed_from"]["checkpoint"] == str(stage / "checkpoints" / "last.ckpt")
    assert resumed["resumed_from"]["step"] == saved
    assert resumed["mlflow"]["run_id"] == run_id and client.get_run(run_id).info.status == "FINISHED"
    lost = kill_at - saved
    figures = {"checkpoint_every_n_steps": EVERY, "steps_in_run": total, "killed_at_step": kill_at,
               "resumed_from_step": saved, "steps_lost": lost, "test_auc_uninterrupted": expected["test"]["auc"],
               "test_auc_resumed": resumed["test"]["auc"],
               "auc_difference": abs(resumed["test"]["auc"] - expected["test"]["auc"])}
    record_figures("kill_resume", figures)
    assert 0 <= lost <= EVERY, figures
    assert resumed["global_steps"] == total and resumed["epochs_run"] == expected["epochs_run"]
    # one thread, same seed and the same batch order after the resume: equal up to float summation order
    assert resumed["test"]["auc"] == pytest.approx(expected["test"]["auc"], abs=1e-3), figures
    assert resumed["test"]["logloss"] == pytest.approx(expected["test"]["logloss"], abs=1e-3), figures


def test_a_job_killed_before_its_first_checkpoint_resumes_in_the_same_run_saying_nothing_to_resume(
        prepared_cfg: RecForgeConfig, tmp_path: Path) -> None:
    overrides = ["train.max_epochs=1", "train.batch_size=256", f"train.checkpoint_every_n_steps={EVERY}"]
    config = copy_scenario(prepared_cfg, tmp_path / "early")
    rc, _, err = killable(config, 5, *overrides)
    assert rc == -signal.SIGKILL, err[-2000:]
    stage = tmp_path / "early" / "train" / "dcnv2"
    assert not (stage / "checkpoints" / "last.ckpt").exists()
    run_id = (stage / "mlflow_run_id").read_text().strip()
    rc, resumed, err = killable(config, -1, *overrides, "train.resume=true")
    assert rc == 0 and resumed is not None, err[-2000:]
    assert "nothing to resume in" in err and "starting fresh" in err
    assert resumed["resumed_from"] is None and resumed["mlflow"]["run_id"] == run_id


def test_a_bundle_holding_a_pickled_object_is_refused_naming_the_file(trained: dict, tmp_path: Path) -> None:
    from training.common.weights import UnsafeWeightsError

    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    torch.save({"weights": Path("a pickled object, not a tensor")}, bundle / "state_dict.pt")
    with pytest.raises(UnsafeWeightsError, match=r"state_dict\.pt: not plain weights"):
        load_bundle(bundle)


def test_prepared_test_split_has_the_oracle_column(prepared_cfg: RecForgeConfig) -> None:
    test = read_prepared(Path(prepared_cfg.output_dir) / "prepared" / "test")
    assert "p_click" in test.column_names
