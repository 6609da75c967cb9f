"""Benchmark of CTR training, loading and scoring throughput: RecForge against DeepCTR-Torch, in one run.

Data: `generate_criteo_schema` rows (13 numeric, 26 Zipf-distributed categorical fields), split 90 / 10 into
train and test, a `FeatureSpec` fitted on train (C1..C26 vocabularies, I1..I13 log1p_standardize), both splits
transformed and written as Parquet shards under the work directory. None of this is timed.

Timed, with `torch.set_num_threads(--threads)`, contenders interleaved (ours, peer, ours, ...), the order
reversed every other round:

- RecForge: DCNv2 (fused and TorchRec embedding backends), DLRM and DeepFM built by `build_model`, batches from
  `InMemoryBatches` over `load_split` tensors (the gather is inside the timed loop), the optimizer of
  `CTRTask.configure_optimizers` (Adam dense + Adam embeddings) and BCE-with-logits; `--warmup` steps, then
  `--steps` timed steps. The same DCNv2 also through the real Lightning path (`CTRTask` + `pl.Trainer`), and
  two alternatives measured for the record: the same Adams with `fused=True` (a proposed CTRTask change) and
  sparse embedding gradients with `SparseAdam` (an experiment of this script).
- DeepCTR-Torch: DCN (parameterization "matrix", i.e. DCN-M = DCNv2) and DeepFM with the same sizes, fed the
  same transformed columns, trained with their own `model.fit(batch_size, epochs=1)`: once over `--warmup`
  batches, then over `--steps` batches timed from their `on_epoch_begin` to their `on_epoch_end` callback.
- Loaders alone (InMemoryBatches, StreamingBatches from the shards) against the models' steps/s; inference
  (eval mode, `torch.no_grad`, batch `--eval-batch`) over the test split; the Adam step over the embedding
  parameters alone; a `torch.profiler` view of a few steps of each model.

Every timed run also records the process's CPU time: samples per CPU-second move much less than samples/s when
other jobs share the machine (with `--threads 1`; with more threads OpenMP spin-waits count as CPU time).
Prints a table, writes `<work>/results.json` and rewrites its own section of docs/benchmarks.md.

    .venv/bin/python scripts/bench_train.py                                     # 2M rows, the documented run
    .venv/bin/python scripts/bench_train.py --rows 200000 --steps 20 --warmup 5 --no-doc   # quick look
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from feature_store.config import CategoricalFeature, FeaturesConfig, NumericFeature
from feature_store.spec import FeatureSpec, SpecFitter
from feature_store.synthetic import generate_criteo_schema
from training.config import OptimConfig
from training.data import InMemoryBatches, StreamingBatches, load_split
from training.embedding import FusedEmbedding, SparseEmbedding, torchrec_available
from training.features import LABEL, FeatureLayout
from training.models import build_model
from training.task import CombinedOptimizer, CTRTask

DOC_START = "<!-- bench_train:start -->"
DOC_END = "<!-- bench_train:end -->"
REPO = Path(__file__).resolve().parents[1]
SECTION_TITLE = "## CTR training throughput (bench_train.py)"
DOC_HEADER = "# Benchmarks\n\nEach `scripts/bench_*.py` rewrites only its own section (between its marker comments).\n"
N_DENSE, N_SPARSE = 13, 26
EMB_DIM = 16
DCN_PARAMS: dict[str, Any] = {"embedding_dim": EMB_DIM, "cross_layers": 3, "mlp": [256, 128], "structure": "parallel"}
DLRM_PARAMS: dict[str, Any] = {"embedding_dim": EMB_DIM, "bottom_mlp": [64], "top_mlp": [256, 128]}
DEEPFM_PARAMS: dict[str, Any] = {"embedding_dim": EMB_DIM, "mlp": [256, 128]}
PARAMS = {"dcnv2": DCN_PARAMS, "dlrm": DLRM_PARAMS, "deepfm": DEEPFM_PARAMS}
DATA_VERSION = 1  # bump when the prepared data changes for unchanged arguments


# ------------------------------------------------------------------------------------------------ data


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


def features_config() -> FeaturesConfig:
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
        spec = SpecFitter(features_config(), seed=seed).fit(train)
        spec.save(spec_dir)
        _write_shards(spec.transform(train), train_dir, shard_rows=262_144, row_group=65_536)
        _write_shards(spec.transform(test), test_dir, shard_rows=262_144, row_group=65_536)
        manifest.write_text(json.dumps({"key": key, "train_rows": train.num_rows, "test_rows": test.num_rows}))
    meta = json.loads(manifest.read_text())
    spec = FeatureSpec.load(spec_dir)
    return Prepared(work, spec, FeatureLayout.from_spec(spec), train_dir, test_dir, meta["train_rows"],
                    meta["test_rows"])


# ------------------------------------------------------------------------------------------ measurement


def log(msg: str) -> None:
    print(f"[bench_train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load1() -> float:
    return os.getloadavg()[0]


@dataclass
class Run:
    """One contender's figures over the rounds (samples/s per round; the load average when each started)."""

    name: str
    family: str  # "ours" | "peer" | "lightning"
    model: str
    samples_per_s: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    cores_used: list[float] = field(default_factory=list)  # process CPU seconds / wall seconds while timed
    dense_params: int = 0
    emb_params: int = 0
    final_loss: float | None = None

    def record(self, samples_per_s: float, cores_used: float) -> None:
        self.samples_per_s.append(samples_per_s)
        self.cores_used.append(cores_used)

    @property
    def best_cores(self) -> float:
        """Cores the process kept busy in the fastest round."""
        return self.cores_used[self.samples_per_s.index(self.best)] if self.samples_per_s else float("nan")

    @property
    def per_cpu(self) -> float:
        """Best samples per process CPU-second: steadier than samples/s when other jobs take the cores."""
        return max((s / c for s, c in zip(self.samples_per_s, self.cores_used, strict=True) if c > 0),
                   default=float("nan"))

    @property
    def best(self) -> float:
        return max(self.samples_per_s) if self.samples_per_s else float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.samples_per_s) if self.samples_per_s else float("nan")


def _cycle(batches: InMemoryBatches) -> Iterator[dict[str, Tensor]]:
    while True:
        yield from batches


