"""`recforge report`: run a named release (privacy.queries) against the privacy-budget ledger and write what may
leave: the released table as JSON, Markdown and HTML under `<output_dir>/privacy/releases/`.

Order, so that nothing is spent for a query that cannot run and nothing is released without being paid for:
1. the data set is loaded and the query checked against its columns (a mistake costs nothing);
2. the ledger records the data set's total the first time, and spends the query's epsilon/delta in one
   transaction; a query beyond what is left is refused there and the ledger is unchanged;
3. the release is computed (privacy.release) and written. A crash between 2 and 3 leaves the budget spent and
   nothing released: the safe side, since a retry draws fresh noise.
Exact releases (`mechanism: none`) spend nothing and are not in the ledger (it records what privacy a data set has
spent; an exact release is protected by k-anonymity alone, which differencing defeats: see docs/privacy.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from analytics.config import AnalyticsConfig
from feature_store.config import FeatureStoreConfig
from privacy.config import BudgetConfig, PrivacyConfig, QueryConfig
from privacy.datasets import load_dataset
from privacy.errors import BudgetExceeded, PrivacyError
from privacy.ledger import Budget, Ledger
from privacy.release import Measure, ReleaseSpec, check_input, release
from serving.config import AppSettings
from serving.experiments.analysis import plain
from serving.registry.store import os_user
from serving.reports import render_report


def ledger_path(fs: FeatureStoreConfig, privacy: PrivacyConfig) -> Path:
    return Path(privacy.ledger_path or Path(fs.output_dir) / "privacy" / "ledger.db")


def releases_dir(fs: FeatureStoreConfig, privacy: PrivacyConfig) -> Path:
    return Path(privacy.releases_dir or Path(fs.output_dir) / "privacy" / "releases")


def spec_of(q: QueryConfig, privacy: PrivacyConfig) -> ReleaseSpec:
    """The release library's spec for a configured query."""
    return ReleaseSpec(
        group_by=tuple(q.group_by),
        measures=tuple(Measure(m.name, m.kind, m.column, m.lower, m.upper) for m in q.measures),
        k=q.k or privacy.k, mechanism=q.mechanism, epsilon=q.epsilon, delta=q.delta,
        max_groups_per_person=q.max_groups_per_person, max_rows_per_cell=q.max_rows_per_cell, margins=q.margins,
        keys=q.keys)


def budget_json(b: Budget) -> dict[str, Any]:
    return {"dataset": b.dataset, "total_epsilon": float(b.epsilon_total), "spent_epsilon": float(b.epsilon_spent),
            "remaining_epsilon": float(b.epsilon_remaining), "total_delta": float(b.delta_total),
            "spent_delta": float(b.delta_spent), "queries": b.queries}


def open_ledger(fs: FeatureStoreConfig, privacy: PrivacyConfig, dataset: str, budget: BudgetConfig) -> Ledger:
    """The scenario's ledger with `dataset`'s total recorded (refused, naming the fix, if the config changed it)."""
    ledger = Ledger(ledger_path(fs, privacy))
    try:
        ledger.ensure_budget(dataset, budget.epsilon, budget.delta)
    except PrivacyError as exc:
        raise PrivacyError(f"{exc}. From the command line: `recforge report budget --reset-total {dataset}` records "
                           f"the configured total (a policy decision, kept in the ledger's history)") from None
    return ledger


