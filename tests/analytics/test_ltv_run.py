"""`recforge ltv` end to end: the time-split evaluation against the naive baseline, the served predictions in
Parquet, the report, the MLflow run and the online view read the way serving reads it; on the shared Online
Retail copy where present, the model must rank customers better than "same as last period"."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analytics.run_ltv import run_ltv
from recforge import config as config_mod
from recforge.config import feature_store_config, tracking_uri
from tests.analytics.test_segments import write_retail_csv
from tests.conftest import dataset


def test_ltv_command_writes_tables_report_mlflow_run_and_an_online_view_serving_reads(tmp_path: Path) -> None:
    import mlflow

    from feature_store.online import open_store
    from serving.features import FeatureReader

    csv = tmp_path / "retail.csv"
    write_retail_csv(csv)
    cfg = config_mod.load("configs/retail.yaml", [f"source.path={csv}", f"output_dir={tmp_path / 'out'}",
                                                  "analytics.holdout_days=30", "analytics.churn.horizon_days=30"],
                          models=False)
    res = run_ltv(feature_store_config(cfg), cfg.analytics, tracking_uri=tracking_uri(cfg), scenario=cfg.name)
    for key in ("customer_value", "holdout", "evaluation", "parameters", "by_frequency", "html", "markdown", "json"):
        assert Path(res["outputs"][key]).is_file(), key
    assert res["customers"] == 180
    assert set(res["model_beats_naive"]) == {"purchases_mae", "purchases_corr", "revenue_mae", "revenue_corr"}
    # one-off buyers have no repeat purchase: P(alive) 1 by the model, and no spend of their own for Gamma-Gamma
    rules = res["rules"]["served"]
    assert rules["one_purchase_customers"] > 0
    assert rules["excluded_from_gamma_gamma"] >= rules["one_purchase_customers"]
    values = pq.read_table(res["outputs"]["customer_value"]).to_pandas().set_index("user_id")
    assert (values.loc[values["frequency"] == 0, "p_alive"] == 1.0).all()
    assert (values["expected_value"] >= 0).all() and values["expected_value"].notna().all()
    # only a customer still alive can buy: 0 < P(buys in the horizon) <= P(alive)
    assert ((values["p_purchase"] > 0) & (values["p_purchase"] <= values["p_alive"] + 1e-12)).all()
    # the planted frequent big spenders are worth more than the one-off buyers of the start of the year
    assert values.loc["vip0", "expected_value"] > 10 * values.loc["gone0", "expected_value"]
    html = Path(res["outputs"]["html"]).read_text()
    assert "Gamma-Gamma" in html and html.count("data:image/png;base64,") == 3

    run = mlflow.MlflowClient(tracking_uri(cfg)).get_run(res["mlflow_run"])
    assert {"purchases_mae_model", "purchases_mae_mean", "bgnbd_r"} <= set(run.data.metrics)
    forecasts = pq.read_table(res["outputs"]["evaluation"]).to_pylist()
    assert [(r["metric"], r["forecast"]) for r in forecasts[:3]] == [("mae", "median"), ("mae", "mean"),
                                                                      ("corr", "mean")]

    store = open_store(feature_store_config(cfg))
    try:
        user = FeatureReader(store, "user_id", "item_id").user("vip0")
    finally:
        store.close()
    assert user.known and user.values["expected_value"] == pytest.approx(values.loc["vip0", "expected_value"])
    assert {"expected_purchases", "p_purchase", "p_alive"} <= set(user.values)

    from recforge.report import render

    printed = render("ltv", res)  # what `recforge ltv` prints: the evaluation rows, the served view, the report
    assert printed.count("MAE (median)") == 2 and "online: view customer_value (180 customers)" in printed
    assert res["outputs"]["html"] in printed


@pytest.mark.slow
def test_online_retail_model_ranks_next_period_purchases_and_revenue_better_than_last_period(tmp_path: Path) -> None:
    dataset("online-retail")
    cfg = config_mod.load("configs/retail.yaml", [f"output_dir={tmp_path}"], models=False)
    res = run_ltv(feature_store_config(cfg), cfg.analytics, tracking_uri=None, scenario=cfg.name)
    e = res["evaluation"]
    print("\nparameters (calibration):")
    for p in res["parameters"]["calibration"]:
        print(f"  {p['model']:12s} {p['parameter']:6s} {p['value']:.4f} (se {p['std_error']:.4f})")
    for what in ("purchases", "revenue"):
        for metric in ("mae", "corr"):
            model, naive = e[f"{what}_{metric}_model"], e[f"{what}_{metric}_naive"]
            print(f"  {what} {metric}: model {model:.4f}, naive {naive:.4f}")
    print("totals:", {k: round(v, 1) for k, v in e.items() if "total" in k})
    print("rules:", res["rules"])
    # The model ranks customers better than "same as last period", on purchases and on revenue.
    assert e["purchases_corr_model"] > e["purchases_corr_naive"]
    assert e["revenue_corr_model"] > e["revenue_corr_naive"]
    # It does NOT beat naive on MAE here (measured, median forecast: purchases 0.925 vs 0.917, revenue 624 vs 623;
    # the mean forecast is further off: 0.936 and 626). The next period (the last 90 days, Sep-Dec 2011) is the
    # Christmas peak: actual purchase days exceed the stationary model's total by a third and revenue by four fifths
    # (bigger baskets), and BG/NBD + Gamma-Gamma have no seasonality to see it coming. On 90-day periods ending
    # 1-4 months earlier the median forecast does beat naive on purchases (docs/benchmarks.md); revenue MAE stays
    # behind. What holds here is that the model's MAE is within 5% of naive's and the median is the better forecast.
    assert e["purchases_mae_model"] < 1.05 * e["purchases_mae_naive"]
    assert e["revenue_mae_model"] < 1.05 * e["revenue_mae_naive"]
    assert e["purchases_total_model"] < 0.8 * e["purchases_total_actual"]
    assert e["purchases_mae_model"] < e["purchases_mae_mean"] and e["revenue_mae_model"] < e["revenue_mae_mean"]
