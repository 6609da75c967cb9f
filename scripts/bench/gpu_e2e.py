"""The path users run, beside the kernel loop: `recforge prepare` and `recforge train ctr` on Criteo-schema rows.

`scripts.bench.gpu --sections training,e2e` writes a seeded Criteo-format TSV (label, I1-I13 integers with 10%
empty, C1-C26 Zipf-distributed ids; the click depends on a few of them, so the AUC means something), prepares it
with `configs/criteo.yaml` (`--e2e-rows` rows, split by time 80/10/10), then for DCNv2 and DLRM runs
`recforge train ctr` as a subprocess: one epoch, `--e2e-batch`, `train.compile` as given (auto = on for CUDA), on
the device, validation and test included. Reported per model: the job's wall time, its own seconds, the epoch's
seconds (training plus validation, from the epoch's progress line), samples/s over the train split for the epoch
and for the whole job, test AUC, and the ratio to the kernel loop's resident bf16 samples/s of the same model and
batch measured in the same run (the `training` section). `--e2e-cpu-reference` also trains the same config on the
CPU in fp32, for the AUC comparison.

Goals (issue "8 of 9"): the CLI epoch at least 80% of the kernel loop's samples/s, at least 6M samples/s for DCNv2
compiled, test AUC within 0.001 of the CPU fp32 run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from scripts.bench.common import REPO, logger

log = logger("bench_gpu")
RECFORGE = str(Path(sys.executable).parent / "recforge")
EPOCH_LINE = re.compile(r"epoch 1/1 done in ([0-9.]+)s")
E2E_MODELS = ("dcnv2", "dlrm")
GOAL_SHARE, GOAL_DCNV2 = 0.8, 6_000_000


def write_criteo_tsv(path: Path, rows: int, n_ids: int, seed: int, chunk: int = 1_000_000) -> None:
    """`rows` Criteo-format lines: label, 13 integers (10% empty), 26 categorical ids (Zipf, up to `n_ids`)."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.6, size=(4, 64))
    path.parent.mkdir(parents=True, exist_ok=True)
    with pacsv.CSVWriter(str(path), schema=_schema(),
                         write_options=pacsv.WriteOptions(include_header=False, delimiter="\t",
                                                          quoting_style="none")) as out:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            ints = rng.poisson(3.0, size=(n, 13)).astype(np.int64)
            cats = np.minimum(rng.zipf(1.2, size=(n, 26)), n_ids).astype(np.int64)
            logit = -2.2 + 0.25 * np.log1p(ints[:, 0]) + sum(weights[j, cats[:, j] % 64] for j in range(4))
            label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
            cols: list[pa.Array] = [pa.array(label)]
            for j in range(13):
                cols.append(pa.array(ints[:, j], mask=rng.random(n) < 0.1))
            cols += [pa.array(cats[:, j]).cast(pa.string()) for j in range(26)]
            out.write_table(pa.Table.from_arrays(cols, schema=_schema()))


def _schema() -> pa.Schema:
    return pa.schema([("label", pa.int64()), *[(f"I{i}", pa.int64()) for i in range(1, 14)],
                      *[(f"C{i}", pa.string()) for i in range(1, 27)]])