def run_query(name: str, fs: FeatureStoreConfig, privacy: PrivacyConfig, analytics: AnalyticsConfig,
              app: AppSettings | None = None) -> dict[str, Any]:
    """`recforge report run NAME`: check, spend, release, write (see the module docstring)."""
    if name not in privacy.queries:
        raise PrivacyError(f"no query '{name}' in privacy.queries (has: {sorted(privacy.queries) or 'none'}); add it "
                           f"there (docs/config.md#privacy)")
    q = privacy.queries[name]
    t0 = time.perf_counter()
    data = load_dataset(q.dataset, fs, privacy, analytics, app)
    spec = spec_of(q, privacy)
    check_input(data.frame, data.person, spec)
    ledger = open_ledger(fs, privacy, q.dataset, data.budget)
    try:
        if q.mechanism != "none":
            ledger.spend(q.dataset, q.epsilon, q.delta, query=name, who=os_user())
    except BudgetExceeded as exc:
        raise PrivacyError(
            f"query '{name}' refused, nothing released and the ledger unchanged: data set '{q.dataset}' has epsilon "
            f"{float(exc.remaining[0]):.6g}, delta {float(exc.remaining[1]):.6g} left and the query needs "
            f"{float(exc.requested[0]):.6g}, {float(exc.requested[1]):.6g}. Lower privacy.queries.{name}.epsilon, or "
            f"raise the data set's total in the config and record it with `recforge report budget --reset-total "
            f"{q.dataset}` (a policy decision, kept in the ledger)") from None
    released = release(data.frame, data.person, spec)
    doc = release_doc(name, q.dataset, spec, released.table, released.meta, budget_json(ledger.budget(q.dataset)))
    out = write_release(releases_dir(fs, privacy), doc)
    return {**doc, "outputs": out, "rows_in": len(data.frame), "source": data.source,
            "seconds": round(time.perf_counter() - t0, 3)}


def release_doc(name: str, dataset: str, spec: ReleaseSpec, table: pd.DataFrame, meta: Mapping[str, Any],
                budget: dict[str, Any] | None) -> dict[str, Any]:
    """The release as plain data (the format the console and the reports read)."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = plain(table.astype(object).where(table.notna(), None).to_dict(orient="records"))
    return {
        "kind": "privacy_release",
        "id": f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{name}",
        "created": created, "dataset": dataset,
        "query": {"name": name, "group_by": list(spec.group_by),
                  "measures": [{"name": m.name, "kind": m.kind, "column": m.column} for m in spec.measures],
                  "k": spec.k, "mechanism": spec.mechanism,
                  "epsilon": spec.epsilon if spec.mechanism != "none" else 0.0,
                  "delta": spec.delta if spec.mechanism != "none" else 0.0},
        "columns": list(table.columns), "rows": rows, "meta": plain(dict(meta)), "budget": budget,
    }


def write_release(directory: Path, doc: dict[str, Any]) -> dict[str, str]:
    """`<id>.json`, `<id>.md`, `<id>.html` in `directory` (rendered by the one report renderer)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / doc["id"]
    text = render_report("release", {"r": doc}, package="privacy")
    paths = {"json": stem.with_suffix(".json"), "markdown": stem.with_suffix(".md"), "html": stem.with_suffix(".html")}
    paths["json"].write_text(json.dumps(doc, indent=2))
    paths["markdown"].write_text(text["md"])
    paths["html"].write_text(text["html"])
    return {k: str(v) for k, v in paths.items()}


def budgets(fs: FeatureStoreConfig, privacy: PrivacyConfig, reset_total: str | None = None) -> dict[str, Any]:
    """`recforge report budget`: every data set's budget and history; `reset_total`: record the configured total
    of that data set (after the config changed it)."""
    ledger = Ledger(ledger_path(fs, privacy))
    if reset_total is not None:
        b = privacy.datasets[reset_total].budget if reset_total in privacy.datasets else None
        if reset_total == "cleanroom" and privacy.cleanroom is not None:
            b = privacy.cleanroom.budget
        b = b or privacy.budget
        ledger.set_budget(reset_total, b.epsilon, b.delta, replace=True)
    out = []
    for name in ledger.datasets():
        out.append({**budget_json(ledger.budget(name)),
                    "history": [{"query": s.query, "epsilon": float(s.epsilon), "delta": float(s.delta),
                                 "who": s.who, "at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s.at))}
                                for s in ledger.history(name)]})
    return {"ledger": str(ledger_path(fs, privacy)), "datasets": out}


def list_queries(privacy: PrivacyConfig) -> dict[str, Any]:
    """`recforge report list`: the configured queries."""
    return {"queries": [{"name": n, "dataset": q.dataset, "group_by": q.group_by,
                         "measures": [m.name for m in q.measures], "mechanism": q.mechanism,
                         "epsilon": q.epsilon if q.mechanism != "none" else 0.0, "k": q.k or privacy.k}
                        for n, q in privacy.queries.items()]}
