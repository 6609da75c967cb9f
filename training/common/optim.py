"""Optimisers of both training stages from one `OptimConfig`: dense and embedding parameters apart, one schedule.

Embedding rows get sparse, bursty gradients and train best with their own optimizer and learning rate (measured on
the CTR benchmarks, docs/benchmarks.md); dense layers take Adam or AdamW, fused (one kernel per step instead of
several passes over memory per tensor; `python -m scripts.bench.train`). `configure_optimizers` is what both
Lightning tasks return.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from training.common.config import OptimConfig


class CombinedOptimizer(torch.optim.Optimizer):
    """Steps several optimizers as one; `param_groups` is the union, so schedulers and clipping see all."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        self.defaults: dict[str, Any] = {}
        self.state: Any = {}

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for o in self.optimizers:
            o.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for o, s in zip(self.optimizers, state_dict["optimizers"], strict=True):
            o.load_state_dict(s)

    def __repr__(self) -> str:
        return f"CombinedOptimizer({', '.join(type(o).__name__ for o in self.optimizers)})"


def embedding_params(model: nn.Module) -> list[nn.Parameter]:
    emb = getattr(model, "embedding", None)
    params = list(emb.parameters()) if emb is not None else []
    for name, module in model.named_modules():  # models may own further embedding layers (e.g. linear parts)
        if name and name != "embedding" and not name.startswith("embedding.") and hasattr(module, "table_weight"):
            params.extend(module.parameters())
    seen: set[int] = set()
    return [p for p in params if not (id(p) in seen or seen.add(id(p)))]  # type: ignore[func-returns-value]


def configure_optimizers(model: nn.Module, o: OptimConfig, *, steps_per_epoch: int | None = None,
                         total_steps: int | None = None) -> Any:
    """What a LightningModule's `configure_optimizers` returns for `model`: dense parameters with Adam/AdamW,
    embedding tables with their own optimizer (one `CombinedOptimizer` when both exist, so Lightning's automatic
    optimization, clipping and schedules apply to all), and the warmup/decay schedule stepped per step."""
    emb = embedding_params(model)
    emb_ids = {id(p) for p in emb}
    dense = [p for p in model.parameters() if id(p) not in emb_ids]
    opts: list[torch.optim.Optimizer] = []
    if dense:
        cls = torch.optim.AdamW if o.dense == "adamw" else torch.optim.Adam
        # fused: one kernel per step instead of several passes over memory per tensor (scripts.bench.train)
        opts.append(cls(dense, lr=o.dense_lr, weight_decay=o.weight_decay, fused=True))
    if emb:
        opts.append(_embedding_optimizer(emb, o))
    optimizer = opts[0] if len(opts) == 1 else CombinedOptimizer(opts)
    if o.warmup_steps == 0 and o.decay == "none":
        return optimizer
    per_epoch = max(steps_per_epoch or 1, 1)
    total = max(total_steps or per_epoch, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(o, per_epoch, total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def lr_factor(o: OptimConfig, per_epoch: int, total: int) -> Callable[[int], float]:
    """Learning-rate multiplier per step: linear warmup, then cosine or exponential (per epoch) decay."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
        if o.decay == "cosine":
            progress = min(max(step - o.warmup_steps, 0) / max(total - o.warmup_steps, 1), 1.0)
            return warm * 0.5 * (1 + math.cos(math.pi * progress))
        if o.decay == "exponential":
            return warm * o.decay_rate ** (step / per_epoch)
        return warm

    return factor


def _embedding_optimizer(params: Iterable[nn.Parameter], o: OptimConfig) -> torch.optim.Optimizer:
    params = list(params)
    if o.embedding == "adagrad":
        return torch.optim.Adagrad(params, lr=o.embedding_lr)
    return torch.optim.Adam(params, lr=o.embedding_lr, fused=True)
