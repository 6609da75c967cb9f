"""Config validation: unknown keys, wrong types, missing files and overrides give precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from feature_store.config import ConfigError, FeaturesConfig, load_config
from recforge.config import RecForgeConfig, load

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
name: t
output_dir: {out}
source:
  type: synthetic
  n_users: 10
features:
  label: click
  categorical:
    - {{name: user_id}}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text.format(out=tmp_path / "out"))
    return p


@pytest.mark.parametrize("name", ["demo.yaml", "movielens.yaml", "retail.yaml", "criteo.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load(ROOT / "configs" / name)
    assert cfg.name == name.removesuffix(".yaml")


def test_unknown_key_names_file_line_and_path(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL.replace("  n_users: 10", "  n_users: 10\n  n_userz: 3"))
    with pytest.raises(ConfigError) as err:
        load(p)
    msg = str(err.value)
    assert f"{p}:6: source.n_userz: unknown key" in msg


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL.replace("n_users: 10", "n_users: many"))
    with pytest.raises(ConfigError) as err:
        load(p)
    assert f"{p}:5: source.n_users:" in str(err.value)
    assert "'many'" in str(err.value)


def test_missing_required_key_is_reported(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL.replace("  label: click\n", ""))
    with pytest.raises(ConfigError, match=r"features.label: required key is missing"):
        load(p)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nsource: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load(p)


def test_overrides_apply_before_validation(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL)
    cfg = load(p, ["source.n_users=99", "prepare.ray_address=auto", "split.method=time"])
    assert cfg.source.n_users == 99
    assert cfg.prepare.ray_address == "auto"
    assert cfg.split.method == "time"
    with pytest.raises(ConfigError, match=r"split\.method"):
        load(p, ["split.method=sideways"])


def test_sequence_source_must_be_a_categorical_feature() -> None:
    with pytest.raises(Exception, match="source 'nope' is not a categorical feature"):
        FeaturesConfig.model_validate({"label": "y", "sequence": [{"name": "h", "source": "nope"}]})


def test_duplicate_feature_names_are_rejected() -> None:
    with pytest.raises(Exception, match="repeated"):
        FeaturesConfig.model_validate({"label": "y", "categorical": [{"name": "a"}], "numeric": [{"name": "a"}]})


def test_load_config_accepts_in_memory_data(tmp_path: Path) -> None:
    data = {"name": "x", "output_dir": str(tmp_path), "source": {"type": "criteo", "path": "x.tsv"},
            "features": {"label": "label"}}
    cfg = load_config(None, RecForgeConfig, data=data)
    assert cfg.source.type == "criteo"


def test_a_binary_or_non_utf8_config_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: x\noutput_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml:2: not a UTF-8 text file \(byte 0xe9"):
        load(latin)
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"name\x00\x01\x02\x03")
    with pytest.raises(ConfigError, match=r"model\.bin:1: a NUL byte: this is a binary file, not YAML text"):
        load(binary)


CSV_SOURCE = """\
  type: csv
  path: train.csv
  columns: {{user_id: int, click: int}}
"""


def test_files_split_needs_its_files_and_a_table_source(tmp_path: Path) -> None:
    csv = MINIMAL.replace("  type: synthetic\n  n_users: 10\n", CSV_SOURCE)
    cfg = load(write(tmp_path, csv), ["split.method=files", "split.files.test=test.csv"])
    assert cfg.split.files is not None and cfg.split.files.test == "test.csv" and cfg.split.files.valid is None
    with pytest.raises(ConfigError, match=r"split: .*method 'files' needs split\.files\.test"):
        load(write(tmp_path, csv), ["split.method=files"])
    with pytest.raises(ConfigError, match=r"split\.files applies to method 'files' only"):
        load(write(tmp_path, csv), ["split.files.test=test.csv"])
    with pytest.raises(ConfigError, match=r"needs a csv, tsv or parquet source; source\.type is 'synthetic'"):
        load(write(tmp_path, MINIMAL), ["split.method=files", "split.files.test=test.csv"])


def test_unknown_text_encoding_is_a_config_error(tmp_path: Path) -> None:
    csv = MINIMAL.replace("  type: synthetic\n  n_users: 10\n", CSV_SOURCE + "  encoding: latin-9000\n")
    with pytest.raises(ConfigError, match=r"source\.encoding: .*unknown text encoding 'latin-9000'"):
        load(write(tmp_path, csv))
