"""Config blocks both training stages share: where and how a job runs, how it optimises, where it is tracked.

`train:` (ranking) and `retrieval:` each hold one `runtime`, one `optim` and one `tracking` block of these same
models, so a key means the same thing in both stages; only the defaults differ where a stage measured better ones
(`RetrievalOptimConfig`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from feature_store.config import StrictModel
from feature_store.secrets import SecretUrl

CompileMode = Literal["off", "on", "auto"]


def compile_mode(v: object) -> object:
    """YAML reads `on` / `off` as booleans: take them as the words they were."""
    if isinstance(v, bool):
        return "on" if v else "off"
    return v


class RuntimeConfig(StrictModel):
    """Where and how a training job runs: seed, device, precision, threads and distribution."""

    seed: int = Field(42, description="seeds model initialisation, batch order and sampled negatives; the same "
                                      "seed on the same data and machine reproduces a run")
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = Field(
        "auto", description="auto = a CUDA device when one is visible, else the CPU; gpu and cuda are the same")
    devices: int | Literal["auto"] = Field(
        "auto", description="devices (or, for sharded ranking, processes) the job uses; auto = all visible")
    strategy: Literal["auto", "ddp"] = Field(
        "auto", description="Lightning's strategy: ddp trains data-parallel over `devices` local processes")
    precision: Literal["auto", "32", "bf16-mixed"] = Field(
        "auto", description="auto = bf16 autocast on CUDA (and, for ranking, on CPUs with native bf16), else fp32; "
                            "32 forces fp32")
    num_threads: int | None = Field(
        None, gt=0, description="torch intra-op threads; null leaves torch's default (one per core)")
    ray_workers: int = Field(
        0, ge=0, description="> 0 trains through Ray Train with that many workers (one CPU or GPU each) on the "
                             "Ray cluster of `prepare.ray_address`; 0 trains in this process")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, v: object) -> object:
        """`precision: 32` (YAML and `--set` read a number) means "32"."""
        return "32" if v == 32 and not isinstance(v, bool) else v

    @property
    def use_cuda(self) -> bool:
        """True when the job will run on a CUDA device (one is visible and the CPU is not forced)."""
        import torch

        return torch.cuda.is_available() and self.accelerator != "cpu"


class OptimConfig(StrictModel):
    """Optimiser and learning-rate schedule. Dense parameters and embedding tables get their own optimiser and
    learning rate: embedding rows see sparse, bursty gradients, and the CTR benchmarks train best with both tuned
    apart."""

    dense: Literal["adam", "adamw"] = Field("adam", description="optimiser of the dense (non-embedding) weights")
    dense_lr: float = Field(1e-3, gt=0, description="learning rate of the dense weights")
    weight_decay: float = Field(0.0, ge=0, description="weight decay of the dense weights (decoupled with adamw)")
    embedding: Literal["adam", "adagrad"] = Field("adam", description="optimiser of the embedding tables")
    embedding_lr: float = Field(1e-3, gt=0, description="learning rate of the embedding tables")
    embedding_l2: float = Field(0.0, ge=0, description="L2 penalty on the embedding rows a batch looks up "
                                                        "(ranking only)")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warmup over this many steps")
    decay: Literal["none", "cosine", "exponential"] = Field(
        "none", description="learning-rate decay after the warmup: cosine to 0 over the run, or exponential per "
                            "epoch (`decay_rate`)")
    decay_rate: float = Field(0.5, gt=0, le=1, description="exponential decay: the factor per epoch")
    grad_clip: float | None = Field(10.0, gt=0, description="clip the gradient norm to this; null = no clipping")


class RetrievalOptimConfig(OptimConfig):
    """`OptimConfig` with the two-tower model's defaults: one learning rate of 3e-3 for towers and embeddings, no
    gradient clipping (what the retrieval benchmarks in docs/benchmarks.md were measured with)."""

    dense_lr: float = Field(3e-3, gt=0, description="learning rate of the towers' dense weights")
    embedding_lr: float = Field(3e-3, gt=0, description="learning rate of the towers' embedding tables")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this; null = no clipping")


class TrackingConfig(StrictModel):
    """Where a stage's runs are tracked in MLflow."""

    uri: SecretUrl | None = Field(None, description="MLflow tracking URI; default sqlite:///<output_dir>/mlflow.db "
                                                    "(the registry reads both stages' runs from it); secret: "
                                                    "credentials in it (`https://user:password@host`) are redacted "
                                                    "in every output")
    experiment: str | None = Field(None, description="MLflow experiment name; default: the scenario name")
    log_model: bool = Field(True, description="log the model bundle as a run artifact (registration needs it)")
