"""The analysis commands end to end: read the scenario's purchases, split by time, fit, score on the next
period, write tables, report, MLflow run and (per-user results) the online store.

`recforge.pipeline` calls these with the feature-store part of the scenario and the `analytics:` section; nothing
here sees the whole scenario config (imports run feature_store <- ... <- analytics <- recforge).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from analytics import segments as seg
from analytics.config import AnalyticsConfig
from analytics.customers import Orders, customers_at, next_period, read_orders
from analytics.report import day, output_dir, publish_online, write_analysis
from feature_store.config import FeatureStoreConfig
from training.common.plots import new_figure


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
    online = publish_online(fs, sc.view, assignments.select([key, "kmeans_segment", "kmeans_segment_id", "ts"]), key)
    centroids = pa.table({"segment_id": np.arange(final.k), "segment": list(final.names),
                          **{f"{f} (log1p, standardised)": final.centroids[:, i] for i, f in enumerate(feats)}})
    result = {
        "customers": current.num_rows, "calibration_customers": calib.num_rows,
        "data": {"start": day(orders.data_start), "split": day(split), "end": day(orders.data_end),
                 "holdout_days": cfg.holdout_days},
        "counts": orders.counts, "features": list(feats), "k": model.k, "curve": curve,
        "silhouette": chosen_curve["silhouette"], "segments": summary, "next_period_test": test,
        "calibration_names": list(model.names),
        "online": online,
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


def _km_figure(test_durations: np.ndarray, events: np.ndarray, labels: np.ndarray, names: tuple[str, ...],
               horizon: float) -> tuple[Any, list[dict[str, Any]]]:
    """Kaplan-Meier curves (probability of not having bought again) per segment, with their 95% bands."""
    from lifelines import KaplanMeierFitter

    fig = new_figure(6.5, 3.8)
    ax = fig.add_subplot()
    rows = []
    for c, name in enumerate(names):
        m = labels == c
        if not m.any():
            continue
        kmf = KaplanMeierFitter().fit(test_durations[m], events[m], label=name)
        t = kmf.survival_function_.index.to_numpy()
        ax.step(t, kmf.survival_function_.to_numpy()[:, 0], where="post", label=name)
        ci = kmf.confidence_interval_.to_numpy()
        ax.fill_between(t, ci[:, 0], ci[:, 1], step="post", alpha=0.15)
        rows.append({"segment": name, "customers": int(m.sum()),
                     "no_purchase_at_horizon": float(kmf.predict(horizon))})
    ax.axvline(horizon, color="grey", ls="--")
    ax.set(xlabel="days after the split", ylabel="share not bought again", ylim=(0, 1),
           title="Kaplan-Meier per segment (95% bands)")
    ax.legend(fontsize=8)
    return fig, rows


def run_churn(fs: FeatureStoreConfig, cfg: AnalyticsConfig, *, tracking_uri: str | None, scenario: str,
              orders: Orders | None = None) -> dict[str, Any]:
    """`recforge churn`: survival models trained on the window before the split and scored on the one after it
    (analytics.churn), the logistic-regression baseline beside them, Kaplan-Meier per segment; then each
    customer's churn probability at the horizon as of the end of the data, written online."""
    from analytics import churn as ch
    from training.common.plots import plot_roc

    t0 = time.perf_counter()
    cc = cfg.churn
    profile = tuple(cc.profile_columns)
    if orders is None or not set(profile) <= set(orders.profile):
        orders = read_orders(fs, profile_columns=profile)
    split = orders.split(cfg.holdout_days)
    train, test = ch.split_train_test(orders, split, cfg.holdout_days, profile, cc.min_level_customers)
    models = ch.fit_models(train, cc.penalizer)
    ev = ch.evaluate(models, train, test, cc.horizon_days)
    sc = cfg.segments
    seg_model, _ = seg.fit_segments(test.customers, features=tuple(sc.features), k_min=sc.k_min, k_max=sc.k_max,
                                    sample=sc.silhouette_sample, seed=sc.seed, k=sc.k)
    labels, _ = seg_model.assign(test.customers)
    km_fig, km_rows = _km_figure(test.duration, test.event, labels, seg_model.names, cc.horizon_days)

    # served: refit on the latest fully observed window (the split's customers), score everyone at the end
    served = ch.fit_models(test, cc.penalizer)
    current = customers_at(orders, orders.data_end)
    x_now = served["standardizer"](ch.features(current, test.levels))
    risk = ch.churn_probability(served["cox"], x_now, cc.horizon_days)
    key = orders.user_key
    risk_table = pa.table({key: current.column(key), "churn_probability": risk,
                           "churn_horizon_days": np.full(len(risk), cc.horizon_days),
                           "ts": np.full(len(risk), orders.data_end, dtype=np.int64)})
    online = publish_online(fs, cc.view, risk_table, key)

    cox = models["cox"].summary
    coef = [{"feature": f, "hazard_ratio": float(cox.loc[f, "exp(coef)"]),
             "low": float(cox.loc[f, "exp(coef) lower 95%"]), "high": float(cox.loc[f, "exp(coef) upper 95%"]),
             "p": float(cox.loc[f, "p"])} for f in cox.index]
    fig_hr = new_figure(6.0, max(3.0, 0.28 * len(coef) + 1.0))
    ax = fig_hr.add_subplot()
    y = np.arange(len(coef))
    hr = np.array([c["hazard_ratio"] for c in coef])
    ax.errorbar(hr, y, xerr=[hr - [c["low"] for c in coef], [c["high"] for c in coef] - hr], fmt="o")
    ax.axvline(1.0, color="grey", ls="--")
    ax.set_yticks(y, [c["feature"] for c in coef])
    ax.set(xlabel="hazard ratio of buying again per SD of the feature (log1p; indicators: 0/1)",
           title="Cox proportional hazards")
    roc = plot_roc(ev["churned"], ev["scores"], title=f"Churn at {cc.horizon_days:g} days (test customers)")
    best_survival_auc = max(ev["models"][m]["auc"] for m in ("cox", "weibull"))
    result = {
        "data": {"start": day(orders.data_start), "train_as_of": day(train.as_of), "split": day(split),
                 "end": day(orders.data_end), "window_days": cfg.holdout_days},
        "horizon_days": cc.horizon_days, "counts": orders.counts,
        "train_customers": ev["train_customers"], "test_customers": ev["test_customers"],
        "test_churn_rate": ev["test_churn_rate"], "models": ev["models"], "cox": coef,
        "weibull": {"rho": float(np.exp(models["weibull"].params_.loc[("rho_", "Intercept")]))},
        "kaplan_meier": km_rows,
        "profile_levels": {c: {"reference": ref, "levels": list(own), "other": other}
                           for c, (ref, own, other) in train.levels.items()},
        "goal": {"survival_auc": best_survival_auc, "baseline_auc": ev["models"]["logistic regression"]["auc"],
                 "met": bool(best_survival_auc >= ev["models"]["logistic regression"]["auc"])},
        "online": online,
    }
    out = write_analysis(
        "churn", output_dir(fs, cfg) / "churn",
        tables={"churn_risk": risk_table, "hazard_ratios": pa.Table.from_pylist(coef),
                "kaplan_meier": pa.Table.from_pylist(km_rows)},
        result=result, figures={"kaplan_meier": km_fig, "roc": roc, "hazard_ratios": fig_hr},
        tracking_uri=tracking_uri, scenario=scenario,
        metrics={**{f"{m.replace(' ', '_')}.auc": v["auc"] for m, v in ev["models"].items()},
                 "cox.concordance": ev["models"]["cox"]["concordance"],
                 "weibull.concordance": ev["models"]["weibull"]["concordance"]},
        params={"horizon_days": cc.horizon_days, "penalizer": cc.penalizer, "holdout_days": cfg.holdout_days,
                "profile_columns": ",".join(profile) or "-"})
    result.update({"outputs": {**out.tables, **out.report}, "mlflow_run": out.mlflow_run,
                   "seconds": round(time.perf_counter() - t0, 2)})
    return result
