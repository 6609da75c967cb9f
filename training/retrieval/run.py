"""`recforge train retrieval`: train the two-tower model, evaluate it against baselines, export, track.

One run, two strategies for the training itself (`training.retrieval.strategies`): in this process with Lightning,
or through Ray Train (`retrieval.runtime.ray_workers > 0`); both select the epoch count on valid recall and, with
`refit` (the default), retrain on train + valid. The final model and the baselines (most-popular, item-KNN,
implicit ALS/BPR, fitted on train + valid) are scored on the SAME test queries, the retrieval bundle
(`training.retrieval.bundle`: towers, spec, embeddings that `recforge index build` reads) is written, and the run is
finished by the tail both stages share (`training.common.run.finish`). Outputs under `<output_dir>/retrieval/`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from feature_store.layout import RunLayout
from training.common.plots import plot_loss_curves
from training.common.run import RunResult, Trained, finish
from training.common.tracking import failed_run, open_run
from training.common.trainer import compile_enabled
from training.retrieval.bundle import save_retrieval_bundle
from training.retrieval.config import RetrievalConfig
from training.retrieval.data import load_retrieval_data
from training.retrieval.evaluate import evaluate_two_tower, run_baselines
from training.retrieval.fitted import best_epoch, precision_of
from training.retrieval.strategies import local, ray_train

ARTIFACT = "retrieval_bundle"  # the bundle's artifact path; the registry registers `runs:/<id>/retrieval_bundle`
MODEL = "two_tower"


def train_retrieval(output_dir: str | Path, name: str, cfg: RetrievalConfig, *,
                    config_doc: Mapping[str, Any] | None = None, tracking_uri: str | None = None,
                    ray_address: str | None = None) -> RunResult:
    """Train the two-tower model on `<output_dir>/prepared`; test metrics of it and of the baselines, bundle, run."""
    started = time.perf_counter()
    layout = RunLayout(Path(output_dir))
    prepared = layout.require_prepared()
    stage = layout.retrieval
    stage.root.mkdir(parents=True, exist_ok=True)
    strategy = ray_train if cfg.runtime.ray_workers > 0 else local
    mode = "ray_train" if strategy is ray_train else "local"
    run = open_run(cfg.tracking, output_dir=output_dir, scenario=name, stage=stage, run_name=MODEL, uri=tracking_uri,
                   tags={"recforge.mode": mode, "recforge.ray_workers": str(cfg.runtime.ray_workers)})
    with failed_run(run):
        data = load_retrieval_data(prepared, cfg)
        fit = strategy.fit(cfg, data, prepared, stage, run, ray_address=ray_address)
        model = fit.task.model.cpu().eval()
        test = evaluate_two_tower(model, data, data.test, cfg.ks, torch.device("cpu"))
        baselines = run_baselines(data.fit_matrix, data.test.truth, ks=cfg.ks, names=cfg.baselines)
        exported = save_retrieval_bundle(stage.bundle, model=model, cfg=cfg, data=data, spec_dir=layout.spec,
                                         metrics=test)
        history = fit.task.history
        valid_key = f"valid/recall@{cfg.select_k}"
        best = best_epoch(fit.task)
        results = {"two_tower": test, **baselines}
        trained = Trained(
            model=MODEL, epochs_run=fit.epochs_run, global_steps=fit.samples // cfg.batch_size,
            valid={f"recall@{cfg.select_k}": history[valid_key][best]} if best >= 0 else {}, test=results,
            device=fit.device, precision=precision_of(cfg), history=history, distributed=fit.distributed,
            details={"compiled": compile_enabled(cfg.compile, cfg.runtime),
                     "best_epoch": best, "refit_epochs": fit.refit_epochs, "fit_seconds": fit.fit_seconds,
                     "train_samples_per_second": fit.samples / fit.fit_seconds if fit.fit_seconds > 0 else 0.0,
                     "counts": data.counts, "embeddings": exported})
        logged = {f"test/{method}/{key.replace('@', '_at_')}": float(value)
                  for method, metrics in results.items() for key, value in metrics.items()}
        return finish(trained, stage="retrieval", layout=stage, prepared=prepared, run=run,
                      config_doc=dict(config_doc or {"retrieval": cfg.model_dump(mode="json")}),
                      logged_metrics=logged, bundle_artifact=ARTIFACT if cfg.tracking.log_model else None,
                      figures=lambda: ({"loss_curves": plot_loss_curves({"train/loss": history["train/loss"]})}
                                       if history.get("train/loss") else {}),
                      started=started)
