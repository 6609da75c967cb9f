"""`recforge budget` end to end: the shipped retail example solves, the run writes its tables, report and MLflow
run, and a missing or unsatisfiable budget section is a ConfigError telling the user what to change."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from analytics.budget import solve_budget
from analytics.run_budget import run_budget
from feature_store.config import ConfigError
from recforge import config as config_mod
from recforge.config import feature_store_config, tracking_uri


def scenario(tmp_path: Path, *overrides: str) -> config_mod.RecForgeConfig:
    return config_mod.load("configs/retail.yaml", [f"output_dir={tmp_path}", *overrides], models=False)


def test_the_shipped_retail_budget_solves_with_the_budget_binding_at_a_marginal_return_above_one(
        tmp_path: Path) -> None:
    budget = scenario(tmp_path).analytics.budget
    assert budget is not None
    res = solve_budget(budget)
    total = res.constraint("total_budget")
    assert total.binding and res.total_spend == pytest.approx(budget.total_budget)
    assert total.shadow_price > 1.0  # one more unit of money still returns more than it costs
    assert res.objective == pytest.approx(res.total_return) and res.objective > res.total_spend
    assert res.constraint("channel 'display' min_volume").binding  # the committed contract is bought, no more


def test_budget_run_writes_tables_report_and_mlflow_run_and_the_report_names_the_binding_constraints(
        tmp_path: Path) -> None:
    cfg = scenario(tmp_path)
    out = run_budget(feature_store_config(cfg), cfg.analytics, tracking_uri=tracking_uri(cfg), scenario=cfg.name)
    for name in ("allocation", "channels", "constraints", "markdown", "html", "json"):
        assert Path(out["outputs"][name]).is_file(), name
    assert (Path(out["outputs"]["markdown"]).parent / "plots" / "allocation.png").is_file()
    assert (Path(out["outputs"]["markdown"]).parent / "plots" / "shadow_prices.png").is_file()
    constraints = pq.read_table(out["outputs"]["constraints"]).to_pylist()
    assert {c["name"] for c in constraints} == {c["name"] for c in out["constraints"]}
    assert pq.read_table(out["outputs"]["channels"]).num_rows == len(cfg.analytics.budget.channels)
    assert out["totals"]["spend"] == pytest.approx(out["objective"] / out["totals"]["roi"])
    binding = [b["name"] for b in out["binding"]]
    assert "total_budget" in binding
    md = Path(out["outputs"]["markdown"]).read_text()
    html = Path(out["outputs"]["html"]).read_text()
    for name in binding:
        assert name in md and name.replace("'", "&#39;") in html
    assert "shadow price is how much the objective would gain" in md
    assert json.loads(Path(out["outputs"]["json"]).read_text())["objective"] == pytest.approx(out["objective"])
    run = mlflow.MlflowClient(tracking_uri=tracking_uri(cfg)).get_run(out["mlflow_run"])
    assert run.data.tags["recforge.analysis"] == "budget"
    assert run.data.metrics["objective"] == pytest.approx(out["objective"])
    assert run.data.metrics["total_spend"] == pytest.approx(out["totals"]["spend"])


def test_no_budget_section_is_a_config_error_pointing_at_the_example(tmp_path: Path) -> None:
    cfg = scenario(tmp_path)
    analytics = cfg.analytics.model_copy(update={"budget": None})
    with pytest.raises(ConfigError, match=r"add an `analytics.budget` section.*configs/retail.yaml"):
        run_budget(feature_store_config(cfg), analytics, tracking_uri=None, scenario=cfg.name)


def test_an_infeasible_budget_is_a_config_error_naming_the_conflict_not_a_traceback(tmp_path: Path) -> None:
    # the display contract alone (2,000 units at 3) costs 6,000: a budget of 1,000 cannot meet it
    cfg = scenario(tmp_path, "analytics.budget.total_budget=1000")
    with pytest.raises(ConfigError, match=r"^analytics\.budget: infeasible") as err:
        run_budget(feature_store_config(cfg), cfg.analytics, tracking_uri=None, scenario=cfg.name)
    assert "total_budget" in str(err.value) and "display" in str(err.value)
    assert err.value.__cause__ is None
