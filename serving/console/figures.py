"""The console's charts: Plotly figures built here with plotly.graph_objects and handed to the page as JSON.

Why Plotly (and not the matplotlib PNGs of the reports): the console is read in a browser, where a marketer wants
to hover a point for its value and zoom into a period; plotly.js draws the figure in the page from its JSON, and
the page loads plotly.js from the app itself (the plotly package's bundled file), so it works with no internet.

Each function returns the figure's JSON text, or None when there is nothing to draw (the page then says why).
Missing values (None, NaN) stay gaps: nothing is drawn where the data say nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _floats(values: Sequence[Any]) -> np.ndarray:
    """A list with None for missing values as float64 (None -> NaN)."""
    return pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=np.float64)


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title, "x": 0.02, "font": {"size": 15}}, "template": "plotly_white", "height": 360,
            "margin": {"l": 60, "r": 30, "t": 50, "b": 60},
            "legend": {"orientation": "h", "y": -0.2}, **extra}


def _json(fig: Any) -> str:
    return str(fig.to_json())


def experiment_curve(res: dict[str, Any]) -> str | None:
    """Cumulative CTR per arm against time with its confidence band (the analysis' `curves`)."""
    import plotly.graph_objects as go

    curves = res["curves"]
    if not curves["t"]:
        return None
    x = pd.to_datetime(np.asarray(curves["t"], dtype=np.float64), unit="s", utc=True)
    fig = go.Figure()
    level = 1 - float(res["alpha"])
    for i, (arm, c) in enumerate(curves["arms"].items()):
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=x, y=_floats(c["low"]), mode="lines", line={"width": 0}, hoverinfo="skip",
                                 showlegend=False, name=f"{arm} low"))
        fig.add_trace(go.Scatter(x=x, y=_floats(c["high"]), mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor=_rgba(color, 0.18), hoverinfo="skip", showlegend=False,
                                 name=f"{arm} high"))
        fig.add_trace(go.Scatter(x=x, y=_floats(c["ctr"]), mode="lines+markers", name=arm,
                                 line={"color": color, "width": 2}, marker={"size": 4},
                                 hovertemplate=f"{arm}: CTR %{{y:.4f}}<br>%{{x}}<extra></extra>"))
    fig.update_layout(**_layout(f"Cumulative CTR per arm ({level:.0%} band)",
                                xaxis={"title": {"text": "time (UTC)"}},
                                yaxis={"title": {"text": "CTR (clicks / shown items)"}, "rangemode": "tozero"}))
    return _json(fig)


def segment_sizes(table: pd.DataFrame) -> str | None:
    """Customers (left axis) and revenue (right axis) per segment."""
    import plotly.graph_objects as go

    if table.empty:
        return None
    names = table["segment"].astype(str)
    fig = go.Figure([
        go.Bar(x=names, y=table["customers"], name="customers", marker_color=PALETTE[0], offsetgroup=0),
        go.Bar(x=names, y=table["revenue"], name="revenue", marker_color=PALETTE[1], offsetgroup=1, yaxis="y2"),
    ])
    fig.update_layout(**_layout("Customers and revenue per segment", barmode="group",
                                yaxis={"title": {"text": "customers"}},
                                yaxis2={"title": {"text": "revenue"}, "overlaying": "y", "side": "right",
                                        "showgrid": False}))
    return _json(fig)


def next_revenue(test: dict[str, Any]) -> str | None:
    """Mean next-period revenue per segment fitted at the split (the test's segments, not the served ones) with its
    interval."""
    import plotly.graph_objects as go

    per = pd.DataFrame(test.get("segments") or [])
    if per.empty:
        return None
    per = per.sort_values("mean_next_revenue", ascending=False)
    mean = _floats(per["mean_next_revenue"])
    fig = go.Figure(go.Bar(
        x=per["segment"].astype(str), y=mean, marker_color=PALETTE[4], name="mean next-period revenue",
        error_y={"type": "data", "symmetric": False, "array": _floats(per["high"]) - mean,
                 "arrayminus": mean - _floats(per["low"])}))
    p = test.get("p_value")
    title = "Next-period revenue per segment fitted at the split" + (
        f" (Kruskal-Wallis p = {p:.2g})" if p is not None else "")
    fig.update_layout(**_layout(title, yaxis={"title": {"text": "mean revenue per customer"}}))
    return _json(fig)


def release_measure(labels: pd.Series, values: pd.Series, ci: pd.Series | None, measure: str, unit: str,
                    hidden: int) -> str | None:
    """One numeric measure of a release per group, with error bars from its `<measure>_ci95` column: a number is
    the half-width, a [low, high] pair the interval. `hidden`: suppressed groups left out (said in the title)."""
    import plotly.graph_objects as go

    if labels.empty:
        return None
    y = _floats(values)
    error: dict[str, Any] | None = None
    if ci is not None and ci.notna().any():
        half = pd.to_numeric(ci, errors="coerce")
        if half.notna().any():
            error = {"type": "data", "array": half.to_numpy(dtype=np.float64)}
        else:  # [low, high] pairs
            given = ci.dropna()
            bounds = pd.DataFrame(given.tolist(), index=given.index).reindex(ci.index)
            error = {"type": "data", "symmetric": False, "array": _floats(bounds[1]) - y,
                     "arrayminus": y - _floats(bounds[0])}
    fig = go.Figure(go.Bar(x=labels.astype(str), y=y, name=measure, marker_color=PALETTE[0], error_y=error))
    title = f"{measure} per group" + (" (95% error bars)" if error else "") + (
        f"; {hidden} suppressed group{'s' if hidden != 1 else ''} not shown" if hidden else "")
    fig.update_layout(**_layout(title, yaxis={"title": {"text": unit}}, showlegend=False))
    return _json(fig)


def budgets(table: pd.DataFrame) -> str | None:
    """Privacy budget per data set: epsilon spent and remaining (stacked)."""
    import plotly.graph_objects as go

    if table.empty:
        return None
    fig = go.Figure([
        go.Bar(x=table["dataset"], y=table["spent_epsilon"], name="epsilon spent", marker_color=PALETTE[3]),
        go.Bar(x=table["dataset"], y=table["remaining_epsilon"], name="epsilon remaining", marker_color=PALETTE[2]),
    ])
    fig.update_layout(**_layout("Privacy budget per data set", barmode="stack", height=300,
                                yaxis={"title": {"text": "epsilon"}}))
    return _json(fig)
