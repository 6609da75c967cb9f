"""Experiments on the real app (local Ray Serve on 127.0.0.1, tiny trained models in a real MLflow registry, the
SQLite bus and the stream processor beside the app).

Proves: a version that does not exist or does not load is refused at start and nothing runs (the champion keeps
serving); a started experiment reaches the replicas, each user keeps their arm and is answered by that arm's
version (unknown users too); an overlapping experiment is refused; exposures reach the offline log without a
request waiting for them, outcomes join to them by exposure_id, unknown exposure ids are counted; the report is
written and logged to MLflow; the simulator's visits are answered and their outcomes accepted; `promote
--experiment` refuses without a winner; after stop the champion answers
everyone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recforge.config import RecForgeConfig, app_settings
from serving.experiments import manage
from serving.experiments.store import ExperimentStateError
from tests.serving.test_app import Scenario, build_scenario, call, start

pytestmark = pytest.mark.slow

EVENTS_TOKEN = "events-token-for-tests-0123"
ADMIN_TOKEN = "admin-token-for-tests-4567"
ARMS = ("{arms: [{name: control, share: 0.5}, {name: challenger, share: 0.5, ranker: '%s'}], "
        "attribution_window_s: 600}")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, ray_local: object) -> Scenario:
    return build_scenario(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def served(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RecForgeConfig, str]]:
    from serving.server import stop_app

    d = tmp_path_factory.mktemp("experiments")
    versions = next(iter(scenario.versions.values()))
    cfg, url = start(scenario, f"serving.events_token={EVENTS_TOKEN}", f"serving.admin_token={ADMIN_TOKEN}",
                     "events.stream.serve=true", "events.bus.type=sqlite",
                     f"events.bus.path={d / 'bus.db'}", f"events.log_path={d / 'log'}", "events.log_flush_s=0.5",
                     f"experiments.store_path={d / 'experiments.db'}", f"experiments.reports_dir={d / 'reports'}",
                     "experiments.poll_s=0.3",
                     f"experiments.definitions.ab={ARMS % versions['lr']}",
                     f"experiments.definitions.overlap={ARMS % versions['lr']}",
                     f"experiments.definitions.broken={ARMS % versions['broken']}",
                     f"experiments.definitions.missing={ARMS % '99'}")
    yield cfg, url
    stop_app()


def recommend(url: str, user: Any) -> dict[str, Any]:
    status, body, _ = call(url, "/recommend", {"user_id": user, "k": 5})
    assert status == 200, body
    return body


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s")


def test_an_experiment_serves_each_user_their_arm_logs_exposures_and_joins_outcomes(
        served: tuple[RecForgeConfig, str], scenario: Scenario) -> None:
    cfg, url = served
    app = app_settings(cfg)
    ranker_versions = next(iter(scenario.versions.values()))

    with pytest.raises(ExperimentStateError, match="has no version 99"):
        manage.start(app, "missing")
    with pytest.raises(ExperimentStateError, match=r"does not load.*champion keeps serving"):
        manage.start(app, "broken")
    assert manage.store_of(app).running() == []
    assert recommend(url, 1)["experiment"] is None

    started = manage.start(app, "ab")
    assert started["power"]["users_per_arm"] > 0
    with pytest.raises(ExperimentStateError, match="the same users would be in both"):
        manage.start(app, "overlap")
    replicas: set[int] = set()

    def ready_on_every_replica() -> bool:
        """Each ingress replica routes the experiment once it has loaded every arm's version (seconds apart on a
        loaded machine); /experiments answers from one replica, named by its pid."""
        status, live, _ = call(url, "/experiments")
        assert status == 200, live
        if [(e["name"], e["ready"]) for e in live["running"]] == [("ab", True)]:
            replicas.add(live["replica_pid"])
        return len(replicas) == cfg.serving.ingress_replicas

    wait_for(ready_on_every_replica, timeout=60.0)

    users = [*range(1, 41), "no-such-user"]
    answers = {u: recommend(url, u) for u in users}
    by_arm: dict[str, set[Any]] = {}
    for u, body in answers.items():
        again = recommend(url, u)
        arm = body["experiment"]["arm"]
        assert again["experiment"]["arm"] == arm  # sticky
        want = ranker_versions["lr"] if arm == "challenger" else ranker_versions["dcnv2"]
        assert body["models"]["ranker"]["version"] == want
        by_arm.setdefault(arm, set()).add(u)
    assert set(by_arm) == {"control", "challenger"}

    clicks = [{"event_id": f"click-{u}", "ts": time.time(), "user_id": u, "item_id": body["items"][0]["item_id"],
               "type": "click", "exposure_id": body["exposure_id"]}
              for u, body in answers.items() if isinstance(u, int) and body["items"]][:20]
    clicks.append({"event_id": "click-unknown", "ts": time.time(), "user_id": 1, "item_id": 1, "type": "click",
                   "exposure_id": "no-such-exposure"})
    status, body, _ = call(url, "/events", {"events": clicks}, headers={"X-Events-Token": EVENTS_TOKEN})
    assert status == 200 and body["accepted"] == len(clicks), body

    status, live, _ = call(url, "/experiments")
    assert status == 200 and live["running"][0]["name"] == "ab"
    known = len(users) - 1  # "no-such-user" is no id of this int-keyed scenario: its exposures are rejected

    def settled() -> dict | bool:
        """The clicks joined and every exposure in the offline log: exposures are published in batches and logged
        every events.log_flush_s, so the two can arrive in either order."""
        r = manage.result(app, "ab")
        logged = sum(a["exposures"] for a in r["arms"])
        return r["counts"]["outcomes_by_exposure_id"] == 20 and logged >= 2 * known and r

    res = wait_for(settled)
    arms = {a["arm"]: a for a in res["arms"]}
    assert arms["control"]["users"] + arms["challenger"]["users"] == known
    assert arms["control"]["exposures"] + arms["challenger"]["exposures"] == 2 * known
    assert arms["control"]["clicks"] + arms["challenger"]["clicks"] == 20
    assert res["counts"]["outcomes_unknown_exposure"] == 1
    status, live, _ = call(url, "/experiments")
    exposures = live["exposures"]
    # one replica's counters (the app runs several ingress replicas); the log above holds every exposure
    assert exposures["dropped"] == 0 and exposures["published"] == exposures["queued"] > 0
    assert exposures["rejected"] <= 2  # the unknown user's answers (on this replica), counted, not silently lost

    from serving.experiments.report import write_report

    paths = write_report(app, res, manage.report_dir(app) / "ab")
    assert "Experiment ab (running)" in Path(paths["html"]).read_text() and paths["mlflow_run"]

    with pytest.raises(ExperimentStateError, match="no winner yet"):
        manage.promotion_plan(app, "ab")

    from serving.experiments.simulate import run_simulation

    sim = run_simulation(cfg.source, url, requests=40, concurrency=2, k=5, seed=3, events=cfg.events,
                         events_token=EVENTS_TOKEN)
    assert sim["completed"] == 40 and sim["error_count"] == 0 and sim["events"]["rejected"] == 0
    assert set(sim["arms"]) <= {"control", "challenger"}
    assert all(0 < a["true_ctr"] < 1 and 0 < a["impressions"] <= 5 * a["exposures"] for a in sim["arms"].values())

    # experiment control over HTTP needs the admin token: a wrong one changes nothing
    status, body, _ = call(url, "/admin/experiments/ab/stop", {}, headers={"X-Admin-Token": "wrong"})
    assert status == 401 and [s.name for s in manage.store_of(app).running()] == ["ab"]
    status, body, _ = call(url, "/admin/experiments/ab/stop?reason=test%20over", {},
                           headers={"X-Admin-Token": ADMIN_TOKEN})
    assert status == 200 and body["stopped"] == "ab" and body["reason"] == "test over", body
    wait_for(lambda: recommend(url, 1)["experiment"] is None)
    with pytest.raises(ExperimentStateError, match="already stopped"):
        manage.stop(app, "ab")
    assert [e["status"] for e in manage.list_experiments(app)["experiments"] if e["name"] == "ab"] == ["stopped"]
