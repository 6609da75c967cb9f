"""How `scripts.bench.prepare` measures a contender and checks the outputs: the contender runs as a subprocess,
its process tree sampled for memory (summed RSS, the shared part) and CPU time; the outputs compared column by
column."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scripts.bench.common import REPO
from scripts.bench.pandas_prepare import SPLITS


@dataclass
class Measurement:
    """One contender's subprocess run: wall time, peak summed RSS of its process tree, CPU time."""

    name: str
    command: list[str]
    returncode: int
    wall_s: float
    peak_rss: int
    peak_shmem: int
    peak_once: int
    peak_at_s: float
    peak_by_process: dict[str, int]
    cpu_s: float
    other_cpu_s: float
    started: datetime
    processes: dict[str, int] = field(default_factory=dict)
    samples: int = 0


def _proc_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, RssShmem) of a process in bytes, from /proc/<pid>/status (psutil's RSS where unavailable)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        try:
            return psutil.Process(pid).memory_info().rss, 0
        except psutil.Error:
            return 0, 0
    rss = shmem = 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("RssShmem:"):
            shmem = int(line.split()[1]) * 1024
    return rss, shmem


def _proc_label(p: psutil.Process) -> str:
    """A short name: the Ray title (ray::IDLE, raylet, gcs_server), the Python script's file name or the last part of
    the module a `python -m` runs."""
    cmd = p.cmdline()
    if not cmd:
        return p.name()
    first = os.path.basename(cmd[0].split()[0])
    if first.startswith("python"):
        if "-m" in cmd[1:-1]:
            return cmd[cmd.index("-m", 1) + 1].rsplit(".", 1)[-1]
        script = next((os.path.basename(a) for a in cmd[1:] if a.endswith(".py") or a.endswith("recforge")), None)
        return script or first
    return first


def _busy_cpu_seconds() -> float:
    t = psutil.cpu_times()
    return float(sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal")))


def run_measured(name: str, command: list[str], log_path: Path, interval_s: float) -> Measurement:
    """Run `command` as a subprocess (output to `log_path`), sampling its process tree every `interval_s`.

    Memory is the sum of VmRSS over the process and all its descendants at each sample; the peak of that sum
    is reported, with the RssShmem part (shared memory, e.g. Ray's object store) and the per-process RSS of
    the same sample. CPU time is the user + system time of every process of the tree (last sample of each).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    busy0, mine0 = _busy_cpu_seconds(), sum(me.cpu_times()[:2])
    cpu_of: dict[int, float] = {}
    names: dict[int, str] = {}
    peak_rss = peak_shmem = peak_once = samples = 0
    peak_at, peak_by = 0.0, {}
    started = datetime.now()
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = [root]
            rss_sum = shmem_sum = shmem_max = 0
            by_pid: dict[int, int] = {}
            for p in tree:
                rss, shmem = _proc_memory(p.pid)
                rss_sum += rss
                shmem_sum += shmem
                shmem_max = max(shmem_max, shmem)
                by_pid[p.pid] = rss
                try:
                    with p.oneshot():
                        cpu_of[p.pid] = sum(p.cpu_times()[:2])
                        names[p.pid] = _proc_label(p)  # latest: Ray workers retitle themselves (ray::IDLE)
                except psutil.Error:
                    pass
            samples += 1
            # lower bound: private pages of all, plus the shared pages of the process that maps the most
            peak_once = max(peak_once, rss_sum - shmem_sum + shmem_max)
            if rss_sum > peak_rss:
                peak_rss, peak_shmem, peak_at = rss_sum, shmem_sum, time.perf_counter() - t0
                peak_by = {}
                for pid, rss in by_pid.items():
                    label = names.get(pid, str(pid))
                    peak_by[label] = peak_by.get(label, 0) + rss
            time.sleep(interval_s)
        returncode = proc.wait()
    wall = time.perf_counter() - t0
    tree_cpu = sum(cpu_of.values())
    mine = sum(me.cpu_times()[:2]) - mine0
    other = max(_busy_cpu_seconds() - busy0 - tree_cpu - mine, 0.0)
    counts: dict[str, int] = {}
    for n in names.values():
        counts[n] = counts.get(n, 0) + 1
    peak_by = dict(sorted(peak_by.items(), key=lambda kv: -kv[1]))
    return Measurement(name, command, returncode, wall, peak_rss, peak_shmem, peak_once, peak_at, peak_by,
                       tree_cpu, other,
                       started, dict(sorted(counts.items())), samples)


_STAGE_LINE = re.compile(r"^(\d\d:\d\d:\d\d) .*prepare: (\w+) \.\.\.$")


def stage_at(log_path: Path, m: Measurement) -> str:
    """The job stage running when the memory peak was sampled, from the stage-start lines of the log."""
    peak = m.started + timedelta(seconds=m.peak_at_s)
    current = "start-up"
    for line in log_path.read_text(errors="replace").splitlines():
        hit = _STAGE_LINE.match(line)
        if not hit:
            continue
        clock = datetime.strptime(hit.group(1), "%H:%M:%S").time()
        started = datetime.combine(m.started.date(), clock)
        if started < m.started - timedelta(seconds=1):  # the run crossed midnight
            started += timedelta(days=1)
        if started <= peak:
            current = hit.group(2)
    return current


def _read_column(paths: Sequence[Path], column: str) -> pa.Array:
    table = pa.concat_tables(pq.read_table(p, columns=[column]) for p in paths)
    return table.column(column).combine_chunks()


def _mismatched_rows(a: pa.Array, b: pa.Array) -> int:
    """Rows whose values differ (floats: np.isclose with rtol=atol=1e-5; lists: any element or length)."""
    if len(a) != len(b):
        return max(len(a), len(b))
    if pa.types.is_list(a.type) or pa.types.is_large_list(a.type) or pa.types.is_fixed_size_list(a.type):
        la = pc.list_value_length(a).to_numpy(zero_copy_only=False)
        lb = pc.list_value_length(b).to_numpy(zero_copy_only=False)
        same_len = la == lb
        fa = pc.list_flatten(a.filter(pa.array(same_len))).to_numpy(zero_copy_only=False)
        fb = pc.list_flatten(b.filter(pa.array(same_len))).to_numpy(zero_copy_only=False)
        diff = ~np.isclose(fa, fb, rtol=1e-5, atol=1e-5, equal_nan=True) if fa.dtype.kind == "f" else fa != fb
        owners = np.repeat(np.arange(int(same_len.sum())), la[same_len])
        bad_same = np.bincount(owners[diff], minlength=int(same_len.sum())) > 0
        return int((~same_len).sum() + bad_same.sum())
    xa, xb = a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False)
    if xa.dtype.kind == "f" or xb.dtype.kind == "f":
        return int((~np.isclose(xa.astype(np.float64), xb.astype(np.float64), rtol=1e-5, atol=1e-5,
                                equal_nan=True)).sum())
    return int((xa != xb).sum())


def compare_outputs(rf_prepared: Path, pd_out: Path) -> dict[str, dict[str, int]]:
    """Mismatched rows per split and column between RecForge's shards and the pandas files."""
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        rf_files = sorted((rf_prepared / split).glob("*.parquet"))
        pd_file = pd_out / f"{split}.parquet"
        rf_cols = pq.read_schema(rf_files[0]).names
        pd_cols = pq.read_schema(pd_file).names
        if rf_cols != pd_cols:
            raise SystemExit(f"bench_prepare: {split}: RecForge writes columns {rf_cols}, pandas {pd_cols}")
        out[split] = {c: _mismatched_rows(_read_column(rf_files, c), _read_column([pd_file], c)) for c in rf_cols}
    return out


def compare_prepared(a: Path, b: Path) -> list[str]:
    """What differs between two `prepared/` folders: the spec (without its creation time), the vocabularies, the
    shard names of each split and each shard's rows; empty when they are identical."""
    out: list[str] = []
    specs = [json.loads((d / "spec" / "feature_spec.json").read_text()) for d in (a, b)]
    for spec in specs:
        spec.pop("created_at", None)
    if specs[0] != specs[1]:
        out.append("feature_spec.json differs")
    vocabs = [sorted(p.relative_to(d / "spec") for p in (d / "spec").rglob("*.parquet")) for d in (a, b)]
    if vocabs[0] != vocabs[1]:
        out.append(f"vocabulary files differ: {[str(v) for v in vocabs[0]]} / {[str(v) for v in vocabs[1]]}")
    for name in vocabs[0] if vocabs[0] == vocabs[1] else []:
        if not pq.read_table(a / "spec" / name).equals(pq.read_table(b / "spec" / name)):
            out.append(f"vocabulary {name} differs")
    for split in SPLITS:
        names = [sorted(p.name for p in (d / split).glob("*.parquet")) for d in (a, b)]
        if names[0] != names[1]:
            out.append(f"{split}: shard names differ ({len(names[0])} / {len(names[1])} shards)")
            continue
        out += [f"{split}/{n} differs" for n in names[0]
                if not pq.read_table(a / split / n).equals(pq.read_table(b / split / n))]
    return out
