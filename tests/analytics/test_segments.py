"""Customer tables from purchases and `recforge segment`: order rules, the time split, K-means segments that
recover planted groups, the next-period test, and the command end to end (Parquet, report, MLflow, online view
read the way serving reads it); on the shared Online Retail copy where present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from analytics import segments as seg
from analytics.customers import DAY, customers_at, next_period, orders_from_rows
from analytics.jobs import run_segments
from feature_store.config import ConfigError
from recforge import config as config_mod
from recforge.config import feature_store_config, tracking_uri
from tests.conftest import dataset

T0 = 1_300_000_000


def purchases(rows: list[tuple[str, str, float, float]]) -> pa.Table:
    """(user, invoice, day offset, revenue) rows as a purchases table."""
    users, inv, days, rev = zip(*rows)
    return pa.table({"user_id": list(users), "invoice": list(inv),
                     "ts": [int(T0 + d * DAY) for d in days], "revenue": list(rev)})


def test_lines_of_one_invoice_are_one_order_and_a_return_is_netted_but_not_a_purchase() -> None:
    o = orders_from_rows(purchases([
        ("a", "1", 0, 10.0), ("a", "1", 0, 5.0),   # one order of 15
        ("a", "2", 10, 20.0),                      # a second order
        ("a", "C3", 12, -8.0),                     # a return: netted, not a purchase
        ("b", "4", 5, 7.0),
    ]), user_key="user_id", amount="revenue", order="invoice")
    assert o.counts["orders"] == 4 and o.counts["non_positive_orders"] == 1
    c = customers_at(o, T0 + int(20 * DAY)).to_pandas().set_index("user_id")
    assert c.loc["a", "frequency"] == 2
    assert c.loc["a", "monetary"] == pytest.approx(27.0)
    assert c.loc["a", "avg_order_value"] == pytest.approx(17.5)
    assert c.loc["a", "recency_days"] == pytest.approx(10.0)  # the return on day 12 is not a purchase
    assert c.loc["b", "tenure_days"] == pytest.approx(15.0)


def test_a_customer_is_known_at_a_cutoff_only_after_a_purchase_and_the_next_period_counts_what_came_later() -> None:
    o = orders_from_rows(purchases([
        ("a", "1", 0, 10.0), ("a", "2", 30, 4.0), ("a", "3", 40, 6.0),
        ("b", "4", 25, 9.0),                       # first purchase after the cut-off: not in the table
    ]), user_key="user_id", amount="revenue", order="invoice")
    cut = T0 + int(20 * DAY)
    c = customers_at(o, cut)
    assert c.column("user_id").to_pylist() == ["a"]
    nxt = next_period(o, c, cut, o.data_end).to_pylist()[0]
    assert nxt["next_purchases"] == 2 and nxt["next_revenue"] == pytest.approx(10.0)
    assert nxt["days_to_next"] == pytest.approx(10.0)


def test_a_holdout_as_long_as_the_data_is_refused_naming_the_setting() -> None:
    o = orders_from_rows(purchases([("a", "1", 0, 1.0), ("a", "2", 30, 1.0)]), user_key="user_id",
                         amount="revenue", order="invoice")
    with pytest.raises(ConfigError, match=r"analytics.holdout_days 45 .* spans 30.0 days"):
        o.split(45)


def planted(n_per: int = 150, seed: int = 0) -> pd.DataFrame:
    """Three planted groups of customers over one year: frequent recent big spenders, occasional mid-year
    buyers, and one-off buyers from the start of the year."""
    rng = np.random.default_rng(seed)
    rows = []
    groups = {"vip": (25, 300, 360, 600.0), "mid": (8, 200, 280, 120.0), "gone": (1, 0, 40, 30.0)}
    for g, (orders, lo, hi, value) in groups.items():
        for u in range(n_per):
            n = max(1, rng.poisson(orders))
            days = np.sort(rng.uniform(lo, hi, n))
            for i, d in enumerate(days):
                rows.append((f"{g}{u}", f"{g}{u}-{i}", float(d), float(value * rng.lognormal(0, 0.3))))
    return pd.DataFrame(rows, columns=["user", "invoice", "day", "revenue"])


def test_kmeans_recovers_planted_groups_and_names_them_from_their_centroids() -> None:
    df = planted()
    o = orders_from_rows(purchases(list(df.itertuples(index=False, name=None))), user_key="user_id",
                         amount="revenue", order="invoice")
    c = customers_at(o, o.data_end)
    model, curve = seg.fit_segments(c, features=seg.BASE_FEATURES, k_min=2, k_max=6, sample=1000, seed=1)
    assert model.k == 3, curve
    labels, _ = model.assign(c)
    group = np.array([u.rstrip("0123456789") for u in c.column("user_id").to_pylist()])
    majority = {}
    for g in ("vip", "mid", "gone"):  # each planted group is (at least 95% of it) one segment of its own
        values, counts = np.unique(labels[group == g], return_counts=True)
        majority[g] = int(values[counts.argmax()])
        assert counts.max() / counts.sum() >= 0.95
    assert len(set(majority.values())) == 3
    name = {g: model.names[majority[g]] for g in majority}
    assert name["vip"] == "champions"
    assert name["gone"] == "lost"


def test_the_next_period_test_is_significant_only_when_revenue_differs() -> None:
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1, 2], 300)
    # no difference: the test rejects at about its alpha (5%) over 300 draws, not more
    false_alarms = np.mean([seg.next_revenue_test(labels, rng.exponential(100, 900), ("a", "b", "c"))["significant"]
                            for _ in range(300)])
    assert 0.01 <= false_alarms <= 0.09
    same = rng.exponential(100, 900)
    differ = same * np.repeat([1.0, 1.0, 3.0], 300)
    res = seg.next_revenue_test(labels, differ, ("a", "b", "c"))
    assert res["significant"] and res["p_value"] < 1e-6
    assert res["segments"][2]["low"] > res["segments"][0]["high"]


def test_too_few_customers_for_k_max_is_a_clear_error() -> None:
    o = orders_from_rows(purchases([("a", "1", 0, 1.0), ("b", "2", 3, 2.0), ("c", "3", 5, 3.0)]),
                         user_key="user_id", amount="revenue", order="invoice")
    with pytest.raises(ConfigError, match=r"lower analytics\.segments\.k_max"):
        seg.fit_segments(customers_at(o, o.data_end), features=seg.BASE_FEATURES, k_min=2, k_max=8, sample=100,
                         seed=0)


def test_segments_config_rejects_unknown_keys_and_an_empty_k_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"analytics\.segments\.colour"):
        config_mod.load("configs/retail.yaml", ["analytics.segments.colour=blue"], models=False)
    with pytest.raises(ConfigError, match="k_min 6 is above k_max 4"):
        config_mod.load("configs/retail.yaml", ["analytics.segments.k_min=6", "analytics.segments.k_max=4"],
                        models=False)


def write_retail_csv(path: Path, df: pd.DataFrame | None = None) -> None:
    """Customers (default: the planted ones) as an Online Retail-style export (one line per order); `df` has
    columns user, invoice, day, revenue."""
    df = planted(n_per=60) if df is None else df
    when = pd.to_datetime(T0 + df["day"] * DAY, unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
    pd.DataFrame({"InvoiceNo": df["invoice"].str.replace(r"\D", "", regex=True) + df.index.astype(str),
                  "StockCode": "85123A", "Description": "HOLDER", "Quantity": 1, "InvoiceDate": when,
                  "UnitPrice": df["revenue"].round(2), "CustomerID": df["user"], "Country": "UK"}).to_csv(
        path, index=False)


def test_segment_command_writes_tables_report_mlflow_run_and_an_online_view_serving_reads(tmp_path: Path) -> None:
    from feature_store.online import open_store
    from serving.features import FeatureReader

    csv = tmp_path / "retail.csv"
    write_retail_csv(csv)
    cfg = config_mod.load("configs/retail.yaml", [f"source.path={csv}", f"output_dir={tmp_path / 'out'}",
                                                  "analytics.holdout_days=30", "analytics.churn.horizon_days=30",
                                                  "analytics.segments.k_min=2",
                                                  "analytics.segments.k_max=5"], models=False)
    res = run_segments(feature_store_config(cfg), cfg.analytics, tracking_uri=tracking_uri(cfg), scenario=cfg.name)
    assert res["k"] == 3 and res["customers"] == 180
    for key in ("assignments", "segments", "centroids", "k_curve", "html", "markdown", "json"):
        assert Path(res["outputs"][key]).is_file(), key
    html = Path(res["outputs"]["html"]).read_text()
    assert res["next_period_test"]["significant"]  # planted vips buy again, the others do not
    assert "Kruskal-Wallis" in html and html.count("data:image/png;base64,") == 3
    import mlflow

    run = mlflow.MlflowClient(tracking_uri(cfg)).get_run(res["mlflow_run"])
    assert run.data.metrics["k"] == 3
    store = open_store(feature_store_config(cfg))
    try:
        user = FeatureReader(store, "user_id", "item_id").user("vip0")
    finally:
        store.close()
    assert user.known and user.values["kmeans_segment"] == "champions"


@pytest.mark.slow
def test_online_retail_segments_differ_in_next_period_revenue(tmp_path: Path) -> None:
    dataset("online-retail")
    cfg = config_mod.load("configs/retail.yaml", [f"output_dir={tmp_path}"], models=False)
    res = run_segments(feature_store_config(cfg), cfg.analytics, tracking_uri=None, scenario=cfg.name)
    assert res["silhouette"] > 0.3
    assert res["next_period_test"]["p_value"] < 1e-10
    names = {s["segment"] for s in res["segments"]}
    assert "champions" in names
