"""Who may read the console: one shared token (`serving.console_token`), checked in constant time.

Why a derived cookie and no session store: the app runs several ingress replicas (and possibly several machines)
behind one proxy, and a login answered by one replica must hold on the next request answered by another. The
cookie's value is HMAC-SHA256 of a fixed label under the token: every replica computes the same value from the
setting alone, the token itself never travels back to the browser, and changing the token logs everybody out.
Scripts send `Authorization: Bearer <token>` instead of logging in.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page can make the browser send it,
which is what stops cross-site requests) and scoped to `/console`. It is not marked Secure because the app itself
speaks plain HTTP on loopback by default; put TLS in front before opening the console to other machines.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import quote

from starlette.requests import Request

COOKIE = "recforge_console"
LABEL = b"recforge console session v1"
PREFIX = "/console"
LOGIN = f"{PREFIX}/login"
_SAFE_NEXT = re.compile(r"^/console(/[A-Za-z0-9._~-]+)*/?$")


def session_value(token: str) -> str:
    """The cookie's value for `token`: HMAC-SHA256 of the fixed label, hex (never the token itself)."""
    return hmac.new(token.encode("utf-8"), LABEL, hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    """Whether `given` is the token, compared in constant time."""
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def bearer(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None without one."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def has_session(request: Request, token: str) -> bool:
    """Whether the request carries the console's cookie for `token`."""
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and hmac.compare_digest(cookie.encode("utf-8", "replace"),
                                                      session_value(token).encode("utf-8"))


def safe_next(value: str | None) -> str:
    """Where to go after the login: a console path only (never another site, never the login page itself)."""
    if value and _SAFE_NEXT.match(value) and not value.startswith(LOGIN) and \
            not {".", ".."} & set(value.split("/")):
        return value
    return PREFIX


def login_url(next_path: str) -> str:
    """The login page, remembering the page asked for."""
    return f"{LOGIN}?next={quote(safe_next(next_path), safe='/')}"
