"""The two-tower model's Lightning task: loss, optimizer, exponential moving average and per-epoch validation.

`RetrievalTask` holds the loss (in-batch sampled softmax with logQ correction, optional uniform and hard negatives,
or the exact softmax over the whole corpus, optionally without each row's own history items), the optimizers of
the shared `OptimConfig` (`training.common.optim`; with `ema_decay` it trains an `online` copy and `model` is their
moving average) and the per-epoch full-corpus evaluation on the valid queries (early stopping and the best
checkpoint on valid recall@`select_k`).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from training.common.data import InMemoryBatches
from training.common.features import SPARSE, seq_key
from training.common.optim import configure_optimizers
from training.retrieval.config import RetrievalConfig
from training.retrieval.data import Batch, RetrievalData
from training.retrieval.evaluate import evaluate_two_tower
from training.retrieval.model import TwoTower, mixed_negatives, sampled_softmax_loss

ITEM_CODE = "__item_code"


def history_to_corpus(data: RetrievalData) -> dict[str, torch.Tensor]:
    """Per user sequence, a lookup from its source field's codes to corpus codes (-1: padding, out-of-vocabulary
    or no corpus item; a code shared by several corpus items, e.g. the OOV row, maps to none of them)."""
    layout = data.towers.layout
    sparse = [f.name for f in layout.sparse]
    out: dict[str, torch.Tensor] = {}
    for s in layout.sequences:
        if s.name not in data.towers.user_sequences or s.source not in sparse:
            continue
        col = sparse.index(s.source)
        cardinality = layout.sparse[col].cardinality
        vocab = data.corpus[SPARSE][:, col]
        counts = torch.bincount(vocab, minlength=cardinality)
        lut = torch.full((cardinality,), -1, dtype=torch.long)
        unique = (counts[vocab] == 1) & (vocab > 0)
        lut[vocab[unique]] = torch.arange(len(vocab))[unique]
        out[s.name] = lut
    return out


class ValidRanking(pl.Callback):
    """Runs `RetrievalTask.validate_epoch` at each train epoch end, before the callbacks that read its metric
    (list it first: callbacks run in order, and EarlyStopping / ModelCheckpoint after every other one)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.validate_epoch()  # type: ignore[operator]


