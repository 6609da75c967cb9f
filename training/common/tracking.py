"""MLflow tracking: where runs go, data lineage, and what a training run logs.

Default store: a SQLite file `<output_dir>/mlflow.db` (artifacts under `<output_dir>/mlartifacts`);
`--tracking-uri` points at a server. Every run logs the resolved config (as params and as a YAML artifact),
lineage tags (hash of the prepared data and the feature-spec fingerprint), per-epoch metrics (through
Lightning's MLFlowLogger), final test metrics, plots (ROC, reliability, loss curves) and the ranker bundle.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

LINEAGE_DATA = "recforge.data_hash"
LINEAGE_SPEC = "recforge.spec_fingerprint"


def default_tracking_uri(output_dir: str | Path) -> str:
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def artifact_location(output_dir: str | Path) -> str:
    return (Path(output_dir).resolve() / "mlartifacts").as_uri()


def ensure_experiment(tracking_uri: str, name: str, output_dir: str | Path) -> str:
    """The experiment id for `name`, created with artifacts next to the outputs when new."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(output_dir))


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
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | tuple) else str(v)
    return out


def log_training_run(run_id: str, tracking_uri: str, *, config: Mapping[str, Any], lineage: Mapping[str, str],
                     test_metrics: Mapping[str, float], history: Mapping[str, list[float]],
                     predictions: Mapping[str, np.ndarray] | None, bundle_dir: Path | None) -> None:
    """Everything a run logs after training (the per-epoch metrics were logged during it)."""
    import matplotlib

    matplotlib.use("Agg")
    import mlflow
    import yaml

    from training.common import metrics as m

    client = mlflow.MlflowClient(tracking_uri)
    params = flatten(config)
    existing = set(client.get_run(run_id).data.params)
    batch = [mlflow.entities.Param(k[:250], v[:6000]) for k, v in params.items() if k[:250] not in existing]
    for i in range(0, len(batch), 100):
        client.log_batch(run_id, params=batch[i: i + 100])
    for k, v in lineage.items():
        client.set_tag(run_id, k, v)
    finite = {f"test/{k}": float(v) for k, v in test_metrics.items()
              if isinstance(v, int | float) and np.isfinite(v)}
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, 0, 0) for k, v in finite.items()])
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "resolved_config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
        (t / "test_metrics.json").write_text(json.dumps(dict(test_metrics), indent=2, default=float))
        plots = t / "plots"
        plots.mkdir()
        m.plot_loss_curves(dict(history)).savefig(plots / "loss_curves.png")
        if predictions is not None:
            y, p = predictions["labels"], predictions["probs"]
            m.plot_roc(y, p).savefig(plots / "roc.png")
            m.plot_reliability(y, p).savefig(plots / "reliability.png")
        client.log_artifacts(run_id, str(t))
    if bundle_dir is not None:
        client.log_artifacts(run_id, str(bundle_dir), artifact_path="ranker")
