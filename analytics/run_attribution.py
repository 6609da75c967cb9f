"""`recforge attribution` end to end: read (or generate) customer journeys, credit every channel with each
attribution method of analytics.attribution, and write tables, plots, report and MLflow run
(analytics.report.write_analysis).

Generated journeys (feature_store.readers.journeys) carry the true contribution of each channel, so on them the
report can say how far each method is from the truth, which is the only honest way to choose a method: last touch
is what most tools report by default, and the comparison shows what that default costs. On the user's own files
there is no truth; the methods are shown side by side and their disagreement is the information.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from analytics.attribution import (
    METHODS,
    OUTCOME_COLUMNS,
    TOUCHPOINT_COLUMNS,
    AttributionResult,
    attribute,
    rank_correlation,
)
from analytics.config import AnalyticsConfig
from analytics.report import output_dir, write_analysis
from feature_store.config import ConfigError, FeatureStoreConfig
from feature_store.readers.journeys import Journeys, generate_journeys
from training.common.plots import new_figure

# One line per method for the report: what it credits and what it is blind to.
METHOD_NOTES: dict[str, str] = {
    "first_touch": "the whole conversion goes to the journey's first channel; rewards openers, blind to the rest",
    "last_touch": "the whole conversion goes to the last channel before it; the usual default, biased to closers",
    "linear": "every touchpoint gets an equal share; position-free, but repeated touches count repeatedly",
    "time_decay": "touchpoints weighted by 2^(-age / half-life) before the conversion; recent contacts count more",
    "markov": "removal effect in a Markov chain of the paths (analytics.attribution.markov_order): conversions "
              "lost without the channel",
    "shapley": "Shapley values of the game channels -> conversions; a fair, order-free split of each conversion",
}


def _read(path: str, key: str, columns: tuple[str, ...]) -> pa.Table:
    """A Parquet or CSV file named by `analytics.attribution.<key>`, relative to the working directory; a
    missing file or column names the key and the file, since that is what the user has to fix."""
    where = f"analytics.attribution.{key}"
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{where}: file {path} not found (a relative path is read from the directory the "
                          f"command runs in)")
    try:
        table = pacsv.read_csv(file) if file.suffix.lower() == ".csv" else pq.read_table(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"{where}: cannot read {path} as {'CSV' if file.suffix.lower() == '.csv' else 'Parquet'}:"
                          f" {exc}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ConfigError(f"{where}: file {path} has no column(s) {missing}; it needs {list(columns)} and has "
                          f"{table.column_names}")
    return table


def _figures(channels: list[str], methods: list[str], shares: dict[str, dict[str, float]],
             truth: dict[str, float] | None, removal: dict[str, float] | None) -> dict[str, Any]:
    """Credit share per channel for every method as grouped bars (the truth beside them when known), and the
    Markov removal effects (how much of P(conversion) the paths lose without each channel)."""
    series = [(m, shares[m]) for m in methods] + ([("truth", truth)] if truth is not None else [])
    x = np.arange(len(channels))
    width = 0.8 / len(series)
    fig_c = new_figure(7.5, 3.6)
    ax = fig_c.add_subplot()
    for i, (name, values) in enumerate(series):
        ax.bar(x - 0.4 + (i + 0.5) * width, [values.get(c, 0.0) for c in channels], width=width, label=name,
               color="black" if name == "truth" else None)
    ax.set_xticks(x, channels)
    ax.tick_params(axis="x", rotation=20)
    ax.set(ylabel="share of the conversions", title="Credit share per channel and method")
    ax.legend(fontsize=7, ncol=min(4, len(series)))
    figures = {"credit_shares": fig_c}
    if removal is not None:
        fig_m = new_figure(6.5, 3.2)
        axm = fig_m.add_subplot()
        axm.bar(channels, [removal.get(c, 0.0) for c in channels], color="tab:purple")
        axm.tick_params(axis="x", rotation=20)
        axm.set(ylabel="removal effect", title="Markov removal effects (share of P(conversion) lost)")
        figures["markov_removal"] = fig_m
    return figures


def _journeys(cfg: AnalyticsConfig) -> tuple[pa.Table, pa.Table, Journeys | None]:
    ac = cfg.attribution
    if ac.touchpoints is not None and ac.outcomes is not None:
        return (_read(ac.touchpoints, "touchpoints", TOUCHPOINT_COLUMNS),
                _read(ac.outcomes, "outcomes", OUTCOME_COLUMNS), None)
    gen = generate_journeys(ac.journeys, ac.seed, ac.channels)
    return gen.touchpoints, gen.journeys, gen


def _result(res: AttributionResult, gen: Journeys | None, cfg: AnalyticsConfig) -> dict[str, Any]:
    ac = cfg.attribution
    methods = list(METHODS)
    shares = {m: res.credit(m, "conversion_share") for m in methods}
    credit = {m: res.credit(m, "conversions") for m in methods}
    truth = dict(gen.truth_shares) if gen is not None else None
    spearman = {m: rank_correlation(credit[m], gen.truth) for m in methods} if gen is not None else None
    meta = res.metadata
    shap = meta["shapley"]
    stderr = shap["stderr_conversions"]
    comparison = None
    error: dict[str, float] = {}
    if spearman is not None:
        # total variation distance between a method's shares and the true shares: the credit it misplaces
        error = {m: sum(abs(shares[m].get(c, 0.0) - truth[c]) for c in truth) / 2 for m in methods}
        best = max(methods, key=lambda m: (spearman[m], -error[m]))  # ties in rank go to the closer shares
        comparison = {"default": "last_touch", "default_spearman": spearman["last_touch"], "best": best,
                      "best_spearman": spearman[best], "gap": spearman[best] - spearman["last_touch"],
                      "default_share_error": error["last_touch"], "best_share_error": error[best]}
    return {
        "source": "generated" if gen is not None else "files",
        "files": None if gen is not None else {"touchpoints": ac.touchpoints, "outcomes": ac.outcomes},
        "journeys": meta["n_journeys"], "touchpoints": meta["n_touchpoints"],
        "null_channel_touchpoints": meta["null_channel_touchpoints"],
        "total_conversions": meta["total_conversions"], "total_value": meta["total_value"],
        "half_life_days": ac.half_life_days, "seed": ac.seed,
        "channels": list(res.channels),
        "methods": [{"method": m, "note": METHOD_NOTES[m], "spearman": None if spearman is None else spearman[m]}
                    for m in methods],
        "shares": shares, "credit": credit,
        "rows": [{"channel": c, "shares": {m: shares[m][c] for m in methods},
                  "truth": None if truth is None else truth.get(c, 0.0)} for c in res.channels],
        "truth": None if gen is None else {"shares": truth, "conversions": dict(gen.truth),
                                           "effects": dict(gen.effects), "base_rate": gen.base_rate},
        "spearman": spearman, "comparison": comparison,
        "share_error": error if spearman is not None else None,
        "markov": meta["markov"],
        "shapley": {"mode": shap["mode"], "permutations": shap["permutations"],
                    "exact_max_channels": shap["exact_max_channels"], "stderr_conversions": stderr,
                    "max_stderr_conversions": max(stderr.values(), default=0.0)},
    }


def run_attribution(fs: FeatureStoreConfig, cfg: AnalyticsConfig, *, tracking_uri: str | None,
                    scenario: str) -> dict[str, Any]:
    """`recforge attribution`: credit conversions to channels with every method, on the `touchpoints`/`outcomes`
    files of `analytics.attribution` or on generated journeys with a known truth; write tables (credit, and truth
    when generated), plots, report and MLflow run under `<analytics dir>/attribution`.

    Returns the report's result (source, counts, channels, methods with their notes and Spearman correlation with
    the truth when known, shares, credit, truth, comparison, markov, shapley, seconds) plus `outputs` and
    `mlflow_run`."""
    t0 = time.perf_counter()
    ac = cfg.attribution
    touchpoints, outcomes, gen = _journeys(cfg)
    try:
        res = attribute(touchpoints, outcomes, half_life_days=ac.half_life_days,
                        exact_max_channels=ac.exact_max_channels, permutations=ac.permutations, seed=ac.seed,
                        markov_order=ac.markov_order)
    except ValueError as exc:
        if gen is not None:
            raise
        raise ConfigError(f"analytics.attribution: the journeys in {ac.touchpoints} and {ac.outcomes} cannot be "
                          f"attributed: {exc}") from None
    result = _result(res, gen, cfg)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    tables = {"credit": res.table}
    if gen is not None:
        tables["truth"] = gen.truth_table()
    figures = _figures(result["channels"], list(METHODS), result["shares"],
                       result["truth"]["shares"] if gen is not None else None,
                       result["markov"]["removal_effects"])
    metrics: dict[str, float] = {"journeys": result["journeys"], "conversions": result["total_conversions"],
                                 "seconds": result["seconds"]}
    if result["spearman"] is not None:
        metrics.update({f"spearman_{m}": v for m, v in result["spearman"].items()})
    out = write_analysis(
        "attribution", output_dir(fs, cfg) / "attribution", tables=tables, result=result, figures=figures,
        tracking_uri=tracking_uri, scenario=scenario, metrics=metrics,
        params={"source": result["source"], "journeys": result["journeys"], "channels": len(result["channels"]),
                "half_life_days": ac.half_life_days, "exact_max_channels": ac.exact_max_channels,
                "permutations": ac.permutations, "seed": ac.seed,
                "touchpoints": ac.touchpoints, "outcomes": ac.outcomes})
    result.update({"outputs": {**out.tables, **out.report}, "mlflow_run": out.mlflow_run})
    return result