class RetrievalTask(pl.LightningModule):
    """Loss, optimizer and valid ranking metrics around a `TwoTower`."""

    def __init__(self, model: TwoTower, cfg: RetrievalConfig, data: RetrievalData) -> None:
        super().__init__()
        # with ema_decay the optimizer trains `online` and `model` holds the moving average of its weights:
        # everything after a step (validation, checkpoints' selection, refit result, export) reads `model`
        self.model = model
        self.online = copy.deepcopy(model) if cfg.ema_decay > 0 else None
        if self.online is not None:
            self.model.requires_grad_(False)
        self._ema_steps = 0
        self.cfg = cfg
        self.data = data
        self.save_hyperparameters({"retrieval": cfg.model_dump(mode="json")})
        self.register_buffer("log_q", torch.from_numpy(data.item_log_q), persistent=False)
        self._gen = torch.Generator().manual_seed(cfg.runtime.seed)
        self.history: dict[str, list[float]] = {"train/loss": [], f"valid/recall@{cfg.select_k}": []}
        # the epoch's loss as a running sum on the loss's device (no GPU wait per step, constant memory: a list of
        # detached losses kept each step's loss storage alive, 9 MB per step here)
        self._loss_sum: torch.Tensor | None = None
        self._loss_steps = 0
        self._corpus: tuple[torch.device, Batch] | None = None
        self._history_luts = history_to_corpus(data) if cfg.negatives.exclude_history else {}

    def _corpus_on(self, device: torch.device) -> Batch:
        """The corpus item features on `device`, copied there once (not at every step)."""
        if self._corpus is None or self._corpus[0] != device:
            self._corpus = (device, {k: v.to(device, non_blocking=True) for k, v in self.data.corpus.items()})
        return self._corpus[1]

    @property
    def trained(self) -> TwoTower:
        """The module the optimizer updates (`online` under ema_decay, else `model`)."""
        return self.online if self.online is not None else self.model

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.online is None:
            return
        self._ema_steps += 1
        decay = min(self.cfg.ema_decay, (1 + self._ema_steps) / (10 + self._ema_steps))
        with torch.no_grad():
            for avg, cur in zip(self.model.parameters(), self.online.parameters(), strict=True):
                avg.lerp_(cur, 1.0 - decay)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        codes = batch[ITEM_CODE]
        loss = self._full_corpus_loss(batch, codes) if self.cfg.negatives.full_corpus else \
            self._sampled_loss(batch, codes)
        # not a progress-bar metric: Lightning reads those back with .item() after every batch (a GPU sync per
        # step); the log reads it every log_every_n_steps, the epoch's progress line shows the epoch's mean
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=len(codes))
        step_loss = loss.detach().float()
        self._loss_sum = step_loss if self._loss_sum is None else self._loss_sum + step_loss
        self._loss_steps += 1
        return loss

    def _full_corpus_loss(self, batch: Batch, codes: torch.Tensor) -> torch.Tensor:
        """Exact softmax of each row's positive against every corpus item."""
        model = self.trained
        items = model.item(self._corpus_on(codes.device))
        logits = model.user(batch) @ items.T / model.temperature
        if self._history_luts:
            logits = logits.masked_fill(self._history_mask(batch, codes, logits.shape[1]), float("-inf"))
        return F.cross_entropy(logits.float(), codes)

    def _history_mask(self, batch: Batch, codes: torch.Tensor, n_items: int) -> torch.Tensor:
        """B x I: True at the corpus items of each row's behaviour sequences, except the row's own positive."""
        mask = torch.zeros((len(codes), n_items), dtype=torch.bool, device=codes.device)
        if next(iter(self._history_luts.values())).device != codes.device:  # moved once, not at every step
            self._history_luts = {k: v.to(codes.device) for k, v in self._history_luts.items()}
        for name, lut in self._history_luts.items():
            hist = lut[batch[seq_key(name)]]  # B x L corpus codes, -1: padding / not in corpus
            rows = torch.arange(len(codes), device=codes.device)[:, None].expand_as(hist)
            known = hist >= 0
            mask[rows[known], hist[known]] = True
        mask[torch.arange(len(codes), device=codes.device), codes] = False
        return mask

    def _sampled_loss(self, batch: Batch, codes: torch.Tensor) -> torch.Tensor:
        """In-batch sampled softmax (logQ-corrected), with the configured uniform / hard extra negatives."""
        neg = self.cfg.negatives
        model = self.trained
        user, item = model(batch)
        log_q = self.log_q[codes] if neg.logq_correction else None
        extra_codes = mixed_negatives(len(self.data.corpus_ids), neg, self._gen)
        extra_items = extra_log_q = None
        if extra_codes is not None:
            extra_codes = extra_codes.to(codes.device)
            corpus = self._corpus_on(codes.device)
            extra_items = model.item({k: v.index_select(0, extra_codes) for k, v in corpus.items()})
            if neg.logq_correction:  # uniform: expected count N/I against B * q for the in-batch items
                n_items = len(self.data.corpus_ids)
                value = math.log(len(extra_codes) / (n_items * len(codes)))
                extra_log_q = torch.full((len(extra_codes),), value, device=codes.device)
        return sampled_softmax_loss(user, item, codes, log_q, model.temperature, extra_items, extra_codes,
                                    extra_log_q, hard=neg.hard)

    def validate_epoch(self) -> None:
        """Full-corpus ranking of the valid queries; logs valid/recall@`select_k` (early stopping, checkpoints)."""
        metrics = evaluate_two_tower(self.model, self.data, self.data.valid, self.cfg.ks, self.device)
        key = f"valid/recall@{self.cfg.select_k}"
        value = metrics.get(f"recall@{self.cfg.select_k}", 0.0)
        self.log(key, value, prog_bar=True)
        for name in ("ndcg@10", "mrr"):
            if name in metrics:
                self.log(f"valid/{name}", metrics[name])
        self.history[key].append(value)
        self.history["train/loss"].append(float(self._loss_sum) / self._loss_steps if self._loss_sum is not None
                                          else float("nan"))
        self._loss_sum, self._loss_steps = None, 0

    def steps_per_epoch(self) -> int:
        return max(len(self.data.train_items) // self.cfg.batch_size, 1)

    def configure_optimizers(self) -> Any:
        per_epoch = self.steps_per_epoch()
        return configure_optimizers(self.trained, self.cfg.optim, steps_per_epoch=per_epoch,
                                    total_steps=per_epoch * self.cfg.max_epochs)

    def train_dataloader(self) -> InMemoryBatches:
        """The train positives in batches of a seeded per-epoch permutation; under DDP each rank takes its share
        of every epoch's permutation (the trainer's rank and world size), pinned for non-blocking copies on CUDA."""
        trainer = self.trainer
        train = dict(self.data.train)
        train[ITEM_CODE] = torch.from_numpy(self.data.train_items)
        return InMemoryBatches(train, self.cfg.batch_size, shuffle=True, seed=self.cfg.runtime.seed, drop_last=True,
                               pin_memory=torch.cuda.is_available(), epoch_fn=lambda: int(trainer.current_epoch),
                               rank=int(trainer.global_rank), world_size=int(trainer.world_size))
