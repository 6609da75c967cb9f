"""The experiment report: report.md, report.html (self-contained, plots embedded), report.json and the plots as
PNG under `<experiments.reports_dir>/<name>/`, and the same files logged to MLflow (one run per experiment in the
scenario's tracking store, experiment `<scenario>-online`, tagged `recforge.online_experiment`), so a reviewer
finds the online evidence where the offline runs are.

Plots (matplotlib on the Agg canvas, like every figure of the project): the cumulative CTR of each arm with its
confidence band, the allocation over time, and the sample-ratio check (users per arm against the planned split).
The rendering goes through the one report renderer (serving.reports), so the Markdown and the HTML say the same.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.config import AppSettings
from serving.experiments.analysis import plain
from serving.registry.figures import png
from serving.reports import render_report
from training.common.plots import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TAG = "recforge.online_experiment"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def cumulative_figure(res: dict[str, Any]) -> Figure:
    """Cumulative CTR per arm against time, with its confidence band."""
    fig = new_figure(6.5, 3.8)
    ax = fig.add_subplot()
    curves = res["curves"]
    t0 = res["started_ts"]
    minutes = (np.asarray(curves["t"], dtype=np.float64) - t0) / 60.0
    for arm, c in curves["arms"].items():
        y = np.asarray(c["ctr"], dtype=np.float64)
        ax.plot(minutes, y, lw=1.8, label=arm)
        ax.fill_between(minutes, np.asarray(c["low"], dtype=np.float64), np.asarray(c["high"], dtype=np.float64),
                        alpha=0.2)
    ax.set(xlabel="minutes since start", ylabel="CTR (clicks / shown items)",
           title=f"Cumulative CTR per arm ({1 - res['alpha']:.0%} intervals)")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def allocation_figure(res: dict[str, Any], until: float) -> Figure:
    """Each arm's share of the experiment's users over time (steps at each reallocation)."""
    fig = new_figure(6.5, 3.0)
    ax = fig.add_subplot()
    allocs = res["allocations"]
    t0 = res["started_ts"]
    times = [(a["at"] - t0) / 60.0 for a in allocs] + [(until - t0) / 60.0]
    for arm in res["experiment"]["shares"]:
        shares = [a["shares"][arm] for a in allocs]
        ax.step(times, [*shares, shares[-1]], where="post", lw=1.8, label=arm)
    ax.set(xlabel="minutes since start", ylabel="share of users", ylim=(0, 1), title="Allocation over time")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def srm_figure(res: dict[str, Any]) -> Figure:
    """Users per arm against what the planned shares expect, with the chi-square verdict."""
    fig = new_figure(4.5, 3.0)
    ax = fig.add_subplot()
    srm = res["srm"]
    if srm is None:
        ax.text(0.5, 0.5, "no users yet", ha="center", va="center")
        ax.set_axis_off()
        return fig
    x = np.arange(len(srm["observed"]))
    ax.bar(x - 0.2, srm["observed"], width=0.4, label="observed")
    ax.bar(x + 0.2, srm["expected"], width=0.4, label="expected")
    ax.set_xticks(x, srm["arms"])
    verdict = "MISMATCH" if srm["mismatch"] else "ok"
    ax.set(ylabel="users", title=f"Sample ratio: {verdict} (p = {srm['p_value']:.3g})")
    ax.legend()
    return fig


def context(res: dict[str, Any], plots: list[dict[str, Any]]) -> dict[str, Any]:
    e = res["experiment"]
    metric_rows = []
    for metric, by_arm in res["comparisons"].items():
        for arm, c in by_arm.items():
            metric_rows.append({"metric": metric, "arm": arm, **c})
    return {"res": res, "e": e, "plots": plots, "metric_rows": metric_rows,
            "started": e["started_at"], "stopped": e["stopped_at"], "generated": _when(time.time())}


def write_report(app: AppSettings, res: dict[str, Any], directory: Path, *, now: float | None = None,
                 log_to_mlflow: bool = True) -> dict[str, str]:
    """report.md, report.html, report.json and plots/*.png under `directory`; logged to MLflow as well."""
    now = time.time() if now is None else now
    res = plain(res)
    out = Path(directory)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    until = res["stopped_ts"] or now
    figures = {"cumulative_ctr": cumulative_figure(res), "allocation": allocation_figure(res, until),
               "sample_ratio": srm_figure(res)}
    plots = []
    for stem, fig in figures.items():
        data = png(fig)
        (out / "plots" / f"{stem}.png").write_bytes(data)
        plots.append({"stem": stem, "path": f"plots/{stem}.png", "png": data})
    text = render_report("experiment", context(res, plots))
    paths = {"markdown": out / "report.md", "html": out / "report.html", "json": out / "report.json"}
    paths["markdown"].write_text(text["md"])
    paths["html"].write_text(text["html"])
    paths["json"].write_text(json.dumps(res, indent=2, default=str))
    result = {k: str(v) for k, v in paths.items()}
    if log_to_mlflow:
        result["mlflow_run"] = _log(app, res, out)
    return result


def _log(app: AppSettings, res: dict[str, Any], directory: Path) -> str:
    """The report into the experiment's MLflow run (created at its first report), with its headline metrics."""
    from training.common.tracking import tracking_client

    client = tracking_client(app.tracking_uri)
    name = f"{app.name}-online"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
    e = res["experiment"]
    found = client.search_runs([exp_id], filter_string=f"tags.`{TAG}` = '{e['name']}'", max_results=1)
    run_id = found[0].info.run_id if found else client.create_run(
        exp_id, run_name=e["name"], tags={TAG: e["name"]}).info.run_id
    for arm in res["arms"]:
        for key in ("users", "exposures", "clicks", "conversions"):
            client.log_metric(run_id, f"{arm['arm']}.{key}", float(arm[key]))
        if arm["ctr"]["value"] is not None:
            client.log_metric(run_id, f"{arm['arm']}.ctr", float(arm["ctr"]["value"]))
    client.set_tag(run_id, "recforge.decision", res["decision"][:500])
    client.set_tag(run_id, "recforge.winner", res["winner"] or "")
    client.set_tag(run_id, "recforge.trustworthy", str(res["trustworthy"]).lower())
    client.log_artifacts(run_id, str(directory), artifact_path="report")
    return run_id
