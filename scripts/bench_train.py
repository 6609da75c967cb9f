"""Benchmark of CTR training, loading and scoring throughput: RecForge against DeepCTR-Torch, in one run.

Data: `generate_criteo_schema` rows (13 numeric, 26 Zipf-distributed categorical fields), split 90 / 10 into
train and test, a `FeatureSpec` fitted on train (C1..C26 vocabularies, I1..I13 log1p_standardize), both splits
transformed and written as Parquet shards under the work directory. None of this is timed.

Timed, with `torch.set_num_threads(--threads)`, contenders interleaved (ours, peer, ours, ...), the order
reversed every other round:

- RecForge, training defaults: DCNv2, DLRM and DeepFM built by `build_model` with the embedding backend that
  `embedding_backend: auto` resolves to (`resolve_backend`), the optimizers of `CTRTask.configure_optimizers()`
  (Adam(fused=True) for dense and embedding parameters), BCE-with-logits, in the precision `train.precision: auto`
  picks on CPU (`_precision(TrainConfig(accelerator="cpu"))`; "bf16-mixed" is run as
  `torch.autocast("cpu", dtype=torch.bfloat16)` around the forward, as Lightning does on CPU); batches from
  `InMemoryBatches` over `load_split` tensors (the gather is inside the timed loop); `--warmup` steps, then
  `--steps` timed steps. The same in the other precision (fp32 when the default is bf16; bf16 autocast when the
  default is fp32 and `cpu_has_native_bf16()`), DCNv2 with the fused embedding backend in fp32 (the backend
  comparison), and DCNv2 through the real Lightning path (`CTRTask` + `pl.Trainer` with the precision and
  gradient clipping `recforge train ctr` uses by default).
- DeepCTR-Torch: DCN (parameterization "matrix", i.e. DCN-M = DCNv2) and DeepFM with the same sizes, fed the
  same transformed columns, trained with their own `model.fit(batch_size, epochs=1)`: once over `--warmup`
  batches, then over `--steps` batches timed from their `on_epoch_begin` to their `on_epoch_end` callback.
- bf16 quality guard (where `cpu_has_native_bf16()`): DCNv2 and DeepFM trained in fp32 and in bf16 autocast from
  the same seed over the same `--quality-steps` batches of the train split, then scored on the test split.
- Loaders alone (InMemoryBatches, StreamingBatches from the shards) against the models' steps/s; inference
  (eval mode, `torch.no_grad`, batch `--eval-batch`) over the test split; the Adam step over the embedding
  parameters alone; a `torch.profiler` view of a few training-defaults steps of each model and of the peer's.

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
from training.common.data import InMemoryBatches, StreamingBatches, load_split
from training.common.embedding import SparseEmbedding, resolve_backend
from training.common.features import LABEL, FeatureLayout
from training.common.metrics import auc, logloss
from training.ranking.config import OptimConfig, TrainConfig
from training.ranking.models import build_model
from training.ranking.run import _precision, cpu_has_native_bf16
from training.ranking.task import CTRTask

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))
import benchdoc  # noqa: E402

SECTION_TITLE = "## CTR training throughput (bench_train.py)"
N_DENSE, N_SPARSE = 13, 26
EMB_DIM = 16
DCN_PARAMS: dict[str, Any] = {"embedding_dim": EMB_DIM, "cross_layers": 3, "mlp": [256, 128], "structure": "parallel"}
DLRM_PARAMS: dict[str, Any] = {"embedding_dim": EMB_DIM, "bottom_mlp": [64], "top_mlp": [256, 128]}
DEEPFM_PARAMS: dict[str, Any] = {"embedding_dim": EMB_DIM, "mlp": [256, 128]}
PARAMS = {"dcnv2": DCN_PARAMS, "dlrm": DLRM_PARAMS, "deepfm": DEEPFM_PARAMS}
MODELS = tuple(PARAMS)
PEER_OF = {"dcnv2": "peer_dcn", "deepfm": "peer_deepfm", "dlrm": "peer_deepfm"}  # DeepCTR-Torch has no DLRM
QUALITY_MODELS = ("dcnv2", "deepfm")
AUC_TOLERANCE = 0.002  # bf16 may trail fp32 by this much test AUC before the guard flags it
DATA_VERSION = 1  # bump when the prepared data changes for unchanged arguments
RESULTS_FORMAT = 2  # bump when results.json changes shape; --render refuses other formats


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
    precision: str = "fp32"  # "fp32" | "bf16" (autocast)
    backend: str = ""  # our embedding backend; "" for the peer
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


def build_ours(name: str, layout: FeatureLayout, backend: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, layout, {**PARAMS[name], "embedding_backend": backend})


def train_flops_per_sample(model: nn.Module) -> float:
    """Dense-layer FLOPs of one training sample: 6 x the multiply-adds of the Linear layers (forward, input and
    weight gradients), plus DLRM's pairwise dot products; elementwise ops and embeddings are not counted."""
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    if model.__class__.__name__ == "DLRM":
        f = getattr(model, "num_fields", 0) + 1
        macs += f * f * EMB_DIM
    return 6.0 * macs


