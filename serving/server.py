"""Starting and stopping the recommendation app: in this process (`start_app` / `stop_app`, what the demo and the
tests call), in the foreground until Ctrl-C (`serve_forever`, `recforge serve`), or in the background
(`start_detached` / `stop_detached`, `recforge serve --detach` / `--stop`).

Ray: a local Ray on this machine unless `serving.ray_address` (or `--ray-address`) names a cluster to attach to.
The HTTP proxy listens on `serving.host:serving.port` (127.0.0.1:8000 by default), with the limits of
`serving.limits` (feature_store.edge). A server started by `recforge serve` records its pid, the pid's start time
and its URL in a state file named after its port in a private runtime directory (`runtime_dir`: mode 0700, owned by
this user); `recforge serve --stop` signals that pid only while it is still the process that wrote the file (same
start time, a recforge command line), never a process that reused the number.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.config import AppSettings

HEALTH_TIMEOUT_S = 300.0


class ServeError(RuntimeError):
    """The app could not be started or stopped; the message says why and what to do."""


def app_url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def health(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of GET /healthz; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


def wait_healthy(url: str, timeout: float = HEALTH_TIMEOUT_S, alive: Any = None) -> dict[str, Any]:
    """Poll /healthz until 200; raises ServeError with the last answer after `timeout` seconds or when
    `alive()` turns false (a background server that exited)."""
    deadline = time.monotonic() + timeout
    code, body = 0, {}
    while time.monotonic() < deadline:
        code, body = health(url)
        if code == 200:
            return body
        if alive is not None and not alive():
            raise ServeError(f"the server exited before {url} became healthy")
        time.sleep(0.5)
    raise ServeError(f"{url} not healthy after {timeout:.0f}s (last /healthz: HTTP {code} {json.dumps(body)}); "
                     f"check that the models are registered with the served alias (`recforge registry list`)")


def start_app(settings: AppSettings, *, port: int | None = None, ray_address: str | None = None,
              wait: bool = True, timeout: float = HEALTH_TIMEOUT_S) -> str:
    """Deploy the app of a scenario (`settings`: recforge.config.app_settings) on a local Ray (or the cluster at
    `ray_address`) and return its URL; with `wait`, only after /healthz answers 200 (every model loaded)."""
    from feature_store.raycluster import ensure_ray

    s = settings.serving
    port = port or s.port
    url = app_url(s.host, port)
    code, _ = health(url, timeout=2.0)
    if code:
        raise ServeError(f"{url} is already answering; stop that server (`recforge serve --stop --port {port}`) "
                         f"or pick another --port")
    ensure_ray(ray_address or s.ray_address)
    _write_edge_limits(settings)
    from ray import serve

    from serving.app import APP_NAME, build_app

    serve.start(http_options={"host": s.host, "port": port},
                proxy_location="HeadOnly" if s.proxy_location == "head_only" else "EveryNode")
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    if settings.feature_store.events.stream.serve:
        from serving.stream import start_stream

        start_stream(settings.name, settings.feature_store)
    if settings.experiments.definitions:
        from serving.experiments.monitor import start_monitor

        start_monitor(settings)
    if wait:
        wait_healthy(url, timeout)
    return url


def _write_edge_limits(settings: AppSettings) -> None:
    """`serving.limits` and `serving.stats_host` for the HAProxy this process's Ray starts (none on a cluster)."""
    from feature_store import edge
    from feature_store.raycluster import edge_dir

    d = edge_dir()
    if d is None:
        return
    lim, s = settings.serving.limits, settings.serving
    edge.write_limits(d, edge.EdgeLimits(header_timeout_s=lim.header_timeout_s, client_timeout_s=lim.client_timeout_s,
                                         keepalive_timeout_s=lim.keepalive_timeout_s,
                                         max_body_bytes=lim.max_body_bytes, stats_host=s.stats_host))


def stop_app(timeout: float = 60.0) -> None:
    """Remove the app and shut Serve down (the Ray this process started stays up until it exits). Returns once
    Serve's controller is gone, so a `start_app` right after starts a fresh Serve rather than reaching the old,
    still draining one.

    Not `serve.shutdown()`: it waits on the controller's `graceful_shutdown(wait=True)` task until the controller
    kills itself, so that task always dies with the actor, and Ray (which retries the controller's tasks forever)
    prints "(raylet) Task ServeController.graceful_shutdown failed ... killed by `ray.kill`" on the driver's stdout
    at every clean stop. Setting the shutdown flag without waiting, then waiting here for the actor to be gone,
    stops Serve the same way with no task in flight."""
    import ray
    from ray.serve import context as serve_context
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    from serving.experiments.monitor import stop_monitors
    from serving.stream import stop_streams

    if ray.is_initialized():
        stop_monitors()
        stop_streams()

    with contextlib.suppress(Exception):
        client = serve_context._get_global_client(raise_if_no_controller_running=False)
        if client is not None:
            client.shutdown_cached_handles()
        serve_context._disconnect()
    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return
    with contextlib.suppress(Exception):
        ray.get(controller.graceful_shutdown.remote(wait=False), timeout=timeout)
    deadline = time.monotonic() + timeout
    while ray.is_initialized() and time.monotonic() < deadline:
        try:
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:
            return
        time.sleep(0.25)


