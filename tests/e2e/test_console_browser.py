"""The console in headless Chromium against the real serving app (local Ray Serve on 127.0.0.1): tiny trained
models in a real MLflow registry with a promotion review, an experiment with live traffic through /recommend and
/events, customer segments from the real `recforge segment` job on the scenario's synthetic purchases, and a
privacy release.

Proves: a person can log in through the form and read every page; every Plotly chart draws (plotly.js served by
the app itself, no internet); the pages raise no JavaScript error (the Content-Security-Policy included); the
review linked from the registry opens. Keeps a PNG per page under test-artifacts/console/ (or
$RECFORGE_TEST_ARTIFACTS/console/) and prints each page's load time.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recforge.config import RecForgeConfig, app_settings, feature_store_config, load
from scripts.bench import browser
from serving.experiments import manage
from tests.conftest import ROOT
from tests.serving.console_fixtures import TOKEN, write_release
from tests.serving.test_app import SMALL, Scenario, build_scenario, call, start
from tests.serving.test_experiments_live import wait_for

pytestmark = pytest.mark.slow

ARMS = ("{arms: [{name: control, share: 0.5}, {name: challenger, share: 0.5, ranker: '%s'}], "
        "attribution_window_s: 600}")
EVENTS_TOKEN = "events-token-for-the-console-test"
CHARTED = {"experiments": 1, "segments": 2, "reports": 3}  # charts each page must draw at least


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    reason = browser.missing()
    if reason is not None:
        pytest.skip(f"console browser test skipped: {reason}")
    d = browser.start_browser()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, ray_local: object) -> Scenario:
    return build_scenario(tmp_path_factory.getbasetemp())


def prepare_outputs(cfg: RecForgeConfig, scenario: Scenario) -> None:
    """What the console shows beside the registry: segments from the real job, a promotion review from the real
    `promote` (of a trained ranker that is not the champion now: the scenario is shared with other tests of the
    session; forced, so that the gate's verdict on these tiny models does not matter), a privacy release."""
    from analytics.jobs import run_segments
    from recforge.config import registry_settings
    from serving.config import model_names
    from serving.registry.promote import promote
    from serving.registry.store import CHAMPION, alias_of, mlflow_client

    run_segments(feature_store_config(cfg), cfg.analytics, tracking_uri=None, scenario=cfg.name)
    settings = registry_settings(cfg)
    ranker = model_names(cfg.name, cfg.registry)[0]
    champion = alias_of(mlflow_client(settings), ranker, CHAMPION)
    version = next(v for label, v in scenario.versions[ranker].items()
                   if label in ("dcnv2", "lr") and int(v) != champion)
    promote(settings, ranker, version, force=True, reason="the console browser test's review", user="console-test")
    write_release(cfg.output_dir)


@pytest.fixture(scope="module")
def served(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RecForgeConfig, str]]:
    from serving.server import stop_app

    d = tmp_path_factory.mktemp("console-browser")
    versions = next(iter(scenario.versions.values()))
    # its own copy of the shared scenario's online store: this app's stream processor (its lease, the histories
    # and views the clicks change) must not leak into the other modules' apps on the same scenario
    src = sqlite3.connect(Path(scenario.cfg.output_dir) / "online.db")
    dst = sqlite3.connect(d / "online.db")
    src.backup(dst)
    src.close()
    dst.close()
    overrides = (f"online_store.path={d / 'online.db'}", "events.stream.serve=true", "events.bus.type=sqlite",
                 f"events.bus.path={d / 'bus.db'}",
                 f"events.log_path={d / 'log'}", "events.log_flush_s=0.5", f"experiments.store_path={d / 'exp.db'}",
                 f"experiments.reports_dir={d / 'reports'}", "experiments.poll_s=0.3", "experiments.definitions={}",
                 f"experiments.definitions.ab={ARMS % versions['lr']}", f"serving.console_token={TOKEN}",
                 f"serving.events_token={EVENTS_TOKEN}", "analytics.holdout_days=3", "analytics.churn.horizon_days=2",
                 "analytics.segments.k_max=4")
    prepare_outputs(load(ROOT / "configs" / "demo.yaml", [*SMALL, f"output_dir={scenario.cfg.output_dir}",
                                                          *overrides]), scenario)
    cfg, url = start(scenario, *overrides)
    send_traffic(cfg, url)
    yield cfg, url
    stop_app()


def send_traffic(cfg: RecForgeConfig, url: str) -> None:
    """Start the experiment, wait until every replica routes it, then users' requests and some clicks; wait until
    the offline log has them."""
    app = app_settings(cfg)
    manage.start(app, "ab")
    replicas: set[int] = set()

    def routed() -> bool:
        _, live, _ = call(url, "/experiments")
        if [(e["name"], e["ready"]) for e in live["running"]] == [("ab", True)]:
            replicas.add(live["replica_pid"])
        return len(replicas) == cfg.serving.ingress_replicas

    wait_for(routed, timeout=60)
    answers = {}
    for u in range(1, 61):
        status, body, _ = call(url, "/recommend", {"user_id": u, "k": 5})
        assert status == 200, body
        answers[u] = body
    clicks = [{"event_id": f"click-{u}", "ts": time.time(), "user_id": u, "item_id": b["items"][0]["item_id"],
               "type": "click", "exposure_id": b["exposure_id"]} for u, b in answers.items() if b["items"]][::3]
    status, body, _ = call(url, "/events", {"events": clicks}, headers={"X-Events-Token": EVENTS_TOKEN})
    assert status == 200 and body["accepted"] == len(clicks), body
    wait_for(lambda: manage.result(app, "ab")["counts"]["outcomes_by_exposure_id"] == len(clicks), timeout=60)


def test_a_person_logs_in_and_reads_every_page_with_its_charts_and_no_javascript_error(
        served: tuple[RecForgeConfig, str], driver: Any) -> None:
    _, url = served
    t0 = time.perf_counter()
    browser.login(driver, url, TOKEN)
    out = browser.artifacts_dir(ROOT)
    loads = []
    for page, path in browser.PAGES.items():
        got = browser.load_page(driver, url, page, path)
        assert not got.errors, f"{page}: JavaScript errors {got.errors}"
        assert got.title.endswith("RecForge console"), got.title
        assert got.charts >= CHARTED.get(page, 0), f"{page}: {got.charts} charts"
        assert "could not read" not in driver.page_source, page
        shot = browser.screenshot(driver, out / f"{page}.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        loads.append(got)
    driver.get(f"{url}/console/registry")
    link = driver.find_element("css selector", "a[href^='/console/reviews/']")
    link.click()
    wait_for(lambda: "Promotion review" in driver.page_source, timeout=30)
    assert not browser.browser_errors(driver)
    browser.screenshot(driver, out / "review.png")
    seconds = time.perf_counter() - t0
    print("\nconsole page loads in headless Chromium (ms; ready = load and every chart drawn):")
    for g in loads:
        print(f"  {g.page:<12} load {g.load_ms:7.0f}  charts {g.charts_ms:7.0f}  ready {g.ready_ms:7.0f}  "
              f"({g.charts} charts)")
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"  screenshots in {shown}; browser part {seconds:.1f} s")
    assert seconds < 90, f"the browser part took {seconds:.0f} s"
