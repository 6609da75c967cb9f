"""Distributed CTR training: Ray Train data-parallel workers, and TorchRec model-parallel (sharded) embeddings.

- `train_ctr_ray` (`train.ray_workers > 0`): a `ray.train.torch.TorchTrainer` runs the Lightning job of
  `train_ctr` on every worker (`RayDDPStrategy`, `RayLightningEnvironment`, `RayTrainReportCallback`). Each
  worker loads the whole train split and trains on its own share of every epoch's permutation (the rank shares of
  `CTRDataModule`; streamed splits deal their row groups to ranks, `RankStreamingBatches`); every worker scores
  the whole valid split, so the early-stopping metric is the same everywhere. The driver takes the best reported
  checkpoint, re-evaluates valid and test, saves the bundle and logs the MLflow run.
- `train_ctr_sharded` (`train.sharded`): `world_size` processes (gloo on CPU, nccl on CUDA) wrap the model in
  TorchRec's `DistributedModelParallel`. The planner places whole tables on ranks (table-wise) or splits their
  rows (row-wise: CUDA only in TorchRec 1.8); embeddings are updated in the backward pass by FBGEMM's fused
  optimizer, dense layers by DDP + Adam. Validation runs through the sharded model (each rank scores a slice,
  predictions are all-gathered). Rank 0 gathers a full, unsharded state dict of the best epoch, evaluates it on the
  whole valid/test splits and writes the bundle, which loads as a plain `embedding_backend: torchrec` model.

Both return the result dict of `train_ctr` plus `history` and a `distributed` section, and write
`<output_dir>/train/<model>/`. Paths (prepared data, tracking store, Ray storage) must be reachable from every
worker: one machine, or a shared file system.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from torch import Tensor, nn

from feature_store.raycluster import free_port
from feature_store.spec import FeatureSpec
from training.common.data import InMemoryBatches, RankStreamingBatches, load_split
from training.common.embedding import EmbeddingOutput, SparseEmbedding, TorchRecEmbedding, _table_name
from training.common.features import GROUP, LABEL, FeatureLayout, seq_key, seq_len_key
from training.common.metrics import ctr_metrics
from training.common.tracking import (
    LINEAGE_DATA,
    LINEAGE_SPEC,
    default_tracking_uri,
    ensure_experiment,
    hash_prepared,
    log_training_run,
)
from training.ranking.bundle import save_bundle
from training.ranking.config import OptimConfig, TrainConfig
from training.ranking.datamodule import CTRDataModule
from training.ranking.models import CTRModel, build_model, model_config
from training.ranking.run import TrainPaths, _precision, _train_rows, train_paths
from training.ranking.task import CTRTask, lr_factor

log = logging.getLogger("recforge.distributed")

Batch = dict[str, Tensor]
RAY_RUN_NAME = "ray_train"
# Models that can train sharded: they read embeddings only through `model.embedding` and mean-pool behaviour
# sequences (`fields_with_pooled_sequences`), which a sharded EmbeddingBagCollection can do itself. Not: DIN
# (attends over the unpooled sequence), DLRM (TorchRec's arch holds the EBC a second time), and the models with
# an LR term (lr, fm, wide_deep, deepfm: width-1 tables, while FBGEMM's kernels need widths divisible by 4).
SHARDABLE_MODELS = frozenset({"dcnv2", "finalmlp"})
FBGEMM_DIM_MULTIPLE = 4


# ------------------------------------------------------------------------------------------ per-rank data


def _rows(tensors: Batch) -> int:
    return int(next(iter(tensors.values())).shape[0])


def _take(tensors: Batch, idx: Tensor) -> Batch:
    return {k: v.index_select(0, idx.to(v.device)) for k, v in tensors.items()}


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous rows [lo, hi) of n that `rank` evaluates; sizes differ by at most one, none empty if n >= w."""
    return rank * n // world_size, (rank + 1) * n // world_size


# ----------------------------------------------------------------------------------------------- shared


def _check_prepared(output_dir: str | Path) -> Path:
    prepared = Path(output_dir) / "prepared"
    if not (prepared / "spec" / "feature_spec.json").is_file():
        raise FileNotFoundError(f"{prepared}: no prepared features; run `recforge prepare --config ...` first")
    return prepared


def _split_rows(prepared: Path, split: str) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((prepared / split).glob("*.parquet")))


def _open_run(uri: str, experiment: str, output_dir: str | Path, run_name: str, run_id_file: Path,
              resuming: bool, tags: Mapping[str, str]) -> str:
    """The MLflow run of this job: reopened on resume, created otherwise (id kept in `run_id_file`)."""
    import mlflow

    experiment_id = ensure_experiment(uri, experiment, output_dir)
    client = mlflow.MlflowClient(uri)
    if resuming and run_id_file.is_file():
        run_id = run_id_file.read_text().strip()
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(experiment_id, run_name=run_name, tags=dict(tags)).info.run_id
    run_id_file.write_text(run_id)
    return run_id


