"""Fast checks of the service's local safety rails, without a server: the HAProxy configuration RecForge's launcher
writes (feature_store.edge), and the `recforge serve --stop` state file (private directory, pid ownership)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feature_store import edge
from serving import server

RAY_CONFIG = """global
    log /tmp/x/access-log.sock local0 info
    tune.bufsize 16384
    stats socket /tmp/x/admin.sock mode 666 level admin expose-fd listeners
defaults
    mode http
    timeout connect 5s
    timeout client 3600s
    timeout server 60s
    log global
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind 127.0.0.1:8000
    acl healthcheck path -i /-/healthz
backend b1
    server s1 127.0.0.1:30000 check
listen stats
  bind *:8404
  stats enable
"""


def test_harden_sets_timeouts_body_limit_and_loopback_stats() -> None:
    limits = edge.EdgeLimits(header_timeout_s=7, client_timeout_s=20, keepalive_timeout_s=4, max_body_bytes=1000)
    out = edge.harden(RAY_CONFIG, limits)
    lines = [line.strip() for line in out.splitlines()]
    assert "timeout client 3600s" not in lines
    for expected in ("timeout client 20s", "timeout http-request 7s", "timeout http-keep-alive 4s",
                     "option http-buffer-request", "bind 127.0.0.1:9101", "bind 127.0.0.1:8404",
                     "bind 127.0.0.1:8000", "timeout server 60s", f"tune.bufsize {1000 + edge.HEADER_ROOM}"):
        assert expected in lines, (expected, out)
    deny = [line for line in lines if line.startswith("http-request return status 413")]
    assert len(deny) == 1 and "gt 1000" in deny[0]
    assert lines.index(deny[0]) == lines.index("bind 127.0.0.1:8000") + 2  # in the HTTP frontend, after its bind


def test_harden_is_idempotent_and_keeps_a_deliberate_stats_host() -> None:
    limits = edge.EdgeLimits(stats_host="0.0.0.0")
    once = edge.harden(RAY_CONFIG, limits)
    assert edge.harden(once, limits) == once
    assert "bind 0.0.0.0:8404" in once  # opened on purpose (serving.stats_host)


def test_the_launcher_applies_the_written_limits_before_starting_haproxy(tmp_path: Path) -> None:
    """The launcher hardens the file it is given, then execs the real binary with the same arguments (here a
    stand-in that prints them)."""
    fake = tmp_path / "real-haproxy"
    fake.write_text("#!/bin/sh\necho \"$@\"\n")
    fake.chmod(0o755)
    launcher = edge.install_launcher(tmp_path, str(fake))
    edge.write_limits(tmp_path, edge.EdgeLimits(client_timeout_s=11))
    cfg = tmp_path / "node" / "haproxy.cfg"
    cfg.parent.mkdir()
    cfg.write_text(RAY_CONFIG)
    done = subprocess.run([str(launcher), "-db", "-f", str(cfg), "-sf", "123"], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["-db", "-f", str(cfg), "-sf", "123"]
    assert "timeout client 11s" in cfg.read_text()
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o700


def test_the_state_directory_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    d = server.runtime_dir()
    assert d == tmp_path / "recforge" and stat.S_IMODE(d.stat().st_mode) == 0o700
    d.chmod(0o777)  # opened to others: someone else could plant a state file
    with pytest.raises(server.ServeError, match="not a private directory"):
        server.runtime_dir()


def test_stop_does_not_signal_a_process_that_reused_the_recorded_pid(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = server.state_path(8999)
        # a state file naming the bystander's pid with another start time (the recorded server is long gone)
        path.write_text(json.dumps({"pid": bystander.pid, "pid_started": time.time() - 3600, "url": "x"}))
        out = server.stop_detached(8999)
        assert out["stopped"] is False and "another process" in out["note"]
        # the right start time, but not a recforge process
        path.write_text(json.dumps({"pid": bystander.pid, "pid_started": server._process_start(bystander.pid)}))
        out = server.stop_detached(8999)
        assert out["stopped"] is False and "not a recforge process" in out["note"]
        time.sleep(0.2)
        assert bystander.poll() is None  # never signalled
        assert not path.exists()
    finally:
        bystander.send_signal(signal.SIGKILL)
        bystander.wait()


def test_stop_signals_the_recorded_server_and_waits_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "recforge", "serve"])
    try:
        server._write_state(server.state_path(8998), {"pid": fake.pid,
                                                      "pid_started": server._process_start(fake.pid)})
        assert stat.S_IMODE(server.state_path(8998).stat().st_mode) == 0o600
        reaper = __import__("threading").Thread(target=fake.wait)  # reap it so the pid disappears
        reaper.start()
        out = server.stop_detached(8998, timeout=20)
        reaper.join()
        assert out["stopped"] is True and fake.returncode == -signal.SIGTERM
    finally:
        if fake.poll() is None:
            os.kill(fake.pid, signal.SIGKILL)
