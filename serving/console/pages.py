"""The console's pages: each reads its data (serving.console.data), shapes it for its template and renders it
through the one report renderer (serving.reports, templates `console_*.html.j2`).

Why the shaping is here and not in the templates: tables are DataFrames formatted column by column (rounded,
suppressed cells labelled) with pandas, and charts are Plotly figures (serving.console.figures); the templates
only lay out what they are given, autoescaped like every report.

Every function is blocking (files, SQLite, the experiment analysis): the router runs them in a worker thread.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from serving.console import data, figures
from serving.console.settings import ConsoleSettings
from serving.reports import render

PAGES = ("overview", "registry", "experiments", "segments", "reports")


def _render(page: str, s: ConsoleSettings, title: str, *, charts: bool = False, **context: Any) -> str:
    return render(f"console_{page}.html.j2", {"title": title, "page": page, "scenario": s.scenario,
                                              "charts": charts, **context})


def frame(df: pd.DataFrame, digits: int = 3, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A DataFrame as the template's table: header, rows (floats rounded; missing values None) and which columns
    are numeric (right-aligned)."""
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    shown = df.round(digits).astype(object).where(df.notna(), None)
    return {"header": [(labels or {}).get(str(c), str(c)) for c in df.columns], "rows": shown.to_numpy().tolist(),
            "numeric": numeric}


# ------------------------------------------------------------------------------------------------ login
def login(s: ConsoleSettings, next_path: str, message: str | None = None) -> str:
    return _render("login", s, "Console login", next=next_path, message=message)


# ------------------------------------------------------------------------------------------------ overview
def overview(s: ConsoleSettings) -> str:
    """What there is in each part of the console, in a line or two, with links (no experiment analysis: cheap)."""
    reg = data.registry(s)
    champions = [f"{m['name']}: champion v{m['aliases']['champion']}" for m in reg["models"]
                 if "champion" in m["aliases"]]
    exp = data.experiments(s, analyze=False)
    status = pd.Series([e["status"] for e in exp["experiments"]], dtype=object).value_counts()
    seg = data.segments(s)
    rel = data.releases(s)
    datasets = sorted({r.dataset for r in rel["releases"]})
    cards = [
        {"name": "Registry", "href": "/console/registry", "error": reg["error"], "missing": reg["missing"],
         "about": "models, versions, aliases, test metrics, gate results and promotion reviews",
         "lines": [f"{len(reg['models'])} models, {sum(len(m['versions']) for m in reg['models'])} versions",
                   *champions]},
        {"name": "Experiments", "href": "/console/experiments", "error": exp["error"], "missing": exp["missing"],
         "about": "arms, live metrics with intervals, always-valid tests, sample-ratio check and decision",
         "lines": [f"{n} {st}" for st, n in status.items()]},
        {"name": "Segments", "href": "/console/segments", "error": seg["error"], "missing": seg["missing"],
         "about": "the latest customer segments: sizes, revenue, next-period test",
         "lines": [] if seg["report"] is None else [
             f"{seg['report'].get('k')} segments over {seg['report'].get('customers', 0):,} customers",
             f"data to {seg['report'].get('data', {}).get('end', '?')}"]},
        {"name": "Reports", "href": "/console/reports", "error": None, "missing": rel["missing"],
         "about": "privacy-safe aggregate releases and the privacy budget per data set",
         "lines": [f"{len(rel['releases'])} releases over {len(datasets)} data sets", *rel["errors"][:3]]},
    ]
    return _render("overview", s, f"RecForge console: {s.scenario}", cards=cards)


# ------------------------------------------------------------------------------------------------ registry
def registry(s: ConsoleSettings) -> str:
    reg = data.registry(s)
    return _render("registry", s, "Model registry", **reg)


# ------------------------------------------------------------------------------------------------ experiments
def experiments(s: ConsoleSettings) -> str:
    exp = data.experiments(s)
    for e in exp["experiments"]:
        r = e["result"]
        e["figure"] = figures.experiment_curve(r) if r is not None else None
        e["comparisons"] = [] if r is None else [
            {"metric": metric, "arm": arm, **c} for metric, by_arm in r["comparisons"].items()
            for arm, c in by_arm.items()]
    charts = any(e["figure"] for e in exp["experiments"])
    return _render("experiments", s, "Experiments", charts=charts, **exp)


# ------------------------------------------------------------------------------------------------ segments
SEGMENT_LABELS = {"segment_id": "id", "share": "share of customers", "median_recency_days": "median recency (days)",
                  "median_frequency": "median frequency", "median_monetary": "median monetary",
                  "revenue_share": "share of revenue"}


def segments(s: ConsoleSettings) -> str:
    seg = data.segments(s)
    if seg["report"] is None:
        return _render("segments", s, "Customer segments", error=seg["error"], missing=seg["missing"])
    try:
        return _segments(s, seg["report"], seg["tables"])
    except Exception as exc:  # an output of another version's format: say so instead of an error page
        return _render("segments", s, "Customer segments", error=data.problem(exc), missing=None)


def _segments(s: ConsoleSettings, res: dict[str, Any], tables: dict[str, pd.DataFrame]) -> str:
    test = res.get("next_period_test") or {}
    summary = {"customers": res.get("customers", 0), "k": res.get("k"), "features": res.get("features", []),
               "silhouette": res.get("silhouette"), "test": test or None,
               "data": {"start": "?", "end": "?", "split": "?", "holdout_days": "?", **res.get("data", {})}}
    table = tables["segments"]
    figs = [{"figure": figures.segment_sizes(table), "label": "customers and revenue per segment"},
            {"figure": figures.next_revenue(test), "label": "next-period revenue per segment"}]
    figs = [f for f in figs if f["figure"] is not None]
    return _render("segments", s, "Customer segments", charts=bool(figs), error=None, missing=None, summary=summary,
                   segments=frame(table, labels=SEGMENT_LABELS), figures=figs,
                   centroids=frame(tables["centroids"]) if "centroids" in tables else None,
                   k_curve=frame(tables["k_curve"]) if "k_curve" in tables else None)


