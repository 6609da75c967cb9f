"""An experiment's results from the offline event log: exposures joined to outcomes, per-arm metrics and the tests.

Exposures are the `experiments.exposure_type` events the serving replicas logged (one per shown item, with the
experiment and arm in `context`). Outcomes are click and purchase events: one carrying an `exposure_id` is
joined by it; one without is credited to the user's latest exposure in this experiment that showed the item
within `attribution_window_s` before it (pandas' `merge_asof`). Outcomes whose `exposure_id` matches no logged
exposure are counted, never joined; so are exposures the champion answered because an arm's model was not loaded
(arm null), and events after the experiment stopped.

Metrics per arm (per user, the randomisation unit): exposures (answers), impressions (items shown), users, CTR
(clicked shown items / shown items, each item counted once per answer; its variance by the delta method over
users), conversion (users with a purchase), revenue per user. Each challenger is compared with the control
by the fixed-horizon test (z for CTR, two proportions for conversion, Welch for revenue; CUPED with the users'
pre-period value of the same metric where the log has a pre-period) and by the always-valid mSPRT, whose p-value
is the one decisions use: it stays valid however often someone looks. With more than two arms both are Holm
corrected. The sample-ratio-mismatch check counts each user once, at their first exposure, against the shares
in force at that time; a mismatch marks the whole result untrustworthy.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from serving.config import ExperimentsConfig
from serving.experiments import stats
from serving.experiments.store import ExperimentState

LOOKS = 40  # points of the cumulative curves (and mSPRT looks) in a report


@dataclass
class Joined:
    """Exposures of one experiment with their outcomes: one row per exposure (answer)."""

    exposures: pd.DataFrame  # exposure_id, user_id, arm, ts, items (shown), clicked (items), purchases, revenue
    counts: dict[str, int] = field(default_factory=dict)
    pre: pd.DataFrame | None = None  # user_id, pre_conversion, pre_revenue, pre_clicks (before start)


def _context_columns(table: pa.Table) -> pd.DataFrame:
    """experiment, arm and position of each row's JSON context (pyarrow's JSON reader: one pass, no loop)."""
    import pyarrow.json as pj

    text = "\n".join(table.column("context").to_pylist()).encode()
    parsed = pj.read_json(pa.py_buffer(text)) if text else pa.table({})
    out = pd.DataFrame(index=range(table.num_rows))
    for col in ("experiment", "arm", "items"):
        out[col] = parsed.column(col).to_pandas().astype(object) if col in parsed.column_names else None
    return out


def join(state: ExperimentState, events: pa.Table, cfg: ExperimentsConfig, purchase_types: list[str],
         *, now: float) -> Joined:
    """Exposures of `state`'s experiment and the outcomes credited to them (see the module docstring)."""
    d = state.definition
    start, stop = state.started_at, state.stopped_at
    types = events.column("type")
    is_exp = pc.and_(pc.equal(types, cfg.exposure_type),
                     pc.and_(pc.invert(pc.is_null(events.column("exposure_id"))),
                             pc.invert(pc.is_null(events.column("context")))))
    imp = events.filter(is_exp)
    ctx = _context_columns(imp)
    # ids as Python objects: pandas' Arrow-backed strings cannot join an empty side (no type to infer)
    imp_df = pd.DataFrame({"exposure_id": imp.column("exposure_id").to_pandas().astype(object),
                           "user_id": imp.column("user_id").to_pandas(),
                           "item_id": imp.column("item_id").to_pandas().astype(object),
                           "ts": imp.column("ts_ms").to_pandas() / 1e3,
                           "experiment": ctx["experiment"], "arm": ctx["arm"]})
    # one row per shown item: an exposure event lists its items in context.items (else it shows its item_id)
    listed = ctx["items"].notna()
    if listed.any():
        imp_df.loc[listed, "item_id"] = ctx.loc[listed, "items"].map(json.loads)
        imp_df = imp_df.explode("item_id", ignore_index=True)
    all_exposure_ids = set(imp_df["exposure_id"].unique())
    mine = imp_df[imp_df["experiment"] == state.name]
    counts = {"exposures_without_arm": int(mine.loc[mine["arm"].isna(), "exposure_id"].nunique())}
    mine = mine[mine["arm"].notna()]
    if stop is not None:
        counts["exposures_after_stop"] = int(mine.loc[mine["ts"] > stop, "exposure_id"].nunique())
    exposures = (mine.groupby("exposure_id", sort=False)
                 .agg(user_id=("user_id", "first"), arm=("arm", "first"), ts=("ts", "min"), items=("item_id", "size"))
                 .reset_index())

    outcome_types = list(dict.fromkeys([*cfg.click_types, *purchase_types]))
    out = events.filter(pc.is_in(types, value_set=pa.array(outcome_types, pa.string())))
    out_df = pd.DataFrame({"event_id": out.column("event_id").to_pandas(),
                           "user_id": out.column("user_id").to_pandas(),
                           "item_id": out.column("item_id").to_pandas().astype(object),
                           "ts": out.column("ts_ms").to_pandas() / 1e3,
                           "type": out.column("type").to_pandas(),
                           "value": out.column("value").to_pandas().fillna(0.0),
                           "exposure_id": out.column("exposure_id").to_pandas().astype(object)})
    window = d.attribution_window_s
    horizon = (stop if stop is not None else now) + window
    pre_df = out_df[(out_df["ts"] < start) & (out_df["ts"] >= start - d.pre_period_s)] if d.pre_period_s else None
    out_df = out_df[(out_df["ts"] >= start)]
    counts["outcomes_after_window"] = int((out_df["ts"] > horizon).sum())
    out_df = out_df[out_df["ts"] <= horizon]

    tagged = out_df[out_df["exposure_id"].notna()]
    unknown = ~tagged["exposure_id"].isin(all_exposure_ids)
    counts["outcomes_unknown_exposure"] = int(unknown.sum())
    cols = ["exposure_id", "item_id", "type", "value"]
    by_id = tagged[tagged["exposure_id"].isin(set(exposures["exposure_id"]))][cols]

    untagged = out_df[out_df["exposure_id"].isna()].sort_values("ts")
    shown = mine[["user_id", "item_id", "ts", "exposure_id"]].sort_values("ts")
    if len(untagged) and len(shown):
        key = ["user_id", "item_id"]
        matched = pd.merge_asof(untagged.drop(columns="exposure_id"), shown, on="ts", by=key, direction="backward",
                                tolerance=window)
        by_window = matched[matched["exposure_id"].notna()][cols]
    else:
        by_window = by_id.iloc[0:0]
    counts["outcomes_by_exposure_id"] = len(by_id)
    counts["outcomes_by_window"] = len(by_window)
    credited = pd.concat([by_id, by_window], ignore_index=True)
    is_click = credited["type"].isin(cfg.click_types)
    is_purchase = credited["type"].isin(purchase_types)
    # a click counts once per shown item: (exposure, item) pairs that were shown, however often clicked
    pairs = credited.loc[is_click, ["exposure_id", "item_id"]].drop_duplicates()
    shown_pairs = mine[["exposure_id", "item_id"]].drop_duplicates()
    clicked = pairs.merge(shown_pairs, on=["exposure_id", "item_id"], how="inner")
    counts["clicks_on_items_not_shown"] = len(pairs) - len(clicked)
    clicks = clicked.groupby("exposure_id").size().rename("clicked")
    per = pd.DataFrame({"exposure_id": credited["exposure_id"], "purchases": is_purchase.astype(np.int64),
                        "revenue": np.where(is_purchase, credited["value"], 0.0)})
    per = per.groupby("exposure_id").agg(purchases=("purchases", "sum"), revenue=("revenue", "sum"))
    exposures = (exposures.join(clicks, on="exposure_id").join(per, on="exposure_id")
                 .fillna({"clicked": 0, "purchases": 0, "revenue": 0.0}))
    pre = None
    if pre_df is not None:
        pre_purchase = pre_df["type"].isin(purchase_types)
        pre = pd.DataFrame({"user_id": pre_df["user_id"], "pre_conversion": pre_purchase.astype(np.int64),
                            "pre_revenue": np.where(pre_purchase, pre_df["value"], 0.0),
                            "pre_clicks": pre_df["type"].isin(cfg.click_types).astype(np.int64)})
        pre = pre.groupby("user_id").agg(pre_conversion=("pre_conversion", "max"),
                                         pre_revenue=("pre_revenue", "sum"), pre_clicks=("pre_clicks", "sum"))
    return Joined(exposures, counts, pre)