def _log_epochs(uri: str, run_id: str, rows: list[dict[str, float]]) -> None:
    """Per-epoch metrics (step = global step at the end of the epoch, as Lightning's MLFlowLogger does)."""
    import mlflow

    stamp = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric(k, float(v), stamp, int(row.get("step", i)))
               for i, row in enumerate(rows) for k, v in row.items()
               if k not in ("epoch", "step") and np.isfinite(v)]
    client = mlflow.MlflowClient(uri)
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i: i + 500])


def _finish_run(uri: str, run_id: str, status: str) -> None:
    import mlflow

    mlflow.MlflowClient(uri).set_terminated(run_id, status=status)


# ------------------------------------------------------------------------------------------- Ray Train


class _EpochMetrics(pl.Callback):
    """Keeps the scalar metrics of every epoch (after its validation) for the driver's MLflow run."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        row.update(epoch=trainer.current_epoch, step=trainer.global_step)
        self.rows.append(row)


def _ray_train_loop(config: dict[str, Any]) -> dict[str, Any]:
    """`train_loop_per_worker`: the Lightning job of `train_ctr` on this worker's shard of the data."""
    import ray.train
    from ray.train.lightning import (
        RayDDPStrategy,
        RayLightningEnvironment,
        RayTrainReportCallback,
        prepare_trainer,
    )

    cfg = TrainConfig.model_validate(config["train"])
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = CTRDataModule(config["prepared"], batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                               seed=cfg.seed, streaming=cfg.streaming, gpu_resident=cfg.gpu_resident)
    model = build_model(cfg.model, dm.prepare_spec(), cfg.model_params.get(cfg.model, {}))
    task = CTRTask(model, cfg.optim, total_steps=config["total_steps"], steps_per_epoch=config["steps_per_epoch"])
    epochs = _EpochMetrics()
    early = EarlyStopping(monitor=cfg.early_stopping.metric, mode=cfg.early_stopping.mode,
                          patience=cfg.early_stopping.patience)
    trainer = pl.Trainer(
        accelerator="gpu" if config["use_gpu"] else "cpu",
        devices="auto",
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        precision=config["precision"],
        max_epochs=cfg.max_epochs,
        max_steps=cfg.max_steps,
        gradient_clip_val=cfg.optim.grad_clip,
        callbacks=[early, epochs, RayTrainReportCallback()],
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=False,
        deterministic=False,
    )
    trainer = prepare_trainer(trainer)
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as d:
            trainer.fit(task, datamodule=dm, ckpt_path=str(Path(d) / RayTrainReportCallback.CHECKPOINT_NAME))
    else:
        trainer.fit(task, datamodule=dm)
    return {"history": task.history, "epochs": epochs.rows, "epochs_run": trainer.current_epoch,
            "global_steps": trainer.global_step, "device": str(trainer.strategy.root_device)}


