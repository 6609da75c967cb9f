"""`scripts.bench.train`'s parts: the prepared data, the Lightning contender (`CTRTask` fitted by the project's
Trainer), the loaders alone, inference, the bf16 quality guard, the profiler view and the embedding optimizer step
alone."""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from feature_store.config import CategoricalFeature, FeaturesConfig, NumericFeature
from feature_store.readers.synthetic import generate_criteo_schema
from feature_store.spec import FeatureSpec
from feature_store.spec_fit import SpecFitter
from scripts.bench.common import load1, logger
from scripts.bench.ctr import EMB_DIM, TaskSteps, build_ours, cycle, job_precision, predict, runtime
from scripts.bench.timing import Run
from training.common.config import OptimConfig
from training.common.data import InMemoryBatches, StreamingBatches
from training.common.embedding import SparseEmbedding
from training.common.features import LABEL, FeatureLayout
from training.common.metrics import auc, logloss
from training.common.trainer import build_trainer
from training.ranking.task import CTRTask

N_DENSE, N_SPARSE = 13, 26
QUALITY_MODELS = ("dcnv2", "deepfm")
DATA_VERSION = 1  # bump when the prepared data changes for unchanged arguments
log = logger("bench_train")


@dataclass
class Prepared:
    """The prepared benchmark data: spec, layout and the Parquet shard folders of both splits."""

    root: Path
    spec: FeatureSpec
    layout: FeatureLayout
    train_dir: Path
    test_dir: Path
    n_train: int
    n_test: int


def _features_config() -> FeaturesConfig:
    return FeaturesConfig(
        label="label",
        categorical=[CategoricalFeature(name=f"C{i}") for i in range(1, N_SPARSE + 1)],
        numeric=[NumericFeature(name=f"I{j}", transform="log1p_standardize") for j in range(1, N_DENSE + 1)],
    )


