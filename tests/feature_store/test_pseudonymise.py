"""Pseudonymisation at ingestion: the key's checks, the pseudonyms' form, and that the readers, event ingestion and
the rejects log hold no raw id once it is on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from feature_store import pseudonymise
from feature_store.config import ConfigError, PseudonymisationConfig
from feature_store.pseudonymise import Pseudonymiser, PseudonymKeyError
from recforge.cli import main
from recforge.config import load

KEY = "k3y-for-tests-only-0123456789abcdef0123456789"
FIRST = 7_310_000_000_001  # distinctive raw ids: their digits cannot turn up by chance


def test_a_missing_key_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RF_TEST_KEY", raising=False)
    with pytest.raises(PseudonymKeyError, match=r"RF_TEST_KEY.*is not set"):
        pseudonymise.load(PseudonymisationConfig(enabled=True, key_env="RF_TEST_KEY"))


def test_a_short_key_is_refused_with_its_length(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RF_TEST_KEY", "short-key")
    with pytest.raises(PseudonymKeyError, match=r"has 9 bytes, fewer than pseudonymisation\.min_key_bytes"):
        pseudonymise.load(PseudonymisationConfig(enabled=True, key_env="RF_TEST_KEY"))


def test_a_key_file_readable_by_others_is_refused_and_a_private_one_is_used(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text(KEY + "\n")
    os.chmod(f, 0o644)
    cfg = PseudonymisationConfig(enabled=True, key_file=str(f))
    with pytest.raises(PseudonymKeyError, match="chmod 600"):
        pseudonymise.load(cfg)
    os.chmod(f, 0o600)
    p = pseudonymise.load(cfg)
    assert p is not None and p.key == KEY.encode()
    assert pseudonymise.load(PseudonymisationConfig()) is None  # off by default


def test_pseudonyms_keep_the_column_type_agree_across_types_and_keep_nulls() -> None:
    p = Pseudonymiser(KEY.encode())
    ints = p.array(pa.array([FIRST, None, FIRST, 5]))
    texts = p.array(pa.array([str(FIRST), None]))
    assert ints.type == pa.int64() and texts.type == pa.string()
    assert ints[0].as_py() == ints[2].as_py() == int(texts[0].as_py()) == p.value(FIRST)
    assert ints[1].as_py() is None and texts[1].as_py() is None
    assert ints[0].as_py() != FIRST and 0 <= ints[3].as_py() < 2**63
    other = Pseudonymiser(b"another-key-of-enough-length-0123456789")
    assert other.value(FIRST) != p.value(FIRST) and other.key_id != p.key_id
    assert KEY not in repr(p)


def test_personal_columns_are_normalised_before_hashing() -> None:
    p = Pseudonymiser(KEY.encode(), ("email",))
    out = p.array(pa.array([" Ann@Example.com", "ann@example.com"]), personal=True)
    assert out[0] == out[1]
    table, done = p.table(pa.table({"user_id": [FIRST], "email": ["a@b.c"], "x": [1]}), {"user_id"})
    assert done == ["user_id", "email"] and table.column("x").to_pylist() == [1]
    assert pseudonymise.marked(table.schema) == (p.key_id, ["email", "user_id"])


def _config(tmp_path: Path, **extra: str) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""\
name: pz
output_dir: {tmp_path / 'out'}
source: {{type: synthetic, n_users: 300, n_items: 80, n_impressions: 6000, days: 8, first_user_id: {FIRST},
          personal_columns: true}}
features:
  label: click
  categorical: [{{name: user_id}}, {{name: item_id}}, {{name: channel}}]
  sequence: [{{name: hist_item_id, source: item_id, max_len: 5}}]
pseudonymisation: {{enabled: true, key_env: RF_TEST_KEY, columns: [email, phone]}}
{extra.get('more', '')}""")
    return cfg


def _raw_ids() -> set[int]:
    return set(range(FIRST, FIRST + 300))


def test_the_reader_hands_on_no_raw_user_id_email_or_phone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from feature_store.readers import read_scenario_source

    monkeypatch.setenv("RF_TEST_KEY", KEY)
    cfg = load(_config(tmp_path))
    raw = read_scenario_source(cfg, tmp_path / "raw")
    raw_ids = _raw_ids()
    for name, table in raw.tables.items():
        if "user_id" in table.column_names:
            assert not raw_ids & set(table.column("user_id").to_pylist()), name
    users = raw.tables["users"]
    assert not any("@example.com" in e for e in users.column("email").to_pylist())
    assert not any(p.startswith("+1555") for p in users.column("phone").to_pylist())
    assert raw.pseudonymised == {"key_id": Pseudonymiser(KEY.encode()).key_id,
                                 "columns": ["email", "phone", "user_id"]}


