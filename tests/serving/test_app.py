"""The recommendation API over real HTTP on 127.0.0.1: a real local Ray Serve app serving tiny trained models
registered in a real MLflow SQLite store, features from the real SQLite online store.

Proves: /predict equals the offline `Ranker.score` of the same raw rows; /recommend equals offline retrieval
(user tower + search with the user's history excluded) followed by offline ranking; unknown users fall back to the
popular items, unknown items are reported per item; bad bodies get 422 naming the field; /healthz, /models,
OpenAPI and the admin reload behave as documented.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from feature_store.raycluster import free_port
from recforge.config import RecForgeConfig, app_settings, load
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SMALL = [
    "source.n_users=400", "source.n_items=150", "source.n_impressions=20000", "source.n_categories=6",
    "source.days=10", "prepare.batch_rows=10000",
    "features.categorical.0.min_freq=5", "features.categorical.1.min_freq=5",
    "train.batch_size=512", "train.max_epochs=1", "train.runtime.num_threads=1",
    "retrieval.max_epochs=1", "retrieval.batch_size=256", "retrieval.runtime.num_threads=1", "retrieval.baselines=[]",
    "retrieval.query_sample=50", "retrieval.refit=false",
    "serving.poll_seconds=0.5", "serving.candidates=40", "serving.max_items=50", "serving.admin_token=s3cret",
]
CONTEXT = {"channel": "app", "device": "ios", "hour": 20, "position": 1}


@dataclass
class Scenario:
    """A prepared, materialized and trained tiny scenario; ranker/retriever run ids and registered versions."""

    cfg: RecForgeConfig
    ranker_runs: dict[str, str]  # model name -> MLflow run id
    retriever_run: str
    versions: dict[str, dict[str, str]]  # registered model name -> {label: version}


def client(cfg: RecForgeConfig) -> Any:
    import mlflow

    from recforge.config import tracking_uri

    uri = tracking_uri(cfg)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def register(cfg: RecForgeConfig, name: str, source: str, run_id: str | None = None) -> str:
    """A new version of `name` from `source` with plain MLflow calls (the registry gate is not under test here)."""
    from mlflow.exceptions import MlflowException

    c = client(cfg)
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name)
    return str(c.create_model_version(name, source, run_id=run_id).version)


def set_alias(cfg: RecForgeConfig, name: str, version: str, alias: str = "champion") -> None:
    client(cfg).set_registered_model_alias(name, alias, version)


def build_scenario(root: Path) -> Scenario:
    """Prepare -> materialize -> train dcnv2 + lr rankers and the two-tower retriever -> register them
    (ranker v1 dcnv2, v2 lr, v3 a corrupted copy of v1; retriever v1). Cached under `root` for the session."""
    from feature_store.materialize import materialize_job
    from feature_store.prepare import prepare
    from serving.config import model_names
    from training.ranking.run import train_ctr
    from training.retrieval.run import train_retrieval

    out = root / "scenario"
    cfg = load(ROOT / "configs" / "demo.yaml", [*SMALL, f"output_dir={out}"])
    done = out / "scenario.json"
    if done.is_file():
        state = json.loads(done.read_text())
        return Scenario(cfg, state["ranker_runs"], state["retriever_run"], state["versions"])
    os.environ["RECFORGE_PROGRESS"] = "0"
    prepare(cfg)
    materialize_job(cfg)
    doc = cfg.model_dump(mode="json")
    runs = {m: train_ctr(out, cfg.name, cfg.train.model_copy(update={"model": m}), config_doc=doc).mlflow["run_id"]
            for m in ("dcnv2", "lr")}
    retriever_run = train_retrieval(out, cfg.name, cfg.retrieval, config_doc=doc).mlflow["run_id"]
    ranker_name, retriever_name = model_names(cfg.name, cfg.registry)
    broken = out / "broken_ranker"
    import shutil

    shutil.copytree(out / "train" / "dcnv2" / "bundle", broken)
    (broken / "state_dict.pt").write_bytes(b"not a torch file")  # a corrupted upload
    versions = {
        ranker_name: {"dcnv2": register(cfg, ranker_name, f"runs:/{runs['dcnv2']}/ranker", runs["dcnv2"]),
                      "lr": register(cfg, ranker_name, f"runs:/{runs['lr']}/ranker", runs["lr"]),
                      "broken": register(cfg, ranker_name, broken.resolve().as_uri())},
        retriever_name: {"two_tower": register(cfg, retriever_name, f"runs:/{retriever_run}/retrieval_bundle",
                                               retriever_run)},
    }
    done.write_text(json.dumps({"ranker_runs": runs, "retriever_run": retriever_run, "versions": versions}))
    return Scenario(cfg, runs, retriever_run, versions)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, ray_local: object) -> Scenario:
    return build_scenario(tmp_path_factory.getbasetemp())


def start(scenario: Scenario, *overrides: str) -> tuple[RecForgeConfig, str]:
    """Point champion at ranker dcnv2 / retriever two_tower and start the app on a free port."""
    from serving.server import start_app

    cfg = load(ROOT / "configs" / "demo.yaml",
               [*SMALL, f"output_dir={scenario.cfg.output_dir}", f"serving.port={free_port()}", *overrides])
    for name, versions in scenario.versions.items():
        set_alias(cfg, name, next(iter(versions.values())))
    return cfg, start_app(app_settings(cfg), timeout=240)


@pytest.fixture(scope="module")
def app(scenario: Scenario) -> Iterator[str]:
    from serving.server import stop_app

    _, url = start(scenario)
    yield url
    stop_app()


def call(url: str, path: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body, headers) of a GET (body None) or POST."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)


def store_rows(cfg: RecForgeConfig, user_id: Any, item_ids: list[Any], context: dict[str, Any]) -> list[dict]:
    """The raw rows a request means, read straight from the online store: the user's features (all user-keyed
    views), each item's features (item-keyed views), the context on top."""
    from feature_store.materialize import open_store

    f = cfg.features
    with open_store(cfg) as store:
        views = sorted(store.entities().values(), key=lambda v: v.name)
        user: dict[str, Any] = {}
        for v in views:
            if v.key == f.user_key:
                feats = store.read(v.name, [user_id])
                user.update({n: feats.values[n][0] for n in feats.names if n != v.ts_column and n not in user})
        items: dict[str, list[Any]] = {}
        for v in views:
            if v.key == f.item_key:
                feats = store.read(v.name, item_ids)
                items.update({n: feats.values[n] for n in feats.names if n != v.ts_column and n not in items})
    return [{f.user_key: user_id, f.item_key: item, **user, **{n: vals[i] for n, vals in items.items()}, **context}
            for i, item in enumerate(item_ids)]


