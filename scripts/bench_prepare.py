"""Benchmark of feature preparation: `recforge prepare` against a single-process pandas implementation.

Both contenders prepare the same synthetic impressions (configs/demo.yaml, 5M rows by default) from the same
Parquet files, generated once before anything is timed. Each runs as its own subprocess; the parent samples
the summed RSS of the subprocess and all its descendants (the Ray driver, raylet, GCS, object store and
workers for RecForge) every ~50 ms and records the peak, the wall time and the CPU time. The pandas
contender (`pandas_prepare`, run via `--pandas-worker`) is a straightforward pandas program for the same
transforms: merge_asof point-in-time joins, the time split, RFM and category affinity profiles, the last-N
positive items history, vocabularies / log1p / standardize / quantile buckets fitted on train, Parquet per
split. The parent checks that both produce the same rows per split, the same vocabulary sizes and (column by
column) the same values, prints a table and rewrites its own section of docs/benchmarks.md.

    .venv/bin/python scripts/bench_prepare.py                 # 5M impressions, writes docs/benchmarks.md
    .venv/bin/python scripts/bench_prepare.py --rows 200000 --no-doc
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))
import benchdoc  # noqa: E402

SECTION_TITLE = "## Feature preparation (bench_prepare.py)"
SPLITS = ("train", "valid", "test")
DAY = 86_400
GIB = 1024**3


# ------------------------------------------------------------------------------------------ measurement


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
    """A short name: the Ray title (ray::IDLE, raylet, gcs_server) or the Python script's file name."""
    cmd = p.cmdline()
    if not cmd:
        return p.name()
    first = os.path.basename(cmd[0].split()[0])
    if first.startswith("python"):
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
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    me = psutil.Process()
    busy0, mine0 = _busy_cpu_seconds(), sum(me.cpu_times()[:2])
    cpu_of: dict[int, float] = {}
    names: dict[int, str] = {}
    peak_rss = peak_shmem = peak_once = samples = 0
    peak_at, peak_by = 0.0, {}
    started = datetime.now()
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
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


# -------------------------------------------------------------------------------- the pandas contender


class _Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"{datetime.now():%H:%M:%S} INFO pandas_prepare: prepare: {name} ...", flush=True)
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 3)


def _check_supported(cfg: Any) -> None:
    f = cfg.features
    problems = []
    if cfg.split.method != "time":
        problems.append(f"split.method is '{cfg.split.method}'; the pandas reference implements 'time' only")
    if f.multi_valued:
        problems.append("features.multi_valued is not implemented by the pandas reference")
    if any(c.hash_buckets for c in f.categorical):
        problems.append("categorical hash_buckets are not implemented by the pandas reference")
    if cfg.source.type != "synthetic":
        problems.append(f"source.type is '{cfg.source.type}'; the benchmark uses the synthetic source")
    if problems:
        raise SystemExit("bench_prepare: the config does not fit this benchmark:\n  " + "\n  ".join(problems)
                         + "\n  use configs/demo.yaml (the default) or a config of the same shape")


def _asof(left: pd.DataFrame, right: pd.DataFrame, *, ts: str, right_ts: str, by: str,
          ttl_s: float | None) -> pd.DataFrame:
    """pd.merge_asof on (by, time): the newest right row with right_ts <= the left row's ts."""
    right = right.sort_values(right_ts, kind="stable")
    tolerance = int(ttl_s) if ttl_s is not None else None
    out = pd.merge_asof(left, right, left_on=ts, right_on=right_ts, by=by, direction="backward",
                        tolerance=tolerance)
    return out.drop(columns=[right_ts])


def _vocab(train_values: pd.Series, min_freq: int, max_vocab: int | None) -> pd.Index:
    """Train values by descending count, ties by value; values seen fewer than min_freq times left out."""
    vc = train_values.value_counts(dropna=True)
    vc = vc[vc >= min_freq]
    frame = vc.rename_axis("value").reset_index(name="count")
    frame = frame.sort_values(["count", "value"], ascending=[False, True], kind="stable")
    if max_vocab is not None:
        frame = frame.head(max_vocab)
    return pd.Index(frame["value"])


