"""The app under load while its models change and its replicas die, over real HTTP on 127.0.0.1 (real Ray Serve,
real MLflow registry): moving the alias swaps versions without losing a request and without mixing versions in one
answer; a broken new version keeps the old one serving and shows its error on /models; a killed replica costs at
most the requests it was answering. Every test runs against both topologies: split (killed: the ranker's replica,
one of two, and the retriever's, its only one: no request lost) and fused (killed: one of the two ingress
replicas, which hold the models: its in-flight requests may fail, no later one).

Retries: Ray Serve does not retry a request already sent to a replica that dies. Split: the ingress retries such
model calls itself (serving.app.RETRIES, counted on /models as ingress.retries). A request inside an ingress
replica that dies (either topology) is not retried by the proxy. The HTTP clients here never retry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from recforge.config import RecForgeConfig
from tests.serving.test_app import CONTEXT, Scenario, build_scenario, call, known_user, set_alias, start, store_rows

pytestmark = pytest.mark.slow

ITEMS = [1, 2, 3, 4, 5, 6, 7, 8]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, ray_local: object) -> Scenario:
    return build_scenario(tmp_path_factory.getbasetemp())


TOPOLOGIES = {  # serving.topology -> overrides, and the deployments whose replicas the kill test kills (how many)
    "fused": (["serving.ingress_replicas=2"], [("Ingress", 2)]),
    "split": (["serving.ranker_replicas=2"], [("RankerModel", 2), ("RetrieverModel", 1)]),
}


@pytest.fixture(scope="module", params=sorted(TOPOLOGIES))
def served(scenario: Scenario, request: pytest.FixtureRequest) -> Iterator[tuple[RecForgeConfig, str]]:
    """The app in each topology (every test of this module runs against both)."""
    from serving.server import stop_app

    overrides, _ = TOPOLOGIES[request.param]
    cfg, url = start(scenario, f"serving.topology={request.param}", *overrides, "serving.poll_seconds=0.3")
    yield cfg, url
    stop_app()


class Load:
    """Threads sending requests back to back (no client retries) and recording every answer."""

    def __init__(self, url: str, requests: list[tuple[str, dict[str, Any]]], threads: int = 2) -> None:
        self.url, self.requests = url, requests
        self.answers: list[tuple[float, str, dict[str, Any]]] = []
        self.errors: list[tuple[float, str, Any]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            path, body = self.requests[(i + n) % len(self.requests)]
            n += 1
            try:
                status, answer, _ = call(self.url, path, body, timeout=90)
            except Exception as exc:  # a dropped connection is an error too
                status, answer = -1, repr(exc)
            (self.answers if status == 200 else self.errors).append((time.time(), path, answer))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def versions(self, since: float = 0.0) -> list[str]:
        return [a["models"]["ranker"]["version"] for t, _, a in list(self.answers) if t >= since]

    def wait_for(self, version: str, timeout: float = 60.0) -> float:
        """Wait until answers come from `version` only for one second; returns when the first one came."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            time.sleep(0.2)
            vs = self.versions(time.time() - 1.0)
            if vs and set(vs) == {version}:
                return min(t for t, _, a in list(self.answers) if a["models"]["ranker"]["version"] == version)
        raise AssertionError(f"no answers from version {version} only within {timeout}s: {self.versions()[-20:]}")


def offline_scores(cfg: RecForgeConfig, model: str, user: int) -> np.ndarray:
    from training.ranking.bundle import load_bundle

    ranker = load_bundle(Path(cfg.output_dir) / "train" / model / "bundle")
    return ranker.score(pa.Table.from_pylist(store_rows(cfg, user, ITEMS, CONTEXT)))


def test_alias_swap_under_load_loses_no_request_and_never_mixes_versions(scenario: Scenario,
                                                                         served: tuple[RecForgeConfig, str]) -> None:
    cfg, url = served
    versions = scenario.versions["demo-ranker"]
    user = known_user(cfg)
    expected = {versions["dcnv2"]: offline_scores(cfg, "dcnv2", user), versions["lr"]: offline_scores(cfg, "lr", user)}
    assert np.abs(expected[versions["dcnv2"]] - expected[versions["lr"]]).max() > 1e-3  # two different models
    body = {"user_id": user, "item_ids": ITEMS, "context": CONTEXT}
    with Load(url, [("/predict", body)]) as load:
        time.sleep(1.0)
        moved = time.time()
        set_alias(cfg, "demo-ranker", versions["lr"])
        load.wait_for(versions["lr"])
    assert load.errors == []
    seen = load.versions()
    assert seen[0] == versions["dcnv2"] and seen[-1] == versions["lr"]
    assert len([t for t, _, _ in load.answers if t < moved]) > 5  # requests were flowing before the move
    for _, _, answer in load.answers:  # each answer entirely from the version it names
        got = np.array([p["score"] for p in answer["predictions"]])
        np.testing.assert_allclose(got, expected[answer["models"]["ranker"]["version"]], atol=1e-6)


