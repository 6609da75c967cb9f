"""`RunLayout`: every output path of a scenario under its `output_dir`, in one place.

Each stage writes into its own folder, and a later stage (or the registry, or serving) finds an earlier stage's
output here rather than by rebuilding the path. It lives in the lowest package so every package can use it; it
only names paths, it reads and writes nothing.

    <output_dir>/raw/                     synthetic data (generate)
    <output_dir>/prepared/                spec/, {train,valid,test}/*.parquet, rejects.parquet, summary.json
    <output_dir>/offline/                 the offline store
    <output_dir>/train/<model>/           ranking: checkpoints/, bundle/, metrics.json, mlflow_run_id, ray/
    <output_dir>/retrieval/               retrieval: checkpoints/, bundle/ (with embeddings/, index/), metrics.json
    <output_dir>/reviews/                 promotion review reports
    <output_dir>/mlflow.db, mlartifacts/  the default MLflow tracking store and its artifacts
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StageLayout:
    """The folder of one training job (a ranker of one model, or the retrieval stage)."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def run_id_file(self) -> Path:
        """The MLflow run id of the job, so that a resumed job logs into the same run."""
        return self.root / "mlflow_run_id"

    @property
    def ray_storage(self) -> Path:
        """Ray Train's storage path (its run folders and checkpoints), absolute as Ray requires."""
        return (self.root / "ray").resolve()

    @property
    def embeddings(self) -> Path:
        """Retrieval: the item and user vectors exported into the bundle (the index's input)."""
        return self.bundle / "embeddings"

    @property
    def index(self) -> Path:
        """Retrieval: the FAISS index built into the bundle, so that the bundle is complete for registration."""
        return self.bundle / "index"


@dataclass(frozen=True)
class RunLayout:
    """Where a scenario's outputs live under `output_dir` (see the module docstring)."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    @property
    def spec(self) -> Path:
        return self.root / "prepared" / "spec"

    @property
    def offline(self) -> Path:
        return self.root / "offline"

    @property
    def rejects(self) -> Path:
        return self.root / "prepared" / "rejects.parquet"

    @property
    def summary(self) -> Path:
        return self.root / "prepared" / "summary.json"

    def split_dir(self, split: str) -> Path:
        return self.prepared / split

    def ranker(self, model: str) -> StageLayout:
        return StageLayout(self.root / "train" / model)

    @property
    def retrieval(self) -> StageLayout:
        return StageLayout(self.root / "retrieval")

    @property
    def reviews(self) -> Path:
        return self.root / "reviews"

    @property
    def mlflow_db(self) -> Path:
        return self.root.resolve() / "mlflow.db"

    @property
    def mlartifacts(self) -> Path:
        return self.root.resolve() / "mlartifacts"

    def require_prepared(self) -> Path:
        """The prepared folder, or a FileNotFoundError that says which command makes it."""
        if not (self.spec / "feature_spec.json").is_file():
            raise FileNotFoundError(f"{self.prepared}: no prepared features; run `recforge prepare --config ...` "
                                    f"first")
        return self.prepared
