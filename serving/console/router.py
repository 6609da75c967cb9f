"""The console's routes under `/console`, mounted on every ingress replica's FastAPI app (serving.app.build_api).

Read-only by construction: every route is a GET except the login form's POST, and no route takes a path from
the request: review and experiment reports are served by name from a listing of what exists (an unknown name,
`../` included, is a 404). No page holds row-level data (see serving.console.data).

Off unless `serving.console_token` is set: then every /console URL answers 404 naming the setting. On: a request
needs the session cookie (set by the login form, see serving.console.auth) or `Authorization: Bearer <token>`;
without either it is sent (303) to the login page, which sends it back to the page asked for. The static scripts
(plotly.js, the console's own) are behind the same check.

Pages are built in a worker thread (`anyio.to_thread`): the experiment analysis reads the whole event log and may
take a second, and this replica's event loop must keep answering /recommend meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

from anyio import to_thread
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from serving.console import data, pages
from serving.console.auth import (
    COOKIE,
    LOGIN,
    PREFIX,
    bearer,
    has_session,
    login_url,
    safe_next,
    session_value,
    token_matches,
)
from serving.console.settings import ConsoleSettings

OFF = "the console is off: set serving.console_token"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
MAX_LOGIN_BYTES = 8192
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
STATIC_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=86400"}


def plotly_js() -> Path:
    """plotly.js as bundled in the plotly package (the version its figures' JSON is written for)."""
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


def console_js() -> Path:
    return Path(str(resources.files("serving.console") / "static" / "console.js"))


def mount_console(api: FastAPI, settings: ConsoleSettings | None) -> None:
    """Add the console's routes to `api`; without settings (no token) every /console URL answers 404."""
    if settings is None:
        async def off(request: Request) -> JSONResponse:
            return JSONResponse({"detail": OFF}, status_code=404)

        api.add_api_route(PREFIX, off, methods=METHODS, include_in_schema=False)
        api.add_api_route(f"{PREFIX}/{{rest:path}}", off, methods=METHODS, include_in_schema=False)
        return
    api.include_router(console_router(settings))


def console_router(s: ConsoleSettings) -> APIRouter:
    """The console's routes for one scenario's settings."""
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    def denied(request: Request) -> Response | None:
        """None when the request may read the console; else its answer (401 for a wrong bearer token, else a 303
        to the login page)."""
        given = bearer(request)
        if given is not None:
            if token_matches(given, s.token):
                return None
            return JSONResponse({"detail": "wrong console token in the Authorization header (serving.console_token)"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if has_session(request, s.token):
            return None
        return RedirectResponse(login_url(request.url.path), status_code=303)

    async def page(request: Request, build: Callable[[ConsoleSettings], str]) -> Response:
        refused = denied(request)
        if refused is not None:
            return refused
        html = await to_thread.run_sync(build, s)
        return HTMLResponse(html, headers=HEADERS)

    @router.get(f"{LOGIN.removeprefix(PREFIX)}")
    async def login_form(request: Request) -> Response:
        html = await to_thread.run_sync(pages.login, s, safe_next(request.query_params.get("next")))
        return HTMLResponse(html, headers=HEADERS)

    @router.post(f"{LOGIN.removeprefix(PREFIX)}")
    async def login(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_LOGIN_BYTES:
            return JSONResponse({"detail": "the login form is larger than a token can be"}, status_code=413)
        try:
            form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
        except ValueError:
            form = {}
        given = (form.get("token") or [""])[0]
        next_path = safe_next((form.get("next") or [None])[0])
        if given and token_matches(given, s.token):
            answer = RedirectResponse(next_path, status_code=303)
            answer.set_cookie(COOKIE, session_value(s.token), httponly=True, samesite="strict", path=PREFIX)
            return answer
        message = ("wrong token: enter serving.console_token of this server" if given else
                   "enter the console token (serving.console_token)")
        html = await to_thread.run_sync(pages.login, s, next_path, message)
        return HTMLResponse(html, status_code=401, headers=HEADERS)

    @router.get("/logout")
    async def logout() -> Response:
        answer = RedirectResponse(LOGIN, status_code=303)
        answer.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return answer

    @router.get("")
    async def overview(request: Request) -> Response:
        return await page(request, pages.overview)

    @router.get("/registry")
    async def registry(request: Request) -> Response:
        return await page(request, pages.registry)

    @router.get("/experiments")
    async def experiments(request: Request) -> Response:
        return await page(request, pages.experiments)

    @router.get("/segments")
    async def segments(request: Request) -> Response:
        return await page(request, pages.segments)

    @router.get("/reports")
    async def reports(request: Request) -> Response:
        return await page(request, pages.reports)

    async def listed(request: Request, listing: Callable[[ConsoleSettings], dict[str, Path]], name: str,
                     what: str) -> Response:
        """The HTML file `name` of `listing` (a name, never a path: anything else is a 404)."""
        refused = denied(request)
        if refused is not None:
            return refused
        found = (await to_thread.run_sync(listing, s)).get(name)
        if found is None:
            return JSONResponse({"detail": f"no such {what}: the console's pages link every one there is"},
                                status_code=404)
        html = await to_thread.run_sync(found.read_text)
        # a report names no icon: without one the browser asks the API for /favicon.ico (a 404 in its console)
        return HTMLResponse(html.replace("<head>", "<head><link rel='icon' href='data:,'>", 1), headers=HEADERS)

    @router.get("/reviews/{name}")
    async def review(request: Request, name: str) -> Response:
        """A promotion review (`<output_dir>/reviews/<name>/review.html`), by its folder name."""
        return await listed(request, data.review_files, name, "review")

    @router.get("/experiment-reports/{name}")
    async def experiment_report(request: Request, name: str) -> Response:
        """An experiment's latest report (`<experiments.reports_dir>/<name>/report.html`), by experiment name."""
        return await listed(request, data.experiment_reports, name, "experiment report")

    @router.get("/static/plotly.min.js")
    async def plotly(request: Request) -> Response:
        return denied(request) or FileResponse(plotly_js(), media_type="text/javascript", headers=STATIC_HEADERS)

    @router.get("/static/console.js")
    async def script(request: Request) -> Response:
        return denied(request) or FileResponse(console_js(), media_type="text/javascript", headers=STATIC_HEADERS)

    return router
