"""The Lightning task around an injected CTR model: loss, optimizers, schedules and evaluation metrics.

`CTRTask(model=DCNv2(...), optim=OptimConfig(...))`: BCE-with-logits loss (+ optional L2 on the looked-up
embedding rows), dense parameters with Adam/AdamW, embeddings with their own optimizer and learning rate
(`CombinedOptimizer` steps both so Lightning's automatic optimization, clipping and schedules apply), warmup and
decay, and AUC / logloss / gAUC / calibration on valid and test, logged as `f"{stage}/{metric}"`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from training.common.features import GROUP, LABEL
from training.common.metrics import ctr_metrics
from training.ranking.config import OptimConfig


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


def _embedding_params(model: nn.Module) -> list[nn.Parameter]:
    emb = getattr(model, "embedding", None)
    params = list(emb.parameters()) if emb is not None else []
    for name, module in model.named_modules():  # models may own further embedding layers (e.g. linear parts)
        if name and name != "embedding" and not name.startswith("embedding.") and hasattr(module, "table_weight"):
            params.extend(module.parameters())
    seen: set[int] = set()
    return [p for p in params if not (id(p) in seen or seen.add(id(p)))]  # type: ignore[func-returns-value]


class CTRTask(pl.LightningModule):
    """Loss, optimizers and metrics around `model` (an nn.Module mapping a batch dict to logits)."""

    def __init__(self, model: nn.Module, optim: OptimConfig | None = None, *, total_steps: int | None = None,
                 steps_per_epoch: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.optim = optim or OptimConfig()
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        # plain values only: checkpoints load with torch.load(weights_only=True) on resume
        self.save_hyperparameters({"optim": self.optim.model_dump(mode="json"), "total_steps": total_steps,
                                   "steps_per_epoch": steps_per_epoch})
        self.loss_fn = nn.BCEWithLogitsLoss()
        self._outputs: dict[str, list[tuple[Tensor, Tensor, Tensor | None]]] = {"valid": [], "test": []}
        self.history: dict[str, list[float]] = {"train/loss": [], "valid/loss": []}
        self._epoch_losses: list[float] = []
        self.last_metrics: dict[str, dict[str, float]] = {}
        self.last_predictions: dict[str, dict[str, np.ndarray]] = {}

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(batch)

    # ------------------------------------------------------------------------------------------- steps

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.model(batch)
        loss = self.loss_fn(logits.float(), batch[LABEL])
        if self.optim.embedding_l2 > 0:
            loss = loss + self.optim.embedding_l2 * self._embedding_penalty(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(logits))
        self._epoch_losses.append(float(loss.detach()))
        return loss

    def _embedding_penalty(self, batch: dict[str, Tensor]) -> Tensor:
        out = self.model.embedding(batch)
        return out.pooled.float().pow(2).sum(-1).mean()

    def _eval_step(self, batch: dict[str, Tensor], stage: str) -> None:
        logits = self.model(batch).float()
        self._outputs[stage].append((torch.sigmoid(logits).detach().cpu(), batch[LABEL].detach().cpu(),
                                     batch[GROUP].detach().cpu() if GROUP in batch else None))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "valid")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        if self._epoch_losses:
            self.history["train/loss"].append(float(np.mean(self._epoch_losses)))
        self._epoch_losses = []

    def _eval_epoch_end(self, stage: str) -> None:
        outs = self._outputs[stage]
        self._outputs[stage] = []
        if not outs:
            return
        probs = torch.cat([o[0] for o in outs]).numpy()
        labels = torch.cat([o[1] for o in outs]).numpy()
        groups = torch.cat([o[2] for o in outs]).numpy() if outs[0][2] is not None else None
        # every rank evaluates the whole split (see CTRDataModule), so the metrics agree without a gather
        metrics = ctr_metrics(labels, probs, groups)
        self.last_metrics[stage] = metrics
        self.last_predictions[stage] = {"probs": probs, "labels": labels}
        if stage == "valid":
            self.history["valid/loss"].append(metrics["logloss"])
        for k, v in metrics.items():
            if isinstance(v, float | int) and not (isinstance(v, float) and math.isnan(v)):
                self.log(f"{stage}/{k}", float(v), prog_bar=k == "auc", sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("valid")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return torch.sigmoid(self.model(batch).float())

    # -------------------------------------------------------------------------------------- optimizers

    def configure_optimizers(self) -> Any:
        o = self.optim
        emb = _embedding_params(self.model)
        emb_ids = {id(p) for p in emb}
        dense = [p for p in self.model.parameters() if id(p) not in emb_ids]
        opts: list[torch.optim.Optimizer] = []
        if dense:
            cls = torch.optim.AdamW if o.dense == "adamw" else torch.optim.Adam
            # fused: one kernel per step instead of several passes over memory per tensor (bench_train.py)
            opts.append(cls(dense, lr=o.dense_lr, weight_decay=o.weight_decay, fused=True))
        if emb:
            opts.append(_embedding_optimizer(emb, o))
        optimizer = opts[0] if len(opts) == 1 else CombinedOptimizer(opts)
        if o.warmup_steps == 0 and o.decay == "none":
            return optimizer
        per_epoch = max(self.steps_per_epoch or 1, 1)
        total = max(self.total_steps or per_epoch, 1)
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
