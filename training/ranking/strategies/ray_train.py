"""A ranking job through Ray Train (`train.runtime.ray_workers > 0`): the in-process Lightning job on N workers.

A `ray.train.torch.TorchTrainer` runs the job on every worker (Ray's DDP strategy and environment). Each worker
loads the whole train split and trains on its own share of every epoch's permutation (the rank shares of
`CTRDataModule`; a streamed split deals its row groups to ranks); every worker scores the whole valid split, so
the early-stopping metric is the same everywhere. The driver takes the best reported checkpoint and evaluates it
on the whole valid and test splits. `train.resume` continues from the latest checkpoint Ray Train kept under
`<output_dir>/train/<model>/ray/` (the resumed job's `history` holds the new epochs only).
"""

from __future__ import annotations

import shutil
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
    reported_metrics,
    require_workers,
    worker_nodes,
)
from training.common.tracking import TrackedRun, log_epochs
from training.common.trainer import build_trainer, compile_in_place, seed_and_threads
from training.ranking.config import TrainConfig
from training.ranking.datamodule import CTRDataModule
from training.ranking.evaluate import Fitted, evaluate_model, precision_of, steps_per_epoch
from training.ranking.models import build_model
from training.ranking.task import CTRTask

RUN_NAME = "ray_train"


class EpochMetrics(pl.Callback):
    """Keeps the scalar metrics of every epoch (after its validation) for the driver's MLflow run."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        row.update(epoch=trainer.current_epoch, step=trainer.global_step)
        self.rows.append(row)


def _worker_loop(config: dict[str, Any]) -> dict[str, Any]:
    """`train_loop_per_worker`: the Lightning job on this worker's share of the data."""
    import ray.train
    from ray.train.lightning import RayTrainReportCallback

    cfg = TrainConfig.model_validate(config["train"])
    seed_and_threads(cfg.runtime)
    dm = CTRDataModule(config["prepared"], batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                       seed=cfg.runtime.seed, streaming=cfg.streaming, gpu_resident=cfg.gpu_resident)
    model = build_model(cfg.model, dm.prepare_spec(), cfg.model_params.get(cfg.model, {}))
    compile_in_place([model], cfg.compile, cfg.runtime)
    task = CTRTask(model, cfg.optim, total_steps=config["total_steps"], steps_per_epoch=config["steps_per_epoch"],
                   gauc=cfg.gauc is not False)
    epochs = EpochMetrics()
    early = EarlyStopping(monitor=cfg.early_stopping.metric, mode=cfg.early_stopping.mode,
                          patience=cfg.early_stopping.patience)
    trainer = build_trainer(cfg.runtime, precision=config["precision"], max_epochs=cfg.max_epochs,
                            max_steps=cfg.max_steps, callbacks=[early, epochs, report_callback()],
                            grad_clip=cfg.optim.grad_clip, ray_worker=True)
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as d:
            trainer.fit(task, datamodule=dm, ckpt_path=str(Path(d) / RayTrainReportCallback.CHECKPOINT_NAME))
    else:
        trainer.fit(task, datamodule=dm)
    return {"history": task.history, "epochs": epochs.rows, "epochs_run": trainer.current_epoch,
            "global_steps": trainer.global_step, "device": str(trainer.strategy.root_device),
            "nodes": worker_nodes()}


def resuming(cfg: TrainConfig, stage: StageLayout) -> bool:
    return cfg.resume and (stage.ray_storage / RUN_NAME).is_dir()


def resume_point(cfg: TrainConfig, stage: StageLayout) -> dict[str, Any] | None:
    """What `train.resume` continues from: Ray Train's run folder (its latest epoch checkpoint), None: nothing."""
    return {"checkpoint": str(stage.ray_storage / RUN_NAME), "epoch": None, "step": None} \
        if resuming(cfg, stage) else None


def fit(cfg: TrainConfig, prepared: Path, stage: StageLayout, run: TrackedRun, *, ray_address: str | None = None,
        **_: Any) -> Fitted:
    """Train on the Ray cluster, then evaluate the best reported checkpoint here."""
    require_workers(cfg.runtime, ray_address, "train")
    workers = cfg.runtime.ray_workers
    stage.checkpoints.mkdir(parents=True, exist_ok=True)
    per_epoch = steps_per_epoch(prepared, cfg.batch_size, workers)
    total = cfg.max_steps if cfg.max_steps > 0 else per_epoch * cfg.max_epochs
    precision = precision_of(cfg)
    if not resuming(cfg, stage):  # Ray Train restores a run folder of the same name; a fresh job starts clean
        shutil.rmtree(stage.ray_storage / RUN_NAME, ignore_errors=True)
    loop_config = {"train": cfg.model_dump(mode="json"), "prepared": str(prepared.resolve()),
                   "steps_per_epoch": per_epoch, "total_steps": total, "precision": precision}
    result, checkpoint, _ = fit_on_ray(_worker_loop, loop_config, cfg.runtime, storage=stage.ray_storage,
                                       run_name=RUN_NAME, monitor=cfg.early_stopping.metric,
                                       mode=cfg.early_stopping.mode)
    best = stage.checkpoints / "best.ckpt"
    state = checkpoint_file(checkpoint, best)["state_dict"]
    model = build_model(cfg.model, CTRDataModule(prepared).prepare_spec(), cfg.model_params.get(cfg.model, {}))
    task = CTRTask(model, cfg.optim, gauc=cfg.gauc is not False)
    task.load_state_dict(state)
    scored = evaluate_model(task.model, cfg, prepared, precision)
    worker = result.return_value or {}
    log_epochs(run, worker.get("epochs", []))
    reported = reported_metrics(result, checkpoint)
    return Fitted(model=task.model, valid=scored["valid"], test=scored["test"], predictions=scored["predictions"],
                  example=scored["example"], epochs_run=int(worker.get("epochs_run", 0)),
                  global_steps=int(worker.get("global_steps", 0)), device=worker.get("device", "cpu"),
                  precision=precision, history=worker.get("history") or {"train/loss": [], "valid/loss": []},
                  best_checkpoint=str(best),
                  distributed={"mode": "ray_train", "workers": workers, "use_gpu": cfg.runtime.use_cuda,
                               "ray_result_path": str(result.path),
                               "nodes": node_spread(worker.get("nodes", [])),
                               "reported_valid": {k.split("/", 1)[1]: float(v) for k, v in reported.items()
                                                  if k.startswith("valid/")}})
