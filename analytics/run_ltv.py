"""`recforge ltv` end to end: BG/NBD purchases and Gamma-Gamma spend per customer, scored on the next period
against the naive "same as last period" forecast, then refitted on all the data and served per customer.

The evaluation is what makes the served numbers worth reading: the models are fitted on what was known at the
time split (`analytics.holdout_days` before the end of the data) and their predicted purchases and revenue for
the next period are compared, customer by customer, with what happened and with the naive baseline. Only then
are both models refitted on everything and each customer's expected purchases, probability of buying at all,
P(alive) and expected (discounted) value over `analytics.ltv.horizon_days` written to the online store and a
Parquet table. MAE is scored on the model's median forecast (the mean beside it; see `ltv.evaluate`).

The rules on one-purchase customers, purchase days with non-positive totals and customers first seen after the
split are `analytics.ltv`'s (see `summarize_purchases`); this module counts what each rule did and reports it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from analytics import ltv
from analytics.config import AnalyticsConfig
from analytics.customers import DAY, Orders, read_orders
from analytics.report import day, output_dir, publish_online, write_analysis
from feature_store.config import ConfigError, FeatureStoreConfig
from training.common.plots import new_figure

__all__ = ["run_ltv"]

SERVED_COLUMNS = ("expected_purchases", "p_purchase", "p_alive", "expected_value")
# the evaluation table's rows per target: (metric, forecast, evaluation key suffix); MAE of the median is the model's
FORECASTS = (("mae", "median", "model"), ("mae", "mean", "mean"), ("corr", "mean", "model"))
_FREQ_CAP = 8  # the per-frequency plot pools customers with this many repeat purchase days or more

ASSUMPTIONS = (
    "BG/NBD assumes that, while alive, a customer buys as a Poisson process with its own rate (rates vary across "
    "customers as a Gamma distribution), and that right after each repeat purchase the customer drops out for good "
    "with its own probability (Beta-distributed across customers), rate and drop-out independent of each other; a "
    "customer who never bought again cannot have dropped out, so P(alive) is 1 for one-purchase customers. "
    "Gamma-Gamma assumes each transaction value of a customer is Gamma-distributed around that customer's own "
    "mean, which itself varies across customers as a Gamma distribution, so a customer's expected spend is its own "
    "mean shrunk towards the population mean, the more the fewer transactions it has; and it assumes spend is "
    "independent of the purchase process, which is what allows expected value = expected purchases x expected "
    "spend (the frequency-monetary correlation below checks it). Neither model sees seasonality, prices or "
    "marketing: a next period unlike the calibration period is a miss for both."
)


def _summary(orders: Orders, calibration_end: int, holdout_end: int, unit_days: float) -> ltv.PurchaseSummary:
    """The orders as per-customer RFM (customers are `orders.user` codes) in model units of `unit_days` days."""
    return ltv.summarize_purchases(orders.user, orders.ts / DAY, orders.amount, calibration_end / DAY,
                                   holdout_end / DAY, unit_days=unit_days)


def _fit(s: ltv.PurchaseSummary, penalizer: float, when: str) -> tuple[ltv.BGNBD, ltv.GammaGamma]:
    """Both models on one summary; a Gamma-Gamma fit without a finite mean spend becomes a config error that names
    the setting to change, since that is what the user can do about it."""
    bg = ltv.fit_bgnbd(s.frequency, s.recency, s.T, penalizer=penalizer)
    try:
        gg = ltv.fit_gamma_gamma(s.monetary_frequency, s.monetary, penalizer=penalizer)
    except ValueError as e:
        raise ConfigError(f"ltv ({when}): {e}; analytics.ltv.penalizer is {penalizer:g}") from e
    return bg, gg


def _param_rows(fit: str, bg: ltv.BGNBD, gg: ltv.GammaGamma) -> list[dict[str, Any]]:
    """Both models' parameters with their asymptotic standard errors, one row each."""
    return [{"fit": fit, "model": model, "parameter": k, "value": v, "std_error": se}
            for model, params, errors in (("BG/NBD", bg.params, bg.std_errors),
                                          ("Gamma-Gamma", gg.params, gg.std_errors))
            for (k, v), se in zip(params.items(), errors, strict=True)]


def _counts(s: ltv.PurchaseSummary) -> dict[str, int]:
    """What the rules did to one summary: who the models see and who Gamma-Gamma leaves out."""
    no_spend = (s.monetary_frequency < 1) | (s.monetary <= 0)
    return {
        "customers": len(s),
        "one_purchase_customers": int(np.sum(s.frequency == 0)),
        "excluded_from_gamma_gamma": int(np.sum(no_spend)),
        "repeat_days_without_positive_total": int(np.sum((s.frequency > 0) & no_spend)),
        "non_positive_days": s.n_nonpositive_days,
        "late_customers": s.n_late_customers,
    }


