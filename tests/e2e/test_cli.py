"""The `recforge` CLI: the demo runs end to end in a fresh process; bad configs fail with exit 2 and a clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recforge.cli import main
from tests.conftest import ROOT


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recforge.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_unknown_config_key_exits_2_naming_file_line_and_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "bad.yaml"
    text = (ROOT / "configs" / "demo.yaml").read_text().replace("  n_items: 5000", "  n_items: 5000\n  n_usres: 5")
    cfg.write_text(text)
    line = text.splitlines().index("  n_usres: 5") + 1
    assert main(["config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}:{line}: source.n_usres: unknown key" in err
    assert "(valid keys: type, n_users, n_items, n_impressions" in err  # the keys of the synthetic source


def test_wrong_type_from_a_flag_is_reported(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "--config", str(ROOT / "configs" / "demo.yaml"), "--set", "split.valid_fraction=lots"]) == 2
    assert "split.valid_fraction" in capsys.readouterr().err


def test_missing_data_path_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["prepare", "--config", str(ROOT / "configs" / "movielens.yaml"), "--output-dir", str(tmp_path),
               "--set", "source.path=/nonexistent/ml-100k"])
    assert rc == 2
    assert "source.path" in capsys.readouterr().err


def test_generate_refuses_a_non_synthetic_source(capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", "--config", str(ROOT / "configs" / "retail.yaml")]) == 2
    assert "needs type 'synthetic'" in capsys.readouterr().err


def test_flags_override_the_config_and_reach_the_resolved_config(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "--config", str(ROOT / "configs" / "demo.yaml"), "--seed", "5", "--ray-address", "auto",
                 "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["seed"] == 5 and doc["prepare"]["ray_address"] == "auto"


def test_train_retrieval_refuses_options_of_train_ctr(capsys: pytest.CaptureFixture) -> None:
    rc = main(["train", "retrieval", "--config", str(ROOT / "configs" / "movielens.yaml"), "--model", "dcnv2"])
    assert rc == 2
    assert "does not take --model" in capsys.readouterr().err


def _has_key(model: type, path: list[str]) -> bool:
    """Whether the dotted `path` names a field of `model` (for a union field: of any of its model types)."""
    import types
    import typing

    from pydantic import BaseModel

    field = model.model_fields.get(path[0])  # type: ignore[attr-defined]
    if field is None:
        return False
    if len(path) == 1:
        return True
    ann = field.annotation
    if typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    members = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
    members = tuple(typing.get_args(m)[0] if typing.get_origin(m) is typing.Annotated else m for m in members)
    return any(isinstance(m, type) and issubclass(m, BaseModel) and _has_key(m, path[1:]) for m in members)


def test_every_command_line_option_sets_a_key_the_config_has() -> None:
    from recforge import cli
    from recforge.config import RecForgeConfig

    options = [o for name in ("COMMON", "PREPARE", "GENERATE", "MATERIALIZE", "TRAIN", "RETRIEVAL", "REGISTRY",
                              "SERVE", "INDEX") for o in getattr(cli, name)]
    missing = [f"{o.flag} -> {o.key}" for o in options if not _has_key(RecForgeConfig, o.key.split("."))]
    assert not missing, f"options that set keys the config does not have: {missing}"
    assert not _has_key(RecForgeConfig, ["train", "accelerator"])  # the check can fail


# ------------------------------------------------------------------------ bad input: exit 2, a message, no traceback


def csv_config(tmp_path: Path, data: str, *, source: dict | None = None, **top: object) -> Path:
    """A prepare config for the table file `data` (user_id, item_id, click); written as YAML in tmp_path."""
    doc = {
        "name": "input",
        "output_dir": str(tmp_path / "out"),
        "source": {"type": "csv", "path": data, "columns": {"user_id": "int", "item_id": "int", "click": "int"},
                   **(source or {})},
        "features": {"label": "click", "categorical": [{"name": "user_id"}, {"name": "item_id"}]},
        **top,
    }
    path = tmp_path / "input.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def prepare_fails(config: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run `recforge prepare --config config` in-process; assert exit 2, no traceback and no Ray; the message."""
    import feature_store.prepare as prepare_mod

    def no_ray(*args: object) -> None:
        raise AssertionError("Ray started although the input could be judged before")

    monkeypatch.setattr(prepare_mod, "ensure_ray", no_ray)
    rc = main(["prepare", "--config", str(config)])
    out = capsys.readouterr()
    assert rc == 2, out.err
    assert "Traceback" not in out.out + out.err
    assert out.err.startswith("recforge prepare: error: ")
    return out.err


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
                                     "name: x\nsource: Amélie\n".encode("latin-1")])
