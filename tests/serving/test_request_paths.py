"""The fast request path (serving.request_path: fast) answers as the baseline path does: same items in the same
order, click probabilities within the /predict parity tolerance, whether the user side comes from the cache or
not, and never from features the online store no longer holds."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from recforge.config import RecForgeConfig, app_settings, load
from tests.conftest import ROOT
from tests.serving.test_app import CONTEXT, SMALL, Scenario, scenario, set_alias  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
TOLERANCE = 1e-6  # as tests/serving/test_app.py's /predict parity


def _config(scenario: Scenario, online: Path) -> RecForgeConfig:  # noqa: F811
    cfg = load(ROOT / "configs" / "demo.yaml", [*SMALL, f"output_dir={scenario.cfg.output_dir}",
                                                "online_store.type=sqlite", f"online_store.path={online}"])
    for name, versions in scenario.versions.items():
        label = "dcnv2" if "dcnv2" in versions else next(iter(versions))
        set_alias(cfg, name, versions[label])
    return cfg


def _ingress(cfg: RecForgeConfig, path: str) -> Any:
    from serving.app import local_ingress

    settings = app_settings(cfg)
    return local_ingress(dataclasses.replace(
        settings, serving=settings.serving.model_copy(update={"request_path": path})))


def _recommend(ingress: Any, user: Any, k: int = 10, context: dict | None = None, exclude_seen: bool = True
               ) -> dict[str, Any]:
    resp = asyncio.run(ingress.recommend(user, k, context, exclude_seen))
    assert resp.status_code == 200, resp.body
    return json.loads(resp.body)


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
    np.testing.assert_allclose([i["score"] for i in a["items"]], [i["score"] for i in b["items"]], rtol=0,
                               atol=TOLERANCE)
    ra = [np.nan if i["retrieval_score"] is None else i["retrieval_score"] for i in a["items"]]
    rb = [np.nan if i["retrieval_score"] is None else i["retrieval_score"] for i in b["items"]]
    np.testing.assert_allclose(ra, rb, rtol=0, atol=1e-5)
    assert a["fallback"] == b["fallback"]


@pytest.fixture(scope="module")
def online(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A copy of the scenario's online store, which these tests may rewrite."""
    path = tmp_path_factory.mktemp("request_paths") / "online.db"
    shutil.copy(Path(scenario.cfg.output_dir) / "online.db", path)
    return path


def _users(cfg: RecForgeConfig, n: int) -> list[Any]:
    from feature_store.offline import OfflineStore
    from feature_store.prepare import layout

    ids = OfflineStore(layout(cfg).offline).read_table("users").column("user_id").to_pylist()
    return sorted(ids)[:n]


def test_fast_path_answers_like_the_baseline_path_cached_or_not(scenario: Scenario, online: Path) -> None:  # noqa: F811
    cfg = _config(scenario, online)
    baseline, fast = _ingress(cfg, "baseline"), _ingress(cfg, "fast")
    users = [*_users(cfg, 40), "no-such-user"]
    for context in (None, CONTEXT):
        for exclude_seen in (True, False):
            for user in users:
                want = _recommend(baseline, user, context=context, exclude_seen=exclude_seen)
                _same(_recommend(fast, user, context=context, exclude_seen=exclude_seen), want)  # a miss
                _same(_recommend(fast, user, context=context, exclude_seen=exclude_seen), want)  # a hit
    ranker = fast.ranker.instance
    assert ranker.user_side.hits > 0 and ranker.user_side.transforms > 0
    # one transform per user and context serves retriever and ranker: fewer transforms than user-side misses
    assert ranker.user_side.transforms < ranker.user_side.misses
    items = [i["item_id"] for i in _recommend(baseline, users[0], k=20)["items"]] + ["no-such-item"]
    for user in users[:10]:
        a = json.loads(asyncio.run(baseline.predict(user, items, CONTEXT)).body)
        b = json.loads(asyncio.run(fast.predict(user, items, CONTEXT)).body)
        assert [p["status"] for p in a["predictions"]] == [p["status"] for p in b["predictions"]]
        np.testing.assert_allclose([p["score"] if p["score"] is not None else np.nan for p in b["predictions"]],
                                   [p["score"] if p["score"] is not None else np.nan for p in a["predictions"]],
                                   rtol=0, atol=TOLERANCE)


def test_cached_user_side_follows_a_change_of_the_users_features(scenario: Scenario, online: Path) -> None:  # noqa: F811
    from feature_store.online import open_online_store

    cfg = _config(scenario, online)
    fast = _ingress(cfg, "fast")
    user = _users(cfg, 1)[0]
    before = _recommend(fast, user)
    _recommend(fast, user)  # cached now
    top = before["items"][0]["item_id"]
    store = open_online_store(cfg.online_store, online)
    try:
        info = store.entities()["user_history"]
        users = _users(cfg, 10_000)
        got = store.read("user_history", users, [n for n in info.features])
        rows = got.to_rows()
        table = {"user_id": [], **{n: [] for n in info.features}}
        for u, row in zip(users, rows):
            if row is None:
                continue
            if u == user:  # the top recommendation is now in the user's history (as after a purchase event)
                row = {**row, "hist_item_id": [*(row.get("hist_item_id") or []), top]}
                if row.get("hist_item_id_ts") is not None:
                    row["hist_item_id_ts"] = [*row["hist_item_id_ts"], row["hist_item_id_ts"][-1]]
            table["user_id"].append(u)
            for n in info.features:
                table[n].append(row[n])
        store.write("user_history", pa.table(table), key="user_id", ts_column=info.ts_column,
                    ttl_seconds=info.ttl_seconds)
    finally:
        store.close()
    after = _recommend(fast, user)
    assert top not in [i["item_id"] for i in after["items"]]  # seen now, left out: not the cached answer
    _same(after, _recommend(_ingress(cfg, "baseline"), user))


def test_a_cache_of_size_zero_keeps_nothing_and_answers_the_same(scenario: Scenario, online: Path) -> None:  # noqa: F811
    cfg = _config(scenario, online)
    cfg.serving.user_cache_size = 0
    fast = _ingress(cfg, "fast")
    user = _users(cfg, 3)[2]
    first, second = _recommend(fast, user), _recommend(fast, user)
    _same(first, second)
    assert fast.ranker.instance.user_side.stats()["users"] == 0
