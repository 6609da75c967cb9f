"""Outputs the console reads, written in the formats their commands write, for the console's tests: a privacy
release (`recforge report`), a promotion review folder (`recforge promote`), a `recforge segment` output and an
experiment with logged traffic (`recforge experiment start` + the serving replicas' exposure events).

Each fixture plants row-level values (customer ids in the segment assignments) that no console page may show.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TOKEN = "console-test-token-7f3a9c1e5b"  # a test value
SECRET_CUSTOMER = "customer-planted-id-9137"  # in the assignments table only: never on a page

RELEASE: dict[str, Any] = {
    "kind": "privacy_release", "id": "rel-2025-01-02-revenue", "created": "2025-01-02T10:00:00Z",
    "dataset": "purchases",
    "query": {"name": "revenue by region", "group_by": ["region"],
              "measures": [{"name": "people", "kind": "people", "column": None},
                           {"name": "revenue", "kind": "sum", "column": "revenue"}],
              "k": 10, "mechanism": "laplace", "epsilon": 1.0, "delta": 0.0},
    # the layout `recforge report` writes: keys, figures, the flags, then each figure's 95% half-width
    "columns": ["region", "people", "revenue", "suppressed", "reason", "people_ci95", "revenue_ci95"],
    "rows": [
        {"region": "north", "people": 120, "revenue": 5400.5, "suppressed": False, "reason": None,
         "people_ci95": 4.5, "revenue_ci95": 210.0},
        {"region": "south", "people": None, "revenue": None, "suppressed": True, "reason": "under k",
         "people_ci95": None, "revenue_ci95": None},
        {"region": "east", "people": None, "revenue": None, "suppressed": True, "reason": "complementary",
         "people_ci95": None, "revenue_ci95": None},
        {"region": "west", "people": 88, "revenue": 3100.25, "suppressed": False, "reason": None,
         "people_ci95": 4.5, "revenue_ci95": 180.0},
        {"region": "(all)", "people": 260, "revenue": 11000.0, "suppressed": False, "reason": None,
         "people_ci95": 6.4, "revenue_ci95": 300.0},
    ],
    "meta": {"source": "test fixture"},
    "budget": {"dataset": "purchases", "total_epsilon": 3.0, "spent_epsilon": 1.0, "remaining_epsilon": 2.0,
               "total_delta": 1e-6, "spent_delta": 0.0, "queries": 1},
}


def write_release(output_dir: Path, release: dict[str, Any] = RELEASE) -> Path:
    """`<output_dir>/privacy/releases/<id>.json`, as `recforge report` writes it."""
    folder = Path(output_dir) / "privacy" / "releases"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{release['id']}.json"
    path.write_text(json.dumps(release, indent=2))
    return path


def write_review(output_dir: Path, model: str, version: int, stamp: str = "20250102-100000-000001") -> str:
    """A promotion review folder `<output_dir>/reviews/<model>-v<version>-<stamp>/` (review.html, review.json) as
    `recforge promote` leaves it; returns the folder's name."""
    name = f"{model}-v{version}-{stamp}"
    folder = Path(output_dir) / "reviews" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "review.html").write_text(f"<!doctype html><html><body><h1>Promotion review: {model} v{version}</h1>"
                                        f"<p class='decision ok'>accepted</p></body></html>")
    (folder / "review.json").write_text(json.dumps({"model": model, "decision": "accepted"}))
    return name


SEGMENTS = [
    {"segment_id": 0, "segment": "Champions", "customers": 120, "share": 0.3, "median_recency_days": 5.0,
     "median_frequency": 9.0, "median_monetary": 900.0, "revenue": 150000.0, "revenue_share": 0.6},
    {"segment_id": 1, "segment": "Loyal", "customers": 160, "share": 0.4, "median_recency_days": 20.0,
     "median_frequency": 4.0, "median_monetary": 300.0, "revenue": 75000.0, "revenue_share": 0.3},
    {"segment_id": 2, "segment": "Hibernating", "customers": 120, "share": 0.3, "median_recency_days": 120.0,
     "median_frequency": 1.0, "median_monetary": 80.0, "revenue": 25000.0, "revenue_share": 0.1},
]