def test_a_binary_or_latin1_config_file_exits_2_naming_the_file(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    err = prepare_fails(config, capsys, monkeypatch)
    assert f"{config}:" in err and ("not a UTF-8 text file" in err or "binary file, not YAML text" in err)


def test_a_garbage_csv_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    data = tmp_path / "junk.csv"
    data.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    err = prepare_fails(csv_config(tmp_path, str(data)), capsys, monkeypatch)
    assert f"{data}:1: the header has bytes that do not decode as utf-8" in err and "source.encoding" in err


def test_an_empty_csv_exits_2_saying_it_has_no_data_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "empty.csv"
    data.write_text("")
    err = prepare_fails(csv_config(tmp_path, str(data)), capsys, monkeypatch)
    assert f"{data} (source.path): the file has no data rows (it is empty" in err


@pytest.mark.parametrize("kind", ["empty", "truncated"])
def test_an_empty_or_truncated_parquet_exits_2_naming_the_file(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "events.parquet"
    if kind == "empty":
        data.write_bytes(b"")
    else:
        pq.write_table(pa.table({"user_id": range(5000), "item_id": range(5000), "click": [0, 1] * 2500}), data)
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    err = prepare_fails(csv_config(tmp_path, str(data), source={"type": "parquet"}), capsys, monkeypatch)
    assert f"{data}: not a readable Parquet file" in err and "empty, truncated" in err


def test_a_headerless_file_read_with_a_header_exits_2_instead_of_losing_a_row(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "events.csv"
    data.write_text("".join(f"{u},{u % 9},{u % 2}\n" for u in range(480)))
    err = prepare_fails(csv_config(tmp_path, str(data)), capsys, monkeypatch)
    assert f"{data}:1: line 1 ['0', '0', '0'] parses as data" in err and "set source.header: false" in err


def test_a_missing_timestamp_where_one_is_needed_exits_2_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "events.csv"
    data.write_text("user_id,item_id,click\n1,2,1\n")
    err = prepare_fails(csv_config(tmp_path, str(data), split={"method": "time"}), capsys, monkeypatch)
    assert "features.timestamp: column 'ts' is not in the events" in err
    assert "split.method: time needs the event time" in err and "Set features.timestamp to" in err


@pytest.mark.parametrize("command", [["config"], ["train", "ctr"]])
def test_misspelt_model_param_exits_2_naming_line_key_and_valid_keys(command: list[str], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    demo = ROOT / "configs" / "demo.yaml"
    line = demo.read_text().splitlines().index("  model_params:") + 2  # the `dcnv2: {...}` entry below it
    rc = main([*command, "--config", str(demo), "--output-dir", str(tmp_path),
               "--set", "train.model_params.dcnv2.embedding_dimm=8"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{demo}:{line}: train.model_params.dcnv2.embedding_dimm: unknown key" in err
    assert "valid keys: embedding_dim, embedding_backend" in err and "cross_layers" in err
    assert not (tmp_path / "train").exists()  # refused before any work


def test_config_validates_the_params_of_a_model_other_than_the_chosen_one(capsys: pytest.CaptureFixture) -> None:
    rc = main(["config", "--config", str(ROOT / "configs" / "demo.yaml"),
               "--set", "train.model_params.deepfm.dropout=3", "--set", "train.model_params.dfm.mlp=[8]"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train.model_params.deepfm.dropout: Input should be less than 1" in err
    assert "train.model_params.dfm: unknown model" in err and "valid models: dcnv2, deepfm" in err


def test_config_rejects_an_undeclared_tower_feature(capsys: pytest.CaptureFixture) -> None:
    rc = main(["config", "--config", str(ROOT / "configs" / "demo.yaml"),
               "--set", "retrieval.user_features=[user_idd, age_band]"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "retrieval.user_features.0: unknown feature" in err and "declared features: user_id, item_id" in err


NOISE = ("Tip:", "litlogger", "GPU available", "TPU available", "Successfully loaded", "is_fx_tracing", "LeafSpec",
         "Progress bars disabled", "logging interval", "extremely slow", "faiss.loader", "Creating initial MLflow",
         "Token authentication", "MLFlow only allows", "graceful_shutdown", "Traceback")


@pytest.mark.slow
def test_generate_prepare_train_in_a_log_stay_short_without_progress_streams_or_framework_noise(
        tmp_path: Path) -> None:
    small = ["--output-dir", str(tmp_path / "run"), "--set", "source.n_impressions=20000", "--set",
             "source.n_users=800", "--set", "source.n_items=200", "--set", "source.n_categories=6"]
    out = ""
    for args in (["generate"], ["prepare", "--num-cpus", "2"], ["train", "ctr", "--epochs", "2"]):
        res = subprocess.run([sys.executable, "-m", "recforge.cli", *args, "--config", "configs/demo.yaml", *small],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:]
        out += res.stdout
    assert "\r" not in out, "a carriage-return progress stream reached the log"
    lines = out.splitlines()
    assert len(lines) < 100, f"{len(lines)} lines:\n{out}"
    noisy = [line for line in lines if any(n in line for n in NOISE)]
    assert not noisy, "framework noise in the log:\n" + "\n".join(noisy)
    for needle in ("generate done in", "prepare: fit done in", "epoch 1/2 done in", "epoch 2/2 done in",
                   "train/loss", "valid/auc", "Train dcnv2", "test AUC"):
        assert needle in out, f"{needle!r} missing from the log:\n{out}"


def test_gauc_only_where_the_user_key_names_the_user() -> None:
    from recforge.config import gauc_absent_reason, load

    for name in ("demo", "movielens", "retail"):
        assert gauc_absent_reason(load(ROOT / "configs" / f"{name}.yaml")) is None, name
    reason = gauc_absent_reason(load(ROOT / "configs" / "criteo.yaml"))
    assert reason is not None and "features.user_key 'C1'" in reason
    assert gauc_absent_reason(load(ROOT / "configs" / "criteo.yaml", ["train.gauc=true"])) is None
    assert gauc_absent_reason(load(ROOT / "configs" / "demo.yaml", ["train.gauc=false"])) == "train.gauc is false"


def test_early_stopping_on_an_absent_gauc_is_a_config_error(capsys: pytest.CaptureFixture) -> None:
    rc = main(["config", "--config", str(ROOT / "configs" / "criteo.yaml"),
               "--set", "train.early_stopping.metric=valid/gauc"])
    assert rc == 2
    assert "train.early_stopping.metric: gAUC is not computed" in capsys.readouterr().err


def test_the_train_report_says_why_gauc_is_absent() -> None:
    from recforge.report import render

    result = {"model": "dcnv2", "epochs_run": 1, "global_steps": 10, "device": "cpu", "precision": "32-true",
              "test": {"auc": 0.7, "logloss": 0.4, "calibration": 1.01, "gauc_absent": "features.user_key 'C1' "
                       "does not name the user entity"},
              "bundle": "b", "mlflow": {"run_id": "r", "experiment": "e", "tracking_uri": "u"}, "seconds": 1.0}
    text = render("train", result)
    assert "gAUC absent: features.user_key 'C1'" in text and "gAUC 0." not in text
