"""Benchmark of feature preparation: `recforge prepare` against a single-process pandas implementation.

Both contenders prepare the same synthetic impressions (configs/demo.yaml, 5M rows by default) from the same
Parquet files, generated once before anything is timed. Each runs as its own subprocess; the parent samples
the summed RSS of the subprocess and all its descendants (the Ray driver, raylet, GCS, object store and
workers for RecForge) every ~50 ms and records the peak, the wall time and the CPU time
(`scripts.bench.prepare_measure`). The pandas contender (`scripts.bench.pandas_prepare`) is a straightforward
pandas program for the same transforms. The parent checks that both produce the same rows per split, the same
vocabulary sizes and (column by column) the same values, prints a table and rewrites its own section of
docs/benchmarks.md.

    .venv/bin/python -m scripts.bench.prepare                 # 5M impressions, writes docs/benchmarks.md
    .venv/bin/python -m scripts.bench.prepare --rows 200000 --no-doc
    .venv/bin/python -m scripts.bench.prepare --smoke         # 20,000 impressions, no doc

Small-data mode (`--small`, 10,000 impressions by default, 3 runs each): `recforge prepare` with
`prepare.engine=local` (in process) against `prepare.engine=ray` on the same data, plus the interpreter start and
imports of the prepare path alone; checks that both engines write the same spec and the same shards, and
rewrites its own section of docs/benchmarks.md (the figure behind the default of `prepare.local_max_rows`).

    .venv/bin/python -m scripts.bench.prepare --small
    .venv/bin/python -m scripts.bench.prepare --small --rows 200000 --repeat 1 --no-doc
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recforge.config import load
from scripts.bench.common import REPO, command, machine, now
from scripts.bench.doc import display, update_doc
from scripts.bench.pandas_prepare import check_supported
from scripts.bench.prepare_measure import (
    SPLITS,
    Measurement,
    compare_outputs,
    compare_prepared,
    run_measured,
    stage_at,
)
from scripts.bench.prepare_report import (
    SECTION_TITLE,
    SMALL_TITLE,
    agreement,
    gib,
    rel,
    render_section,
    render_small_section,
    shown,
)
from scripts.bench.timing import interleave


def _recforge_cli() -> list[str]:
    exe = Path(sys.executable).with_name("recforge")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "recforge.cli"]


def _sets(overrides: Sequence[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=None,
                    help="synthetic impressions (default 5,000,000; 10,000 with --small)")
    ap.add_argument("--work-dir", default=None,
                    help="data and outputs (default runs/bench_prepare; runs/bench_prepare_small with --small)")
    ap.add_argument("--config", default="configs/demo.yaml", help="scenario config (default configs/demo.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="extra config override for both contenders (repeatable)")
    ap.add_argument("--no-affinity", action="store_true",
                    help="drop the category-affinity vector from both contenders")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per contender, alternating (default 1; 3 with --small)")
    ap.add_argument("--doc", default="docs/benchmarks.md", help="benchmarks document to update")
    ap.add_argument("--no-doc", action="store_true", help="print the results only; leave the document alone")
    ap.add_argument("--sample-ms", type=int, default=50, help="memory sampling interval in ms (default 50)")
    ap.add_argument("--smoke", action="store_true", help="20,000 impressions under runs/bench_prepare_smoke; no doc")
    ap.add_argument("--small", action="store_true",
                    help="small data: prepare.engine=local against prepare.engine=ray (see the module docstring)")
    args = ap.parse_args(argv)
    if args.small:
        args.rows = args.rows or 10_000
        args.work_dir = args.work_dir or "runs/bench_prepare_small"
        args.repeat = args.repeat or 3
        return small(args, argv)
    args.rows = args.rows or 5_000_000
    args.work_dir = args.work_dir or "runs/bench_prepare"
    args.repeat = args.repeat or 1
    if args.smoke:
        args.rows, args.work_dir, args.no_doc = 20_000, "runs/bench_prepare_smoke", True

    base = [f"source.n_impressions={args.rows}", *args.overrides]
    if args.no_affinity:
        base += ["profiles.category=null", "features.vector=[]"]

    start = machine("pandas", "pyarrow", "numpy", "ray")
    if args.rows <= 0 or args.repeat <= 0:
        raise SystemExit(f"bench_prepare: --rows and --repeat must be positive, got {args.rows}, {args.repeat}")
    work = Path(args.work_dir)
    work = work if work.is_absolute() else REPO / work
    rf_dir, pd_dir, logs = work / "recforge", work / "pandas", work / "logs"
    cfg = load(args.config, [*base, f"output_dir={rf_dir}"])
    check_supported(cfg)
    cli = _recforge_cli()
    rf_sets = _sets([*base, f"output_dir={rel(rf_dir)}"])

    print(f"bench_prepare: generating {args.rows:,} impressions under {rel(rf_dir / 'raw')} (not timed) ...")
    gen_cmd = [*cli, "generate", "--config", args.config, *rf_sets]
    t0 = time.perf_counter()
    gen = subprocess.run(gen_cmd, cwd=REPO, capture_output=True, text=True)
    if gen.returncode != 0:
        raise SystemExit(f"bench_prepare: data generation failed ({shlex.join(gen_cmd)}):\n{gen.stderr[-3000:]}")
    print(f"  done in {time.perf_counter() - t0:.1f}s")
    manifest = json.loads((rf_dir / "raw" / "manifest.json").read_text())

    interval = args.sample_ms / 1000
    rf_cmd = [*cli, "prepare", "--config", args.config, *rf_sets]
    pd_cmd = [sys.executable, "-m", "scripts.bench.pandas_prepare", "--config", args.config, *_sets(base),
              "--raw-dir", rel(rf_dir / "raw"), "--out-dir", rel(pd_dir)]
    runs: dict[str, list[Measurement]] = {"RecForge": [], "pandas": []}
    job: dict[str, list[dict[str, Any]]] = {"RecForge": [], "pandas": []}
    peak_stage: dict[str, list[str]] = {"RecForge": [], "pandas": []}
    contenders = [("RecForge", rf_cmd, rf_dir / "prepared" / "summary.json"),
                  ("pandas", pd_cmd, pd_dir / "summary.json")]
    for i, (name, cmd, summary_path) in interleave(contenders, args.repeat, reverse_every_other=False):
        log = logs / f"{name.lower()}-{i + 1}.log"
        print(f"bench_prepare: run {i + 1}/{args.repeat}, {name}: {shown(cmd)}")
        m = run_measured(name, cmd, log, interval)
        if m.returncode != 0:
            raise SystemExit(f"bench_prepare: {name} failed (exit {m.returncode}); see its log {rel(log)}")
        print(f"  {m.wall_s:.1f}s wall, peak {gib(m.peak_rss)}, other processes used {m.other_cpu_s:.1f} CPU s")
        runs[name].append(m)
        job[name].append(json.loads(summary_path.read_text()))
        peak_stage[name].append(stage_at(log, m))

    def fastest(name: str) -> int:
        return min(range(args.repeat), key=lambda k: runs[name][k].wall_s)

    def largest(name: str) -> int:
        return max(range(args.repeat), key=lambda k: runs[name][k].peak_rss)

    rf_summary, pd_summary = job["RecForge"][-1], job["pandas"][-1]
    rf_spec = json.loads((rf_dir / "prepared" / "spec" / "feature_spec.json").read_text())
    print("bench_prepare: comparing the outputs column by column (not timed) ...")
    mismatches = compare_outputs(rf_dir / "prepared", pd_dir)
    same_output, same_shape = agreement(rf_summary, pd_summary, rf_spec, mismatches)

    data_rows = manifest["rows"]
    rf_best, pd_best = job["RecForge"][fastest("RecForge")], job["pandas"][fastest("pandas")]
    ctx = {
        "recforge": runs["RecForge"], "pandas": runs["pandas"], "rows": args.rows, "machine": start,
        "date": now(), "command": command("scripts.bench.prepare", argv),
        "config": args.config,
        "data_rows": f"{cfg.source.n_users:,} users, {cfg.source.n_items:,} items, "
                     f"{data_rows['items']:,} item-price rows, {data_rows['purchases']:,} purchases",
        "split_rows": ", ".join(f"{s} {rf_summary['split']['rows'][s]:,}" for s in SPLITS),
        "affinity": pd_summary["affinity"],
        "affinity_note": "dropped from both sides (`--no-affinity`: profiles.category=null, features.vector=[])",
        "agreement": same_output,
        "rf_stages": rf_best["stage_seconds"], "pd_stages": pd_best["stage_seconds"],
        "rf_job_s": rf_best["seconds"], "pd_job_s": pd_best["seconds"],
        "rf_engine": rf_best["engine"], "rf_engine_reason": rf_best["engine_reason"],
        "rf_peak_stage": peak_stage["RecForge"][largest("RecForge")],
        "pd_peak_stage": peak_stage["pandas"][largest("pandas")],
        "interval_ms": args.sample_ms,
        "generate_cmd": shown(gen_cmd), "recforge_cmd": shown(rf_cmd), "pandas_cmd": shown(pd_cmd),
    }
    section = render_section(ctx)
    print()
    print(section)
    if not same_shape:
        print("bench_prepare: the contenders' outputs differ in rows or vocabularies; the comparison is not "
              "like for like (see above)", file=sys.stderr)
    if not args.no_doc:
        doc = Path(args.doc)
        doc = doc if doc.is_absolute() else REPO / doc
        update_doc(doc, "bench_prepare", section.rstrip() + "\n")
        print(f"bench_prepare: wrote the '{SECTION_TITLE}' section of {display(doc)}")
    return 0 if same_shape else 1


ENGINES = ("local", "ray")
IMPORTS = "imports"  # the interpreter start and the prepare path's imports, alone


def small(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """`--small`: each engine's `recforge prepare` of the same small data, as whole processes, side by side."""
    start = machine("pyarrow", "numpy", "ray")
    if args.rows <= 0 or args.repeat <= 0:
        raise SystemExit(f"bench_prepare: --rows and --repeat must be positive, got {args.rows}, {args.repeat}")
    base = [f"source.n_impressions={args.rows}", *args.overrides]
    work = Path(args.work_dir)
    work = work if work.is_absolute() else REPO / work
    dirs = {e: work / e for e in ENGINES}
    cli = _recforge_cli()
    print(f"bench_prepare: generating {args.rows:,} impressions under {rel(dirs['local'] / 'raw')} (not timed) ...")
    gen_cmd = [*cli, "generate", "--config", args.config, *_sets([*base, f"output_dir={rel(dirs['local'])}"])]
    gen = subprocess.run(gen_cmd, cwd=REPO, capture_output=True, text=True)
    if gen.returncode != 0:
        raise SystemExit(f"bench_prepare: data generation failed ({shlex.join(gen_cmd)}):\n{gen.stderr[-3000:]}")
    shutil.rmtree(dirs["ray"] / "raw", ignore_errors=True)  # the same cached data for the other engine
    shutil.copytree(dirs["local"] / "raw", dirs["ray"] / "raw")

    cmds = {e: [*cli, "prepare", "--config", args.config,
                *_sets([*base, f"output_dir={rel(dirs[e])}", f"prepare.engine={e}"])] for e in ENGINES}
    cmds[IMPORTS] = [sys.executable, "-c", "import recforge.cli, feature_store.prepare"]
    runs: dict[str, list[Measurement]] = {name: [] for name in cmds}
    job: dict[str, list[dict[str, Any]]] = {e: [] for e in ENGINES}
    contenders = [(name, cmds[name]) for name in (IMPORTS, *ENGINES)]
    for i, (name, cmd) in interleave(contenders, args.repeat):
        log = work / "logs" / f"{name}-{i + 1}.log"
        print(f"bench_prepare: run {i + 1}/{args.repeat}, {name}: {shown(cmd)}")
        m = run_measured(name, cmd, log, args.sample_ms / 1000)
        if m.returncode != 0:
            raise SystemExit(f"bench_prepare: {name} failed (exit {m.returncode}); see its log {rel(log)}")
        print(f"  {m.wall_s:.2f}s wall, {m.cpu_s:.1f} CPU s, peak {gib(m.peak_rss)}")
        runs[name].append(m)
        if name in job:
            job[name].append(json.loads((dirs[name] / "prepared" / "summary.json").read_text()))
    differences = compare_prepared(dirs["local"] / "prepared", dirs["ray"] / "prepared")
    ctx = {
        "runs": runs, "jobs": job, "rows": args.rows, "machine": start, "date": now(),
        "command": command("scripts.bench.prepare", argv), "config": args.config,
        "split_rows": ", ".join(f"{s} {job['local'][-1]['split']['rows'][s]:,}" for s in SPLITS),
        "differences": differences, "commands": {name: shown(cmd) for name, cmd in cmds.items()},
        "generate_cmd": shown(gen_cmd),
    }
    section = render_small_section(ctx)
    print()
    print(section)
    if differences:
        print("bench_prepare: the engines' outputs differ (see above)", file=sys.stderr)
    if not args.no_doc:
        doc = Path(args.doc)
        doc = doc if doc.is_absolute() else REPO / doc
        update_doc(doc, "bench_prepare_small", section.rstrip() + "\n")
        print(f"bench_prepare: wrote the '{SMALL_TITLE}' section of {display(doc)}")
    return 1 if differences else 0


if __name__ == "__main__":
    raise SystemExit(main())
