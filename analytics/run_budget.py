"""`recforge budget` end to end: solve the `analytics.budget` allocation LP and write its tables, plots, report and
MLflow run like every analysis (analytics.report.write_analysis).

The LP itself lives in analytics.budget; this module turns its outcome into what a marketer reads: how much to buy
of each channel (per segment), what it returns, and which constraints hold the return back with their shadow
prices. An infeasible or unbounded config is the user's to fix, so it surfaces as a `ConfigError` with the solver's
explanation, never as a traceback.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from analytics.budget import BudgetConstraint, BudgetInfeasible, BudgetResult, BudgetUnbounded, solve_budget
from analytics.config import AnalyticsConfig, BudgetConfig
from analytics.report import output_dir, write_analysis
from feature_store.config import ConfigError, FeatureStoreConfig
from training.common.plots import new_figure

MISSING_SECTION = ("no budget problem is defined: add an `analytics.budget` section (channels with unit_cost and "
                   "return_per_unit or tiers, and a total_budget) to the scenario config; configs/retail.yaml ends "
                   "with an example and docs/config.md#analytics.budget lists every key")


def _constraint_row(con: BudgetConstraint) -> dict[str, Any]:
    # `+ 0.0` turns the solver's -0.0 duals into 0.0, which reads better in tables and reports
    return {"name": con.name, "kind": con.kind, "limit": con.limit, "activity": con.activity, "slack": con.slack,
            "binding": con.binding, "shadow_price": con.shadow_price + 0.0}


def _figures(channels: list[dict[str, Any]], binding: list[dict[str, Any]]) -> dict[str, Any]:
    """Spend and return per channel side by side (where the money goes and what it brings), and the shadow prices
    of the binding constraints (what relaxing each would be worth)."""
    names = [c["channel"] for c in channels]
    x = np.arange(len(names))
    fig_a = new_figure(6.5, 3.4)
    ax = fig_a.add_subplot()
    ax.bar(x - 0.2, [c["spend"] for c in channels], width=0.4, label="spend")
    ax.bar(x + 0.2, [c["return"] for c in channels], width=0.4, label="return", color="tab:green")
    ax.set_xticks(x, names)
    ax.tick_params(axis="x", rotation=20)
    ax.set(ylabel="money", title="Optimal allocation per channel")
    ax.legend()
    fig_s = new_figure(6.5, max(2.4, 0.45 * len(binding) + 1.2))
    axs = fig_s.add_subplot()
    if binding:
        labels = [b["name"] for b in binding][::-1]
        axs.barh(labels, [b["shadow_price"] for b in binding][::-1], color="tab:orange")
        axs.tick_params(axis="y", labelsize=7)
    else:
        axs.text(0.5, 0.5, "no binding constraint", ha="center", va="center", transform=axs.transAxes)
    axs.set(xlabel="objective gained per unit of relaxation", title="Shadow prices of the binding constraints")
    return {"allocation": fig_a, "shadow_prices": fig_s}


def _result(cfg: BudgetConfig, res: BudgetResult) -> dict[str, Any]:
    constraints = [_constraint_row(c) for c in res.constraints]
    binding = [_constraint_row(c) for c in res.binding()]
    return {
        "objective_kind": cfg.objective,
        "objective": res.objective,
        "totals": {"spend": res.total_spend, "return": res.total_return, "volume": res.total_volume,
                   "budget": cfg.total_budget, "profit": res.total_return - res.total_spend,
                   "roi": res.total_return / res.total_spend if res.total_spend > 0 else None},
        "segments": list(cfg.segments),
        "channels": res.channels.to_pylist(),
        "allocation": [r for r in res.allocation.to_pylist() if r["volume"] > 0],
        "constraints": constraints,
        "binding": binding,
        "seconds": round(res.seconds, 4),
    }


def run_budget(fs: FeatureStoreConfig, cfg: AnalyticsConfig, *, tracking_uri: str | None,
               scenario: str) -> dict[str, Any]:
    """`recforge budget`: solve `analytics.budget` and write the allocation, the per-channel totals and every
    constraint's slack and shadow price (tables, plots, report, MLflow run under `<analytics dir>/budget`).

    Returns the report's result (objective, totals, channels, allocation, constraints, binding, seconds) plus
    `outputs` (table and report paths) and `mlflow_run`. A missing section, an infeasible or an unbounded problem
    raises `ConfigError` with what to change."""
    if cfg.budget is None:
        raise ConfigError(MISSING_SECTION)
    bc = cfg.budget
    try:
        res = solve_budget(bc)
    except (BudgetInfeasible, BudgetUnbounded) as exc:
        raise ConfigError(f"analytics.budget: {exc}") from None
    result = _result(bc, res)
    constraints = pa.Table.from_pylist(result["constraints"], schema=pa.schema([
        ("name", pa.string()), ("kind", pa.string()), ("limit", pa.float64()), ("activity", pa.float64()),
        ("slack", pa.float64()), ("binding", pa.bool_()), ("shadow_price", pa.float64())]))
    out = write_analysis(
        "budget", output_dir(fs, cfg) / "budget",
        tables={"allocation": res.allocation, "channels": res.channels, "constraints": constraints},
        result=result, figures=_figures(result["channels"], result["binding"]), tracking_uri=tracking_uri,
        scenario=scenario,
        metrics={"objective": res.objective, "total_spend": res.total_spend, "total_return": res.total_return,
                 "seconds": res.seconds},
        params={"objective": bc.objective, "channels": ",".join(c.name for c in bc.channels),
                "segments": ",".join(bc.segments), "total_budget": bc.total_budget,
                "max_total_volume": bc.max_total_volume})
    result.update({"outputs": {**out.tables, **out.report}, "mlflow_run": out.mlflow_run})
    return result
