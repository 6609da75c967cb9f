"""The retrieval stage in this process: a selection run (early stopping on valid recall), then with `refit` a
fresh model on train + valid positives for the selected number of epochs, as the baselines fit on train + valid."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from feature_store.layout import StageLayout
from training.common.tracking import TrackedRun, lightning_logger
from training.common.trainer import build_trainer, compile_in_place, fresh_checkpoints, seed_and_threads
from training.retrieval.config import RetrievalConfig
from training.retrieval.data import RetrievalData
from training.retrieval.fitted import Fitted, best_epoch, monitor, precision_of, trained_samples
from training.retrieval.model import TwoTower, compiled_parts
from training.retrieval.task import RetrievalTask, ValidRanking


def _trainer(cfg: RetrievalConfig, max_epochs: int, callbacks: list[pl.Callback], logger: Any) -> pl.Trainer:
    return build_trainer(cfg.runtime, precision=precision_of(cfg), max_epochs=max_epochs, callbacks=callbacks,
                         logger=logger, grad_clip=cfg.optim.grad_clip, checkpointing=bool(callbacks),
                         validate_in_loop=False)


def fit(cfg: RetrievalConfig, data: RetrievalData, prepared: Path, stage: StageLayout, run: TrackedRun,
        **_: Any) -> Fitted:
    seed_and_threads(cfg.runtime)
    task = RetrievalTask(TwoTower(data.towers, cfg.model), cfg, data)
    compile_in_place(compiled_parts(task.trained), cfg.compile, cfg.runtime)
    logger = lightning_logger(run)
    fresh_checkpoints(stage.checkpoints)
    ckpt = ModelCheckpoint(dirpath=stage.checkpoints, filename="best", monitor=monitor(cfg), mode="max",
                           save_top_k=1, save_on_train_epoch_end=True, enable_version_counter=False)
    early = EarlyStopping(monitor=monitor(cfg), mode="max", patience=cfg.patience, check_on_train_epoch_end=True)
    trainer = _trainer(cfg, cfg.max_epochs, [ValidRanking(), ckpt, early], logger)
    t0 = time.perf_counter()
    trainer.fit(task)
    fit_seconds = time.perf_counter() - t0
    if ckpt.best_model_path:
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        task.load_state_dict(state, strict=False)
    fitted = Fitted(task, fit_seconds, trainer.current_epoch, trained_samples(data, cfg, trainer.current_epoch),
                    device=str(trainer.strategy.root_device))
    return refit(fitted, data, cfg) if cfg.refit else fitted


def refit(fit: Fitted, data: RetrievalData, cfg: RetrievalConfig) -> Fitted:
    """Train a fresh model on train + valid positives for the selected number of epochs (no validation: the
    valid queries are now training data); the selection run's valid history is kept for the record."""
    epochs = best_epoch(fit.task) + 1
    if epochs <= 0:
        return fit
    full = data.with_valid_in_train()
    pl.seed_everything(cfg.runtime.seed, workers=True, verbose=False)
    task = RetrievalTask(TwoTower(full.towers, cfg.model), cfg, full)
    compile_in_place(compiled_parts(task.trained), cfg.compile, cfg.runtime)
    trainer = _trainer(cfg, epochs, [], False)
    t0 = time.perf_counter()
    trainer.fit(task)
    task.history = fit.task.history
    return Fitted(task, fit.fit_seconds + time.perf_counter() - t0, fit.epochs_run,
                  fit.samples + trained_samples(full, cfg, epochs), refit_epochs=epochs, device=fit.device)
