"""What a retrieval strategy hands back, and the bookkeeping both strategies share (precision, epochs, samples)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from training.common.trainer import lightning_precision
from training.retrieval.config import RetrievalConfig
from training.retrieval.data import RetrievalData
from training.retrieval.task import RetrievalTask


@dataclass
class Fitted:
    """A trained task (final weights loaded) and what its training cost."""

    task: RetrievalTask
    fit_seconds: float
    epochs_run: int
    samples: int
    refit_epochs: int = 0
    device: str = "cpu"
    distributed: dict[str, Any] | None = None


def precision_of(cfg: RetrievalConfig) -> str:
    """auto = bf16 autocast on CUDA, fp32 on CPU (CPU bf16 is measured for the CTR models only)."""
    return lightning_precision(cfg.runtime.precision, cfg.runtime.accelerator, cpu_bf16=False)


def trained_samples(data: RetrievalData, cfg: RetrievalConfig, epochs: int) -> int:
    return len(data.train_items) // cfg.batch_size * cfg.batch_size * max(epochs, 1)


def best_epoch(task: RetrievalTask) -> int:
    """0-based epoch of the best valid recall@`select_k` (-1 when nothing was validated)."""
    history = task.history[f"valid/recall@{task.cfg.select_k}"]
    return int(np.argmax(history)) if history else -1


def monitor(cfg: RetrievalConfig) -> str:
    return f"valid/recall@{cfg.select_k}"
