"""The marketers' console over HTTP (FastAPI's TestClient on the app `build_api` builds from a scenario config,
without Ray: the console's routes need no model), on fixture outputs in the formats their commands write: a real
MLflow registry in SQLite, a review folder, an experiment with logged traffic, a `recforge segment` output and a
privacy release.

Proves: the console is off (404 naming the setting) without `serving.console_token`; a wrong token gets 401 and
no cookie; the right one a derived HttpOnly / SameSite=Strict cookie scoped to /console and a 303 back to the page
asked for; without a session every page and script redirects to the login; a Bearer header works, a wrong one is
401; reviews are served by name from the listing only (crafted names are 404); the token, and the row-level values
planted in the outputs, appear on no page; empty outputs give the sentence naming the command; the pages show the
fixture data; pages are built off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from recforge.config import RecForgeConfig, app_settings, load, tracking_uri
from serving.app import api_settings, build_api
from tests.conftest import ROOT
from tests.serving.console_fixtures import (
    RELEASE,
    SECRET_CUSTOMER,
    TOKEN,
    write_experiment_traffic,
    write_release,
    write_review,
    write_segments,
)

PAGES = ("/console", "/console/registry", "/console/experiments", "/console/segments", "/console/reports")
ARMS = "{arms: [{name: control, share: 0.5}, {name: challenger, share: 0.5, ranker: '2'}], attribution_window_s: 600}"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def config(out: Path, *overrides: str) -> RecForgeConfig:
    return load(ROOT / "configs" / "demo.yaml", [f"output_dir={out}", *overrides], models=False)


def client_for(cfg: RecForgeConfig) -> TestClient:
    """The app's FastAPI (the same `build_api` every ingress replica serves) without the ingress's models."""
    return TestClient(build_api(SimpleNamespace(s=api_settings(app_settings(cfg)))))  # type: ignore[arg-type]


def register_models(cfg: RecForgeConfig) -> None:
    """demo-ranker v1 (champion, reviewed: metrics and gate in its tags) and v2 (challenger, test metrics in its
    run only), in the scenario's own MLflow store."""
    import mlflow

    uri = tracking_uri(cfg)
    c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = c.create_experiment("demo")
    run = c.create_run(exp)
    c.log_metric(run.info.run_id, "test/auc", 0.7123)
    c.log_metric(run.info.run_id, "train/loss", 0.5)
    c.set_terminated(run.info.run_id)
    source = Path(cfg.output_dir) / "bundle"
    source.mkdir(parents=True, exist_ok=True)
    c.create_registered_model("demo-ranker", tags={"recforge.kind": "ranker"})
    c.create_model_version("demo-ranker", source.as_uri(), tags={
        "metric.test/auc": "0.7042", "gate.auc": "0.7040", "recforge.decision": "accepted",
        "recforge.decision.user": "alice"})
    c.create_model_version("demo-ranker", source.as_uri(), run_id=run.info.run_id)
    c.set_registered_model_alias("demo-ranker", "champion", "1")
    c.set_registered_model_alias("demo-ranker", "challenger", "2")
    c.create_registered_model("another-scenario-ranker")  # same store, not this scenario's


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """A scenario with every output the console reads."""
    out = tmp_path_factory.mktemp("console-full")
    cfg = config(out, f"serving.console_token={TOKEN}", f"experiments.definitions.ab={ARMS}",
                 f"experiments.definitions.later={ARMS}",
                 "experiments.definitions.later.traffic.offset=0.5",
                 "experiments.definitions.later.traffic.share=0.5",
                 "experiments.definitions.ab.traffic.share=0.5")
    register_models(cfg)
    write_review(out, "demo-ranker", 1)
    (out / "reviews" / "notes").mkdir()
    (out / "reviews" / "notes" / "review.html").write_text("not a review folder")
    (out / "secret.html").write_text(f"outside the listing {TOKEN}")
    write_experiment_traffic(app_settings(cfg), "ab")
    write_segments(out / "analytics")
    write_release(out)
    (out / "privacy" / "releases" / "broken.json").write_text(json.dumps({"kind": "privacy_release"}))
    with client_for(cfg) as client:
        yield client, out


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """A scenario with the console on and nothing written yet."""
    out = tmp_path_factory.mktemp("console-empty")
    with client_for(config(out, f"serving.console_token={TOKEN}", "experiments.definitions={}")) as client:
        yield client, out


