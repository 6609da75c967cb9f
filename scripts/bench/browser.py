"""The console in a real browser: headless Chromium driven by selenium 4, shared by the browser test
(tests/e2e/test_console_browser.py) and the benchmark (scripts.bench.console), so both measure the same thing.

Why here and not in `serving`: the serving app must not depend on selenium or a browser; this is a client of it.

Chromium and its driver are the Debian packages `chromium` and `chromium-driver` (`make install` adds them where
apt runs as root); selenium is pointed at them, so selenium-manager never downloads anything.

What a page load is (`load_page`): a navigation to the page, until every Plotly chart on it has drawn (each
`.console-chart` is a `.js-plotly-plot` with a `.main-svg`). Reported: `load_ms`, Navigation Timing's
`loadEventEnd` (HTML, scripts, styles; ms from the navigation's start), `charts_ms`, when console.js saw its last
chart drawn (the same clock; the load time where a page has no chart), and `ready_ms`, the later of the two: what
a reader waits for.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = (Path("/usr/bin/chromium"), Path("/usr/bin/chromium-browser"))
PAGES = {"overview": "/console", "registry": "/console/registry", "experiments": "/console/experiments",
         "segments": "/console/segments", "reports": "/console/reports"}
WINDOW = (1366, 1000)
SCREENSHOT_MAX_HEIGHT = 8000
READY_JS = """
if (document.readyState !== "complete") { return false; }
const charts = Array.from(document.querySelectorAll(".console-chart"));
return charts.every(c => c.classList.contains("js-plotly-plot") && c.querySelector(".main-svg") !== null);
"""
TIMING_JS = """
const nav = performance.getEntriesByType("navigation")[0];
const drawn = document.body.getAttribute("data-charts-rendered");
return {load: nav ? nav.loadEventEnd : null, charts: drawn === null ? null : Number(drawn),
        count: document.querySelectorAll(".console-chart").length, title: document.title};
"""


def chromium() -> Path | None:
    """The Chromium binary, or None."""
    return next((p for p in CHROMIUM if p.is_file()), None)


def missing() -> str | None:
    """Why a browser cannot be driven here (None: it can), naming the fix."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed in this environment: run `make install`"
    if chromium() is None or not CHROMEDRIVER.is_file():
        return ("headless Chromium is not installed (Debian packages chromium and chromium-driver at /usr/bin): run "
                "`make install` as root where apt is available")
    return None


def start_browser(window: tuple[int, int] = WINDOW) -> Any:
    """Headless Chromium at a fixed window size, keeping the page's console messages for `browser_errors`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium())
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", f"--window-size={window[0]},{window[1]}", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_window_size(*window)
    return driver


def login(driver: Any, base_url: str, token: str, timeout: float = 30.0) -> None:
    """Log in through the form, as a person would: open a page, get sent to the login, type the token, submit,
    land back on the page."""
    from urllib.parse import urlsplit

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base_url}/console")
    WebDriverWait(driver, timeout).until(lambda d: urlsplit(d.current_url).path == "/console/login")
    form = driver.find_element(By.CSS_SELECTOR, "form.login")
    driver.find_element(By.NAME, "token").send_keys(token)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    # the login page's own URL (`/console/login?next=/console`) ends like the target: wait for the form's page to
    # be replaced (the answer to the POST: the redirect to the console, or the login page again with its message)
    WebDriverWait(driver, timeout).until(expected_conditions.staleness_of(form))
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.readyState") == "complete")
    if urlsplit(driver.current_url).path.rstrip("/") != "/console" or "Console login" in driver.title:
        raise AssertionError(f"the login form did not accept the token (at {driver.current_url}: "
                             f"{driver.title!r})")


def browser_errors(driver: Any) -> list[str]:
    """The page's JavaScript errors since the last call (the browser log's SEVERE entries)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


@dataclass
class PageLoad:
    """One page load as `load_page` measured it."""

    page: str
    load_ms: float
    charts_ms: float
    charts: int
    title: str
    errors: list[str] = field(default_factory=list)

    @property
    def ready_ms(self) -> float:
        return max(self.load_ms, self.charts_ms)


def load_page(driver: Any, base_url: str, page: str, path: str, timeout: float = 60.0) -> PageLoad:
    """Navigate to `path` and wait until every chart has drawn; its timings and JavaScript errors."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser_errors(driver)  # drop what earlier pages left
    driver.get(f"{base_url}{path}")
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(READY_JS))
    t = driver.execute_script(TIMING_JS)
    load = float(t["load"] or 0.0)
    return PageLoad(page, load, float(t["charts"]) if t["charts"] is not None else load, int(t["count"]),
                    str(t["title"]), browser_errors(driver))


def screenshot(driver: Any, path: Path, window: tuple[int, int] = WINDOW) -> Path:
    """A PNG of the whole page (the window stretched to the page's height for the shot, then restored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    page, chrome = driver.execute_script("return [document.documentElement.scrollHeight, "
                                         "window.outerHeight - window.innerHeight]")
    driver.set_window_size(window[0], min(max(int(page) + int(chrome), window[1]), SCREENSHOT_MAX_HEIGHT))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(*window)
    return path


def artifacts_dir(repo: Path) -> Path:
    """Where the browser test keeps its screenshots: $RECFORGE_TEST_ARTIFACTS, else `test-artifacts/` at the
    repository root; `console/` inside it."""
    return Path(os.environ.get("RECFORGE_TEST_ARTIFACTS") or repo / "test-artifacts") / "console"


def chromium_version() -> str:
    """`Chromium 1xx...` for a report's Machine line."""
    import subprocess

    exe = chromium()
    if exe is None or shutil.which(str(exe)) is None:
        return "absent"
    try:
        return subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
