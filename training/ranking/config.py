"""Typed config of the ranking stage (the `train:` section of a scenario YAML)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from feature_store.config import StrictModel
from training.common.config import CompileMode, OptimConfig, RuntimeConfig, TrackingConfig, compile_mode


def checks_models(info: ValidationInfo) -> bool:
    """Whether `train.model` and `train.model_params` are checked against the model zoo. They are, unless the
    validation context says `{"models": False}`: the data commands (generate, prepare, materialize) pass that,
    because the zoo imports torch (2 s CPU, up to 9 s on a cold, busy machine) and they never build a model;
    `recforge config`, `train` and `demo` check them all."""
    return not (info.context and info.context.get("models") is False)


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
        default_factory=dict, description="per model name: its parameters (see Model parameters below). Every entry "
                                          "is validated against its model's keys when the config loads (`recforge "
                                          "config` too); only the entry of `model` is used")
    batch_size: int = Field(4096, gt=0, description="training batch size")
    eval_batch_size: int | None = Field(None, gt=0, description="validation/test batch size; default 4 x batch_size")
    max_epochs: int = Field(5, gt=0, description="upper bound on epochs (early stopping may end sooner)")
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimiser steps; -1 = no step limit")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimisers and learning-rate schedule")
    early_stopping: EarlyStopConfig = Field(default_factory=EarlyStopConfig,
                                            description="which validation metric selects the best epoch")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig,
                                   description="seed, device, precision, threads and Ray Train workers")
    compile: CompileMode = Field(
        "auto", description="torch.compile the model for training: off, on, or auto = on when training on CUDA; "
                            "checkpoints and bundles keep the plain model's keys (a compiled model's bundle loads "
                            "into an uncompiled one)")
    streaming: bool = Field(False, description="read the train split by Parquet row group through a shuffle buffer "
                                               "instead of loading it whole (for splits larger than memory)")
    gpu_resident: bool | None = Field(
        None, description="keep the train split in GPU memory; null = when it needs under 40% of the free memory")
    sharded: bool = Field(False, description="TorchRec planner + DistributedModelParallel over `runtime.devices` "
                                             "processes (table-wise or row-wise sharded embeddings)")
    resume: bool = Field(False, description="continue from the last checkpoint of the same output directory, in "
                                            "the same MLflow run; says what it resumed from, or that there was "
                                            "nothing to resume")
    checkpoint_every_n_steps: int = Field(
        1000, ge=0, description="also write the resumable `last.ckpt` every N optimiser steps, not only at epoch "
                                "end, so a killed job loses at most N steps (0: epoch end only); in-process "
                                "training (Ray Train jobs checkpoint per epoch)")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="the MLflow run of the job")
    gauc: bool | None = Field(
        None, description="report the group AUC over `features.user_key` (docs/metrics.md#gauc). null = only when "
                          "that column names the user: the key of `entities.user`, the profiles' `user_key` "
                          "(profiles enabled) or a retrieval user-tower feature; otherwise gAUC is reported absent "
                          "with the reason (e.g. Criteo's hashed ad column C1). true = always, false = never")

    _compile_words = field_validator("compile", mode="before")(compile_mode)

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str, info: ValidationInfo) -> str:
        if not checks_models(info):
            return name
        from training.ranking.models import MODELS  # imports torch: only once a config names a model

        if name not in MODELS:
            raise ValueError(f"unknown model; choose one of: {', '.join(sorted(MODELS))}")
        return name

    @field_validator("model_params")
    @classmethod
    def _params_of_every_model(cls, params: dict[str, dict[str, Any]],
                               info: ValidationInfo) -> dict[str, dict[str, Any]]:
        """Every entry, not only the one of `model`, against its model's config class: `recforge config` catches a
        misspelt key of a model the next run switches to. Errors keep their key path
        (`model_params.<model>.<key>`), so the loader names the YAML line; an unknown key lists the valid ones."""
        if not checks_models(info):
            return params
        from training.ranking.models import MODELS

        errors: list[InitErrorDetails] = []
        for name, entry in params.items():
            if name not in MODELS:
                errors.append(InitErrorDetails(
                    type=PydanticCustomError("unknown_key", "unknown model",
                                             {"valid": ", ".join(sorted(MODELS))}),
                    loc=(name,), input=entry))
                continue
            config_class = MODELS[name].config_class
            try:
                config_class.model_validate(entry)
            except ValidationError as exc:
                for e in exc.errors():
                    if e["type"] == "extra_forbidden":
                        kind: Any = PydanticCustomError("unknown_key", "unknown key",
                                                        {"valid": ", ".join(config_class.model_fields)})
                    else:
                        kind = PydanticCustomError(e["type"], e["msg"])
                    errors.append(InitErrorDetails(type=kind, loc=(name, *e["loc"]), input=e["input"]))
        if errors:
            raise ValidationError.from_exception_data("model_params", errors)
        return params

    @model_validator(mode="after")
    def _one_distribution(self) -> TrainConfig:
        if self.sharded and self.runtime.ray_workers:
            raise ValueError("train.sharded and train.runtime.ray_workers are exclusive: choose TorchRec sharding "
                             "or Ray Train")
        if self.sharded and self.compile == "on":
            raise ValueError("train.compile: on does not apply to train.sharded (TorchRec's DistributedModelParallel "
                             "runs its own kernels); set train.compile: auto or off")
        return self