def known_user(cfg: RecForgeConfig) -> int:
    """A user with a behaviour history (so exclusions matter) and a profile."""
    from feature_store.materialize import open_store

    with open_store(cfg) as store:
        hist = store.read("user_history", list(range(1, 200)))
        prof = store.read("user_profile", list(range(1, 200)))
    ok = [u for u, h, p in zip(hist.ids, hist.values["hist_item_id"], prof.status["rfm_frequency"])
          if h and len(h) >= 3 and p == "present"]
    return ok[0]


# ------------------------------------------------------------------------------------------------ answers
def test_predict_over_http_equals_offline_ranker_score_of_the_same_raw_rows(scenario: Scenario, app: str) -> None:
    from training.ranking.bundle import load_bundle

    cfg = scenario.cfg
    user = known_user(cfg)
    items = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89]
    status, body, headers = call(app, "/predict", {"user_id": user, "item_ids": items, "context": CONTEXT})
    assert status == 200, body
    assert body["user_status"] == "known"
    assert [p["status"] for p in body["predictions"]] == ["ok"] * len(items)
    served = np.array([p["score"] for p in body["predictions"]])

    ranker = load_bundle(Path(cfg.output_dir) / "train" / "dcnv2" / "bundle")
    offline = ranker.score(pa.Table.from_pylist(store_rows(cfg, user, items, CONTEXT)))
    np.testing.assert_allclose(served, offline, rtol=0, atol=1e-6)
    assert np.ptp(served) > 1e-4  # the items really differ: not a constant answer
    assert body["models"]["ranker"]["version"] == scenario.versions["demo-ranker"]["dcnv2"]
    assert set(body["timings_ms"]) == {"features", "ranking", "calls", "total"}
    assert "ranking;dur=" in headers["server-timing"]


