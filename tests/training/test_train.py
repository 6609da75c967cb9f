"""The CTR training job: a real Lightning run tracked in a real MLflow SQLite store, the ranker bundle scores raw
rows like the prepared path, and a killed run resumed from its last checkpoint matches an uninterrupted one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from feature_store.prepare import assemble_events, prepare, read_prepared
from feature_store.readers import read_source
from recforge.config import RecForgeConfig, load
from tests.conftest import ROOT
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


def test_killed_training_resumes_from_the_last_checkpoint_and_matches(prepared_cfg: RecForgeConfig,
                                                                      tmp_path: Path) -> None:
    epochs = 6
    overrides = [f"train.max_epochs={epochs}", "train.batch_size=256"]
    runs = {}
    for name in ("straight", "killed"):
        out = tmp_path / name
        shutil.copytree(Path(prepared_cfg.output_dir) / "prepared", out / "prepared")
        doc = prepared_cfg.model_dump(mode="json")
        doc["output_dir"] = str(out)
        (out / "cfg.yaml").write_text(yaml.safe_dump(doc))
        runs[name] = out
    straight = load(runs["straight"] / "cfg.yaml", overrides)
    expected = train_ctr(straight.output_dir, "straight", straight.train).to_dict()

    env = {**os.environ, "RECFORGE_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "recforge.cli", "train", "ctr", "--config", str(runs["killed"] / "cfg.yaml"),
           *[a for o in overrides for a in ("--set", o)]]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = runs["killed"] / "train" / "dcnv2" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert last.exists()
    killed_epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert killed_epoch < epochs - 1

    resumed_cfg = load(runs["killed"] / "cfg.yaml", [*overrides, "train.resume=true"])
    resumed = train_ctr(resumed_cfg.output_dir, "killed", resumed_cfg.train).to_dict()
    assert resumed["epochs_run"] == expected["epochs_run"] == epochs
    assert resumed["test"]["auc"] == pytest.approx(expected["test"]["auc"], abs=2e-3)
    assert resumed["test"]["logloss"] == pytest.approx(expected["test"]["logloss"], abs=2e-3)


def test_prepared_test_split_has_the_oracle_column(prepared_cfg: RecForgeConfig) -> None:
    test = read_prepared(Path(prepared_cfg.output_dir) / "prepared" / "test")
    assert "p_click" in test.column_names
