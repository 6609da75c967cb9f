"""The analysis commands end to end: read the scenario's purchases, split by time, fit, score on the next
period, write tables, report, MLflow run and (per-user results) the online store.

`recforge.pipeline` calls these with the feature-store part of the scenario and the `analytics:` section; nothing
here sees the whole scenario config (imports run feature_store <- ... <- analytics <- recforge).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from analytics import segments as seg
from analytics.config import AnalyticsConfig
from analytics.customers import Orders, customers_at, next_period, read_orders
from analytics.report import write_analysis
from feature_store.config import FeatureStoreConfig
from feature_store.online import describe_store, open_store
from feature_store.online.materialize import materialize
from training.common.plots import new_figure


def output_dir(fs: FeatureStoreConfig, cfg: AnalyticsConfig) -> Path:
    return Path(cfg.output_dir or Path(fs.output_dir) / "analytics")


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _segment_figures(curve: list[dict[str, float]], chosen: int, summary: list[dict[str, Any]],
                     test: dict[str, Any]) -> dict[str, Any]:
    k = [c["k"] for c in curve]
    fig_k = new_figure(6.5, 3.2)
    ax1 = fig_k.add_subplot(1, 2, 1)
    ax1.plot(k, [c["inertia"] for c in curve], marker="o")
    ax1.axvline(chosen, color="grey", ls="--")
    ax1.set(xlabel="k", ylabel="inertia (within-cluster SS)", title="Elbow")
    ax2 = fig_k.add_subplot(1, 2, 2)
    ax2.plot(k, [c["silhouette"] for c in curve], marker="o", color="tab:green")
    ax2.axvline(chosen, color="grey", ls="--")
    ax2.set(xlabel="k", ylabel="mean silhouette", title=f"Silhouette (k = {chosen} chosen)")
    fig_s = new_figure(6.5, 3.2)
    ax = fig_s.add_subplot()
    names = [s["segment"] for s in summary]
    ax.bar(names, [s["customers"] for s in summary], label="customers")
    ax.set(ylabel="customers", title="Segment sizes (bars) and revenue share (line)")
    ax.tick_params(axis="x", rotation=20)
    ax_r = ax.twinx()
    ax_r.plot(names, [s["revenue_share"] for s in summary], color="tab:red", marker="o")
    ax_r.set(ylabel="revenue share", ylim=(0, 1))
    fig_n = new_figure(6.5, 3.2)
    axn = fig_n.add_subplot()
    per = sorted(test["segments"], key=lambda s: -s["mean_next_revenue"])
    means = np.array([s["mean_next_revenue"] for s in per])
    err = np.array([[s["mean_next_revenue"] - s["low"] for s in per],
                    [s["high"] - s["mean_next_revenue"] for s in per]])
    axn.bar([s["segment"] for s in per], means, yerr=np.nan_to_num(err), capsize=4, color="tab:purple")
    axn.set(ylabel="mean next-period revenue",
            title=f"Next-period revenue per segment (Kruskal-Wallis p = {test['p_value']:.2g})")
    axn.tick_params(axis="x", rotation=20)
    return {"elbow_silhouette": fig_k, "segment_sizes": fig_s, "next_revenue": fig_n}


def run_segments(fs: FeatureStoreConfig, cfg: AnalyticsConfig, *, tracking_uri: str | None, scenario: str,
                 orders: Orders | None = None, progress: Any = None) -> dict[str, Any]:
    """`recforge segment`: fit on the customers known at the split, test the segments on the next period's
    revenue, then refit with the chosen k on everything (the served assignment) and write it online."""
    t0 = time.perf_counter()
    sc = cfg.segments
    orders = orders or read_orders(fs)
    split = orders.split(cfg.holdout_days)
    feats = tuple(sc.features)
    calib = customers_at(orders, split)
    model, curve = seg.fit_segments(calib, features=feats, k_min=sc.k_min, k_max=sc.k_max,
                                    sample=sc.silhouette_sample, seed=sc.seed, k=sc.k, progress=progress)
    labels, _ = model.assign(calib)
    nxt = next_period(orders, calib, split, orders.data_end)
    test = seg.next_revenue_test(labels, nxt.column("next_revenue").to_numpy(), model.names)
    chosen_curve = next(c for c in curve if c["k"] == model.k)

    # the served assignment: the same k, fitted on what is known at the end of the data
    now = orders.data_end
    current = customers_at(orders, now)
    final, _ = seg.fit_segments(current, features=feats, k_min=model.k, k_max=model.k,
                                sample=sc.silhouette_sample, seed=sc.seed, k=model.k)
    f_labels, f_dist = final.assign(current)
    summary = seg.segment_summary(current, f_labels, final)
    key = orders.user_key
    names = np.asarray(final.names, dtype=object)
    assignments = current.select([key, *feats]).append_column("kmeans_segment_id", pa.array(f_labels, pa.int32())) \
        .append_column("kmeans_segment", pa.array(names[f_labels].tolist(), pa.string())) \
        .append_column("distance", pa.array(f_dist)) \
        .append_column("ts", pa.array(np.full(current.num_rows, now, dtype=np.int64)))
    store = open_store(fs)
    try:
        online = materialize(store, sc.view, assignments.select([key, "kmeans_segment", "kmeans_segment_id", "ts"]),
                             key=key, ts_column="ts")
    finally:
        store.close()
    centroids = pa.table({"segment_id": np.arange(final.k), "segment": list(final.names),
                          **{f"{f} (log1p, standardised)": final.centroids[:, i] for i, f in enumerate(feats)}})
    result = {
        "customers": current.num_rows, "calibration_customers": calib.num_rows,
        "data": {"start": _iso(orders.data_start), "split": _iso(split), "end": _iso(orders.data_end),
                 "holdout_days": cfg.holdout_days},
        "counts": orders.counts, "features": list(feats), "k": model.k, "curve": curve,
        "silhouette": chosen_curve["silhouette"], "segments": summary, "next_period_test": test,
        "calibration_names": list(model.names),
        "online": {"view": sc.view, "store": describe_store(fs), "entities": online.entities_written},
    }
    figures = _segment_figures(curve, model.k, summary, test)
    out = write_analysis(
        "segments", output_dir(fs, cfg) / "segments",
        tables={"assignments": assignments, "segments": pa.Table.from_pylist(summary), "centroids": centroids,
                "k_curve": pa.Table.from_pylist(curve)},
        result=result, figures=figures, tracking_uri=tracking_uri, scenario=scenario,
        metrics={"k": model.k, "silhouette": chosen_curve["silhouette"], "customers": current.num_rows,
                 "next_revenue_kruskal_p": test["p_value"]},
        params={"features": ",".join(feats), "k_min": sc.k_min, "k_max": sc.k_max, "holdout_days": cfg.holdout_days})
    result.update({"outputs": {**out.tables, **out.report}, "mlflow_run": out.mlflow_run,
                   "seconds": round(time.perf_counter() - t0, 2)})
    return result