def test_a_broken_version_keeps_the_old_one_serving_and_shows_the_error(scenario: Scenario,
                                                                        served: tuple[RecForgeConfig, str]) -> None:
    cfg, url = served
    versions = scenario.versions["demo-ranker"]
    good, broken = versions["lr"], versions["broken"]
    set_alias(cfg, "demo-ranker", good)
    user = known_user(cfg)
    with Load(url, [("/predict", {"user_id": user, "item_ids": ITEMS, "context": CONTEXT})]) as load:
        load.wait_for(good)
        set_alias(cfg, "demo-ranker", broken)
        deadline, error = time.time() + 30, None
        while time.time() < deadline and error is None:
            time.sleep(0.3)
            error = call(url, "/models")[1]["ranker"]["last_error"]
        after = time.time()
        time.sleep(1.5)
    assert error is not None and error["version"] == broken
    assert error["error"].startswith("UnsafeWeightsError") and "state_dict.pt" in error["error"]  # named, with the fix
    assert load.errors == []
    assert set(load.versions(after)) == {good}
    assert call(url, "/models")[1]["ranker"]["version"] == good
    assert call(url, "/healthz")[0] == 200
    # the alias back on the serving version clears the error (on every replica: 8 answers in a row)
    set_alias(cfg, "demo-ranker", good)
    deadline, clean = time.time() + 30, 0
    while time.time() < deadline and clean < 8:
        clean = clean + 1 if call(url, "/models")[1]["ranker"]["last_error"] is None else 0
        time.sleep(0.2)
    assert clean == 8


def _replicas(deployment: str) -> list[dict[str, str]]:
    import ray

    return [a for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"]]


def _kill_one(deployment: str) -> str:
    import ray

    victim = _replicas(deployment)[0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=False)
    return victim["name"]


def _wait_running(deployment: str, n: int, gone: str | None = None, timeout: float = 90.0) -> None:
    """Until Serve reports `n` RUNNING replicas of `deployment` and the actor named `gone` has been replaced."""
    from ray import serve

    deadline = time.time() + timeout
    states: dict[str, int] = {}
    names: list[str] = []
    while time.time() < deadline:
        states = serve.status().applications["recforge"].deployments[deployment].replica_states
        names = [a["name"] for a in _replicas(deployment)]
        if states.get("RUNNING", 0) == n and sum(states.values()) == n and len(names) == n and gone not in names:
            return
        time.sleep(0.5)
    raise AssertionError(f"{deployment}: not back to {n} running replicas within {timeout}s (replica states "
                         f"{states}, named actors {names}, killed {gone})")


def test_killing_a_replica_while_requests_flow_loses_no_request(served: tuple[RecForgeConfig, str]) -> None:
    """split: a model replica dies and the ingress retries its model calls: no request is lost. fused: an ingress
    replica (which holds the models) dies: only the requests it was answering at that moment may fail (at most
    one per client thread, all at the kill), and every request after it is answered by the other replica and
    then by the replacement too."""
    cfg, url = served
    user = known_user(cfg)
    requests = [("/predict", {"user_id": user, "item_ids": ITEMS}), ("/recommend", {"user_id": user, "k": 5})]
    threads = 4
    for deployment, replicas in TOPOLOGIES[cfg.serving.topology][1]:
        _wait_running(deployment, replicas)
        with Load(url, requests, threads=threads) as load:
            time.sleep(1.0)
            killed_at = time.time()
            victim = _kill_one(deployment)
            _wait_running(deployment, replicas, gone=victim)
            time.sleep(1.0)
            recovered = time.time()
        if deployment == "Ingress":  # the killed process's own in-flight requests, nothing later
            assert len(load.errors) <= threads, load.errors
            assert all(killed_at - 1.0 <= t <= killed_at + 5.0 for t, _, _ in load.errors), (killed_at, load.errors)
            assert len([t for t, _, _ in load.answers if t > killed_at + 5.0]) > 3
        else:
            assert load.errors == [], (deployment, load.errors[:3])
        assert len([t for t, _, _ in load.answers if t < killed_at]) > 3
        assert len([t for t, _, _ in load.answers if t > recovered - 1.0]) > 0
        assert {p for _, p, _ in load.answers} == {"/predict", "/recommend"}
