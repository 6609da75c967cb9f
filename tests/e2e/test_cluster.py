"""RecForge against a Ray cluster started apart from it: a head node and a second node, each a `ray start` process
with one CPU of its own (tests/ray_cluster.py). `recforge prepare --ray-address`, `recforge train ctr --ray-workers 2
--ray-address` and `recforge serve --ray-address` run as users run them (subprocesses with the cluster's token in
their environment, nothing else).

Proves, for each stage: the work ran on both nodes (RecForge's own record of where its tasks and workers ran, and
Ray's state API through the dashboard), and the result equals the single-process run of the same job:
- prepare: every prepared split, column by column, equals the in-process (`prepare.engine: local`) output;
- train: two Ray Train workers with batch B each equal one process with batch 2B (the ranks' shares of each
  permutation are exactly the rows of the single process's batches; DDP averages the two halves' gradients):
  test metrics and every weight agree to float32 rounding;
- serve: /predict from replicas on both nodes equals the offline `Ranker.score` of the same rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store.raycluster import free_port
from recforge.config import RecForgeConfig, load
from tests.conftest import ROOT, record_figures
from tests.ray_cluster import RayCluster, ray_cluster

pytestmark = pytest.mark.slow

DEMO = ROOT / "configs" / "demo.yaml"
BATCH = 256  # per Ray Train worker; the single process takes 2 x BATCH
SMALL = [
    "source.n_users=400", "source.n_items=150", "source.n_impressions=20000", "source.n_categories=6",
    "source.days=10", "prepare.batch_rows=4000",
    "features.categorical.0.min_freq=5", "features.categorical.1.min_freq=5",
    "train.max_epochs=1", "train.runtime.num_threads=1", "train.runtime.precision=32",
    "retrieval.max_epochs=1", "retrieval.batch_size=256", "retrieval.runtime.num_threads=1", "retrieval.baselines=[]",
    "retrieval.query_sample=50", "retrieval.refit=false",
    "serving.candidates=40", "serving.max_items=50", "serving.proxy_location=head_only",
    "serving.ingress_replicas=2", "serving.cpus_per_replica=0.5", "serving.poll_seconds=30",
    "experiments.definitions={}",
]


@dataclass
class Runs:
    cluster: RayCluster
    local_dir: Path
    cluster_dir: Path
    prepare: dict[str, Any]
    train: dict[str, Any]
    local_train: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    predict: dict[str, Any] = field(default_factory=dict)
    replicas: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    train_workers: list[dict[str, Any]] = field(default_factory=list)


def recforge(cluster: RayCluster, *args: str, timeout: float = 600) -> dict[str, Any]:
    """`recforge ARGS --json` as its own process with the cluster's environment; its JSON result."""
    out = subprocess.run([sys.executable, "-m", "recforge.cli", *args, "--json"], cwd=ROOT, env=cluster.env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"recforge {' '.join(args)} exited {out.returncode}:\n{out.stderr[-4000:]}"
    return dict(json.loads(out.stdout))


def config(out: Path, *extra: str) -> RecForgeConfig:
    return load(DEMO, [*SMALL, f"output_dir={out}", *extra])


def settings(out: Path, *extra: str) -> list[str]:
    return ["--config", str(DEMO), *[a for s in [*SMALL, f"output_dir={out}", *extra] for a in ("--set", s)]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    from feature_store.prepare import prepare
    from training.ranking.run import train_ctr

    base = tmp_path_factory.mktemp("cluster")
    local_dir, cluster_dir = base / "local", base / "cluster"
    os.environ["RECFORGE_PROGRESS"] = "0"
    seconds: dict[str, float] = {}
    with ray_cluster(workers=1, cpus_per_node=1) as cluster:
        t0 = time.perf_counter()
        prepared = recforge(cluster, "prepare", *settings(cluster_dir), "--ray-address", cluster.address)
        seconds["prepare_cluster"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        trained = recforge(cluster, "train", "ctr", *settings(cluster_dir, f"train.batch_size={BATCH}"),
                           "--ray-workers", "2", "--ray-address", cluster.address)
        seconds["train_cluster"] = time.perf_counter() - t0
        tasks = cluster.state("tasks")
        workers = cluster.state("actors", state="ALIVE") + cluster.state("actors", state="DEAD")

        t0 = time.perf_counter()
        local_cfg = config(local_dir, "prepare.engine=local")
        prepare(local_cfg)
        seconds["prepare_local"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        local = train_ctr(local_dir, local_cfg.name, config(local_dir, f"train.batch_size={2 * BATCH}").train,
                          config_doc=local_cfg.model_dump(mode="json")).to_dict()
        seconds["train_local"] = time.perf_counter() - t0

        runs = Runs(cluster, local_dir, cluster_dir, prepared, trained, local, seconds, tasks=tasks,
                    train_workers=workers)
        _serve_on_cluster(runs)
        record_figures("cluster", _figures(runs))
        yield runs


def _figures(runs: Runs) -> dict[str, Any]:
    """What scripts.bench.cluster puts in docs/benchmarks.md: where the work ran, the times, how equal."""
    import torch

    weights = [torch.load(d / "train" / "dcnv2" / "bundle" / "state_dict.pt", weights_only=True)
               for d in (runs.cluster_dir, runs.local_dir)]
    replicas: dict[str, int] = {}
    for r in runs.replicas:
        replicas[r["node_id"]] = replicas.get(r["node_id"], 0) + 1
    return {"seconds": runs.seconds, "nodes": len(runs.cluster.nodes), "prepare_tasks": runs.prepare["ray_nodes"],
            "train_ranks": runs.train["distributed"]["nodes"], "replicas": replicas,
            "rows": runs.prepare["split"]["rows"],
            "auc": {"cluster": runs.train["test"]["auc"], "local": runs.local_train["test"]["auc"]},
            "max_weight_diff": max(float((weights[0][k].float() - weights[1][k].float()).abs().max())
                                   for k in weights[0])}


def _serve_on_cluster(runs: Runs) -> None:
    """Materialize, train the retriever and its index, register and promote both, then serve them from the
    cluster and ask /predict; the replicas' nodes come from Ray's state API."""
    from recforge import pipeline
    from tests.serving.test_app import call, known_user, store_rows

    cfg = config(runs.cluster_dir)
    pipeline.materialize(cfg)
    pipeline.train_retrieval(cfg)
    pipeline.build_index(cfg)
    pipeline.register_and_promote(cfg)
    port = free_port()
    t0 = time.perf_counter()
    recforge(runs.cluster, "serve", *settings(runs.cluster_dir), "--ray-address", runs.cluster.address,
             "--port", str(port), "--detach")
    runs.seconds["serve_start_cluster"] = time.perf_counter() - t0
    try:
        url = f"http://127.0.0.1:{port}"
        user, items = known_user(cfg), [1, 2, 3, 5, 8, 13, 21, 34]
        context = {"channel": "app", "device": "ios", "hour": 20, "position": 1}
        answers = [call(url, "/predict", {"user_id": user, "item_ids": items, "context": context})
                   for _ in range(8)]
        runs.predict = {"answers": answers, "rows": store_rows(cfg, user, items, context), "items": items}
        runs.replicas = [a for a in runs.cluster.state("actors", state="ALIVE")
                         if str(a.get("class_name", "")).startswith("ServeReplica")]
    finally:
        subprocess.run([sys.executable, "-m", "recforge.cli", "serve", "--stop", "--port", str(port)], cwd=ROOT,
                       env=runs.cluster.env, capture_output=True, timeout=120)


def test_prepare_on_the_cluster_runs_tasks_on_both_nodes_and_equals_the_in_process_output(runs: Runs) -> None:
    nodes = runs.prepare["ray_nodes"]
    assert runs.prepare["engine"] == "ray" and set(nodes) == set(runs.cluster.nodes), nodes
    mapped = [t for t in runs.tasks if "MapBatches" in str(t.get("name", ""))]
    assert {t["node_id"] for t in mapped} == set(runs.cluster.nodes), "Ray's own task table shows one node only"
    for split in ("train", "valid", "test"):
        ours = pq.read_table(runs.cluster_dir / "prepared" / split)
        theirs = pq.read_table(runs.local_dir / "prepared" / split)
        assert ours.num_rows == theirs.num_rows > 0
        assert ours.schema.names == theirs.schema.names
        for name in ours.schema.names:
            assert ours.column(name).equals(theirs.column(name)), f"{split}.{name} differs from the local run"


def test_training_on_the_cluster_uses_a_worker_per_node_and_equals_one_process_with_the_double_batch(
        runs: Runs) -> None:
    import torch

    dist = runs.train["distributed"]
    assert dist["workers"] == 2 and dist["nodes"] == dict.fromkeys(runs.cluster.nodes, 1), dist
    actors = [a for a in runs.train_workers if "RayTrainWorker" in str(a.get("class_name", ""))]
    assert {a["node_id"] for a in actors} == set(runs.cluster.nodes)
    assert runs.train["global_steps"] == runs.local_train["global_steps"] > 0
    for metric in ("auc", "logloss"):
        assert runs.train["test"][metric] == pytest.approx(runs.local_train["test"][metric], abs=2e-5), metric
    ours = torch.load(runs.cluster_dir / "train" / "dcnv2" / "bundle" / "state_dict.pt", weights_only=True)
    theirs = torch.load(runs.local_dir / "train" / "dcnv2" / "bundle" / "state_dict.pt", weights_only=True)
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-3, atol=2e-5, msg=key)


def test_serving_from_the_cluster_spreads_replicas_over_both_nodes_and_answers_as_offline_scoring(
        runs: Runs) -> None:
    from training.ranking.bundle import load_bundle

    assert {r["node_id"] for r in runs.replicas if "Ingress" in r["class_name"]} == set(runs.cluster.nodes), \
        runs.replicas
    ranker = load_bundle(runs.cluster_dir / "train" / "dcnv2" / "bundle")
    expected = ranker.score(pa.Table.from_pylist(runs.predict["rows"]))
    assert np.ptp(expected) > 1e-4  # the items really differ: not a constant answer
    for status, body, _ in runs.predict["answers"]:
        assert status == 200, body
        assert [p["status"] for p in body["predictions"]] == ["ok"] * len(runs.predict["items"])
        np.testing.assert_allclose([p["score"] for p in body["predictions"]], expected, rtol=0, atol=1e-6)
