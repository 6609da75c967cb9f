"""The `recforge train ctr` job: prepared features in -> trained, evaluated, tracked ranker out.

One run, three strategies for the training itself (`training.ranking.strategies`): in this process with Lightning
(the default), through Ray Train (`train.runtime.ray_workers > 0`), or with TorchRec-sharded embedding tables
(`train.sharded`). Whichever trained it, the best weights are evaluated on the whole valid and test splits, saved as
the ranker bundle, and the run is finished by the tail both stages share (`training.common.run.finish`).
Outputs under `<output_dir>/train/<model>/` (`feature_store.layout.StageLayout`): checkpoints/, bundle/,
metrics.json.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from feature_store.layout import RunLayout
from training.common.plots import plot_loss_curves, plot_reliability, plot_roc
from training.common.run import RunResult, Trained, finish
from training.common.tracking import failed_run, open_run
from training.common.trainer import compile_enabled
from training.ranking.bundle import save_bundle
from training.ranking.config import TrainConfig
from training.ranking.evaluate import Fitted, split_rows, steps_per_epoch
from training.ranking.strategies import local, ray_train, sharded

ARTIFACT = "ranker"  # the bundle's artifact path in the run; the registry registers `runs:/<id>/ranker`
FEW_STEPS = 100  # fewer optimiser steps than this in a whole run rarely train a CTR model past its embeddings' init

log = logging.getLogger("recforge.train")


def budget_warning(train_rows: int, per_epoch: int, cfg: TrainConfig) -> str | None:
    """A warning when the run is planned to take fewer than FEW_STEPS optimiser steps: e.g. 8k rows in batches of
    4,096 for 2 epochs is 4 steps, which ended at AUC 0.58 without a word. None when the budget is fine."""
    planned = per_epoch * cfg.max_epochs if cfg.max_steps < 0 else min(cfg.max_steps, per_epoch * cfg.max_epochs)
    if planned >= FEW_STEPS:
        return None
    batch = max(256, 1 << max(0, (train_rows // 100).bit_length() - 1))
    epochs = -(-FEW_STEPS * batch // max(train_rows, 1))
    return (f"train.batch_size={cfg.batch_size} x train.max_epochs={cfg.max_epochs} over {train_rows:,} train rows "
            f"is {planned} optimiser step(s), too few to learn much; set train.batch_size={min(batch, cfg.batch_size)} "
            f"and train.max_epochs={max(epochs, cfg.max_epochs)} (or run `recforge init` on the file for a sized "
            "config)")


def resume_report(cfg: TrainConfig, stage: Any, strategy: Any) -> dict[str, Any] | None:
    """With `train.resume`, say what the job continues from (the checkpoint, its epoch and step) or that there is
    nothing to resume; the job's result carries it as `resumed_from`. A job killed before its first checkpoint
    starts over, in the same MLflow run."""
    if not cfg.resume:
        return None
    point = strategy.resume_point(cfg, stage)
    if point is None:
        log.info("nothing to resume in %s: starting fresh (in the same MLflow run if one was recorded)",
                 stage.checkpoints)
    else:
        where = f"epoch {point['epoch']}, step {point['step']}" if point["step"] is not None else "its latest epoch"
        log.info("resuming from %s (%s)", point["checkpoint"], where)
    return point


def strategy_of(cfg: TrainConfig) -> Any:
    """The strategy module that trains `cfg`."""
    if cfg.sharded:
        return sharded
    return ray_train if cfg.runtime.ray_workers > 0 else local


def train_ctr(output_dir: str | Path, name: str, cfg: TrainConfig, *, config_doc: Mapping[str, Any] | None = None,
              tracking_uri: str | None = None, ray_address: str | None = None) -> RunResult:
    """Train `cfg.model` on `<output_dir>/prepared`; the valid/test metrics of the best epoch, bundle, MLflow run."""
    started = time.perf_counter()
    layout = RunLayout(Path(output_dir))
    prepared = layout.require_prepared()
    stage = layout.ranker(cfg.model)
    stage.root.mkdir(parents=True, exist_ok=True)
    warning = budget_warning(split_rows(prepared, "train"), steps_per_epoch(prepared, cfg.batch_size), cfg)
    if warning:
        log.warning(warning)
    strategy = strategy_of(cfg)
    mode = {local: "local", ray_train: "ray_train", sharded: "torchrec_sharded"}[strategy]
    resumed_from = resume_report(cfg, stage, strategy)
    run = open_run(cfg.tracking, output_dir=output_dir, scenario=name, stage=stage, run_name=cfg.model,
                   uri=tracking_uri, resuming=cfg.resume,
                   tags={"recforge.mode": mode, "recforge.ray_workers": str(cfg.runtime.ray_workers),
                         **({"recforge.resumed_from_step": str(resumed_from["step"])}
                            if resumed_from and resumed_from["step"] is not None else {})})
    with failed_run(run):
        fitted: Fitted = strategy.fit(cfg, prepared, stage, run, ray_address=ray_address)
        trained = Trained(model=cfg.model, epochs_run=fitted.epochs_run, global_steps=fitted.global_steps,
                          valid=fitted.valid, test=fitted.test, device=fitted.device, precision=fitted.precision,
                          history=fitted.history, distributed=fitted.distributed,
                          details={"best_checkpoint": fitted.best_checkpoint, "resumed_from": resumed_from,
                                   "compiled": strategy is not sharded and compile_enabled(cfg.compile, cfg.runtime)})
        if not fitted.global_zero:  # a DDP rank other than 0: rank 0 logs and writes
            return trained.result(stage="ranking", bundle=stage.bundle, run=run, lineage={}, started=started)
        save_bundle(stage.bundle, model_name=cfg.model, model=fitted.model, spec_dir=layout.spec,
                    metrics={f"test/{k}": v for k, v in fitted.test.items()}, example=fitted.example)

        def figures() -> dict[str, Any]:
            out = {"loss_curves": plot_loss_curves(dict(fitted.history))}
            if fitted.predictions is not None:
                y, p = fitted.predictions["labels"], fitted.predictions["probs"]
                out.update(roc=plot_roc(y, p), reliability=plot_reliability(y, p))
            return out

        return finish(trained, stage="ranking", layout=stage, prepared=prepared, run=run,
                      config_doc=dict(config_doc or {"train": cfg.model_dump(mode="json")}),
                      logged_metrics={f"test/{k}": v for k, v in fitted.test.items()},
                      bundle_artifact=ARTIFACT if cfg.tracking.log_model else None, figures=figures,
                      started=started)
