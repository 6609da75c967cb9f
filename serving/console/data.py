"""The console's data: what the other commands wrote, read as they left it, as plain values for the pages.

Why only readers: the console is a window on outputs that have one writer each (the registry commands, the
experiment commands and monitor, `recforge segment`, `recforge report`); recomputing anything here would let the
console disagree with the reports people sign off. Experiments are the one exception that is computed on read, and
through the same function `recforge experiment status` uses (`serving.experiments.manage.result`).

What never leaves this module: row-level data. The segment assignments (one row per customer) are not read, the
experiment analysis returns per-arm aggregates only, and privacy releases are aggregates by construction.

Nothing here raises for missing or unreadable data: each reader answers with what it found and, where there is
nothing yet, a sentence naming the command that produces it (`missing`), or why a file could not be read
(`errors`); a page is never an error page because one output is absent or damaged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError

from feature_store.secrets import scrub
from serving.console.settings import ConsoleSettings

NO_MODELS = "no models registered yet: run `recforge register -c CONFIG --kind ranker` (or `recforge demo -c CONFIG`)"
NO_EXPERIMENTS = ("no experiments yet: define one under `experiments.definitions` and run "
                  "`recforge experiment start NAME -c CONFIG`")
NO_SEGMENTS = "no segments yet: run `recforge segment -c CONFIG`"
NO_RELEASES = "no privacy releases yet: run `recforge report -c CONFIG`"
REVIEW_NAME = re.compile(r"^(?P<model>.+)-v(?P<version>[0-9]+)-(?P<stamp>[0-9]{8}-[0-9]{6}-[0-9]+)$")
TABLES = ("segments", "centroids", "k_curve")  # segment tables shown; `assignments` (per customer) never is


def problem(exc: BaseException) -> str:
    """An exception as one line for a page, with secrets and URL credentials masked."""
    return scrub(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]


# ------------------------------------------------------------------------------------------------ files by name
def review_files(s: ConsoleSettings) -> dict[str, Path]:
    """Every promotion review of the scenario: folder name -> its review.html (the only names the console serves:
    a request names an entry of this listing, never a path)."""
    root = s.reviews_dir
    if not root.is_dir():
        return {}
    return {p.parent.name: p for p in sorted(root.glob("*/review.html"), key=lambda p: p.parent.name, reverse=True)
            if REVIEW_NAME.match(p.parent.name)}


def experiment_reports(s: ConsoleSettings) -> dict[str, Path]:
    """Every experiment report written by `recforge experiment report`: experiment name -> its report.html."""
    root = s.experiments_reports
    if not root.is_dir():
        return {}
    return {p.parent.name: p for p in sorted(root.glob("*/report.html"))}


# ------------------------------------------------------------------------------------------------ registry
def registry(s: ConsoleSettings) -> dict[str, Any]:
    """The scenario's registered models (serving.registry.versions.list_models, restricted to the scenario's
    names): versions, aliases, test metrics (the version's tags, else its run's `test/` metrics), gate figures,
    decision, and the review reports of each version."""
    from training.common.tracking import sqlite_file

    db = sqlite_file(s.tracking_uri)
    if db is not None and not db.is_file():  # reading would create an empty store
        return {"models": [], "missing": NO_MODELS, "error": None}
    from serving.config import GateConfig
    from serving.registry.settings import RegistrySettings
    from serving.registry.store import mlflow_client
    from serving.registry.versions import list_models

    app = s.app
    rs = RegistrySettings(name=app.name, output_dir=s.output_dir, tracking_uri=s.tracking_uri,
                          ranker_experiment=app.name, retriever_experiment=app.name, ranker_model=app.ranker_model,
                          retriever_model=app.retriever_model, gate=GateConfig(), feature_store=app.feature_store)
    try:
        listed = list_models(rs)["models"]  # reads the store only (the gate and data settings are not used)
        models = [m for m in listed if m["name"] in s.model_names]
        client = mlflow_client(rs)
        for v in (v for m in models for v in m["versions"] if not v["metrics"] and v["run_id"]):
            v["metrics"] = _run_test_metrics(client, v["run_id"])
    except Exception as exc:  # an unreachable or damaged store: say so on the page
        return {"models": [], "missing": None, "error": problem(exc)}
    reviews = review_files(s)
    for m in models:
        for v in m["versions"]:
            prefix = f"{m['name']}-v{v['version']}-"
            v["reviews"] = [name for name in reviews if name.startswith(prefix)]
    return {"models": models, "missing": None if models else NO_MODELS, "error": None}


def _run_test_metrics(client: Any, run_id: str) -> dict[str, str]:
    """The run's test metrics (what registration copies into the version's tags), for versions registered
    without them."""
    try:
        metrics = client.get_run(run_id).data.metrics
    except Exception:
        return {}
    return {k: f"{v:.6g}" for k, v in sorted(metrics.items()) if k.startswith("test/")}


# ------------------------------------------------------------------------------------------------ experiments
def experiments(s: ConsoleSettings, *, analyze: bool = True) -> dict[str, Any]:
    """Every defined or started experiment with its state and, once started (and `analyze`), the result of
    `serving.experiments.manage.result` (per-arm aggregates, tests, SRM, decision, curves)."""
    from serving.experiments import manage
    from serving.experiments.analysis import plain

    app = s.app
    if s.experiments_store.is_file():
        try:
            rows = manage.list_experiments(app)["experiments"]
        except Exception as exc:
            return {"experiments": [], "missing": None, "error": problem(exc)}
    else:  # nothing started: the definitions only (opening the store would create it)
        rows = [{"name": n, "status": "defined", "arms": [a.name for a in d.arms], "allocation": d.allocation.type,
                 "primary": d.primary, "started_at": None, "stopped_at": None, "stop_reason": None}
                for n, d in app.experiments.definitions.items()]
    reports = experiment_reports(s)
    for row in rows:
        row["result"], row["error"] = None, None
        row["report"] = row["name"] if row["name"] in reports else None
        if analyze and row["status"] != "defined":
            try:
                row["result"] = _cached_result(s, row, manage, plain)
            except Exception as exc:
                row["error"] = problem(exc)
    return {"experiments": rows, "missing": None if rows else NO_EXPERIMENTS, "error": None}


_RESULTS: dict[tuple[Any, ...], dict[str, Any]] = {}
_MAX_CACHED = 64


def _cached_result(s: ConsoleSettings, row: dict[str, Any], manage: Any, plain: Any) -> dict[str, Any]:
    """`manage.result` of one experiment, computed again only when its state or the offline event log changed.
    Why: each analysis reads the whole log (2.5 s per page load for the demo's two experiments, measured by
    scripts/bench/console.py); a marketer reloading the page should not pay that while nothing new arrived. The
    key holds the experiment's status and stop time, the experiments store's files' mtimes (allocations) and the
    log's files (count, sizes, newest mtime), so any new exposure, outcome or allocation computes it afresh."""
    from feature_store.events.scenario import log_dir

    files = [f.stat() for f in log_dir(s.app.feature_store).rglob("*.parquet")]
    state = [p.stat().st_mtime_ns for p in (s.experiments_store, Path(f"{s.experiments_store}-wal")) if p.exists()]
    signature = (len(files), sum(f.st_size for f in files), max((f.st_mtime_ns for f in files), default=0), *state)
    key = (str(s.experiments_store), row["name"], row["status"], row.get("stopped_at"), signature)
    if key not in _RESULTS:
        if len(_RESULTS) >= _MAX_CACHED:
            _RESULTS.clear()
        _RESULTS[key] = plain(manage.result(s.app, row["name"]))
    return _RESULTS[key]