def logged_in(client: TestClient) -> TestClient:
    answer = client.post("/console/login", data={"token": TOKEN, "next": "/console"}, follow_redirects=False)
    assert answer.status_code == 303
    return client


def test_the_console_is_off_without_a_token(tmp_path: Path) -> None:
    with client_for(config(tmp_path)) as client:
        for method, path in [("GET", p) for p in (*PAGES, "/console/login", "/console/static/plotly.min.js",
                                                   "/console/reviews/x")] + [("POST", "/console/login")]:
            answer = client.request(method, path, headers=BEARER, follow_redirects=False)
            assert answer.status_code == 404, (method, path)
            assert answer.json() == {"detail": "the console is off: set serving.console_token"}
        assert "/console" not in json.dumps(client.get("/openapi.json").json()["paths"])
    assert not (tmp_path / "mlflow.db").exists()


def test_a_wrong_token_gets_401_with_the_login_page_and_no_cookie(empty: tuple[TestClient, Path]) -> None:
    client = TestClient(empty[0].app)
    for form in ({"token": "not-the-token-at-all", "next": "/console/registry"}, {"token": ""}, {}):
        answer = client.post("/console/login", data=form, follow_redirects=False)
        assert answer.status_code == 401
        assert "set-cookie" not in answer.headers
        assert "<form" in answer.text and ("wrong token" in answer.text or "enter the console token" in answer.text)
        assert "not-the-token-at-all" not in answer.text
    assert client.get("/console", follow_redirects=False).status_code == 303


