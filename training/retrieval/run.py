"""`recforge train retrieval`: train the two-tower model with Lightning, evaluate against baselines, export.

`RetrievalTask` holds the loss (in-batch sampled softmax with logQ correction, optional uniform and hard negatives,
or the exact softmax over the whole corpus, optionally without each row's own history items), the optimizer (with
`lr_decay` per epoch; with `ema_decay` it trains an `online` copy and `model` is their moving average) and the
per-epoch full-corpus evaluation on the valid queries (early stopping and the best checkpoint on valid
recall@`select_k`). `train_retrieval` runs it on `<output_dir>/prepared`, then (`refit`, the default) trains a
fresh model on train + valid positives for the selected number of epochs, as the baselines fit on train + valid
too; it scores the final model and the baselines (most-popular, item-KNN, implicit ALS/BPR) on the SAME test
queries, writes the retrieval bundle (training/retrieval/bundle.py: towers, spec, embeddings that `recforge index
build` reads) and logs it all to MLflow.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from feature_store.spec import FeatureSpec
from training.common.data import InMemoryBatches
from training.common.features import SPARSE, seq_key
from training.common.tracking import LINEAGE_DATA, LINEAGE_SPEC, default_tracking_uri, ensure_experiment, hash_prepared
from training.ranking.run import lightning_precision
from training.retrieval.bundle import save_retrieval_bundle
from training.retrieval.config import RetrievalConfig
from training.retrieval.data import Batch, QuerySet, RetrievalData, load_retrieval_data
from training.retrieval.evaluate import evaluate_scores, run_baselines
from training.retrieval.model import TwoTower, embed, mixed_negatives, sampled_softmax_loss, weighted_cross_entropy

log = logging.getLogger("recforge.retrieval")

ITEM_CODE = "__item_code"
WEIGHT = "__weight"  # per-row loss weight (retrieval.user_balance)


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


def evaluate_two_tower(model: TwoTower, data: RetrievalData, queries: QuerySet, ks: list[int],
                       device: torch.device | None = None) -> dict[str, float]:
    """Full-corpus ranking of the queries' users with the model's vectors; seen items excluded."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    items = embed(model.item, data.corpus, device)
    users = torch.zeros((data.n_users, items.shape[1]))
    users[torch.from_numpy(queries.users)] = embed(model.user, queries.batch, device)
    model.train(was_training)

    def scores(codes: np.ndarray) -> torch.Tensor:
        return users[torch.from_numpy(codes)] @ items.T

    return evaluate_scores(scores, queries.seen, queries.truth, ks=ks)


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
        self._gen = torch.Generator().manual_seed(cfg.seed)
        self.history: dict[str, list[float]] = {"train/loss": [], f"valid/recall@{cfg.select_k}": []}
        self._losses: list[float] = []
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
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(codes))
        self._losses.append(float(loss.detach()))
        return loss

    def _full_corpus_loss(self, batch: Batch, codes: torch.Tensor) -> torch.Tensor:
        """Exact softmax of each row's positive against every corpus item."""
        model = self.trained
        items = model.item(self._corpus_on(codes.device))
        logits = model.user(batch) @ items.T / model.temperature
        if self._history_luts:
            logits = logits.masked_fill(self._history_mask(batch, codes, logits.shape[1]), float("-inf"))
        return weighted_cross_entropy(logits, codes, batch.get(WEIGHT))

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
                                    extra_log_q, hard=neg.hard, weight=batch.get(WEIGHT))

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
        self.history["train/loss"].append(float(np.mean(self._losses)) if self._losses else float("nan"))
        self._losses = []

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.trained.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        if self.cfg.lr_decay == 1.0:
            return optimizer
        decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.cfg.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "epoch"}}

    def train_dataloader(self) -> InMemoryBatches:
        """The train positives in batches of a seeded per-epoch permutation; under DDP each rank takes its share
        of every epoch's permutation (the trainer's rank and world size), pinned for non-blocking copies on CUDA."""
        trainer = self.trainer
        train = dict(self.data.train)
        train[ITEM_CODE] = torch.from_numpy(self.data.train_items)
        if self.cfg.user_balance > 0:
            train[WEIGHT] = torch.from_numpy(self.data.example_weights(self.cfg.user_balance))
        return InMemoryBatches(train, self.cfg.batch_size, shuffle=True, seed=self.cfg.seed, drop_last=True,
                               pin_memory=torch.cuda.is_available(), epoch_fn=lambda: int(trainer.current_epoch),
                               rank=int(trainer.global_rank), world_size=int(trainer.world_size))