def offline_recommend(cfg: RecForgeConfig, user: int, k: int, exclude_seen: bool) -> tuple[list, np.ndarray,
                                                                                    np.ndarray]:
    """Top-k (ids, ranker scores, retrieval scores) computed offline: the user's raw row through the retrieval
    bundle's user tower, search top-N (history excluded or not), the candidates' raw rows through the ranker."""
    from training.ranking.bundle import load_bundle
    from training.retrieval.bundle import load_retriever

    row = store_rows(cfg, user, [0], CONTEXT)[0]
    retriever = load_retriever(Path(cfg.output_dir) / "retrieval" / "bundle")
    vectors = retriever.user_vectors(pa.Table.from_pylist([row]))
    ids, rscores = retriever.search(vectors, cfg.serving.candidates,
                                    exclude=[row["hist_item_id"]] if exclude_seen else None)
    keep = np.isfinite(rscores[0])
    cands, rscores = ids[0][keep].tolist(), rscores[0][keep]
    ranker = load_bundle(Path(cfg.output_dir) / "train" / "dcnv2" / "bundle")
    probs = ranker.score(pa.Table.from_pylist(store_rows(cfg, user, cands, CONTEXT)))
    order = np.argsort(-probs, kind="stable")[:k]
    return [cands[i] for i in order], probs[order], rscores[order]


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommend_equals_offline_retrieval_then_ranking(scenario: Scenario, app: str, exclude_seen: bool) -> None:
    cfg = scenario.cfg
    user = known_user(cfg)
    status, body, _ = call(app, "/recommend", {"user_id": user, "k": 7, "context": CONTEXT,
                                               "exclude_seen": exclude_seen})
    assert status == 200, body
    assert body["fallback"] is None
    got = [it["item_id"] for it in body["items"]]
    ids, probs, rscores = offline_recommend(cfg, user, 7, exclude_seen)
    assert got == ids and len(got) == 7
    np.testing.assert_allclose([it["score"] for it in body["items"]], probs, atol=1e-6)
    np.testing.assert_allclose([it["retrieval_score"] for it in body["items"]], rscores, atol=1e-5)
    history = set(store_rows(cfg, user, [0], CONTEXT)[0]["hist_item_id"])
    if exclude_seen:
        assert not set(got) & history  # seen items left out
    assert body["models"] == {
        "retriever": {"name": "demo-retriever", "version": "1", "alias": "champion"},
        "ranker": {"name": "demo-ranker", "version": scenario.versions["demo-ranker"]["dcnv2"], "alias": "champion"},
    }
    assert {"features", "retrieval", "ranking", "calls", "total"} == set(body["timings_ms"])


def test_exclude_seen_changes_the_candidates_when_the_history_ranks_high(scenario: Scenario, app: str) -> None:
    """Over a few users, leaving the history in puts some history items into the top-k; excluding never does."""
    from feature_store.materialize import open_store

    cfg = scenario.cfg
    with open_store(cfg) as store:
        hist = store.read("user_history", list(range(1, 60)))
    users = [u for u, h in zip(hist.ids, hist.values["hist_item_id"]) if h and len(h) >= 3][:8]
    overlap = {True: 0, False: 0}
    for user in users:
        history = set(store_rows(cfg, user, [0], {})[0]["hist_item_id"])
        for flag in (True, False):
            body = call(app, "/recommend", {"user_id": user, "k": 20, "exclude_seen": flag})[1]
            overlap[flag] += len(history & {it["item_id"] for it in body["items"]})
    assert overlap[True] == 0 and overlap[False] > 0


def test_unknown_user_gets_the_popular_items_flagged_as_fallback(scenario: Scenario, app: str) -> None:
    from training.retrieval.bundle import load_retriever

    status, body, _ = call(app, "/recommend", {"user_id": 987654321, "k": 5})
    assert status == 200, body
    assert body["fallback"] == "popular"
    popular = load_retriever(Path(scenario.cfg.output_dir) / "retrieval" / "bundle").popular(
        scenario.cfg.serving.candidates).tolist()
    got = [it["item_id"] for it in body["items"]]
    assert len(got) == 5 and set(got) <= set(popular)
    assert all(it["retrieval_score"] is None and 0 < it["score"] < 1 for it in body["items"])
    # a string id that is not a key is just as unknown
    status, body, _ = call(app, "/recommend", {"user_id": "nobody", "k": 3})
    assert status == 200 and body["fallback"] == "popular" and len(body["items"]) == 3


