"""`recforge churn`: durations to the next purchase, the train/test windows around the split, the survival models
against the logistic-regression baseline, bad input, and the command end to end (online view read by serving)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from analytics import churn as ch
from analytics.customers import DAY, orders_from_rows
from analytics.jobs import run_churn
from feature_store.config import ConfigError
from recforge import config as config_mod
from recforge.config import feature_store_config, tracking_uri
from tests.analytics.test_segments import T0, purchases, write_retail_csv
from tests.conftest import dataset


def test_a_duration_runs_to_the_next_purchase_or_is_censored_at_the_window() -> None:
    o = orders_from_rows(purchases([
        ("a", "1", 0, 5.0), ("a", "2", 14, 5.0),     # buys again 4 days after the cut-off (day 10)
        ("b", "3", 2, 5.0),                          # never again: censored at the 30-day window
        ("c", "4", 3, 5.0), ("c", "5", 50, 5.0),     # buys again after the window: censored too
    ]), user_key="user_id", amount="revenue", order="invoice")
    d = ch.survival_data(o, T0 + int(10 * DAY), 30.0)
    got = dict(zip(d.customers.column("user_id").to_pylist(), zip(d.duration.tolist(), d.event.tolist())))
    assert got["a"] == (pytest.approx(4.0), True)
    assert got["b"] == (30.0, False) and got["c"] == (30.0, False)


def test_churn_needs_a_window_before_the_split_and_says_which_setting_to_change() -> None:
    o = orders_from_rows(purchases([("a", "1", 0, 1.0), ("a", "2", 100, 1.0)]), user_key="user_id",
                         amount="revenue", order="invoice")
    with pytest.raises(ConfigError, match=r"shorten analytics\.holdout_days"):
        ch.split_train_test(o, o.split(45), 45)


def test_a_horizon_longer_than_the_holdout_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="longer than holdout_days"):
        config_mod.load("configs/retail.yaml", ["analytics.churn.horizon_days=120"], models=False)


def test_features_without_variation_are_a_clear_error_not_a_singular_matrix() -> None:
    rows = [(f"u{i}", f"{i}-{j}", float(j * 10), 5.0) for i in range(30) for j in range(3)]
    o = orders_from_rows(purchases(rows), user_key="user_id", amount="revenue", order="invoice")
    data = ch.survival_data(o, T0 + int(25 * DAY), 10.0)
    with pytest.raises(ConfigError, match="take one value for every customer"):
        ch.fit_models(data, 0.01)


def test_a_profile_column_is_the_customers_first_value_and_its_levels_are_chosen_on_train() -> None:
    rows = [(f"u{i}", f"{i}-{j}", float(j * 20 + i % 7), 5.0) for i in range(60) for j in range(5)]
    table = purchases(rows)
    # countries: 30 UK, 20 DE, 10 rare (five each of FR and NL); u0 moved to DE after its first invoice
    country = ["UK" if i < 30 else "DE" if i < 50 else ("FR" if i < 55 else "NL") for i in range(60) for _ in range(5)]
    country[1:5] = ["DE"] * 4
    o = orders_from_rows(table.append_column("country", pa.array(country)), user_key="user_id", amount="revenue",
                         order="invoice", profile_columns=("country",))
    train, test = ch.split_train_test(o, o.split(20), 20, ("country",), min_level_customers=10)
    assert train.levels == {"country": ("UK", ("DE",), True)}  # UK the reference, FR and NL pooled into other
    x = train.x.assign(user=train.customers.column("user_id").to_pylist()).set_index("user")
    assert list(x.columns[-2:]) == ["country=DE", "country=other"]
    assert (x.loc["u0", "country=DE"], x.loc["u0", "country=other"]) == (0.0, 0.0)  # first invoice: UK
    assert (x.loc["u40", "country=DE"], x.loc["u52", "country=other"], x.loc["u57", "country=other"]) == (1, 1, 1)
    assert list(test.x.columns) == list(train.x.columns) and test.levels == train.levels


def test_a_profile_column_the_purchases_lack_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"analytics\.churn\.profile_columns: \['country'\] not in purchases"):
        orders_from_rows(purchases([("a", "1", 0, 1.0)]), user_key="user_id", amount="revenue", order="invoice",
                         profile_columns=("country",))


def test_a_profile_column_without_a_common_level_names_the_setting() -> None:
    rows = [(f"u{i}", f"{i}-{j}", float(j * 20 + i % 7), 5.0) for i in range(30) for j in range(5)]
    table = purchases(rows).append_column("country", pa.array([f"c{i}" for i in range(30) for _ in range(5)]))
    o = orders_from_rows(table, user_key="user_id", amount="revenue", order="invoice", profile_columns=("country",))
    with pytest.raises(ConfigError, match=r"no level of country has 30 customers.*min_level_customers"):
        ch.split_train_test(o, o.split(20), 20, ("country",))


def regular_and_rare_buyers(seed: int = 5) -> list[tuple[str, str, float, float]]:
    """100 customers buying about every 3 days and 100 about every 50 days, over 300 days."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(200):
        rate = 0.3 if i < 100 else 0.02  # purchases per day
        days = np.cumsum(rng.exponential(1 / rate, 400))  # enough draws to reach the end of the 300 days
        days = days[days < 300]
        rows += [(f"u{i}", f"{i}-{j}", float(d), float(rng.lognormal(3, 0.5))) for j, d in enumerate(days)]
        if len(days) == 0:
            rows.append((f"u{i}", f"{i}-0", float(rng.uniform(0, 100)), 20.0))
    return rows