# ------------------------------------------------------------------------------------------------ segments
def segments(s: ConsoleSettings) -> dict[str, Any]:
    """The latest `recforge segment` output: report.json (k, silhouette, data window, next-period test) and the
    summary tables (per segment, centroids, the k curve) as DataFrames; never the per-customer assignments."""
    d = s.segments_dir
    report = d / "report.json"
    if not report.is_file():
        return {"report": None, "tables": {}, "missing": NO_SEGMENTS, "error": None}
    try:
        res = json.loads(report.read_text())
        tables = {name: pq.read_table(d / f"{name}.parquet").to_pandas() for name in TABLES
                  if (d / f"{name}.parquet").is_file()}
    except Exception as exc:
        return {"report": None, "tables": {}, "missing": None, "error": problem(exc)}
    if "segments" not in tables:
        tables["segments"] = pd.DataFrame(res.get("segments", []))
    return {"report": res, "tables": tables, "missing": None, "error": None}


# ------------------------------------------------------------------------------------------------ releases
class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Measure(_Loose):
    name: str
    kind: Literal["people", "rows", "sum", "mean"]
    column: str | None = None


class Query(_Loose):
    name: str
    group_by: list[str]
    measures: list[Measure]
    k: int
    mechanism: Literal["none", "laplace", "gaussian"]
    epsilon: float
    delta: float


class Budget(_Loose):
    dataset: str
    total_epsilon: float
    spent_epsilon: float
    remaining_epsilon: float
    total_delta: float
    spent_delta: float
    queries: int


class Release(_Loose):
    """One privacy release as `recforge report` writes it (the fields the console shows are checked)."""

    kind: Literal["privacy_release"]
    id: str
    created: str
    dataset: str
    query: Query
    columns: list[str]
    rows: list[dict[str, Any]]
    meta: dict[str, Any] = {}
    budget: Budget | None = None


def releases(s: ConsoleSettings) -> dict[str, Any]:
    """Every release under `<output_dir>/privacy/releases/`, newest first; a file that is not a release in the
    documented format is listed with why, never shown half."""
    root = s.releases_dir
    files = sorted(root.glob("*.json")) if root.is_dir() else []
    found: list[Release] = []
    errors: list[str] = []
    for f in files:
        try:
            found.append(Release.model_validate_json(f.read_bytes()))
        except ValidationError as exc:
            where = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}"
                              for e in exc.errors()[:3])
            errors.append(f"{f.name}: not a privacy release in the documented format ({where})")
        except OSError as exc:
            errors.append(f"{f.name}: {problem(exc)}")
    found.sort(key=lambda r: r.created, reverse=True)
    return {"releases": found, "errors": errors, "missing": None if found or errors else NO_RELEASES}
