"""Reliability figures: the service against slow and hostile clients, and training against kill -9.

Runs the reliability tests themselves (so the documented figures are what `make test` asserts) with
RECFORGE_RELIABILITY_OUT set, and renders what they measured:

- tests/serving/test_hardening.py: half-open connections held during normal traffic (p50/p99 before and during,
  how soon the edge closed them), the Schemathesis run over the OpenAPI schema (requests, statuses, 5xx), and the
  sockets every process of `serve` binds;
- tests/training (the kill test): a training job killed with SIGKILL at a random step, then resumed: steps lost
  and the final test AUC against an uninterrupted run.

    .venv/bin/python -m scripts.bench.reliability                 # writes its section of docs/benchmarks.md
    .venv/bin/python -m scripts.bench.reliability --no-doc --fuzz-examples 50

Run it alone on the machine (it starts Ray and Serve, and trains).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.bench.common import REPO, command, load_text, logger, machine, machine_text, now
from scripts.bench.doc import emit

NAME = "bench_reliability"
TESTS = ["tests/serving/test_hardening.py::test_half_open_connections_neither_block_nor_slow_normal_requests",
         "tests/serving/test_hardening.py::test_no_generated_request_gets_a_5xx",
         "tests/serving/test_hardening.py::test_everything_started_listens_on_loopback_only",
         "tests/training/test_train.py::test_a_job_killed_at_a_random_step_resumes_with_at_most_n_steps_lost"]
log = logger(NAME)


def run_tests(out: Path, fuzz_examples: int) -> int:
    env = {**os.environ, "RECFORGE_RELIABILITY_OUT": str(out), "RECFORGE_FUZZ_EXAMPLES": str(fuzz_examples)}
    present = [t for t in TESTS if _exists(t)]
    log(f"running {len(present)} tests: {', '.join(t.split('::')[1] for t in present)}")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *present], cwd=REPO,
                          env=env)
    return done.returncode


def _exists(test: str) -> bool:
    path, name = test.split("::")
    return f"def {name}(" in (REPO / path).read_text()


def _read(out: Path, name: str) -> dict[str, Any] | None:
    f = out / f"{name}.json"
    return json.loads(f.read_text()) if f.is_file() else None


def render(out: Path, ctx: dict[str, Any]) -> str:
    lines = ["## Reliability (scripts.bench.reliability)", "",
             f"- Command: `{ctx['command']}` ({ctx['when']}); the figures are the reliability tests' own "
             f"measurements (each also asserts its bar in `make test`)",
             f"- Machine: {machine_text(ctx['machine'])}; {load_text(ctx['machine'])}; client and server on the "
             f"same machine", ""]
    slow = _read(out, "slow_clients")
    if slow:
        lines += ["### Slow clients", "",
                  f"{slow['half_open_connections']} connections each send the headers of a `POST /predict` "
                  f"declaring a 4,096-byte body and the first 28 bytes of it, then nothing; while they are held, "
                  f"{slow['requests_each']} sequential `/predict` requests (20 items) run, as before the flood "
                  f"(`serving.limits.header_timeout_s` {slow['header_timeout_s']} s in the test). Peer: Ray "
                  f"Serve's own HAProxy configuration (`timeout client 3600s`, no request timeout), where about "
                  f"128 such connections (2 replicas x 64 ongoing requests) blocked every other request and with "
                  f"140 a normal request timed out after 20 s.", "",
                  "| | p50 ms | p99 ms |", "|---|---|---|",
                  f"| before the flood | {slow['p50_before_ms']:.2f} | {slow['p99_before_ms']:.2f} |",
                  f"| during the flood | {slow['p50_during_ms']:.2f} | {slow['p99_during_ms']:.2f} |", "",
                  f"All {slow['closed_by_edge']} half-open connections were closed by the edge (408) "
                  f"{slow['all_closed_after_s']:.2f} s after they were opened; none reached a replica (HAProxy "
                  f"buffers a request's body before forwarding it).", ""]
    fuzz = _read(out, "fuzz")
    if fuzz:
        statuses = ", ".join(f"{k}: {v:,}" for k, v in fuzz["statuses"].items())
        lines += ["### Property-based API run", "",
                  f"Schemathesis over the app's OpenAPI schema, valid and invalid requests for every operation "
                  f"(up to {fuzz['examples_per_operation_and_mode']} per operation and mode): "
                  f"**{fuzz['requests']:,} requests, {fuzz['server_errors']} 5xx** (goal 0) in "
                  f"{fuzz['seconds']:.1f} s; statuses {statuses}.", ""]
    listeners = _read(out, "listeners")
    if listeners:
        by_process: dict[str, Counter[str]] = {}
        for s in listeners["sockets"]:
            by_process.setdefault(s["process"], Counter())[f"{s['proto']} {s['address']}"] += 1
        lines += ["### Listening sockets during serve", "",
                  "Every socket bound by the serving process and its descendants (local Ray, its agents and "
                  "workers, Serve replicas, HAProxy), from the test that asserts none is on a non-loopback "
                  "address:", "", "| process | sockets (protocol, address: count) |", "|---|---|"]
        for proc, c in sorted(by_process.items()):
            lines.append(f"| {proc} | {', '.join(f'{k}: {n}' for k, n in sorted(c.items()))} |")
        lines.append("")
    kill = _read(out, "kill_resume")
    if kill:
        lines += ["### Training killed with SIGKILL, then resumed", "",
                  "| | value |", "|---|---|"]
        lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in kill.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_reliability", help="where the tests write their figures")
    ap.add_argument("--fuzz-examples", type=int, default=300, help="Schemathesis examples per operation and mode")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("*.json"):
        f.unlink()
    ctx = {"command": command("scripts.bench.reliability", argv), "when": now(),
           "machine": machine("ray", "schemathesis", "torch")}
    rc = run_tests(out, args.fuzz_examples)
    if rc != 0:
        log(f"the tests failed (exit {rc}): figures not written to the doc")
        return rc
    emit(NAME, render(out, ctx), write=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