def _last_n_positive(events: pd.DataFrame, *, user: str, ts: str, code: str, positive: str,
                     max_len: int) -> pd.Series:
    """For each event, the codes of the user's positive events strictly before it (most recent last)."""

    def per_user(g: pd.DataFrame) -> pd.Series:
        t = g[ts].to_numpy()
        hit = g[positive].to_numpy()
        pos_t, pos_code = t[hit], g[code].to_numpy()[hit]
        end = np.searchsorted(pos_t, t, side="left")
        start = np.maximum(end - max_len, 0)
        return pd.Series([pos_code[s:e] for s, e in zip(start, end)], index=g.index, dtype=object)

    hist = events.groupby(user, sort=False, group_keys=False)[[ts, code, positive]].apply(per_user)
    hist = hist.reindex(events.index)
    empty = np.zeros(0, dtype=np.int64)
    missing = hist.isna().to_numpy()
    if missing.any():
        hist[missing] = pd.Series([empty] * int(missing.sum()), index=hist.index[missing], dtype=object)
    return hist


def pandas_prepare(cfg: Any, raw_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The same transforms as `recforge prepare` for a demo-shaped config, in plain single-process pandas."""
    _check_supported(cfg)
    t_start = time.perf_counter()
    st = _Stages()
    f, p = cfg.features, cfg.profiles
    ts, user, label = f.timestamp, f.user_key, f.label
    want_affinity = bool(p.enabled and p.category and f.vector)

    with st.stage("read"):
        names = {"events", *(e.table for e in cfg.entities.values())}
        if p.enabled:
            names |= {p.table} | ({p.category_table} if p.category_table else set())
        raw = {n: pd.read_parquet(raw_dir / f"{n}.parquet") for n in sorted(names)}
        ev = raw["events"]

    with st.stage("assemble"):
        reordered = not ev[ts].is_monotonic_increasing
        if reordered:  # merge_asof needs the events sorted by time; the input order is restored at the end
            ev = ev.assign(_row=np.arange(len(ev))).sort_values(ts, kind="stable", ignore_index=True)
        # time split: the first (1 - valid - test) quantile of event times is train
        q_train = 1.0 - cfg.split.valid_fraction - cfg.split.test_fraction
        cut_valid = int(ev[ts].quantile(q_train, interpolation="higher"))
        cut_test = int(ev[ts].quantile(1.0 - cfg.split.test_fraction, interpolation="higher"))
        split = np.select([ev[ts] >= cut_test, ev[ts] >= cut_valid], [2, 1], 0).astype(np.int8)
        train_end = cut_valid if cfg.split.valid_fraction > 0 else cut_test
        for ent in cfg.entities.values():
            cols = [ent.key, *ent.features]
            if ent.timestamp is None:
                ev = ev.merge(raw[ent.table][cols], on=ent.key, how="left")
            else:
                right = raw[ent.table][[*cols, ent.timestamp]].rename(columns={ent.timestamp: "_feature_ts"})
                ttl = ent.ttl_days * DAY if ent.ttl_days else None
                ev = _asof(ev, right, ts=ts, right_ts="_feature_ts", by=ent.key, ttl_s=ttl)
        vector = None
        if p.enabled:
            ttl = p.ttl_days * DAY if p.ttl_days else None
            buys = raw[p.table].dropna(subset=[p.user_key, "ts"])
            buys = buys.assign(_day=buys["ts"] // DAY, _amount=buys[p.amount].astype("float64").fillna(0.0))
            # RFM: cumulative per user over days with purchases, visible from the start of the next day
            daily = buys.groupby([p.user_key, "_day"]).agg(
                _n=("ts", "size"), _spent=("_amount", "sum"), _last_ts=("ts", "max"))
            daily["_freq"] = daily.groupby(level=0)["_n"].cumsum()
            daily["_money"] = daily.groupby(level=0)["_spent"].cumsum()
            snap = daily.reset_index()
            snap["_snap_ts"] = (snap["_day"] + 1) * DAY
            snap = snap[[p.user_key, "_snap_ts", "_last_ts", "_freq", "_money"]]
            ev = _asof(ev, snap, ts=ts, right_ts="_snap_ts", by=user, ttl_s=ttl)
            ev["rfm_recency_days"] = ((ev[ts] - ev["_last_ts"]) / DAY).astype("float32")
            ev["rfm_frequency"] = ev["_freq"].astype("float32")
            ev["rfm_monetary"] = ev["_money"].astype("float32")
            ev = ev.drop(columns=["_last_ts", "_freq", "_money"])
            if want_affinity:
                vector = _affinity(ev, buys, raw, cfg, train_end, ttl)

    with st.stage("fit"):
        is_train = split == 0
        encoded: dict[str, Any] = {}
        vocab_sizes: dict[str, int] = {}
        boundaries: dict[str, list[float]] = {}
        for c in f.categorical:
            col = ev[c.source_column]
            vocab = _vocab(col[is_train], c.min_freq, c.max_vocab)
            encoded[c.name] = pd.Categorical(col, categories=vocab).codes.astype(np.int64) + 1
            vocab_sizes[c.name] = len(vocab) + 1
        for n in f.numeric:
            x = ev[n.source_column].astype("float64")
            train_x = x[is_train].dropna()
            logged = n.transform in ("log1p", "log1p_standardize")
            stats_x = np.log1p(train_x.clip(lower=0.0)) if logged else train_x
            if n.transform == "bucketize":
                qs = np.quantile(stats_x.to_numpy(), np.linspace(0, 1, n.buckets + 1)[1:-1])
                bounds = np.unique(qs)
                idx = np.searchsorted(bounds, x.to_numpy(), side="right").astype(np.int64) + 1
                idx[x.isna().to_numpy()] = 0
                encoded[n.name] = idx
                vocab_sizes[n.name] = len(bounds) + 2
                boundaries[n.name] = [float(b) for b in bounds]
                continue
            fill = n.fill if n.fill is not None else float(train_x.mean())
            mean, std = float(stats_x.mean()), float(stats_x.std(ddof=0)) or 1.0
            y = x.fillna(fill)
            if logged:
                y = np.log1p(y.clip(lower=0.0))
            if n.transform in ("standardize", "log1p_standardize"):
                y = (y - mean) / std
            encoded[n.name] = y.astype("float32").to_numpy()

    with st.stage("history"):
        sources = {c.name: c for c in f.categorical}
        for s in f.sequence:
            frame = pd.DataFrame({user: ev[user], ts: ev[ts], "_code": encoded[s.source],
                                  "_pos": (ev[label] > 0).to_numpy() if s.positive_only else True})
            frame["_pos"] &= ev[sources[s.source].source_column].notna().to_numpy()
            encoded[s.name] = _last_n_positive(frame, user=user, ts=ts, code="_code", positive="_pos",
                                               max_len=s.max_len).to_numpy()
            vocab_sizes[s.name] = vocab_sizes[s.source]

    with st.stage("transform_write"):
        out = pd.DataFrame(encoded)
        out["label"] = ev[label].astype("float32").to_numpy()
        for c in f.passthrough:
            out[c] = ev[c].to_numpy()
        # the raw row keys the prepared shards carry (FeatureSpec.key_columns)
        for out_name, c in (("__user_key", f.user_key), ("__item_key", f.item_key), ("__ts", f.timestamp)):
            out[out_name] = ev[c].to_numpy()
        if reordered:
            order = np.argsort(ev["_row"].to_numpy(), kind="stable")
            out, split = out.iloc[order].reset_index(drop=True), split[order]
            vector = vector[order] if vector is not None else None
        out_dir.mkdir(parents=True, exist_ok=True)
        n_feat = len(f.categorical) + len(f.numeric) + len(f.sequence)
        rows: dict[str, int] = {}
        for code, name in enumerate(SPLITS):
            mask = split == code
            part = out[mask]
            arrays = []
            for col in part.columns:
                typ = pa.list_(pa.int64()) if part[col].dtype == object else None
                arrays.append(pa.array(part[col].to_numpy(), type=typ))
            columns = list(part.columns)
            if vector is not None:  # fixed-width vector handed to Arrow as one block (pandas has no such type)
                v = vector[mask]
                flat = pa.array(v.ravel())
                vec = pa.ListArray.from_arrays(pa.array(np.arange(len(v) + 1, dtype=np.int32) * v.shape[1]), flat)
                arrays.insert(n_feat, vec)
                columns.insert(n_feat, f.vector[0].name)
            pq.write_table(pa.Table.from_arrays(arrays, names=columns), out_dir / f"{name}.parquet")
            rows[name] = int(mask.sum())

    summary = {"rows": rows, "vocab_sizes": vocab_sizes, "boundaries": boundaries, "stage_seconds": st.seconds,
               "seconds": round(time.perf_counter() - t_start, 3), "affinity": vector is not None}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _affinity(ev: pd.DataFrame, buys: pd.DataFrame, raw: dict[str, pd.DataFrame], cfg: Any,
              train_end: int, ttl: float | None) -> np.ndarray:
    """L2-normalised TF-IDF of each user's cumulative purchase categories known at each event (float32)."""
    p, ts, user = cfg.profiles, cfg.features.timestamp, cfg.features.user_key
    cat = p.category
    if cat not in buys.columns:  # category from the items table (its newest row per item)
        items = raw[p.category_table].sort_values("ts", kind="stable").drop_duplicates(p.item_key, keep="last")
        buys = buys.merge(items[[p.item_key, cat]], on=p.item_key, how="left")
    buys = buys.dropna(subset=[cat]).assign(_cat=lambda d: d[cat].astype(str))
    counts = buys.loc[buys["ts"] < train_end, "_cat"].value_counts()
    if p.n_categories is not None:
        top = counts.rename_axis("v").reset_index(name="n").sort_values(["n", "v"], ascending=[False, True])
        counts = counts[top["v"].head(p.n_categories)]
    categories = sorted(counts.index)
    buys = buys[buys["_cat"].isin(categories)]
    per_day = buys.groupby([p.user_key, "_day", "_cat"]).size().unstack(fill_value=0)
    per_day = per_day.reindex(columns=categories, fill_value=0)
    cum = per_day.groupby(level=0).cumsum().astype("float32").reset_index()
    cum["_snap_ts"] = (cum["_day"] + 1) * DAY
    cum = cum.drop(columns=["_day"])
    latest = cum[cum["_snap_ts"] <= train_end].groupby(p.user_key)[categories].last()
    idf = (np.log((1.0 + len(latest)) / (1.0 + (latest > 0).sum(axis=0).to_numpy())) + 1.0).astype(np.float32)
    joined = _asof(ev[[user, ts]], cum, ts=ts, right_ts="_snap_ts", by=user, ttl_s=ttl)
    m = joined[categories].to_numpy(dtype=np.float32)  # NaN where the user has no snapshot yet
    w = m / m.sum(axis=1, keepdims=True) * idf
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return np.nan_to_num(w, nan=0.0).astype(np.float32)


# --------------------------------------------------------------------------------------- comparison


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


# ------------------------------------------------------------------------------------------- reporting


def _rel(path: str | Path) -> str:
    p = Path(path)
    try:
        return str(Path(os.path.abspath(p)).relative_to(REPO))
    except ValueError:
        return str(path)


def _shown(command: Sequence[str]) -> str:
    parts = [_rel(c) if os.path.isabs(c) and c.startswith(str(REPO)) else c for c in command]
    if parts and Path(command[0]).name.startswith("python") and not parts[0].startswith(".venv"):
        parts[0] = "python"
    return shlex.join(parts)


def machine() -> dict[str, Any]:
    cpu = benchdoc.cpu_model()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "absent"

    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable,
        "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {k: version(k) for k in ("pandas", "pyarrow", "numpy", "ray")},
    }