def train_ctr_ray(output_dir: str | Path, name: str, cfg: TrainConfig, *, config_doc: Mapping[str, Any] | None = None,
                  tracking_uri: str | None = None, ray_address: str | None = None) -> dict[str, Any]:
    """Train `cfg.model` on `<output_dir>/prepared` with Ray Train over `cfg.ray_workers` workers.

    Returns the `train_ctr` result (valid/test metrics of the best checkpoint on the whole splits, bundle path,
    MLflow run id, ...) plus `history` (per-epoch train/valid loss of rank 0) and `distributed`: {mode, workers,
    use_gpu, ray_result_path, reported_valid (the valid metrics the workers reported with that checkpoint)}.
    `cfg.resume` continues from the latest checkpoint Ray Train kept under `<output_dir>/train/<model>/ray/`
    (the resumed job's `history` holds the new epochs only).
    """
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from feature_store.raycluster import ensure_ray

    t0 = time.perf_counter()
    prepared = _check_prepared(output_dir)
    workers = cfg.ray_workers
    if workers < 1:
        raise ValueError("train.ray_workers must be >= 1 to train through Ray Train (got 0); "
                         "use train_ctr for a single-process job")
    use_gpu = torch.cuda.is_available() and cfg.accelerator != "cpu"
    have = ensure_ray(ray_address).cluster_resources()
    need = {"CPU": float(workers), **({"GPU": float(workers)} if use_gpu else {})}
    short = {k: f"{have.get(k, 0):g}" for k, v in need.items() if have.get(k, 0) < v}
    if short:  # Ray Train would wait for them forever
        raise ValueError(f"train.ray_workers={workers} needs {workers} CPU{'s and GPUs' if use_gpu else 's'} in "
                         f"the Ray cluster, which has {short}; lower train.ray_workers, add nodes, or set "
                         f"train.accelerator: cpu")
    paths = train_paths(output_dir, cfg.model)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    rows_per_rank = _train_rows(prepared) // workers  # CTRDataModule's rank share (the remainder is skipped)
    steps_per_epoch = max(-(-rows_per_rank // cfg.batch_size), 1)
    total = cfg.max_steps if cfg.max_steps > 0 else steps_per_epoch * cfg.max_epochs
    precision = _precision(cfg)

    storage = (paths.root / "ray").resolve()
    resuming = cfg.resume and (storage / RAY_RUN_NAME).is_dir()
    if not resuming:  # Ray Train restores a run folder of the same name; a fresh job starts from a clean one
        shutil.rmtree(storage / RAY_RUN_NAME, ignore_errors=True)
    uri = tracking_uri or cfg.tracking.uri or default_tracking_uri(output_dir)
    experiment = cfg.tracking.experiment or name
    run_id = _open_run(uri, experiment, output_dir, cfg.model, paths.root / "mlflow_run_id", resuming,
                       {"recforge.mode": "ray_train", "recforge.ray_workers": str(workers)})
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config={"train": cfg.model_dump(mode="json"), "prepared": str(prepared.resolve()),
                           "steps_per_epoch": steps_per_epoch, "total_steps": total, "use_gpu": use_gpu,
                           "precision": precision},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=RAY_RUN_NAME, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=1, checkpoint_score_attribute=cfg.early_stopping.metric,
                                 checkpoint_score_order=cfg.early_stopping.mode)),
    )
    try:
        result = trainer.fit()
        out = _finish_ray(result, paths, prepared, cfg, uri, run_id, config_doc, precision)
    except BaseException:
        _finish_run(uri, run_id, "FAILED")
        raise
    _finish_run(uri, run_id, "FINISHED")
    out.update({"mlflow": {"tracking_uri": uri, "experiment": experiment, "run_id": run_id},
                "distributed": {"mode": "ray_train", "workers": workers, "use_gpu": use_gpu,
                                "ray_result_path": str(result.path), "reported_valid": out.pop("reported_valid")},
                "seconds": round(time.perf_counter() - t0, 3)})
    paths.metrics.write_text(json.dumps(out, indent=2, default=float))
    return out


def _finish_ray(result: Any, paths: TrainPaths, prepared: Path, cfg: TrainConfig, uri: str, run_id: str,
                config_doc: Mapping[str, Any] | None, precision: str) -> dict[str, Any]:
    """Driver side after `fit`: best checkpoint -> weights -> valid/test on the whole splits -> bundle -> MLflow."""
    from ray.train.lightning import RayTrainReportCallback

    checkpoint = result.checkpoint
    if result.best_checkpoints:
        checkpoint = result.get_best_checkpoint(cfg.early_stopping.metric, cfg.early_stopping.mode) or checkpoint
    kept = [m for c, m in result.best_checkpoints or [] if checkpoint is not None and c.path == checkpoint.path]
    reported = kept[0] if kept else result.metrics or {}
    if checkpoint is None:
        raise RuntimeError(f"Ray Train reported no checkpoint (run folder {result.path}); the workers' logs are "
                           f"in the Ray session folder")
    best = paths.checkpoints / "best.ckpt"
    with checkpoint.as_directory() as d:
        shutil.copyfile(Path(d) / RayTrainReportCallback.CHECKPOINT_NAME, best)
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]

    dm = CTRDataModule(prepared, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size, seed=cfg.seed,
                       splits=("valid", "test"))
    model = build_model(cfg.model, dm.prepare_spec(), cfg.model_params.get(cfg.model, {}))
    task = CTRTask(model, cfg.optim)
    task.load_state_dict(state)
    on_gpu = torch.cuda.is_available() and cfg.accelerator != "cpu"
    evaluator = pl.Trainer(accelerator="gpu" if on_gpu else "cpu", devices=1, precision=precision if on_gpu
                           else "32-true", logger=False, enable_checkpointing=False, enable_model_summary=False,
                           enable_progress_bar=False)
    evaluator.validate(task, datamodule=dm, verbose=False)
    evaluator.test(task, datamodule=dm, verbose=False)
    valid_metrics = dict(task.last_metrics.get("valid", {}))
    test_metrics = dict(task.last_metrics.get("test", {}))

    worker = result.return_value or {}
    history = worker.get("history") or {"train/loss": [], "valid/loss": []}
    spec = FeatureSpec.load(prepared / "spec")
    example = next(iter(dm.test_dataloader()))
    bundle = save_bundle(paths.bundle, model_name=cfg.model, model=task.model, spec_dir=prepared / "spec",
                         metrics={f"test/{k}": v for k, v in test_metrics.items()}, example=example)
    lineage = {LINEAGE_DATA: hash_prepared(prepared), LINEAGE_SPEC: spec.fingerprint()}
    _log_epochs(uri, run_id, worker.get("epochs", []))
    log_training_run(run_id, uri, config=dict(config_doc or {"train": cfg.model_dump(mode="json")}),
                     lineage=lineage, test_metrics=test_metrics, history=history,
                     predictions=task.last_predictions.get("test"),
                     bundle_dir=bundle if cfg.tracking.log_model else None)
    return {
        "model": cfg.model,
        "epochs_run": worker.get("epochs_run"),
        "global_steps": worker.get("global_steps"),
        "best_checkpoint": str(best),
        "valid": valid_metrics,
        "test": test_metrics,
        "bundle": str(bundle),
        "lineage": lineage,
        "device": worker.get("device", "cpu"),
        "precision": precision,
        "history": history,
        "reported_valid": {k.split("/", 1)[1]: float(v) for k, v in reported.items() if k.startswith("valid/")},
    }