def _our_emb(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of every embedding layer of the model (the main one and e.g. DeepFM's width-1 tables)."""
    return [p for m in model.modules() if isinstance(m, SparseEmbedding) for p in m.parameters()]


def _param_counts(model: nn.Module, emb: Sequence[nn.Parameter]) -> tuple[int, int]:
    emb_ids = {id(p) for p in emb}
    dense = sum(p.numel() for p in model.parameters() if id(p) not in emb_ids)
    return dense, sum(p.numel() for p in emb)


def build_ours(name: str, layout: FeatureLayout, backend: str, *, sparse_grad: bool = False) -> nn.Module:
    torch.manual_seed(0)
    params = {**PARAMS[name], "embedding_backend": backend}
    embedding = FusedEmbedding(layout, EMB_DIM, sparse_grad=True) if sparse_grad else None
    return build_model(name, layout, params, embedding=embedding)


def train_flops_per_sample(model: nn.Module) -> float:
    """Dense-layer FLOPs of one training sample: 6 x the multiply-adds of the Linear layers (forward, input and
    weight gradients), plus DLRM's pairwise dot products; elementwise ops and embeddings are not counted."""
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    if model.__class__.__name__ == "DLRM":
        f = getattr(model, "num_fields", 0) + 1
        macs += f * f * EMB_DIM
    return 6.0 * macs


def fused_adam(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The proposed optimizer: CTRTask's two Adams with torch's fused kernel (`fused=True`, CPU and CUDA): one pass
    over each tensor instead of several, which matters for a large single embedding table."""
    emb = _our_emb(model)
    emb_ids = {id(p) for p in emb}
    dense = [p for p in model.parameters() if id(p) not in emb_ids]
    return CombinedOptimizer([torch.optim.Adam(dense, lr=cfg.dense_lr, fused=True),
                              torch.optim.Adam(emb, lr=cfg.embedding_lr, fused=True)])


def our_step_fn(model: nn.Module, optimizer: str, batches: InMemoryBatches) -> Callable[[], Tensor]:
    """One CTRTask-equivalent training step (batch gather included): BCE-with-logits and `optimizer`: "ctrtask"
    (`CTRTask.configure_optimizers()`: Adam dense + Adam embeddings), "fused_adam" (the same with `fused=True`) or
    "sparse_adam" (dense Adam + `torch.optim.SparseAdam` on a table built with sparse gradients; an experiment of
    this script, not a config option)."""
    cfg = OptimConfig()
    task = CTRTask(model, cfg)
    if optimizer == "sparse_adam":
        emb = {id(p) for p in model.embedding.parameters()}
        opt = CombinedOptimizer([torch.optim.Adam([p for p in model.parameters() if id(p) not in emb], lr=cfg.dense_lr),
                                 torch.optim.SparseAdam(list(model.embedding.parameters()), lr=cfg.embedding_lr)])
    else:
        opt = fused_adam(model, cfg) if optimizer == "fused_adam" else task.configure_optimizers()
    loss_fn = task.loss_fn
    it = _cycle(batches)
    model.train()

    def step() -> Tensor:
        batch = next(it)
        loss = loss_fn(model(batch).float(), batch[LABEL])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def time_steps(step: Callable[[], Tensor], warmup: int, steps: int) -> tuple[float, float, float]:
    """Wall seconds and process CPU seconds of `steps` steps after `warmup` steps; mean loss of the timed steps."""
    for _ in range(warmup):
        step()
    losses = []
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        losses.append(step())
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return elapsed, cpu, float(torch.stack(losses).mean())


def run_ours(run: Run, prep: Prepared, train: dict[str, Tensor], args: argparse.Namespace, backend: str,
             optimizer: str = "ctrtask") -> None:
    model = build_ours(run.model, prep.layout, backend, sparse_grad=optimizer == "sparse_adam")
    run.dense_params, run.emb_params = _param_counts(model, _our_emb(model))
    batches = InMemoryBatches(train, args.batch_size, shuffle=True, seed=args.seed, drop_last=True)
    run.load.append(load1())
    elapsed, cpu, loss = time_steps(our_step_fn(model, optimizer, batches), args.warmup, args.steps)
    run.record(args.steps * args.batch_size / elapsed, cpu / elapsed)
    run.final_loss = loss


def run_lightning(run: Run, prep: Prepared, train: dict[str, Tensor], args: argparse.Namespace,
                  clip: float | None) -> None:
    import pytorch_lightning as pl

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[tuple[float, float]] = []

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.ends.append((time.perf_counter(), time.process_time()))

    model = build_ours(run.model, prep.layout, "fused")
    run.dense_params, run.emb_params = _param_counts(model, _our_emb(model))
    task = CTRTask(model, OptimConfig())
    clock = StepClock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=args.warmup + args.steps, max_epochs=-1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         gradient_clip_val=clip, callbacks=[clock], deterministic=False)
    batches = InMemoryBatches(train, args.batch_size, shuffle=True, seed=args.seed, drop_last=True)
    run.load.append(load1())
    trainer.fit(task, train_dataloaders=batches)
    (t0, c0), (t1, c1) = clock.ends[args.warmup - 1], clock.ends[-1]
    timed = len(clock.ends) - args.warmup
    run.record(timed * args.batch_size / (t1 - t0), (c1 - c0) / (t1 - t0))


# ---------------------------------------------------------------------------------------------- the peer


def peer_columns(prep: Prepared, *, linear: bool) -> tuple[list[Any], list[Any]]:
    from deepctr_torch.inputs import DenseFeat, SparseFeat

    sparse = [SparseFeat(f.name, vocabulary_size=f.cardinality, embedding_dim=EMB_DIM) for f in prep.layout.sparse]
    dense = [DenseFeat(name, 1) for name in prep.layout.dense_names]
    return (sparse + dense if linear else []), sparse + dense


def peer_inputs(prep: Prepared, directory: Path, rows: int | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Our transformed columns as their input dict; all float32 (ids < 2^24 are exact), which their fit casts to."""
    table = pa.concat_tables(pq.read_table(f) for f in sorted(directory.glob("*.parquet")))
    if rows is not None:
        table = table.slice(0, rows)
    names = [f.name for f in prep.layout.sparse] + list(prep.layout.dense_names)
    x = {n: table.column(n).to_numpy().astype(np.float32) for n in names}
    return x, table.column(LABEL).to_numpy().astype(np.float32)


def build_peer(kind: str, prep: Prepared) -> nn.Module:
    """DeepCTR-Torch models with our sizes; their L2 terms set to 0 so the loss is plain BCE, like ours."""
    with contextlib.redirect_stdout(io.StringIO()):
        from deepctr_torch.models import DCN, DeepFM
    if kind == "dcn":
        linear, dnn = peer_columns(prep, linear=False)  # our DCNv2 has no LR term
        model = DCN(linear, dnn, cross_num=DCN_PARAMS["cross_layers"], cross_parameterization="matrix",
                    dnn_hidden_units=tuple(DCN_PARAMS["mlp"]), l2_reg_linear=0, l2_reg_embedding=0, l2_reg_cross=0,
                    l2_reg_dnn=0, device="cpu", seed=0)
    else:
        linear, dnn = peer_columns(prep, linear=True)
        model = DeepFM(linear, dnn, dnn_hidden_units=tuple(DEEPFM_PARAMS["mlp"]), l2_reg_linear=0,
                       l2_reg_embedding=0, l2_reg_dnn=0, device="cpu", seed=0)
    model.compile("adam", "binary_crossentropy")
    return model


def _peer_emb(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if "embedding_dict" in n]


def run_peer(run: Run, prep: Prepared, x: dict[str, np.ndarray], y: np.ndarray, args: argparse.Namespace) -> None:
    """Their `fit` twice on one model (its optimizer state persists): a warm-up epoch of `--warmup` batches, then
    an epoch of `--steps` batches timed from their `on_epoch_begin` to their `on_epoch_end` callback."""
    from deepctr_torch.callbacks import Callback

    class EpochClock(Callback):
        def __init__(self) -> None:
            super().__init__()
            self.begin = self.end = (0.0, 0.0)

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.begin = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.end = (time.perf_counter(), time.process_time())

    model = build_peer(run.model, prep)
    run.dense_params, run.emb_params = _param_counts(model, _peer_emb(model))
    warm_rows = min(args.warmup * args.batch_size, len(y))
    timed_rows = min(args.steps * args.batch_size, len(y))
    clock = EpochClock()
    with contextlib.redirect_stdout(io.StringIO()):
        model.fit({k: v[:warm_rows] for k, v in x.items()}, y[:warm_rows], batch_size=args.batch_size, epochs=1,
                  verbose=0, shuffle=True)
        run.load.append(load1())
        history = model.fit({k: v[:timed_rows] for k, v in x.items()}, y[:timed_rows], batch_size=args.batch_size,
                            epochs=1, verbose=0, shuffle=True, callbacks=[clock])
    wall = clock.end[0] - clock.begin[0]
    run.record(timed_rows / wall, (clock.end[1] - clock.begin[1]) / wall)
    run.final_loss = float(history.history["loss"][-1])


# ------------------------------------------------------------------------------------ loaders, inference


def bench_loaders(prep: Prepared, train: dict[str, Tensor], args: argparse.Namespace) -> dict[str, float]:
    """Batches/s of each loader alone (best of `--repeat`)."""
    out: dict[str, list[float]] = {"InMemoryBatches (shuffled gathers)": [],
                                   "StreamingBatches (Parquet shards -> tensors, shuffle buffer)": []}
    for _ in range(args.repeat):
        mem = InMemoryBatches(train, args.batch_size, shuffle=True, seed=args.seed, drop_last=True)
        it = _cycle(mem)
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


@torch.no_grad()
def bench_inference_ours(name: str, prep: Prepared, test: dict[str, Tensor], args: argparse.Namespace) -> float:
    model = build_ours(name, prep.layout, "fused").eval()
    batches = InMemoryBatches(test, args.eval_batch, shuffle=False)
    torch.sigmoid(model(next(iter(batches))))  # warm-up
    best = 0.0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        n = sum(int(torch.sigmoid(model(b)).shape[0]) for b in batches)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def bench_inference_peer(kind: str, prep: Prepared, x: dict[str, np.ndarray], args: argparse.Namespace) -> float:
    model = build_peer(kind, prep)
    model.predict(dict(x), batch_size=args.eval_batch)  # warm-up
    best = 0.0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        n = len(model.predict(dict(x), batch_size=args.eval_batch))
        best = max(best, n / (time.perf_counter() - t0))
    return best


# ---------------------------------------------------------------------------------------------- profile

_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("optimizer (Adam updates)", ("_foreach", "adam", "lerp", "addcmul", "addcdiv", "sqrt", "aten::div")),
    ("embedding lookup + backward", ("embedding", "index_select", "index_add", "index_put", "scatter",
                                     "_coalesce", "coalesce", "sparse", "gather", "unique")),
    ("zeroing / allocation of gradients", ("zero", "fill_", "empty", "new_zeros")),
    ("dense layers (matmul)", ("addmm", "mm", "bmm", "linear", "matmul")),
    ("data loading (batch gather, copies)", ("randperm", "copy_", "to", "cat", "stack")),
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


def bench_adam(layout: FeatureLayout, repeat: int) -> dict[str, float]:
    """CPU ms of one Adam step over the embedding parameters alone (dim 16), laid out three ways."""
    cards = [f.cardinality for f in layout.sparse]
    layouts = {
        "one table, torch.optim.Adam default (RecForge fused backend today)": [(sum(cards), EMB_DIM)],
        "one table per field, torch.optim.Adam default (DeepCTR-Torch, TorchRec EBC)": [(c, EMB_DIM) for c in cards],
        "one table, torch.optim.Adam(fused=True) (proposed)": [(sum(cards), EMB_DIM)],
    }
    out: dict[str, float] = {}
    for name, shapes in layouts.items():
        params = [nn.Parameter(torch.randn(*shape) * 0.01) for shape in shapes]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = torch.optim.Adam(params, lr=1e-3, fused="fused=True" in name)
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


def peer_step_fn(model: nn.Module, x: dict[str, np.ndarray], y: np.ndarray, batch: int) -> Callable[[], Tensor]:
    """The body of their fit loop (basemodel.py) without the DataLoader, for the profiler only."""
    feats = torch.from_numpy(np.stack([x[k] for k in model.feature_index], axis=1))
    labels = torch.from_numpy(y)
    state = {"i": 0}
    model.train()

    def step() -> Tensor:
        lo = state["i"] % max(len(labels) - batch, 1)
        state["i"] += batch
        xb, yb = feats[lo: lo + batch], labels[lo: lo + batch]
        pred = model(xb).squeeze(-1)
        model.optim.zero_grad()
        loss = model.loss_func(pred, yb, reduction="sum") + model.get_regularization_loss() + model.aux_loss
        loss.backward()
        model.optim.step()
        return loss.detach()

    return step


# ------------------------------------------------------------------------------------------------ report


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3 if hasattr(os, "sysconf") else 0.0

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "absent"

    return {"cpu": cpu, "cores": os.cpu_count(), "usable": len(os.sched_getaffinity(0)), "ram_gib": mem,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "versions": {p: version(p) for p in ("torch", "deepctr-torch", "torchrec", "fbgemm-gpu-cpu",
                                                 "pytorch-lightning", "pyarrow", "numpy")}}


def _flops_key(model: str) -> str:
    return {"dcn": "dcnv2"}.get(model, model)


def _goal(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _overhead(x: float) -> str:
    if x >= 0:
        return f"costs {100 * x:.0f}% of the plain loop's samples/s"
    return f"was {100 * -x:.0f}% faster than the plain loop (noise: no speed-up is expected)"


def summarize(ctx: dict[str, Any]) -> dict[str, Any]:
    runs: dict[str, Run] = ctx["runs"]
    r = {k: v.best for k, v in runs.items()}
    c = {k: v.per_cpu for k, v in runs.items()}
    s: dict[str, Any] = {
        "cpu_dcn_vs_peer": c["ours_dcnv2_fused"] / c["peer_dcn"],
        "cpu_deepfm_vs_peer": c["ours_deepfm_fused"] / c["peer_deepfm"],
        "cpu_dlrm_vs_peer_deepfm": c["ours_dlrm_fused"] / c["peer_deepfm"],
        "dcn_vs_peer": r["ours_dcnv2_fused"] / r["peer_dcn"],
        "deepfm_vs_peer": r["ours_deepfm_fused"] / r["peer_deepfm"],
        "dlrm_vs_peer_deepfm": r["ours_dlrm_fused"] / r["peer_deepfm"],
        "dlrm_vs_peer_dcn": r["ours_dlrm_fused"] / r["peer_dcn"],
    }
    if "ours_dcnv2_torchrec" in r:
        s["auto"] = "fused" if r["ours_dcnv2_fused"] >= r["ours_dcnv2_torchrec"] else "torchrec"
        s["auto_cpu"] = "fused" if c["ours_dcnv2_fused"] >= c["ours_dcnv2_torchrec"] else "torchrec"
    spreads = [max(v.samples_per_s) / min(v.samples_per_s) for v in runs.values() if min(v.samples_per_s) > 0]
    s["spread"] = max(spreads, default=1.0)
    s["lightning_overhead"] = 1 - r["lightning_dcnv2"] / r["ours_dcnv2_fused"]
    s["cpu_lightning_overhead"] = 1 - c["lightning_dcnv2"] / c["ours_dcnv2_fused"]
    s["cpu_lightning_clip_overhead"] = 1 - c["lightning_dcnv2_clip"] / c["ours_dcnv2_fused"]
    s["lightning_clip_overhead"] = 1 - r["lightning_dcnv2_clip"] / r["ours_dcnv2_fused"]
    bs = ctx["args"]["batch_size"]
    s["consumption"] = {m: r[f"ours_{m}_fused"] / bs for m in ("dcnv2", "dlrm", "deepfm")}
    fastest = max(s["consumption"].values())
    s["loader_ratio"] = {k: v / fastest for k, v in ctx["loaders"].items()}
    return s


def render_section(ctx: dict[str, Any]) -> str:
    a, m, runs, s = ctx["args"], ctx["machine"], ctx["runs"], ctx["summary"]
    v = m["versions"]
    loads = [x for run in runs.values() for x in run.load]
    lines = [
        SECTION_TITLE, "",
        "RecForge's CTR training step (model + columnar loader + optimizers) against DeepCTR-Torch with the same",
        "model sizes on the same prepared data, measured side by side in one process, contenders interleaved.",
        "",
        f"- Date: {ctx['date']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['usable']} usable), {m['ram_gib']:.1f} GiB RAM, {m['os']}; "
        f"Python {m['python']}, torch {v['torch']}, deepctr-torch {v['deepctr-torch']}, torchrec {v['torchrec']}, "
        f"pytorch-lightning {v['pytorch-lightning']}; `torch.set_num_threads({a['threads']})`",
        f"- Load average (1 min) when the contenders started: {min(loads):.2f} to {max(loads):.2f} "
        f"(the machine is shared: a load above {m['usable']} means other jobs competed for the cores)",
        f"- Command: `{ctx['command']}`",
        *([f"- **Caution**: other jobs loaded the machine during this run (load average up to {max(loads):.1f} on "
           f"{m['usable']} cores); the same contender's samples/s varied up to {s['spread']:.1f}x between rounds. "
           "Treat the wall-clock ratios as rough; the per CPU-second columns are steadier."]
          if max(loads) > m["usable"] else []),
        f"- Data: `generate_criteo_schema({a['rows']:,}, n_ids={a['n_ids']:,})` (13 numeric with ~5% nulls, "
        f"26 categorical Zipf ids), train {ctx['n_train']:,} / test {ctx['n_test']:,} rows; spec fitted on train: "
        f"C1..C26 vocabularies ({ctx['emb_rows']:,} embedding rows in all, {ctx['emb_rows'] * EMB_DIM:,} embedding "
        f"parameters at dim {EMB_DIM}), I1..I13 log1p_standardize; Parquet shards of 262,144 rows, row groups of "
        "65,536 (written before timing, so read from the page cache)",
        f"- Models: DCNv2 parallel, cross {DCN_PARAMS['cross_layers']} full-rank layers, MLP {DCN_PARAMS['mlp']}; "
        f"DLRM bottom {DLRM_PARAMS['bottom_mlp']}+[{EMB_DIM}], top {DLRM_PARAMS['top_mlp']}+[1]; DeepFM MLP "
        f"{DEEPFM_PARAMS['mlp']}; embedding dim {EMB_DIM}; batch {a['batch_size']:,}; Adam lr 1e-3 everywhere",
        "",
        "### Training samples/s",
        "",
        f"Rounds: {a['repeat']}, contenders interleaved (ours, peer, ours, ...), the order reversed every other round. "
        "'best' is the fastest round (the least disturbed by other load); 'vs peer' compares bests; 'cores busy' "
        "is the process's CPU seconds per wall second during the fastest round's timed steps (at most "
        f"{a['threads']}: less means it waited, for other jobs or on its own serial parts); 'samples per CPU-s' "
        "divides samples by the process's CPU time instead of wall time: with one thread it hardly moves with "
        "the machine's load (waiting costs no CPU time), with more threads spin-waiting counts in it.",
        "",
        "| contender | model | samples/s (best) | median | steps/s (best) | vs peer | dense GFLOP/s | cores busy | "
        "samples per CPU-s | vs peer | every round | dense / embedding params |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    peer_of = {"dcnv2": "peer_dcn", "deepfm": "peer_deepfm"}
    for run in runs.values():
        vs = vs_cpu = ""
        if run.family != "peer" and run.model in peer_of and peer_of[run.model] in runs:
            vs = _ratio(run.best, runs[peer_of[run.model]].best)
            vs_cpu = _ratio(run.per_cpu, runs[peer_of[run.model]].per_cpu)
        lines.append(
            f"| {run.name} | {run.model} | {_fmt(run.best)} | {_fmt(run.median)} | {run.best / a['batch_size']:.1f} | "
            f"{vs} | {run.best * ctx['flops'][_flops_key(run.model)] / 1e9:.0f} | {run.best_cores:.2f} | "
            f"{_fmt(run.per_cpu)} | {vs_cpu} | "
            f"{', '.join(_fmt(x) for x in run.samples_per_s)} | {run.dense_params:,} / {run.emb_params:,} |")
    lines += ["", "Goal (at least 2x the peer's samples/s on this CPU):", "",
              f"- DCNv2 (fused) vs DeepCTR-Torch DCN-M, same model: {s['dcn_vs_peer']:.2f}x, "
              f"{_goal(s['dcn_vs_peer'] >= 2)} (per CPU-second: {s['cpu_dcn_vs_peer']:.2f}x)",
              f"- DeepFM vs DeepCTR-Torch DeepFM, same model: {s['deepfm_vs_peer']:.2f}x, "
              f"{_goal(s['deepfm_vs_peer'] >= 2)} (per CPU-second: {s['cpu_deepfm_vs_peer']:.2f}x)",
              f"- DLRM (DeepCTR-Torch has no DLRM) vs their DeepFM: {s['dlrm_vs_peer_deepfm']:.2f}x, "
              f"{_goal(s['dlrm_vs_peer_deepfm'] >= 2)} (per CPU-second: {s['cpu_dlrm_vs_peer_deepfm']:.2f}x); "
              f"vs their DCN-M: {s['dlrm_vs_peer_dcn']:.2f}x"]
    if "auto" in s:
        fr, tr = runs["ours_dcnv2_fused"].best, runs["ours_dcnv2_torchrec"].best
        fc, tc = runs["ours_dcnv2_fused"].per_cpu, runs["ours_dcnv2_torchrec"].per_cpu
        head = (f"- Embedding backends (DCNv2): fused {_fmt(fr)}, TorchRec EBC {_fmt(tr)} samples/s "
                f"(per CPU-second {_fmt(fc)} and {_fmt(tc)}): ")
        if s["auto"] == s["auto_cpu"]:
            today = " (it does)." if s["auto"] == "fused" else " (`resolve_backend` picks fused today)."
            lines.append(head + f"**{s['auto']}** is faster ({_ratio(max(fr, tr), min(fr, tr))} in samples/s, "
                         f"{_ratio(max(fc, tc), min(fc, tc))} per CPU-second), so `auto` should pick {s['auto']} "
                         "on CPU" + today)
        else:
            lines.append(head + f"samples/s favours {s['auto']}, CPU time favours {s['auto_cpu']}: inconclusive "
                         "in this run, `auto` stays as it is.")
    lines.append(f"- Lightning (`CTRTask` + `pl.Trainer`, same DCNv2) {_overhead(s['lightning_overhead'])} "
                 f"without clipping; with `gradient_clip_val=10` (the default of `train.optim.grad_clip`, as "
                 f"`train.py` runs it; it also clips the full embedding gradient) it "
                 f"{_overhead(s['lightning_clip_overhead'])}. Per CPU-second: "
                 f"{100 * s['cpu_lightning_overhead']:+.0f}% and {100 * s['cpu_lightning_clip_overhead']:+.0f}% "
                 "(positive = slower than the plain loop).")
    fd, fm, fl = (runs[f"ours_{m}_fadam"] for m in ("dcnv2", "deepfm", "dlrm"))
    pd_, pf = runs["peer_dcn"], runs["peer_deepfm"]
    lines.append(f"- Proposed change, `Adam(fused=True)` for both of CTRTask's optimizers (the same dense Adam, "
                 "torch's single-pass fused kernel; see 'Where the time goes'): DCNv2 "
                 f"{_fmt(fd.best)} samples/s, {_ratio(fd.best, pd_.best)} the peer's DCN-M "
                 f"({_ratio(fd.per_cpu, pd_.per_cpu)} per CPU-second), {_goal(fd.best >= 2 * pd_.best)}; DeepFM "
                 f"{_fmt(fm.best)}, {_ratio(fm.best, pf.best)} their DeepFM ({_ratio(fm.per_cpu, pf.per_cpu)} per "
                 f"CPU-second), {_goal(fm.best >= 2 * pf.best)}; DLRM {_fmt(fl.best)}, {_ratio(fl.best, pf.best)} "
                 f"their DeepFM ({_ratio(fl.per_cpu, pf.per_cpu)} per CPU-second), {_goal(fl.best >= 2 * pf.best)}.")
    if "ours_dcnv2_torchrec_fadam" in runs:
        tf = runs["ours_dcnv2_torchrec_fadam"]
        lines.append(f"- With `Adam(fused=True)` the backends compare as: fused {_fmt(fd.best)} vs TorchRec "
                     f"{_fmt(tf.best)} samples/s (per CPU-second {_fmt(fd.per_cpu)} vs {_fmt(tf.per_cpu)}).")
    sp, spl = runs["ours_dcnv2_sparse"].best, runs["ours_dlrm_sparse"].best
    lines.append(f"- Sparse embedding gradients + `SparseAdam` (an experiment of this script, not a config option; "
                 "the fused table is built with `sparse_grad=True`): "
                 f"DCNv2 {_fmt(sp)} samples/s ({_ratio(sp, runs['ours_dcnv2_fused'].best)} dense Adam, "
                 f"{_ratio(sp, runs['peer_dcn'].best)} the peer's DCN-M); DLRM {_fmt(spl)} samples/s "
                 f"({_ratio(spl, runs['ours_dlrm_fused'].best)} dense Adam, {_ratio(spl, runs['peer_deepfm'].best)}"
                 " the peer's DeepFM). Only the rows a batch touches get Adam moments updated (SparseAdam's "
                 "lazy semantics), so it is not the same optimizer as dense Adam.")
    lines += ["", "### Loaders alone", "",
              f"Batches of {a['batch_size']:,} rows per second against the fastest model's consumption "
              f"({max(s['consumption'].values()):.1f} steps/s; DCNv2 {s['consumption']['dcnv2']:.1f}, DLRM "
              f"{s['consumption']['dlrm']:.1f}, DeepFM {s['consumption']['deepfm']:.1f}). InMemoryBatches: "
              f"{a['loader_batches']} shuffled gathers from the in-memory split; StreamingBatches: one whole epoch "
              "from the Parquet shards (read, `table_to_tensors`, shuffle buffer of 262,144 rows). Best of "
              f"{a['repeat']}.", "",
              "| loader | batches/s | x fastest model's steps/s | goal >= 10x |", "|---|---:|---:|---|"]
    for name, bps in ctx["loaders"].items():
        ratio = s["loader_ratio"][name]
        lines.append(f"| {name} | {bps:,.1f} | {ratio:.1f}x | {_goal(ratio >= 10)} |")
    lines += ["", "### Inference", "",
              f"Predictions/s scoring the test split ({ctx['n_test']:,} rows), eval mode, `torch.no_grad`, batch "
              f"{a['eval_batch']:,}, best of {a['repeat']} passes. Ours: `InMemoryBatches` over the loaded split "
              "+ model + sigmoid; peer: their `model.predict(x, batch_size)` (their DataLoader over a "
              "TensorDataset, per-row indexing and collation included).", "",
              "| model | RecForge predictions/s | DeepCTR-Torch predictions/s | ratio |", "|---|---:|---:|---:|"]
    for model, (ours, peer) in ctx["inference"].items():
        lines.append(f"| {model} | {_fmt(ours)} | {_fmt(peer) if peer else 'n/a'} | "
                     f"{_ratio(ours, peer) if peer else ''} |")
    fl = ctx["flops"]
    lines += ["", "### Where the time goes", "",
              f"Dense-layer work per training sample (6 x the multiply-adds of the Linear layers, plus DLRM's dot "
              f"products): DCNv2 {fl['dcnv2'] / 1e6:.2f} MFLOP (its three full-rank {ctx['x0_dim']}x{ctx['x0_dim']}"
              f" cross layers are {100 * ctx['cross_share']:.0f}% of it), DLRM {fl['dlrm'] / 1e6:.2f}, DeepFM "
              f"{fl['deepfm'] / 1e6:.2f}; a batch of {a['batch_size']:,} is {a['batch_size'] * fl['dcnv2'] / 1e9:.1f}"
              f" GFLOP for DCNv2. The 'dense GFLOP/s' column above is this work times samples/s: both libraries "
              "run the same matrix products (same sizes, torch's CPU GEMM), so a model whose step is mostly GEMM "
              "cannot be much faster in one library than the other; the gap can only come from the rest of the "
              "step (input pipeline, embedding lookups, optimizer, framework glue).", "",
              f"The embedding table's optimizer step alone ({ctx['emb_rows'] * EMB_DIM:,} parameters, gradients "
              "dense as `nn.Embedding(sparse=False)` makes them; CPU ms per step, best of "
              f"{a['repeat']}):", "", "| layout and optimizer | CPU ms per step |", "|---|---:|",
              *(f"| {k} | {v:.1f} |" for k, v in ctx["adam"].items()), "",
              "torch's default (for-loop) Adam makes several passes over each tensor (`lerp_`, `mul_`, "
              "`addcmul_`, `sqrt`, `div`, `addcdiv_`): over 26 small per-field tables each pass stays in the CPU "
              "cache, over one large fused table every pass goes to memory. `fused=True` does one pass.", "",
              f"`torch.profiler` (CPU) over {a['profile_steps']} steps after warm-up; self CPU time per op (the "
              "profiler slows small ops, so ms/step runs above the timed rate). Shares by category are grouped "
              "by op name.", ""]
    for title, prof in ctx["profiles"].items():
        cats = "; ".join(f"{k} {100 * v:.0f}%" for k, v in prof["categories"])
        lines += [f"**{title}** ({prof['wall_ms_per_step']:.0f} ms per step under the profiler): {cats}.", "",
                  "| op | ms/step | share |", "|---|---:|---:|"]
        lines += [f"| `{t['op']}` | {t['ms_per_step']:.1f} | {100 * t['share']:.0f}% |" for t in prof["top"]]
        lines.append("")
    lines += [
        "### How it is measured", "",
        f"- RecForge (plain loop): `build_model(...)`, the optimizer from `CTRTask.configure_optimizers()` (Adam "
        "for dense parameters and Adam for the embedding table), `BCEWithLogitsLoss`; a step is: next batch from "
        "`InMemoryBatches` (shuffled `index_select` gathers), forward, loss, `zero_grad`, backward, `step`. "
        f"{a['warmup']} warm-up steps, then {a['steps']} timed steps (wall clock, `time.perf_counter`).",
        "- RecForge (Lightning): `pl.Trainer(max_steps=warm-up + steps, logger=False, no checkpointing, no "
        "progress bar)` fitting `CTRTask` on `InMemoryBatches`; a callback stamps each `on_train_batch_end`; the "
        "rate is taken between the end of the last warm-up step and the end of the last step.",
        "- DeepCTR-Torch: `DCN(cross_parameterization='matrix', cross_num=3, dnn_hidden_units=(256, 128))` with no "
        "linear part (our DCNv2 has none) and `DeepFM(dnn_hidden_units=(256, 128))` with the linear part (ours "
        "has its LR term), `SparseFeat(vocabulary_size=our cardinality, embedding_dim=16)` and `DenseFeat(1)` on "
        "our transformed columns (passed as float32, the dtype their fit casts to), `compile('adam', "
        "'binary_crossentropy')`, all L2 terms set to 0 (their default 1e-5 adds a full-table L2 penalty each "
        "step; ours has none). Timed with their own `model.fit(x, y, batch_size="
        f"{a['batch_size']}, epochs=1, verbose=0, shuffle=True)`, called twice on the same model (its optimizer "
        f"state persists): first on {a['warmup']} batches of train rows (warm-up), then on "
        f"{ctx['peer_rows']:,} train rows ({ctx['peer_rows'] // a['batch_size']} batches), timed from their "
        "`on_epoch_begin` to their `on_epoch_end` callback: their input concatenation, TensorDataset and model "
        "construction are excluded, their DataLoader (per-row indexing + collate) is included, as our gathers "
        "are.",
        "- Same process, same threads for all; models are built fresh for each round (not timed).",
    ]
    return "\n".join(lines) + "\n"


def update_doc(path: Path, section: str) -> None:
    """Replace this benchmark's block (between its markers) in `path`, or append it; nothing else changes."""
    block = f"{DOC_START}\n{section}{DOC_END}"
    text = path.read_text() if path.is_file() else DOC_HEADER
    start, end = text.find(DOC_START), text.find(DOC_END)
    if (start == -1) != (end == -1) or (start != -1 and end < start):
        raise SystemExit(f"bench_train: {path}: markers {DOC_START} / {DOC_END} are unbalanced; fix them by hand")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = text[:start] + block + text[end + len(DOC_END):]
    path.write_text(text)


def print_table(ctx: dict[str, Any]) -> None:
    bs = ctx["args"]["batch_size"]
    print(f"\n{'contender':58} {'model':7} {'samples/s best':>15} {'median':>10} {'steps/s':>8} {'cores':>6} "
          f"{'per CPU-s':>10}  load avg at start")
    for run in ctx["runs"].values():
        print(f"{run.name:58} {run.model:7} {_fmt(run.best):>15} {_fmt(run.median):>10} {run.best / bs:8.1f} "
              f"{run.best_cores:6.2f} {_fmt(run.per_cpu):>10}  {', '.join(f'{x:.2f}' for x in run.load)}")
    print("\nloader batches/s (x fastest model's steps/s):")
    for name, bps in ctx["loaders"].items():
        print(f"  {name:62} {bps:10,.1f}  {ctx['summary']['loader_ratio'][name]:6.1f}x")
    print("\ninference predictions/s (ours, peer):")
    for model, (ours, peer) in ctx["inference"].items():
        print(f"  {model:10} {_fmt(ours):>12} {_fmt(peer) if peer else 'n/a':>12}")
    s = ctx["summary"]
    print(f"\nper CPU-second: DCNv2 vs peer DCN-M {s['cpu_dcn_vs_peer']:.2f}x, DeepFM vs peer DeepFM "
          f"{s['cpu_deepfm_vs_peer']:.2f}x, DLRM vs peer DeepFM {s['cpu_dlrm_vs_peer_deepfm']:.2f}x")
    print(f"DCNv2 vs peer DCN-M {s['dcn_vs_peer']:.2f}x, DeepFM vs peer DeepFM {s['deepfm_vs_peer']:.2f}x, "
          f"DLRM vs peer DeepFM {s['dlrm_vs_peer_deepfm']:.2f}x (goal 2x); faster backend: {s.get('auto', 'n/a')} "
          f"(per CPU-s: {s.get('auto_cpu', 'n/a')}); "
          f"Lightning overhead {100 * s['lightning_overhead']:.0f}% ({100 * s['lightning_clip_overhead']:.0f}% "
          "with clipping)")
    print("\nAdam step over the embedding parameters alone (CPU ms):")
    for k, v in ctx["adam"].items():
        print(f"  {k:78} {v:7.1f}")
    for title, prof in ctx["profiles"].items():
        print(f"\nprofile {title}: {prof['wall_ms_per_step']:.0f} ms/step; "
              + "; ".join(f"{k} {100 * v:.0f}%" for k, v in prof["categories"]))
        for t in prof["top"][:6]:
            print(f"  {t['op']:40} {t['ms_per_step']:8.1f} ms  {100 * t['share']:4.0f}%")


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000, help="synthetic rows (train 90%%, test 10%%)")
    p.add_argument("--n-ids", type=int, default=100_000, help="ids per categorical field")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--warmup", type=int, default=30, help="untimed steps before each timed run")
    p.add_argument("--steps", type=int, default=150, help="timed training steps per contender and round")
    p.add_argument("--repeat", type=int, default=2, help="rounds (contender order reversed every other round)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every contender")
    p.add_argument("--eval-batch", type=int, default=65_536)
    p.add_argument("--loader-batches", type=int, default=400, help="InMemoryBatches batches timed")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--no-torchrec", action="store_true", help="skip the TorchRec backend")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_train")
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    p.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                   help="measure nothing: print and write the doc section again from a saved results.json")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.repeat < 1 or args.rows < 1000:
        p.error("--steps, --warmup and --repeat must be >= 1 and --rows >= 1000")
    return args


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_results(path: Path) -> dict[str, Any]:
    """A saved results.json back into the context `render_section` takes."""
    ctx = json.loads(path.read_text())
    names = {f.name for f in Run.__dataclass_fields__.values()}
    ctx["runs"] = {k: Run(**{f: v[f] for f in names if f in v}) for k, v in ctx["runs"].items()}
    ctx["inference"] = {k: tuple(v) for k, v in ctx["inference"].items()}
    ctx["summary"] = summarize(ctx)
    return ctx


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        ctx = load_results(args.render)
        print_table(ctx)
        if not args.no_doc:
            update_doc(args.doc, render_section(ctx))
            log(f"wrote the section '{SECTION_TITLE}' of {args.doc} from {args.render}")
        return 0
    _quiet()
    torch.set_num_threads(args.threads)
    prep = prepare(args.work_dir, args.rows, args.n_ids, args.seed)
    train = load_split(prep.train_dir, prep.layout)
    test = load_split(prep.test_dir, prep.layout)
    peer_rows = min(max(args.steps, args.warmup) * args.batch_size, prep.n_train)
    peer_x, peer_y = peer_inputs(prep, prep.train_dir, peer_rows)
    use_torchrec = not args.no_torchrec and torchrec_available()

    runs: dict[str, Run] = {}
    jobs: list[tuple[str, Callable[[Run], None]]] = []

    def add(key: str, run: Run, fn: Callable[[Run], None]) -> None:
        runs[key] = run
        jobs.append((key, fn))

    def ours(backend: str, optimizer: str = "ctrtask") -> Callable[[Run], None]:
        return lambda r: run_ours(r, prep, train, args, backend, optimizer)

    def peer(r: Run) -> None:
        run_peer(r, prep, peer_x, peer_y, args)

    fa = "Adam(fused=True), proposed"
    add("ours_dcnv2_fused", Run("RecForge, fused embedding", "ours", "dcnv2"), ours("fused"))
    add("peer_dcn", Run("DeepCTR-Torch DCN-M, model.fit", "peer", "dcn"), peer)
    if use_torchrec:
        add("ours_dcnv2_torchrec", Run("RecForge, TorchRec EmbeddingBagCollection", "ours", "dcnv2"),
            ours("torchrec"))
    add("ours_dcnv2_fadam", Run(f"RecForge, fused embedding, {fa}", "ours", "dcnv2"), ours("fused", "fused_adam"))
    add("ours_dlrm_fused", Run("RecForge, fused embedding", "ours", "dlrm"), ours("fused"))
    add("peer_deepfm", Run("DeepCTR-Torch DeepFM, model.fit", "peer", "deepfm"), peer)
    add("ours_deepfm_fused", Run("RecForge, fused embedding", "ours", "deepfm"), ours("fused"))
    add("ours_deepfm_fadam", Run(f"RecForge, fused embedding, {fa}", "ours", "deepfm"), ours("fused", "fused_adam"))
    add("ours_dlrm_fadam", Run(f"RecForge, fused embedding, {fa}", "ours", "dlrm"), ours("fused", "fused_adam"))
    add("lightning_dcnv2", Run("RecForge via Lightning (CTRTask + pl.Trainer), no clipping", "lightning", "dcnv2"),
        lambda r: run_lightning(r, prep, train, args, None))
    if use_torchrec:
        add("ours_dcnv2_torchrec_fadam", Run(f"RecForge, TorchRec EBC, {fa}", "ours", "dcnv2"),
            ours("torchrec", "fused_adam"))
    add("ours_dcnv2_sparse", Run("RecForge, fused, sparse grads + SparseAdam", "ours", "dcnv2"),
        ours("fused", "sparse_adam"))
    add("ours_dlrm_sparse", Run("RecForge, fused, sparse grads + SparseAdam", "ours", "dlrm"),
        ours("fused", "sparse_adam"))
    add("lightning_dcnv2_clip", Run("RecForge via Lightning, gradient_clip_val=10 (train.py)", "lightning", "dcnv2"),
        lambda r: run_lightning(r, prep, train, args, OptimConfig().grad_clip))

    for rnd in range(args.repeat):
        order = jobs if rnd % 2 == 0 else list(reversed(jobs))
        for key, fn in order:
            fn(runs[key])
            gc.collect()
            log(f"round {rnd + 1}/{args.repeat} {key:22} {runs[key].samples_per_s[-1]:>10,.0f} samples/s "
                f"(load {runs[key].load[-1]:.2f})")

    log("loaders alone")
    loaders = bench_loaders(prep, train, args)
    log("inference")
    test_x, _ = peer_inputs(prep, prep.test_dir, None)
    inference = {
        "dcnv2": (bench_inference_ours("dcnv2", prep, test, args), bench_inference_peer("dcn", prep, test_x, args)),
        "dlrm": (bench_inference_ours("dlrm", prep, test, args), 0.0),
        "deepfm": (bench_inference_ours("deepfm", prep, test, args),
                   bench_inference_peer("deepfm", prep, test_x, args)),
    }
    log("Adam over the embedding parameters alone")
    adam = bench_adam(prep.layout, args.repeat)
    log("profiling steps")
    profiles: dict[str, Any] = {}
    for title, model_name in (("RecForge DCNv2 (fused)", "dcnv2"), ("RecForge DLRM (fused)", "dlrm"),
                              ("RecForge DeepFM (fused)", "deepfm")):
        step = our_step_fn(build_ours(model_name, prep.layout, "fused"), "ctrtask",
                           InMemoryBatches(train, args.batch_size, shuffle=True, seed=args.seed, drop_last=True))
        time_steps(step, min(args.warmup, 5), 1)
        profiles[title] = profile_step(step, args.profile_steps)
    for title, kind in (("DeepCTR-Torch DCN-M", "dcn"), ("DeepCTR-Torch DeepFM", "deepfm")):
        peer_step = peer_step_fn(build_peer(kind, prep), peer_x, peer_y, args.batch_size)
        time_steps(peer_step, min(args.warmup, 5), 1)
        profiles[f"{title} (their fit loop's body, DataLoader excluded)"] = profile_step(peer_step,
                                                                                          args.profile_steps)

    x0_dim = len(prep.layout.sparse) * EMB_DIM + prep.layout.dense_dim
    argv_shown = list(argv) if argv is not None else sys.argv[1:]
    ctx: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": " ".join(["python scripts/bench_train.py", *argv_shown]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "n_train": prep.n_train, "n_test": prep.n_test, "peer_rows": peer_rows,
        "emb_rows": sum(f.cardinality for f in prep.layout.sparse),
        "flops": {m: train_flops_per_sample(build_ours(m, prep.layout, "fused")) for m in PARAMS},
        "x0_dim": x0_dim, "cross_share": 6.0 * DCN_PARAMS["cross_layers"] * x0_dim**2 / train_flops_per_sample(
            build_ours("dcnv2", prep.layout, "fused")),
        "runs": runs, "loaders": loaders, "adam": adam, "inference": inference, "profiles": profiles,
    }
    ctx["summary"] = summarize(ctx)
    print_table(ctx)
    out = {**ctx, "runs": {k: asdict(v) | {"best": v.best, "median": v.median} for k, v in runs.items()}}
    (args.work_dir / "results.json").write_text(json.dumps(out, indent=2, default=str))
    if not args.no_doc:
        update_doc(args.doc, render_section(ctx))
        log(f"wrote the section '{SECTION_TITLE}' of {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