def _recforge(args: list[str], logfile: Path) -> tuple[dict[str, Any], float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([RECFORGE, *args, "--json"], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    logfile.write_text(out.stderr)
    if out.returncode:
        raise SystemExit(f"bench_gpu e2e: recforge {' '.join(args[:2])} exited {out.returncode}; log {logfile}:\n"
                         f"{out.stderr[-2000:]}")
    return dict(json.loads(out.stdout)), wall, out.stderr


def bench_e2e(args: argparse.Namespace, device: Any, res: dict[str, Any]) -> None:
    root = Path(args.e2e_dir)
    tsv = root / "criteo.tsv"
    log(f"e2e: writing {args.e2e_rows:,} Criteo-format rows (not timed)")
    write_criteo_tsv(tsv, args.e2e_rows, args.e2e_n_ids, args.seed)
    base = ["--config", str(REPO / "configs" / "criteo.yaml"), "--set", f"source.path={tsv}",
            "--set", f"source.max_rows={args.e2e_rows}", "--set", f"output_dir={root / 'run'}"]
    prepared, prep_wall, _ = _recforge(["prepare", *base], root / "prepare.log")
    train_rows = int(prepared["split"]["rows"]["train"])
    log(f"e2e: prepared {train_rows:,} train rows in {prep_wall:.0f} s")
    kernel = {(r["model"], r["batch"]): r.get("resident_bf16") for r in res.get("training", [])}
    accel = "gpu" if device.type == "cuda" else "cpu"
    rows = []
    runs = [(m, accel, "auto") for m in E2E_MODELS]
    if args.e2e_cpu_reference:
        runs += [(m, "cpu", "32") for m in E2E_MODELS]
    for model, acc, precision in runs:
        sets = [f"train.model={model}", "train.max_epochs=1", f"train.batch_size={args.e2e_batch}",
                f"train.compile={args.e2e_compile}", f"train.runtime.accelerator={acc}",
                f"train.runtime.precision={precision}", "train.tracking.log_model=false"]
        result, wall, stderr = _recforge(["train", "ctr", *base, *[a for s in sets for a in ("--set", s)]],
                                         root / f"train-{model}-{acc}.log")
        epoch = EPOCH_LINE.search(stderr)
        epoch_s = float(epoch.group(1)) if epoch else float("nan")
        row = {"model": model, "device": acc, "precision": result["precision"], "batch": args.e2e_batch,
               "compiled": result.get("compiled"), "wall_s": wall, "job_s": result["seconds"],
               "epoch_s": epoch_s, "train_rows": train_rows, "epoch_samples_per_s": train_rows / epoch_s,
               "job_samples_per_s": train_rows / result["seconds"], "test_auc": result["test"]["auc"],
               "kernel_samples_per_s": kernel.get((model, args.e2e_batch)) if acc != "cpu" else None}
        log(f"e2e {model} on {acc}: epoch {epoch_s:.1f} s, {row['epoch_samples_per_s']:,.0f} samples/s, "
            f"job {result['seconds']:.1f} s, test AUC {row['test_auc']:.4f}")
        rows.append(row)
    res["e2e"] = {"rows": args.e2e_rows, "train_rows": train_rows, "prepare_wall_s": prep_wall, "runs": rows}


def render_e2e(e2e: dict[str, Any]) -> list[str]:
    """The e2e table and its goal lines for docs/benchmarks.md."""
    lines = ["", f"### `recforge train ctr` end to end ({e2e['rows']:,} Criteo-schema rows, {e2e['train_rows']:,} "
                 f"train rows, one epoch with validation, test after)", "",
             "| model | device | precision | compiled | job wall s | epoch s | samples/s (epoch) | samples/s (job) "
             "| kernel loop samples/s | CLI / kernel | test AUC |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in e2e["runs"]:
        k = r.get("kernel_samples_per_s")
        share, kernel = (f"{r['epoch_samples_per_s'] / k:.2f}", f"{k:,.0f}") if k else ("-", "-")
        lines.append(f"| {r['model']} | {r['device']} | {r['precision']} | {r['compiled']} | {r['wall_s']:.1f} | "
                     f"{r['epoch_s']:.1f} | {r['epoch_samples_per_s']:,.0f} | {r['job_samples_per_s']:,.0f} | "
                     f"{kernel} | {share} | {r['test_auc']:.4f} |")
    gpu = [r for r in e2e["runs"] if r["device"] == "gpu"]
    cpu = {r["model"]: r for r in e2e["runs"] if r["device"] == "cpu"}
    lines.append("")
    for r in gpu:
        k = r.get("kernel_samples_per_s")
        if k:
            share = r["epoch_samples_per_s"] / k
            lines.append(f"- Goal, {r['model']} CLI epoch at least {GOAL_SHARE:.0%} of the kernel loop: "
                         f"**{'met' if share >= GOAL_SHARE else 'NOT met'}** ({share:.0%})")
        if r["model"] == "dcnv2":
            lines.append(f"- Goal, DCNv2 compiled at least {GOAL_DCNV2:,} samples/s: "
                         f"**{'met' if r['compiled'] and r['epoch_samples_per_s'] >= GOAL_DCNV2 else 'NOT met'}** "
                         f"({r['epoch_samples_per_s']:,.0f})")
        if r["model"] in cpu:
            gap = abs(r["test_auc"] - cpu[r["model"]]["test_auc"])
            lines.append(f"- Goal, {r['model']} test AUC within 0.001 of CPU fp32: "
                         f"**{'met' if gap <= 0.001 else 'NOT met'}** (gap {gap:.4f})")
    return lines