def autocast(bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CPU (what Lightning's "bf16-mixed" enters around the forward), or nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def our_step_fn(model: nn.Module, batches: InMemoryBatches, bf16: bool) -> Callable[[], Tensor]:
    """One CTRTask-equivalent training step (batch gather included): forward under `autocast(bf16)`, BCE-with-logits
    on fp32 logits, backward, and the optimizer of `CTRTask.configure_optimizers()` (no clipping)."""
    task = CTRTask(model, OptimConfig())
    opt = task.configure_optimizers()
    if not isinstance(opt, torch.optim.Optimizer):
        raise SystemExit("bench_train: CTRTask.configure_optimizers() returned a schedule for the default "
                         "OptimConfig; time the optimizer without it or update this script")
    loss_fn = task.loss_fn
    it = _cycle(batches)
    model.train()

    def step() -> Tensor:
        batch = next(it)
        with autocast(bf16):
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


def _batches(train: dict[str, Tensor], args: argparse.Namespace) -> InMemoryBatches:
    return InMemoryBatches(train, args.batch_size, shuffle=True, seed=args.seed, drop_last=True)


def run_ours(run: Run, prep: Prepared, train: dict[str, Tensor], args: argparse.Namespace) -> None:
    model = build_ours(run.model, prep.layout, run.backend)
    run.dense_params, run.emb_params = _param_counts(model, _our_emb(model))
    run.load.append(load1())
    step = our_step_fn(model, _batches(train, args), run.precision == "bf16")
    elapsed, cpu, loss = time_steps(step, args.warmup, args.steps)
    run.record(args.steps * args.batch_size / elapsed, cpu / elapsed)
    run.final_loss = loss


def run_lightning(run: Run, prep: Prepared, train: dict[str, Tensor], args: argparse.Namespace) -> None:
    """`CTRTask` + `pl.Trainer` as `recforge train ctr` runs it by default: `precision=_precision(TrainConfig())`
    and `gradient_clip_val=OptimConfig().grad_clip`; no logger, checkpoints, progress bar or validation."""
    import pytorch_lightning as pl

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[tuple[float, float]] = []

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.ends.append((time.perf_counter(), time.process_time()))

    model = build_ours(run.model, prep.layout, run.backend)
    run.dense_params, run.emb_params = _param_counts(model, _our_emb(model))
    task = CTRTask(model, OptimConfig())
    clock = StepClock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=args.warmup + args.steps, max_epochs=-1,
                         precision=_precision(TrainConfig()),  # type: ignore[arg-type]
                         gradient_clip_val=OptimConfig().grad_clip, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[clock], deterministic=False)
    run.load.append(load1())
    trainer.fit(task, train_dataloaders=_batches(train, args))
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
def predict(model: nn.Module, batches: InMemoryBatches, bf16: bool) -> Tensor:
    """Probabilities over every batch, eval mode, under `autocast(bf16)`; fp32 on return."""
    model.eval()
    with autocast(bf16):
        return torch.cat([torch.sigmoid(model(b).float()) for b in batches])


def bench_inference_ours(name: str, prep: Prepared, test: dict[str, Tensor], args: argparse.Namespace,
                         backend: str, bf16: bool) -> float:
    """Best predictions/s of `--repeat` passes over the test split (after one warm-up batch)."""
    model = build_ours(name, prep.layout, backend).eval()
    batches = InMemoryBatches(test, args.eval_batch, shuffle=False)
    with torch.no_grad(), autocast(bf16):
        model(next(iter(batches)))  # warm-up
    best = 0.0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        n = predict(model, batches, bf16).shape[0]
        best = max(best, n / (time.perf_counter() - t0))
    return best


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
            model = build_ours(name, prep.layout, backend)
            step = our_step_fn(model, _batches(train, args), bf16)
            t0 = time.perf_counter()
            losses = torch.stack([step() for _ in range(steps)])
            train_s = time.perf_counter() - t0
            probs = predict(model, InMemoryBatches(test, args.eval_batch, shuffle=False), bf16)
            tail = losses[-max(len(losses) // 10, 1):]
            row[precision] = {"auc": auc(labels, probs), "logloss": logloss(labels, probs),
                              "train_loss_tail": float(tail.mean()), "train_s": train_s}
            log(f"quality {name} {precision}: test AUC {row[precision]['auc']:.4f} after {steps} steps "
                f"({train_s:.0f} s)")
            del model, step
            gc.collect()
        out.append(row)
    return out


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
    cpu = benchdoc.cpu_model()
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


def _faster(a: float, b: float) -> str:
    return "faster" if a >= b else "slower"


def default_key(model: str) -> str:
    return f"ours_{model}_default"


def precision_name(precision: str) -> str:
    return "bf16 autocast" if precision == "bf16" else "fp32"


def row_of(runs: dict[str, Run], model: str, precision: str) -> str | None:
    """Key of `model`'s plain-loop row with the default backend in `precision` ("fp32" | "bf16"), if measured."""
    for key in (default_key(model), f"ours_{model}_{precision}"):
        if key in runs and runs[key].precision == precision:
            return key
    return None


def alt_key(runs: dict[str, Run], model: str) -> str | None:
    """Key of `model`'s row in the precision the training defaults do not use, if measured."""
    other = "fp32" if runs[default_key(model)].precision == "bf16" else "bf16"
    key = f"ours_{model}_{other}"
    return key if key in runs else None


def lightning_reference(runs: dict[str, Run]) -> str:
    """The plain-loop DCNv2 row in the Lightning run's precision (same backend, same optimizers)."""
    return row_of(runs, "dcnv2", runs["lightning_dcnv2"].precision) or default_key("dcnv2")


def summarize(ctx: dict[str, Any]) -> dict[str, Any]:
    """Ratios the report states, all computed from the runs (bests, and per CPU-second)."""
    runs: dict[str, Run] = ctx["runs"]
    r = {k: v.best for k, v in runs.items()}
    c = {k: v.per_cpu for k, v in runs.items()}
    s: dict[str, Any] = {"goals": {}, "bf16_gain": {}, "bf16_gain_cpu": {}}
    for m in MODELS:
        d, p, alt = default_key(m), PEER_OF[m], alt_key(runs, m)
        s["goals"][m] = {"default": r[d] / r[p], "default_cpu": c[d] / c[p]}
        if alt is not None:
            s["goals"][m] |= {"alt": r[alt] / r[p], "alt_cpu": c[alt] / c[p]}
        b, f = row_of(runs, m, "bf16"), row_of(runs, m, "fp32")
        if b is not None and f is not None:
            s["bf16_gain"][m], s["bf16_gain_cpu"][m] = r[b] / r[f], c[b] / c[f]
    s["dlrm_vs_peer_dcn"] = r[default_key("dlrm")] / r["peer_dcn"]
    auto = row_of(runs, "dcnv2", "fp32")
    if "ours_dcnv2_fused" in runs and auto is not None:
        fused, name = "ours_dcnv2_fused", runs[auto].backend
        s["backend"] = {"auto_key": auto, "auto": name, "faster": name if r[auto] >= r[fused] else "fused",
                        "faster_cpu": name if c[auto] >= c[fused] else "fused"}
    spreads = [max(v.samples_per_s) / min(v.samples_per_s) for v in runs.values() if min(v.samples_per_s) > 0]
    s["spread"] = max(spreads, default=1.0)
    ref = lightning_reference(runs)
    s["lightning_ref"] = ref
    s["lightning_overhead"] = 1 - r["lightning_dcnv2"] / r[ref]
    s["cpu_lightning_overhead"] = 1 - c["lightning_dcnv2"] / c[ref]
    bs = ctx["args"]["batch_size"]
    s["consumption"] = {m: r[default_key(m)] / bs for m in MODELS}
    fastest = max(s["consumption"].values())
    s["loader_ratio"] = {k: v / fastest for k, v in ctx["loaders"].items()}
    s["quality"] = [{"model": q["model"], "diff": q["bf16"]["auc"] - q["fp32"]["auc"],
                     "ok": q["bf16"]["auc"] - q["fp32"]["auc"] >= -AUC_TOLERANCE} for q in ctx["quality"]]
    return s


def _defaults_label(ctx: dict[str, Any]) -> str:
    return f"{precision_name(ctx['default_prec'])}, {ctx['default_backend']} embedding"


def _goal_lines(ctx: dict[str, Any]) -> list[str]:
    s, runs = ctx["summary"], ctx["runs"]
    alt = ctx["alt_prec"]
    alt_label = {"fp32": "fp32", "bf16": "bf16 autocast (the opt-in `train.precision: bf16-mixed`)"}.get(alt or "")
    lines = [f"Goal: at least 2x the peer's samples/s on this CPU, for RecForge's training defaults "
             f"({_defaults_label(ctx)}, CTRTask's optimizers)"
             + (f"; {alt_label} alongside, with the same backend and optimizers:" if alt_label else ":"), ""]
    names = {"dcnv2": "DCNv2 vs DeepCTR-Torch DCN-M, same model",
             "deepfm": "DeepFM vs DeepCTR-Torch DeepFM, same model",
             "dlrm": "DLRM (DeepCTR-Torch has no DLRM) vs their DeepFM"}
    for m in ("dcnv2", "deepfm", "dlrm"):
        g = s["goals"][m]
        line = (f"- {names[m]}: training defaults {g['default']:.2f}x, {_goal(g['default'] >= 2)} (per CPU-second "
                f"{g['default_cpu']:.2f}x)")
        if "alt" in g:
            line += (f"; {precision_name(alt or '')} {g['alt']:.2f}x, {_goal(g['alt'] >= 2)} (per CPU-second "
                     f"{g['alt_cpu']:.2f}x)")
        if m == "dlrm":
            line += f"; training defaults vs their DCN-M: {s['dlrm_vs_peer_dcn']:.2f}x"
        lines.append(line)
    gain = s["bf16_gain"]
    if gain:
        faster = [m for m in MODELS if gain[m] > 1]
        text = ", ".join(f"{m} {gain[m]:.2f}x ({_faster(gain[m], 1.0)}; per CPU-second "
                         f"{s['bf16_gain_cpu'][m]:.2f}x)" for m in MODELS)
        which = f" ({', '.join(faster)})" if faster else ""
        lines.append(f"- bf16 autocast against fp32, same backend and optimizers, samples/s: {text}. bf16 was "
                     f"faster for {len(faster)} of {len(MODELS)} models{which}; `train.precision: auto` trains in "
                     f"`{ctx['default_precision']}` on this CPU.")
    elif not ctx["bf16_native"]:
        lines.append("- This CPU has no native bf16 (`cpu_has_native_bf16()` is false), so no bf16 autocast rows were "
                     f"measured; `train.precision: auto` trains in `{ctx['default_precision']}` on it.")
    if "backend" in s:
        b = s["backend"]
        a, f = runs[b["auto_key"]], runs["ours_dcnv2_fused"]
        head = (f"- Embedding backends (DCNv2, fp32): {b['auto']} (what `auto` picks here) {_fmt(a.best)}, fused "
                f"{_fmt(f.best)} samples/s (per CPU-second {_fmt(a.per_cpu)} and {_fmt(f.per_cpu)}): ")
        if b["faster"] != b["faster_cpu"]:
            lines.append(head + f"samples/s favours {b['faster']}, CPU time favours {b['faster_cpu']}: "
                         "inconclusive in this run.")
        else:
            hi, lo = (a, f) if b["faster"] == b["auto"] else (f, a)
            verdict = "`auto`'s pick is the faster" if b["faster"] == b["auto"] else (
                f"**{b['faster']}** is faster, so `auto`'s pick is the slower one in this run")
            lines.append(head + f"{verdict} ({_ratio(hi.best, lo.best)} in samples/s, "
                         f"{_ratio(hi.per_cpu, lo.per_cpu)} per CPU-second).")
    lt, ref = runs["lightning_dcnv2"], runs[s["lightning_ref"]]
    lines.append(f"- Lightning (`CTRTask` + `pl.Trainer`, DCNv2, `precision=\"{ctx['lightning_precision']}\"` and "
                 f"`gradient_clip_val={ctx['grad_clip']}`, as `recforge train ctr` runs by default) "
                 f"{_overhead(s['lightning_overhead'])} (the row '{ref.name}'; that loop does not clip, so this "
                 f"includes the clipping, which also covers the full embedding gradient). Per CPU-second: "
                 f"{100 * s['cpu_lightning_overhead']:+.0f}% (positive = slower than the plain loop); "
                 f"{_fmt(lt.best)} samples/s, {_ratio(lt.best, runs['peer_dcn'].best)} the peer's DCN-M.")
    return lines


def _quality_lines(ctx: dict[str, Any]) -> list[str]:
    a, s = ctx["args"], ctx["summary"]
    lines = ["", "### bf16 vs fp32 test AUC", ""]
    if not ctx["quality"]:
        why = ("`--quality-steps 0` skipped it" if a["quality_steps"] == 0 else
               "this CPU has no native bf16, so bf16 autocast was not measured")
        return [*lines, f"Not measured in this run: {why}."]
    q0 = ctx["quality"][0]
    epochs = q0["steps"] * a["batch_size"] / ctx["n_train"]
    lines += [f"DCNv2 and DeepFM ({q0['backend']} embedding, CTRTask's optimizers) trained from the same initial "
              f"weights over the same {q0['steps']} shuffled batches of {a['batch_size']:,} ({epochs:.2f} epochs of "
              f"the train split), once in fp32 and once in bf16 autocast, then scored on the test split "
              f"({ctx['n_test']:,} rows) in the precision each was trained in (as `trainer.test` does). The "
              f"guard flags bf16 when its test AUC trails fp32 by more than {AUC_TOLERANCE}.", "",
              "| model | steps | fp32 test AUC | bf16 test AUC | bf16 - fp32 | fp32 logloss | bf16 logloss | "
              "train s, fp32 / bf16 | guard |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for q, g in zip(ctx["quality"], s["quality"], strict=True):
        f, b = q["fp32"], q["bf16"]
        lines.append(f"| {q['model']} | {q['steps']} | {f['auc']:.4f} | {b['auc']:.4f} | {g['diff']:+.4f} | "
                     f"{f['logloss']:.4f} | {b['logloss']:.4f} | {f['train_s']:.0f} / {b['train_s']:.0f} | "
                     f"{'within' if g['ok'] else '**exceeded**'} |")
    bad = [g["model"] for g in s["quality"] if not g["ok"]]
    lines += ["", (f"bf16 stays within {AUC_TOLERANCE} test AUC of fp32 for every model checked." if not bad else
                   f"**bf16 trails fp32 by more than {AUC_TOLERANCE} test AUC for {', '.join(bad)}**: bf16's speed "
                   "comes at an accuracy cost there; look into it before relying on bf16.")
              + " One seed per precision: differences of a few 0.001 can be seed noise rather than precision."]
    return lines


def render_section(ctx: dict[str, Any]) -> str:
    a, m, runs, s = ctx["args"], ctx["machine"], ctx["runs"], ctx["summary"]
    v, alt = m["versions"], ctx["alt_prec"] or ("bf16" if ctx["default_prec"] == "fp32" else "fp32")
    loads = [x for run in runs.values() for x in run.load]
    lines = [
        SECTION_TITLE, "",
        "RecForge's CTR training step (model + columnar loader + optimizers) against DeepCTR-Torch with the same",
        "model sizes on the same prepared data, measured side by side in one process, contenders interleaved.",
        "",
        f"- Date: {ctx['date']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['usable']} usable), {m['ram_gib']:.1f} GiB RAM, {m['os']}; "
        f"native bf16: {'yes' if ctx['bf16_native'] else 'no'} (`cpu_has_native_bf16()`); "
        f"Python {m['python']}, torch {v['torch']}, deepctr-torch {v['deepctr-torch']}, torchrec {v['torchrec']}, "
        f"pytorch-lightning {v['pytorch-lightning']}; `torch.set_num_threads({a['threads']})`",
        f"- Load average (1 min) when the contenders started: {min(loads):.2f} to {max(loads):.2f} "
        f"(the machine is shared: a load above {m['usable']} means other jobs competed for the cores)",
        f"- Command: `{ctx['command']}` ({ctx['phase_s']['total'] / 60:.0f} min in all)",
        *([f"- **Caution**: other jobs loaded the machine during this run (load average up to {max(loads):.1f} on "
           f"{m['usable']} cores)"
           + (f"; the same contender's samples/s varied up to {s['spread']:.1f}x between rounds" if a["repeat"] > 1
              else "") + (". Treat the wall-clock ratios as rough; the per CPU-second columns are steadier."
                          if a["threads"] == 1 else
                          f". With {a['threads']} threads per process, OpenMP threads spin while a sibling waits for "
                          "a core, which inflates wall and CPU time alike: neither column is reliable; re-run on a "
                          "quiet machine, or with `--threads 1`.")]
          if max(loads) > m["usable"] else []),
        f"- Data: `generate_criteo_schema({a['rows']:,}, n_ids={a['n_ids']:,})` (13 numeric with ~5% nulls, "
        f"26 categorical Zipf ids), train {ctx['n_train']:,} / test {ctx['n_test']:,} rows; spec fitted on train: "
        f"C1..C26 vocabularies ({ctx['emb_rows']:,} embedding rows in all, {ctx['emb_rows'] * EMB_DIM:,} embedding "
        f"parameters at dim {EMB_DIM}), I1..I13 log1p_standardize; Parquet shards of 262,144 rows, row groups of "
        "65,536 (written before timing, so read from the page cache)",
        f"- Models: DCNv2 parallel, cross {DCN_PARAMS['cross_layers']} full-rank layers, MLP {DCN_PARAMS['mlp']}; "
        f"DLRM bottom {DLRM_PARAMS['bottom_mlp']}+[{EMB_DIM}], top {DLRM_PARAMS['top_mlp']}+[1]; DeepFM MLP "
        f"{DEEPFM_PARAMS['mlp']}; embedding dim {EMB_DIM}; batch {a['batch_size']:,}; Adam lr 1e-3 everywhere",
        f"- RecForge's training defaults here: `embedding_backend: auto` -> {ctx['default_backend']}, "
        f"`train.precision: auto` -> `{ctx['default_precision']}` on CPU ({precision_name(ctx['default_prec'])} "
        "in the plain loop), `CTRTask.configure_optimizers()` -> Adam(fused=True) for dense and embedding "
        "parameters",
        "",
        "### Training samples/s",
        "",
        f"Rounds: {a['repeat']}, contenders interleaved (ours, peer, ours, ...), the order reversed every other round. "
        "'best' is the fastest round (the least disturbed by other load); 'vs peer' compares bests (DLRM against "
        "their DeepFM); 'cores busy' is the process's CPU seconds per wall second during the fastest round's timed "
        f"steps (at most {a['threads']}: less means it waited, for other jobs or on its own serial parts); 'samples "
        "per CPU-s' divides samples by the process's CPU time instead of wall time: with one thread it hardly moves "
        "with the machine's load (waiting costs no CPU time), with more threads spin-waiting counts in it.",
        "",
        "| contender | model | samples/s (best) | median | steps/s (best) | vs peer | dense GFLOP/s | cores busy | "
        "samples per CPU-s | vs peer | every round | dense / embedding params |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for run in runs.values():
        vs = vs_cpu = ""
        if run.family != "peer" and PEER_OF[run.model] in runs:
            vs = _ratio(run.best, runs[PEER_OF[run.model]].best)
            vs_cpu = _ratio(run.per_cpu, runs[PEER_OF[run.model]].per_cpu)
        lines.append(
            f"| {run.name} | {run.model} | {_fmt(run.best)} | {_fmt(run.median)} | {run.best / a['batch_size']:.1f} | "
            f"{vs} | {run.best * ctx['flops'][_flops_key(run.model)] / 1e9:.0f} | {run.best_cores:.2f} | "
            f"{_fmt(run.per_cpu)} | {vs_cpu} | "
            f"{', '.join(_fmt(x) for x in run.samples_per_s)} | {run.dense_params:,} / {run.emb_params:,} |")
    lines += ["", *_goal_lines(ctx), *_quality_lines(ctx)]
    lines += ["", "### Loaders alone", "",
              f"Batches of {a['batch_size']:,} rows per second against the fastest model's consumption with the "
              f"training defaults ({max(s['consumption'].values()):.1f} steps/s; DCNv2 "
              f"{s['consumption']['dcnv2']:.1f}, DLRM {s['consumption']['dlrm']:.1f}, DeepFM "
              f"{s['consumption']['deepfm']:.1f}). InMemoryBatches: {a['loader_batches']} shuffled gathers from the "
              "in-memory split; StreamingBatches: one whole epoch from the Parquet shards (read, `table_to_tensors`, "
              f"shuffle buffer of 262,144 rows). Best of {a['repeat']}.", "",
              "| loader | batches/s | x fastest model's steps/s | goal >= 10x |", "|---|---:|---:|---|"]
    for name, bps in ctx["loaders"].items():
        ratio = s["loader_ratio"][name]
        lines.append(f"| {name} | {bps:,.1f} | {ratio:.1f}x | {_goal(ratio >= 10)} |")
    lines += ["", "### Inference", "",
              f"Predictions/s scoring the test split ({ctx['n_test']:,} rows), eval mode, `torch.no_grad`, batch "
              f"{a['eval_batch']:,}, best of {a['repeat']} passes. Ours: `InMemoryBatches` over the loaded split "
              f"+ model ({ctx['default_backend']} embedding) + sigmoid, in the training defaults' precision "
              f"({precision_name(ctx['default_prec'])}) and in {precision_name(alt)}; peer: their "
              "`model.predict(x, batch_size)` (their DataLoader over a TensorDataset, per-row indexing and "
              "collation included).", "",
              f"| model | RecForge, {precision_name(ctx['default_prec'])} (default) | RecForge, "
              f"{precision_name(alt)} | DeepCTR-Torch | default vs peer | {precision_name(alt)} vs peer |",
              "|---|---:|---:|---:|---:|---:|"]
    for model, inf in ctx["inference"].items():
        peer, other = inf["peer"], inf["alt"]
        lines.append(f"| {model} | {_fmt(inf['default'])} | {_fmt(other) if other else 'n/a'} | "
                     f"{_fmt(peer) if peer else 'n/a'} | {_ratio(inf['default'], peer) if peer else ''} | "
                     f"{_ratio(other, peer) if peer and other else ''} |")
    fl, adam = ctx["flops"], ctx["adam"]
    one_loop, one_fused = (adam[n] for n, per_field, _ in adam_layouts(ctx["default_backend"]) if not per_field)
    lines += ["", "### Where the time goes", "",
              f"Dense-layer work per training sample (6 x the multiply-adds of the Linear layers, plus DLRM's dot "
              f"products): DCNv2 {fl['dcnv2'] / 1e6:.2f} MFLOP (its three full-rank {ctx['x0_dim']}x{ctx['x0_dim']}"
              f" cross layers are {100 * ctx['cross_share']:.0f}% of it), DLRM {fl['dlrm'] / 1e6:.2f}, DeepFM "
              f"{fl['deepfm'] / 1e6:.2f}; a batch of {a['batch_size']:,} is {a['batch_size'] * fl['dcnv2'] / 1e9:.1f}"
              f" GFLOP for DCNv2. The 'dense GFLOP/s' column above is this work times samples/s: in fp32 both "
              "libraries run the same matrix products (same sizes, torch's CPU GEMM), so a mostly-GEMM step can only "
              "gain from the rest of the step (input pipeline, embedding lookups, optimizer, framework glue) or from "
              "a cheaper number format (bf16 autocast runs the Linear layers in bf16 and accumulates in fp32).", "",
              f"The embedding parameters' optimizer step alone ({ctx['emb_rows'] * EMB_DIM:,} parameters, gradients "
              "dense as `nn.Embedding(sparse=False)` makes them; CPU ms per step, best of "
              f"{a['repeat']}):", "", "| layout and optimizer | CPU ms per step |", "|---|---:|",
              *(f"| {k} | {v:.1f} |" for k, v in adam.items()), "",
              "torch's default (for-loop) Adam makes several passes over each tensor (`lerp_`, `mul_`, "
              "`addcmul_`, `sqrt`, `div`, `addcdiv_`); `fused=True`, which CTRTask uses for both optimizers, does "
              f"one. Over one table the for-loop Adam took {_ratio(one_loop, one_fused)} the CPU time of the fused one "
              "here.",
              "",
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
        "- RecForge (plain loop): `build_model(...)` with the embedding backend `auto` resolves to (or fused, the "
        "backend comparison row), the optimizer from `CTRTask.configure_optimizers()`, `BCEWithLogitsLoss` on "
        "fp32 logits; a step is: next batch from `InMemoryBatches` (shuffled `index_select` gathers), forward "
        "(under `torch.autocast(\"cpu\", dtype=torch.bfloat16)` in the bf16 rows), loss, `zero_grad`, backward, "
        f"`step`; no gradient clipping. {a['warmup']} warm-up steps, then {a['steps']} timed steps (wall clock, "
        "`time.perf_counter`).",
        "- RecForge (Lightning): `pl.Trainer(max_steps=warm-up + steps, precision=_precision(TrainConfig()), "
        "gradient_clip_val=OptimConfig().grad_clip, logger=False, no checkpointing, no progress bar)` fitting "
        "`CTRTask` on `InMemoryBatches`; a callback stamps each `on_train_batch_end`; the rate is taken between the "
        "end of the last warm-up step and the end of the last step.",
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
    benchdoc.update_doc(path, "bench_train", section.rstrip() + "\n")


def print_table(ctx: dict[str, Any]) -> None:
    bs, s = ctx["args"]["batch_size"], ctx["summary"]
    print(f"\n{'contender':62} {'model':7} {'samples/s best':>15} {'median':>10} {'steps/s':>8} {'cores':>6} "
          f"{'per CPU-s':>10}  load avg at start")
    for run in ctx["runs"].values():
        print(f"{run.name:62} {run.model:7} {_fmt(run.best):>15} {_fmt(run.median):>10} {run.best / bs:8.1f} "
              f"{run.best_cores:6.2f} {_fmt(run.per_cpu):>10}  {', '.join(f'{x:.2f}' for x in run.load)}")
    print()
    for line in _goal_lines(ctx):
        print(line)
    for line in _quality_lines(ctx):
        print(line)
    print("\nloader batches/s (x fastest model's steps/s):")
    for name, bps in ctx["loaders"].items():
        print(f"  {name:62} {bps:10,.1f}  {s['loader_ratio'][name]:6.1f}x")
    print(f"\ninference predictions/s (ours {ctx['default_prec']} = default, ours {ctx['alt_prec']}, peer):")
    for model, inf in ctx["inference"].items():
        print(f"  {model:10} {_fmt(inf['default']):>12} {_fmt(inf['alt']) if inf['alt'] else 'n/a':>12} "
              f"{_fmt(inf['peer']) if inf['peer'] else 'n/a':>12}")
    print("\nAdam step over the embedding parameters alone (CPU ms):")
    for k, v in ctx["adam"].items():
        print(f"  {k:90} {v:7.1f}")
    for title, prof in ctx["profiles"].items():
        print(f"\nprofile {title}: {prof['wall_ms_per_step']:.0f} ms/step; "
              + "; ".join(f"{k} {100 * v:.0f}%" for k, v in prof["categories"]))
        for t in prof["top"][:6]:
            print(f"  {t['op']:40} {t['ms_per_step']:8.1f} ms  {100 * t['share']:4.0f}%")
    print("\nseconds per phase: " + ", ".join(f"{k} {v:.0f}" for k, v in ctx["phase_s"].items()))


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
    p.add_argument("--quality-steps", type=int, default=300,
                   help="training steps of each bf16 / fp32 quality-guard model, at most two epochs of the train "
                        "split (0 skips the guard)")
    p.add_argument("--eval-batch", type=int, default=65_536)
    p.add_argument("--loader-batches", type=int, default=400, help="InMemoryBatches batches timed")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--no-torchrec", action="store_true",
                   help="treat TorchRec as absent: the training defaults use the fused backend (auto's fallback)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_train")
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    p.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                   help="measure nothing: print and write the doc section again from a saved results.json")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.repeat < 1 or args.profile_steps < 1 or args.rows < 1000:
        p.error("--steps, --warmup, --repeat and --profile-steps must be >= 1 and --rows >= 1000")
    if args.quality_steps < 0:
        p.error("--quality-steps must be >= 0 (0 skips the bf16 quality guard)")
    return args


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_results(path: Path) -> dict[str, Any]:
    """A saved results.json back into the context `render_section` takes."""
    ctx = json.loads(path.read_text())
    if ctx.get("format") != RESULTS_FORMAT:
        raise SystemExit(f"bench_train: {path}: results format {ctx.get('format', 1)}, this script renders format "
                         f"{RESULTS_FORMAT}; re-run the benchmark to get a results.json it can render")
    names = {f.name for f in Run.__dataclass_fields__.values()}
    ctx["runs"] = {k: Run(**{f: v[f] for f in names if f in v}) for k, v in ctx["runs"].items()}
    ctx["summary"] = summarize(ctx)
    return ctx


def _contenders(prep: Prepared, train: dict[str, Tensor], args: argparse.Namespace, backend: str, default_prec: str,
                alt_prec: str | None, lightning_precision: str,
                peer: Callable[[Run], None]) -> list[tuple[str, Run, Callable[[Run], None]]]:
    """(key, run, measure) of every training contender, in the order of the first round."""

    def ours(r: Run) -> None:
        run_ours(r, prep, train, args)

    jobs: list[tuple[str, Run, Callable[[Run], None]]] = []
    peers = {"dcnv2": Run("DeepCTR-Torch DCN-M, model.fit", "peer", "dcn"),
             "deepfm": Run("DeepCTR-Torch DeepFM, model.fit", "peer", "deepfm")}
    for m in MODELS:
        jobs.append((default_key(m), Run(f"RecForge, training defaults ({precision_name(default_prec)}, {backend} "
                                         "embedding)", "ours", m, default_prec, backend), ours))
        if m in peers:
            jobs.append((PEER_OF[m], peers[m], peer))
        if alt_prec is not None:
            jobs.append((f"ours_{m}_{alt_prec}", Run(f"RecForge, {precision_name(alt_prec)} ({backend} embedding)",
                                                     "ours", m, alt_prec, backend), ours))
        if m == "dcnv2" and backend != "fused":
            jobs.append(("ours_dcnv2_fused", Run("RecForge, fp32, fused embedding", "ours", m, "fp32", "fused"), ours))
    lt_prec = "bf16" if lightning_precision.startswith("bf16") else "fp32"
    jobs.append(("lightning_dcnv2", Run(f"RecForge via Lightning (CTRTask + pl.Trainer, {lightning_precision}, "
                                        f"gradient_clip_val={OptimConfig().grad_clip}, {backend} embedding)",
                                        "lightning", "dcnv2", lt_prec, backend),
                 lambda r: run_lightning(r, prep, train, args)))
    return jobs


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
    phase: dict[str, float] = {}
    t_all = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        phase[name] = now - t
        t = now

    prep = prepare(args.work_dir, args.rows, args.n_ids, args.seed)
    train = load_split(prep.train_dir, prep.layout)
    test = load_split(prep.test_dir, prep.layout)
    peer_rows = min(max(args.steps, args.warmup) * args.batch_size, prep.n_train)
    peer_x, peer_y = peer_inputs(prep, prep.train_dir, peer_rows)
    backend = "fused" if args.no_torchrec else resolve_backend("auto")
    bf16_native = cpu_has_native_bf16()
    default_precision = _precision(TrainConfig(accelerator="cpu"))  # what `recforge train ctr` uses on this CPU
    default_prec = "bf16" if default_precision.startswith("bf16") else "fp32"
    alt_prec = "fp32" if default_prec == "bf16" else ("bf16" if bf16_native else None)
    lightning_precision = _precision(TrainConfig())
    lap("prepare")

    def peer(r: Run) -> None:
        run_peer(r, prep, peer_x, peer_y, args)

    jobs = _contenders(prep, train, args, backend, default_prec, alt_prec, lightning_precision, peer)
    runs = {key: run for key, run, _ in jobs}
    for rnd in range(args.repeat):
        order = jobs if rnd % 2 == 0 else list(reversed(jobs))
        for key, run, measure in order:
            measure(run)
            gc.collect()
            log(f"round {rnd + 1}/{args.repeat} {key:22} {run.samples_per_s[-1]:>10,.0f} samples/s "
                f"(load {run.load[-1]:.2f})")
    lap("training rounds")

    quality = quality_guard(prep, train, test, args, backend) if bf16_native and args.quality_steps > 0 else []
    lap("quality guard")
    log("loaders alone")
    loaders = bench_loaders(prep, train, args)
    lap("loaders")
    log("inference")
    test_x, _ = peer_inputs(prep, prep.test_dir, None)
    peer_kind = {"dcnv2": "dcn", "deepfm": "deepfm"}
    inference = {m: {"default": bench_inference_ours(m, prep, test, args, backend, default_prec == "bf16"),
                     "alt": bench_inference_ours(m, prep, test, args, backend, alt_prec == "bf16") if alt_prec else 0.0,
                     "peer": bench_inference_peer(peer_kind[m], prep, test_x, args) if m in peer_kind else 0.0}
                 for m in MODELS}
    lap("inference")
    log("Adam over the embedding parameters alone")
    adam = bench_adam(prep.layout, args.repeat, backend)
    lap("adam")
    log("profiling steps")
    profiles: dict[str, Any] = {}
    for m in MODELS:
        step = our_step_fn(build_ours(m, prep.layout, backend), _batches(train, args), default_prec == "bf16")
        time_steps(step, min(args.warmup, 5), 1)
        profiles[f"RecForge {m}, training defaults ({default_prec}, {backend})"] = profile_step(step,
                                                                                             args.profile_steps)
    for title, kind in (("DeepCTR-Torch DCN-M", "dcn"), ("DeepCTR-Torch DeepFM", "deepfm")):
        peer_step = peer_step_fn(build_peer(kind, prep), peer_x, peer_y, args.batch_size)
        time_steps(peer_step, min(args.warmup, 5), 1)
        profiles[f"{title} (their fit loop's body, DataLoader excluded)"] = profile_step(peer_step,
                                                                                          args.profile_steps)
    lap("profiles")
    phase["total"] = time.perf_counter() - t_all

    x0_dim = len(prep.layout.sparse) * EMB_DIM + prep.layout.dense_dim
    flops = {m: train_flops_per_sample(build_ours(m, prep.layout, "fused")) for m in PARAMS}
    argv_shown = list(argv) if argv is not None else sys.argv[1:]
    ctx: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": " ".join(["python scripts/bench_train.py", *argv_shown]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "n_train": prep.n_train, "n_test": prep.n_test, "peer_rows": peer_rows,
        "emb_rows": sum(f.cardinality for f in prep.layout.sparse),
        "default_backend": backend, "bf16_native": bf16_native, "default_precision": default_precision,
        "default_prec": default_prec, "alt_prec": alt_prec, "lightning_precision": lightning_precision,
        "grad_clip": OptimConfig().grad_clip,
        "flops": flops, "x0_dim": x0_dim, "cross_share": 6.0 * DCN_PARAMS["cross_layers"] * x0_dim**2 / flops["dcnv2"],
        "runs": runs, "loaders": loaders, "adam": adam, "inference": inference, "profiles": profiles,
        "quality": quality, "phase_s": phase,
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