def test_unknown_items_are_reported_per_item_and_the_rest_scored(scenario: Scenario, app: str) -> None:
    user = known_user(scenario.cfg)
    status, body, _ = call(app, "/predict", {"user_id": user, "item_ids": [4, 123456, 7, "no-such-item"]})
    assert status == 200, body
    preds = body["predictions"]
    assert [p["item_id"] for p in preds] == [4, 123456, 7, "no-such-item"]
    assert [p["status"] for p in preds] == ["ok", "unknown_item", "ok", "unknown_item"]
    assert preds[1]["score"] is None and preds[3]["score"] is None
    assert 0 < preds[0]["score"] < 1 and 0 < preds[2]["score"] < 1
    # only unknown items: still a 200 with every item reported
    status, body, _ = call(app, "/predict", {"user_id": user, "item_ids": [123456]})
    assert status == 200 and body["predictions"] == [{"item_id": 123456, "score": None, "status": "unknown_item"}]
    # an unknown user is scored with out-of-vocabulary user features, and says so
    status, body, _ = call(app, "/predict", {"user_id": 987654321, "item_ids": [4]})
    assert status == 200 and body["user_status"] == "unknown" and 0 < body["predictions"][0]["score"] < 1


def test_cached_item_inputs_equal_the_spec_transform_of_the_assembled_rows(scenario: Scenario) -> None:
    from feature_store.materialize import open_store
    from serving.features import FeatureReader, ItemInputs, assemble_rows, complete
    from training.ranking.bundle import load_bundle

    cfg = scenario.cfg
    f = cfg.features
    spec = load_bundle(Path(cfg.output_dir) / "train" / "dcnv2" / "bundle").spec
    ids: list[Any] = [4, 123456, 7, "no-such-item", 4, 9, "11"]  # unknown ids, a repeat, an id given as text
    with open_store(cfg) as store:
        reader = FeatureReader(store, f.user_key, f.item_key)
        cache = ItemInputs(spec, reader)
        user = reader.user(known_user(cfg), set(spec.raw_columns()))
        assert cache.usable(CONTEXT)
        assert {"item_id", "category", "brand", "price"} <= set(cache.item_side)
        for _ in range(2):  # the second round takes every known item from the cache
            slots, known = cache.lookup(ids)
            assert known.tolist() == [True, False, True, False, True, True, True]
            got = cache.rows(user, CONTEXT, slots[known])
            items = reader.items(ids, set(spec.raw_columns()))
            rows = assemble_rows(user, items, CONTEXT, user_key=f.user_key, item_key=f.item_key,
                                 take=np.flatnonzero(items.known))
            want = spec.transform(complete(rows, spec.raw_columns()), with_label=False)
            assert got.column_names == [x.name for x in spec.features]
            assert got.equals(want.select(got.column_names))
        assert cache.misses == 6 + 2  # 4 known + 2 unknown ids, then the 2 unknown ones again (never cached)
        assert not cache.usable({"price": 9.5})  # a context value for an item-side column: the uncached path


def test_an_item_view_the_event_stream_updates_in_place_is_read_uncached_when_the_model_reads_it(
        scenario: Scenario) -> None:
    """The stream upserts `item_popularity` rows without a new view version: item inputs cached by version would
    go stale, so a ranker that reads one of its features takes the uncached path; one that does not keeps the
    cache."""
    from types import SimpleNamespace

    from feature_store.online.base import EntityInfo
    from serving.features import ItemInputs
    from training.ranking.bundle import load_bundle

    spec = load_bundle(Path(scenario.cfg.output_dir) / "train" / "dcnv2" / "bundle").spec
    f = scenario.cfg.features

    def view(name: str, features: list[str]) -> EntityInfo:
        return EntityInfo(name, f.item_key, "int", "ts", {c: "double" for c in features}, None, 10, 0.0, 1)

    def cache(popularity: list[str]) -> ItemInputs:
        views = ([], [view("items", ["category", "brand", "price"]), view("item_popularity", popularity)])
        return ItemInputs(spec, SimpleNamespace(views=lambda: views, user_key=f.user_key, item_key=f.item_key))

    assert cache(["n_click", "trend"]).usable(CONTEXT)  # nothing the model reads: cached
    assert not cache(["n_click", "price"]).usable(CONTEXT)  # the model reads price from it: read on each request


