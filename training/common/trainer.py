"""The one place a Lightning `Trainer` is built, and what precision a job trains in.

Both stages train in three settings: in this process (with checkpoints and an MLflow logger), inside a Ray Train
worker (Ray's DDP strategy and environment, no logger: the driver logs), and as a plain evaluator or refit. The
settings differ in a few arguments; everything else (no sanity validation, no model summary, no Lightning progress
bar: the epochs report through `feature_store.progress` like every other long step) is decided once here.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from feature_store import progress
from training.common.config import RuntimeConfig


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16); elsewhere bf16 is emulated and
    slower than fp32. Measured on such a CPU (`python -m scripts.bench.train`, docs/benchmarks.md): bf16 autocast
    trains DCNv2 2.0x, DLRM 1.3x and DeepFM 1.3x faster than fp32 at the same test AUC."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return (" avx512_bf16" in flags or " amx_bf16" in flags) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def lightning_precision(precision: str, accelerator: str, *, cpu_bf16: bool = True) -> str:
    """A `precision` config value for Lightning: auto = bf16 autocast on CUDA and (with `cpu_bf16`) on CPUs with
    native bf16, else fp32; "32" = "32-true"."""
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    on_cuda = torch.cuda.is_available() and accelerator != "cpu"
    return "bf16-mixed" if on_cuda or (cpu_bf16 and cpu_has_native_bf16()) else "32-true"


class EpochProgress(pl.Callback):
    """Each training epoch as one `feature_store.progress` step: a bar over its batches on a terminal, a start and
    an end line with the epoch's progress-bar metrics (train loss, valid AUC or recall) in a log. Replaces
    Lightning's own bar, which writes a carriage-return update per batch into a log file."""

    def __init__(self) -> None:
        self._step: progress.Step | None = None
        self._loss_sum: Any = None  # a tensor on the loss's device: no host sync per step
        self._loss_steps = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.num_training_batches
        last = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        name = f"epoch {trainer.current_epoch + 1}" + (f"/{last}" if last else "")
        self._step = progress.Step(name, int(total) if math.isfinite(total) and total > 0 else None, "batches")
        self._loss_sum, self._loss_steps = None, 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._step is not None:
            self._step.advance(1)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_steps += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._step is None:
            return
        shown = {k: float(v) for k, v in trainer.progress_bar_metrics.items() if k != "v_num"}
        if self._loss_sum is not None:  # the epoch's mean loss, not the last step's
            shown["train/loss"] = float(self._loss_sum) / self._loss_steps
        self._step.figures.update(shown)
        self._step.close()
        self._step = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._step is not None:
            self._step.close()
            self._step = None


class ValidateAtMaxSteps(pl.Callback):
    """Validates when `max_steps` ends training inside an epoch. Lightning validates at an epoch's end, and a step
    limit reached mid-epoch ends the epoch loop without one: the job then had no validation metric, so early
    stopping failed on the missing metric and no best checkpoint was chosen. Asking the trainer to stop at the
    limit makes Lightning run the validation loop first (as it does for an early stop)."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


def build_trainer(runtime: RuntimeConfig, *, precision: str, max_epochs: int, max_steps: int = -1,
                  callbacks: list[pl.Callback] | None = None, logger: Any = False, grad_clip: float | None = None,
                  checkpointing: bool = False, root_dir: Path | None = None, ray_worker: bool = False,
                  validate_in_loop: bool = True, progress_display: bool = True) -> pl.Trainer:
    """A Trainer for `runtime`.

    `ray_worker`: inside a Ray Train worker (Ray's DDP strategy and cluster environment on the worker's own device;
    progress stays off, the driver reports). `progress_display=False` leaves out the epochs' progress display (the
    throughput benchmark times bare steps). `validate_in_loop=False` skips Lightning's validation loop (the
    retrieval task validates by full-corpus ranking in a callback instead).
    """
    common: dict[str, Any] = {
        "precision": precision, "max_epochs": max_epochs, "max_steps": max_steps, "callbacks": callbacks or [],
        "logger": logger, "gradient_clip_val": grad_clip, "enable_checkpointing": checkpointing,
        "num_sanity_val_steps": 0, "enable_model_summary": False, "deterministic": False,
    }
    if not validate_in_loop:
        common["limit_val_batches"] = 0
    elif max_steps > 0:
        common["callbacks"] = [*common["callbacks"], ValidateAtMaxSteps()]
    if ray_worker:
        from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

        trainer = pl.Trainer(accelerator="gpu" if runtime.use_cuda else "cpu", devices="auto",
                             strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()],
                             enable_progress_bar=False, **common)
        return prepare_trainer(trainer)
    if progress_display:
        common["callbacks"] = [*common["callbacks"], EpochProgress()]
    return pl.Trainer(accelerator="gpu" if runtime.accelerator == "cuda" else runtime.accelerator,
                      devices=runtime.devices, strategy=runtime.strategy, enable_progress_bar=False,
                      default_root_dir=str(root_dir) if root_dir is not None else None, **common)


def evaluator(runtime: RuntimeConfig, precision: str) -> pl.Trainer:
    """A one-device Trainer that only validates / tests (the driver's pass over a distributed job's best weights)."""
    on_gpu = runtime.use_cuda
    return pl.Trainer(accelerator="gpu" if on_gpu else "cpu", devices=1, precision=precision if on_gpu else "32-true",
                      logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)


def compile_enabled(mode: str, runtime: RuntimeConfig) -> bool:
    """`train.compile` / `retrieval.compile`: off, on, or auto = on where the job runs on CUDA."""
    return mode == "on" or (mode == "auto" and runtime.use_cuda)


def compile_in_place(modules: list[torch.nn.Module], mode: str, runtime: RuntimeConfig) -> bool:
    """`torch.compile` each module in place (`nn.Module.compile`) when `mode` says so; returns whether it did.

    In place, not `torch.compile(model)`: the wrapper that returns prefixes every state_dict key with `_orig_mod.`,
    so its checkpoints and bundles would not load into a plain model; compiled in place, the module, its keys and
    its bundle stay exactly what an uncompiled job writes (tests/training/test_train.py). auto compiles on CUDA
    only: measured on an H100 (docs/benchmarks.md, GPU), DCNv2 at batch 65,536 trains 1.86x faster compiled
    (7.38M vs 3.97M samples/s), while on a 2-core CPU the first steps spend tens of seconds compiling, more than a
    short job gains."""
    if not compile_enabled(mode, runtime):
        return False
    for module in modules:
        module.compile()
    return True


def fresh_checkpoints(directory: Path) -> None:
    """Remove the checkpoints a previous job left in a stage's folder before a job that does not resume. Left in
    place, Lightning names the new job's files `best-v1.ckpt` and `last-v1.ckpt` beside them, and `train.resume`
    after this job is killed would continue from the previous job's `last.ckpt` (seen: four `last-vN.ckpt` in one
    folder). The previous job's model is in its bundle and MLflow run, not in these files."""
    for old in directory.glob("*.ckpt"):
        old.unlink(missing_ok=True)


def seed_and_threads(runtime: RuntimeConfig) -> None:
    """Seed every generator Lightning knows and set torch's thread count, as each process of a job starts."""
    if runtime.num_threads:
        torch.set_num_threads(runtime.num_threads)
    pl.seed_everything(runtime.seed, workers=True, verbose=False)