def test_the_right_token_sets_a_derived_session_cookie_and_returns_to_the_page_asked_for(
        empty: tuple[TestClient, Path]) -> None:
    client = TestClient(empty[0].app)
    asked = client.get("/console/segments", follow_redirects=False)
    assert asked.status_code == 303 and asked.headers["location"] == "/console/login?next=/console/segments"
    form = client.get(asked.headers["location"])
    assert form.status_code == 200 and "name='next' value='/console/segments'" in form.text
    answer = client.post("/console/login", data={"token": TOKEN, "next": "/console/segments"},
                         follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/segments"
    cookie = answer.headers["set-cookie"]
    expected = hmac.new(TOKEN.encode(), b"recforge console session v1", hashlib.sha256).hexdigest()
    assert cookie.startswith(f"recforge_console={expected};") and TOKEN not in cookie
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/console"} <= attributes
    for page in PAGES:
        assert client.get(page, follow_redirects=False).status_code == 200, page
    assert client.get("/console/static/plotly.min.js").status_code == 200
    client.get("/console/logout")
    assert client.get("/console", follow_redirects=False).status_code == 303


def test_after_login_the_next_page_stays_inside_the_console(empty: tuple[TestClient, Path]) -> None:
    client = TestClient(empty[0].app)
    for target in ("https://elsewhere.example/", "//elsewhere.example/console", "/console/../admin/reload",
                   "/console/login", "javascript:alert(1)"):
        answer = client.post("/console/login", data={"token": TOKEN, "next": target}, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/console", target


def test_without_a_session_every_page_and_script_redirects_to_the_login(full: tuple[TestClient, Path]) -> None:
    client = TestClient(full[0].app)
    review = next(p.name for p in (full[1] / "reviews").iterdir() if p.name.startswith("demo-ranker"))
    for path in (*PAGES, "/console/static/plotly.min.js", "/console/static/console.js",
                 f"/console/reviews/{review}"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/console/login?next=/console"), path
    forged = client.get("/console", cookies={"recforge_console": TOKEN}, follow_redirects=False)
    assert forged.status_code == 303  # the token itself is not the session value


def test_a_bearer_token_reads_every_page_and_a_wrong_one_is_refused(full: tuple[TestClient, Path]) -> None:
    client = TestClient(full[0].app)
    for page in (*PAGES, "/console/static/console.js"):
        assert client.get(page, headers=BEARER).status_code == 200, page
        wrong = client.get(page, headers={"Authorization": "Bearer nope"}, follow_redirects=False)
        assert wrong.status_code == 401 and "nope" not in wrong.text, page
    assert client.post("/console/registry", headers=BEARER).status_code == 405  # read-only: GET only


def test_reviews_are_served_by_name_from_the_listing_only(full: tuple[TestClient, Path]) -> None:
    client, out = full
    name = next(p.name for p in (out / "reviews").iterdir() if p.name.startswith("demo-ranker"))
    answer = client.get(f"/console/reviews/{name}", headers=BEARER)
    assert answer.status_code == 200 and "Promotion review: demo-ranker v1" in answer.text
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    for crafted in ("..%2Fsecret.html", "..%2F..%2F..%2Fetc%2Fpasswd", "%2E%2E", "notes", "%2E%2E%2Fsecret.html",
                    f"{name}%2F..%2F..%2Fsecret.html", f"{name}%2Freview.json", "demo-ranker-v9-20250102-100000-0"):
        refused = client.get(f"/console/reviews/{crafted}", headers=BEARER)
        assert refused.status_code == 404, crafted
        assert "outside the listing" not in refused.text and "not a review folder" not in refused.text
    assert client.get("/console/experiment-reports/..%2Fsecret.html", headers=BEARER).status_code == 404


def test_no_page_shows_the_token_or_row_level_data(full: tuple[TestClient, Path]) -> None:
    client = TestClient(full[0].app)
    logged_in(client)
    for page in (*PAGES, "/console/login"):
        text = client.get(page).text
        assert TOKEN not in text, page
        assert SECRET_CUSTOMER not in text, page
        assert "exp-1" not in text and "click-1" not in text, page  # exposure and event ids of the log
    failed = client.post("/console/login", data={"token": TOKEN + "x"})
    assert TOKEN not in failed.text


def test_every_page_says_which_command_produces_what_is_missing(empty: tuple[TestClient, Path]) -> None:
    client, out = empty
    expected = {
        "/console/registry": "no models registered yet: run <code>recforge register -c CONFIG --kind ranker</code>",
        "/console/experiments": "no experiments yet: define one under <code>experiments.definitions</code>",
        "/console/segments": "no segments yet: run <code>recforge segment -c CONFIG</code>",
        "/console/reports": "no privacy releases yet: run <code>recforge report -c CONFIG</code>",
    }
    overview = client.get("/console", headers=BEARER)
    assert overview.status_code == 200
    for page, sentence in expected.items():
        answer = client.get(page, headers=BEARER)
        assert answer.status_code == 200, page
        assert sentence in answer.text, page
        assert sentence in overview.text, page
    assert not (out / "mlflow.db").exists() and not (out / "experiments.db").exists()  # reading wrote nothing


def test_the_registry_page_shows_the_scenarios_versions_aliases_metrics_and_reviews(
        full: tuple[TestClient, Path]) -> None:
    text = full[0].get("/console/registry", headers=BEARER).text
    assert "demo-ranker" in text and "another-scenario-ranker" not in text
    assert "<b>champion</b> → v1" in text and "<b>challenger</b> → v2" in text
    assert "test/auc = 0.7042" in text  # v1: from the version's tags
    assert "test/auc = 0.7123" in text and "train/loss" not in text  # v2: its run's test metrics
    assert "gate.auc" not in text and "<td>auc = 0.7040<br></td>" in text  # the gate column
    assert "accepted</span> by alice" in text and "not reviewed" in text
    assert "href='/console/reviews/demo-ranker-v1-20250102-100000-000001'" in text


def test_the_experiments_page_shows_arms_metrics_tests_srm_decision_and_a_chart(
        full: tuple[TestClient, Path]) -> None:
    text = full[0].get("/console/experiments", headers=BEARER).text
    assert "id='experiment-ab'" in text and "id='experiment-later'" in text
    assert "not started: run <code>recforge experiment start later -c CONFIG</code>" in text
    assert "control (control)" in text and "challenger" in text
    assert "Decision: no significant difference on ctr yet" in text
    assert "Sample ratio: <span class='ok'>ok</span>" in text
    assert "always-valid interval" in text
    figure = chart_figures(text)
    assert len(figure) == 1
    names = [t.get("name") for t in figure[0]["data"]]
    assert names.count("control") == 1 and names.count("challenger") == 1
    assert "/console/static/plotly.min.js" in text


def test_the_segments_page_shows_the_latest_segments_and_their_chart(full: tuple[TestClient, Path]) -> None:
    text = full[0].get("/console/segments", headers=BEARER).text
    for name in ("Champions", "Loyal", "Hibernating"):
        assert name in text
    assert "400 customers in 3 segments" in text and "Kruskal-Wallis p = 0.0000" in text
    figs = chart_figures(text)
    sizes = next(f for f in figs if "Customers and revenue" in f["layout"]["title"]["text"])
    assert [t["name"] for t in sizes["data"]] == ["customers", "revenue"]
    assert values(sizes["data"][0]["y"]) == [120, 160, 120]


def test_the_reports_page_shows_releases_with_suppressed_cells_error_bars_and_the_budget(
        full: tuple[TestClient, Path]) -> None:
    text = full[0].get("/console/reports", headers=BEARER).text
    assert "revenue by region" in text and "rel-2025-01-02-revenue" in text
    assert "suppressed (under k)" in text and "suppressed (complementary)" in text
    assert "2 of 5 rows suppressed" in text
    assert "<td class='num'>1e-06</td>" in text  # the budget's delta total, not rounded away
    assert "<tr><th>region</th><th>people</th><th>people_ci95</th><th>revenue</th><th>revenue_ci95</th></tr>" in text
    assert "<tr class='margin'><td class=''>(all)</td>" in text
    assert "broken.json: not a privacy release in the documented format" in text
    figs = chart_figures(text)
    revenue = next(f for f in figs if f["layout"]["title"]["text"].startswith("revenue per group"))
    bar = revenue["data"][0]
    assert values(bar["x"]) == ["north", "west"]  # suppressed and margin rows are not charted
    assert values(bar["error_y"]["array"]) == [210.0, 180.0]
    assert "2 suppressed groups not shown" in revenue["layout"]["title"]["text"]
    budget = next(f for f in figs if f["layout"]["title"]["text"] == "Privacy budget per data set")
    assert [values(t["y"]) for t in budget["data"]] == [[1.0], [2.0]]


def test_damaged_outputs_are_named_on_their_page_not_an_error_page(tmp_path: Path) -> None:
    (tmp_path / "analytics" / "segments").mkdir(parents=True)
    (tmp_path / "analytics" / "segments" / "report.json").write_text("{not json")
    releases = tmp_path / "privacy" / "releases"
    releases.mkdir(parents=True)
    (releases / "odd.json").write_text(json.dumps({**RELEASE, "id": "odd", "rows": [{"region": "x", "people": 1e300,
                                                                                    "suppressed": False}]}))
    (releases / "truncated.json").write_text(json.dumps(RELEASE)[:200])
    with client_for(config(tmp_path, f"serving.console_token={TOKEN}")) as client:
        segments = client.get("/console/segments", headers=BEARER)
        assert segments.status_code == 200 and "could not read: JSONDecodeError" in segments.text
        reports = client.get("/console/reports", headers=BEARER)
        assert reports.status_code == 200
        assert "truncated.json: not a privacy release in the documented format" in reports.text
        assert "id='release-odd'" in reports.text and ">1e+300</td>" in reports.text  # shown, not cast to int


def test_pages_are_built_off_the_event_loop(full: tuple[TestClient, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.console import pages

    seen: list[bool] = []

    def build(s: Any) -> str:
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:  # no event loop in this thread: a worker thread
            seen.append(False)
        return "<p>built</p>"

    monkeypatch.setattr(pages, "experiments", build)
    assert full[0].get("/console/experiments", headers=BEARER).text == "<p>built</p>"
    assert seen == [False]


def values(array: Any) -> list[Any]:
    """A figure's array as a list: Plotly writes numeric arrays as base64 typed arrays ({dtype, bdata})."""
    if isinstance(array, dict):
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def chart_figures(html: str) -> list[dict[str, Any]]:
    """The Plotly figures a page embeds (each `.console-chart`'s data-figure attribute)."""
    import html as html_module
    import re

    return [json.loads(html_module.unescape(m)) for m in re.findall(r"data-figure='([^']*)'", html)]


def test_the_experiments_page_analyses_again_only_when_the_log_or_the_state_changed(
        full: tuple[TestClient, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each analysis reads the whole offline log: reloading the page while nothing arrived reuses it, a new log file
    computes it afresh."""
    import shutil

    from serving.console import data
    from serving.experiments import manage

    client, out = full
    calls: list[str] = []
    real = manage.result
    monkeypatch.setattr(manage, "result", lambda app, name, **kw: calls.append(name) or real(app, name, **kw))
    data._RESULTS.clear()
    page = logged_in(client)
    assert page.get("/console/experiments").status_code == 200
    first = len(calls)
    assert first >= 1
    assert page.get("/console/experiments").status_code == 200
    assert len(calls) == first  # nothing new: the cached analyses
    part = next((out / "events").rglob("*.parquet"))
    shutil.copy(part, part.with_name("part-9-9.parquet"))  # the log grew
    assert page.get("/console/experiments").status_code == 200
    assert len(calls) == 2 * first