# ------------------------------------------------------------------------------------------------ bad requests
@pytest.mark.parametrize(("path", "body", "loc"), [
    ("/recommend", {"user_id": 5, "k": 101}, ["body", "k"]),  # above serving.max_k (100)
    ("/recommend", {"user_id": 5, "k": 0}, ["body", "k"]),
    ("/recommend", {"user_id": 5, "k": "ten"}, ["body", "k"]),
    ("/recommend", {"user_id": 5.5, "k": 3}, ["body", "user_id"]),
    ("/recommend", {"k": 3}, ["body", "user_id"]),
    ("/recommend", {"user_id": 5, "k": 3, "exclude_seen": "yes"}, ["body", "exclude_seen"]),
    ("/recommend", {"user_id": 5, "k": 3, "colour": "red"}, ["body", "colour"]),
    ("/recommend", {"user_id": 5, "k": 3, "context": {"hour": {"h": 1}}}, ["body", "context", "hour"]),
    ("/recommend", {"user_id": 5, "k": 3, "context": {"weather": "rain"}}, ["body", "context", "weather"]),
    ("/predict", {"user_id": 5, "item_ids": []}, ["body", "item_ids"]),
    ("/predict", {"user_id": 5, "item_ids": list(range(51))}, ["body", "item_ids"]),  # above serving.max_items
    ("/predict", {"user_id": 5, "item_ids": [1, None]}, ["body", "item_ids", 1]),
    ("/predict", {"user_id": 5, "item_ids": "1,2"}, ["body", "item_ids"]),
    ("/predict", {"user_id": 5, "item_ids": [1], "context": {"user_id": 6}}, ["body", "context", "user_id"]),
])
def test_bad_bodies_get_422_naming_the_field(app: str, path: str, body: dict, loc: list) -> None:
    status, answer, _ = call(app, path, body)
    assert status == 422, answer
    locs = [d["loc"][: len(loc)] for d in answer["detail"]]
    assert loc in locs, answer


def test_malformed_json_gets_422_at_the_body(app: str) -> None:
    status, answer, _ = call(app, "/recommend", raw=b'{"user_id": 5, "k": ')
    assert status == 422
    assert answer["detail"][0]["loc"][0] == "body"
    assert answer["detail"][0]["type"] == "json_invalid"


# ------------------------------------------------------------------------------------------------ operations
def test_health_models_and_openapi_describe_the_running_app(scenario: Scenario, app: str) -> None:
    status, health, _ = call(app, "/healthz")
    assert status == 200 and health == {"status": "ok", "models": {
        "ranker": scenario.versions["demo-ranker"]["dcnv2"], "retriever": "1"}}
    status, models, _ = call(app, "/models")
    assert status == 200
    ranker = models["ranker"]
    assert ranker["model"] == "models:/demo-ranker@champion"
    assert ranker["run_id"] == scenario.ranker_runs["dcnv2"]
    assert ranker["last_error"] is None and ranker["loaded_at"] and ranker["last_check"]
    assert models["retriever"]["run_id"] == scenario.retriever_run
    assert models["online_store"]["item_views"] == ["item"]
    assert {"user", "user_history", "user_profile"} <= set(models["online_store"]["user_views"])
    status, spec, _ = call(app, "/openapi.json")
    assert status == 200 and {"/recommend", "/predict", "/healthz", "/models", "/admin/reload"} <= set(spec["paths"])
    k_schema = json.dumps(spec["components"]["schemas"]["RecommendRequest"]["properties"]["k"])
    assert '"maximum": 100' in k_schema


def test_admin_reload_needs_the_token(app: str) -> None:
    assert call(app, "/admin/reload", {})[0] == 401
    assert call(app, "/admin/reload", {}, headers={"X-Admin-Token": "wrong"})[0] == 401
    status, body, _ = call(app, "/admin/reload", {}, headers={"X-Admin-Token": "s3cret"})
    assert status == 200 and body["ranker"]["last_error"] is None and body["retriever"]["version"] == "1"


def test_every_state_changing_endpoint_needs_its_token(app: str) -> None:
    """This app has an admin token and no events token: event ingestion over HTTP is off (403 naming the setting),
    admin endpoints refuse a missing or wrong token (401) before looking at what they would change, and the right
    token on an experiment that was never started is a 404 naming it."""
    event = {"event_id": "t-1", "ts": 1_760_000_000, "user_id": 1, "item_id": 1, "type": "click"}
    status, body, _ = call(app, "/events", {"events": [event]}, headers={"X-Events-Token": "anything"})
    assert status == 403 and "serving.events_token" in body["detail"]
    for headers in (None, {"X-Admin-Token": "wrong"}):
        assert call(app, "/admin/experiments/ab/stop", {}, headers=headers)[0] == 401
    status, body, _ = call(app, "/admin/experiments/ab/stop", {}, headers={"X-Admin-Token": "s3cret"})
    assert status == 404 and "no experiment 'ab' was started" in body["detail"]
