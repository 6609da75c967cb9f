"""Benchmark of the FAISS candidate index: exact inner-product search against IVF-Flat, HNSW (and IVF-PQ), one run.

Data (seeded, not timed): `--items` unit vectors of `--dim` dimensions around `--clusters` random unit centres
(item = normalise(centre + noise), noise of norm about `--spread`), and `--queries` user vectors drawn the same
way (perturbed cluster centres), so approximate search has structure to exploit, like trained embeddings.

Every index is built by `training.index.build.build_index` (the code `recforge index build` runs, recall guard
included) and searched through `ItemIndex.search` (the call serving makes: faiss plus id mapping), top-100:

- batch: all queries in one call; QPS = queries / seconds;
- one at a time: single-query calls over the first `--single` queries, stopped after `--single-seconds`;
- recall@100: |approximate top-100 ∩ exact top-100| / 100 averaged over all queries, exact = IndexFlatIP.

Threads: faiss's OpenMP default (all cores) unless `--threads`. Goal, per mode: an approximate setting with
recall@100 >= 0.95 reaching at least 10x the exact search's QPS. Prints a table and rewrites its own section of
docs/benchmarks.md (between its marker comments) unless `--no-doc`.

    .venv/bin/python -m scripts.bench.index                                          # 1M x 64, the documented run
    .venv/bin/python -m scripts.bench.index --items 50000 --queries 1000 --no-doc    # quick look
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from scripts.bench.common import clustered, command, load_text, logger, machine, machine_text, now, unit_rows
from scripts.bench.doc import DOC, display, update_doc
from training.index.build import build_index
from training.index.config import IndexConfig
from training.index.faiss_index import ItemIndex

K = 100
RECALL_GOAL, SPEEDUP_GOAL = 0.95, 10.0


@dataclass
class Row:
    """One index setting's figures."""

    index: str
    setting: str
    build_s: float
    recall: float = math.nan
    batch_qps: float = math.nan
    single_qps: float = math.nan
    single_n: int = 0


log = logger("bench_index")


def recall_at_k(approx: np.ndarray, exact: np.ndarray, n_items: int) -> float:
    """Mean over rows of |approx ∩ exact| / k; ids are positions (padding -1 never counts)."""
    rows = np.arange(len(exact), dtype=np.int64)[:, None] * n_items
    truth = np.sort((rows + exact).ravel())
    keys = rows + approx
    at = np.minimum(np.searchsorted(truth, keys), truth.size - 1)
    return float(((truth[at] == keys) & (approx >= 0)).sum() / exact.size)


def measure(item: ItemIndex, row: Row, queries: np.ndarray, exact: np.ndarray | None, args: argparse.Namespace
            ) -> np.ndarray:
    """Batch QPS, one-at-a-time QPS (time-bounded) and recall@100 of `item`; returns the batch ids."""
    item.search(queries[:8], K)  # warm-up
    t0 = time.perf_counter()
    ids, _ = item.search(queries, K)
    row.batch_qps = len(queries) / (time.perf_counter() - t0)
    budget, done = args.single_seconds, 0
    t0 = time.perf_counter()
    for i in range(min(args.single, len(queries))):
        item.search(queries[i:i + 1], K)
        done += 1
        if time.perf_counter() - t0 > budget:
            break
    row.single_qps, row.single_n = done / (time.perf_counter() - t0), done
    row.recall = 1.0 if exact is None else recall_at_k(ids, exact, item.n_items)
    log(f"{row.index} {row.setting}: recall@{K} {row.recall:.4f}, batch {row.batch_qps:,.0f} q/s, "
        f"one at a time {row.single_qps:,.0f} q/s ({done} queries)")
    return ids


def variant(item: ItemIndex, **knobs: Any) -> ItemIndex:
    """The same faiss index searched with other query-time knobs (nprobe / ef_search travel with each call)."""
    return ItemIndex(item.index, item.item_ids, item.build_params | knobs, item.recall, item.timings)


def build(kind: str, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, args: argparse.Namespace,
          **params: Any) -> tuple[ItemIndex, float]:
    cfg = IndexConfig(type=kind, threads=args.threads, recall_floor=1e-6, recall_queries=min(1000, len(queries)),
                      **params)
    log(f"building {kind} {params} over {len(vectors):,} x {vectors.shape[1]}")
    item = build_index(vectors, ids, cfg, queries, seed=args.seed)
    return item, item.timings["train"] + item.timings["add"]


def index_machine() -> dict[str, Any]:
    m = machine()
    m["versions"] = {"faiss": faiss.__version__, "numpy": np.__version__}
    return m | {"faiss_threads": faiss.omp_get_max_threads()}


def goals(rows: list[Row]) -> list[str]:
    exact = rows[0]
    lines = []
    for mode, attr in (("batch", "batch_qps"), ("one at a time", "single_qps")):
        ok = [r for r in rows[1:] if r.recall >= RECALL_GOAL]
        base = getattr(exact, attr)
        if not ok:
            lines.append(f"Goal ({mode}): at least {SPEEDUP_GOAL:.0f}x the exact search's QPS at recall@{K} >= "
                         f"{RECALL_GOAL}: **NOT met** (no approximate setting reaches recall@{K} {RECALL_GOAL})")
            continue
        best = max(ok, key=lambda r: getattr(r, attr))
        speed = getattr(best, attr) / base
        verdict = "met" if speed >= SPEEDUP_GOAL else "NOT met"
        lines.append(f"Goal ({mode}): at least {SPEEDUP_GOAL:.0f}x the exact search's QPS at recall@{K} >= "
                     f"{RECALL_GOAL}: **{verdict}**; fastest setting meeting the recall: {best.index} "
                     f"{best.setting}, {getattr(best, attr):,.0f} q/s = {speed:.1f}x exact ({base:,.0f} q/s), "
                     f"recall@{K} {best.recall:.4f}")
    return lines


