"""What every benchmark shares: the machine it ran on, log lines, the command it quotes, quiet libraries."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import shlex
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def logger(name: str) -> Callable[[str], None]:
    """A `log(msg)` that writes `[name HH:MM:SS] msg` to stderr (stdout stays for the report)."""

    def log(msg: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    return log


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() where that is unreadable)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def version(dist: str) -> str:
    """The installed version of the distribution `dist`, or "absent"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def load1() -> float:
    """The 1-minute load average now."""
    return os.getloadavg()[0]


def machine(*packages: str) -> dict[str, Any]:
    """CPU model, cores (all and usable), RAM, OS, Python, the 1-minute load average now (call it at the start of a
    run: a load above the usable cores means other jobs competed for them) and the versions of `packages`."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable": len(os.sched_getaffinity(0)), "ram_gib": ram,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "load": load1(), "versions": {p: version(p) for p in packages}}


def machine_text(m: dict[str, Any]) -> str:
    """`m` (from `machine`) as a report's Machine line: CPU, cores, RAM, OS, Python and package versions."""
    versions = "".join(f", {k} {v}" for k, v in m["versions"].items())
    return (f"{m['cpu']}, {m['cores']} cores ({m['usable']} usable), {m['ram_gib']:.1f} GiB RAM, {m['os']}; "
            f"Python {m['python']}{versions}")


def load_text(m: dict[str, Any]) -> str:
    """The load at the start of a run, for a report's Machine line."""
    return f"load average (1 min) at start {m['load']:.2f} on {m['usable']} usable cores"


def command(module: str, argv: Sequence[str] | None) -> str:
    """The command line a report quotes: `python -m <module> <args>` (this process's arguments by default)."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def quiet() -> None:
    """Silence warnings and the chatty loggers of Lightning, MLflow and Ray Train; no progress bars."""
    os.environ["RECFORGE_PROGRESS"] = "0"
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning", "lightning.pytorch",
                 "lightning_fabric", "lightning_fabric.utilities.rank_zero", "mlflow", "mlflow.store.db.utils",
                 "alembic", "recforge"):
        logging.getLogger(name).setLevel(logging.ERROR)


class LoadMonitor:
    """Samples the 1-minute load average every few seconds while a part runs: the machine is shared."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(load1())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> LoadMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples or [load1()]
        return {"mean": round(float(np.mean(s)), 2), "max": round(float(np.max(s)), 2)}


def unit_rows(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def clustered(n: int, centres: np.ndarray, spread: float, rng: np.random.Generator, chunk: int = 200_000
              ) -> np.ndarray:
    """n unit vectors, each normalise(random centre + Gaussian noise of norm about `spread`), built in chunks: the
    data of the search benchmarks (approximate search has structure to exploit, like trained embeddings)."""
    dim = centres.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    sigma = np.float32(spread / math.sqrt(dim))
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        block = centres[rng.integers(0, len(centres), m)] + sigma * rng.standard_normal((m, dim), dtype=np.float32)
        out[start:start + m] = unit_rows(block)
    return out