def test_prepare_without_the_key_stops_before_reading_with_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("RF_TEST_KEY", raising=False)
    assert main(["prepare", "-c", str(_config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "RF_TEST_KEY" in err and "openssl rand -hex 32" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "prepared").exists()


def test_ingested_events_and_their_dead_letters_hold_pseudonyms_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from feature_store.events.ingest import read_log

    monkeypatch.setenv("RF_TEST_KEY", KEY)
    cfg_path = _config(tmp_path)
    good = [{"event_id": f"e{i}", "ts": 1_760_000_000 + i, "user_id": FIRST + i, "item_id": 3, "type": "click",
             "context": {"email": f"user{FIRST + i}@example.com"}} for i in range(5)]
    bad = {"event_id": "b", "ts": 1, "user_id": FIRST + 99, "item_id": 3, "type": "no-such-type"}
    f = tmp_path / "events.jsonl"
    f.write_text("\n".join(json.dumps(e) for e in [*good, bad]) + "\n{not json " + str(FIRST + 98) + "\n")
    assert main(["events", "push", str(f), "-c", str(cfg_path), "--json"]) == 0
    assert main(["stream", "run", "-c", str(cfg_path), "--until-idle", "--json"]) == 0
    assert main(["events", "rejected", "-c", str(cfg_path), "--json"]) == 0
    out = capsys.readouterr().out
    assert str(FIRST)[:10] not in out and "@example.com" not in out
    p = Pseudonymiser(KEY.encode(), ("email", "phone"))
    log = read_log(tmp_path / "out" / "events" / "log", "int")
    assert sorted(log.column("user_id").to_pylist()) == sorted(p.value(FIRST + i) for i in range(5))
    assert all(p.value(f"user{FIRST}@example.com", personal=True) != c for c in log.column("context").to_pylist())
    assert all("@example.com" not in c for c in log.column("context").to_pylist())
    for path in (tmp_path / "out").rglob("*"):  # the bus, the dead letters, the online store, the log
        if path.is_file():
            assert str(FIRST)[:10].encode() not in path.read_bytes(), path


def test_prepare_writes_rejects_without_their_raw_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from feature_store.readers import pseudonymise_raw
    from feature_store.readers.base import RawData
    from feature_store.rejects import Rejects

    monkeypatch.setenv("RF_TEST_KEY", KEY)
    cfg = load(_config(tmp_path))
    rejects = Rejects()
    rejects.add("in.csv", [3], "missing required id: item_id", [f"{FIRST},,x"])
    raw = pseudonymise_raw(RawData({"events": pa.table({"user_id": [FIRST]})}, {"events": 2}, rejects), cfg)
    row = raw.rejects.to_table().to_pylist()[0]
    assert row["line"] == 3 and row["raw"] == pseudonymise.WITHHELD


def test_the_config_never_takes_the_key_itself(tmp_path: Path) -> None:
    with pytest.raises((ConfigError, ValueError), match="key"):
        PseudonymisationConfig.model_validate({"enabled": True, "key": KEY})


def test_serve_refuses_a_key_other_than_the_datas_and_hashed_data_without_a_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Served with another key (or none), every request's user id would miss the stores and be answered as an
    unknown user: `recforge serve` refuses before starting anything."""
    cfg_path = _config(tmp_path)
    summary = tmp_path / "out" / "prepared" / "summary.json"
    summary.parent.mkdir(parents=True)
    data_key = Pseudonymiser(b"the-key-the-data-was-hashed-with-0123456789")
    summary.write_text(json.dumps({"pseudonymised": {"key_id": data_key.key_id, "columns": ["user_id"]}}))
    monkeypatch.setenv("RF_TEST_KEY", KEY)
    assert main(["serve", "-c", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert data_key.key_id in err and "use that key" in err
    assert main(["serve", "-c", str(cfg_path), "--set", "pseudonymisation.enabled=false"]) == 2
    assert "pseudonymisation is off" in capsys.readouterr().err
    summary.write_text(json.dumps({"pseudonymised": None}))
    assert main(["serve", "-c", str(cfg_path)]) == 2
    assert "holds raw ids" in capsys.readouterr().err