# ------------------------------------------------------------------------------------------------ per user
def per_user(exposures: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, user): exposures (answers), impressions (shown items), clicks (clicked shown items),
    converted (0/1), revenue."""
    g = exposures.assign(converted=(exposures["purchases"] > 0).astype(np.int64)).groupby(["arm", "user_id"],
                                                                                          sort=False)
    return g.agg(exposures=("exposure_id", "size"), impressions=("items", "sum"), clicks=("clicked", "sum"),
                 converted=("converted", "max"),
                 revenue=("revenue", "sum")).reset_index()


def arm_summary(users: pd.DataFrame, arm: str, alpha: float) -> dict[str, Any]:
    """Exposures, users and each metric of one arm with its (1 - alpha) confidence interval."""
    from statsmodels.stats.proportion import proportion_confint

    u = users[users["arm"] == arm]
    n = len(u)
    out: dict[str, Any] = {"arm": arm, "users": n, "exposures": int(u["exposures"].sum()),
                           "impressions": int(u["impressions"].sum()),
                           "clicks": int(u["clicks"].sum()), "conversions": int(u["converted"].sum()),
                           "revenue": float(u["revenue"].sum())}
    z = float(stats.sps.norm.ppf(1 - alpha / 2))
    ctr, var = stats.ratio_variance(u["clicks"].to_numpy(), u["impressions"].to_numpy())
    out["ctr"] = _interval(ctr, z * math.sqrt(var) if var == var else float("nan"))
    if n:
        low, high = proportion_confint(int(u["converted"].sum()), n, alpha=alpha, method="wilson")
        out["conversion"] = {"value": float(u["converted"].mean()), "low": float(low), "high": float(high)}
        rev = u["revenue"].to_numpy(dtype=np.float64)
        se = rev.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
        out["revenue_per_user"] = _interval(float(rev.mean()), z * se)
    else:
        out["conversion"] = out["revenue_per_user"] = _interval(float("nan"), float("nan"))
    return out


def _interval(value: float, half: float) -> dict[str, float]:
    return {"value": value, "low": value - half, "high": value + half}


def compare(users: pd.DataFrame, control: str, arm: str, metric: str, alpha: float,
            pre: pd.DataFrame | None = None) -> tuple[stats.Comparison, float, float, bool]:
    """(fixed-horizon comparison, the difference, its variance, whether CUPED was applied) of `arm` against
    `control` on `metric`; the variance feeds the mSPRT."""
    c, t = users[users["arm"] == control], users[users["arm"] == arm]
    if len(c) < 2 or len(t) < 2:  # nothing to compare yet (an early look, an arm that got no users)
        nan = float("nan")
        return stats.Comparison(nan, nan, nan, nan, nan, nan, nan), nan, nan, False
    if metric == "ctr":
        comp = stats.ratio(c["clicks"].to_numpy(), c["impressions"].to_numpy(), t["clicks"].to_numpy(),
                           t["impressions"].to_numpy(), alpha=alpha)
        _, vc = stats.ratio_variance(c["clicks"].to_numpy(), c["impressions"].to_numpy())
        _, vt = stats.ratio_variance(t["clicks"].to_numpy(), t["impressions"].to_numpy())
        return comp, comp.difference, vc + vt, False
    column = "converted" if metric == "conversion" else "revenue"
    yc, yt = c[column].to_numpy(dtype=np.float64), t[column].to_numpy(dtype=np.float64)
    cuped = False
    if pre is not None and len(pre) and len(yc) > 1 and len(yt) > 1:
        covariate = "pre_conversion" if metric == "conversion" else "pre_revenue"
        xc = c["user_id"].map(pre[covariate]).fillna(0.0).to_numpy(dtype=np.float64)
        xt = t["user_id"].map(pre[covariate]).fillna(0.0).to_numpy(dtype=np.float64)
        if np.var(np.concatenate([xc, xt])) > 0:
            adjusted = stats.cuped(np.concatenate([yc, yt]), np.concatenate([xc, xt]))
            yc, yt, cuped = adjusted[: len(yc)], adjusted[len(yc):], True
    if metric == "conversion" and not cuped:
        comp = stats.two_proportions(int(yc.sum()), len(yc), int(yt.sum()), len(yt), alpha=alpha)
    else:
        comp = stats.welch(yc, yt, alpha=alpha)
    var = (yc.var(ddof=1) / len(yc) + yt.var(ddof=1) / len(yt)) if len(yc) > 1 and len(yt) > 1 else float("nan")
    return comp, float(yt.mean() - yc.mean()) if len(yc) and len(yt) else float("nan"), float(var), cuped


# ------------------------------------------------------------------------------------------------ SRM
def srm_check(state: ExperimentState, exposures: pd.DataFrame) -> tuple[stats.SRM, list[str]] | None:
    """Users counted once, at their first exposure, against the shares in force then (each allocation period's
    new users are split by that period's shares): the test and the arms it counts (those that had a share).
    None before there are users."""
    if exposures.empty:
        return None
    first = exposures.sort_values("ts").drop_duplicates("user_id")
    at = np.array([a.at for a in state.allocations] or [state.started_at])
    shares = np.array([a.shares for a in state.allocations] or [state.definition.initial_shares()])
    period = np.clip(np.searchsorted(at, first["ts"].to_numpy(), side="right") - 1, 0, len(at) - 1)
    names = state.arm_names
    observed = first["arm"].map({n: i for i, n in enumerate(names)}).to_numpy()
    known = ~pd.isna(observed)
    observed, period = observed[known].astype(np.int64), period[known]
    expected = shares[period].sum(axis=0)  # expected users per arm
    live = expected > 0
    counts = np.bincount(observed, minlength=len(names))
    if live.sum() < 2 or counts.sum() == 0:
        return None
    if (counts[~live] > 0).any():  # users in an arm with share 0: assignment is broken
        return (stats.SRM(tuple(int(x) for x in counts), tuple(float(x) for x in expected), float("inf"), 0.0),
                names)
    return (stats.srm(list(counts[live]), list(expected[live] / expected[live].sum())),
            [n for n, keep in zip(names, live) if keep])


# ------------------------------------------------------------------------------------------------ result
def analyze(state: ExperimentState, joined: Joined, *, looks: int = LOOKS) -> dict[str, Any]:
    """The whole result of an experiment as plain data (what `experiment status | report`, the guardrails, the
    bandit and `promote --experiment` read)."""
    d = state.definition
    alpha = d.design.alpha
    tau = d.sequential_tau or d.design.mde
    exposures = joined.exposures
    users = per_user(exposures)
    names = state.arm_names
    control = d.control_arm
    challengers = [n for n in names if n != control]
    metrics = list(dict.fromkeys([d.primary, *(g.metric for g in d.guardrails)]))
    checked = srm_check(state, exposures)
    srm, srm_arms = checked if checked is not None else (None, [])
    comparisons: dict[str, dict[str, Any]] = {m: {} for m in metrics}
    for metric in metrics:
        for arm in challengers:
            comparisons[metric][arm] = _comparison(users, exposures, control, arm, metric, alpha, tau, joined.pre,
                                                   looks)
        if len(challengers) > 1:
            for key in ("p_value", "always_valid_p"):
                raw = [comparisons[metric][a][key] for a in challengers]
                finite = [p if p == p else 1.0 for p in raw]
                _, adjusted = stats.holm(finite, alpha=alpha)
                for a, p in zip(challengers, adjusted):
                    comparisons[metric][a][f"{key}_holm"] = p
        else:
            for a in challengers:
                comparisons[metric][a]["p_value_holm"] = comparisons[metric][a]["p_value"]
                comparisons[metric][a]["always_valid_p_holm"] = comparisons[metric][a]["always_valid_p"]
    trustworthy = srm is None or not srm.mismatch
    winner, decision = _decide(state, comparisons, alpha, trustworthy)
    return {
        "experiment": state.to_json(),
        "description": d.description,
        "primary": d.primary,
        "control": control,
        "alpha": alpha,
        "sequential": {"method": "mSPRT (normal mixture), always-valid p-values", "tau": tau},
        "planned_users_per_arm": state.planned_users_per_arm,
        "arms": [arm_summary(users, a, alpha) for a in names],
        "comparisons": comparisons,
        "started_ts": state.started_at,
        "stopped_ts": state.stopped_at,
        "srm": None if srm is None else {"arms": srm_arms, "observed": list(srm.observed),
                                          "expected": list(srm.expected),
                                          "statistic": srm.statistic, "p_value": srm.p_value,
                                          "mismatch": srm.mismatch},
        "trustworthy": trustworthy,
        "counts": joined.counts,
        "guardrails": [g.model_dump() for g in d.guardrails],
        "allocations": [{"at": a.at, "at_iso": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a.at)),
                         "shares": dict(zip(names, a.shares)), "reason": a.reason}
                        for a in state.allocations],
        "curves": _curves(exposures, names, alpha, looks),
        "winner": winner,
        "decision": decision,
    }


def _comparison(users: pd.DataFrame, exposures: pd.DataFrame, control: str, arm: str, metric: str, alpha: float,
                tau: float, pre: pd.DataFrame | None, looks: int) -> dict[str, Any]:
    comp, diff, var, cuped = compare(users, control, arm, metric, alpha, pre)
    # always-valid p: the running minimum of 1/LR over the looks so far (cumulative data at each look)
    series = []
    for t_end in _look_times(exposures, looks):
        u = per_user(exposures[exposures["ts"] <= t_end])
        _, d_k, v_k, _ = compare(u, control, arm, metric, alpha)
        if v_k == v_k and v_k > 0:
            series.append((d_k, v_k))
    if var == var and var > 0:
        series.append((diff, var))
    if series:
        ds, vs = np.array(series).T
        p_av = float(stats.msprt(ds, vs, tau * tau)[-1])
        low, high = stats.always_valid_interval(diff, var, tau * tau, alpha) if var == var and var > 0 else (
            float("nan"), float("nan"))
    else:
        p_av, low, high = 1.0, float("nan"), float("nan")
    return {"metric": metric, "control": comp.control, "treatment": comp.treatment, "difference": comp.difference,
            "relative": comp.difference / comp.control if comp.control else float("nan"),
            "ci_low": comp.ci_low, "ci_high": comp.ci_high, "statistic": comp.statistic, "p_value": comp.p_value,
            "variance": var, "cuped": cuped, "always_valid_p": p_av, "always_valid_low": low, "always_valid_high": high}


def _look_times(exposures: pd.DataFrame, looks: int) -> list[float]:
    if exposures.empty:
        return []
    ts = np.sort(exposures["ts"].to_numpy())
    idx = np.unique(np.linspace(0, len(ts) - 1, looks + 1)[1:].astype(np.int64))
    return [float(ts[i]) for i in idx]


def _curves(exposures: pd.DataFrame, names: list[str], alpha: float, looks: int) -> dict[str, Any]:
    """Cumulative CTR per arm (with its interval) at `looks` points in time: the report's main plot."""
    out: dict[str, Any] = {"t": [], "arms": {n: {"ctr": [], "low": [], "high": [], "exposures": []} for n in names}}
    z = float(stats.sps.norm.ppf(1 - alpha / 2))
    for t_end in _look_times(exposures, looks):
        u = per_user(exposures[exposures["ts"] <= t_end])
        out["t"].append(t_end)
        for n in names:
            a = u[u["arm"] == n]
            r, v = stats.ratio_variance(a["clicks"].to_numpy(), a["impressions"].to_numpy())
            half = z * math.sqrt(v) if v == v else float("nan")
            arm = out["arms"][n]
            arm["ctr"].append(r)
            arm["low"].append(r - half)
            arm["high"].append(r + half)
            arm["exposures"].append(int(a["exposures"].sum()))
    return out


def _decide(state: ExperimentState, comparisons: dict[str, dict[str, Any]], alpha: float,
            trustworthy: bool) -> tuple[str | None, str]:
    d = state.definition
    if not trustworthy:
        return None, ("untrustworthy: sample ratio mismatch (the arms did not get their planned shares of users); "
                      "find the cause (assignment, logging, an arm failing) before reading any metric")
    primary = comparisons[d.primary]
    better = [(a, c) for a, c in primary.items() if c["always_valid_p_holm"] < alpha and c["difference"] > 0]
    stopped = {a.name for a in state.arms if _share_of(state, a.name) == 0.0}
    better = [(a, c) for a, c in better if a not in stopped]
    if better:
        arm, c = max(better, key=lambda ac: ac[1]["difference"])
        return arm, (f"{arm} beats {d.control_arm} on {d.primary} by {c['difference']:+.5f} "
                     f"(always-valid p {c['always_valid_p_holm']:.4g} < {alpha:g})")
    worse = [a for a, c in primary.items() if c["always_valid_p_holm"] < alpha and c["difference"] < 0]
    if worse and len(worse) == len(primary):
        return d.control_arm, f"{d.control_arm} (control) beats every challenger on {d.primary}"
    return None, f"no significant difference on {d.primary} yet (always-valid p >= {alpha:g})"


def _share_of(state: ExperimentState, arm: str) -> float:
    return float(state.shares[state.arm_names.index(arm)])


def plain(value: Any) -> Any:
    """`value` with every non-finite float as None (JSON has no NaN) and numpy scalars as Python ones."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
