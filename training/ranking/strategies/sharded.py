"""A ranking job with TorchRec-sharded embedding tables (`train.sharded`) over local processes.

`world_size` processes (gloo on CPU, nccl on CUDA) wrap the model in TorchRec's `DistributedModelParallel`. The
planner places whole tables on ranks (table-wise) or splits their rows (row-wise: CUDA only in TorchRec 1.8);
embeddings are updated in the backward pass by FBGEMM's fused optimizer, dense layers by DDP + Adam, under the same
learning-rate schedule as the other strategies (`training.common.optim.lr_factor`). Lightning does not drive a
`DistributedModelParallel` with a fused backward optimizer, so the epoch loop is written here; validation runs
through the sharded model (each rank scores a slice, predictions are all-gathered) and selects the best epoch, whose
full, unsharded state dict rank 0 gathers to `checkpoints/best.pt`. The driver then loads it into a plain
`embedding_backend: torchrec` model and evaluates it like every other strategy.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from feature_store.layout import StageLayout
from feature_store.raycluster import free_port
from feature_store.spec import FeatureSpec
from training.common.data import Batch, InMemoryBatches, RankStreamingBatches, load_split
from training.common.features import GROUP, LABEL, FeatureLayout
from training.common.metrics import ctr_metrics
from training.common.optim import lr_factor
from training.common.tracking import TrackedRun, log_epochs
from training.ranking.config import TrainConfig
from training.ranking.evaluate import Fitted, evaluate_model, split_rows
from training.ranking.models import build_model, model_config
from training.ranking.strategies.shardable import (
    build_shardable_model,
    fused_embedding_optimizer,
    shardable_embeddings,
)

SUMMARY = "sharded_summary.json"


def world_size_of(cfg: TrainConfig) -> int:
    devices = cfg.runtime.devices
    return devices if isinstance(devices, int) else 2


def resuming(cfg: TrainConfig, stage: StageLayout) -> bool:
    return False


def resume_point(cfg: TrainConfig, stage: StageLayout) -> dict[str, Any] | None:
    return None  # sharded jobs refuse train.resume (fit says why)


def check(cfg: TrainConfig, prepared: Path, world_size: int) -> None:
    """Everything that would fail in every rank, checked once before any process starts."""
    if world_size < 1:
        raise ValueError(f"train.runtime.devices must be >= 1 for sharded training (got {world_size})")
    use_cuda = cfg.runtime.use_cuda
    if use_cuda and torch.cuda.device_count() < world_size:
        raise ValueError(f"sharded training over {world_size} ranks needs {world_size} CUDA devices; this machine "
                         f"has {torch.cuda.device_count()}. Lower train.runtime.devices or set "
                         f"train.runtime.accelerator: cpu")
    if cfg.resume:
        raise ValueError("train.resume is not supported with train.sharded (sharded optimizer state is not "
                         "checkpointed); start a fresh job, or resume a non-sharded one")
    if cfg.optim.embedding_l2 > 0:
        raise ValueError("train.optim.embedding_l2 is not supported with train.sharded (the fused optimizer "
                         "updates the tables inside the backward); set it to 0")
    fused_embedding_optimizer(cfg.optim, "cuda" if use_cuda else "cpu")
    layout = FeatureLayout.from_spec(FeatureSpec.load(prepared / "spec"))
    build_shardable_model(cfg.model, layout, cfg.model_params.get(cfg.model, {}), device="meta")
    if split_rows(prepared, "valid") < world_size:
        raise ValueError(f"{prepared / 'valid'}: fewer rows than the {world_size} ranks; enlarge the valid split")


def fit(cfg: TrainConfig, prepared: Path, stage: StageLayout, run: TrackedRun, *,
        world_size: int | None = None, **_: Any) -> Fitted:
    """Spawn the ranks, let them train, then evaluate rank 0's gathered best weights here."""
    import torch.multiprocessing as mp

    world_size = world_size or world_size_of(cfg)
    check(cfg, prepared, world_size)
    stage.checkpoints.mkdir(parents=True, exist_ok=True)
    backend = "nccl" if cfg.runtime.use_cuda else "gloo"
    job = {"train": cfg.model_dump(mode="json"), "prepared": str(prepared.resolve()), "root": str(stage.root.resolve()),
           "backend": backend, "threads": cfg.runtime.num_threads or max(1, (os.cpu_count() or 1) // world_size),
           "run": run.as_dict()}
    summary_path = stage.root / SUMMARY
    summary_path.unlink(missing_ok=True)
    mp.spawn(_worker, args=(world_size, free_port(), job), nprocs=world_size, join=True)
    summary = json.loads(summary_path.read_text())
    layout = FeatureLayout.from_spec(FeatureSpec.load(prepared / "spec"))
    params = {**cfg.model_params.get(cfg.model, {}), "embedding_backend": "torchrec"}
    model = build_model(cfg.model, layout, model_config(cfg.model, params))
    best = stage.checkpoints / "best.pt"
    model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
    scored = evaluate_model(model, cfg, prepared, "32-true")
    return Fitted(model=model, valid=scored["valid"], test=scored["test"], predictions=scored["predictions"],
                  example=scored["example"], epochs_run=summary["epochs_run"], global_steps=summary["global_steps"],
                  device=summary["device"], precision="32-true", history=summary["history"],
                  best_checkpoint=str(best),
                  distributed={"mode": "torchrec_sharded", "world_size": world_size, "backend": backend,
                               "best_epoch": summary["best_epoch"],
                               "embedding_optimizer": summary["embedding_optimizer"],
                               "sharded_valid": summary["sharded_valid"], **summary["sharding"]})


def _worker(rank: int, world_size: int, port: int, job: dict[str, Any]) -> None:
    """One rank (a `torch.multiprocessing.spawn` target); rank 0 writes the summary for the driver."""
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
        (Path(job["root"]) / SUMMARY).write_text(json.dumps(summary, default=float))


def _rows(tensors: Batch) -> int:
    return int(next(iter(tensors.values())).shape[0])


def _take(tensors: Batch, idx: Tensor) -> Batch:
    return {k: v.index_select(0, idx.to(v.device)) for k, v in tensors.items()}


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous rows [lo, hi) of n that `rank` evaluates; sizes differ by at most one, none empty if n >= w."""
    return rank * n // world_size, (rank + 1) * n // world_size


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

    torch.manual_seed(cfg.runtime.seed)
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
                                            world_size=world_size, seed=cfg.runtime.seed)
    else:
        batches = InMemoryBatches(load_split(prepared / "train", layout), cfg.batch_size, shuffle=True,
                                  seed=cfg.runtime.seed, rank=rank, world_size=world_size)
    per_epoch = max(len(batches), 1)
    total = cfg.max_steps if cfg.max_steps > 0 else per_epoch * cfg.max_epochs
    sched = None
    if o.warmup_steps or o.decay != "none":
        sched = torch.optim.lr_scheduler.LambdaLR(dense_opt, lr_factor(o, per_epoch, total))
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
        groups = valid[GROUP].numpy() if GROUP in valid and cfg.gauc is not False else None
        metrics = ctr_metrics(valid[LABEL].numpy(), probs, groups)
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
            log_epochs(TrackedRun(**job["run"]), [row])
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
