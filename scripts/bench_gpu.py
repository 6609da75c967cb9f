"""Benchmark of the GPU paths on one CUDA device: CTR training throughput (against DeepCTR-Torch when importable),
GPU-vs-CPU test AUC after one epoch, exact top-100 search on torch, and two-tower training throughput.

Needs only torch, pytorch_lightning, pyarrow, numpy (and the package's own pydantic/PyYAML); DeepCTR-Torch and
faiss are used when importable and their rows are skipped with a line saying why otherwise. Data are synthetic
and seeded; none of the data preparation is timed.

- Training: DCNv2, DeepFM and DLRM (the sizes of bench_train.py) built by `build_model` with the fused embedding,
  the optimizers of `CTRTask.configure_optimizers()`, BCE-with-logits on fp32 logits, the forward under bf16
  autocast, on Criteo-schema tensors (13 dense log1p-standardised, 26 categorical Zipf ids up to `--n-ids` per
  field, embedding dim 16), at each `--batch-sizes`, fed three ways: GPU-resident (`InMemoryBatches(device=cuda)`),
  host-fed (gathered on the host into two alternating pinned buffers, copied with non_blocking=True), and
  `InMemoryBatches` on the host with `.to(cuda, non_blocking=True)` per batch (what a Lightning run gets when the
  split is not resident); plus fp32 resident. `--warmup` steps, then `--steps` steps between two
  torch.cuda.synchronize() calls. DeepCTR-Torch DCN (matrix) and DeepFM with the same sizes: their own
  `model.fit` (DataLoader over the rows, fp32) and their model's step on GPU-resident batches.
- `--compile`: DCNv2 resident bf16 with and without torch.compile (compile time reported apart).
- Quality: DCNv2 trained one epoch on `--auc-rows` rows (90/10 split) on the GPU in bf16 and on the CPU in fp32
  from the same initial weights and batch order, then scored on the test split (AUC, logloss).
- Search: `torch_exact` over `--items` x `--dim` unit vectors, top-100 through `ItemIndex.search` at each
  `--query-batches` (queries/s), with and without exclusions, against torch_exact on the CPU of the same machine;
  FAISS IVF-Flat / HNSW on the CPU only where faiss is importable.
- Two-tower: `TwoTower` + `sampled_softmax_loss` (logQ) on synthetic ids, batch `--tt-batch`, bf16, Adam.

Prints JSON (stdout) and, on a CUDA device unless `--no-doc`, rewrites the GPU section of docs/benchmarks.md with
the device name. A CPU run never writes the doc. `--smoke` runs every part at tiny sizes on the CPU (< 1 minute).

    python scripts/bench_gpu.py                       # the documented run (one CUDA device)
    python scripts/bench_gpu.py --smoke               # structure check on any machine, no doc write
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
import benchdoc  # noqa: E402

from feature_store.synthetic import generate_criteo_schema  # noqa: E402
from training.common.data import InMemoryBatches  # noqa: E402
from training.common.features import DENSE, LABEL, SPARSE, FeatureLayout, Field, SequenceField, seq_key, seq_len_key  # noqa: E402
from training.common.metrics import auc, logloss  # noqa: E402
from training.index.faiss_index import IndexConfig, ItemIndex, TorchExactIndex, build_index  # noqa: E402
from training.ranking.config import OptimConfig  # noqa: E402
from training.ranking.models import build_model  # noqa: E402
from training.ranking.task import CTRTask  # noqa: E402

DOC_NAME, SECTION_TITLE = "bench_gpu", "## GPU (bench_gpu.py)"
N_DENSE, N_SPARSE, EMB_DIM, K = 13, 26, 16, 100
PARAMS: dict[str, dict[str, Any]] = {  # the sizes of bench_train.py
    "dcnv2": {"embedding_dim": EMB_DIM, "cross_layers": 3, "mlp": [256, 128], "structure": "parallel"},
    "deepfm": {"embedding_dim": EMB_DIM, "mlp": [256, 128]},
    "dlrm": {"embedding_dim": EMB_DIM, "bottom_mlp": [64], "top_mlp": [256, 128]},
}
PEER = {"dcnv2": "DCN (matrix)", "deepfm": "DeepFM"}
Batch = dict[str, Tensor]


def log(msg: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bf16(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


# ------------------------------------------------------------------------------------------------ data


def criteo_layout(n_ids: int) -> FeatureLayout:
    return FeatureLayout(sparse=tuple(Field(f"C{i}", n_ids + 1) for i in range(1, N_SPARSE + 1)), bags=(),
                         sequences=(), dense_names=tuple(f"I{j}" for j in range(1, N_DENSE + 1)), dense_dim=N_DENSE)


def criteo_tensors(rows: int, n_ids: int, seed: int, train_rows: int | None = None) -> Batch:
    """`generate_criteo_schema` rows as model inputs: ids as they are (1..n_ids; 0 unused), I1..I13 as
    log1p then standardised with the stats of the first `train_rows` rows (missing -> 0 = the mean)."""
    table = generate_criteo_schema(rows, n_ids=n_ids, seed=seed)
    fit = slice(0, train_rows or rows)
    sparse = np.stack([table.column(f"C{i}").to_numpy() for i in range(1, N_SPARSE + 1)], axis=1)
    dense = np.empty((rows, N_DENSE), dtype=np.float32)
    for j in range(N_DENSE):
        x = np.log1p(np.maximum(table.column(f"I{j + 1}").to_numpy(zero_copy_only=False).astype(np.float64), 0))
        mean, std = np.nanmean(x[fit]), np.nanstd(x[fit]) + 1e-9
        dense[:, j] = np.nan_to_num((x - mean) / std, nan=0.0)
    return {SPARSE: torch.from_numpy(sparse.astype(np.int64)), DENSE: torch.from_numpy(dense),
            LABEL: torch.from_numpy(table.column("label").to_numpy().astype(np.float32))}


def take(tensors: Batch, lo: int, hi: int) -> Batch:
    return {k: v[lo:hi].contiguous() for k, v in tensors.items()}


# --------------------------------------------------------------------------------------------- feeders


def cycle(batches: InMemoryBatches) -> Iterator[Batch]:
    while True:
        yield from batches


class PinnedFeeder:
    """Host-fed batches: a seeded permutation gathered on the host into two alternating pinned buffers, each
    copied to the device with non_blocking=True; a buffer is reused only after its copy has finished (event), so
    the next gather overlaps the device's work on the previous batch."""

    def __init__(self, tensors: Batch, batch_size: int, device: torch.device, seed: int) -> None:
        self.src, self.batch_size, self.device = tensors, batch_size, device
        pin = device.type == "cuda"
        self.stage = [{k: self._buffer(v, pin) for k, v in tensors.items()} for _ in range(2)]
        self.events: list[Any] = [None, None]
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.at, self.i = torch.randperm(len(tensors[LABEL]), generator=self.gen), 0, 0

    def _buffer(self, v: Tensor, pin: bool) -> Tensor:
        buf = torch.empty((self.batch_size, *v.shape[1:]), dtype=v.dtype)
        return buf.pin_memory() if pin else buf

    def __call__(self) -> Batch:
        if self.at + self.batch_size > len(self.order):
            self.order, self.at = torch.randperm(len(self.order), generator=self.gen), 0
        idx = self.order[self.at: self.at + self.batch_size]
        self.at += self.batch_size
        slot, self.i = self.i % 2, self.i + 1
        if self.events[slot] is not None:
            self.events[slot].synchronize()
        stage = self.stage[slot]
        for k, v in self.src.items():
            torch.index_select(v, 0, idx, out=stage[k])
        out = {k: v.to(self.device, non_blocking=True) for k, v in stage.items()}
        if self.device.type == "cuda":
            self.events[slot] = torch.cuda.Event()
            self.events[slot].record()
        return out


