"""MLflow tracking: where runs go, data lineage, and the run of a training job from open to finished.

Default store: a SQLite file `<output_dir>/mlflow.db` (artifacts under `<output_dir>/mlartifacts`);
`--tracking-uri` or `<stage>.tracking.uri` points at a server. `open_run` creates the job's run (or reopens it when
a job resumes) before training, so per-epoch metrics can go into it while training runs (Lightning's MLFlowLogger
attached to the same run id, or `log_epochs` for the hand-written loops); `training.common.run.finish` logs the rest
once and marks the run FINISHED; a job that raises marks it FAILED (`failed_run`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.layout import RunLayout, StageLayout
from feature_store.secrets import redact_doc, redact_url
from training.common.config import TrackingConfig

LINEAGE_DATA = "recforge.data_hash"
LINEAGE_SPEC = "recforge.spec_fingerprint"


def default_tracking_uri(output_dir: str | Path) -> str:
    return f"sqlite:///{RunLayout(Path(output_dir)).mlflow_db}"


def ensure_experiment(tracking_uri: str, name: str, output_dir: str | Path) -> str:
    """The experiment id for `name`, created with artifacts next to the outputs when new."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=RunLayout(Path(output_dir)).mlartifacts.as_uri())


def hash_prepared(prepared_dir: str | Path) -> str:
    """sha256 over every prepared shard (name + bytes) of train/valid/test: the data lineage of a run."""
    h = hashlib.sha256()
    root = Path(prepared_dir)
    for split in ("train", "valid", "test"):
        for f in sorted((root / split).glob("*.parquet")):
            h.update(f"{split}/{f.name}".encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested mapping as MLflow params: dotted keys, lists as JSON, everything else as str."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | tuple) else str(v)
    return out


@dataclass(frozen=True)
class TrackedRun:
    """The MLflow run a job logs into."""

    tracking_uri: str
    experiment: str
    run_id: str

    def as_dict(self) -> dict[str, str]:
        """What results and reports show: the URI without its credentials (feature_store.secrets)."""
        return {"tracking_uri": redact_url(self.tracking_uri) or "", "experiment": self.experiment,
                "run_id": self.run_id}

    def client(self) -> Any:
        import mlflow

        return mlflow.MlflowClient(self.tracking_uri)


def open_run(tracking: TrackingConfig, *, output_dir: str | Path, scenario: str, stage: StageLayout, run_name: str,
             uri: str | None = None, resuming: bool = False, tags: Mapping[str, str] | None = None) -> TrackedRun:
    """The MLflow run of this job: reopened when `resuming` and the stage folder recorded one, created otherwise.

    `uri` (the CLI's --tracking-uri) wins over `tracking.uri`, which wins over the default store. The run id is kept
    in the stage folder so that a resumed job continues the same run."""
    uri = uri or tracking.uri or default_tracking_uri(output_dir)
    experiment = tracking.experiment or scenario
    experiment_id = ensure_experiment(uri, experiment, output_dir)
    import mlflow

    client = mlflow.MlflowClient(uri)
    stage.root.mkdir(parents=True, exist_ok=True)
    if resuming and stage.run_id_file.is_file():
        run_id = stage.run_id_file.read_text().strip()
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {})).info.run_id
    stage.run_id_file.write_text(run_id)
    return TrackedRun(uri, experiment, run_id)


def mlflow_metric_name(name: str) -> str:
    """`name` in the characters MLflow allows (letters, digits, `_ / . -` and space): `valid/recall@50` ->
    `valid/recall50`, the name Lightning's MLflow logger stored before (so runs stay comparable), without its
    warning on every epoch."""
    return re.sub(r"[^a-zA-Z0-9_/. -]+", "", name)


def lightning_logger(run: TrackedRun) -> Any:
    """Lightning's `MLFlowLogger` attached to `run`, with metric names made valid for MLflow before they reach it."""
    from pytorch_lightning.loggers import MLFlowLogger

    class _Logger(MLFlowLogger):
        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            super().log_metrics({mlflow_metric_name(k): v for k, v in metrics.items()}, step)

    return _Logger(experiment_name=run.experiment, tracking_uri=run.tracking_uri, run_id=run.run_id,
                   log_model=False)


@contextmanager
def failed_run(run: TrackedRun) -> Iterator[None]:
    """Marks the run FAILED when the block raises (also on Ctrl-C), so no run of a dead job stays RUNNING."""
    try:
        yield
    except BaseException:
        run.client().set_terminated(run.run_id, status="FAILED")
        raise


def log_epochs(run: TrackedRun, rows: list[dict[str, float]]) -> None:
    """Per-epoch metrics (step = global step at the end of the epoch, as Lightning's MLFlowLogger does)."""
    import mlflow

    stamp = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric(mlflow_metric_name(k), float(v), stamp, int(row.get("step", i)))
               for i, row in enumerate(rows) for k, v in row.items()
               if k not in ("epoch", "step") and np.isfinite(v)]
    client = run.client()
    for i in range(0, len(metrics), 500):
        client.log_batch(run.run_id, metrics=metrics[i: i + 500])


def log_params(run: TrackedRun, config: Mapping[str, Any]) -> None:
    """The resolved config as flattened params (skipping the ones a resumed run already has). `config` is a JSON
    dump (secret fields already redacted by their types); known secret values are masked again here, for a
    caller that passed a plain mapping."""
    import mlflow

    client = run.client()
    existing = set(client.get_run(run.run_id).data.params)
    batch = [mlflow.entities.Param(k[:250], v[:6000]) for k, v in flatten(redact_doc(config)).items()
             if k[:250] not in existing]
    for i in range(0, len(batch), 100):
        client.log_batch(run.run_id, params=batch[i: i + 100])
