"""Typed config of the training stage (the `train:` section of a scenario YAML)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from feature_store.config import StrictModel


class OptimConfig(StrictModel):
    """Dense parameters and embeddings get their own optimizer and learning rate."""

    dense: Literal["adam", "adamw"] = "adam"
    dense_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    embedding: Literal["adam", "adagrad"] = "adam"
    embedding_lr: float = Field(1e-3, gt=0)
    embedding_l2: float = Field(0.0, ge=0, description="L2 penalty on the embedding rows a batch looks up")
    warmup_steps: int = Field(0, ge=0)
    decay: Literal["none", "cosine", "exponential"] = "none"
    decay_rate: float = Field(0.5, gt=0, le=1, description="exponential: factor per epoch")
    grad_clip: float | None = Field(10.0, gt=0)


class EarlyStopConfig(StrictModel):
    metric: str = "valid/auc"
    mode: Literal["max", "min"] = "max"
    patience: int = Field(2, ge=0)


class TrackingConfig(StrictModel):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<output_dir>/mlflow.db")
    experiment: str | None = Field(None, description="default: the scenario name")
    log_model: bool = True


class TrainConfig(StrictModel):
    """`recforge train ctr`: model, batches, optimisation, hardware and tracking."""

    model: str = "dcnv2"
    model_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per model name: its config (validated by the model's config class)")
    batch_size: int = Field(4096, gt=0)
    eval_batch_size: int | None = Field(None, gt=0)
    max_epochs: int = Field(5, gt=0)
    max_steps: int = Field(-1, ge=-1)
    seed: int = 42
    optim: OptimConfig = Field(default_factory=OptimConfig)
    early_stopping: EarlyStopConfig = Field(default_factory=EarlyStopConfig)
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: int | Literal["auto"] = "auto"
    strategy: Literal["auto", "ddp"] = "auto"
    precision: Literal["auto", "32", "bf16-mixed"] = "auto"
    streaming: bool = False
    gpu_resident: bool | None = Field(None, description="None = auto (when the train split fits in GPU memory)")
    ray_workers: int = Field(0, ge=0, description=">0 trains through Ray Train with that many workers")
    sharded: bool = Field(False, description="TorchRec planner + DistributedModelParallel over `devices` processes")
    resume: bool = False
    num_threads: int | None = Field(None, gt=0)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