# ------------------------------------------------------------------------------------------------ reports
BUDGET_LABELS = {"dataset": "data set", "total_epsilon": "epsilon total", "spent_epsilon": "epsilon spent",
                 "remaining_epsilon": "epsilon remaining", "total_delta": "delta total", "spent_delta": "delta spent",
                 "queries": "queries", "created": "as of"}


FLAGS = ("suppressed", "reason")  # per-row flags of a release, shown in the cells rather than as columns


def _value_columns(columns: list[str], group_by: list[str]) -> list[str]:
    """The figures' columns in the table's order, each `<name>_ci95` right after its figure."""
    values = [c for c in columns if c not in group_by and c not in FLAGS]
    plain = [c for c in values if not c.endswith("_ci95")]
    ordered = [x for c in plain for x in (c, f"{c}_ci95") if x in values]
    return [*ordered, *(c for c in values if c not in ordered)]


def release_view(r: data.Release) -> dict[str, Any]:
    """One release as the page shows it: the table with suppressed cells labelled, margin rows marked, and a
    chart per numeric measure (error bars from `<measure>_ci95`); suppressed and margin rows are not charted."""
    group_by = [c for c in r.query.group_by if c in r.columns]
    values = _value_columns(r.columns, group_by)
    df = pd.DataFrame.from_records(r.rows, columns=list(dict.fromkeys([*r.columns, *FLAGS])))
    suppressed = df["suppressed"].fillna(False).astype(bool).to_numpy()
    label = ("suppressed (" + df["reason"].astype(object).where(df["reason"].notna(), "").astype(str) + ")") \
        .str.replace(" ()", "", regex=False)
    margin = df[group_by].astype(str).eq("(all)").any(axis=1).to_numpy() if group_by else np.zeros(len(df), bool)
    shown = pd.DataFrame(index=df.index)
    for c in group_by:  # one pass per column, not per row
        shown[c] = df[c].astype(object).where(df[c].notna(), "-").astype(str)
    for c in values:
        numbers = pd.to_numeric(df[c], errors="coerce")
        text = df[c].astype(object).where(df[c].notna(), "-").astype(str)  # lists ([low, high]) as text
        if numbers.notna().any():
            given = numbers.dropna()
            whole = bool((given % 1 == 0).all() and (given.abs() < 2**53).all())  # exact as an integer
            formatted = numbers.astype("Int64").astype(str) if whole else numbers.round(4).astype(str)
            text = text.where(numbers.isna(), formatted)
        shown[c] = np.where(suppressed, label, text)
    charted = ~suppressed & ~margin
    keys = df.loc[charted, group_by].astype(str) if group_by else pd.DataFrame(index=df.index[charted])
    labels = keys[group_by[0]].str.cat([keys[c] for c in group_by[1:]], sep=" / ") if group_by else \
        pd.Series(["all"] * int(charted.sum()), index=keys.index, dtype=object)
    figs = []
    measures = [(m.name, m.kind if m.column is None else f"{m.kind} of {m.column}") for m in r.query.measures]
    if "people" in values and "people" not in {name for name, _ in measures}:  # every release counts people
        measures.insert(0, ("people", "people"))
    for name, unit in measures:
        if name not in df.columns:
            continue
        ci = f"{name}_ci95"
        fig = figures.release_measure(labels, df.loc[charted, name], df.loc[charted, ci] if ci in df else None,
                                      name, unit, int((suppressed & ~margin).sum()))
        if fig is not None:
            figs.append({"figure": fig, "label": f"{name} per group of {r.query.name}"})
    classes = np.where(margin, "margin", np.where(suppressed, "suppressed", "")).tolist()
    return {"id": r.id, "created": r.created, "dataset": r.dataset, "query": r.query.name, "group_by": group_by,
            "k": r.query.k, "mechanism": r.query.mechanism, "epsilon": r.query.epsilon, "delta": r.query.delta,
            "header": [*group_by, *values], "key_columns": len(group_by), "rows": shown[[*group_by, *values]].to_numpy()
            .tolist(), "classes": classes, "suppressed": int(suppressed.sum()), "groups": len(df), "figures": figs}


def reports(s: ConsoleSettings) -> str:
    rel = data.releases(s)
    views = []
    for r in rel["releases"]:
        try:
            views.append(release_view(r))
        except Exception as exc:  # a file in the format with figures the table cannot take: say so, show the rest
            rel["errors"].append(f"release {r.id}: could not be shown ({data.problem(exc)})")
    budget_rows = [{**r.budget.model_dump(), "created": r.created} for r in rel["releases"] if r.budget is not None]
    budgets = None
    budget_figure = None
    if budget_rows:
        table = (pd.DataFrame(budget_rows).sort_values("created").drop_duplicates("dataset", keep="last")
                 .sort_values("dataset")[list(BUDGET_LABELS)])
        budgets = frame(table, digits=10, labels=BUDGET_LABELS)  # delta is often 1e-6 or less
        budget_figure = figures.budgets(table)
    charts = bool(budget_figure) or any(v["figures"] for v in views)
    return _render("reports", s, "Privacy-safe reports", charts=charts, missing=rel["missing"],
                   errors=rel["errors"], budgets=budgets, budget_figure=budget_figure, releases=views)
