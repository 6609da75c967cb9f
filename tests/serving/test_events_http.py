"""POST /events on the real app (local Ray Serve on 127.0.0.1, tiny trained models, SQLite store and bus) with
`events.stream.serve: true`: the stream processor runs beside the app as a Ray actor.

Proves: a batch's bad events are answered and kept with their reasons while the good ones are accepted; the size
limit and the token are enforced with messages naming the setting; a purchase posted to /events reaches the
user's online history and changes that user's next /recommend (the bought item is left out as seen) within a
second or so; the processor actor stops with the app.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from recforge.config import RecForgeConfig
from tests.serving.test_app import Scenario, build_scenario, call, start

pytestmark = pytest.mark.slow

TOKEN = "ev-t0ken"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, ray_local: object) -> Scenario:
    return build_scenario(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def served(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RecForgeConfig, str]]:
    from serving.server import stop_app

    events = tmp_path_factory.mktemp("events")
    cfg, url = start(scenario, "events.stream.serve=true", "events.max_batch_events=50",
                     "events.bus.type=sqlite", f"events.bus.path={events / 'bus.db'}",
                     f"events.log_path={events / 'log'}", f"serving.events_token={TOKEN}",
                     f"serving.read_token={READ_TOKEN}")
    yield cfg, url
    stop_app()


READ_TOKEN = "read-token-for-tests-89ab"
READ = {"Authorization": f"Bearer {READ_TOKEN}"}


def post_events(url: str, events: list[Any], token: str | None = TOKEN) -> tuple[int, Any]:
    status, body, _ = call(url, "/events", {"events": events},
                           headers={"X-Events-Token": token} if token is not None else None)
    return status, body


def history(cfg: RecForgeConfig, user: Any) -> list[Any]:
    from feature_store.online import open_store

    with open_store(cfg) as store:
        got = store.read("user_history", [user])
    return list(got.values["hist_item_id"][0] or [])


def test_bad_events_are_answered_with_reasons_and_kept_while_good_ones_are_accepted(
        served: tuple[RecForgeConfig, str]) -> None:
    from feature_store.events.scenario import open_bus
    from recforge.config import feature_store_config

    cfg, url = served
    now = time.time()
    good = {"event_id": "http-good-1", "ts": now, "user_id": 7, "item_id": 3, "type": "click"}
    status, body = post_events(url, [
        good,
        {"event_id": "http-bad-type", "ts": now, "user_id": 7, "item_id": 3, "type": "teleport"},
        {"event_id": "http-bad-id", "ts": now, "user_id": "seven", "item_id": 3, "type": "click"},
        {"event_id": "http-no-ts", "user_id": 7, "item_id": 3, "type": "click"},
        "not an event",
        {"event_id": "http-future", "ts": now + 86400, "user_id": 7, "item_id": 3, "type": "click"},
    ])
    assert status == 200, body
    assert body["received"] == 6 and body["accepted"] == 1
    reasons = {r["index"]: r["reason"] for r in body["rejected"]}
    assert sorted(reasons) == [1, 2, 3, 4, 5]
    assert reasons[1].startswith("type: 'teleport' is not one of")
    assert reasons[2].startswith("user_id: must be an integer")
    assert reasons[3] == "ts: required"
    assert reasons[4] == "an event must be a JSON object"
    assert reasons[5].startswith("ts: ") and "max_clock_skew_s" in reasons[5]
    assert [r["event_id"] for r in body["rejected"]] == ["http-bad-type", "http-bad-id", "http-no-ts", None,
                                                         "http-future"]
    with open_bus(feature_store_config(cfg)) as bus:
        kept = {r["event_id"]: r["reason"] for r in bus.rejected(limit=100)}
    assert {"http-bad-type", "http-bad-id", "http-no-ts", "http-future"} <= set(kept)


def test_a_batch_above_the_limit_gets_413_naming_the_setting_and_nothing_is_accepted(
        served: tuple[RecForgeConfig, str]) -> None:
    _, url = served
    now = time.time()
    batch = [{"event_id": f"big-{i}", "ts": now, "user_id": 1, "item_id": 1, "type": "impression"}
             for i in range(51)]
    status, body = post_events(url, batch)
    assert status == 413
    assert "events.max_batch_events is 50" in body["detail"]


def test_the_events_token_is_required_when_configured(served: tuple[RecForgeConfig, str]) -> None:
    _, url = served
    event = {"event_id": "tok-1", "ts": time.time(), "user_id": 1, "item_id": 1, "type": "click"}
    assert post_events(url, [event], token=None)[0] == 401
    status, body = post_events(url, [event], token="wrong")
    assert status == 401 and "X-Events-Token" in body["detail"]
    assert post_events(url, [event])[0] == 200


def test_read_endpoints_need_the_read_token_when_one_is_set(served: tuple[RecForgeConfig, str]) -> None:
    _, url = served
    for path, body in (("/recommend", {"user_id": 1, "k": 3}), ("/predict", {"user_id": 1, "item_ids": [1]}),
                       ("/models", None), ("/experiments", None)):
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": READ_TOKEN},
                        {"Authorization": f"Bearer {TOKEN}"}):  # none, wrong, no scheme, another endpoint's token
            status, answer, got = call(url, path, body, headers=headers)
            assert status == 401 and "serving.read_token" in answer["detail"], (path, headers, answer)
            assert got.get("www-authenticate", got.get("WWW-Authenticate")) == "Bearer"
        assert call(url, path, body, headers=READ)[0] == 200, path
    assert call(url, "/healthz")[0] == 200  # load balancers need no token


def test_a_purchase_posted_to_events_changes_that_users_next_recommendations(
        served: tuple[RecForgeConfig, str]) -> None:
    cfg, url = served
    users = [u for u in range(2, 200) if len(history(cfg, u)) >= 3]
    user = users[3]  # not the user the other API tests look at
    status, before, _ = call(url, "/recommend", {"user_id": user, "k": 10}, headers=READ)
    assert status == 200 and before["fallback"] is None and before["exposure_id"]
    bought = before["items"][0]["item_id"]
    assert bought not in history(cfg, user)

    status, body = post_events(url, [{"event_id": f"buy-{user}-{bought}", "ts": time.time(), "user_id": user,
                                      "item_id": bought, "type": "purchase", "value": 19.9,
                                      "exposure_id": before["exposure_id"]}])
    assert status == 200 and body["accepted"] == 1, body
    t0 = time.perf_counter()
    after = before
    while time.perf_counter() - t0 < 15:
        after = call(url, "/recommend", {"user_id": user, "k": 10}, headers=READ)[1]
        if bought not in [it["item_id"] for it in after["items"]]:
            break
        time.sleep(0.05)
    seen_after = time.perf_counter() - t0
    assert bought not in [it["item_id"] for it in after["items"]], \
        f"the purchase never reached /recommend: processor {processor_status(cfg)}, history {history(cfg, user)}"
    assert history(cfg, user)[-1] == bought  # the newest item of the user's history
    assert seen_after < 5.0, f"took {seen_after:.2f} s"
    # the same event again (a client retry) is applied once: the item stays in the history once
    post_events(url, [{"event_id": f"buy-{user}-{bought}", "ts": time.time(), "user_id": user,
                       "item_id": bought, "type": "purchase", "value": 19.9}])
    time.sleep(1.0)
    assert history(cfg, user).count(bought) == 1


def processor_status(cfg: RecForgeConfig) -> dict[str, Any]:
    import ray

    from serving.actors import NAMESPACE
    from serving.stream import actor_name

    return ray.get(ray.get_actor(actor_name(cfg.name), namespace=NAMESPACE).status.remote())


def test_the_processor_actor_runs_beside_the_app(served: tuple[RecForgeConfig, str]) -> None:
    import ray

    from serving.actors import NAMESPACE
    from serving.stream import actor_name

    cfg, _ = served
    status = ray.get(ray.get_actor(actor_name(cfg.name), namespace=NAMESPACE).status.remote())
    assert status["running"] and status["last_error"] is None
