"""The MovieLens parts of `scripts.bench.quality`: every RecForge model trained by `train_ctr` over a learning-rate
grid, and DeepCTR-Torch on the same prepared split; plus preparing a scenario and one tracked training run."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scripts.bench import peer
from scripts.bench.common import REPO, now
from scripts.bench.quality_report import (
    ML_BATCH,
    ML_CONFIG,
    ML_CROSS_LAYERS,
    ML_EMBEDDING_DIM,
    ML_MLP,
    ML_PATIENCE,
    ML_SEED,
    THREADS,
)

log = logging.getLogger("bench_quality")
Splits = dict[str, tuple[dict[str, np.ndarray], np.ndarray]]


def prepare_split(config: str, out_dir: Path, overrides: Sequence[str] = (), reuse: bool = False
                  ) -> dict[str, Any]:
    """`recforge prepare` of `config` into `out_dir` (reused when `reuse` and already prepared); its summary."""
    from recforge.config import load

    summary_path = out_dir / "prepared" / "summary.json"
    if reuse and (out_dir / "prepared" / "spec" / "feature_spec.json").is_file() and summary_path.is_file():
        log.info("reusing %s", out_dir / "prepared")
        return json.loads(summary_path.read_text())
    from feature_store.prepare import prepare

    cfg = load(REPO / config, [f"output_dir={out_dir}", *overrides])
    try:
        return prepare(cfg).summary
    finally:
        import ray

        if ray.is_initialized():  # free the workers' cores and memory for training
            ray.shutdown()


def run_dir(work: Path, prepared_root: Path, tag: str) -> Path:
    """A per-run output dir whose `prepared` links to the shared prepared split (train_ctr reads it there)."""
    d = work / "runs" / tag
    d.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(d / "train", ignore_errors=True)  # a fresh run: no checkpoints of an earlier one
    link = d / "prepared"
    if link.is_symlink() or link.exists():
        if link.resolve() == (prepared_root / "prepared").resolve():
            return d
        link.unlink()
    link.symlink_to((prepared_root / "prepared").resolve(), target_is_directory=True)
    return d


def train_run(work: Path, prepared_root: Path, tag: str, name: str, train_doc: dict[str, Any]) -> dict[str, Any]:
    """Train with `training.ranking.run.train_ctr`; valid/test metrics, best epoch, epochs run, seconds."""
    import torch
    from mlflow.tracking import MlflowClient

    from training.ranking.config import TrainConfig
    from training.ranking.run import train_ctr

    cfg = TrainConfig.model_validate(train_doc)
    out = run_dir(work, prepared_root, tag)
    uri = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    t0 = time.perf_counter()
    result = train_ctr(out, name, cfg, tracking_uri=uri).to_dict()
    seconds = time.perf_counter() - t0
    best = result["best_checkpoint"]
    best_epoch = int(torch.load(best, map_location="cpu", weights_only=True)["epoch"]) + 1 if best else None
    client = MlflowClient(uri)
    per_epoch: dict[str, list[float]] = {}
    for metric in ("auc", "logloss", "gauc"):
        history = client.get_metric_history(result["mlflow"]["run_id"], f"valid/{metric}")
        per_epoch[metric] = [float(m.value) for m in sorted(history, key=lambda m: m.step)]
    # the tested weights are the best epoch's: take the validation of that epoch from the per-epoch history
    at = (best_epoch or len(per_epoch["auc"])) - 1
    valid_best = {k: v[at] for k, v in per_epoch.items() if len(v) > at}
    return {
        "tag": tag, "model": cfg.model, "train": cfg.model_dump(mode="json", exclude={"tracking"}),
        "valid_auc": valid_best["auc"], "valid_best_epoch": valid_best, "valid_last_epoch": result["valid"],
        "test": result["test"], "best_epoch": best_epoch, "epochs_run": result["epochs_run"],
        "seconds": round(seconds, 1), "valid_auc_per_epoch": [round(v, 4) for v in per_epoch["auc"]],
    }


def movielens_params(model: str) -> dict[str, Any]:
    """Model sizes for MovieLens: dim 16 for all; MLP [256, 128] where a model has one; 3 cross layers."""
    params: dict[str, Any] = {"embedding_dim": ML_EMBEDDING_DIM}
    if model in ("wide_deep", "deepfm", "dcnv2", "din"):
        params["mlp"] = list(ML_MLP)
    if model == "dcnv2":
        params.update(structure="parallel", cross_layers=ML_CROSS_LAYERS)
    if model == "dlrm":
        params["top_mlp"] = list(ML_MLP)
    if model == "finalmlp":
        params.update(mlp1=list(ML_MLP), mlp2=list(ML_MLP))
    return params


def movielens_train_doc(model: str, lr: float, max_epochs: int) -> dict[str, Any]:
    """The `train:` section of one MovieLens run, as a dict (`TrainConfig.model_validate` takes it)."""
    return {
        "model": model, "model_params": {model: movielens_params(model)}, "batch_size": ML_BATCH,
        "max_epochs": max_epochs, "runtime": {"seed": ML_SEED, "num_threads": THREADS, "accelerator": "cpu"},
        "optim": {"dense": "adam", "dense_lr": lr, "embedding": "adam", "embedding_lr": lr},
        "early_stopping": {"metric": "valid/auc", "mode": "max", "patience": ML_PATIENCE},
        "tracking": {"log_model": False},
    }


def search_grid(part: str, names: Sequence[str], lr_grid: Sequence[float],
                train: Callable[[str, float], dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`train(name, lr)` for every name and learning rate; the grid rows (the best of each name on valid AUC marked
    chosen) and the chosen runs."""
    grid: list[dict[str, Any]] = []
    chosen: list[dict[str, Any]] = []
    for name in names:
        runs = []
        for lr in lr_grid:
            log.info("%s: %s lr=%g", part, name, lr)
            r = train(name, lr) | {"lr": lr}
            runs.append(r)
            log.info("%s: %s lr=%g valid auc %.4f (%d epochs, %.0f s)", part, name, lr, r["valid_auc"],
                     r["epochs_run"], r["seconds"])
        best = max(runs, key=lambda r: r["valid_auc"])
        grid.extend({"model": name, "lr": r["lr"], "valid_auc": r["valid_auc"], "best_epoch": r["best_epoch"],
                     "epochs_run": r["epochs_run"], "seconds": r["seconds"], "chosen": r is best} for r in runs)
        chosen.append(best)
    return grid, chosen


