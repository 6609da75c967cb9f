"""Typed config of the ranking stage (the `train:` section of a scenario YAML)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from feature_store.config import StrictModel
from training.common.config import OptimConfig, RuntimeConfig, TrackingConfig


class EarlyStopConfig(StrictModel):
    """Early stopping and best-checkpoint selection on a validation metric."""

    metric: str = Field("valid/auc", description="the logged metric that selects the best epoch, e.g. valid/auc, "
                                                 "valid/logloss, valid/gauc")
    mode: Literal["max", "min"] = Field("max", description="max for AUC-like metrics, min for losses")
    patience: int = Field(2, ge=0, description="epochs without improvement before training stops")


class TrainConfig(StrictModel):
    """`recforge train ctr`: which CTR model, its batches and epochs, how it is optimised, where it runs and is
    tracked. Outputs go to `<output_dir>/train/<model>/` (checkpoints, bundle, metrics.json)."""

    model: str = Field("dcnv2", description="the CTR model: lr, fm, wide_deep, deepfm, dcnv2, dlrm, din, finalmlp")
    model_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per model name: its parameters (see Model parameters below); only the "
                                          "entry of `model` is used")
    batch_size: int = Field(4096, gt=0, description="training batch size")
    eval_batch_size: int | None = Field(None, gt=0, description="validation/test batch size; default 4 x batch_size")
    max_epochs: int = Field(5, gt=0, description="upper bound on epochs (early stopping may end sooner)")
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimiser steps; -1 = no step limit")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimisers and learning-rate schedule")
    early_stopping: EarlyStopConfig = Field(default_factory=EarlyStopConfig,
                                            description="which validation metric selects the best epoch")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig,
                                   description="seed, device, precision, threads and Ray Train workers")
    streaming: bool = Field(False, description="read the train split by Parquet row group through a shuffle buffer "
                                               "instead of loading it whole (for splits larger than memory)")
    gpu_resident: bool | None = Field(
        None, description="keep the train split in GPU memory; null = when it needs under 40% of the free memory")
    sharded: bool = Field(False, description="TorchRec planner + DistributedModelParallel over `runtime.devices` "
                                             "processes (table-wise or row-wise sharded embeddings)")
    resume: bool = Field(False, description="continue from the last checkpoint of the same output directory")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="the MLflow run of the job")

    @model_validator(mode="after")
    def _one_distribution(self) -> TrainConfig:
        if self.sharded and self.runtime.ray_workers:
            raise ValueError("train.sharded and train.runtime.ray_workers are exclusive: choose TorchRec sharding "
                             "or Ray Train")
        return self
