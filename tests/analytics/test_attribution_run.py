"""`recforge attribution` end to end: on generated journeys the run writes its outputs and shows Markov and Shapley
close to the truth and last touch far from it; on files it reproduces the in-memory attribution; a missing file or
column is a ConfigError naming the config key."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from analytics.attribution import attribute
from analytics.run_attribution import run_attribution
from feature_store.config import ConfigError
from feature_store.readers.journeys import generate_journeys
from recforge import config as config_mod
from recforge.config import feature_store_config, tracking_uri

JOURNEYS = 20_000


def scenario(tmp_path: Path, *overrides: str) -> config_mod.RecForgeConfig:
    return config_mod.load("configs/retail.yaml", [f"output_dir={tmp_path}", *overrides], models=False)


def test_attribution_run_on_generated_journeys_writes_outputs_and_markov_and_shapley_follow_the_truth_unlike_last_touch(
        tmp_path: Path) -> None:
    cfg = scenario(tmp_path, f"analytics.attribution.journeys={JOURNEYS}")
    out = run_attribution(feature_store_config(cfg), cfg.analytics, tracking_uri=tracking_uri(cfg),
                          scenario=cfg.name)
    for name in ("credit", "truth", "markdown", "html", "json"):
        assert Path(out["outputs"][name]).is_file(), name
    plots = Path(out["outputs"]["markdown"]).parent / "plots"
    assert (plots / "credit_shares.png").is_file() and (plots / "markov_removal.png").is_file()
    rho = out["spearman"]
    assert rho["markov"] > 0.9 and rho["shapley"] > 0.9
    assert rho["last_touch"] < min(rho["markov"], rho["shapley"])
    assert out["comparison"]["default_share_error"] > out["share_error"]["shapley"]
    assert out["journeys"] == JOURNEYS and out["shapley"]["mode"] == "exact"
    credit = pq.read_table(out["outputs"]["credit"])
    assert credit.num_rows == 6 * len(out["channels"])
    assert pq.read_table(out["outputs"]["truth"]).num_rows == len(out["channels"])
    md = Path(out["outputs"]["markdown"]).read_text()
    assert "Last touch is the usual default" in md and "exact over all subsets" in md
    assert json.loads(Path(out["outputs"]["json"]).read_text())["spearman"]["markov"] == pytest.approx(rho["markov"])
    run = mlflow.MlflowClient(tracking_uri=tracking_uri(cfg)).get_run(out["mlflow_run"])
    assert run.data.tags["recforge.analysis"] == "attribution"
    assert run.data.metrics["spearman_shapley"] == pytest.approx(rho["shapley"])


def test_monte_carlo_shapley_is_reported_with_its_standard_error(tmp_path: Path) -> None:
    cfg = scenario(tmp_path, "analytics.attribution.journeys=5000", "analytics.attribution.exact_max_channels=4",
                   "analytics.attribution.permutations=200")
    out = run_attribution(feature_store_config(cfg), cfg.analytics, tracking_uri=None, scenario=cfg.name)
    assert out["shapley"]["mode"] == "monte_carlo" and out["shapley"]["max_stderr_conversions"] > 0
    assert "Monte Carlo over 200 random channel orders" in Path(out["outputs"]["markdown"]).read_text()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_files_run_reproduces_the_in_memory_attribution(tmp_path: Path, fmt: str) -> None:
    gen = generate_journeys(3_000, seed=11, channels=5)
    touch, outcomes = tmp_path / f"touch.{fmt}", tmp_path / f"outcomes.{fmt}"
    journeys = gen.journeys.select(["journey_id", "converted", "value"])
    if fmt == "parquet":
        pq.write_table(gen.touchpoints, touch)
        pq.write_table(journeys, outcomes)
    else:
        pacsv.write_csv(gen.touchpoints, touch)
        pacsv.write_csv(journeys, outcomes)
    cfg = scenario(tmp_path, f"analytics.attribution.touchpoints={touch}", f"analytics.attribution.outcomes={outcomes}")
    ac = cfg.analytics.attribution
    out = run_attribution(feature_store_config(cfg), cfg.analytics, tracking_uri=None, scenario=cfg.name)
    expected = attribute(gen.touchpoints, gen.journeys, half_life_days=ac.half_life_days,
                         exact_max_channels=ac.exact_max_channels, permutations=ac.permutations, seed=ac.seed,
                         markov_order=ac.markov_order)
    got = pq.read_table(out["outputs"]["credit"]).to_pandas()
    want = expected.table.to_pandas()
    assert got[["method", "channel"]].equals(want[["method", "channel"]])
    for col in ("conversions", "conversion_share", "value", "value_share"):
        assert got[col].to_numpy() == pytest.approx(want[col].to_numpy(), rel=1e-9, abs=1e-9)
    assert out["source"] == "files" and out["truth"] is None and out["spearman"] is None
    assert "truth" not in out["outputs"]
    assert str(touch) in Path(out["outputs"]["markdown"]).read_text()


def test_a_missing_touchpoints_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    outcomes = tmp_path / "outcomes.parquet"
    pq.write_table(generate_journeys(100, seed=1, channels=3).journeys, outcomes)
    cfg = scenario(tmp_path, f"analytics.attribution.touchpoints={tmp_path / 'nope.parquet'}",
                   f"analytics.attribution.outcomes={outcomes}")
    with pytest.raises(ConfigError, match=r"analytics\.attribution\.touchpoints: file .*nope\.parquet not found"):
        run_attribution(feature_store_config(cfg), cfg.analytics, tracking_uri=None, scenario=cfg.name)


def test_a_file_without_a_required_column_is_a_config_error_naming_the_key_and_the_column(tmp_path: Path) -> None:
    gen = generate_journeys(100, seed=1, channels=3)
    touch, outcomes = tmp_path / "touch.parquet", tmp_path / "outcomes.parquet"
    pq.write_table(gen.touchpoints, touch)
    pq.write_table(gen.journeys.drop(["value"]), outcomes)
    cfg = scenario(tmp_path, f"analytics.attribution.touchpoints={touch}", f"analytics.attribution.outcomes={outcomes}")
    with pytest.raises(ConfigError, match=r"analytics\.attribution\.outcomes: file .*outcomes\.parquet has no "
                                          r"column\(s\) \['value'\]"):
        run_attribution(feature_store_config(cfg), cfg.analytics, tracking_uri=None, scenario=cfg.name)
