"""RecForge's side of the CTR benchmarks: the model sizes, `CTRTask` driven one step at a time, the precision
`recforge train ctr` trains in, and scoring."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from training.common.config import OptimConfig, RuntimeConfig
from training.common.features import FeatureLayout
from training.common.trainer import cpu_has_native_bf16, lightning_precision
from training.ranking.config import TrainConfig
from training.ranking.models import build_model
from training.ranking.task import CTRTask

Batch = dict[str, Tensor]
EMB_DIM = 16
PARAMS: dict[str, dict[str, Any]] = {  # DCNv2, DLRM and DeepFM at the sizes every CTR throughput figure uses
    "dcnv2": {"embedding_dim": EMB_DIM, "cross_layers": 3, "mlp": [256, 128], "structure": "parallel"},
    "dlrm": {"embedding_dim": EMB_DIM, "bottom_mlp": [64], "top_mlp": [256, 128]},
    "deepfm": {"embedding_dim": EMB_DIM, "mlp": [256, 128]},
}

__all__ = ["EMB_DIM", "PARAMS", "TaskSteps", "build_ours", "cpu_has_native_bf16", "cycle", "job_precision",
           "predict", "runtime"]


def runtime(**settings: Any) -> RuntimeConfig:
    """`train.runtime` of a `TrainConfig` built from `{"runtime": settings}` (defaults for the rest)."""
    return TrainConfig.model_validate({"runtime": settings}).runtime


def job_precision(accelerator: str = "auto") -> str:
    """The Lightning precision `recforge train ctr` trains in by default with `train.runtime.accelerator`."""
    r = runtime(accelerator=accelerator)
    return lightning_precision(r.precision, r.accelerator)


def build_ours(name: str, layout: FeatureLayout, backend: str = "fused", device: torch.device | None = None
               ) -> nn.Module:
    """`build_model(name)` at `PARAMS[name]` with the embedding `backend`, seeded, initialised on `device`."""
    torch.manual_seed(0)
    with torch.device(device) if device is not None else contextlib.nullcontext():  # no host init + copy
        return build_model(name, layout, {**PARAMS[name], "embedding_backend": backend})


def cycle(batches: Iterable[Batch]) -> Iterator[Batch]:
    while True:
        yield from batches


def autocast(device_type: str, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast (what Lightning's "bf16-mixed" enters around the training step), or nothing."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)


class TaskSteps:
    """`CTRTask` driven one batch per call as Lightning's automatic optimization drives it: `training_step` (forward,
    BCE-with-logits on fp32 logits) under bf16 autocast when `bf16`, `zero_grad`, backward and a step of the
    optimizers `configure_optimizers()` returns for the default `OptimConfig`; no gradient clipping, no logger."""

    def __init__(self, model: nn.Module, feed: Callable[[], Batch], *, bf16: bool, device_type: str = "cpu") -> None:
        self.task = CTRTask(model, OptimConfig())
        opt = self.task.configure_optimizers()
        if not isinstance(opt, torch.optim.Optimizer):
            raise SystemExit("CTRTask.configure_optimizers() returned a schedule for the default OptimConfig; time "
                             "the optimizer without it or update scripts/bench/ctr.py")
        self.optimizer, self.feed, self.bf16, self.device_type, self.index = opt, feed, bf16, device_type, 0
        # without a Trainer the task's `self.log` calls do nothing but warn
        warnings.filterwarnings("ignore", message=r"You are trying to `self\.log\(\)`")
        self.task.train()

    def __call__(self) -> Tensor:
        batch = self.feed()
        with autocast(self.device_type, self.bf16):
            loss = self.task.training_step(batch, self.index)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.index += 1
        return loss.detach()


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[Batch], bf16: bool, device: torch.device | None = None) -> Tensor:
    """Probabilities over every batch (moved to `device`), eval mode, under bf16 autocast when `bf16`; fp32 on the
    host on return."""
    model.eval()
    dev = device or torch.device("cpu")
    with autocast(dev.type, bf16):
        return torch.cat([torch.sigmoid(model({k: v.to(dev) for k, v in b.items()}).float()).cpu() for b in batches])
