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


@contextmanager
def redis_server(workdir: Path, password: str | None = None) -> Iterator[str]:
    """A throw-away redis-server on a free 127.0.0.1 port (no persistence, `requirepass` when `password` is
    given); yields its URL (with the password in it). Skips the test where it cannot start."""
    redis = pytest.importorskip("redis", reason="the redis Python client is not installed")
    from feature_store.raycluster import free_port

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not on PATH (make install puts it there with apt): Redis not tested")
    port = free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "", "--appendonly", "no"]
    if password:
        args += ["--requirepass", password]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 5
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.skip(f"redis-server ({exe}) did not start on 127.0.0.1:{port}: Redis not tested")
            time.sleep(0.05)
    client.close()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
