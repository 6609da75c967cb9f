"""The HTTP edge of a local Ray Serve: HAProxy as RecForge runs it.

Ray Serve renders HAProxy's configuration from a fixed template whose defaults suit a cluster behind another load
balancer, not a service facing clients directly: `timeout client 3600s` and no `timeout http-request`, so a client
that sends headers and part of a body holds its connection (and, once forwarded, a replica's request slot) for an
hour (about 128 such connections blocked every other request on 2 replicas x 64 ongoing requests); no body size
limit; the stats page and the Prometheus exporter bound on every interface. The template takes none of these as
settings, so RecForge points Ray at a small launcher (`install_launcher`, set up by `feature_store.raycluster`
before Ray starts) that rewrites each configuration Ray writes (`harden`) and then becomes the real HAProxy
(exec, same pid, so Ray's process handling and graceful reloads are unchanged). What it sets:

- `timeout http-request` (headers and, with `option http-buffer-request`, the body: HAProxy waits for the whole
  body before it forwards a request, so a slow client occupies one HAProxy connection, never a replica); its
  buffer (`tune.bufsize`, 16 KiB in Ray's template) is raised to hold the largest body allowed plus headers, so
  "whole" holds for every accepted request (a held request costs that much memory: 272 KiB by default);
- `timeout client` (client inactivity) and `timeout http-keep-alive` (an idle kept-alive connection);
- a 413 for a declared body above `max_body_bytes` (a chunked body is counted by the app itself);
- the stats page and metrics exporter on `stats_host` (loopback unless configured otherwise).

The values come from `serving.limits` and `serving.stats_host`: `serving.server.start_app` writes them next to the
launcher (`write_limits`) before Serve starts, and every HAProxy start or reload reads them again. This module lives
below `serving` because the launcher must be in place before the first local Ray starts, which may be a data stage's.
It imports only the standard library: the launcher runs it at every HAProxy start.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

LIMITS_FILE = "edge-limits.json"
LAUNCHER = "haproxy"
WILDCARD_HOSTS = ("", "*", "0.0.0.0", "::", "[::]")
STATS_SECTIONS = ("frontend prometheus", "listen stats")
HTTP_FRONTEND = "frontend http_frontend"
HEADER_ROOM = 16 << 10  # bytes of a buffer left for request headers beside the largest body


@dataclass(frozen=True)
class EdgeLimits:
    """What HAProxy enforces in front of the app (seconds and bytes; see the module docstring)."""

    header_timeout_s: int = 10
    client_timeout_s: int = 30
    keepalive_timeout_s: int = 10
    max_body_bytes: int = 256 << 10
    stats_host: str = "127.0.0.1"


def _json_string(s: str) -> str:
    """`s` as a double-quoted HAProxy string (backslash-escaped quotes)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def too_large_body(limit: int) -> str:
    """The 413 answer's JSON body (the API's error shape, naming the setting)."""
    return json.dumps({"detail": [{"loc": ["body"], "type": "value_error",
                                   "msg": f"request body larger than {limit} bytes (serving.limits.max_body_bytes)"}]})


def harden(config: str, limits: EdgeLimits) -> str:
    """Ray's HAProxy configuration with RecForge's limits (idempotent: hardening twice changes nothing more)."""
    managed = ("timeout client", "timeout http-request", "timeout http-keep-alive", "option http-buffer-request")
    marker = "# recforge:"
    out: list[str] = []
    section = ""

    def close_section() -> None:
        if section == "defaults":
            out.extend([
                f"    {marker} limits (serving.limits)",
                f"    timeout client {limits.client_timeout_s}s",
                f"    timeout http-request {limits.header_timeout_s}s",
                f"    timeout http-keep-alive {limits.keepalive_timeout_s}s",
                "    option http-buffer-request",
            ])

    for line in config.splitlines():
        stripped = line.strip()
        if line and not line[0].isspace() and not stripped.startswith("#"):
            close_section()
            section = stripped
        if section == "defaults" and (stripped.startswith(managed) or stripped.startswith(marker)):
            continue
        if section == HTTP_FRONTEND and (stripped.startswith(marker) or (
                stripped.startswith("http-request return status 413") and "serving.limits" in stripped)):
            continue
        if section == "global" and stripped.startswith("tune.bufsize "):
            # a request (headers + a body up to the limit) must fit HAProxy's buffer for it to be held whole
            size = max(int(stripped.split()[1]), limits.max_body_bytes + HEADER_ROOM)
            line = f"    tune.bufsize {size}"
        if section in STATS_SECTIONS:
            bind = re.fullmatch(r"bind\s+(\S*?):(\d+)(\s.*)?", stripped)
            if bind and bind.group(1) in WILDCARD_HOSTS:
                line = f"    bind {limits.stats_host}:{bind.group(2)}{bind.group(3) or ''}"
        out.append(line)
        if section == HTTP_FRONTEND and stripped.startswith("bind "):
            out.append(f"    {marker} 413 above serving.limits.max_body_bytes")
            out.append(f"    http-request return status 413 content-type application/json string "
                       f"{_json_string(too_large_body(limits.max_body_bytes))} "
                       f"if {{ req.hdr_val(content-length) gt {limits.max_body_bytes} }}")
    close_section()
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ launcher
def install_launcher(directory: Path, real_binary: str) -> Path:
    """Write the launcher (an executable named `haproxy` in `directory`) that hardens the configuration it is
    given, then runs `real_binary`; returns its path (for RAY_SERVE_HAPROXY_BINARY_PATH)."""
    path = directory / LAUNCHER
    path.write_text("#!/bin/sh\n"
                    f"exec {shlex.quote(sys.executable)} -I {shlex.quote(__file__)} "
                    f"{shlex.quote(real_binary)} {shlex.quote(str(directory / LIMITS_FILE))} \"$@\"\n")
    path.chmod(0o700)
    return path


def write_limits(directory: Path, limits: EdgeLimits) -> None:
    """The limits the launcher applies at the next HAProxy start or reload."""
    tmp = directory / f".{LIMITS_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(limits)))
    tmp.replace(directory / LIMITS_FILE)


def read_limits(path: Path) -> EdgeLimits:
    """The limits written by `write_limits`, or the defaults where none were written."""
    try:
        return EdgeLimits(**json.loads(path.read_text()))
    except FileNotFoundError:
        return EdgeLimits()


def main(argv: list[str]) -> None:
    """`<python> edge.py REAL_HAPROXY LIMITS_FILE [haproxy args...]`: harden the `-f` file(s), exec HAProxy."""
    real, limits_file, args = argv[0], Path(argv[1]), argv[2:]
    limits = read_limits(limits_file)
    for i, arg in enumerate(args[:-1]):
        if arg == "-f":
            cfg = Path(args[i + 1])
            text = cfg.read_text()
            hardened = harden(text, limits)
            if hardened != text:
                tmp = cfg.with_name(f".{cfg.name}.recforge")
                tmp.write_text(hardened)
                tmp.replace(cfg)
    os.execv(real, [real, *args])


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Exception as exc:  # HAProxy must not start unhardened; Ray shows this in its HAProxy stderr log
        print(f"recforge edge: could not apply the HAProxy limits: {exc}", file=sys.stderr)
        sys.exit(1)