def _precision(cfg: RetrievalConfig) -> str:
    """auto = bf16 autocast on CUDA, fp32 on CPU (CPU bf16 is measured for the CTR models only)."""
    return lightning_precision(cfg.precision, cfg.accelerator, cpu_bf16=False)


def _trainer(cfg: RetrievalConfig, max_epochs: int, callbacks: list[pl.Callback], logger: Any) -> pl.Trainer:
    """The single-process Trainer of the selection run (callbacks, MLflow logger) and of the refit (neither)."""
    return pl.Trainer(
        accelerator="gpu" if cfg.accelerator == "cuda" else cfg.accelerator, devices=cfg.devices,
        strategy=cfg.strategy, precision=_precision(cfg),  # type: ignore[arg-type]
        max_epochs=max_epochs, callbacks=callbacks, logger=logger, enable_checkpointing=bool(callbacks),
        enable_progress_bar=os.environ.get("RECFORGE_PROGRESS", "1") != "0", num_sanity_val_steps=0,
        limit_val_batches=0, enable_model_summary=False, deterministic=False,
    )


def train_retrieval(output_dir: str | Path, name: str, cfg: RetrievalConfig, *,
                    config_doc: Mapping[str, Any] | None = None, tracking_uri: str | None = None,
                    ray_address: str | None = None) -> dict[str, Any]:
    """Train the two-tower model on `<output_dir>/prepared`; returns test metrics (model and baselines), paths.

    With `cfg.ray_workers > 0` the training runs through Ray Train (`training.retrieval.ray_train`)."""
    if cfg.ray_workers > 0:
        from training.retrieval.ray_train import train_retrieval_ray

        return train_retrieval_ray(output_dir, name, cfg, config_doc=config_doc, tracking_uri=tracking_uri,
                                   ray_address=ray_address)
    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    prepared = output_dir / "prepared"
    if not (prepared / "spec" / "feature_spec.json").is_file():
        raise FileNotFoundError(f"{prepared}: no prepared features; run `recforge prepare --config ...` first")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    root = output_dir / "retrieval"
    root.mkdir(parents=True, exist_ok=True)
    data = load_retrieval_data(prepared, cfg)
    model = TwoTower(data.towers, cfg.model)
    task = RetrievalTask(model, cfg, data)

    uri = tracking_uri or default_tracking_uri(output_dir)
    ensure_experiment(uri, name, output_dir)
    from pytorch_lightning.loggers import MLFlowLogger

    logger = MLFlowLogger(experiment_name=name, tracking_uri=uri, run_name="two_tower", log_model=False)
    monitor = f"valid/recall@{cfg.select_k}"
    ckpt = ModelCheckpoint(dirpath=root / "checkpoints", filename="best", monitor=monitor, mode="max",
                           save_top_k=1, save_on_train_epoch_end=True)
    early = EarlyStopping(monitor=monitor, mode="max", patience=cfg.patience, check_on_train_epoch_end=True)
    trainer = _trainer(cfg, cfg.max_epochs, [ValidRanking(), ckpt, early], logger)
    t_fit = time.perf_counter()
    trainer.fit(task)
    fit_seconds = time.perf_counter() - t_fit
    if ckpt.best_model_path:
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        task.load_state_dict(state, strict=False)
    fit = Fitted(task, fit_seconds, trainer.current_epoch, trained_samples(data, cfg, trainer.current_epoch))
    if cfg.refit:
        fit = refit(fit, data, cfg)
    result = finish(fit, data, cfg, root, prepared / "spec")
    result.update({"mlflow_run_id": logger.run_id, "tracking_uri": uri, "seconds": time.perf_counter() - t0})
    (root / "metrics.json").write_text(json.dumps(result, indent=2, default=float))
    _log_run(logger.run_id, uri, result, cfg, config_doc, root, prepared)
    return result