# ------------------------------------------------------------------------------------------------ CLI modes
def runtime_dir() -> Path:
    """This user's private directory for server state: `$XDG_RUNTIME_DIR/recforge`, else `<tmp>/recforge-<uid>`;
    created 0700, and refused when it is a link, another user's, or open to others (someone else could plant a
    state file naming a pid for `--stop` to signal)."""
    uid = os.getuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(xdg) / "recforge" if xdg and Path(xdg).is_dir() else Path(tempfile.gettempdir()) / f"recforge-{uid}"
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700, parents=False)
    st = os.lstat(base)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise ServeError(f"{base} is not a private directory of this user (owner uid {st.st_uid}, mode "
                         f"{stat.S_IMODE(st.st_mode):o}; it must be a directory owned by uid {uid} with mode 700): "
                         f"remove it, or set XDG_RUNTIME_DIR to a directory only you can write")
    return base


def state_path(port: int) -> Path:
    return runtime_dir() / f"serve-{port}.json"


def _process_start(pid: int) -> float | None:
    """When process `pid` started (psutil's create_time), None when there is no such process."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return None


def _recorded_process_alive(info: dict[str, Any]) -> tuple[bool, str]:
    """Whether the process a state file names is still the one that wrote it: (alive, why not)."""
    import psutil

    pid = int(info["pid"])
    started = _process_start(pid)
    if started is None:
        return False, "was not running (stale state file)"
    if "pid_started" not in info or abs(started - float(info["pid_started"])) > 0.05:
        return False, f"pid {pid} now belongs to another process (it started at another time); not signalled"
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        cmdline = ""
    if "recforge" not in cmdline:
        return False, f"pid {pid} is not a recforge process ({cmdline[:80] or 'no command line'}); not signalled"
    return True, ""


def _write_state(path: Path, info: dict[str, Any]) -> None:
    """The state file, 0600, written whole (a reader never sees half of it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(info))
    tmp.replace(path)


def serve_forever(settings: AppSettings, *, port: int | None = None,
                  ray_address: str | None = None) -> dict[str, Any]:
    """`recforge serve`: start the app, then block until Ctrl-C or SIGTERM; stops Serve on the way out."""
    port = port or settings.serving.port
    url = start_app(settings, port=port, ray_address=ray_address)
    state = state_path(port)
    _write_state(state, {"pid": os.getpid(), "pid_started": _process_start(os.getpid()), "url": url,
                         "config": settings.name, "started_at": time.time()})
    print(f"recforge serve: {url} (docs {url}/docs); Ctrl-C stops it", flush=True)

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _term)
    t0 = time.time()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_app()
        with contextlib.suppress(FileNotFoundError):
            state.unlink()
    return {"url": url, "stopped": True, "seconds": round(time.time() - t0, 1)}


def start_detached(argv: Sequence[str], port: int, host: str, log_path: Path,
                   timeout: float = HEALTH_TIMEOUT_S) -> dict[str, Any]:
    """`recforge serve --detach`: run `recforge <argv>` (a foreground serve) in a new session, return once
    healthy with its pid, URL and log file; on failure stop it and raise with the log's tail."""
    url = app_url(host, port)
    if health(url, timeout=2.0)[0]:
        raise ServeError(f"{url} is already answering; `recforge serve --stop --port {port}` first")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "recforge.cli", *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        body = wait_healthy(url, timeout, alive=lambda: proc.poll() is None)
        _wait_state(port, proc)
    except ServeError as exc:
        if proc.poll() is None:
            proc.terminate()
        tail = log_path.read_text(errors="replace")[-2000:]
        raise ServeError(f"{exc}; server log {log_path}:\n{tail}") from None
    return {"url": url, "pid": proc.pid, "log": str(log_path), "models": body.get("models", {})}


def _wait_state(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Waits for the child's state file: it is written just after /healthz first answers, and `--detach` returns
    only once `--stop` can find the server."""
    path = state_path(port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            if int(json.loads(path.read_text())["pid"]) == proc.pid:
                return
        time.sleep(0.1)
    raise ServeError(f"the server answered but did not record itself in {path} within {timeout:.0f}s")


def stop_detached(port: int, timeout: float = 60.0) -> dict[str, Any]:
    """`recforge serve --stop`: SIGTERM the server recorded for `port` and wait for it to exit."""
    state = state_path(port)
    if not state.is_file():
        raise ServeError(f"no recforge server recorded for port {port} ({state} is absent); "
                         f"pass the --port it was started with")
    try:
        info = json.loads(state.read_text())
        pid = int(info["pid"])
    except (ValueError, KeyError, TypeError) as exc:
        state.unlink()
        raise ServeError(f"{state} was not a server state file ({exc}); removed it, nothing was signalled") from None
    alive, why = _recorded_process_alive(info)
    if not alive:
        state.unlink()
        return {"url": info.get("url"), "pid": pid, "stopped": False, "note": why}
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _process_start(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.25)
    if _process_start(pid) is not None:
        raise ServeError(f"server pid {pid} did not exit within {timeout:.0f}s of SIGTERM; stop it by hand")
    with contextlib.suppress(FileNotFoundError):
        state.unlink()
    return {"url": info.get("url"), "pid": pid, "stopped": True}
