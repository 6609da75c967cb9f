"""`recforge report` and `recforge cleanroom` end to end through the CLI: suppression under k, the ledger's refusal
at exhaustion (nothing released, ledger unchanged), pseudonymised parties joined with only aggregates leaving, and
every refusal (unhashed ids, another key, ids as a group, k below the floor) as a message with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge.cli import main

KEY = "clean-room-shared-key-for-tests-0123456789"

BASE = """\
name: pv
output_dir: {out}
source: {{type: synthetic, n_users: 50, n_items: 20, n_impressions: 500}}
features:
  label: click
  categorical: [{{name: user_id}}, {{name: item_id}}]
"""


def _people(path: Path, n: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "user_id": np.arange(n),
        "segment": rng.choice(["loyal", "new", "lapsed"], n, p=[0.5, 0.4, 0.1]),
        "region": rng.choice(["north", "south", "east", "tiny"], n, p=[0.45, 0.45, 0.095, 0.005]),
        "revenue": rng.gamma(2.0, 40.0, n),
    })
    df.to_parquet(path)
    return df


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict | str]:
    code = main([*argv, "--json"])
    cap = capsys.readouterr()
    return code, json.loads(cap.out) if code == 0 else cap.err


def _config(tmp_path: Path, privacy: str) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(BASE.format(out=tmp_path / "out") + privacy)
    return cfg


def test_an_exact_report_suppresses_cells_under_k_and_their_complements(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = _people(tmp_path / "people.parquet")
    cfg = _config(tmp_path, f"""\
privacy:
  datasets: {{people: {{path: {tmp_path / 'people.parquet'}}}}}
  queries:
    by_region: {{dataset: people, group_by: [region], mechanism: none, k: 10,
                 measures: [{{name: people, kind: people}}, {{name: revenue, kind: sum, column: revenue, lower: 0,
                              upper: 1000}}]}}
""")
    code, out = _run(capsys, "report", "run", "by_region", "-c", str(cfg))
    assert code == 0, out
    rows = {r["region"]: r for r in out["rows"]}
    truth = df.groupby("region").agg(people=("user_id", "nunique"), revenue=("revenue", "sum"))
    assert truth.loc["tiny", "people"] < 10
    assert rows["tiny"]["suppressed"] and rows["tiny"]["reason"] == "under k" and rows["tiny"]["people"] is None
    hidden = [r for r in out["rows"] if r["reason"] == "complementary"]
    assert len(hidden) == 1 and hidden[0]["region"] == "east"  # the next smallest: the total cannot reveal tiny
    assert rows["north"]["people"] == truth.loc["north", "people"]
    assert rows["north"]["revenue"] == pytest.approx(truth.loc["north", "revenue"])
    assert out["budget"]["spent_epsilon"] == 0 and out["budget"]["queries"] == 0  # exact: not a DP spend
    html = Path(out["outputs"]["html"]).read_text()
    assert "suppressed" in html and "user_id" not in json.dumps(out["rows"])


def test_the_ledger_refuses_exactly_at_exhaustion_and_stays_unchanged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _people(tmp_path / "people.parquet")
    cfg = _config(tmp_path, f"""\
privacy:
  budget: {{epsilon: 1.0, delta: 0}}
  datasets: {{people: {{path: {tmp_path / 'people.parquet'}}}}}
  queries:
    by_segment: {{dataset: people, group_by: [segment], epsilon: 0.25, k: 5,
                  keys: {{segment: [loyal, new, lapsed]}}}}
""")
    for i in range(4):
        code, out = _run(capsys, "report", "run", "by_segment", "-c", str(cfg))
        assert code == 0, out
        assert out["budget"]["spent_epsilon"] == pytest.approx(0.25 * (i + 1))
    releases = sorted((tmp_path / "out" / "privacy" / "releases").glob("*.json"))
    code, err = _run(capsys, "report", "run", "by_segment", "-c", str(cfg))
    assert code == 2 and "refused" in err and "ledger unchanged" in err and "Traceback" not in err
    assert sorted((tmp_path / "out" / "privacy" / "releases").glob("*.json")) == releases
    code, ledger = _run(capsys, "report", "budget", "-c", str(cfg))
    (people,) = ledger["datasets"]
    assert people["spent_epsilon"] == 1.0 and people["remaining_epsilon"] == 0 and len(people["history"]) == 4


def test_a_person_column_as_group_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _people(tmp_path / "people.parquet")
    cfg = _config(tmp_path, f"""\
privacy:
  datasets: {{people: {{path: {tmp_path / 'people.parquet'}}}}}
  queries:
    rows: {{dataset: people, group_by: [user_id], mechanism: none}}
