"""Cluster figures: RecForge on a two-node Ray cluster started with `ray start`, against the single-process run.

Runs tests/e2e/test_cluster.py itself (so the documented figures are what `make test` asserts) with
RECFORGE_RELIABILITY_OUT set, and renders what it measured: where the prepare tasks, the Ray Train ranks and the
serving replicas ran, the wall time of each stage on the cluster and in one process, and how equal the results are.

    .venv/bin/python -m scripts.bench.cluster            # writes its section of docs/benchmarks.md
    .venv/bin/python -m scripts.bench.cluster --no-doc

Run it alone on the machine (it starts two Ray nodes, trains and serves).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.bench.common import REPO, command, load_text, logger, machine, machine_text, now
from scripts.bench.doc import emit

NAME = "bench_cluster"
log = logger(NAME)


def render(fig: dict[str, Any], ctx: dict[str, Any]) -> str:
    s = fig["seconds"]

    def spread(d: dict[str, int]) -> str:
        return ", ".join(f"node {i + 1}: {n}" for i, (_, n) in enumerate(sorted(d.items())))

    rows = fig["rows"]
    lines = ["## Cluster: a two-node Ray cluster against one process (scripts.bench.cluster)", "",
             f"- Date: {ctx['when']}",
             f"- Machine: {machine_text(ctx['machine'])}; {load_text(ctx['machine'])}",
             f"- Command: `{ctx['command']}` (runs tests/e2e/test_cluster.py)",
             f"- Cluster: `ray start --head` and `ray start --address` as two processes on this machine, one CPU each "
             f"(token authentication); data: `configs/demo.yaml` with 20,000 impressions (train {rows['train']:,}, "
             f"valid {rows['valid']:,}, test {rows['test']:,} rows)", "",
             "| stage | on the cluster | in one process | where the cluster ran it |",
             "|---|---:|---:|---|",
             f"| `recforge prepare` | {s['prepare_cluster']:.1f} s (Ray engine) | {s['prepare_local']:.1f} s (local "
             f"engine) | tasks per node: {spread(fig['prepare_tasks'])} |",
             f"| `recforge train ctr` (DCNv2, 1 epoch, fp32) | {s['train_cluster']:.1f} s (2 Ray Train workers, batch "
             f"256 each) | {s['train_local']:.1f} s (batch 512) | ranks per node: {spread(fig['train_ranks'])} |",
             f"| `recforge serve --detach` until healthy | {s['serve_start_cluster']:.1f} s | | ingress replicas per "
             f"node: {spread(fig['replicas'])} |", "",
             f"Same results: every prepared column of every split equal to the local engine's; test AUC "
             f"{fig['auc']['cluster']:.6f} on the cluster, {fig['auc']['local']:.6f} in one process; largest "
             f"difference of any weight {fig['max_weight_diff']:.2e}; /predict from the cluster's replicas equal to "
             f"the offline `Ranker.score` within 1e-6.", "",
             "On one 2-core machine a cluster can only cost: each stage pays Ray's start-up and scheduling, and the "
             "cluster times are whole `recforge` processes (interpreter start included) while the in-process times "
             "are the stage's function call in the test process. What a cluster buys is room: more nodes, more CPUs "
             "and GPUs."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_cluster", help="where the test writes its figures")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.json").unlink(missing_ok=True)
    ctx = {"command": command("scripts.bench.cluster", argv), "when": now(), "machine": machine("ray", "torch")}
    # Ray Train's own worker-check interval (the tests poll faster, tests/conftest.py): the times users get
    env = {**os.environ, "RECFORGE_RELIABILITY_OUT": str(out), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0"}
    rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         "tests/e2e/test_cluster.py"], cwd=REPO, env=env).returncode
    if rc != 0:
        log(f"the cluster test failed (exit {rc}): figures not written to the doc")
        return rc
    emit(NAME, render(json.loads(Path(out / "cluster.json").read_text()), ctx), write=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