def table(rows: list[Row]) -> list[str]:
    exact = rows[0]
    out = [f"| index | setting | build s | recall@{K} | batch q/s | batch vs exact | one-at-a-time q/s | "
           "one-at-a-time vs exact | one-at-a-time queries |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r.index} | {r.setting} | {r.build_s:.1f} | {r.recall:.4f} | {r.batch_qps:,.0f} | "
                   f"{r.batch_qps / exact.batch_qps:.1f}x | {r.single_qps:,.0f} | "
                   f"{r.single_qps / exact.single_qps:.1f}x | {r.single_n:,} |")
    return out


def render(rows: list[Row], ctx: dict[str, Any]) -> str:
    m, a = ctx["machine"], ctx["args"]
    lines = [
        "## FAISS candidate index (scripts.bench.index)", "",
        "Exact inner-product search (IndexFlatIP) against approximate indexes, each built by "
        "`training.index.build.build_index` and searched through `ItemIndex.search` (faiss plus id mapping), "
        "top-100.",
        "", f"- Date: {ctx['date']}",
        f"- Machine: {machine_text(m)}; faiss threads (omp_get_max_threads): {m['faiss_threads']}; {load_text(m)}",
        f"- Command: `{ctx['command']}`",
        f"- Data: {a.items:,} item vectors x {a.dim} dims, unit length, around {ctx['clusters']:,} random unit "
        f"centres (noise norm about {a.spread}); {a.queries:,} queries drawn the same way (perturbed centres); "
        f"seed {a.seed}",
        f"- Batch: all {a.queries:,} queries in one call. One at a time: single-query calls over the first "
        f"{min(a.single, a.queries):,} queries, stopped after {a.single_seconds:g} s. Build s: train + add "
        f"(the recall guard's own check is not counted). Recall@{K} against the exact top-{K} over all queries.",
        "", *table(rows), "", *[f"{g}  " for g in goals(rows)], ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--clusters", type=int, default=None, help="cluster centres; default items // 1000 (>= 16)")
    p.add_argument("--spread", type=float, default=1.0, help="noise norm around a centre (the centre has norm 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="faiss threads; default all cores")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists; default about 4*sqrt(items)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef-search", type=int, nargs="+", default=[100, 128, 256, 512])
    p.add_argument("--pq", action="store_true", help="also IVF-PQ (pq_m = dim // 4, 8 bits) at each nprobe")
    p.add_argument("--single", type=int, default=1000, help="queries searched one at a time")
    p.add_argument("--single-seconds", type=float, default=20.0, help="time bound of each one-at-a-time loop")
    p.add_argument("--doc", type=Path, default=DOC)
    p.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    for name in ("items", "dim", "queries", "single"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = index_machine()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    clusters = args.clusters or max(16, args.items // 1000)
    rng = np.random.default_rng(args.seed)
    centres = unit_rows(rng.standard_normal((clusters, args.dim), dtype=np.float32))
    vectors = clustered(args.items, centres, args.spread, rng)
    queries = clustered(args.queries, centres, args.spread, rng)
    ids = np.arange(args.items, dtype=np.int64)  # raw id = position, so results compare with exact positions
    log(f"data: {args.items:,} items, {args.queries:,} queries, dim {args.dim}, {clusters} clusters; "
        f"faiss threads {faiss.omp_get_max_threads()}")

    rows: list[Row] = []
    flat, secs = build("flat", vectors, ids, queries, args)
    rows.append(Row("exact (IndexFlatIP)", "-", secs))
    exact = measure(flat, rows[-1], queries, None, args)
    del flat
    kinds = [("ivf_flat", "IVF-Flat")] + ([("ivf_pq", "IVF-PQ")] if args.pq else [])
    for kind, label in kinds:
        extra = {"nlist": args.nlist} if args.nlist else {}
        item, secs = build(kind, vectors, ids, queries, args, **extra)
        nlist = item.build_params["nlist"]
        pq = f", pq_m {item.build_params['pq_m']} x 8 bits" if kind == "ivf_pq" else ""
        for nprobe in args.nprobe:
            rows.append(Row(label, f"nlist {nlist}{pq}, nprobe {min(nprobe, nlist)}", secs))
            measure(variant(item, nprobe=min(nprobe, nlist)), rows[-1], queries, exact, args)
        del item
    item, secs = build("hnsw", vectors, ids, queries, args, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    for ef in args.ef_search:
        rows.append(Row("HNSW", f"M {args.hnsw_m}, efConstruction {args.ef_construction}, efSearch {ef}", secs))
        measure(variant(item, ef_search=ef), rows[-1], queries, exact, args)

    ctx = {"machine": start, "args": args, "clusters": clusters, "date": now(),
           "command": command("scripts.bench.index", argv)}
    section = render(rows, ctx)
    print(section)
    if not args.no_doc:
        update_doc(args.doc, "bench_index", section)
        log(f"wrote the bench_index section of {display(args.doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
