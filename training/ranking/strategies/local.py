"""A ranking job in this process: Lightning's Trainer (accelerator auto, bf16 autocast where it pays, DDP when
asked), the best checkpoint by the early-stopping metric and the last one for `train.resume`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from feature_store.layout import StageLayout
from training.common.tracking import TrackedRun, lightning_logger
from training.common.trainer import build_trainer, compile_in_place, fresh_checkpoints, seed_and_threads
from training.ranking.config import TrainConfig
from training.ranking.datamodule import CTRDataModule
from training.ranking.evaluate import Fitted, precision_of, steps_per_epoch
from training.ranking.models import build_model
from training.ranking.task import CTRTask


def resuming(cfg: TrainConfig, stage: StageLayout) -> bool:
    return cfg.resume and (stage.checkpoints / "last.ckpt").is_file()


def resume_point(cfg: TrainConfig, stage: StageLayout) -> dict[str, Any] | None:
    """What `train.resume` continues from: the last checkpoint, its epoch and optimiser step (None: nothing)."""
    if not resuming(cfg, stage):
        return None
    last = stage.checkpoints / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    return {"checkpoint": str(last), "epoch": int(state["epoch"]), "step": int(state["global_step"])}


def fit(cfg: TrainConfig, prepared: Path, stage: StageLayout, run: TrackedRun, **_: Any) -> Fitted:
    """Train, reload the best checkpoint, evaluate it on valid and test with the same trainer."""
    seed_and_threads(cfg.runtime)
    dm = CTRDataModule(prepared, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                       seed=cfg.runtime.seed, streaming=cfg.streaming, gpu_resident=cfg.gpu_resident)
    model = build_model(cfg.model, dm.prepare_spec(), cfg.model_params.get(cfg.model, {}))
    compile_in_place([model], cfg.compile, cfg.runtime)
    per_epoch = steps_per_epoch(prepared, cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else per_epoch * cfg.max_epochs
    task = CTRTask(model, cfg.optim, total_steps=total, steps_per_epoch=per_epoch, gauc=cfg.gauc is not False)
    logger = lightning_logger(run)
    last = stage.checkpoints / "last.ckpt"
    if not resuming(cfg, stage):
        fresh_checkpoints(stage.checkpoints)
    # no version counter: both callbacks write the one last.ckpt (the newer state wins), never last-v1.ckpt
    checkpoint = ModelCheckpoint(dirpath=stage.checkpoints, filename="best", monitor=cfg.early_stopping.metric,
                                 mode=cfg.early_stopping.mode, save_top_k=1, save_last=True,
                                 enable_version_counter=False)
    callbacks: list[Any] = [checkpoint]
    if cfg.checkpoint_every_n_steps > 0:  # the resumable last.ckpt mid-epoch too (best stays per epoch)
        callbacks.append(ModelCheckpoint(dirpath=stage.checkpoints, save_top_k=0, save_last=True,
                                         every_n_train_steps=cfg.checkpoint_every_n_steps,
                                         enable_version_counter=False))
    early = EarlyStopping(monitor=cfg.early_stopping.metric, mode=cfg.early_stopping.mode,
                          patience=cfg.early_stopping.patience)
    precision = precision_of(cfg)
    trainer = build_trainer(cfg.runtime, precision=precision, max_epochs=cfg.max_epochs, max_steps=cfg.max_steps,
                            callbacks=[*callbacks, early], logger=logger, grad_clip=cfg.optim.grad_clip,
                            checkpointing=True, root_dir=stage.root)
    trainer.fit(task, datamodule=dm, ckpt_path=str(last) if resuming(cfg, stage) else None)
    best_path = checkpoint.best_model_path or str(last)
    if best_path and Path(best_path).is_file():
        task.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    valid = dict(task.last_metrics.get("valid", {}))
    trainer.test(task, datamodule=dm, verbose=False)
    return Fitted(model=task.model, valid=valid, test=dict(task.last_metrics.get("test", {})),
                  predictions=task.last_predictions.get("test"), example=next(iter(dm.test_dataloader())),
                  epochs_run=trainer.current_epoch, global_steps=trainer.global_step,
                  device=str(trainer.strategy.root_device), precision=precision, history=task.history,
                  best_checkpoint=best_path, global_zero=trainer.is_global_zero)
