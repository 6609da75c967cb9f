"""Shared test fixtures: paths to ../shared/datasets (skipped where absent) and a session-wide local Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"

# Ray Train's controller checks on its workers every 2 s by default, so a job ends up to 2 s (plus its shutdown:
# 4.7 s measured on 2 cores) after its last worker returned; the tests' jobs last seconds, so it checks 8 times a
# second here (0.8 s measured). Ray passes the variable from the driver to the controller; a missed check only
# counts after the worker health-check timeout (10 minutes), so a busy machine does not fail a job.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


def dataset(name: str) -> Path:
    """Path of a shared real data set, or skip the test with the reason."""
    path = DATASETS / name
    if not path.exists():
        pytest.skip(f"real data set '{name}' not found at ../shared/datasets/{name} (only in the project's "
                    f"development checkout); this test needs it")
    return path


def record_figures(name: str, figures: dict[str, Any]) -> None:
    """Keep a test's measured figures as <RECFORGE_RELIABILITY_OUT>/<name>.json when that variable is set
    (scripts.bench.reliability runs the reliability tests with it and renders docs/benchmarks.md from them)."""
    out = os.environ.get("RECFORGE_RELIABILITY_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{name}.json").write_text(json.dumps(figures, indent=2))


@pytest.fixture(scope="session")
def ray_local() -> Iterator[object]:
    """One local Ray for the whole test session (2 CPUs), shut down at the end."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from feature_store.raycluster import ensure_ray

    ray = ensure_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()


class RedisProcess:
    """A throw-away redis-server on a 127.0.0.1 port, in `workdir`: `persistent` keeps an append-only file there
    (fsync always), so a `stop` and `start` on the same port keeps the data (a server that went away and came
    back). Skips the test where it cannot start."""

    def __init__(self, workdir: Path, password: str | None = None, persistent: bool = False) -> None:
        pytest.importorskip("redis", reason="the redis Python client is not installed")
        from feature_store.raycluster import free_port

        self.exe = shutil.which("redis-server")
        if self.exe is None:
            pytest.skip("redis-server is not on PATH (make install puts it there with apt): Redis not tested")
        self.workdir, self.password, self.persistent = workdir, password, persistent
        self.port = free_port()
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        import redis

        args = [str(self.exe), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 5
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.skip(f"redis-server ({self.exe}) did not start on 127.0.0.1:{self.port}: Redis not "
                                "tested")
                time.sleep(0.05)
        client.close()
        return self.url

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@contextmanager
def redis_server(workdir: Path, password: str | None = None, persistent: bool = False) -> Iterator[str]:
    """A throw-away redis-server on a free 127.0.0.1 port (no persistence unless asked, `requirepass` when
    `password` is given); yields its URL (with the password in it). Skips the test where it cannot start."""
    server = RedisProcess(workdir, password, persistent)
    try:
        yield server.start()
    finally:
        server.stop()
