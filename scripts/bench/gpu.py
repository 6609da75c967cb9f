"""Benchmark of the GPU paths on one CUDA device: CTR training throughput (against DeepCTR-Torch when importable),
GPU-vs-CPU test AUC after one epoch, exact top-100 search on torch, and two-tower training throughput.

Needs only torch, pytorch_lightning, pyarrow, numpy (and the package's own pydantic/PyYAML); DeepCTR-Torch and
faiss are used when importable and their rows are skipped with a line saying why otherwise. Data are synthetic
and seeded; none of the data preparation is timed.

- Training: DCNv2, DeepFM and DLRM (the sizes of `scripts.bench.ctr.PARAMS`, as in scripts.bench.train) built by
  `build_model` with the fused embedding, trained by `CTRTask.training_step` with the optimizers of
  `CTRTask.configure_optimizers()` (`TaskSteps`) under bf16 autocast, on Criteo-schema tensors (13 dense
  log1p-standardised, 26 categorical Zipf ids up to `--n-ids` per field, embedding dim 16), at each
  `--batch-sizes`, fed three ways: GPU-resident (`InMemoryBatches(device=cuda)`), host-fed (gathered on the host
  into two alternating pinned buffers, copied with non_blocking=True), and `InMemoryBatches` on the host with
  `.to(cuda, non_blocking=True)` per batch (what a Lightning run gets when the split is not resident); plus fp32
  resident. `--warmup` steps, then `--steps` steps between two torch.cuda.synchronize() calls. DeepCTR-Torch DCN
  (matrix) and DeepFM with the same sizes: their own `model.fit` (DataLoader over the rows, fp32) and their
  model's step on GPU-resident batches.
- `--compile`: DCNv2 resident bf16 with and without torch.compile (compile time reported apart).
- Quality (DCNv2 one epoch, GPU bf16 against CPU fp32), search and two-tower: see `scripts.bench.gpu_parts`.

Prints JSON (stdout) and, on a CUDA device unless `--no-doc`, rewrites the GPU section of docs/benchmarks.md with
the device name. A CPU run never writes the doc. `--smoke` runs every part at tiny sizes on the CPU (< 1 minute).

    python -m scripts.bench.gpu                       # the documented run (one CUDA device)
    python -m scripts.bench.gpu --smoke               # structure check on any machine, no doc write
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scripts.bench import peer
from scripts.bench.common import REPO, command, logger, machine, now, version
from scripts.bench.ctr import Batch, TaskSteps, build_ours, cycle
from scripts.bench.doc import DOC, display, update_doc
from scripts.bench.gpu_e2e import bench_e2e
from scripts.bench.gpu_parts import bench_quality, bench_search, bench_two_tower, criteo_layout, criteo_tensors
from scripts.bench.gpu_report import SECTION_TITLE, render
from scripts.bench.timing import free, time_steps
from training.common.data import InMemoryBatches
from training.common.features import LABEL, FeatureLayout
from training.index.config import IndexConfig

MODELS = ("dcnv2", "deepfm", "dlrm")
log = logger("bench_gpu")


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


def samples_per_s(step: Callable[[], Tensor], batch: int, args: argparse.Namespace, device: torch.device) -> float:
    return args.steps * batch / time_steps(step, args.warmup, args.steps, device).seconds


def bench_peer(lib: Any, name: str, tensors: Batch, layout: FeatureLayout, batch: int, args: argparse.Namespace,
               device: torch.device) -> dict[str, float]:
    """Samples/s of their `model.fit` over `--peer-steps` batches (after a `--peer-warmup` epoch), and of the body of
    their fit loop on GPU-resident batches (their DataLoader and per-step .item() calls left out)."""
    dev = "cuda:0" if device.type == "cuda" else "cpu"
    rows = min(batch * args.peer_steps, len(tensors[LABEL]))
    x, y = peer.inputs(tensors, layout, rows)
    fit = peer.timed_fit(lib, peer.counterpart(lib, name, layout, dev), x, y, batch,
                         warm_rows=min(batch * args.peer_warmup, rows), rows=rows, device=device)
    free(device)
    x, y = peer.inputs(tensors, layout)
    step = peer.fit_step(peer.counterpart(lib, name, layout, dev), x, y, batch, shuffle=True, seed=args.seed)
    out = {"peer_fit": fit.rows / fit.seconds, "peer_step": samples_per_s(step, batch, args, device)}
    del step
    free(device)
    return out


def bench_training(args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    log(f"training data: {args.pool_rows:,} rows, ids up to {args.n_ids:,} per field (not timed)")
    tensors = criteo_tensors(args.pool_rows, args.n_ids, args.seed)
    layout = criteo_layout(args.n_ids)
    lib, why = peer.load()
    out["peer"] = why or "DeepCTR-Torch " + version("deepctr-torch")
    if why:
        log(f"peer skipped: {why}")
    rows: list[dict[str, Any]] = []
    variants = [("resident", True), ("pinned", True), ("loader", True), ("resident", False)]
    for name in MODELS:
        for batch in args.batch_sizes:
            row: dict[str, Any] = {"model": name, "batch": batch}
            for kind, use_bf16 in variants:
                key = f"{kind}_{'bf16' if use_bf16 else 'fp32'}"
                step = TaskSteps(build_ours(name, layout, device=device), feeder(kind, tensors, batch, device,
                                                                                 args.seed),
                                 bf16=use_bf16, device_type=device.type)
                row[key] = samples_per_s(step, batch, args, device)
                log(f"{name} batch {batch} {key}: {row[key]:,.0f} samples/s")
                del step
                free(device)
            if lib is not None and name in ("dcnv2", "deepfm"):
                row |= bench_peer(lib, name, tensors, layout, batch, args, device)
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
            model = build_ours("dcnv2", layout, device=device)
            step = TaskSteps(torch.compile(model) if compiled else model,  # type: ignore[arg-type]
                             feeder("resident", tensors, batch, device, args.seed), bf16=True,
                             device_type=device.type)
            t = time_steps(step, args.warmup, args.steps, device)
            row["compiled" if compiled else "eager"] = args.steps * batch / t.seconds
            if compiled:
                row["compile_warmup_s"] = t.warmup_seconds
            del model, step
            free(device)
        log(f"dcnv2 batch {batch}: eager {row['eager']:,.0f}, compiled {row['compiled']:,.0f} samples/s")
        rows.append(row)
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, no doc write (structure check)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--doc", type=Path, default=DOC)
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
    ap.add_argument("--e2e-rows", type=int, default=20_000_000, help="Criteo-schema rows of the e2e section")
    ap.add_argument("--e2e-batch", type=int, default=65536)
    ap.add_argument("--e2e-n-ids", type=int, default=1_000_000)
    ap.add_argument("--e2e-compile", choices=["off", "on", "auto"], default="auto")
    ap.add_argument("--e2e-cpu-reference", action="store_true", help="also train each model on the CPU in fp32")
    ap.add_argument("--e2e-dir", default=str(REPO / "runs" / "bench_gpu_e2e"))
    args = ap.parse_args(argv)
    if args.smoke:  # every code path once, at sizes a busy 2-core machine runs in well under a minute
        args.device, args.no_doc, args.cpu_threads = "cpu", True, args.cpu_threads or 1
        args.n_ids, args.pool_rows, args.batch_sizes, args.warmup, args.steps = 200, 2048, [256], 1, 2
        args.peer_warmup, args.peer_steps = 1, 2
        args.auc_rows, args.auc_n_ids, args.auc_batch = 6000, 200, 512
        args.items, args.dim, args.queries, args.recall_queries = 5000, 16, 128, 64
        args.query_batches, args.search_seconds = [1, 8, 64], 0.1
        args.tt_batch, args.tt_ids, args.tt_pool, args.tt_steps = 128, 500, 1024, 2
        args.e2e_rows, args.e2e_batch, args.e2e_n_ids, args.e2e_compile = 20_000, 256, 200, "off"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stdout, sys.stdout = sys.stdout, sys.stderr  # stdout carries the JSON only (libraries print while we run)
    try:
        return run(args, argv, stdout)
    finally:
        sys.stdout = stdout


def gpu_machine(device: torch.device) -> dict[str, Any]:
    info = machine("numpy") | {"torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": torch.cuda.get_device_name(device), "gpu_mem_gib": props.total_memory / 1024**3,
                 "cuda": torch.version.cuda}
    return info


def run(args: argparse.Namespace, argv: Sequence[str] | None, stdout: Any) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: --device cuda but torch sees no CUDA device; use --device cpu or --smoke")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.cpu_threads or os.cpu_count() or 1)
    sections = set(args.sections.split(","))
    unknown = sections - {"training", "quality", "search", "two_tower", "e2e"}
    if unknown:
        raise SystemExit(f"bench_gpu: --sections: unknown {sorted(unknown)}; choose from training, quality, "
                         f"search, two_tower, e2e")
    t0 = time.perf_counter()
    res: dict[str, Any] = {"date": now(), "machine": gpu_machine(device), "device": str(device),
                           "command": command("scripts.bench.gpu", argv),
                           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    log(f"device: {res['machine'].get('gpu', 'CPU')} ({device})")
    for name, fn in (("training", bench_training), ("quality", bench_quality), ("search", bench_search),
                     ("two_tower", bench_two_tower), ("e2e", bench_e2e)):
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
    update_doc(args.doc, "bench_gpu", render(res))
    log(f"wrote the section '{SECTION_TITLE}' of {display(args.doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
