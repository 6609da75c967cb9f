"""Where streamed training's memory goes: the peak RSS per window of training steps, and of each evaluation pass.

Runs `recforge train ctr` in this process on a prepared scenario of `scripts.bench.cost` (the same `--config ...
--set ...` arguments, so the data written by a cost run is reused: `--output-dir runs/bench_cost/n50000000
--rows 50000000`) with one extra Lightning callback that closes a window every `--window` training steps and at the
start and end of each validation and test pass; a thread samples this process's RSS every 10 ms and each window
reports its maximum. The cost curve's single peak says how much; this says in which phase: a training loop whose
windows stay level is flat, whatever the evaluation adds at the end.

    python -m scripts.bench.train_memory --output-dir runs/bench_cost/n20000000 --rows 20000000 [--window 250]

Prints one line per window (steps, seconds, max MiB) and a JSON summary; writes nothing to docs/benchmarks.md
(the cost-curve section quotes its figures with this command).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytorch_lightning as pl

from scripts.bench.common import logger
from scripts.bench.cost import scenario

log = logger("bench_train_memory")
SAMPLE_S = 0.01


class PeakSampler:
    """The maximum RSS of this process since the last `take()`, sampled every 10 ms by a daemon thread."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            rss = self.proc.memory_info().rss
            with self.lock:
                self.peak = max(self.peak, rss)
            time.sleep(SAMPLE_S)

    def take(self) -> int:
        with self.lock:
            peak, self.peak = self.peak, self.proc.memory_info().rss
        return peak


class Windows(pl.Callback):
    """Closes a window every `every` training steps and around each validation and test pass."""

    def __init__(self, sampler: PeakSampler, every: int) -> None:
        self.sampler, self.every, self.t0 = sampler, every, time.perf_counter()
        self.rows: list[dict[str, Any]] = []

    def close(self, phase: str, step: int) -> None:
        row = {"phase": phase, "step": step, "seconds": round(time.perf_counter() - self.t0, 1),
               "max_mib": round(self.sampler.take() / 2**20)}
        self.rows.append(row)
        log(f"{phase:>16} step {step:6d} {row['seconds']:7.1f} s  max {row['max_mib']:6,d} MiB")

    def on_train_batch_end(self, trainer: pl.Trainer, *_: Any) -> None:
        if trainer.global_step % self.every == 0:
            self.close("train", trainer.global_step)

    def on_validation_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        self.close("before valid", trainer.global_step)

    def on_validation_epoch_end(self, trainer: pl.Trainer, *_: Any) -> None:
        self.close("valid pass", trainer.global_step)

    def on_test_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        self.close("between", trainer.global_step)

    def on_test_epoch_end(self, trainer: pl.Trainer, *_: Any) -> None:
        self.close("test pass", trainer.global_step)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output-dir", required=True, help="a cost-curve scenario's folder (prepared already)")
    p.add_argument("--rows", type=int, required=True, help="its size (the scenario's users and items follow)")
    p.add_argument("--model", default="dlrm")
    p.add_argument("--window", type=int, default=250, help="training steps per window")
    args = p.parse_args(argv)
    os.environ.setdefault("RECFORGE_PROGRESS", "0")
    from recforge.cli import main as recforge
    from training.ranking.strategies import local

    sampler = PeakSampler()
    windows = Windows(sampler, args.window)
    build = local.build_trainer

    def with_windows(*a: Any, callbacks: list[pl.Callback] | None = None, **k: Any) -> pl.Trainer:
        return build(*a, callbacks=[*(callbacks or []), windows], **k)

    local.build_trainer = with_windows  # the local strategy's one Trainer, with the windows beside its callbacks
    try:
        code = recforge(["train", "ctr", *scenario(args.rows, Path(args.output_dir), args.model)])
    finally:
        local.build_trainer = build
    windows.close("job end", -1)
    train = [r["max_mib"] for r in windows.rows if r["phase"] == "train"]
    summary = {"rows": args.rows, "exit": code, "train_windows_mib": [min(train), max(train)] if train else None,
               **{r["phase"].replace(" ", "_") + "_mib": r["max_mib"] for r in windows.rows if r["phase"] != "train"}}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