def _write_shards(table: pa.Table, directory: Path, shard_rows: int, row_group: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.parquet"):
        old.unlink()
    for i, lo in enumerate(range(0, table.num_rows, shard_rows)):
        pq.write_table(table.slice(lo, shard_rows), directory / f"part-{i:05d}.parquet", row_group_size=row_group)


def prepare(work: Path, rows: int, n_ids: int, seed: int) -> Prepared:
    """Generate, split 90/10, fit the spec on train, transform, write shards; reused when the arguments match."""
    key = {"rows": rows, "n_ids": n_ids, "seed": seed, "version": DATA_VERSION}
    manifest = work / "manifest.json"
    train_dir, test_dir, spec_dir = work / "prepared" / "train", work / "prepared" / "test", work / "prepared" / "spec"
    if not (manifest.is_file() and json.loads(manifest.read_text()).get("key") == key):
        log(f"preparing data: {rows:,} rows, ids up to {n_ids:,} per field (not timed)")
        table = generate_criteo_schema(rows, n_ids=n_ids, seed=seed)
        n_test = max(rows // 10, 1)
        train, test = table.slice(0, rows - n_test), table.slice(rows - n_test)
        spec = SpecFitter(_features_config(), seed=seed).fit(train)
        spec.save(spec_dir)
        _write_shards(spec.transform(train), train_dir, shard_rows=262_144, row_group=65_536)
        _write_shards(spec.transform(test), test_dir, shard_rows=262_144, row_group=65_536)
        manifest.write_text(json.dumps({"key": key, "train_rows": train.num_rows, "test_rows": test.num_rows}))
    meta = json.loads(manifest.read_text())
    spec = FeatureSpec.load(spec_dir)
    return Prepared(work, spec, FeatureLayout.from_spec(spec), train_dir, test_dir, meta["train_rows"],
                    meta["test_rows"])


def our_emb(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of every embedding layer of the model (the main one and e.g. DeepFM's width-1 tables)."""
    return [p for m in model.modules() if isinstance(m, SparseEmbedding) for p in m.parameters()]


def param_counts(model: nn.Module, emb: Sequence[nn.Parameter]) -> tuple[int, int]:
    emb_ids = {id(p) for p in emb}
    dense = sum(p.numel() for p in model.parameters() if id(p) not in emb_ids)
    return dense, sum(p.numel() for p in emb)


def train_flops_per_sample(model: nn.Module) -> float:
    """Dense-layer FLOPs of one training sample: 6 x the multiply-adds of the Linear layers (forward, input and
    weight gradients), plus DLRM's pairwise dot products; elementwise ops and embeddings are not counted."""
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    if model.__class__.__name__ == "DLRM":
        f = getattr(model, "num_fields", 0) + 1
        macs += f * f * EMB_DIM
    return 6.0 * macs


def batches(train: dict[str, Tensor], args: argparse.Namespace) -> InMemoryBatches:
    return InMemoryBatches(train, args.batch_size, shuffle=True, seed=args.seed, drop_last=True)


def task_steps(name: str, prep: Prepared, train: dict[str, Tensor], args: argparse.Namespace, backend: str,
               bf16: bool) -> TaskSteps:
    """A fresh `name` model trained one `CTRTask` step per call over shuffled batches of the train split."""
    return TaskSteps(build_ours(name, prep.layout, backend), cycle(batches(train, args)).__next__, bf16=bf16)


def run_lightning(run: Run, prep: Prepared, train: dict[str, Tensor], args: argparse.Namespace) -> None:
    """`CTRTask` fitted by the project's Trainer (`build_trainer`) as `recforge train ctr` runs it by default: the
    precision of `train.runtime.precision: auto` and `OptimConfig().grad_clip`; no logger, checkpoints or validation."""

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[tuple[float, float]] = []

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.ends.append((time.perf_counter(), time.process_time()))

    model = build_ours(run.model, prep.layout, run.backend)
    run.dense_params, run.emb_params = param_counts(model, our_emb(model))
    clock = StepClock()
    trainer = build_trainer(runtime(accelerator="cpu", devices=1), precision=job_precision(), max_epochs=-1,
                            max_steps=args.warmup + args.steps, callbacks=[clock],
                            grad_clip=OptimConfig().grad_clip, validate_in_loop=False, progress_display=False)
    run.load.append(load1())
    trainer.fit(CTRTask(model, OptimConfig()), train_dataloaders=batches(train, args))
    (t0, c0), (t1, c1) = clock.ends[args.warmup - 1], clock.ends[-1]
    timed = len(clock.ends) - args.warmup
    run.record(timed * args.batch_size / (t1 - t0), (c1 - c0) / (t1 - t0))


def bench_loaders(prep: Prepared, train: dict[str, Tensor], args: argparse.Namespace) -> dict[str, float]:
    """Batches/s of each loader alone (best of `--repeat`)."""
    out: dict[str, list[float]] = {"InMemoryBatches (shuffled gathers)": [],
                                   "StreamingBatches (Parquet shards -> tensors, shuffle buffer)": []}
    for _ in range(args.repeat):
        it = cycle(batches(train, args))
        n = args.loader_batches
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        out["InMemoryBatches (shuffled gathers)"].append(n / (time.perf_counter() - t0))
        stream = StreamingBatches(prep.train_dir, prep.layout, args.batch_size, shuffle=True, seed=args.seed)
        t0 = time.perf_counter()
        count = sum(1 for _ in stream)
        out["StreamingBatches (Parquet shards -> tensors, shuffle buffer)"].append(count / (time.perf_counter() - t0))
    return {k: max(v) for k, v in out.items()}


def best_rate(repeat: int, run: Callable[[], int]) -> float:
    """Best items/s of `repeat` calls of `run` (each returns how many items it handled)."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = run()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def bench_inference_ours(name: str, prep: Prepared, test: dict[str, Tensor], args: argparse.Namespace,
                         backend: str, bf16: bool) -> float:
    """Best predictions/s of `--repeat` passes over the test split (after one warm-up batch)."""
    model = build_ours(name, prep.layout, backend).eval()
    test_batches = InMemoryBatches(test, args.eval_batch, shuffle=False)
    predict(model, [next(iter(test_batches))], bf16)  # warm-up
    return best_rate(args.repeat, lambda: predict(model, test_batches, bf16).shape[0])


def quality_guard(prep: Prepared, train: dict[str, Tensor], test: dict[str, Tensor], args: argparse.Namespace,
                  backend: str) -> list[dict[str, Any]]:
    """Per model: fp32 and bf16 trained from the same initial weights over the same `--quality-steps` batches
    (capped at two epochs), then scored on the test split in the precision each was trained in (as `trainer.test`
    does)."""
    labels = test[LABEL]
    steps = min(args.quality_steps, max(2 * prep.n_train // args.batch_size, 1))  # at most two epochs
    out: list[dict[str, Any]] = []
    for name in QUALITY_MODELS:
        row: dict[str, Any] = {"model": name, "steps": steps, "backend": backend}
        for precision in ("fp32", "bf16"):
            bf16 = precision == "bf16"
            step = task_steps(name, prep, train, args, backend, bf16)
            t0 = time.perf_counter()
            losses = torch.stack([step() for _ in range(steps)])
            train_s = time.perf_counter() - t0
            probs = predict(step.task.model, InMemoryBatches(test, args.eval_batch, shuffle=False), bf16)
            tail = losses[-max(len(losses) // 10, 1):]
            row[precision] = {"auc": auc(labels, probs), "logloss": logloss(labels, probs),
                              "train_loss_tail": float(tail.mean()), "train_s": train_s}
            log(f"quality {name} {precision}: test AUC {row[precision]['auc']:.4f} after {steps} steps "
                f"({train_s:.0f} s)")
            del step
            gc.collect()
        out.append(row)
    return out


_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("optimizer (Adam updates)", ("_foreach", "adam", "lerp", "addcmul", "addcdiv", "sqrt", "aten::div")),
    ("embedding lookup + backward", ("embedding", "index_select", "index_add", "index_put", "scatter",
                                     "_coalesce", "coalesce", "sparse", "gather", "unique")),
    ("zeroing / allocation of gradients", ("zero", "fill_", "empty", "new_zeros")),
    ("dense layers (matmul)", ("addmm", "mm", "bmm", "linear", "matmul")),
    ("copies and dtype casts (batch gather, autocast)", ("randperm", "copy_", "to", "cat", "stack")),
)


def categorize(op: str) -> str:
    name = op.lower()
    for cat, keys in _CATEGORIES:
        if any(k in name for k in keys):
            return cat
    return "other ops (elementwise, autograd glue)"


def profile_step(step: Callable[[], Any], n: int) -> dict[str, Any]:
    """Top ops by self CPU time over `n` steps (after the caller's warm-up), and shares by category."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    cats: dict[str, float] = {}
    for e in events:
        cats[categorize(e.key)] = cats.get(categorize(e.key), 0.0) + e.self_cpu_time_total
    return {
        "wall_ms_per_step": 1000 * wall / n,
        "top": [{"op": e.key, "ms_per_step": e.self_cpu_time_total / 1000 / n, "share": e.self_cpu_time_total / total}
                for e in top],
        "categories": sorted(((k, v / total) for k, v in cats.items()), key=lambda kv: -kv[1]),
    }


def adam_layouts(default_backend: str) -> list[tuple[str, bool, bool]]:
    """(label, one table per field, fused) of the embedding layouts and Adams `bench_adam` times."""
    per_field_default = default_backend == "torchrec"
    rows = [("one table, torch.optim.Adam default (for-loop)", False, False),
            ("one table per field, torch.optim.Adam default (for-loop; DeepCTR-Torch)", True, False),
            ("one table, Adam(fused=True) (CTRTask's, fused backend)", False, True),
            ("one table per field, Adam(fused=True) (CTRTask's, TorchRec EBC backend)", True, True)]
    return [(f"{label}, training defaults" if fused and per_field == per_field_default else label, per_field, fused)
            for label, per_field, fused in rows]


def bench_adam(layout: FeatureLayout, repeat: int, default_backend: str) -> dict[str, float]:
    """CPU ms of one Adam step over the embedding parameters alone (dim 16), per layout and Adam variant."""
    cards = [f.cardinality for f in layout.sparse]
    out: dict[str, float] = {}
    for name, per_field, fused in adam_layouts(default_backend):
        shapes = [(c, EMB_DIM) for c in cards] if per_field else [(sum(cards), EMB_DIM)]
        params = [nn.Parameter(torch.randn(*shape) * 0.01) for shape in shapes]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = torch.optim.Adam(params, lr=1e-3, fused=fused)
        opt.step()
        best = float("inf")
        for _ in range(repeat):
            c0 = time.process_time()
            for _ in range(5):
                opt.step()
            best = min(best, 1000 * (time.process_time() - c0) / 5)
        out[name] = best
        del opt, params
        gc.collect()
    return out
