"""Where an analysis's results go: Parquet tables, report.md / report.html / report.json with PNG plots under
`<analytics output dir>/<analysis>/`, and the same files in an MLflow run (experiment `<scenario>-analytics`, run
named after the analysis, tagged `recforge.analysis`) beside the scenario's training runs.

Rendering goes through the one report renderer (serving.reports) with this package's templates
(`analytics/templates/<analysis>.{md,html}.j2`, extending the shared base), and figures are matplotlib on the Agg
canvas like every figure of the project.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from analytics.config import AnalyticsConfig
from feature_store.config import FeatureStoreConfig
from feature_store.online import describe_store, open_store
from feature_store.online.materialize import materialize
from serving.experiments.analysis import plain
from serving.registry.figures import png
from serving.reports import render_report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TAG = "recforge.analysis"


@dataclass(frozen=True)
class AnalysisOutput:
    """What one analysis run wrote: its directory, its tables and report files, and the MLflow run id."""

    directory: Path
    tables: dict[str, str]
    report: dict[str, str]
    mlflow_run: str | None


def output_dir(fs: FeatureStoreConfig, cfg: AnalyticsConfig) -> Path:
    """Where the analyses write: `analytics.output_dir`, else `<output_dir>/analytics`."""
    return Path(cfg.output_dir or Path(fs.output_dir) / "analytics")


def day(ts: int) -> str:
    """A Unix time as its UTC date, as the reports show the data's start, split and end."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def publish_online(fs: FeatureStoreConfig, view: str, table: pa.Table, key: str) -> dict[str, Any]:
    """Write one row per `key` of `table` (with a `ts` column) as the online view `view`, for serving to read with
    the user's other features; returns what the reports say about it."""
    store = open_store(fs)
    try:
        written = materialize(store, view, table, key=key, ts_column="ts")
    finally:
        store.close()
    return {"view": view, "store": describe_store(fs), "entities": written.entities_written}


def write_analysis(analysis: str, directory: Path, *, tables: Mapping[str, pa.Table], result: Mapping[str, Any],
                   figures: Mapping[str, Figure], tracking_uri: str | None, scenario: str,
                   metrics: Mapping[str, float], params: Mapping[str, Any]) -> AnalysisOutput:
    """Write the tables (Parquet), the plots, the report in both formats and the result as JSON; log them all
    to MLflow with `metrics` and `params` when `tracking_uri` is given."""
    out = Path(directory)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    table_paths = {}
    for name, table in tables.items():
        path = out / f"{name}.parquet"
        pq.write_table(table, path)
        table_paths[name] = str(path)
    plots = []
    for stem, fig in figures.items():
        data = png(fig)
        (out / "plots" / f"{stem}.png").write_bytes(data)
        plots.append({"stem": stem, "path": f"plots/{stem}.png", "png": data})
    res = plain(dict(result))
    generated = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    text = render_report(analysis, {"res": res, "plots": plots, "generated": generated, "scenario": scenario},
                         package="analytics")
    report = {"markdown": out / "report.md", "html": out / "report.html", "json": out / "report.json"}
    report["markdown"].write_text(text["md"])
    report["html"].write_text(text["html"])
    report["json"].write_text(json.dumps(res, indent=2, default=str))
    run_id = None
    if tracking_uri is not None:
        run_id = _log(analysis, out, tracking_uri, scenario, metrics, params)
    return AnalysisOutput(out, table_paths, {k: str(v) for k, v in report.items()}, run_id)


def _log(analysis: str, directory: Path, tracking_uri: str, scenario: str, metrics: Mapping[str, float],
         params: Mapping[str, Any]) -> str:
    from training.common.tracking import tracking_client

    client = tracking_client(tracking_uri)
    name = f"{scenario}-analytics"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
    run = client.create_run(exp_id, run_name=analysis, tags={TAG: analysis})
    run_id = run.info.run_id
    for key, value in params.items():
        client.log_param(run_id, key, str(value)[:500])
    for key, value in metrics.items():
        if value is not None and math.isfinite(float(value)):
            client.log_metric(run_id, key, float(value))
    client.log_artifacts(run_id, str(directory), artifact_path="analysis")
    client.set_terminated(run_id)
    return run_id