# ------------------------------------------------------------------------------------ TorchRec sharded


class ShardableTorchRecEmbedding(TorchRecEmbedding):
    """A `TorchRecEmbedding` that still works once `DistributedModelParallel` has sharded its tables away.

    Behaviour sequences are looked up INSIDE the EmbeddingBagCollection: each sequence is one more (mean-pooled)
    feature of its source table, so no rank needs a table's full weight. Every table pools by mean (equal to the
    sum for the single-valued fields). `sequences` are returned already pooled: (B x 1 x D, lengths clamped to 1),
    which `fields_with_pooled_sequences` turns into exactly the mean the plain layer gives. The state dict keys are
    those of `TorchRecEmbedding`, so weights move between the two unchanged. Weights init uniformly with std
    `init_std` (FBGEMM's sharded kernels init uniformly between the configs' weight_init_min/max).
    """

    def __init__(self, layout: FeatureLayout, dim: int, *, init_std: float = 0.01,
                 device: torch.device | str | None = None) -> None:
        SparseEmbedding.__init__(self)
        from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        self.layout = layout
        self.dim = dim
        bound = init_std * math.sqrt(3.0)
        sequences_of: dict[str, list[str]] = {}
        for s in layout.sequences:
            sequences_of.setdefault(s.source, []).append(s.name)
        tables = [
            EmbeddingBagConfig(
                name=_table_name(f.name),
                embedding_dim=dim,
                num_embeddings=f.cardinality,
                feature_names=[f.name, *sequences_of.get(f.name, [])],
                pooling=PoolingType.MEAN,
                weight_init_min=-bound,
                weight_init_max=bound,
                init_fn=lambda w: nn.init.uniform_(w, -bound, bound),
            )
            for f in layout.tables
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device(device) if device else None)
        self.keys = [f.name for f in layout.tables]
        self.sequence_keys = [s.name for s in layout.sequences]

    def table_weight(self, name: str) -> Tensor:
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        if not isinstance(self.ebc, EmbeddingBagCollection):
            raise RuntimeError(f"table '{name}' is sharded across ranks: its full weight is not on this rank; "
                               f"read weights from the gathered state dict instead")
        return super().table_weight(name)

    def to_kjt(self, batch: dict[str, Tensor]) -> object:
        """Sparse fields, bags, then the sequences (their first `seq_len` ids) as one KeyedJaggedTensor."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        kjt = super().to_kjt(batch)
        if not self.sequence_keys:
            return kjt
        values, lengths = [], []
        for s in self.layout.sequences:
            ids, lens = batch[seq_key(s.name)], batch[seq_len_key(s.name)]
            mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lens[:, None]
            values.append(ids[mask])
            lengths.append(lens)
        seqs = KeyedJaggedTensor.from_lengths_sync(keys=self.sequence_keys, values=torch.cat(values),
                                                   lengths=torch.cat(lengths))
        return KeyedJaggedTensor.concat([kjt, seqs])  # type: ignore[list-item]

    def forward(self, batch: dict[str, Tensor]) -> EmbeddingOutput:
        pooled = self.ebc(self.to_kjt(batch)).to_dict()
        fields = torch.stack([pooled[k] for k in self.keys], dim=1)
        seqs: dict[str, tuple[Tensor, Tensor]] = {}
        for s in self.layout.sequences:
            lens = batch[seq_len_key(s.name)]
            seqs[s.name] = (pooled[s.name].unsqueeze(1), lens.clamp(max=1))
        return EmbeddingOutput(fields, seqs)


def shardable_embeddings(model: nn.Module) -> list[ShardableTorchRecEmbedding]:
    return [m for m in model.modules() if isinstance(m, ShardableTorchRecEmbedding)]


def build_shardable_model(name: str, layout: FeatureLayout, params: Mapping[str, Any] | None = None, *,
                          device: torch.device | str | None = None) -> CTRModel:
    """`build_model` with `embedding_backend: torchrec`, every TorchRec embedding layer (the model's own and e.g.
    an LR term's) swapped for a `ShardableTorchRecEmbedding`; `device="meta"` leaves the tables for DMP to place."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    if layout.sequences and name not in SHARDABLE_MODELS:
        raise ValueError(f"model '{name}' with behaviour sequences ({', '.join(s.name for s in layout.sequences)}) "
                         f"cannot train sharded: it reads unpooled sequences or raw table weights, which live on "
                         f"other ranks once tables are sharded. Sharded mode supports: "
                         f"{', '.join(sorted(SHARDABLE_MODELS))}; or drop train.sharded")
    cfg = model_config(name, {**dict(params or {}), "embedding_backend": "torchrec"})
    model = build_model(name, layout, cfg)
    for path, module in list(model.named_modules()):
        if type(module) is TorchRecEmbedding:
            parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
            setattr(parent, path.rpartition(".")[2], ShardableTorchRecEmbedding(
                module.layout, module.dim, init_std=cfg.embedding_init_std, device=device))
    narrow = sorted({e.dim for e in shardable_embeddings(model) if e.dim % FBGEMM_DIM_MULTIPLE})
    if narrow:
        raise ValueError(f"model '{name}' has embedding tables of width {narrow} (an LR term's id weights are "
                         f"width 1); FBGEMM's sharded tables need widths divisible by {FBGEMM_DIM_MULTIPLE}: set "
                         f"model_params.{name}.embedding_dim to a multiple of {FBGEMM_DIM_MULTIPLE}, or use one of "
                         f"{', '.join(sorted(SHARDABLE_MODELS))}")
    owned = {id(e.ebc) for e in shardable_embeddings(model)}
    stray = [p for p, m in model.named_modules(remove_duplicate=False)
             if isinstance(m, EmbeddingBagCollection) and id(m) not in owned]
    if stray:
        raise ValueError(f"model '{name}' holds an EmbeddingBagCollection outside its embedding layers "
                         f"({', '.join(stray)}); DistributedModelParallel cannot shard a table held twice. "
                         f"Sharded mode supports: {', '.join(sorted(SHARDABLE_MODELS))}; or drop train.sharded")
    return model


def fused_embedding_optimizer(o: OptimConfig, device_type: str) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer FBGEMM fuses into the sharded tables' backward (its CPU kernels know adagrad and sgd only)."""
    if o.embedding == "adagrad":
        return torch.optim.Adagrad, {"lr": o.embedding_lr}
    if device_type == "cuda":
        return torch.optim.Adam, {"lr": o.embedding_lr}
    raise ValueError(f"train.optim.embedding: '{o.embedding}' has no fused FBGEMM kernel on CPU "
                     f"(fbgemm-gpu-cpu updates sharded tables with adagrad, rowwise adagrad or sgd); set "
                     f"train.optim.embedding: adagrad (with a larger embedding_lr, e.g. 0.05) to train sharded on CPU")


def _lr_factor(o: OptimConfig, per_epoch: int, total: int) -> Any:
    """The schedule `CTRTask` applies, here for the dense optimizer."""
    return lr_factor(o, per_epoch, total)


def train_ctr_sharded(output_dir: str | Path, name: str, cfg: TrainConfig, *, world_size: int = 2,
                      config_doc: Mapping[str, Any] | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """Train `cfg.model` with its embedding tables sharded by TorchRec over `world_size` local processes.

    Returns the `train_ctr` result plus `history` and `distributed`: {mode, world_size, backend, best_epoch,
    plan: {table: {sharding_type, compute_kernel, ranks}}, local_shards: {rank: {param: [[row_offset, col_offset,
    rows, cols], ...]}}, embedding_optimizer, sharded_valid (valid metrics through the sharded model at the best
    epoch)}. Checkpoint: `checkpoints/best.pt`, the gathered full state dict of the best epoch.
    """
    import torch.multiprocessing as mp

    t0 = time.perf_counter()
    prepared = _check_prepared(output_dir)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1 (got {world_size})")
    use_cuda = torch.cuda.is_available() and cfg.accelerator != "cpu"
    if use_cuda and torch.cuda.device_count() < world_size:
        raise ValueError(f"sharded training over {world_size} ranks needs {world_size} CUDA devices; this machine "
                         f"has {torch.cuda.device_count()}. Lower world_size or set train.accelerator: cpu")
    if cfg.resume:
        raise ValueError("train.resume is not supported with train.sharded (sharded optimizer state is not "
                         "checkpointed); start a fresh job, or resume a non-sharded one")
    if cfg.optim.embedding_l2 > 0:
        raise ValueError("train.optim.embedding_l2 is not supported with train.sharded (the fused optimizer "
                         "updates the tables inside the backward); set it to 0")
    fused_embedding_optimizer(cfg.optim, "cuda" if use_cuda else "cpu")  # fail here, not in every rank
    layout = FeatureLayout.from_spec(FeatureSpec.load(prepared / "spec"))
    build_shardable_model(cfg.model, layout, cfg.model_params.get(cfg.model, {}), device="meta")
    if _split_rows(prepared, "valid") < world_size:
        raise ValueError(f"{prepared / 'valid'}: fewer rows than the {world_size} ranks; enlarge the valid split")

    paths = train_paths(output_dir, cfg.model)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or cfg.tracking.uri or default_tracking_uri(output_dir)
    experiment = cfg.tracking.experiment or name
    run_id = _open_run(uri, experiment, output_dir, cfg.model, paths.root / "mlflow_run_id", False,
                       {"recforge.mode": "torchrec_sharded", "recforge.world_size": str(world_size)})
    job = {
        "train": cfg.model_dump(mode="json"), "prepared": str(prepared.resolve()), "root": str(paths.root.resolve()),
        "backend": "nccl" if use_cuda else "gloo",
        "threads": cfg.num_threads or max(1, (os.cpu_count() or 1) // world_size),
        "uri": uri, "run_id": run_id, "config_doc": dict(config_doc or {"train": cfg.model_dump(mode="json")}),
    }
    paths.metrics.unlink(missing_ok=True)
    try:
        mp.spawn(_sharded_worker, args=(world_size, free_port(), job), nprocs=world_size, join=True)
        out = json.loads(paths.metrics.read_text())
    except BaseException:
        _finish_run(uri, run_id, "FAILED")
        raise
    _finish_run(uri, run_id, "FINISHED")
    out.update({"mlflow": {"tracking_uri": uri, "experiment": experiment, "run_id": run_id},
                "seconds": round(time.perf_counter() - t0, 3)})
    paths.metrics.write_text(json.dumps(out, indent=2, default=float))
    return out


def _sharded_worker(rank: int, world_size: int, port: int, job: dict[str, Any]) -> None:
    """One rank of `train_ctr_sharded` (a `torch.multiprocessing.spawn` target)."""
    import torch.distributed as dist

    cfg = TrainConfig.model_validate(job["train"])
    device = torch.device("cuda", rank) if job["backend"] == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(job["threads"])
    dist.init_process_group(job["backend"], init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        summary = _sharded_fit(rank, world_size, device, cfg, job)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        _sharded_finish(cfg, job, summary)


def _sharded_fit(rank: int, world_size: int, device: torch.device, cfg: TrainConfig,
                 job: dict[str, Any]) -> dict[str, Any]:
    """Plan, shard, train with per-epoch distributed validation; rank 0 saves the best full state dict."""
    import torch.distributed as dist
    from torch.distributed.optim import _apply_optimizer_in_backward
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingType
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    torch.manual_seed(cfg.seed)
    prepared = Path(job["prepared"])
    layout = FeatureLayout.from_spec(FeatureSpec.load(prepared / "spec"))
    model = build_shardable_model(cfg.model, layout, cfg.model_params.get(cfg.model, {}), device="meta")
    opt_cls, opt_kwargs = fused_embedding_optimizer(cfg.optim, device.type)
    tables: set[str] = set()
    for emb in shardable_embeddings(model):
        _apply_optimizer_in_backward(opt_cls, emb.ebc.parameters(), opt_kwargs)
        tables.update(c.name for c in emb.ebc.embedding_bag_configs())
    # Sharded, never replicated: table-wise (a table per rank) or row-wise (rows split; CUDA only in TorchRec 1.8).
    kinds = [ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value]
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world_size, compute_device=device.type),
                                       constraints={t: ParameterConstraints(sharding_types=kinds) for t in tables})
    plan = planner.collective_plan(model, None, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=device, plan=plan)
    dense_params = [p for _, p in in_backward_optimizer_filter(dmp.named_parameters())]
    o = cfg.optim
    dense_cls = torch.optim.AdamW if o.dense == "adamw" else torch.optim.Adam
    dense_opt = dense_cls(dense_params, lr=o.dense_lr, weight_decay=o.weight_decay)

    valid = load_split(prepared / "valid", layout)
    if cfg.streaming:
        batches: Any = RankStreamingBatches(prepared / "train", layout, cfg.batch_size, rank=rank,
                                            world_size=world_size, seed=cfg.seed)
    else:
        batches = InMemoryBatches(load_split(prepared / "train", layout), cfg.batch_size, shuffle=True,
                                  seed=cfg.seed, rank=rank, world_size=world_size)
    per_epoch = max(len(batches), 1)
    total = cfg.max_steps if cfg.max_steps > 0 else per_epoch * cfg.max_epochs
    sched = None
    if o.warmup_steps or o.decay != "none":
        sched = torch.optim.lr_scheduler.LambdaLR(dense_opt, _lr_factor(o, per_epoch, total))
    loss_fn = nn.BCEWithLogitsLoss()
    key = cfg.early_stopping.metric.split("/", 1)[-1]
    key = "logloss" if key == "loss" else key
    sign = 1.0 if cfg.early_stopping.mode == "max" else -1.0
    best_score, best_epoch, wait, step, epoch = -math.inf, -1, 0, 0, 0
    history: dict[str, list[float]] = {"train/loss": [], "valid/loss": []}
    best_valid: dict[str, float] = {}
    best_path = Path(job["root"]) / "checkpoints" / "best.pt"
    for epoch in range(cfg.max_epochs):
        batches.set_epoch(epoch)
        dmp.train()
        losses = []
        for batch in batches:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss = loss_fn(dmp(batch).float(), batch[LABEL])
            dense_opt.zero_grad(set_to_none=True)
            loss.backward()  # embeddings are updated here, by the fused optimizer
            if o.grad_clip:
                torch.nn.utils.clip_grad_norm_(dense_params, o.grad_clip)
            dense_opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.detach().float())
            step += 1
            if 0 < cfg.max_steps <= step:
                break
        mean_loss = torch.stack(losses).mean() if losses else torch.zeros((), device=device)
        dist.all_reduce(mean_loss)
        history["train/loss"].append(float(mean_loss) / world_size)
        probs = _sharded_predict(dmp, valid, rank, world_size, cfg.eval_batch_size or cfg.batch_size * 4, device)
        metrics = ctr_metrics(valid[LABEL].numpy(), probs, valid[GROUP].numpy() if GROUP in valid else None)
        history["valid/loss"].append(metrics["logloss"])
        score = sign * float(metrics.get(key, float("nan")))
        improved = score > best_score
        if improved:
            best_score, best_epoch, wait, best_valid = score, epoch, 0, metrics
            full = _full_state_dict(dmp, rank, device)
            if rank == 0:
                torch.save(full, best_path)
        else:
            wait += 1
        if rank == 0:
            row = {"train/loss": history["train/loss"][-1], **{f"valid/{k}": float(v) for k, v in metrics.items()},
                   "step": step}
            _log_epochs(job["uri"], job["run_id"], [row])
        if wait > cfg.early_stopping.patience or 0 < cfg.max_steps <= step:
            break
    sharding = _sharding_summary(dmp, rank, world_size)
    return {"history": history, "epochs_run": epoch + 1, "global_steps": step, "best_epoch": best_epoch,
            "sharded_valid": best_valid, "sharding": sharding, "device": str(device),
            "embedding_optimizer": opt_cls.__name__.lower()}


def _sharded_predict(dmp: nn.Module, tensors: Batch, rank: int, world_size: int, batch_size: int,
                     device: torch.device) -> np.ndarray:
    """Click probabilities for every row of `tensors`, each rank scoring its slice through the sharded model.

    Slices are padded to the same length (repeats of row 0) so all ranks run the same number of equally sized
    forwards (each one all-to-alls embeddings); the padding is dropped after the all-gather.
    """
    import torch.distributed as dist

    n = _rows(tensors)
    bounds = [shard_bounds(n, r, world_size) for r in range(world_size)]
    longest = max(hi - lo for lo, hi in bounds)
    lo, hi = bounds[rank]
    idx = torch.cat([torch.arange(lo, hi), torch.zeros(longest - (hi - lo), dtype=torch.int64)])
    dmp.eval()
    parts = []
    with torch.no_grad():
        for batch in InMemoryBatches(_take(tensors, idx), batch_size, shuffle=False):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            parts.append(torch.sigmoid(dmp(batch).float()))
    dmp.train()
    mine = torch.cat(parts) if parts else torch.zeros(0, device=device)
    gathered = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine)
    return torch.cat([g[: b - a] for g, (a, b) in zip(gathered, bounds, strict=True)]).cpu().numpy()


