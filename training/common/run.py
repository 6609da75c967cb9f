"""The tail every training job shares, and the one result type both stages return.

Whatever trained the weights (Lightning in this process, Ray Train workers, TorchRec-sharded processes), a job ends
the same way: the evaluated model is saved as a bundle, its lineage (prepared-data hash, feature-spec fingerprint)
is computed once, the MLflow run gets params, lineage tags, test metrics, the resolved config, plots and the bundle,
and `metrics.json` is written next to the bundle. `finish` does exactly that and returns a `RunResult`.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from feature_store.config import write_private
from feature_store.layout import StageLayout
from feature_store.secrets import redact_doc
from feature_store.spec import FeatureSpec
from training.common.tracking import LINEAGE_DATA, LINEAGE_SPEC, TrackedRun, hash_prepared, log_params

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Stage = Literal["ranking", "retrieval"]


@dataclass
class Trained:
    """What a strategy hands to the tail: the evaluated metrics and what the training cost."""

    model: str
    epochs_run: int
    global_steps: int
    valid: dict[str, Any]
    test: dict[str, Any]
    device: str
    precision: str
    history: dict[str, list[float]] = field(default_factory=dict)
    distributed: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def result(self, *, stage: Stage, bundle: Path, run: TrackedRun, lineage: dict[str, str],
               started: float) -> RunResult:
        """The job's result: these figures plus where the bundle and the MLflow run are."""
        return RunResult(stage=stage, bundle=str(bundle), mlflow=run.as_dict(), lineage=lineage,
                         seconds=round(time.perf_counter() - started, 3), **asdict(self))


@dataclass(kw_only=True)
class RunResult(Trained):
    """What a training job produced; `to_dict()` is what `metrics.json`, `--json` and the CLI report show.

    `valid` / `test` hold the selected model's metrics (retrieval: `test` per method, the model beside its
    baselines); `details` holds what only one stage has (its best checkpoint, refit epochs, corpus counts, ...), and
    is merged into the top level of `to_dict()`."""

    stage: Stage
    bundle: str
    mlflow: dict[str, str]
    lineage: dict[str, str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "details"}
        out.update(self.details)
        return out


def lineage(prepared: Path) -> dict[str, str]:
    """The data lineage of a run: hash of the prepared shards and the fingerprint of the spec they were made with."""
    return {LINEAGE_DATA: hash_prepared(prepared), LINEAGE_SPEC: FeatureSpec.load(prepared / "spec").fingerprint()}


def finish(trained: Trained, *, stage: Stage, layout: StageLayout, prepared: Path, run: TrackedRun,
           config_doc: Mapping[str, Any], logged_metrics: Mapping[str, float], bundle_artifact: str | None,
           figures: Callable[[], dict[str, Figure]] | None = None, started: float) -> RunResult:
    """Lineage, MLflow (params, tags, metrics, artifacts, FINISHED) and metrics.json of a trained, evaluated,
    bundled model (the bundle already at `layout.bundle`). `bundle_artifact`: the artifact path the registry
    registers the bundle from (None: not logged, `tracking.log_model: false`)."""
    import mlflow
    import yaml

    result = trained.result(stage=stage, bundle=layout.bundle, run=run, lineage=lineage(prepared), started=started)
    client = run.client()
    log_params(run, config_doc)
    for key, value in result.lineage.items():
        client.set_tag(run.run_id, key, value)
    now = int(time.time() * 1000)
    finite = [mlflow.entities.Metric(k, float(v), now, 0) for k, v in logged_metrics.items()
              if isinstance(v, int | float) and np.isfinite(v)]
    for i in range(0, len(finite), 500):
        client.log_batch(run.run_id, metrics=finite[i: i + 500])
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        # private like every resolved config (MLflow's local artifact store copies the file with its mode)
        write_private(t / "resolved_config.yaml", yaml.safe_dump(redact_doc(dict(config_doc)), sort_keys=False))
        (t / "test_metrics.json").write_text(json.dumps(trained.test, indent=2, default=float))
        if figures is not None:
            (t / "plots").mkdir()
            for name, fig in figures().items():
                fig.savefig(t / "plots" / f"{name}.png")
        client.log_artifacts(run.run_id, str(t))
    if bundle_artifact is not None:
        client.log_artifacts(run.run_id, str(layout.bundle), artifact_path=bundle_artifact)
    result.seconds = round(time.perf_counter() - started, 3)
    layout.metrics.write_text(json.dumps(result.to_dict(), indent=2, default=float))
    client.log_artifact(run.run_id, str(layout.metrics))
    client.set_terminated(run.run_id, status="FINISHED")
    return result