def feeder(kind: str, tensors: Batch, batch_size: int, device: torch.device, seed: int) -> Callable[[], Batch]:
    if kind == "resident":
        return cycle(InMemoryBatches(tensors, batch_size, shuffle=True, seed=seed, drop_last=True,
                                     device=device)).__next__
    if kind == "pinned":
        return PinnedFeeder(tensors, batch_size, device, seed)
    it = cycle(InMemoryBatches(tensors, batch_size, shuffle=True, seed=seed, drop_last=True,
                               pin_memory=device.type == "cuda"))
    return lambda: {k: v.to(device, non_blocking=True) for k, v in next(it).items()}


# --------------------------------------------------------------------------------------------- training


def build_ours(name: str, layout: FeatureLayout, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it trains: no host-side init and copy of the big tables
        return build_model(name, layout, {**PARAMS[name], "embedding_backend": "fused"})


def our_step(model: nn.Module, feed: Callable[[], Batch], device: torch.device, use_bf16: bool
             ) -> Callable[[], Tensor]:
    """One CTRTask-equivalent step: forward under bf16 autocast, BCE on fp32 logits, backward, its optimizers."""
    opt = CTRTask(model, OptimConfig()).configure_optimizers()
    model.train()

    def step() -> Tensor:
        batch = feed()
        with bf16(device, use_bf16):
            logits = model(batch)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch[LABEL])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def time_steps(step: Callable[[], Any], warmup: int, steps: int, device: torch.device) -> tuple[float, float]:
    """Seconds of `steps` steps after `warmup` (synchronised before and after), and the warm-up seconds."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - t1, t1 - t0


def peer_import() -> tuple[Any, str]:
    """DeepCTR-Torch's modules, or None and the reason it cannot be used here."""
    if importlib.util.find_spec("deepctr_torch") is None:
        return None, "DeepCTR-Torch is not installed (pip install --no-deps deepctr_torch to compare)"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import deepctr_torch.callbacks as callbacks
            import deepctr_torch.inputs as inputs
            import deepctr_torch.models as models
    except Exception as e:  # its own imports (sklearn, tqdm, requests) may be missing on a bare GPU machine
        return None, f"DeepCTR-Torch is installed but does not import ({type(e).__name__}: {e})"
    return (callbacks, inputs, models), ""


