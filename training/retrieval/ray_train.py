"""Two-tower training through Ray Train (`retrieval.ray_workers > 0`): the same Lightning task on N workers.

Each worker loads the retrieval data, takes its rank's share of every epoch's permutation
(`RetrievalTask.train_dataloader` under Ray's DDP strategy), validates on the whole valid query set (all ranks
agree without a gather) and reports the metric with a checkpoint. Ray Train keeps the best checkpoint by valid
recall@`select_k`. With `refit` a second Ray Train job trains a fresh model on train + valid positives for the
selected number of epochs. The driver loads the final weights and finishes as the single-process job does (test
metrics beside the baselines, exported embeddings, MLflow).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping

from training.common.tracking import default_tracking_uri, ensure_experiment
from training.retrieval.config import RetrievalConfig
from training.retrieval.data import load_retrieval_data
from training.retrieval.model import TwoTower
from training.retrieval.run import (
    Fitted,
    RetrievalTask,
    ValidRanking,
    _log_run,
    _precision,
    best_epoch,
    finish,
    trained_samples,
)

RUN_NAME = "two_tower"


def _worker_loop(config: dict[str, Any]) -> dict[str, Any]:
    """`train_loop_per_worker`: the Lightning job of `train_retrieval` on this worker's share of the data."""
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, RayTrainReportCallback, prepare_trainer

    cfg = RetrievalConfig.model_validate(config["retrieval"])
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = load_retrieval_data(config["prepared"], cfg)
    refit_epochs = int(config.get("refit_epochs", 0))
    if refit_epochs:  # the refit: train + valid positives, a fixed epoch count, no validation
        data = data.with_valid_in_train()
    task = RetrievalTask(TwoTower(data.towers, cfg.model), cfg, data)
    monitor = f"valid/recall@{cfg.select_k}"
    callbacks: list[pl.Callback] = [RayTrainReportCallback()] if refit_epochs else [
        ValidRanking(), RayTrainReportCallback(),
        EarlyStopping(monitor=monitor, mode="max", patience=cfg.patience, check_on_train_epoch_end=True)]
    trainer = pl.Trainer(
        accelerator="gpu" if config["use_gpu"] else "cpu", devices="auto", strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()], precision=config["precision"],
        max_epochs=refit_epochs or cfg.max_epochs, callbacks=callbacks,
        logger=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
        enable_model_summary=False, enable_progress_bar=False, deterministic=False,
    )
    trainer = prepare_trainer(trainer)
    trainer.fit(task)
    return {"history": task.history, "epochs_run": trainer.current_epoch}


def train_retrieval_ray(output_dir: str | Path, name: str, cfg: RetrievalConfig, *,
                        config_doc: Mapping[str, Any] | None = None, tracking_uri: str | None = None,
                        ray_address: str | None = None) -> dict[str, Any]:
    """`train_retrieval` over `cfg.ray_workers` Ray Train workers; same result plus `distributed`."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.lightning import RayTrainReportCallback
    from ray.train.torch import TorchTrainer

    from feature_store.raycluster import ensure_ray

    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    prepared = output_dir / "prepared"
    if not (prepared / "spec" / "feature_spec.json").is_file():
        raise FileNotFoundError(f"{prepared}: no prepared features; run `recforge prepare --config ...` first")
    workers = cfg.ray_workers
    use_gpu = torch.cuda.is_available() and cfg.accelerator != "cpu"
    have = ensure_ray(ray_address).cluster_resources()
    if have.get("CPU", 0) < workers or (use_gpu and have.get("GPU", 0) < workers):
        raise ValueError(f"retrieval.ray_workers={workers} needs {workers} CPUs{' and GPUs' if use_gpu else ''} in "
                         f"the Ray cluster, which has {have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs; "
                         f"lower retrieval.ray_workers or add nodes")
    root = output_dir / "retrieval"
    root.mkdir(parents=True, exist_ok=True)
    monitor = f"valid/recall@{cfg.select_k}"
    loop_config = {"retrieval": cfg.model_dump(mode="json"), "prepared": str(prepared.resolve()),
                   "use_gpu": use_gpu, "precision": _precision(cfg)}

    def run(refit_epochs: int) -> tuple[Any, Any, float]:
        """One Ray Train job: the selection run (best checkpoint by the valid metric) or the refit (last one)."""
        keep = CheckpointConfig(num_to_keep=1) if refit_epochs else CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=monitor, checkpoint_score_order="max")
        trainer = TorchTrainer(
            _worker_loop, train_loop_config={**loop_config, "refit_epochs": refit_epochs},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name=f"{RUN_NAME}_refit" if refit_epochs else RUN_NAME,
                                 storage_path=str((root / "ray").resolve()), checkpoint_config=keep))
        t = time.perf_counter()
        result = trainer.fit()
        best = (result.get_best_checkpoint(monitor, "max") if result.best_checkpoints and not refit_epochs
                else result.checkpoint)
        if best is None:
            raise RuntimeError(f"Ray Train finished without a checkpoint ({result.path}); see its logs")
        return result, best, time.perf_counter() - t

    def load(task: RetrievalTask, checkpoint: Any) -> RetrievalTask:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / RayTrainReportCallback.CHECKPOINT_NAME, map_location="cpu",
                               weights_only=True)
        task.load_state_dict(state["state_dict"], strict=False)
        return task

    result, best, fit_seconds = run(0)
    data = load_retrieval_data(prepared, cfg)
    task = load(RetrievalTask(TwoTower(data.towers, cfg.model), cfg, data), best)
    worker = getattr(result, "return_value", None) or {}  # rank 0's return value: its per-epoch history
    task.history.update(worker.get("history", {}))
    epochs_run = int(worker.get("epochs_run", len(task.history.get(monitor, []))))
    fit = Fitted(task, fit_seconds, epochs_run, trained_samples(data, cfg, epochs_run))
    refit_epochs = best_epoch(task) + 1 if cfg.refit else 0
    if refit_epochs > 0:
        result, last, seconds = run(refit_epochs)
        full = data.with_valid_in_train()
        refitted = load(RetrievalTask(TwoTower(full.towers, cfg.model), cfg, full), last)
        refitted.history = task.history
        fit = Fitted(refitted, fit_seconds + seconds, epochs_run,
                     fit.samples + trained_samples(full, cfg, refit_epochs), refit_epochs=refit_epochs)
    out = finish(fit, data, cfg, root, prepared / "spec")

    uri = tracking_uri or default_tracking_uri(output_dir)
    ensure_experiment(uri, name, output_dir)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.create_run(client.get_experiment_by_name(name).experiment_id, run_name=RUN_NAME,
                            tags={"recforge.mode": "ray_train", "recforge.ray_workers": str(workers)})
    run_id = run.info.run_id
    out.update({"mlflow_run_id": run_id, "tracking_uri": uri, "seconds": time.perf_counter() - t0,
                "distributed": {"mode": "ray_train", "workers": workers, "use_gpu": use_gpu,
                                "ray_result_path": str(result.path)}})
    (root / "metrics.json").write_text(json.dumps(out, indent=2, default=float))
    _log_run(run_id, uri, out, cfg, config_doc, root, prepared)
    client.set_terminated(run_id, "FINISHED")
    return out
