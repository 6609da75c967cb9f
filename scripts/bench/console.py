"""The console's page loads in headless Chromium, against a running demo server: how long a marketer waits for each
page, charts drawn.

Measured with the browser test's own code (scripts/bench/browser.py): one login through the form, then `--loads`
navigations to each page; a load lasts until every Plotly chart on the page has drawn. Reported per page: the
first load (plotly.js not in the browser's cache yet), then the median and p95 of the time until the page is ready
(the later of Navigation Timing's loadEventEnd and the last chart drawn), and the medians of each of the two.

    make demo                                     # the demo's models, registry and outputs (configs/demo.yaml)
    export RECFORGE_CONSOLE_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(24))")
    .venv/bin/recforge serve -c configs/demo.yaml --set serving.console_token=$RECFORGE_CONSOLE_TOKEN --detach
    .venv/bin/python -m scripts.bench.console --loads 20   # writes its section of docs/benchmarks.md
    .venv/bin/recforge serve --stop

The token is read from $RECFORGE_CONSOLE_TOKEN only (never an argument: the section quotes the command line).
What the pages hold depends on what the demo has run (`recforge segment`, `recforge experiment start`, `recforge
report`): the section lists the charts each page drew.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np

from scripts.bench import browser
from scripts.bench.common import command, load_text, logger, machine, machine_text, now
from scripts.bench.doc import emit

log = logger("console")
NAME = "bench_console"


def server_url(config: str) -> str:
    """http://serving.host:serving.port of the config (the demo's: 127.0.0.1:8000)."""
    from recforge.config import load

    cfg = load(config, models=False)
    return f"http://{cfg.serving.host}:{cfg.serving.port}"


def check_server(url: str, token: str) -> None:
    """Fail with what to do when nothing answers or the console is off or refuses the token."""
    request = urllib.request.Request(f"{url}/console", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"console: {url}/console answered {exc.code}: start the server with "
                         f"--set serving.console_token=$RECFORGE_CONSOLE_TOKEN (the same token)") from None
    except OSError as exc:
        raise SystemExit(f"console: nothing answers at {url} ({exc}); start the demo's server first (see "
                         f"`python -m scripts.bench.console --help`)") from None


def measure(url: str, token: str, loads: int) -> dict[str, dict[str, Any]]:
    """Per page: the first load and `loads` more, each until every chart has drawn."""
    driver = browser.start_browser()
    try:
        browser.login(driver, url, token)
        out: dict[str, dict[str, Any]] = {}
        for page, path in browser.PAGES.items():
            log(f"{page}: {loads + 1} loads")
            first = browser.load_page(driver, url, page, path)
            runs = [browser.load_page(driver, url, page, path) for _ in range(loads)]
            errors = sorted({e for r in [first, *runs] for e in r.errors})
            ready = np.array([r.ready_ms for r in runs])
            out[page] = {"charts": first.charts, "first_ms": first.ready_ms,
                         "p50_ms": float(np.percentile(ready, 50)), "p95_ms": float(np.percentile(ready, 95)),
                         "load_p50_ms": statistics.median(r.load_ms for r in runs),
                         "charts_p50_ms": statistics.median(r.charts_ms for r in runs), "errors": errors}
        return out
    finally:
        driver.quit()


def section(m: dict[str, Any], rows: dict[str, dict[str, Any]], url: str, loads: int, argv: Sequence[str] | None,
            chromium: str) -> str:
    lines = ["## Console page loads (scripts.bench.console)", "",
             f"- Command: `{command('scripts.bench.console', argv)}` ({now()})",
             f"- Machine: {machine_text(m)}; {chromium}; {load_text(m)}",
             f"- Server: the demo (configs/demo.yaml) served by `recforge serve` at {url}, on the same machine; "
             f"headless Chromium {browser.WINDOW[0]}x{browser.WINDOW[1]}, one login, then per page one first load "
             f"and {loads} more. Ready = the later of loadEventEnd (Navigation Timing) and the last Plotly chart "
             f"drawn; ms from the navigation's start.", "",
             "| page | charts | first load ms | ready p50 ms | ready p95 ms | loadEventEnd p50 ms "
             "| charts drawn p50 ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for page, r in rows.items():
        lines.append(f"| {page} | {r['charts']} | {r['first_ms']:.0f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                     f"{r['load_p50_ms']:.0f} | {r['charts_p50_ms']:.0f} |")
    errors = {p: r["errors"] for p, r in rows.items() if r["errors"]}
    lines += ["", "JavaScript errors: " + ("none." if not errors else
                                            "; ".join(f"{p}: {', '.join(e)}" for p, e in errors.items()))]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config", default="configs/demo.yaml", help="the served scenario (its serving.host:port)")
    p.add_argument("--url", default=None, help="the server (default: the config's serving.host:serving.port)")
    p.add_argument("--loads", type=int, default=20, help="loads per page after the first (default 20)")
    p.add_argument("--no-doc", action="store_true", help="print the section only")
    args = p.parse_args(argv)
    reason = browser.missing()
    if reason is not None:
        raise SystemExit(f"console: {reason}")
    token = os.environ.get("RECFORGE_CONSOLE_TOKEN")
    if not token:
        raise SystemExit("console: set RECFORGE_CONSOLE_TOKEN to the server's serving.console_token")
    url = (args.url or server_url(args.config)).rstrip("/")
    m = machine("plotly", "selenium")
    check_server(url, token)
    t0 = time.perf_counter()
    rows = measure(url, token, args.loads)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    emit(NAME, section(m, rows, url, args.loads, argv, browser.chromium_version()), write=not args.no_doc)


if __name__ == "__main__":
    main()
