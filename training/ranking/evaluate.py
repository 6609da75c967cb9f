"""What every ranking strategy hands back (`Fitted`), and the driver's evaluation of trained weights.

In-process training evaluates with its own trainer; Ray Train workers and sharded ranks only train, and the driver
scores the best weights on the WHOLE valid and test splits here, through the same `CTRTask` metrics, so the three
strategies report comparable figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from torch import Tensor

from training.common.trainer import evaluator, lightning_precision
from training.ranking.config import TrainConfig
from training.ranking.datamodule import CTRDataModule
from training.ranking.models import CTRModel
from training.ranking.task import CTRTask


@dataclass
class Fitted:
    """A trained ranker with the best weights loaded and evaluated."""

    model: CTRModel
    valid: dict[str, float]
    test: dict[str, float]
    predictions: dict[str, np.ndarray] | None
    example: dict[str, Tensor]
    epochs_run: int
    global_steps: int
    device: str
    precision: str
    history: dict[str, list[float]]
    best_checkpoint: str
    distributed: dict[str, Any] | None = None
    global_zero: bool = field(default=True)


def precision_of(cfg: TrainConfig) -> str:
    """`train.runtime.precision` for Lightning (bf16 autocast on CUDA and on CPUs with native bf16 under auto)."""
    return lightning_precision(cfg.runtime.precision, cfg.runtime.accelerator)


def split_rows(prepared: Path, split: str) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((prepared / split).glob("*.parquet")))


def steps_per_epoch(prepared: Path, batch_size: int, world_size: int = 1) -> int:
    """Optimiser steps per epoch: every rank takes an equal share of the train rows (the remainder is skipped)."""
    rows = split_rows(prepared, "train") // world_size
    return max(-(-rows // batch_size), 1)


def evaluate_model(model: CTRModel, cfg: TrainConfig, prepared: Path, precision: str) -> dict[str, Any]:
    """valid/test metrics, test predictions and an example test batch of `model` on the whole splits."""
    dm = CTRDataModule(prepared, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                       seed=cfg.runtime.seed, streaming=cfg.streaming, splits=("valid", "test"))
    task = CTRTask(model, cfg.optim, gauc=cfg.gauc is not False)
    trainer = evaluator(cfg.runtime, precision)
    trainer.validate(task, datamodule=dm, verbose=False)
    trainer.test(task, datamodule=dm, verbose=False)
    return {"valid": dict(task.last_metrics.get("valid", {})), "test": dict(task.last_metrics.get("test", {})),
            "predictions": task.last_predictions.get("test"), "example": next(iter(dm.test_dataloader()))}
