"""The retrieval stage through Ray Train (`retrieval.runtime.ray_workers > 0`): the same Lightning task on N workers.

Each worker loads the retrieval data, takes its rank's share of every epoch's permutation
(`RetrievalTask.train_dataloader` under Ray's DDP strategy), validates on the whole valid query set (all ranks
agree without a gather) and reports the metric with a checkpoint. Ray Train keeps the best checkpoint by valid
recall@`select_k`. With `refit` a second Ray Train job trains a fresh model on train + valid positives for the
selected number of epochs. The driver loads the final weights; `training.retrieval.run` finishes as for a local job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping

from feature_store.layout import StageLayout
from training.common.ray_train import (
    checkpoint_file,
    fit_on_ray,
    node_spread,
    report_callback,
    require_workers,
    worker_nodes,
)
from training.common.tracking import TrackedRun
from training.common.trainer import build_trainer, compile_in_place, seed_and_threads
from training.retrieval.config import RetrievalConfig
from training.retrieval.data import RetrievalData, load_retrieval_data
from training.retrieval.fitted import Fitted, best_epoch, monitor, precision_of, trained_samples
from training.retrieval.model import TwoTower, compiled_parts
from training.retrieval.task import RetrievalTask, ValidRanking

RUN_NAME = "two_tower"


def _worker_loop(config: dict[str, Any]) -> dict[str, Any]:
    """`train_loop_per_worker`: the Lightning job on this worker's share of the data."""
    cfg = RetrievalConfig.model_validate(config["retrieval"])
    seed_and_threads(cfg.runtime)
    data = load_retrieval_data(config["prepared"], cfg)
    refit_epochs = int(config.get("refit_epochs", 0))
    if refit_epochs:  # the refit: train + valid positives, a fixed epoch count, no validation
        data = data.with_valid_in_train()
    task = RetrievalTask(TwoTower(data.towers, cfg.model), cfg, data)
    compile_in_place(compiled_parts(task.trained), cfg.compile, cfg.runtime)
    callbacks: list[pl.Callback] = [report_callback()] if refit_epochs else [
        ValidRanking(), report_callback(),
        EarlyStopping(monitor=monitor(cfg), mode="max", patience=cfg.patience, check_on_train_epoch_end=True)]
    trainer = build_trainer(cfg.runtime, precision=config["precision"], max_epochs=refit_epochs or cfg.max_epochs,
                            callbacks=callbacks, grad_clip=cfg.optim.grad_clip, ray_worker=True,
                            validate_in_loop=False)
    trainer.fit(task)
    return {"history": task.history, "epochs_run": trainer.current_epoch, "nodes": worker_nodes()}


def _load(task: RetrievalTask, checkpoint: Any) -> RetrievalTask:
    task.load_state_dict(checkpoint_file(checkpoint)["state_dict"], strict=False)
    return task


def fit(cfg: RetrievalConfig, data: RetrievalData, prepared: Path, stage: StageLayout, run: TrackedRun, *,
        ray_address: str | None = None, **_: Any) -> Fitted:
    require_workers(cfg.runtime, ray_address, "retrieval")
    loop_config = {"retrieval": cfg.model_dump(mode="json"), "prepared": str(prepared.resolve()),
                   "precision": precision_of(cfg)}
    result, best, fit_seconds = fit_on_ray(_worker_loop, {**loop_config, "refit_epochs": 0}, cfg.runtime,
                                           storage=stage.ray_storage, run_name=RUN_NAME, monitor=monitor(cfg))
    task = _load(RetrievalTask(TwoTower(data.towers, cfg.model), cfg, data), best)
    worker = getattr(result, "return_value", None) or {}  # rank 0's return value: its per-epoch history
    task.history.update(worker.get("history", {}))
    epochs_run = int(worker.get("epochs_run", len(task.history.get(monitor(cfg), []))))
    distributed = {"mode": "ray_train", "workers": cfg.runtime.ray_workers, "use_gpu": cfg.runtime.use_cuda,
                   "ray_result_path": str(result.path), "nodes": node_spread(worker.get("nodes", []))}
    fitted = Fitted(task, fit_seconds, epochs_run, trained_samples(data, cfg, epochs_run), distributed=distributed)
    refit_epochs = best_epoch(task) + 1 if cfg.refit else 0
    if refit_epochs <= 0:
        return fitted
    result, last, seconds = fit_on_ray(_worker_loop, {**loop_config, "refit_epochs": refit_epochs}, cfg.runtime,
                                       storage=stage.ray_storage, run_name=f"{RUN_NAME}_refit")
    full = data.with_valid_in_train()
    refitted = _load(RetrievalTask(TwoTower(full.towers, cfg.model), cfg, full), last)
    refitted.history = task.history
    samples = fitted.samples + trained_samples(full, cfg, refit_epochs)
    return Fitted(refitted, fit_seconds + seconds, epochs_run, samples,
                  refit_epochs=refit_epochs, distributed={**distributed, "ray_result_path": str(result.path)})
