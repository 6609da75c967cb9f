"""The data sets `recforge report` releases aggregates of: each is one table with a person column, read from what
the platform's commands wrote (never from raw input files).

- `events`: the prepared interactions (`recforge prepare`, the offline store) with each user's latest attributes;
- `event_log`: the live event log (`POST /events`, exposures), its JSON context expanded into columns;
- `customers`: the latest `recforge segment` assignments, with the churn risk and LTV when those ran;
- `experiment:<name>`: one row per exposure of the experiment (arm, shown items, clicks, purchases, revenue);
- your own Parquet data sets (`privacy.datasets`).

A `day` column (UTC date) is derived from `ts` where the data has a time but no `day`, so reports can group by day.
Each loader reads with pyarrow and hands pandas one frame; the columns a query needs are checked by the release.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from analytics.config import AnalyticsConfig
from analytics.report import output_dir as analytics_dir
from feature_store.config import FeatureStoreConfig
from feature_store.events.ingest import read_log
from feature_store.events.scenario import log_dir
from feature_store.layout import RunLayout
from privacy.config import BudgetConfig, PrivacyConfig
from privacy.errors import PrivacyError
from serving.config import AppSettings


@dataclass(frozen=True)
class Dataset:
    """A loaded data set: its rows, its person column and its budget."""

    name: str
    frame: pd.DataFrame
    person: str
    budget: BudgetConfig
    source: str


def load_dataset(name: str, fs: FeatureStoreConfig, privacy: PrivacyConfig, analytics: AnalyticsConfig,
                 app: AppSettings | None = None) -> Dataset:
    """The data set `name` (see the module docstring), or PrivacyError naming the command that produces it."""
    person = fs.features.user_key
    if name in privacy.datasets:
        d = privacy.datasets[name]
        path = Path(d.path)
        if not path.exists():
            raise PrivacyError(f"privacy.datasets.{name}.path: {path} does not exist")
        return Dataset(name, _with_day(pq.read_table(path).to_pandas()), d.person, d.budget or privacy.budget,
                       str(path))
    if name == "events":
        frame, source = _prepared(fs)
    elif name == "event_log":
        frame, source = _event_log(fs)
    elif name == "customers":
        frame, source = _customers(fs, analytics)
    elif name.startswith("experiment:"):
        if app is None or app.experiments is None:
            raise PrivacyError(f"data set '{name}': the scenario has no experiments (experiments.definitions)")
        frame, source = _experiment(name.split(":", 1)[1], app)
    else:
        raise PrivacyError(f"no data set '{name}': use events, event_log, customers, experiment:<name> or a key of "
                           f"privacy.datasets")
    if person not in frame.columns:
        raise PrivacyError(f"data set '{name}' ({source}) has no person column '{person}' (features.user_key)")
    return Dataset(name, _with_day(frame), person, privacy.budget, source)


def _with_day(frame: pd.DataFrame) -> pd.DataFrame:
    if "ts" in frame.columns and "day" not in frame.columns:
        ts = pd.to_numeric(frame["ts"], errors="coerce")
        frame = frame.assign(day=pd.to_datetime(ts, unit="s", utc=True).dt.strftime("%Y-%m-%d"))
    return frame


def _prepared(fs: FeatureStoreConfig) -> tuple[pd.DataFrame, str]:
    """The offline store's interactions (`recforge prepare`) with each user's latest attributes from the user
    entity table (age band, region, ...): raw values, not the model's encoded inputs."""
    lay = RunLayout(Path(fs.output_dir))
    path = lay.offline / "interactions.parquet"
    if not path.is_file():
        raise PrivacyError(f"data set 'events': no prepared events at {path}; run `recforge prepare`")
    frame = pq.read_table(path).to_pandas()
    key = fs.features.user_key
    for entity in fs.entities.values():
        table = lay.offline / f"{entity.table}.parquet"
        if entity.key != key or not table.is_file():
            continue
        users = pq.read_table(table).to_pandas()
        if entity.timestamp and entity.timestamp in users.columns:
            users = users.sort_values(entity.timestamp).drop_duplicates(key, keep="last")
        extra = [c for c in users.columns if c not in frame.columns and c != entity.timestamp]
        frame = frame.merge(users[[key, *extra]], on=key, how="left")
    return frame, str(path)


def _event_log(fs: FeatureStoreConfig) -> tuple[pd.DataFrame, str]:
    root = log_dir(fs)
    events = read_log(root, fs.events.id_type)
    if events.num_rows == 0:
        raise PrivacyError(f"data set 'event_log': the event log {root} is empty; send events (`POST /events`, "
                           f"`recforge events push`) and run the stream processor")
    frame = events.drop_columns(["context"]).to_pandas()
    text = [c if c else "{}" for c in events.column("context").to_pylist()]
    context = pd.json_normalize([json.loads(t) for t in text])
    for col in context.columns:
        if col not in frame.columns:
            frame[col] = context[col].to_numpy()
    return frame, str(root)


def _customers(fs: FeatureStoreConfig, analytics: AnalyticsConfig) -> tuple[pd.DataFrame, str]:
    root = analytics_dir(fs, analytics)
    path = root / "segments" / "assignments.parquet"
    if not path.is_file():
        raise PrivacyError(f"data set 'customers': no segments at {path}; run `recforge segment`")
    frame = pq.read_table(path).to_pandas().drop(columns=["ts"], errors="ignore")
    key = fs.features.user_key
    for extra in (root / "churn" / "churn_risk.parquet", root / "ltv" / "customer_value.parquet"):
        if extra.is_file():  # numeric scores of the other analyses, one row per customer
            other = pq.read_table(extra).to_pandas()
            keep = [c for c in other.columns if c not in frame.columns and c != "ts" and other[c].dtype.kind in "fiub"]
            if key in other.columns and keep:
                frame = frame.merge(other[[key, *keep]], on=key, how="left")
    return frame, str(path)


def _experiment(name: str, app: AppSettings) -> tuple[pd.DataFrame, str]:
    from serving.experiments import analysis
    from serving.experiments.manage import store_of

    assert app.experiments is not None
    state = store_of(app).get(name)
    fs = app.feature_store
    events = read_log(log_dir(fs), fs.events.id_type)
    joined = analysis.join(state, events, app.experiments, list(fs.events.purchase_types), now=float(np.inf))
    frame = joined.exposures.rename(columns={"items": "impressions", "clicked": "clicks"})
    frame = frame.assign(converted=(frame["purchases"] > 0).astype(np.int64))
    return frame.drop(columns=["exposure_id"]), f"experiment {name}"