def _gib(n: float) -> str:
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
    parts = ", ".join(f"{k} {_gib(v)}" for k, v in top)
    return f"at {r.peak_at_s:.0f} s into the run, during `{stage}`: {parts}"


def render_section(ctx: dict[str, Any]) -> str:
    rf_runs: list[Measurement] = ctx["recforge"]
    pd_runs: list[Measurement] = ctx["pandas"]
    rf, pdm = min(rf_runs, key=lambda r: r.wall_s), min(pd_runs, key=lambda r: r.wall_s)
    rf_peak, pd_peak = max(rf_runs, key=lambda r: r.peak_rss), max(pd_runs, key=lambda r: r.peak_rss)
    rows, m, n = ctx["rows"], ctx["machine"], len(rf_runs)
    rf_rps, pd_rps = rows / rf.wall_s, rows / pdm.wall_s
    best = "best of " + str(n) if n > 1 else "one run"
    lines = [
        SECTION_TITLE,
        "",
        "`recforge prepare` (Ray Data on a local Ray) against a straightforward single-process pandas",
        "implementation of the same transforms (`pandas_prepare` in `scripts/bench_prepare.py`), on the same",
        "synthetic Parquet files, in one run. Each contender is a subprocess; wall time is the whole process",
        "(interpreter start, imports and, for RecForge, starting and stopping Ray included).",
        "",
        f"- Date: {ctx['date']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['ram_gib']} GiB RAM, "
        f"{m['os']}; Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
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
        lines.append(f"| {label} | {r.wall_s:.1f} | {rps:,.0f} | {_gib(peak.peak_rss)} | {_gib(peak.peak_shmem)} | "
                     f"{_gib(max(x.peak_once for x in runs))} | {r.cpu_s:.1f} | {r.other_cpu_s:.1f} | "
                     f"{_fmt_runs(runs)} |")
    lines += [
        f"| RecForge / pandas | {rf.wall_s / pdm.wall_s:.2f}x | {rf_rps / pd_rps:.2f}x | "
        f"{rf_peak.peak_rss / pd_peak.peak_rss:.2f}x | | | {rf.cpu_s / max(pdm.cpu_s, 1e-9):.2f}x | | |",
        "",
        *_contention_note(rf, pdm, m["usable_cores"]),
        f"Goals: throughput at least pandas' on {m['usable_cores']} cores: **{_goal(rf_rps >= pd_rps)}** "
        f"({rf_rps / pd_rps:.2f}x)"
        + (f", not conclusive on a busy machine (by CPU time RecForge needs "
           f"{rf.cpu_s / max(pdm.cpu_s, 1e-9):.2f}x pandas')" if max(_busy_shares(rf, pdm, m["usable_cores"])) >= 0.25
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


def update_doc(path: Path, section: str) -> None:
    """Replace this benchmark's block (between its markers) in `path`, or append it; nothing else changes."""
    benchdoc.update_doc(path, "bench_prepare", section.rstrip() + "\n")


def _agreement(rf_summary: dict[str, Any], pd_summary: dict[str, Any], rf_spec: dict[str, Any],
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
    from feature_store.spec import QUANTILE_SAMPLE  # values per block RecForge keeps for quantile boundaries

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


# ------------------------------------------------------------------------------------------------ main


def _load_config(path: str, overrides: list[str]) -> Any:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from recforge.config import load

    return load(path, overrides)


def _recforge_cli() -> list[str]:
    exe = Path(sys.executable).with_name("recforge")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "recforge.cli"]


def _sets(overrides: Sequence[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000, help="synthetic impressions (default 5,000,000)")
    ap.add_argument("--work-dir", default="runs/bench_prepare", help="data and outputs (default runs/bench_prepare)")
    ap.add_argument("--config", default="configs/demo.yaml", help="scenario config (default configs/demo.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="extra config override for both contenders (repeatable)")
    ap.add_argument("--no-affinity", action="store_true",
                    help="drop the category-affinity vector from both contenders")
    ap.add_argument("--repeat", type=int, default=1, help="runs per contender, alternating (default 1)")
    ap.add_argument("--doc", default="docs/benchmarks.md", help="benchmarks document to update")
    ap.add_argument("--no-doc", action="store_true", help="print the results only; leave the document alone")
    ap.add_argument("--sample-ms", type=int, default=50, help="memory sampling interval in ms (default 50)")
    ap.add_argument("--pandas-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--raw-dir", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    base = [f"source.n_impressions={args.rows}", *args.overrides]
    if args.no_affinity:
        base += ["profiles.category=null", "features.vector=[]"]

    if args.pandas_worker:
        cfg = _load_config(args.config, list(args.overrides))
        summary = pandas_prepare(cfg, Path(args.raw_dir), Path(args.out_dir))
        print(json.dumps(summary, indent=2))
        return 0

    if args.rows <= 0 or args.repeat <= 0:
        raise SystemExit(f"bench_prepare: --rows and --repeat must be positive, got {args.rows}, {args.repeat}")
    work = Path(args.work_dir)
    work = work if work.is_absolute() else REPO / work
    rf_dir, pd_dir, logs = work / "recforge", work / "pandas", work / "logs"
    cfg = _load_config(args.config, [*base, f"output_dir={rf_dir}"])
    _check_supported(cfg)
    cli = _recforge_cli()
    rf_sets = _sets([*base, f"output_dir={_rel(rf_dir)}"])

    print(f"bench_prepare: generating {args.rows:,} impressions under {_rel(rf_dir / 'raw')} (not timed) ...")
    gen_cmd = [*cli, "generate", "--config", args.config, *rf_sets]
    t0 = time.perf_counter()
    gen = subprocess.run(gen_cmd, cwd=REPO, capture_output=True, text=True)
    if gen.returncode != 0:
        raise SystemExit(f"bench_prepare: data generation failed ({shlex.join(gen_cmd)}):\n{gen.stderr[-3000:]}")
    print(f"  done in {time.perf_counter() - t0:.1f}s")
    manifest = json.loads((rf_dir / "raw" / "manifest.json").read_text())

    interval = args.sample_ms / 1000
    rf_cmd = [*cli, "prepare", "--config", args.config, *rf_sets]
    pd_cmd = [sys.executable, str(Path(__file__).resolve()), "--pandas-worker", "--config", args.config,
              *_sets(base), "--raw-dir", _rel(rf_dir / "raw"), "--out-dir", _rel(pd_dir)]
    runs: dict[str, list[Measurement]] = {"RecForge": [], "pandas": []}
    job: dict[str, list[dict[str, Any]]] = {"RecForge": [], "pandas": []}
    peak_stage: dict[str, list[str]] = {"RecForge": [], "pandas": []}
    for i in range(args.repeat):
        for name, cmd, summary_path in (("RecForge", rf_cmd, rf_dir / "prepared" / "summary.json"),
                                        ("pandas", pd_cmd, pd_dir / "summary.json")):
            log = logs / f"{name.lower()}-{i + 1}.log"
            print(f"bench_prepare: run {i + 1}/{args.repeat}, {name}: {_shown(cmd)}")
            m = run_measured(name, cmd, log, interval)
            if m.returncode != 0:
                raise SystemExit(f"bench_prepare: {name} failed (exit {m.returncode}); see its log {_rel(log)}")
            print(f"  {m.wall_s:.1f}s wall, peak {_gib(m.peak_rss)}, other processes used {m.other_cpu_s:.1f} CPU s")
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
    agreement, same_shape = _agreement(rf_summary, pd_summary, rf_spec, mismatches)

    data_rows = manifest["rows"]
    rf_best, pd_best = job["RecForge"][fastest("RecForge")], job["pandas"][fastest("pandas")]
    ctx = {
        "recforge": runs["RecForge"], "pandas": runs["pandas"], "rows": args.rows, "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "scripts/bench_prepare.py", *(argv if argv is not None else sys.argv[1:])]),
        "config": args.config,
        "data_rows": f"{cfg.source.n_users:,} users, {cfg.source.n_items:,} items, "
                     f"{data_rows['items']:,} item-price rows, {data_rows['purchases']:,} purchases",
        "split_rows": ", ".join(f"{s} {rf_summary['split']['rows'][s]:,}" for s in SPLITS),
        "affinity": pd_summary["affinity"],
        "affinity_note": "dropped from both sides (`--no-affinity`: profiles.category=null, features.vector=[])",
        "agreement": agreement,
        "rf_stages": rf_best["stage_seconds"], "pd_stages": pd_best["stage_seconds"],
        "rf_job_s": rf_best["seconds"], "pd_job_s": pd_best["seconds"],
        "rf_peak_stage": peak_stage["RecForge"][largest("RecForge")],
        "pd_peak_stage": peak_stage["pandas"][largest("pandas")],
        "interval_ms": args.sample_ms,
        "generate_cmd": _shown(gen_cmd), "recforge_cmd": _shown(rf_cmd), "pandas_cmd": _shown(pd_cmd),
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
        update_doc(doc, section)
        print(f"bench_prepare: wrote the '{SECTION_TITLE}' section of {_rel(doc)}")
    return 0 if same_shape else 1


if __name__ == "__main__":
    raise SystemExit(main())