def test_survival_models_rank_who_buys_again_on_planted_customers() -> None:
    """Frequent buyers come back sooner than rare ones: both survival models order the test customers far better
    than chance, and their churn probability at the horizon separates the two as well as the baseline."""
    o = orders_from_rows(purchases(regular_and_rare_buyers()), user_key="user_id", amount="revenue", order="invoice")
    split = o.split(60)
    train, test = ch.split_train_test(o, split, 60)
    ev = ch.evaluate(ch.fit_models(train, 0.01), train, test, 30)
    assert ev["models"]["cox"]["concordance"] > 0.65
    assert ev["models"]["weibull"]["concordance"] > 0.65
    assert ev["models"]["cox"]["auc"] > 0.8 and ev["models"]["logistic regression"]["auc"] > 0.8


def test_churn_command_writes_report_mlflow_run_and_an_online_view_serving_reads(tmp_path: Path) -> None:
    from feature_store.online import open_store
    from serving.features import FeatureReader

    csv = tmp_path / "retail.csv"
    write_retail_csv(csv, pd.DataFrame(regular_and_rare_buyers(), columns=["user", "invoice", "day", "revenue"]))
    cfg = config_mod.load("configs/retail.yaml", [f"source.path={csv}", f"output_dir={tmp_path / 'out'}",
                                                  "analytics.holdout_days=60", "analytics.churn.horizon_days=30",
                                                  "analytics.segments.k=3"], models=False)
    res = run_churn(feature_store_config(cfg), cfg.analytics, tracking_uri=tracking_uri(cfg), scenario=cfg.name)
    for key in ("churn_risk", "hazard_ratios", "kaplan_meier", "html", "markdown", "json"):
        assert Path(res["outputs"][key]).is_file(), key
    assert Path(res["outputs"]["html"]).read_text().count("data:image/png;base64,") == 3
    import mlflow

    assert "cox.concordance" in mlflow.MlflowClient(tracking_uri(cfg)).get_run(res["mlflow_run"]).data.metrics
    store = open_store(feature_store_config(cfg))
    try:
        reader = FeatureReader(store, "user_id", "item_id")
        risk = {u: reader.user(u).values["churn_probability"] for u in ("u0", "u1", "u2", "u150", "u151", "u152")}
    finally:
        store.close()
    # a regular buyer is less likely to churn than a rare one
    assert max(risk["u0"], risk["u1"], risk["u2"]) < min(risk["u150"], risk["u151"], risk["u152"]), risk


@pytest.mark.slow
def test_online_retail_survival_models_match_the_baseline_auc_and_give_the_curve(tmp_path: Path) -> None:
    dataset("online-retail")
    cfg = config_mod.load("configs/retail.yaml", [f"output_dir={tmp_path}"], models=False)
    res = run_churn(feature_store_config(cfg), cfg.analytics, tracking_uri=None, scenario=cfg.name)
    print(res["models"])
    assert res["models"]["cox"]["concordance"] > 0.65
    assert res["goal"]["met"]