""")
    code, err = _run(capsys, "report", "run", "rows", "-c", str(cfg))
    assert code == 2 and "user_id" in err and "cannot be a group_by" in err


# ------------------------------------------------------------------------------------------------ clean room
def _parties(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(3)
    emails = [f"person{i}@shop.example" for i in range(3000)]
    adv = pd.DataFrame({"email": emails[:2000], "segment": rng.choice(["gold", "silver"], 2000),
                        "converted": rng.random(2000) < 0.1})
    exposed = emails[1000:3000]  # half of the advertiser's customers were exposed
    pub = pd.DataFrame({"Email": [f"  {e.upper()} " for e in exposed],  # typed differently: normalised before hashing
                        "campaign": rng.choice(["spring", "summer"], len(exposed))})
    adv.loc[adv["email"].isin(exposed), "converted"] = rng.random(int(adv["email"].isin(exposed).sum())) < 0.2
    adv.to_csv(tmp_path / "advertiser.csv", index=False)
    pub.to_csv(tmp_path / "publisher.csv", index=False)
    return adv, pub


def _cleanroom_config(tmp_path: Path, adv: str, pub: str, extra: str = "") -> Path:
    return _config(tmp_path, f"""\
privacy:
  cleanroom:
    advertiser: {{path: {adv}, id_column: email, columns: [segment, converted]}}
    publisher: {{path: {pub}, id_column: Email, columns: [campaign]}}
    key_env: RF_CLEANROOM_KEY
    k: 20
    epsilon: 0.5
    budget: {{epsilon: 3.0, delta: 1.0e-5}}
    segment_column: segment
    converted_column: converted
{extra}""")


def test_the_clean_room_releases_only_aggregates_of_the_pseudonymised_join(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RF_CLEANROOM_KEY", KEY)
    _parties(tmp_path)
    for side, col in (("advertiser", "email"), ("publisher", "Email")):
        code, out = _run(capsys, "pseudonymise", str(tmp_path / f"{side}.csv"), "--id-column", col, "--out",
                         str(tmp_path / f"{side}.parquet"), "--key-env", "RF_CLEANROOM_KEY")
        assert code == 0, out
    cfg = _cleanroom_config(tmp_path, str(tmp_path / "advertiser.parquet"), str(tmp_path / "publisher.parquet"))
    code, out = _run(capsys, "cleanroom", "run", "-c", str(cfg))
    assert code == 0, out
    rel = {r["query"]["name"]: r for r in out["releases"]}
    overlap = {r["membership"]: r for r in rel["overlap"]["rows"]}
    assert abs(overlap["both"]["people"] - 1000) < 60  # Laplace, epsilon 0.5 split over one count: scale 2
    lift = rel["conversion_lift"]["lift"]
    assert lift is not None and lift["lift_low"] < lift["lift"] < lift["lift_high"] and lift["lift"] > 0.4
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written
    for path in written:  # no email, hashed or not, and no joined row anywhere
        text = path.read_bytes()
        assert b"shop.example" not in text and b"pseudonym\"" not in text, path
    assert out["budget"]["spent_epsilon"] == pytest.approx(1.5)


def test_the_clean_room_refuses_unhashed_ids_another_key_and_rows_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _parties(tmp_path)
    monkeypatch.setenv("RF_CLEANROOM_KEY", "another-key-of-enough-length-9876543210")
    assert main(["pseudonymise", str(tmp_path / "publisher.csv"), "--id-column", "Email", "--out",
                 str(tmp_path / "publisher.parquet"), "--key-env", "RF_CLEANROOM_KEY"]) == 0
    monkeypatch.setenv("RF_CLEANROOM_KEY", KEY)
    assert main(["pseudonymise", str(tmp_path / "advertiser.csv"), "--id-column", "email", "--out",
                 str(tmp_path / "advertiser.parquet"), "--key-env", "RF_CLEANROOM_KEY"]) == 0
    pd.read_csv(tmp_path / "advertiser.csv").to_parquet(tmp_path / "raw.parquet")  # ids in the clear
    capsys.readouterr()

    code, err = _run(capsys, "cleanroom", "run", "-c", str(_cleanroom_config(
        tmp_path, str(tmp_path / "raw.parquet"), str(tmp_path / "publisher.parquet"))))
    assert code == 2 and "unhashed ids" in err and "recforge pseudonymise" in err
    code, err = _run(capsys, "cleanroom", "run", "-c", str(_cleanroom_config(
        tmp_path, str(tmp_path / "advertiser.parquet"), str(tmp_path / "publisher.parquet"))))
    assert code == 2 and "another key" in err
    cfg = _cleanroom_config(tmp_path, str(tmp_path / "advertiser.parquet"), str(tmp_path / "publisher.parquet"))
    cfg.write_text(cfg.read_text().replace("    k: 20\n", "    k: 1\n"))
    code, err = _run(capsys, "cleanroom", "run", "-c", str(cfg))
    assert code == 2 and "privacy.cleanroom.k" in err
    with pytest.raises(SystemExit):  # there is no option that exports rows
        main(["cleanroom", "run", "--rows", "-c", str(tmp_path / "cfg.yaml")])
    assert not (tmp_path / "out" / "privacy" / "cleanroom").exists()


def test_pseudonymise_without_the_key_is_refused_naming_the_variable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RF_CLEANROOM_KEY", raising=False)
    _parties(tmp_path)
    code = main(["pseudonymise", str(tmp_path / "advertiser.csv"), "--id-column", "email", "--out",
                 str(tmp_path / "a.parquet"), "--key-env", "RF_CLEANROOM_KEY"])
    assert code == 2 and "RF_CLEANROOM_KEY" in capsys.readouterr().err and not (tmp_path / "a.parquet").exists()