def run_movielens(work: Path, models: Sequence[str], reuse: bool, lr_grid: Sequence[float], max_epochs: int
                  ) -> dict[str, Any]:
    from training.ranking.models import MODELS

    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"bench_quality: unknown model(s) {unknown}; registered: {', '.join(MODELS)}")
    root = work / "movielens"
    t0 = time.perf_counter()
    summary = prepare_split(ML_CONFIG, root, reuse=reuse)
    prepare_s = time.perf_counter() - t0
    grid, chosen = search_grid("movielens", models, lr_grid, lambda model, lr: train_run(
        work, root, f"ml_{model}_lr{lr:g}", "bench_quality_movielens", movielens_train_doc(model, lr, max_epochs)))
    return {"date": now(), "prepare_seconds": round(prepare_s, 1), "summary": summary, "grid": grid,
            "rows": chosen, "lr_grid": list(lr_grid), "max_epochs": max_epochs}


def peer_splits(prepared: Path) -> tuple[Any, Splits, np.ndarray | None]:
    """Our prepared splits as DeepCTR-Torch inputs (our loader's tensors, so both sides see identical ids, bags and
    histories): the layout, per split (x dict, y), and the test split's user ids (the gAUC groups)."""
    from feature_store.spec import FeatureSpec
    from training.common.data import load_split
    from training.common.features import FeatureLayout

    layout = FeatureLayout.from_spec(FeatureSpec.load(prepared / "spec"))
    data: Splits = {split: peer.inputs(load_split(prepared / split, layout), layout)
                    for split in ("train", "valid", "test")}
    groups = data["test"][0][layout.user_field].astype(np.int64) if layout.user_field is not None else None
    return layout, data, groups


def train_peer(kind: str, lr: float, layout: Any, data: Splits, groups: np.ndarray | None, max_epochs: int
               ) -> dict[str, Any]:
    """DeepCTR-Torch trained one epoch per `fit` call; the best valid-AUC epoch's weights are tested."""
    import contextlib
    import io

    import torch
    from sklearn.metrics import log_loss, roc_auc_score

    from training.common.metrics import gauc

    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    model = peer.build(peer.require("bench_quality"), kind, layout, dim=ML_EMBEDDING_DIM, mlp=ML_MLP,
                       cross_layers=ML_CROSS_LAYERS, seed=ML_SEED, lr=lr)
    x_tr, y_tr = data["train"]
    x_va, y_va = data["valid"]
    best_auc, best_state, best_epoch, bad, history = -1.0, None, 0, 0, []
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        with contextlib.redirect_stdout(io.StringIO()):  # fit prints the device and sample counts
            model.fit(dict(x_tr), y_tr, batch_size=ML_BATCH, epochs=1, verbose=0, shuffle=True)
        valid_auc = float(roc_auc_score(y_va, model.predict(dict(x_va), ML_BATCH * 4).reshape(-1)))
        history.append(round(valid_auc, 4))
        if valid_auc > best_auc:
            best_auc, best_state, best_epoch, bad = valid_auc, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= ML_PATIENCE:
                break
    model.load_state_dict(best_state)
    x_te, y_te = data["test"]
    p = model.predict(dict(x_te), ML_BATCH * 4).reshape(-1)
    p_va = model.predict(dict(x_va), ML_BATCH * 4).reshape(-1)
    seconds = time.perf_counter() - t0
    test = {"auc": float(roc_auc_score(y_te, p)), "logloss": float(log_loss(y_te, np.clip(p, 1e-7, 1 - 1e-7)))}
    if groups is not None:
        test["gauc"] = gauc(y_te, p, groups).value
    return {"peer": kind, "lr": lr, "valid_auc": float(roc_auc_score(y_va, p_va)), "test": test,
            "best_epoch": best_epoch, "epochs_run": epoch, "seconds": round(seconds, 1),
            "valid_auc_per_epoch": history}


def run_peer(work: Path, kinds: Sequence[str], lr_grid: Sequence[float], max_epochs: int) -> dict[str, Any]:
    peer.require("bench_quality")
    root = work / "movielens"
    prepare_split(ML_CONFIG, root, reuse=True)  # the split the movielens part trained on (seeded, so identical)
    layout, data, groups = peer_splits(root / "prepared")
    grid, chosen = search_grid("peer", kinds, lr_grid,
                               lambda kind, lr: train_peer(kind, lr, layout, data, groups, max_epochs))
    return {"date": now(), "grid": grid, "rows": chosen, "lr_grid": list(lr_grid), "max_epochs": max_epochs}
