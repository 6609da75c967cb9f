"""Ray Train plumbing both stages share: the resource check, one `TorchTrainer` job, and reading its checkpoint.

A stage's worker loop is its own Lightning job built with `build_trainer(..., ray_worker=True)`; the driver runs it
here, keeps the best (or last) checkpoint Ray Train reports, and loads the weights back for the stage's tail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from training.common.config import RuntimeConfig


def require_workers(runtime: RuntimeConfig, ray_address: str | None, key: str) -> None:
    """Fail before Ray Train would wait forever for CPUs (or GPUs) the cluster does not have."""
    from feature_store.raycluster import ensure_ray

    workers, use_gpu = runtime.ray_workers, runtime.use_cuda
    have = ensure_ray(ray_address).cluster_resources()
    need = {"CPU": float(workers), **({"GPU": float(workers)} if use_gpu else {})}
    short = {k: f"{have.get(k, 0):g}" for k, v in need.items() if have.get(k, 0) < v}
    if short:
        raise ValueError(f"{key}.runtime.ray_workers={workers} needs {workers} CPU{'s and GPUs' if use_gpu else 's'} "
                         f"in the Ray cluster, which has {short}; lower {key}.runtime.ray_workers, add nodes, or set "
                         f"{key}.runtime.accelerator: cpu")


def fit_on_ray(loop: Callable[[dict[str, Any]], Any], loop_config: dict[str, Any], runtime: RuntimeConfig, *,
               storage: Path, run_name: str, monitor: str | None = None, mode: str = "max") -> tuple[Any, Any, float]:
    """One Ray Train job over `runtime.ray_workers` workers. Returns (Ray's result, the checkpoint to use: the best by
    `monitor` when given, else the last, and the seconds it took). Ray restores a run folder of the same name, so a
    job that should start fresh removes it first."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    keep = (CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=monitor, checkpoint_score_order=mode)
            if monitor else CheckpointConfig(num_to_keep=1))
    trainer = TorchTrainer(
        loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=runtime.ray_workers, use_gpu=runtime.use_cuda,
                                     resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=run_name, storage_path=str(storage), checkpoint_config=keep))
    t0 = time.perf_counter()
    result = trainer.fit()
    checkpoint = result.checkpoint
    if monitor and result.best_checkpoints:
        checkpoint = result.get_best_checkpoint(monitor, mode) or checkpoint
    if checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint (run folder {result.path}); the workers' logs "
                           f"are in the Ray session folder")
    return result, checkpoint, time.perf_counter() - t0


def report_callback() -> Any:
    """Ray's `RayTrainReportCallback` (a checkpoint and the epoch's metrics reported to Ray Train each epoch) that
    also removes its temporary folder when the fit ends: Ray's own removes each epoch's checkpoint folder but leaves
    the empty `lightning_checkpoints-job_id=...-world_rank=N` folder in the temp directory, one per worker and job."""
    import shutil

    from ray.train.lightning import RayTrainReportCallback

    class ReportAndClean(RayTrainReportCallback):
        def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
            super().teardown(trainer, pl_module, stage)
            shutil.rmtree(self.tmpdir_prefix, ignore_errors=True)

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            super().on_exception(trainer, pl_module, exception)
            shutil.rmtree(self.tmpdir_prefix, ignore_errors=True)

    return ReportAndClean()


def worker_nodes() -> list[str]:
    """Inside a Ray Train worker after training: the Ray node id of every rank, in rank order (an all-gather over
    the job's process group), so the driver can record where the job ran (`distributed.nodes`)."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return [node]
    nodes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return [str(n) for n in nodes]


def node_spread(nodes: list[str]) -> dict[str, int]:
    """Ranks per Ray node, for the report: {node id: ranks}."""
    out: dict[str, int] = {}
    for n in nodes:
        out[n] = out.get(n, 0) + 1
    return out


def checkpoint_file(checkpoint: Any, dst: Path | None = None) -> dict[str, Any]:
    """The Lightning checkpoint inside a Ray Train checkpoint (copied to `dst` when given)."""
    import shutil

    from ray.train.lightning import RayTrainReportCallback

    with checkpoint.as_directory() as d:
        src = Path(d) / RayTrainReportCallback.CHECKPOINT_NAME
        if dst is not None:
            shutil.copyfile(src, dst)
        return torch.load(src, map_location="cpu", weights_only=True)


def reported_metrics(result: Any, checkpoint: Any) -> dict[str, Any]:
    """The metrics the workers reported together with `checkpoint`."""
    kept = [m for c, m in result.best_checkpoints or [] if checkpoint is not None and c.path == checkpoint.path]
    return kept[0] if kept else result.metrics or {}
