"""The feature preparation section of docs/benchmarks.md from `scripts.bench.prepare`'s measurements."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.bench.common import REPO, load_text, machine_text
from scripts.bench.prepare_measure import SPLITS, Measurement

SECTION_TITLE = "## Feature preparation (scripts.bench.prepare)"
SMALL_TITLE = "## Small-data prepare: in process vs Ray (scripts.bench.prepare --small)"
SMALL_GOAL_ROWS, SMALL_GOAL_S = 10_000, 5.0
GIB = 1024**3


def rel(path: str | Path) -> str:
    p = Path(path)
    try:
        return str(Path(os.path.abspath(p)).relative_to(REPO))
    except ValueError:
        return str(path)


def shown(command: Sequence[str]) -> str:
    parts = [rel(c) if os.path.isabs(c) and c.startswith(str(REPO)) else c for c in command]
    if parts and Path(command[0]).name.startswith("python") and not parts[0].startswith(".venv"):
        parts[0] = "python"
    elif parts and os.path.isabs(parts[0]):  # an executable outside the checkout: its name, not this machine's path
        parts[0] = Path(parts[0]).name
    return shlex.join(parts)


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _goal(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _fmt_runs(runs: Sequence[Measurement]) -> str:
    return ", ".join(f"{r.wall_s:.1f}" for r in runs)


def _busy_shares(rf: Measurement, pdm: Measurement, cores: int) -> tuple[float, float]:
    """Share of the machine's CPU capacity other processes used during each contender's run."""
    return rf.other_cpu_s / (rf.wall_s * max(cores, 1)), pdm.other_cpu_s / (pdm.wall_s * max(cores, 1))


def _contention_note(rf: Measurement, pdm: Measurement, cores: int) -> list[str]:
    shares = _busy_shares(rf, pdm, cores)
    if max(shares) < 0.1:
        return []
    return [f"Note: the machine was busy with other work during these runs: other processes used "
            f"{100 * shares[0]:.0f}% (RecForge's run) and {100 * shares[1]:.0f}% (pandas' run) of its {cores} cores. "
            "Both wall times are slower than on a quiet machine, and not equally: the kernel shares a busy CPU "
            "between processes, so a job of many processes (Ray) gets a larger share than a single process, "
            "which flatters RecForge's wall time. The CPU s column is much less sensitive to that.", ""]


def _peak_note(r: Measurement, stage: str) -> str:
    top = [(k, v) for k, v in r.peak_by_process.items() if v >= 0.02 * r.peak_rss][:6]
    parts = ", ".join(f"{k} {gib(v)}" for k, v in top)
    return f"at {r.peak_at_s:.0f} s into the run, during `{stage}`: {parts}"


def render_section(ctx: dict[str, Any]) -> str:
    rf_runs: list[Measurement] = ctx["recforge"]
    pd_runs: list[Measurement] = ctx["pandas"]
    rf, pdm = min(rf_runs, key=lambda r: r.wall_s), min(pd_runs, key=lambda r: r.wall_s)
    rf_peak, pd_peak = max(rf_runs, key=lambda r: r.peak_rss), max(pd_runs, key=lambda r: r.peak_rss)
    rows, m, n = ctx["rows"], ctx["machine"], len(rf_runs)
    rf_rps, pd_rps = rows / rf.wall_s, rows / pdm.wall_s
    best = "best of " + str(n) if n > 1 else "one run"
    on_ray = ctx["rf_engine"] == "ray"
    lines = [
        SECTION_TITLE,
        "",
        "`recforge prepare` (" + ("Ray Data on a local Ray" if on_ray else "its in-process engine")
        + "; engine: " + ctx["rf_engine_reason"] + ") against a straightforward single-process pandas",
        "implementation of the same transforms (`pandas_prepare` in `scripts/bench/pandas_prepare.py`), on the same",
        "synthetic Parquet files, in one run. Each contender is a subprocess; wall time is the whole process",
        "(interpreter start, imports" + (" and, for RecForge, starting and stopping Ray" if on_ray else "")
        + " included).",
        "",
        f"- Date: {ctx['date']}",
        f"- Machine: {machine_text(m)}; {load_text(m)}",
        f"- Command: `{ctx['command']}`",
        f"- Data: `{ctx['config']}` with {rows:,} impressions ({ctx['data_rows']}); "
        f"split by time into {ctx['split_rows']}",
        f"- Category-affinity vector: {'included on both sides' if ctx['affinity'] else ctx['affinity_note']}",
        f"- Runs: {n} per contender, alternating (RecForge first); the table shows each contender's fastest run "
        "(the least disturbed by other load) and its largest peak over all runs",
        "",
        f"| contender | wall s ({best}) | rows/s | peak memory (sum of RSS) | shared part at peak | "
        "peak, shared counted once | CPU s | CPU s of other processes | wall s of every run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, r, peak, rps, runs in (("RecForge `recforge prepare`", rf, rf_peak, rf_rps, rf_runs),
                                      ("pandas, one process", pdm, pd_peak, pd_rps, pd_runs)):
        lines.append(f"| {label} | {r.wall_s:.1f} | {rps:,.0f} | {gib(peak.peak_rss)} | {gib(peak.peak_shmem)} | "
                     f"{gib(max(x.peak_once for x in runs))} | {r.cpu_s:.1f} | {r.other_cpu_s:.1f} | "
                     f"{_fmt_runs(runs)} |")
    lines += [
        f"| RecForge / pandas | {rf.wall_s / pdm.wall_s:.2f}x | {rf_rps / pd_rps:.2f}x | "
        f"{rf_peak.peak_rss / pd_peak.peak_rss:.2f}x | | | {rf.cpu_s / max(pdm.cpu_s, 1e-9):.2f}x | | |",
        "",
        *_contention_note(rf, pdm, m["usable"]),
        f"Goals: throughput at least pandas' on {m['usable']} cores: **{_goal(rf_rps >= pd_rps)}** "
        f"({rf_rps / pd_rps:.2f}x)"
        + (f", not conclusive on a busy machine (by CPU time RecForge needs "
           f"{rf.cpu_s / max(pdm.cpu_s, 1e-9):.2f}x pandas')" if max(_busy_shares(rf, pdm, m["usable"])) >= 0.25
           else "")
        + f"; peak memory below pandas': **{_goal(rf_peak.peak_rss < pd_peak.peak_rss)}** "
        f"({rf_peak.peak_rss / pd_peak.peak_rss:.2f}x).",
        "",
        f"Same output: {ctx['agreement']}",
        "",
        "Where the time goes (seconds inside the fastest run of each job, from RecForge's "
        "`prepared/summary.json` `stage_seconds` and the pandas worker's own timer):",
        "",
        "- RecForge: " + ", ".join(f"{k} {v:.1f}" for k, v in ctx["rf_stages"].items())
        + f"; job {ctx['rf_job_s']:.1f} s of {rf.wall_s:.1f} s wall"
        + ("; `ray_start` (starting the local Ray) runs in the main thread while a worker thread runs read "
           "to stage, so the stages add up to more than the job" if "ray_start" in ctx["rf_stages"] else ""),
        "- pandas: " + ", ".join(f"{k} {v:.1f}" for k, v in ctx["pd_stages"].items())
        + f"; job {ctx['pd_job_s']:.1f} s of {pdm.wall_s:.1f} s wall",
        "",
        "Where the memory peak is (largest peak; RSS per process, stage from the log's stage-start times, to "
        "the second):",
        "",
        f"- RecForge: {_peak_note(rf_peak, ctx['rf_peak_stage'])}",
        f"- pandas: {_peak_note(pd_peak, ctx['pd_peak_stage'])}",
        "",
        "How it is measured: the parent samples every "
        f"{ctx['interval_ms']} ms the VmRSS of the subprocess and of all its descendants and sums them; the table "
        "shows the peak of that sum. For RecForge the tree holds the driver and every process Ray starts "
        f"({', '.join(f'{k} x{v}' if v > 1 else k for k, v in rf_peak.processes.items())}). Ray's object store "
        "is shared memory (/dev/shm): its pages count in the RSS of every process that maps them (the raylet "
        "that hosts the store and each worker or driver reading an object), so the sum counts a shared page once "
        "per process touching it, an upper bound; the 'shared part' column is the RssShmem summed over the same "
        "sample. 'Shared counted once' is a lower bound: the private pages of every process plus the shared "
        "pages of the one process that maps the most (the real footprint lies between the two columns). "
        "CPU s is user + system time of the tree; 'other processes' is the machine's busy CPU time "
        "during the run not spent by the tree or the sampler: this machine is shared, and a large figure there "
        "means the run was slowed by other work. Both contenders read the Parquet files from the page cache "
        "(they were written just before). RecForge also writes its offline store, spec and rejects (its "
        "`offline_store` stage); the pandas program writes only the prepared splits.",
        "",
        "Commands run:",
        "",
        f"- generate (not timed): `{ctx['generate_cmd']}`",
        f"- RecForge: `{ctx['recforge_cmd']}`",
        f"- pandas: `{ctx['pandas_cmd']}`",
    ]
    return "\n".join(lines) + "\n"


def agreement(rf_summary: dict[str, Any], pd_summary: dict[str, Any], rf_spec: dict[str, Any],
               mismatches: dict[str, dict[str, int]]) -> tuple[str, bool]:
    rf_rows, pd_rows = rf_summary["split"]["rows"], pd_summary["rows"]
    rf_vocab, pd_vocab = rf_summary["vocab_sizes"], pd_summary["vocab_sizes"]
    rows_ok = all(rf_rows[s] == pd_rows[s] for s in SPLITS)
    vocab_diff = {k: (rf_vocab.get(k), pd_vocab.get(k)) for k in sorted({*rf_vocab, *pd_vocab})
                  if rf_vocab.get(k) != pd_vocab.get(k)}
    parts = [
        "rows per split " + ("identical" if rows_ok else "DIFFER")
        + " (" + ", ".join(f"{s} {rf_rows[s]:,} / {pd_rows[s]:,}" for s in SPLITS) + ", RecForge / pandas);",
        f"vocabulary sizes identical for all {len(rf_vocab)} embedded features;" if not vocab_diff
        else f"vocabulary sizes DIFFER (RecForge, pandas): {vocab_diff};",
    ]
    bad: dict[str, str] = {}
    for split, cols in mismatches.items():
        for col, n in cols.items():
            if n:
                bad[f"{split}.{col}"] = f"{n:,} rows ({100 * n / max(rf_rows[split], 1):.2f}%)"
    n_cols = len(next(iter(mismatches.values())))
    if not bad:
        parts.append(f"all {n_cols} output columns equal on every row of every split.")
        return " ".join(parts), rows_ok and not vocab_diff
    parts.append(f"of {n_cols} output columns, these differ: " + "; ".join(f"{k}: {v}" for k, v in bad.items())
                 + ".")
    from feature_store.spec_fit import QUANTILE_SAMPLE  # values per block RecForge keeps for quantile boundaries

    rf_bounds = {f["name"]: f.get("boundaries") for f in rf_spec["features"] if f.get("transform") == "bucketize"}
    for name, bounds in pd_summary.get("boundaries", {}).items():
        if any(k.endswith(f".{name}") for k in bad) and name in rf_bounds:
            shown = ", ".join(f"{b:.3f}" for b in rf_bounds[name] or [])
            parts.append(f"`{name}` is a quantile-bucketized feature; RecForge's fitted boundaries are "
                         f"[{shown}], pandas' (exact quantiles of all train values) are "
                         f"[{', '.join(f'{b:.3f}' for b in bounds)}], so rows between the two land one bucket "
                         f"apart. RecForge fits quantiles from a sample of up to {QUANTILE_SAMPLE:,} values per Ray "
                         "block, each value weighted by the share of its block it stands for (approximate "
                         "quantiles, as distributed fitting does; pandas sees every value).")
    return " ".join(parts), rows_ok and not vocab_diff


def render_small_section(ctx: dict[str, Any]) -> str:
    """The `--small` section: each engine's whole `recforge prepare` process, and the imports alone."""
    runs: dict[str, list[Measurement]] = ctx["runs"]
    jobs: dict[str, list[dict[str, Any]]] = ctx["jobs"]
    m, rows = ctx["machine"], ctx["rows"]
    n = len(runs["local"])
    best = {name: min(range(len(rs)), key=lambda k: rs[k].wall_s) for name, rs in runs.items()}
    fast = {name: runs[name][k] for name, k in best.items()}
    label = {"imports": "interpreter start + imports only", "local": "`prepare.engine=local`",
             "ray": "`prepare.engine=ray`"}
    lines = [
        SMALL_TITLE,
        "",
        "`recforge prepare` of a small data set with `prepare.engine=local` (spec fit and transform in the "
        "`recforge` process; Ray is neither imported nor started) and with `prepare.engine=ray` (a local Ray "
        "started for the job, the only engine before `prepare.engine` existed), on the same synthetic Parquet "
        "files. Each run is a whole process: wall time includes the interpreter start, the imports and, for Ray, "
        "starting and stopping it. The first row is a process that only starts the interpreter and imports the "
        "prepare path (`import recforge.cli, feature_store.prepare`).",
        "",
        f"- Date: {ctx['date']}",
        f"- Machine: {machine_text(m)}; {load_text(m)}",
        f"- Command: `{ctx['command']}`",
        f"- Data: `{ctx['config']}` with {rows:,} impressions; split by time into {ctx['split_rows']}",
        f"- Runs: {n} per row, interleaved (the order reversed every other round); the table shows each row's "
        "fastest run",
        "",
        f"| run | wall s ({'best of ' + str(n) if n > 1 else 'one run'}) | job s (`summary.json` `seconds`) | "
        "CPU s | peak memory (sum of RSS) | CPU s of other processes | wall s of every run |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("imports", "local", "ray"):
        r = fast[name]
        job_s = f"{jobs[name][best[name]]['seconds']:.2f}" if name in jobs else ""
        lines.append(f"| {label[name]} | {r.wall_s:.2f} | {job_s} | {r.cpu_s:.1f} | {gib(r.peak_rss)} | "
                     f"{r.other_cpu_s:.1f} | {', '.join(f'{x.wall_s:.2f}' for x in runs[name])} |")
    lines.append(f"| ray / local | {fast['ray'].wall_s / fast['local'].wall_s:.2f}x | "
                 f"{jobs['ray'][best['ray']]['seconds'] / max(jobs['local'][best['local']]['seconds'], 1e-9):.2f}x | "
                 f"{fast['ray'].cpu_s / max(fast['local'].cpu_s, 1e-9):.2f}x | "
                 f"{fast['ray'].peak_rss / max(fast['local'].peak_rss, 1):.2f}x | | |")
    lines.append("")
    if rows <= SMALL_GOAL_ROWS:
        ok = fast["local"].wall_s < SMALL_GOAL_S
        lines += [f"Goal: {rows:,} event rows prepared in under {SMALL_GOAL_S:.0f} s wall on {m['usable']} cores "
                  f"(the whole `recforge prepare` process): **{_goal(ok)}** ({fast['local'].wall_s:.2f} s with the "
                  "local engine).", ""]
    same = ("identical: the same spec (fingerprint "
            f"`{jobs['local'][-1]['spec_fingerprint'][:12]}`), vocabularies, shard names and rows in every split"
            if not ctx["differences"] else "DIFFERENT: " + "; ".join(ctx["differences"][:10]))
    lines += [
        f"Same output from both engines: {same}.",
        "",
        "Where the time goes (seconds inside the fastest run of each engine, from `prepared/summary.json` "
        "`stage_seconds`):",
        "",
    ]
    for name in ("local", "ray"):
        summary = jobs[name][best[name]]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in summary["stage_seconds"].items())
        lines.append(f"- {name}: {stages}; job {summary['seconds']:.2f} s of {fast[name].wall_s:.2f} s wall"
                     + ("; `ray_start` runs in the main thread while a worker thread reads, joins and stages the "
                        "data" if "ray_start" in summary["stage_seconds"] else ""))
    lines += [
        "",
        "The wall time beyond the job is the interpreter start and imports (the first row) and, for Ray, its "
        "shutdown at exit. Memory is the peak of the summed VmRSS of the process and all its descendants, "
        "sampled as in the section above.",
        "",
        "Commands run:",
        "",
        f"- generate (not timed): `{ctx['generate_cmd']}`, its `raw/` copied to the other engine's output folder",
        *(f"- {name}: `{ctx['commands'][name]}`" for name in ("imports", "local", "ray")),
    ]
    return "\n".join(lines) + "\n"