def build_peer(mods: Any, name: str, n_ids: int, device: torch.device) -> Any:
    _, inputs, models = mods
    sparse = [inputs.SparseFeat(f"C{i}", vocabulary_size=n_ids + 1, embedding_dim=EMB_DIM)
              for i in range(1, N_SPARSE + 1)]
    dense = [inputs.DenseFeat(f"I{j}", 1) for j in range(1, N_DENSE + 1)]
    dev = "cuda:0" if device.type == "cuda" else "cpu"
    with contextlib.redirect_stdout(io.StringIO()):
        if name == "dcnv2":
            model = models.DCN([], sparse + dense, cross_num=PARAMS["dcnv2"]["cross_layers"],
                               cross_parameterization="matrix", dnn_hidden_units=tuple(PARAMS["dcnv2"]["mlp"]),
                               l2_reg_linear=0, l2_reg_embedding=0, l2_reg_cross=0, l2_reg_dnn=0, device=dev, seed=0)
        else:
            model = models.DeepFM(sparse + dense, sparse + dense, dnn_hidden_units=tuple(PARAMS["deepfm"]["mlp"]),
                                  l2_reg_linear=0, l2_reg_embedding=0, l2_reg_dnn=0, device=dev, seed=0)
        model.compile("adam", "binary_crossentropy")
    return model