def write_segments(analytics_dir: Path) -> Path:
    """`<analytics dir>/segments/` as `analytics.jobs.run_segments` writes it (report.json and the Parquet tables,
    the per-customer assignments included)."""
    out = Path(analytics_dir) / "segments"
    out.mkdir(parents=True, exist_ok=True)
    names = [s["segment"] for s in SEGMENTS]
    test = {"test": "Kruskal-Wallis", "statistic": 41.2, "p_value": 1.1e-9, "alpha": 0.05, "significant": True,
            "segments": [{"segment_id": i, "segment": n, "customers": 100, "mean_next_revenue": m,
                          "low": m * 0.8, "high": m * 1.2, "share_buying_again": b}
                         for i, (n, m, b) in enumerate(zip(names, (310.0, 120.0, 15.0), (0.8, 0.5, 0.1)))],
            "note": None}
    curve = [{"k": k, "inertia": 1000.0 / k, "silhouette": s} for k, s in ((3, 0.41), (4, 0.37), (5, 0.33))]
    report = {"customers": 400, "calibration_customers": 300,
              "data": {"start": "2024-01-01", "split": "2024-10-03", "end": "2025-01-01", "holdout_days": 90},
              "counts": {"orders": 2000}, "features": ["recency_days", "frequency", "monetary"], "k": 3,
              "curve": curve, "silhouette": 0.41, "segments": SEGMENTS, "next_period_test": test,
              "calibration_names": names, "online": {"view": "customer_segment", "store": "sqlite", "entities": 400}}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    pq.write_table(pa.Table.from_pylist(SEGMENTS), out / "segments.parquet")
    pq.write_table(pa.table({"segment_id": [0, 1, 2], "segment": names,
                             "recency_days (log1p, standardised)": [-1.2, -0.1, 1.3]}), out / "centroids.parquet")
    pq.write_table(pa.Table.from_pylist(curve), out / "k_curve.parquet")
    pq.write_table(pa.table({"user_id": [SECRET_CUSTOMER, "customer-2"], "kmeans_segment_id": [0, 1],
                             "kmeans_segment": ["Champions", "Loyal"]}), out / "assignments.parquet")
    return out


def write_experiment_traffic(app: Any, name: str, users: int = 40, clicks_every: int = 3) -> None:
    """Start experiment `name` in the store (without the registry: arms pinned to versions 1 and 2) and put a
    little of its traffic in the offline event log: an exposure per user over the last minutes, a click on a
    share of them, as the serving replicas and POST /events would."""
    from feature_store.events.contract import check_events
    from feature_store.events.scenario import log_dir
    from serving.experiments import manage
    from serving.experiments.live import Route, exposure_events
    from serving.experiments.store import ArmVersions

    d = manage.definition(app, name)
    now = time.time()
    arms = [ArmVersions(a.name, a.policy, str(i + 1), None) for i, a in enumerate(d.arms)]
    manage.store_of(app).start(d, name, arms, manage.planned_users(d), now=now - 600)
    raws: list[dict[str, Any]] = []
    for u in range(users):  # a handful of synthetic requests (test data, not a data pipeline)
        arm = d.arms[u % len(d.arms)]
        route = Route(name, arm.name, arm.policy, "1", None)
        ts = now - 500 + u * 10
        shown = [u * 10 + j for j in range(3)]
        exposure = exposure_events(f"exp-{u}", u, shown, route, {"ranker": "1"}, app.experiments.exposure_type, ts)
        raws += exposure
        if u % clicks_every == 0:
            raws.append({"event_id": f"click-{u}", "ts": ts + 5, "user_id": u, "item_id": shown[0], "type": "click",
                         "exposure_id": f"exp-{u}"})
    checked = check_events(raws, app.feature_store.events, now=now)
    assert not checked.rejected, checked.rejected
    folder = log_dir(app.feature_store) / f"date={time.strftime('%Y-%m-%d', time.gmtime(now))}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(checked.accepted, folder / "part-1-1.parquet")
