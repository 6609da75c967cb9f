"""`recforge init --from FILE`: a drafted config that runs `prepare` and `train ctr` unchanged, and its inferences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from recforge.cli import main
from recforge.draft import draft_config, train_budget
from tests.conftest import dataset

SHIPPED = [
    # (data set, file, --label): the first positional label is a 1-based column (the file has no header)
    ("ml-100k", "u.data", "3"),
    ("taobao-userbehavior-head", "UserBehavior_head.csv", "4"),
    ("cdnow", "CDNOW_master.txt", "number_of_cds"),
    ("online-retail", "online_retail.parquet", "Quantity"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "file", "label"), SHIPPED, ids=[s[0] for s in SHIPPED])
def test_a_config_drafted_from_each_shipped_file_prepares_and_trains_unchanged(
    name: str, file: str, label: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = dataset(name) / file
    config = tmp_path / "drafted.yaml"
    assert main(["init", "--from", str(path), "--label", label, "--output", str(config)]) == 0
    assert "next: recforge prepare --config" in capsys.readouterr().out
    drafted = yaml.safe_load(config.read_text())
    out = tmp_path / "run"
    # only where the outputs go and how many CPUs Ray may take change; the drafted keys run as written
    common = ["--config", str(config), "--set", f"output_dir={out}", "--json"]
    assert main(["prepare", *common]) == 0, capsys.readouterr().err
    prepared = json.loads(capsys.readouterr().out)
    assert prepared["events_kept"] > 0.9 * sum(prepared["rows_read"].values()), prepared["rejected_by_reason"]
    assert prepared["split"]["method"] == drafted["split"]["method"]
    assert main(["train", "ctr", *common]) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["epochs_run"] >= 1 and result["global_steps"] > 0
    assert 0.5 < result["test"]["auc"] <= 1.0, result["test"]
    assert drafted["train"]["batch_size"] in (256, 512, 1024, 2048, 4096)


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def test_a_headerless_file_gets_drafted_names_and_a_header_false(tmp_path: Path) -> None:
    rows = "\n".join(f"{u},{(7 * u + i) % 97},{u % 5 + 1},{1_600_000_000 + 3600 * u + i}"
                     for u in range(200) for i in range(3))
    cfg, text = draft_config(_write(tmp_path, "r.csv", rows + "\n"), label="3")
    src = cfg["source"]
    assert src["header"] is False
    assert list(src["columns"]) == ["user_id", "item_id", "col_3", "ts"]
    assert src["columns"]["ts"] == "timestamp" and cfg["split"]["method"] == "time"
    assert cfg["features"]["user_key"] == "user_id" and cfg["features"]["item_key"] == "item_id"
    assert src["label"] == {"column": "col_3", "threshold": 3}
    assert "no header line" in text


def test_a_header_is_recognised_when_line_one_does_not_parse_as_the_column_types(tmp_path: Path) -> None:
    body = "\n".join(f"{u};{u * 0.5};{'ab'[u % 2]};{u % 2}" for u in range(100))
    cfg, _ = draft_config(_write(tmp_path, "h.csv", "customer id;spend;kind;clicked\n" + body + "\n"))
    src = cfg["source"]
    assert src["header"] is True and src["delimiter"] == ";"
    assert src["columns"] == {"customer id": "int", "spend": "float", "kind": "string", "clicked": "int"}
    assert src["label"] == {"column": "clicked", "threshold": 1}  # found by name, 0/1
    assert cfg["features"]["user_key"] == "customer id"
    assert cfg["split"]["method"] == "random" and "timestamp" not in src["columns"].values()


def test_ids_beyond_int64_and_hex_digests_are_drafted_as_strings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ads = [f"{a:016x}" for a in rng.integers(0, 2**63, 50)]
    big = [str(10**19 + int(b)) for b in rng.integers(0, 10**6, 50)]
    lines = ["ad,big_id,label"] + [f"{ads[k % 50]},{big[k % 50]},{k % 2}" for k in range(300)]
    cfg, _ = draft_config(_write(tmp_path, "ids.csv", "\n".join(lines) + "\n"))
    assert cfg["source"]["columns"]["ad"] == "string"
    assert cfg["source"]["columns"]["big_id"] == "string"


def test_a_latin1_file_is_drafted_with_its_encoding(tmp_path: Path) -> None:
    text = "title,y\n" + "\n".join(f"Amélie {k % 7},{k % 2}" for k in range(50)) + "\n"
    cfg, _ = draft_config(_write(tmp_path, "l.csv", text.encode("latin-1")))
    assert cfg["source"]["encoding"] == "latin-1"


def test_a_text_label_makes_every_value_but_the_most_common_a_positive(tmp_path: Path) -> None:
    acts = ["pv"] * 80 + ["buy"] * 5 + ["cart"] * 10 + ["fav"] * 5
    text = "user,item,behavior\n" + "\n".join(f"{k % 9},{k % 13},{a}" for k, a in enumerate(acts)) + "\n"
    cfg, _ = draft_config(_write(tmp_path, "b.csv", text), label="behavior")
    assert cfg["source"]["label"] == {"column": "behavior", "positive_values": ["buy", "cart", "fav"]}


def test_row_ids_are_left_out_and_said_so(tmp_path: Path) -> None:
    table = pa.table({"row_id": np.arange(1000), "user_id": np.arange(1000) % 50, "x": np.linspace(0, 1, 1000),
                      "label": np.arange(1000) % 2})
    pq.write_table(table, tmp_path / "t.parquet")
    cfg, text = draft_config(tmp_path / "t.parquet")
    assert "row_id" not in cfg["source"]["columns"]
    assert "left out: 'row_id'" in text
    assert cfg["features"]["numeric"] == [{"name": "x", "transform": "standardize"}]


def test_training_budget_grows_the_batch_with_the_data_and_keeps_about_600_steps() -> None:
    assert train_budget(8_000)[:2] == (256, 24)
    assert train_budget(100_000)[:2] == (256, 3)
    b, e, _ = train_budget(2_000_000)
    assert b == 4096 and e == 3


def test_no_label_column_is_an_error_that_lists_the_columns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = _write(tmp_path, "n.csv", "a,b\n" + "\n".join(f"{k},{k * 2}" for k in range(20)) + "\n")
    assert main(["init", "--from", str(p), "--output", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "--label COL" in err and "a, b" in err


@pytest.mark.parametrize("content", [b"\x00\x01\x02binary\x00" * 50, b"only one line\n"])
def test_unusable_files_exit_2_with_a_message(tmp_path: Path, content: bytes,
                                              capsys: pytest.CaptureFixture) -> None:
    p = _write(tmp_path, "bad.csv", content)
    assert main(["init", "--from", str(p), "--output", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recforge init: error:") and "Traceback" not in err


def test_an_existing_output_is_not_overwritten_without_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = _write(tmp_path, "c.csv", "u,label\n" + "\n".join(f"{k},{k % 2}" for k in range(30)) + "\n")
    out = _write(tmp_path, "keep.yaml", "mine: true\n")
    assert main(["init", "--from", str(p), "--output", str(out)]) == 2
    assert out.read_text() == "mine: true\n" and "--force" in capsys.readouterr().err
    assert main(["init", "--from", str(p), "--output", str(out), "--force"]) == 0
    assert yaml.safe_load(out.read_text())["source"]["type"] == "csv"
