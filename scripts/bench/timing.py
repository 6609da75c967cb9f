"""Timing rounds: RecForge and its peer measured side by side in one process, contenders interleaved, so a ratio
compares runs that saw the same machine load."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


@dataclass
class Run:
    """One contender's figures over the rounds (samples/s per round; the load average when each started)."""

    name: str
    family: str  # "ours" | "peer" | "lightning"
    model: str
    precision: str = "fp32"  # "fp32" | "bf16" (autocast)
    backend: str = ""  # our embedding backend; "" for the peer
    samples_per_s: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    cores_used: list[float] = field(default_factory=list)  # process CPU seconds / wall seconds while timed
    dense_params: int = 0
    emb_params: int = 0
    final_loss: float | None = None

    def record(self, samples_per_s: float, cores_used: float) -> None:
        self.samples_per_s.append(samples_per_s)
        self.cores_used.append(cores_used)

    @property
    def best_cores(self) -> float:
        """Cores the process kept busy in the fastest round."""
        return self.cores_used[self.samples_per_s.index(self.best)] if self.samples_per_s else float("nan")

    @property
    def per_cpu(self) -> float:
        """Best samples per process CPU-second: steadier than samples/s when other jobs take the cores."""
        return max((s / c for s, c in zip(self.samples_per_s, self.cores_used, strict=True) if c > 0),
                   default=float("nan"))

    @property
    def best(self) -> float:
        return max(self.samples_per_s) if self.samples_per_s else float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.samples_per_s) if self.samples_per_s else float("nan")


def interleave(jobs: Sequence[T], rounds: int, *, reverse_every_other: bool = True) -> Iterator[tuple[int, T]]:
    """(round, job) for every job of every round, in the jobs' order (ours, peer, ours, ...), the order reversed
    every other round unless told otherwise: no contender always runs first or right after the same neighbour."""
    for rnd in range(rounds):
        order = reversed(jobs) if reverse_every_other and rnd % 2 else jobs
        for job in order:
            yield rnd, job


def sync(device: torch.device | None) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a CPU needs no wait)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    """Collect garbage and return the device's cached memory (between contenders)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Timed:
    """`steps` steps after `warmup`: wall and process CPU seconds of the timed steps, the warm-up's wall seconds and
    the mean loss of the timed steps."""

    seconds: float
    cpu_seconds: float
    warmup_seconds: float
    mean_loss: float


def time_steps(step: Callable[[], Tensor], warmup: int, steps: int, device: torch.device | None = None) -> Timed:
    """Time `steps` calls of `step` after `warmup` calls, the device synchronised before and after."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    t1, c1 = time.perf_counter(), time.process_time()
    losses = [step() for _ in range(steps)]
    sync(device)
    t2, c2 = time.perf_counter(), time.process_time()
    return Timed(t2 - t1, c2 - c1, t1 - t0, float(torch.stack(losses).float().mean()))
