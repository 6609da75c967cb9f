"""The prepare engines: `local` (in this process) and `ray` write the same spec and the same prepared shards,
`auto` picks by the event rows, and the local engine neither imports nor starts Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from feature_store.config import PrepareConfig
from feature_store.prepare import blocks, choose_engine, prepare
from feature_store.readers import read_source
from feature_store.spec_fit import QUANTILE_SAMPLE
from feature_store.split import SPLITS
from recforge.config import load
from tests.conftest import ROOT

SCENARIO = [
    "features.categorical.0.min_freq=5",
    "features.categorical.1.min_freq=5",
    "source.n_users=1500",
    "source.n_items=400",
    "source.n_impressions=40000",
    "source.n_categories=8",
    # price (never null) bucketized: train has about 32,000 rows, a first block above QUANTILE_SAMPLE (its price
    # values are sampled, seeded by the block's size) and a second, smaller one
    "features.numeric.0.transform=bucketize",
    "features.numeric.0.buckets=16",
    "prepare.batch_rows=25000",
]


def _spec_without_time(prepared: Path) -> dict[str, object]:
    doc = json.loads((prepared / "spec" / "feature_spec.json").read_text())
    doc.pop("created_at")
    return doc


@pytest.mark.slow
def test_local_and_ray_engines_write_the_same_spec_and_shards(tmp_path: Path, ray_local: object) -> None:
    first = load(ROOT / "configs" / "demo.yaml", [*SCENARIO, f"output_dir={tmp_path / 'local'}"])
    raw = read_source(first.source, tmp_path / "raw")
    runs = {}
    for engine in ("local", "ray"):
        cfg = load(ROOT / "configs" / "demo.yaml",
                   [*SCENARIO, f"output_dir={tmp_path / engine}", f"prepare.engine={engine}"])
        runs[engine] = prepare(cfg, raw=raw).summary
    local, ray = runs["local"], runs["ray"]
    assert (local["engine"], ray["engine"]) == ("local", "ray")
    assert local["engine_reason"] == "prepare.engine is local" and "ray_start" not in local["stage_seconds"]
    assert "ray_start" in ray["stage_seconds"]

    train_blocks = blocks(local["split"]["rows"]["train"], first.prepare.batch_rows)
    assert len(train_blocks) > 1 and train_blocks[0][1] > QUANTILE_SAMPLE, "the scenario must sample quantiles"
    assert local["spec_fingerprint"] == ray["spec_fingerprint"]
    spec_local, spec_ray = _spec_without_time(tmp_path / "local" / "prepared"), _spec_without_time(
        tmp_path / "ray" / "prepared")
    assert spec_local == spec_ray
    price = next(f for f in spec_local["features"] if f["name"] == "price")  # type: ignore[attr-defined]
    assert price["transform"] == "bucketize" and len(price["boundaries"]) == 15
    assert local["split"] == ray["split"] and local["label_mean"] == ray["label_mean"]

    for split in SPLITS:
        names = sorted(p.name for p in (tmp_path / "local" / "prepared" / split).glob("*.parquet"))
        assert names == sorted(p.name for p in (tmp_path / "ray" / "prepared" / split).glob("*.parquet"))
        assert names, f"no shards written for {split}"
        for name in names:
            a = pq.read_table(tmp_path / "local" / "prepared" / split / name)
            b = pq.read_table(tmp_path / "ray" / "prepared" / split / name)
            assert a.num_rows > 0 and a.equals(b), f"{split}/{name} differs between the engines"


def test_auto_prepares_small_data_locally_and_large_data_or_a_cluster_on_ray() -> None:
    auto = PrepareConfig(local_max_rows=10_000)
    small, edge = choose_engine(auto, 9_999), choose_engine(auto, 10_000)
    assert small.engine == "local"
    assert small.reason == "auto chose local: 9,999 event rows < prepare.local_max_rows 10,000"
    assert edge.engine == "ray" and edge.reason.startswith("auto chose ray: 10,000 event rows >=")
    cluster = choose_engine(PrepareConfig(local_max_rows=10_000, ray_address="auto"), 10)
    assert cluster.engine == "ray" and "prepare.ray_address" in cluster.reason
    assert choose_engine(PrepareConfig(engine="local"), 10**9).engine == "local"
    assert choose_engine(PrepareConfig(engine="ray"), 10).engine == "ray"
    assert choose_engine(PrepareConfig(local_max_rows=0), 0).engine == "ray"


LOCAL_RUN = """
import json, sys
from recforge.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "ray": "ray" in sys.modules, "torch": "torch" in sys.modules}))
"""


@pytest.mark.slow
def test_auto_on_small_data_neither_imports_ray_nor_torch_and_says_why(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["prepare", "--config", "configs/demo.yaml", "--output-dir", str(out), "--set",
            "source.n_impressions=5000", "--set", "source.n_users=300", "--set", "source.n_items=100"]
    res = subprocess.run([sys.executable, "-c", LOCAL_RUN, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    *printed, status = res.stdout.strip().splitlines()
    assert json.loads(status) == {"code": 0, "ray": False, "torch": False}
    assert any(line.strip().startswith("engine: local (auto chose local: 5,000 event rows < "
                                       "prepare.local_max_rows") for line in printed), res.stdout
    summary = json.loads((out / "prepared" / "summary.json").read_text())
    assert summary["engine"] == "local" and summary["events_kept"] == 5000
    assert sum(summary["split"]["rows"].values()) == 5000