def _full_state_dict(dmp: nn.Module, rank: int, device: torch.device) -> dict[str, Tensor] | None:
    """The unsharded state dict on rank 0 (None elsewhere); every rank must call it (it gathers shards)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    full: dict[str, Tensor] = {}
    for k, v in dmp.state_dict().items():
        if isinstance(v, ShardedTensor):
            out = torch.empty(v.size(), dtype=v.dtype, device=device) if rank == 0 else None
            v.gather(dst=0, out=out)
            if out is not None:
                full[k] = out.cpu()
        elif isinstance(v, DTensor):
            full[k] = v.full_tensor().cpu()
        else:
            full[k] = v.detach().cpu().clone()
    return full if rank == 0 else None


def _sharding_summary(dmp: Any, rank: int, world_size: int) -> dict[str, Any]:
    """The plan (per table: sharding type, kernel, ranks) and which shard of each table every rank held."""
    import torch.distributed as dist
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    plan = {f"{module}.{table}": {"sharding_type": ps.sharding_type, "compute_kernel": ps.compute_kernel,
                                  "ranks": list(ps.ranks or [])}
            for module, tables in dmp.plan.plan.items() for table, ps in tables.items()}
    local = {k: [[*s.metadata.shard_offsets, *s.metadata.shard_sizes] for s in v.local_shards()]
             for k, v in dmp.state_dict().items() if isinstance(v, ShardedTensor)}
    held: list[Any] = [None] * world_size
    dist.all_gather_object(held, local)
    return {"plan": plan, "local_shards": {str(r): h for r, h in enumerate(held)}}


@torch.no_grad()
def _evaluate(model: nn.Module, tensors: Batch, batch_size: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    model.eval()
    probs = torch.cat([torch.sigmoid(model(b).float()) for b in InMemoryBatches(tensors, batch_size, shuffle=False)])
    labels = tensors[LABEL].numpy()
    p = probs.numpy()
    return ctr_metrics(labels, p, tensors[GROUP].numpy() if GROUP in tensors else None), {"probs": p, "labels": labels}


def _sharded_finish(cfg: TrainConfig, job: dict[str, Any], summary: dict[str, Any]) -> None:
    """Rank 0, after the process group is gone: the gathered best weights in a plain TorchRec model -> whole-split
    valid/test metrics -> bundle -> MLflow; writes metrics.json for the parent process."""
    prepared = Path(job["prepared"])
    root = Path(job["root"])
    spec = FeatureSpec.load(prepared / "spec")
    layout = FeatureLayout.from_spec(spec)
    params = {**cfg.model_params.get(cfg.model, {}), "embedding_backend": "torchrec"}
    model = build_model(cfg.model, layout, model_config(cfg.model, params))
    best = root / "checkpoints" / "best.pt"
    model.load_state_dict(torch.load(best, map_location="cpu"))
    eval_bs = cfg.eval_batch_size or cfg.batch_size * 4
    valid_metrics, _ = _evaluate(model, load_split(prepared / "valid", layout), eval_bs)
    test = load_split(prepared / "test", layout)
    test_metrics, test_preds = _evaluate(model, test, eval_bs)
    example = {k: v[:8] for k, v in test.items()}
    bundle = save_bundle(root / "bundle", model_name=cfg.model, model=model, spec_dir=prepared / "spec",
                         metrics={f"test/{k}": v for k, v in test_metrics.items()}, example=example)
    lineage = {LINEAGE_DATA: hash_prepared(prepared), LINEAGE_SPEC: spec.fingerprint()}
    log_training_run(job["run_id"], job["uri"], config=job["config_doc"], lineage=lineage, test_metrics=test_metrics,
                     history=summary["history"], predictions=test_preds,
                     bundle_dir=bundle if cfg.tracking.log_model else None)
    world_size = len(summary["sharding"]["local_shards"])
    result = {
        "model": cfg.model,
        "epochs_run": summary["epochs_run"],
        "global_steps": summary["global_steps"],
        "best_checkpoint": str(best),
        "valid": valid_metrics,
        "test": test_metrics,
        "bundle": str(bundle),
        "lineage": lineage,
        "device": summary["device"],
        "precision": "32-true",
        "history": summary["history"],
        "distributed": {"mode": "torchrec_sharded", "world_size": world_size, "backend": job["backend"],
                        "best_epoch": summary["best_epoch"], "embedding_optimizer": summary["embedding_optimizer"],
                        "sharded_valid": summary["sharded_valid"], **summary["sharding"]},
    }
    (root / "metrics.json").write_text(json.dumps(result, indent=2, default=float))