@dataclass
class Fitted:
    """A trained task (final weights loaded) and what its training cost."""

    task: RetrievalTask
    fit_seconds: float
    epochs_run: int
    samples: int
    refit_epochs: int = 0


def trained_samples(data: RetrievalData, cfg: RetrievalConfig, epochs: int) -> int:
    return len(data.train_items) // cfg.batch_size * cfg.batch_size * max(epochs, 1)


def best_epoch(task: RetrievalTask) -> int:
    """0-based epoch of the best valid recall@`select_k` (-1 when nothing was validated)."""
    history = task.history[f"valid/recall@{task.cfg.select_k}"]
    return int(np.argmax(history)) if history else -1


def refit(fit: Fitted, data: RetrievalData, cfg: RetrievalConfig) -> Fitted:
    """Train a fresh model on train + valid positives for the selected number of epochs (no validation: the
    valid queries are now training data); the selection run's valid history is kept for the record."""
    epochs = best_epoch(fit.task) + 1
    if epochs <= 0:
        return fit
    full = data.with_valid_in_train()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    task = RetrievalTask(TwoTower(full.towers, cfg.model), cfg, full)
    trainer = _trainer(cfg, epochs, [], False)
    t0 = time.perf_counter()
    trainer.fit(task)
    task.history = fit.task.history
    return Fitted(task, fit.fit_seconds + time.perf_counter() - t0, fit.epochs_run,
                  fit.samples + trained_samples(full, cfg, epochs), refit_epochs=epochs)


def finish(fit: Fitted, data: RetrievalData, cfg: RetrievalConfig, root: Path, spec_dir: Path) -> dict[str, Any]:
    """After training (final weights loaded in `fit.task`): test metrics of the model and the baselines on the
    same queries; the retrieval bundle (towers, spec, embeddings, popularity) under `root/bundle`."""
    task, fit_seconds = fit.task, fit.fit_seconds
    model = task.model.cpu().eval()
    test = evaluate_two_tower(model, data, data.test, cfg.ks, torch.device("cpu"))
    baselines = run_baselines(data.fit_matrix, data.test.truth, ks=cfg.ks, names=cfg.baselines)
    exported = save_retrieval_bundle(root / "bundle", model=model, cfg=cfg, data=data, spec_dir=spec_dir,
                                     metrics=test)
    return {
        "test": {"two_tower": test, **baselines},
        "valid_history": task.history,
        "best_epoch": best_epoch(task),
        "epochs_run": fit.epochs_run,
        "refit_epochs": fit.refit_epochs,
        "train_samples_per_second": fit.samples / fit_seconds if fit_seconds > 0 else 0.0,
        "fit_seconds": fit_seconds,
        "counts": data.counts,
        "embeddings": exported,
        "bundle": str(root / "bundle"),
    }


def _log_run(run_id: str, uri: str, result: dict[str, Any], cfg: RetrievalConfig,
             config_doc: Mapping[str, Any] | None, root: Path, prepared: Path) -> None:
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"test/{method}/{key.replace('@', '_at_')}", float(value), now, 0)
                                      for method, metrics in result["test"].items() for key, value in metrics.items()])
    client.log_param(run_id, "retrieval_config", json.dumps(cfg.model_dump(mode="json"))[:6000])
    client.set_tag(run_id, LINEAGE_DATA, hash_prepared(prepared))
    client.set_tag(run_id, LINEAGE_SPEC, FeatureSpec.load(prepared / "spec").fingerprint())
    if config_doc is not None:
        client.log_dict(run_id, dict(config_doc), "resolved_config.json")
    # the retrieval bundle: towers, embeddings (index input) and the feature spec travel together
    client.log_artifacts(run_id, str(root / "bundle"), "retrieval_bundle")
    client.log_artifact(run_id, str(root / "metrics.json"))
