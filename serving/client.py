"""`recforge query`: a small client of the recommendation API (standard library only), printing JSON.

    recforge query --port 8000 recommend --user 42 --k 10 [--context channel=app --context hour=20]
    recforge query --port 8000 predict --user 42 --items 7,19,23
    recforge query --port 8000 health | models

Exit status: 0 for a 2xx answer, 1 for an HTTP error (its JSON body is printed), 2 when nothing answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any


def request(url: str, path: str, body: Any = None, timeout: float = 30.0,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(HTTP status, decoded JSON body) of a GET (`body` None) or a JSON POST; raises OSError when nothing
    answers."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url.rstrip('/')}{path}", data=data, method="GET" if data is None else "POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def parse_id(text: str) -> int | str:
    """An id from the command line: an integer when it looks like one, else the text."""
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        return t


def parse_context(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; a value is read as JSON when it parses (20 -> 20, [1,2] -> list), else as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"recforge query: --context expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The `query` subcommand and its actions, on the `recforge` subparsers."""
    p = sub.add_parser("query", help="ask a running `recforge serve` app: recommend, predict, health, models",
                       description="Ask a running recommendation API (started by `recforge serve`); prints JSON.")
    p.add_argument("--host", default="127.0.0.1", help="server host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="server port (default 8000, serving.port)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")
    actions = p.add_subparsers(dest="action", required=True)
    rec = actions.add_parser("recommend", help="top-k items for a user")
    rec.add_argument("--user", required=True, help="user id")
    rec.add_argument("--k", type=int, default=10, help="items to return")
    rec.add_argument("--include-seen", action="store_true", help="do not leave out the user's history items")
    pred = actions.add_parser("predict", help="click probability of given items for a user")
    pred.add_argument("--user", required=True, help="user id")
    pred.add_argument("--items", required=True, help="comma-separated item ids, e.g. 7,19,23")
    for a in (rec, pred):
        a.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                       help="request-time field, e.g. --context channel=app (repeatable)")
    actions.add_parser("health", help="GET /healthz")
    actions.add_parser("models", help="GET /models: versions served, since when, last reload error")
    return p


def run(args: argparse.Namespace) -> int:
    """Send the request `args` describe, print the JSON answer; returns the exit status."""
    url = f"http://{args.host}:{args.port}"
    body: dict[str, Any] | None = None
    if args.action == "recommend":
        path = "/recommend"
        body = {"user_id": parse_id(args.user), "k": args.k, "exclude_seen": not args.include_seen}
    elif args.action == "predict":
        path = "/predict"
        body = {"user_id": parse_id(args.user), "item_ids": [parse_id(i) for i in args.items.split(",") if i.strip()]}
    else:
        path = "/healthz" if args.action == "health" else "/models"
    if body is not None and args.context:
        body["context"] = parse_context(args.context)
    try:
        status, answer = request(url, path, body, timeout=args.timeout)
    except OSError as exc:
        print(f"recforge query: nothing answers at {url} ({exc}); start it with `recforge serve --config ...`",
              file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2))
    return 0 if 200 <= status < 300 else 1
