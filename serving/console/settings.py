"""What the console reads, resolved once from the app's settings into one small frozen object.

Why its own object: the console only reads files other commands wrote (the registry's store and reviews, the
experiments' state and reports, the analyses' outputs, the privacy releases), so what it needs is a handful of
paths and the token, not the scenario. `serving` sits below `analytics` and `recforge` in the import order, so the
analytics output directory arrives as a plain path (`AppSettings.analytics_dir`, resolved by
`recforge.config.app_settings`); nothing here imports the packages that write those files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from serving.config import AppSettings
from serving.experiments.store import experiment_store_path


@dataclass(frozen=True)
class ConsoleSettings:
    """One scenario's console.

    Attributes:
        token: `serving.console_token` (never shown: left out of the repr).
        scenario: the scenario's name (page titles).
        output_dir: the scenario's output directory (reviews under `reviews/`, releases under `privacy/releases/`).
        tracking_uri: the MLflow store that holds the registry.
        model_names: the registered-model names of the scenario (ranker, retriever); the registry page lists these.
        experiments_store: the experiments' state file (`experiments.store_path`).
        experiments_reports: where `recforge experiment report` writes (`experiments.reports_dir`).
        analytics_dir: the analyses' output directory (`analytics.output_dir`, else `<output_dir>/analytics`).
        app: the app's settings, which the experiment analysis (serving.experiments.manage) and the registry listing
            take whole (definitions, the event log's location).
    """

    token: str = field(repr=False)
    scenario: str
    output_dir: Path
    tracking_uri: str = field(repr=False)  # may carry credentials (a SecretUrl)
    model_names: tuple[str, ...]
    experiments_store: Path
    experiments_reports: Path
    analytics_dir: Path
    app: AppSettings = field(repr=False)

    @property
    def reviews_dir(self) -> Path:
        """Promotion reviews, one folder per attempt: `<model>-v<version>-<stamp>/review.html`."""
        return self.output_dir / "reviews"

    @property
    def segments_dir(self) -> Path:
        """The latest `recforge segment` output: report.json and its Parquet tables."""
        return self.analytics_dir / "segments"

    @property
    def releases_dir(self) -> Path:
        """Privacy-safe aggregate releases written by `recforge report`: one JSON file each."""
        return self.output_dir / "privacy" / "releases"


def console_settings(app: AppSettings) -> ConsoleSettings | None:
    """The console's settings of an app; None when `serving.console_token` is unset (the console is off)."""
    from serving.experiments.manage import report_dir

    token = app.serving.console_token
    if token is None:
        return None
    out = Path(app.output_dir)
    return ConsoleSettings(
        token=token, scenario=app.name, output_dir=out, tracking_uri=app.tracking_uri,
        model_names=tuple(dict.fromkeys((app.ranker_model, app.retriever_model))),
        experiments_store=experiment_store_path(out, app.experiments), experiments_reports=report_dir(app),
        analytics_dir=Path(app.analytics_dir) if app.analytics_dir is not None else out / "analytics", app=app)
