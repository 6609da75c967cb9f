"""A real multi-node Ray cluster on this machine, for the tests that attach to one.

`ray start --head` and `ray start --address ...` run as separate processes (`--block`, so that stopping them stops
every Ray process of their node and nothing else on the machine), each with its own CPU share. Ray 2.60's
`ray start` turns token authentication on; the cluster gets its own token file, and every process that attaches
needs `env` (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH), as docs/cli.md#running-on-a-cluster tells users.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feature_store.raycluster import free_port

RAY = str(Path(sys.executable).parent / "ray")


@dataclass
class RayCluster:
    """A running cluster: its GCS address, dashboard URL, the environment attaching processes need, node ids."""

    address: str
    dashboard: str
    env: dict[str, str]
    directory: Path
    nodes: list[str] = field(default_factory=list)

    def state(self, kind: str, **filters: str) -> list[dict[str, Any]]:
        """Ray's state API (`ray.util.state.list_tasks` / `list_actors`) through the dashboard, in a process of its
        own with the cluster's token: [{name, node_id, state, ...}] of every task or actor matching `filters`."""
        code = (
            "import json, sys\n"
            "from ray.util import state\n"
            f"rows = getattr(state, 'list_{kind}')(address={self.dashboard!r}, "
            f"filters={[(k, '=', v) for k, v in filters.items()]!r}, limit=10000, raise_on_missing_output=False)\n"
            "print(json.dumps([r.__dict__ if hasattr(r, '__dict__') else dict(r) for r in rows], default=str))\n")
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"state API list_{kind} failed: {out.stderr[-2000:]}")
        return list(json.loads(out.stdout.strip().splitlines()[-1]))


def _alive_nodes(address: str, env: dict[str, str]) -> list[str]:
    code = ("import json, ray\n"
            f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return list(json.loads(out.stdout.strip().splitlines()[-1])) if out.returncode == 0 and out.stdout.strip() else []


STOP_GRACE_S = 8.0  # how long the nodes may take to stop on SIGTERM before their process groups are killed


@contextlib.contextmanager
def ray_cluster(workers: int = 1, cpus_per_node: int = 1, timeout: float = 180.0) -> Iterator[RayCluster]:
    """A head node and `workers` more nodes, `cpus_per_node` CPUs each; stopped (every process of each node) on
    exit. Ray's session files go to a short temporary directory (its socket paths have a length limit)."""
    d = Path(tempfile.mkdtemp(prefix="rfc-", dir="/tmp" if os.path.isdir("/tmp") else None))
    token = d / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
               RECFORGE_PROGRESS="0")
    port, dash = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: str) -> None:
        with (d / log).open("wb") as fh:
            # the dashboard agent's port defaults to one fixed number: a second node, or a local Ray of the same
            # test session, would meet it taken
            procs.append(subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats",
                                           f"--num-cpus={cpus_per_node}", "--num-gpus=0",
                                           f"--dashboard-agent-listen-port={free_port()}", *args],
                                          env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True))

    def wait_for(n: int) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                logs = "\n".join((d / f).read_text(errors="replace")[-1500:] for f in sorted(os.listdir(d))
                                 if f.endswith(".log"))
                raise RuntimeError(f"a Ray node exited while the cluster started:\n{logs}")
            nodes = _alive_nodes(address, env)
            if len(nodes) >= n:
                return nodes
            time.sleep(1.0)
        raise TimeoutError(f"the Ray cluster at {address} did not reach {n} nodes in {timeout:.0f}s")

    try:
        start(["--head", f"--port={port}", f"--temp-dir={d / 'ray'}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"], "head.log")
        wait_for(1)
        for i in range(workers):
            start([f"--address={address}"], f"worker-{i}.log")
        nodes = wait_for(1 + workers)
        yield RayCluster(address, f"http://127.0.0.1:{dash}", env, d, nodes)
    finally:
        for p in procs:  # every node at once, then whatever still runs is killed with its process group: after
            with contextlib.suppress(ProcessLookupError):  # a Serve app, a node took about 30 s to stop by itself,
                p.send_signal(signal.SIGTERM)              # a bare cluster 2 s
        deadline = time.monotonic() + STOP_GRACE_S
        for p in procs:
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        shutil.rmtree(d, ignore_errors=True)
