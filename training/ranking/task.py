"""The Lightning task around an injected CTR model: loss, optimizers, schedules and evaluation metrics.

`CTRTask(model=DCNv2(...), optim=OptimConfig(...))`: BCE-with-logits loss (+ optional L2 on the looked-up
embedding rows), dense parameters with Adam/AdamW, embeddings with their own optimizer and learning rate
(`CombinedOptimizer` steps both so Lightning's automatic optimization, clipping and schedules apply), warmup and
decay, and AUC / logloss / gAUC / calibration on valid and test, logged as `f"{stage}/{metric}"`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from training.common.config import OptimConfig
from training.common.features import GROUP, LABEL
from training.common.metrics import ctr_metrics
from training.common.optim import configure_optimizers


class CTRTask(pl.LightningModule):
    """Loss, optimizers and metrics around `model` (an nn.Module mapping a batch dict to logits)."""

    def __init__(self, model: nn.Module, optim: OptimConfig | None = None, *, total_steps: int | None = None,
                 steps_per_epoch: int | None = None, gauc: bool = True) -> None:
        super().__init__()
        self.model = model
        self.gauc = gauc  # group AUC over the batches' GROUP column (features.user_key), when it names users
        self.optim = optim or OptimConfig()
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        # plain values only: checkpoints load with torch.load(weights_only=True) on resume
        self.save_hyperparameters({"optim": self.optim.model_dump(mode="json"), "total_steps": total_steps,
                                   "steps_per_epoch": steps_per_epoch})
        self.loss_fn = nn.BCEWithLogitsLoss()
        # per stage, per column: the batches' probabilities, labels and groups, joined at the epoch's end one column
        # at a time (joining tuples held every column twice at once); labels stay as given, so a label other than
        # 0/1 still reaches ctr_metrics' check instead of being truncated by a narrower dtype
        self._outputs: dict[str, dict[str, list[Tensor]]] = {"valid": {}, "test": {}}
        self.history: dict[str, list[float]] = {"train/loss": [], "valid/loss": []}
        # the epoch's loss as a running sum on the loss's device: a float() per step would wait for the GPU at every
        # step, and a list of detached losses kept each step's loss storage alive (measured: 9 MB per step of the
        # full-corpus retrieval loss, until the machine ran out of memory)
        self._loss_sum: Tensor | None = None
        self._loss_steps = 0
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
        # not a progress-bar metric: Lightning reads those back with .item() after every batch (a GPU sync per
        # step); the log reads it every log_every_n_steps, the epoch's progress line shows the epoch's mean
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=len(logits))
        step_loss = loss.detach().float()
        self._loss_sum = step_loss if self._loss_sum is None else self._loss_sum + step_loss
        self._loss_steps += 1
        return loss

    def _embedding_penalty(self, batch: dict[str, Tensor]) -> Tensor:
        out = self.model.embedding(batch)
        return out.pooled.float().pow(2).sum(-1).mean()

    def _eval_step(self, batch: dict[str, Tensor], stage: str) -> None:
        logits = self.model(batch).float()
        out = self._outputs[stage]
        out.setdefault("probs", []).append(torch.sigmoid(logits).detach().cpu())
        out.setdefault("labels", []).append(batch[LABEL].detach().cpu())
        if self.gauc and GROUP in batch:
            out.setdefault("groups", []).append(batch[GROUP].detach().cpu())

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "valid")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        if self._loss_sum is not None:
            self.history["train/loss"].append(float(self._loss_sum) / self._loss_steps)
        self._loss_sum, self._loss_steps = None, 0

    def _eval_epoch_end(self, stage: str) -> None:
        outs = self._outputs[stage]
        self._outputs[stage] = {}
        if not outs.get("probs"):
            return
        joined = {name: torch.cat(outs.pop(name)).numpy() for name in list(outs)}  # pop: each list freed as joined
        probs, labels, groups = joined["probs"], joined["labels"], joined.get("groups")
        # every rank evaluates the whole split (see CTRDataModule), so the metrics agree without a gather
        metrics = ctr_metrics(labels, probs, groups)
        self.last_metrics[stage] = metrics
        if stage == "test":  # the figures' input; validation's predictions are not kept past its metrics
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

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self.model, self.optim, steps_per_epoch=self.steps_per_epoch,
                                    total_steps=self.total_steps)