def _spend_independence(s: ltv.PurchaseSummary) -> float | None:
    """Pearson correlation of frequency and mean spend over the Gamma-Gamma customers: near 0 is what the model
    assumes before its spend is multiplied by BG/NBD's purchases."""
    keep = (s.monetary_frequency >= 1) & (s.monetary > 0)
    if keep.sum() < 3 or np.std(s.frequency[keep]) == 0 or np.std(s.monetary[keep]) == 0:
        return None
    return float(np.corrcoef(s.frequency[keep], s.monetary[keep])[0, 1])


def _by_frequency(s: ltv.PurchaseSummary, predicted: np.ndarray) -> list[dict[str, Any]]:
    """Mean actual, model and naive next-period purchases per calibration frequency (pooled at the cap): the
    classic BG/NBD check, which shows where in the customer base the model over- or under-predicts."""
    f = np.minimum(s.frequency, _FREQ_CAP).astype(int)
    rows = []
    for k in range(_FREQ_CAP + 1):
        sel = f == k
        if not sel.any():
            continue
        rows.append({"frequency": f"{k}+" if k == _FREQ_CAP else str(k), "customers": int(sel.sum()),
                     "actual": float(s.holdout_purchases[sel].mean()), "model": float(predicted[sel].mean()),
                     "naive": float(s.naive_purchases[sel].mean())})
    return rows


def _figures(by_freq: list[dict[str, Any]], value: np.ndarray, p_alive: np.ndarray, days_since: np.ndarray,
             frequency: np.ndarray, horizon_days: float) -> dict[str, Any]:
    fig_f = new_figure(6.5, 3.2)
    ax = fig_f.add_subplot()
    names = [r["frequency"] for r in by_freq]
    pos = np.arange(len(names))
    ax.bar(pos, [r["actual"] for r in by_freq], color="lightgrey", label="actual")
    ax.plot(pos, [r["model"] for r in by_freq], marker="o", label="BG/NBD")
    ax.plot(pos, [r["naive"] for r in by_freq], marker="s", ls="--", label="naive (same as last period)")
    ax.set_xticks(pos, names)
    ax.set(xlabel="repeat purchase days in the calibration period", ylabel="mean next-period purchase days",
           title="Next-period purchases: predicted vs actual")
    ax.legend(fontsize=7)
    fig_v = new_figure(6.5, 3.2)
    axv = fig_v.add_subplot()
    axv.hist(np.log10(np.maximum(value, 1e-2)), bins=50, color="tab:purple")
    axv.set(xlabel="log10 expected value", ylabel="customers",
            title=f"Expected value over {horizon_days:g} days (median {np.median(value):.1f})")
    fig_a = new_figure(6.5, 3.2)
    axa = fig_a.add_subplot()
    sc = axa.scatter(days_since, p_alive, c=np.log1p(frequency), s=4, cmap="viridis", alpha=0.6)
    fig_a.colorbar(sc, ax=axa, label="log1p(repeat purchase days)")
    axa.set(xlabel="days since the last purchase", ylabel="P(alive)", ylim=(-0.02, 1.02),
            title="P(alive) against recency")
    return {"purchases_by_frequency": fig_f, "value_distribution": fig_v, "p_alive_vs_recency": fig_a}


