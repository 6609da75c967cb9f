"""Shared test fixtures: paths to ../shared/datasets (skipped where absent) and a session-wide local Ray."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
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