def peer_columns(tensors: Batch, rows: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    sparse, dense = tensors[SPARSE][:rows].numpy(), tensors[DENSE][:rows].numpy()
    x = {f"C{i + 1}": sparse[:, i].astype(np.float32) for i in range(N_SPARSE)}
    x |= {f"I{j + 1}": dense[:, j] for j in range(N_DENSE)}
    return x, tensors[LABEL][:rows].numpy()


def run_peer_fit(mods: Any, name: str, tensors: Batch, batch: int, args: argparse.Namespace,
                 device: torch.device) -> float:
    """Samples/s of their `model.fit` over `--peer-steps` batches (one epoch, after a `--peer-warmup` epoch),
    timed from their on_epoch_begin to their on_epoch_end callback."""
    callbacks = mods[0]

    class Clock(callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.begin = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            sync(device)
            self.end = time.perf_counter()

    model = build_peer(mods, name, args.n_ids, device)
    rows = min(batch * args.peer_steps, len(tensors[LABEL]))
    x, y = peer_columns(tensors, rows)
    clock = Clock()
    with contextlib.redirect_stdout(io.StringIO()):
        warm = min(batch * args.peer_warmup, rows)
        model.fit({k: v[:warm] for k, v in x.items()}, y[:warm], batch_size=batch, epochs=1, verbose=0)
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True, callbacks=[clock])
    del model
    free(device)
    return rows / (clock.end - clock.begin)


def run_peer_step(mods: Any, name: str, tensors: Batch, batch: int, args: argparse.Namespace,
                  device: torch.device) -> float:
    """Samples/s of the body of their fit loop (forward, their loss with reduction='sum', backward, their Adam)
    on GPU-resident batches: their DataLoader and per-step .item() calls left out."""
    model = build_peer(mods, name, args.n_ids, device)
    x, y = peer_columns(tensors, len(tensors[LABEL]))
    cols = torch.from_numpy(np.stack([x[f] for f in model.feature_index], axis=1)).to(device)
    data = {"x": cols, LABEL: torch.from_numpy(y).to(device)}
    it = cycle(InMemoryBatches(data, batch, shuffle=True, seed=args.seed, drop_last=True))
    model.train()

    def step() -> Tensor:
        b = next(it)
        pred = model(b["x"]).squeeze(-1)
        loss = model.loss_func(pred, b[LABEL], reduction="sum") + model.get_regularization_loss() + model.aux_loss
        model.optim.zero_grad()
        loss.backward()
        model.optim.step()
        return loss.detach()

    elapsed, _ = time_steps(step, args.warmup, args.steps, device)
    return args.steps * batch / elapsed  # the caller frees the model once this frame is gone


def bench_training(args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    log(f"training data: {args.pool_rows:,} rows, ids up to {args.n_ids:,} per field (not timed)")
    tensors = criteo_tensors(args.pool_rows, args.n_ids, args.seed)
    layout = criteo_layout(args.n_ids)
    mods, why = peer_import()
    out["peer"] = why or "DeepCTR-Torch " + _version("deepctr-torch")
    if why:
        log(f"peer skipped: {why}")
    rows: list[dict[str, Any]] = []
    variants = [("resident", True), ("pinned", True), ("loader", True), ("resident", False)]
    for name in PARAMS:
        for batch in args.batch_sizes:
            row: dict[str, Any] = {"model": name, "batch": batch}
            for kind, use_bf16 in variants:
                key = f"{kind}_{'bf16' if use_bf16 else 'fp32'}"
                model = build_ours(name, layout, device)
                step = our_step(model, feeder(kind, tensors, batch, device, args.seed), device, use_bf16)
                elapsed, _ = time_steps(step, args.warmup, args.steps, device)
                row[key] = args.steps * batch / elapsed
                log(f"{name} batch {batch} {key}: {row[key]:,.0f} samples/s")
                del model, step
                free(device)
            if mods is not None and name in PEER:
                row["peer_fit"] = run_peer_fit(mods, name, tensors, batch, args, device)
                row["peer_step"] = run_peer_step(mods, name, tensors, batch, args, device)
                free(device)
                log(f"{name} batch {batch} DeepCTR-Torch fit {row['peer_fit']:,.0f}, step {row['peer_step']:,.0f}")
            rows.append(row)
    out["training"] = rows
    if args.compile:
        out["compile"] = bench_compile(args, device, tensors, layout)


def bench_compile(args: argparse.Namespace, device: torch.device, tensors: Batch, layout: FeatureLayout
                  ) -> list[dict[str, Any]]:
    rows = []
    for batch in args.batch_sizes:
        row: dict[str, Any] = {"model": "dcnv2", "batch": batch}
        for compiled in (False, True):
            model = build_ours("dcnv2", layout, device)
            run = torch.compile(model) if compiled else model
            step = our_step(run, feeder("resident", tensors, batch, device, args.seed), device, True)
            elapsed, warm = time_steps(step, args.warmup, args.steps, device)
            row["compiled" if compiled else "eager"] = args.steps * batch / elapsed
            if compiled:
                row["compile_warmup_s"] = warm
            del model, run, step
            free(device)
        log(f"dcnv2 batch {batch}: eager {row['eager']:,.0f}, compiled {row['compiled']:,.0f} samples/s")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- quality


def one_epoch(train: Batch, test: Batch, layout: FeatureLayout, device: torch.device, use_bf16: bool,
              args: argparse.Namespace) -> dict[str, Any]:
    """DCNv2 trained one epoch (same initial weights and batch order on every device), scored on `test`."""
    model = build_ours("dcnv2", layout, device)
    resident = device if device.type == "cuda" else None
    batches = InMemoryBatches(train, args.auc_batch, shuffle=True, seed=args.seed, device=resident)
    it = iter(batches)
    step = our_step(model, lambda: {k: v.to(device, non_blocking=True) for k, v in next(it).items()}, device,
                    use_bf16)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(len(batches)):
        last = step()
    sync(device)
    seconds = time.perf_counter() - t0
    model.eval()
    probs = []
    with torch.no_grad(), bf16(device, use_bf16):
        for b in InMemoryBatches(test, 65536, shuffle=False):
            probs.append(torch.sigmoid(model({k: v.to(device) for k, v in b.items()}).float()).cpu())
    p = torch.cat(probs)
    del model, step
    free(device)
    return {"device": str(device), "precision": "bf16" if use_bf16 else "fp32", "train_s": seconds,
            "samples_per_s": len(train[LABEL]) / seconds, "final_train_loss": float(last),
            "test_auc": auc(test[LABEL], p), "test_logloss": logloss(test[LABEL], p)}


def bench_quality(args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    n_train = args.auc_rows - args.auc_rows // 10
    log(f"quality data: {args.auc_rows:,} rows ({n_train:,} train), ids up to {args.auc_n_ids:,} (not timed)")
    data = criteo_tensors(args.auc_rows, args.auc_n_ids, args.seed + 1, train_rows=n_train)
    train, test = take(data, 0, n_train), take(data, n_train, args.auc_rows)
    layout = criteo_layout(args.auc_n_ids)
    runs = [one_epoch(train, test, layout, device, True, args)]
    log(f"one epoch on {device} bf16: test AUC {runs[0]['test_auc']:.4f} ({runs[0]['train_s']:.1f} s)")
    runs.append(one_epoch(train, test, layout, torch.device("cpu"), False, args))
    log(f"one epoch on cpu fp32: test AUC {runs[1]['test_auc']:.4f} ({runs[1]['train_s']:.1f} s)")
    out["quality"] = {"rows": args.auc_rows, "train_rows": n_train, "n_ids": args.auc_n_ids,
                      "batch": args.auc_batch, "runs": runs}


# ----------------------------------------------------------------------------------------------- search


def clustered(n: int, centres: np.ndarray, rng: np.random.Generator, spread: float = 1.0) -> np.ndarray:
    """n unit vectors normalise(random centre + noise of norm about `spread`): bench_index.py's data, so the
    FAISS figures compare with its section."""
    dim = centres.shape[1]
    x = centres[rng.integers(0, len(centres), n)]
    x += np.float32(spread / math.sqrt(dim)) * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def qps(item: ItemIndex, queries: np.ndarray, batch: int, seconds: float, **exclusions: Any) -> dict[str, float]:
    """Queries/s of `ItemIndex.search(top-100)` calls of `batch` queries, repeated for about `seconds`."""
    calls = max(len(queries) // batch, 1)

    def call(i: int) -> None:
        lo = (i % calls) * batch
        ex = {k: (v[lo: lo + batch] if k == "exclude" else v) for k, v in exclusions.items()}
        item.search(queries[lo: lo + batch], K, **ex)

    call(0)  # warm-up
    done, t0 = 0, time.perf_counter()
    while done < 3 or time.perf_counter() - t0 < seconds:
        call(done)
        done += 1
    elapsed = time.perf_counter() - t0
    return {"batch": batch, "qps": done * batch / elapsed, "ms_per_call": 1e3 * elapsed / done, "calls": done}


def bench_search(args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    rng = np.random.default_rng(args.seed)
    log(f"search data: {args.items:,} x {args.dim} unit vectors, {args.queries:,} queries (not timed)")
    centres = clustered(1000, np.zeros((1, args.dim), np.float32), rng)  # 1000 random unit centres
    vectors, queries = clustered(args.items, centres, rng), clustered(args.queries, centres, rng)
    ids = np.arange(args.items, dtype=np.int64)
    cfg = {"type": "torch_exact", "chunk_items": args.chunk_items, "query_batch": args.query_batch, "recall_k": K,
           "recall_queries": args.recall_queries}
    item = build_index(vectors, ids, IndexConfig(device=device.type, **cfg), queries)
    exclude = [rng.choice(args.items, 100) for _ in range(len(queries))]
    excl_all = rng.choice(args.items, args.items // 100, replace=False)
    res: dict[str, Any] = {"items": args.items, "dim": args.dim, "k": K, "device": item.device,
                           "chunk_items": args.chunk_items, "query_batch": args.query_batch, "recall": item.recall,
                           "build_s": item.timings, "exclusions": "100 ids per query + 1% of the corpus for all"}
    res["torch_exact"] = [qps(item, queries, b, args.search_seconds) for b in args.query_batches]
    res["torch_exact_excl"] = [qps(item, queries, b, args.search_seconds, exclude=exclude, exclude_all=excl_all)
                               for b in args.query_batches]
    for r in res["torch_exact"]:
        log(f"torch_exact {item.device} batch {r['batch']}: {r['qps']:,.0f} q/s ({r['ms_per_call']:.2f} ms/call)")
    del item
    free(device)
    if device.type == "cuda":
        cpu = ItemIndex(TorchExactIndex(vectors, device="cpu", chunk_items=args.chunk_items,
                                        query_batch=args.query_batch, copy=False), ids,
                        {"type": "torch_exact", "device": "cpu"}, {})
        res["torch_exact_cpu"] = [qps(cpu, queries, b, args.search_seconds) for b in args.query_batches if b > 1]
    res["faiss"] = bench_faiss(args, vectors, ids, queries) if importlib.util.find_spec("faiss") else None
    out["search"] = res


def bench_faiss(args: argparse.Namespace, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray
                ) -> list[dict[str, Any]]:
    """FAISS on the CPU of this machine (IVF-Flat and HNSW with bench_index's fastest >= 0.95-recall settings)."""
    rows = []
    nlist = max(1, min(len(ids) // 39, round(4 * math.sqrt(len(ids)))))
    for kind, knobs in (("ivf_flat", {"nlist": nlist, "nprobe": min(8, nlist)}),
                        ("hnsw", {"hnsw_m": 32, "ef_search": 128})):
        log(f"faiss {kind} {knobs}: building over {len(ids):,} vectors")
        item = build_index(vectors, ids, IndexConfig(type=kind, recall_floor=1e-6, recall_k=K,
                                                     recall_queries=args.recall_queries, **knobs), queries)
        rows.append({"type": kind, "params": knobs, "recall": item.recall["recall_at_k"],
                     "build_s": item.timings["train"] + item.timings["add"],
                     "qps": [qps(item, queries, b, args.search_seconds) for b in args.query_batches]})
    return rows


# -------------------------------------------------------------------------------------------- two-tower


def bench_two_tower(args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    try:
        from training.retrieval.config import TwoTowerConfig
        from training.retrieval.layout import TowerLayout
        from training.retrieval.model import TwoTower, sampled_softmax_loss
    except ImportError as e:
        out["two_tower"] = {"skipped": f"training.retrieval does not import here ({e})"}
        log(f"two-tower skipped: {out['two_tower']['skipped']}")
        return
    n, seq_len = args.tt_ids, 20
    layout = FeatureLayout(sparse=(Field("user_id", n + 1), Field("item_id", n + 1), Field("category", 1001)),
                           bags=(), sequences=(SequenceField("hist_items", "item_id", seq_len),), dense_names=(),
                           dense_dim=0)
    towers = TowerLayout(layout=layout, user_fields=(0,), item_fields=(1, 2), user_sequences=("hist_items",),
                         user_dense=(), item_dense=())
    rng = np.random.default_rng(args.seed)
    rows = args.tt_pool

    def zipf(size: Any) -> np.ndarray:
        return (rng.zipf(1.2, size) - 1) % n + 1

    items = zipf(rows)
    lengths = rng.integers(0, seq_len + 1, rows)
    hist = zipf((rows, seq_len)) * (np.arange(seq_len)[None] < lengths[:, None])
    data = {SPARSE: torch.from_numpy(np.stack([zipf(rows), items, items % 1000 + 1], axis=1).astype(np.int64)),
            DENSE: torch.zeros((rows, 0)), seq_key("hist_items"): torch.from_numpy(hist.astype(np.int64)),
            seq_len_key("hist_items"): torch.from_numpy(lengths.astype(np.int64))}
    freq = np.bincount(items, minlength=n + 1).astype(np.float64) + 1.0
    log_q = torch.from_numpy(np.log(freq / freq.sum()).astype(np.float32)).to(device)
    torch.manual_seed(0)
    cfg = TwoTowerConfig()
    with torch.device(device):
        model = TwoTower(towers, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    it = cycle(InMemoryBatches(data, args.tt_batch, shuffle=True, seed=args.seed, drop_last=True, device=device))

    def step() -> Tensor:
        batch = next(it)
        codes = batch[SPARSE][:, 1]
        with bf16(device, device.type == "cuda"):
            user, item = model(batch)
            loss = sampled_softmax_loss(user, item, codes, log_q[codes], model.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    elapsed, _ = time_steps(step, args.warmup, args.tt_steps, device)
    out["two_tower"] = {"batch": args.tt_batch, "ids": n, "history": seq_len, "embedding_dim": cfg.embedding_dim,
                        "output_dim": cfg.output_dim, "precision": "bf16" if device.type == "cuda" else "fp32",
                        "samples_per_s": args.tt_steps * args.tt_batch / elapsed}
    log(f"two-tower batch {args.tt_batch}: {out['two_tower']['samples_per_s']:,.0f} samples/s")


# ------------------------------------------------------------------------------------------------ report


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(device: torch.device) -> dict[str, Any]:
    info = benchdoc.machine() | {"torch": torch.__version__, "numpy": np.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": torch.cuda.get_device_name(device), "gpu_mem_gib": props.total_memory / 1024**3,
                 "cuda": torch.version.cuda}
    return info


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.0f}"


DCNV2_GOAL = 3_000_000  # samples/s on one GPU (NVIDIA's DLRM reference: 4.0M rec/s on one A100-80GB with AMP)
PEER_GOAL = 5.0  # times the peer's samples/s at the same model and batch


def _training_goals(rows: list[dict[str, Any]]) -> list[str]:
    """The goal lines: DCNv2 samples/s (best bf16 feed) and the ratio to DeepCTR-Torch, both ways it is run."""
    def best(r: dict[str, Any]) -> float:
        return max(r["resident_bf16"], r["pinned_bf16"])

    dcn = [r for r in rows if r["model"] == "dcnv2"]
    out = []
    if dcn:
        top = max(dcn, key=best)
        verdict = "met" if best(top) >= DCNV2_GOAL else "NOT met"
        out.append(f"- Goal, DCNv2 at least {DCNV2_GOAL:,} samples/s: **{verdict}** ({best(top):,.0f} at batch "
                   f"{top['batch']:,}, resident or pinned host-fed bf16)")
    for key, what in (("peer_fit", "its own `fit`"), ("peer_step", "its model's step on resident batches")):
        pairs = [(best(r) / r[key], r) for r in rows if r.get(key)]
        if pairs:
            low, r = min(pairs, key=lambda p: p[0])
            verdict = "met" if low >= PEER_GOAL else "NOT met"
            out.append(f"- Goal, at least {PEER_GOAL:g}x DeepCTR-Torch run through {what}: **{verdict}** (lowest "
                       f"ratio {low:.1f}x, {r['model']} batch {r['batch']:,}; highest "
                       f"{max(p[0] for p in pairs):.1f}x)")
    return out


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [SECTION_TITLE, "",
             f"- Date: {res['date']}",
             f"- Device: **{m.get('gpu', 'CPU')}** ({m.get('gpu_mem_gib', 0):.0f} GiB, CUDA {m.get('cuda')}); host "
             f"{m['cpu']}, {m['usable']} cores; Python {m['python']}, torch {m['torch']}",
             f"- Command: `{res['command']}`", ""]
    if "training" in res:
        lines += ["### CTR training samples/s (bf16 autocast, fused embedding, CTRTask optimizers)", "",
                  f"Criteo-schema tensors: 13 dense, 26 categorical Zipf ids up to {res['args']['n_ids']:,} per "
                  f"field, embedding dim 16; {res['args']['steps']} timed steps after {res['args']['warmup']}. "
                  f"Peer: {res['peer']} (fp32, its own `fit`; and its model's step on resident batches).", "",
                  "| model | batch | resident | pinned host-fed | InMemoryBatches host | resident fp32 | "
                  "DeepCTR-Torch fit | DeepCTR-Torch step (resident) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["training"]:
            lines.append(f"| {r['model']} | {r['batch']:,} | {_fmt(r['resident_bf16'])} | {_fmt(r['pinned_bf16'])} | "
                         f"{_fmt(r['loader_bf16'])} | {_fmt(r['resident_fp32'])} | {_fmt(r.get('peer_fit'))} | "
                         f"{_fmt(r.get('peer_step'))} |")
        lines += ["", "Resident: `InMemoryBatches(device=cuda)` (gathers on the GPU). Pinned host-fed: gathered on the "
                  "host into two alternating pinned buffers, copied with non_blocking=True. InMemoryBatches host: "
                  "gathered on the host (pageable), then `.to(cuda, non_blocking=True)`. DeepCTR-Torch has no DLRM.",
                  "", *_training_goals(res["training"]), ""]
    for r in res.get("compile", []):
        lines.append(f"- torch.compile, DCNv2 batch {r['batch']:,} resident bf16: eager {_fmt(r['eager'])}, "
                     f"compiled {_fmt(r['compiled'])} samples/s (compile + warm-up {r['compile_warmup_s']:.0f} s)")
    if "quality" in res:
        q = res["quality"]
        lines += ["", "### Fast is not wrong: DCNv2 test AUC after one epoch", "",
                  f"{q['rows']:,} rows (90/10 split), ids up to {q['n_ids']:,}, batch {q['batch']:,}, same initial "
                  f"weights and batch order.", "",
                  "| device | precision | train s | samples/s | test AUC | test logloss |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in q["runs"]:
            lines.append(f"| {r['device']} | {r['precision']} | {r['train_s']:.1f} | {_fmt(r['samples_per_s'])} | "
                         f"{r['test_auc']:.4f} | {r['test_logloss']:.4f} |")
        lines.append(f"\nAUC difference (device - CPU): {q['runs'][0]['test_auc'] - q['runs'][1]['test_auc']:+.4f}")
    if "search" in res:
        s = res["search"]
        lines += ["", f"### Exact top-{s['k']} on torch (`index.type: torch_exact`)", "",
                  f"{s['items']:,} items x {s['dim']} dims (unit vectors around 1,000 centres, as in bench_index), "
                  f"through `ItemIndex.search`; chunk_items {s['chunk_items']:,}, query_batch {s['query_batch']}; "
                  f"IEEE float32 matmul (no TF32); recall@"
                  f"{s['k']} against exact search {s['recall']['recall_at_k']:.4f}. Exclusions: {s['exclusions']}.",
                  "", "| batch | q/s | ms per call | q/s with exclusions | torch_exact on this CPU q/s |",
                  "|---:|---:|---:|---:|---:|"]
        cpu = {r["batch"]: r["qps"] for r in s.get("torch_exact_cpu", [])}
        for r, e in zip(s["torch_exact"], s["torch_exact_excl"], strict=True):
            lines.append(f"| {r['batch']:,} | {_fmt(r['qps'])} | {r['ms_per_call']:.2f} | {_fmt(e['qps'])} | "
                         f"{_fmt(cpu.get(r['batch']))} |")
        if s["faiss"]:
            for f in s["faiss"]:
                q = ", ".join(f"batch {r['batch']}: {_fmt(r['qps'])} q/s" for r in f["qps"])
                lines.append(f"\nFAISS {f['type']} {f['params']} (CPU): recall@{s['k']} {f['recall']:.4f}; {q}")
        else:
            lines.append("\nFAISS figures: see bench_index section (CPU machine).")
    if "two_tower" in res:
        t = res["two_tower"]
        lines += ["", "### Two-tower training", ""]
        lines.append(f"skipped: {t['skipped']}" if "skipped" in t else
                     f"TwoTower + sampled_softmax_loss (logQ), {t['precision']}, batch {t['batch']:,}, ids up to "
                     f"{t['ids']:,}, history {t['history']}: **{_fmt(t['samples_per_s'])} samples/s**")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, no doc write (structure check)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--doc", type=Path, default=benchdoc.DOC)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--sections", default="training,quality,search,two_tower")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-ids", type=int, default=1_000_000)
    ap.add_argument("--pool-rows", type=int, default=2_097_152, help="rows the training batches are drawn from")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8192, 65536])
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--peer-warmup", type=int, default=2)
    ap.add_argument("--peer-steps", type=int, default=10)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile on/off for DCNv2")
    ap.add_argument("--auc-rows", type=int, default=2_000_000)
    ap.add_argument("--auc-n-ids", type=int, default=100_000)
    ap.add_argument("--auc-batch", type=int, default=4096)
    ap.add_argument("--cpu-threads", type=int, default=None, help="torch threads for the CPU epoch (default all)")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=10_240)
    ap.add_argument("--recall-queries", type=int, default=1000)
    ap.add_argument("--query-batches", type=int, nargs="+", default=[1, 64, 1024])
    ap.add_argument("--search-seconds", type=float, default=3.0)
    ap.add_argument("--chunk-items", type=int, default=IndexConfig().chunk_items)
    ap.add_argument("--query-batch", type=int, default=IndexConfig().query_batch)
    ap.add_argument("--tt-batch", type=int, default=4096)
    ap.add_argument("--tt-ids", type=int, default=1_000_000)
    ap.add_argument("--tt-pool", type=int, default=1_048_576)
    ap.add_argument("--tt-steps", type=int, default=40)
    args = ap.parse_args(argv)
    if args.smoke:  # every code path once, at sizes a busy 2-core machine runs in well under a minute
        args.device, args.no_doc, args.cpu_threads = "cpu", True, args.cpu_threads or 1
        args.n_ids, args.pool_rows, args.batch_sizes, args.warmup, args.steps = 200, 2048, [256], 1, 2
        args.peer_warmup, args.peer_steps = 1, 2
        args.auc_rows, args.auc_n_ids, args.auc_batch = 6000, 200, 512
        args.items, args.dim, args.queries, args.recall_queries = 5000, 16, 128, 64
        args.query_batches, args.search_seconds = [1, 8, 64], 0.1
        args.tt_batch, args.tt_ids, args.tt_pool, args.tt_steps = 128, 500, 1024, 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stdout, sys.stdout = sys.stdout, sys.stderr  # stdout carries the JSON only (libraries print while we run)
    try:
        return run(args, argv, stdout)
    finally:
        sys.stdout = stdout


def run(args: argparse.Namespace, argv: Sequence[str] | None, stdout: Any) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: --device cuda but torch sees no CUDA device; use --device cpu or --smoke")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.cpu_threads or os.cpu_count() or 1)
    sections = set(args.sections.split(","))
    unknown = sections - {"training", "quality", "search", "two_tower"}
    if unknown:
        raise SystemExit(f"bench_gpu: --sections: unknown {sorted(unknown)}; choose from training, quality, "
                         f"search, two_tower")
    t0 = time.perf_counter()
    argv_shown = list(argv) if argv is not None else sys.argv[1:]
    res: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(device),
                           "device": str(device), "command": " ".join(["python scripts/bench_gpu.py", *argv_shown]),
                           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    log(f"device: {res['machine'].get('gpu', 'CPU')} ({device})")
    for name, fn in (("training", bench_training), ("quality", bench_quality), ("search", bench_search),
                     ("two_tower", bench_two_tower)):
        if name in sections:
            fn(args, device, res)
            free(device)
    res["seconds"] = time.perf_counter() - t0
    text = json.dumps(res, indent=2, default=str)
    print(text, file=stdout, flush=True)
    if args.json:
        args.json.write_text(text + "\n")
    if args.no_doc:
        return 0
    if device.type != "cuda":
        log("not writing docs/benchmarks.md: this run is not on a CUDA device (GPU figures come from a GPU)")
        return 0
    benchdoc.update_doc(args.doc, DOC_NAME, render(res))
    log(f"wrote the section '{SECTION_TITLE}' of {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