def run_ltv(fs: FeatureStoreConfig, cfg: AnalyticsConfig, *, tracking_uri: str | None, scenario: str,
            orders: Orders | None = None) -> dict[str, Any]:
    """`recforge ltv`: evaluate BG/NBD + Gamma-Gamma on the time split against the naive baseline, then refit on
    everything and write each customer's expected purchases, P(alive) and expected value (online and Parquet)."""
    t0 = time.perf_counter()
    lc = cfg.ltv
    unit = lc.unit_days
    orders = orders or read_orders(fs)
    split = orders.split(cfg.holdout_days)
    end = orders.data_end

    # evaluation: fitted on what was known at the split, scored on the next period
    cal = _summary(orders, split, end, unit)
    bg_cal, gg_cal = _fit(cal, lc.penalizer, "calibration")
    evaluation = ltv.evaluate(bg_cal, gg_cal, cal)
    pred_n = bg_cal.expected_purchases(cal.horizon, cal.frequency, cal.recency, cal.T)
    pred_rev = pred_n * gg_cal.expected_spend(cal.monetary_frequency, cal.monetary)
    beats = {f"{what}_{metric}": bool(evaluation[f"{what}_{metric}_model"] < evaluation[f"{what}_{metric}_naive"])
             if metric == "mae" else
             bool(evaluation[f"{what}_{metric}_model"] > evaluation[f"{what}_{metric}_naive"])
             for what in ("purchases", "revenue") for metric in ("mae", "corr")}

    # the served predictions: refitted on everything up to the end of the data
    horizon_days = float(lc.horizon_days or cfg.holdout_days)
    horizon = horizon_days / unit
    rate = (1.0 + lc.annual_discount_rate) ** (unit / 365.25) - 1.0  # per model time unit
    now = _summary(orders, end, end + int(horizon_days * DAY), unit)
    bg, gg = _fit(now, lc.penalizer, "served")
    exp_n = bg.expected_purchases(horizon, now.frequency, now.recency, now.T)
    alive = bg.p_alive(now.frequency, now.recency, now.T)
    buys = 1.0 - bg.probability_of_purchases(horizon, now.frequency, now.recency, now.T, max_purchases=1)[:, 0]
    spend = gg.expected_spend(now.monetary_frequency, now.monetary)
    value = ltv.clv(bg, gg, now.frequency, now.recency, now.T, now.monetary, horizon, rate,
                    spend_frequency=now.monetary_frequency)
    key = orders.user_key
    n = len(now)
    values = pa.table({
        key: orders.users.take(pa.array(now.customer.astype(np.int64))),
        "frequency": now.frequency.astype(np.int64), "recency_days": now.recency * unit, "age_days": now.T * unit,
        "monetary": now.monetary, "expected_spend": spend,
        "expected_purchases": exp_n, "p_purchase": buys, "p_alive": alive, "expected_value": value,
        "ts": np.full(n, end, dtype=np.int64),
    })
    online = publish_online(fs, lc.view, values.select([key, *SERVED_COLUMNS, "ts"]), key)

    holdout = pa.table({
        key: orders.users.take(pa.array(cal.customer.astype(np.int64))),
        "frequency": cal.frequency.astype(np.int64), "recency": cal.recency, "T": cal.T, "monetary": cal.monetary,
        "predicted_purchases": pred_n, "actual_purchases": cal.holdout_purchases, "naive_purchases":
        cal.naive_purchases, "predicted_revenue": pred_rev, "actual_revenue": cal.holdout_revenue,
        "naive_revenue": cal.naive_revenue,
    })
    table = [{"target": what, "metric": metric, "forecast": forecast, "model": evaluation[f"{what}_{metric}_{who}"],
              "naive": evaluation[f"{what}_{metric}_naive"],
              "model_better": beats[f"{what}_{metric}"] if who == "model" else
              bool(evaluation[f"{what}_{metric}_{who}"] < evaluation[f"{what}_{metric}_naive"])}
             for what in ("purchases", "revenue") for metric, forecast, who in FORECASTS]
    by_freq = _by_frequency(cal, pred_n)
    params = {
        "calibration": _param_rows("calibration", bg_cal, gg_cal),
        "served": _param_rows("served", bg, gg),
    }
    result = {
        "customers": n, "calibration_customers": len(cal),
        "data": {"start": day(orders.data_start), "split": day(split), "end": day(end),
                 "holdout_days": cfg.holdout_days},
        "settings": {"unit_days": unit, "horizon_days": horizon_days, "annual_discount_rate": lc.annual_discount_rate,
                     "discount_rate_per_unit": rate, "penalizer": lc.penalizer},
        "parameters": params,
        "converged": {"calibration": bool(bg_cal.converged and gg_cal.converged), "served": bool(bg.converged and
                                                                                                 gg.converged)},
        "mean_spend": {"calibration": gg_cal.mean_spend, "served": gg.mean_spend},
        "evaluation": evaluation, "evaluation_table": table, "model_beats_naive": beats,
        "by_frequency": by_freq,
        "rules": {"calibration": _counts(cal), "served": _counts(now)},
        "frequency_monetary_corr": {"calibration": _spend_independence(cal), "served": _spend_independence(now)},
        "served": {"expected_purchases_total": float(exp_n.sum()), "expected_value_total": float(value.sum()),
                   "expected_buyers": float(buys.sum()),
                   "expected_value_median": float(np.median(value)), "p_alive_mean": float(alive.mean())},
        "counts": orders.counts, "assumptions": ASSUMPTIONS,
        "online": online,
    }
    figures = _figures(by_freq, value, alive, (now.T - now.recency) * unit, now.frequency, horizon_days)
    metrics = {f"{what}_{metric}_{who}": evaluation[f"{what}_{metric}_{who}"] for what in ("purchases", "revenue")
               for metric in ("mae", "corr") for who in ("model", "naive")}
    metrics.update({f"{what}_mae_mean": evaluation[f"{what}_mae_mean"] for what in ("purchases", "revenue")})
    metrics.update({f"bgnbd_{k}": v for k, v in bg.params.items()})
    metrics.update({f"gamma_gamma_{k}": v for k, v in gg.params.items()})
    metrics.update({"customers": n, "expected_value_total": float(value.sum())})
    out = write_analysis(
        "ltv", output_dir(fs, cfg) / "ltv",
        tables={"customer_value": values, "holdout": holdout, "evaluation": pa.Table.from_pylist(table),
                "parameters": pa.Table.from_pylist(params["calibration"] + params["served"]),
                "by_frequency": pa.Table.from_pylist(by_freq)},
        result=result, figures=figures, tracking_uri=tracking_uri, scenario=scenario, metrics=metrics,
        params={"unit_days": unit, "horizon_days": horizon_days, "annual_discount_rate": lc.annual_discount_rate,
                "penalizer": lc.penalizer, "holdout_days": cfg.holdout_days})
    result.update({"outputs": {**out.tables, **out.report}, "mlflow_run": out.mlflow_run,
                   "seconds": round(time.perf_counter() - t0, 2)})
    return result
