"""Benchmark of CTR training, loading and scoring throughput: RecForge against DeepCTR-Torch, in one run.

Data: `generate_criteo_schema` rows (13 numeric, 26 Zipf-distributed categorical fields), split 90 / 10 into
train and test, a `FeatureSpec` fitted on train (C1..C26 vocabularies, I1..I13 log1p_standardize), both splits
transformed and written as Parquet shards under the work directory. None of this is timed.

Timed, with `torch.set_num_threads(--threads)`, contenders interleaved (ours, peer, ours, ...), the order
reversed every other round:

- RecForge, training defaults: DCNv2, DLRM and DeepFM built by `build_model` with the embedding backend that
  `embedding_backend: auto` resolves to (`resolve_backend`), trained by `CTRTask.training_step` with the optimizers
  of `CTRTask.configure_optimizers()` (`TaskSteps`: what Lightning's automatic optimization does, without
  clipping), in the precision `train.runtime.precision: auto` picks on CPU (`lightning_precision`; "bf16-mixed" is
  bf16 autocast around the step, as Lightning does on CPU); batches from `InMemoryBatches` over `load_split`
  tensors (the gather is inside the timed loop); `--warmup` steps, then `--steps` timed steps. The same in the
  other precision (fp32 when the default is bf16; bf16 autocast when the default is fp32 and
  `cpu_has_native_bf16()`), DCNv2 with the fused embedding backend in fp32 (the backend comparison), and DCNv2
  through the project's Trainer (`CTRTask` + `build_trainer` with the precision and gradient clipping
  `recforge train ctr` uses by default).
- DeepCTR-Torch: DCN (parameterization "matrix", i.e. DCN-M = DCNv2) and DeepFM with the same sizes, fed the
  same transformed columns, trained with their own `model.fit(batch_size, epochs=1)`: once over `--warmup`
  batches, then over `--steps` batches timed from their `on_epoch_begin` to their `on_epoch_end` callback.
- bf16 quality guard, loaders alone, inference, the embedding parameters' Adam step alone and a `torch.profiler`
  view of a few steps of each model and of the peer's: see `scripts.bench.train_parts`.

Every timed run also records the process's CPU time: samples per CPU-second move much less than samples/s when
other jobs share the machine (with `--threads 1`; with more threads OpenMP spin-waits count as CPU time).
Prints a table, writes `<work>/results.json` and rewrites its own section of docs/benchmarks.md.

    .venv/bin/python -m scripts.bench.train                                     # 2M rows, the documented run
    .venv/bin/python -m scripts.bench.train --rows 200000 --steps 20 --warmup 5 --no-doc   # quick look
    .venv/bin/python -m scripts.bench.train --smoke                             # tiny, structure check, no doc
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scripts.bench import peer
from scripts.bench.common import REPO, command, load1, logger, machine, now, quiet
from scripts.bench.ctr import EMB_DIM, PARAMS, build_ours, cpu_has_native_bf16, job_precision
from scripts.bench.doc import DOC, display, update_doc
from scripts.bench.timing import Run, interleave, time_steps
from scripts.bench.train_parts import (
    Prepared,
    bench_adam,
    bench_inference_ours,
    bench_loaders,
    best_rate,
    our_emb,
    param_counts,
    prepare,
    profile_step,
    quality_guard,
    run_lightning,
    task_steps,
    train_flops_per_sample,
)
from scripts.bench.train_report import (
    MODELS,
    PEER_OF,
    SECTION_TITLE,
    precision_name,
    print_table,
    summarize,
)
from scripts.bench.train_section import render_section
from training.common.config import OptimConfig
from training.common.data import load_split
from training.common.embedding import resolve_backend

RESULTS_FORMAT = 2  # bump when results.json changes shape; --render refuses other formats
PACKAGES = ("torch", "deepctr-torch", "torchrec", "fbgemm-gpu-cpu", "pytorch-lightning", "pyarrow", "numpy")
log = logger("bench_train")
Measure = Callable[[Run], None]


def run_ours(run: Run, prep: Prepared, train: dict[str, Tensor], args: argparse.Namespace) -> None:
    step = task_steps(run.model, prep, train, args, run.backend, run.precision == "bf16")
    run.dense_params, run.emb_params = param_counts(step.task.model, our_emb(step.task.model))
    run.load.append(load1())
    t = time_steps(step, args.warmup, args.steps)
    run.record(args.steps * args.batch_size / t.seconds, t.cpu_seconds / t.seconds)
    run.final_loss = t.mean_loss


def build_peer(kind: str, prep: Prepared) -> Any:
    """Their DCN-M (`kind` dcn) or DeepFM at our sizes (`peer.counterpart`)."""
    return peer.counterpart(peer.require("bench_train"), {"dcn": "dcnv2"}.get(kind, kind), prep.layout)


def run_peer(run: Run, prep: Prepared, x: dict[str, np.ndarray], y: np.ndarray, args: argparse.Namespace) -> None:
    """Their `fit` over `--warmup` batches, then over `--steps` batches, timed by their epoch callbacks."""
    model = build_peer(run.model, prep)
    run.dense_params, run.emb_params = param_counts(model, peer.embedding_params(model))
    fit = peer.timed_fit(peer.require("bench_train"), model, x, y, args.batch_size,
                         warm_rows=min(args.warmup * args.batch_size, len(y)),
                         rows=min(args.steps * args.batch_size, len(y)))
    run.load.append(fit.load)
    run.record(fit.rows / fit.seconds, fit.cpu_seconds / fit.seconds)
    run.final_loss = fit.loss


def contenders(prep: Prepared, train: dict[str, Tensor], args: argparse.Namespace, backend: str, default_prec: str,
               alt_prec: str | None, lightning_precision: str, measure_peer: Measure) -> list[tuple[str, Run, Measure]]:
    """(key, run, measure) of every training contender, in the order of the first round."""

    def ours(r: Run) -> None:
        run_ours(r, prep, train, args)

    jobs: list[tuple[str, Run, Measure]] = []
    peers = {"dcnv2": Run("DeepCTR-Torch DCN-M, model.fit", "peer", "dcn"),
             "deepfm": Run("DeepCTR-Torch DeepFM, model.fit", "peer", "deepfm")}
    for m in MODELS:
        jobs.append((f"ours_{m}_default", Run(f"RecForge, training defaults ({precision_name(default_prec)}, "
                                              f"{backend} embedding)", "ours", m, default_prec, backend), ours))
        if m in peers:
            jobs.append((PEER_OF[m], peers[m], measure_peer))
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
    p.add_argument("--doc", type=Path, default=DOC)
    p.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    p.add_argument("--smoke", action="store_true", help="every part once at tiny sizes; implies --no-doc")
    p.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                   help="measure nothing: print and write the doc section again from a saved results.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.n_ids, args.batch_size, args.warmup, args.steps, args.repeat = 5000, 500, 256, 1, 2, 1
        args.quality_steps, args.eval_batch, args.loader_batches, args.profile_steps = 2, 1024, 4, 1
        args.no_doc, args.work_dir = True, REPO / "runs" / "bench_train_smoke"
    if args.steps < 1 or args.warmup < 1 or args.repeat < 1 or args.profile_steps < 1 or args.rows < 1000:
        p.error("--steps, --warmup, --repeat and --profile-steps must be >= 1 and --rows >= 1000")
    if args.quality_steps < 0:
        p.error("--quality-steps must be >= 0 (0 skips the bf16 quality guard)")
    return args


def load_results(path: Path) -> dict[str, Any]:
    """A saved results.json back into the context `render_section` takes."""
    ctx = json.loads(path.read_text())
    if ctx.get("format") != RESULTS_FORMAT:
        raise SystemExit(f"bench_train: {path}: results format {ctx.get('format', 1)}, this module renders format "
                         f"{RESULTS_FORMAT}; re-run the benchmark to get a results.json it can render")
    names = {f.name for f in Run.__dataclass_fields__.values()}
    ctx["runs"] = {k: Run(**{f: v[f] for f in names if f in v}) for k, v in ctx["runs"].items()}
    ctx["summary"] = summarize(ctx)
    return ctx


def write_doc(args: argparse.Namespace, ctx: dict[str, Any], source: str = "") -> None:
    if not args.no_doc:
        update_doc(args.doc, "bench_train", render_section(ctx).rstrip() + "\n")
        log(f"wrote the section '{SECTION_TITLE}' of {display(args.doc)}{source}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        ctx = load_results(args.render)
        print_table(ctx)
        write_doc(args, ctx, f" from {args.render}")
        return 0
    quiet()
    torch.set_num_threads(args.threads)
    start = machine(*PACKAGES)
    phase: dict[str, float] = {}
    t_all = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        phase[name], t = time.perf_counter() - t, time.perf_counter()

    prep = prepare(args.work_dir, args.rows, args.n_ids, args.seed)
    train, test = load_split(prep.train_dir, prep.layout), load_split(prep.test_dir, prep.layout)
    peer_rows = min(max(args.steps, args.warmup) * args.batch_size, prep.n_train)
    peer_x, peer_y = peer.inputs(train, prep.layout, peer_rows)
    backend = "fused" if args.no_torchrec else resolve_backend("auto")
    bf16_native = cpu_has_native_bf16()
    default_precision = job_precision("cpu")  # what `recforge train ctr` uses on this CPU
    default_prec = "bf16" if default_precision.startswith("bf16") else "fp32"
    alt_prec = "fp32" if default_prec == "bf16" else ("bf16" if bf16_native else None)
    lightning_precision = job_precision()
    lap("prepare")

    jobs = contenders(prep, train, args, backend, default_prec, alt_prec, lightning_precision,
                      lambda r: run_peer(r, prep, peer_x, peer_y, args))
    for rnd, (key, run, measure) in interleave(jobs, args.repeat):
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
    test_x, _ = peer.inputs(test, prep.layout)

    def peer_inference(kind: str) -> float:
        model = build_peer(kind, prep)
        model.predict(dict(test_x), batch_size=args.eval_batch)  # warm-up
        return best_rate(args.repeat, lambda: len(model.predict(dict(test_x), batch_size=args.eval_batch)))

    peer_kind = {"dcnv2": "dcn", "deepfm": "deepfm"}
    inference = {m: {"default": bench_inference_ours(m, prep, test, args, backend, default_prec == "bf16"),
                     "alt": bench_inference_ours(m, prep, test, args, backend, alt_prec == "bf16") if alt_prec else 0.0,
                     "peer": peer_inference(peer_kind[m]) if m in peer_kind else 0.0}
                 for m in MODELS}
    lap("inference")
    log("Adam over the embedding parameters alone")
    adam = bench_adam(prep.layout, args.repeat, backend)
    lap("adam")
    log("profiling steps")
    profiles: dict[str, Any] = {}
    for m in MODELS:
        step = task_steps(m, prep, train, args, backend, default_prec == "bf16")
        time_steps(step, min(args.warmup, 5), 1)
        profiles[f"RecForge {m}, training defaults ({default_prec}, {backend})"] = profile_step(step,
                                                                                             args.profile_steps)
    for title, kind in (("DeepCTR-Torch DCN-M", "dcn"), ("DeepCTR-Torch DeepFM", "deepfm")):
        peer_step = peer.fit_step(build_peer(kind, prep), peer_x, peer_y, args.batch_size, shuffle=False)
        time_steps(peer_step, min(args.warmup, 5), 1)
        profiles[f"{title} (their fit loop's body, DataLoader excluded)"] = profile_step(peer_step,
                                                                                          args.profile_steps)
    lap("profiles")
    phase["total"] = time.perf_counter() - t_all

    x0_dim = len(prep.layout.sparse) * EMB_DIM + prep.layout.dense_dim
    flops = {m: train_flops_per_sample(build_ours(m, prep.layout, "fused")) for m in PARAMS}
    ctx: dict[str, Any] = {
        "format": RESULTS_FORMAT, "date": now(), "machine": start, "command": command("scripts.bench.train", argv),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "n_train": prep.n_train, "n_test": prep.n_test, "peer_rows": peer_rows,
        "emb_rows": sum(f.cardinality for f in prep.layout.sparse),
        "default_backend": backend, "bf16_native": bf16_native, "default_precision": default_precision,
        "default_prec": default_prec, "alt_prec": alt_prec, "lightning_precision": lightning_precision,
        "grad_clip": OptimConfig().grad_clip,
        "flops": flops, "x0_dim": x0_dim,
        "cross_share": 6.0 * PARAMS["dcnv2"]["cross_layers"] * x0_dim**2 / flops["dcnv2"],
        "runs": {key: run for key, run, _ in jobs}, "loaders": loaders, "adam": adam, "inference": inference,
        "profiles": profiles, "quality": quality, "phase_s": phase,
    }
    ctx["summary"] = summarize(ctx)
    print_table(ctx)
    out = {**ctx, "runs": {k: asdict(v) | {"best": v.best, "median": v.median} for k, v in ctx["runs"].items()}}
    (args.work_dir / "results.json").write_text(json.dumps(out, indent=2, default=str))
    write_doc(args, ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
