"""The load side of `scripts.bench.serve`: client threads with keep-alive connections sending request bodies back
to back, latencies and the app's `Server-Timing` stages per request, the CPU time of the Serve processes, and the
no-work reference endpoint on the same Serve proxy."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from typing import Any

import numpy as np

STAGES = ("features", "retrieval", "ranking", "calls", "total")
FLOOR_PATH = "/floor/noop"


def deploy_floor() -> None:
    """The reference: a FastAPI ingress on the same Serve proxy that answers without any work (`FLOOR_PATH`),
    so the table shows what Ray Serve itself costs on this machine next to the app's figures."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)  # as the app's ingress
    @serve.ingress(api)
    class Floor:
        @api.post("/noop")
        async def noop(self) -> dict[str, bool]:  # the body is not even parsed: the floor
            return {"ok": True}

    serve.run(Floor.bind(), name="floor", route_prefix="/floor", blocking=False)


def serve_processes() -> list[Any]:
    """This process's Ray Serve proxy (the Python proxy actor, or HAProxy and its manager) and replica processes
    (Ray started here, so they are descendants)."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            title = (p.cmdline() or [""])[0]
        except psutil.Error:
            continue
        if title.startswith(("ray::ServeReplica", "ray::ProxyActor", "ray::HAProxyManager")) or \
                os.path.basename(title) == "haproxy":
            out.append(p)
    return out


def beside_processes() -> list[Any]:
    """The actors this process's app runs beside Ray Serve: the stream processor and the experiment monitor."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if (p.cmdline() or [""])[0].startswith(("ray::StreamLoop", "ray::MonitorLoop")):
                out.append(p)
        except psutil.Error:
            continue
    return out


def cpu_seconds(procs: list[Any]) -> float:
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def parse_server_timing(header: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


def load_run(host: str, port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    """`concurrency` threads sending `bodies` round robin for `seconds`; latencies and server stage timings."""
    import psutil

    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stages: list[list[dict[str, float]]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        i = w
        start.wait()
        while time.perf_counter() < deadline[0]:
            body = bodies[i % len(bodies)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                errors[w] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
                continue
            if resp.status != 200:
                errors[w] += 1
                continue
            latencies[w].append((time.perf_counter() - t0) * 1e3)
            stages[w].append(parse_server_timing(resp.getheader("Server-Timing")))
        conn.close()

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    procs = serve_processes()
    me = psutil.Process()
    cpu0, client0 = cpu_seconds(procs), cpu_seconds([me])
    deadline[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu, client = cpu_seconds(procs) - cpu0, cpu_seconds([me]) - client0
    lat = np.array([x for w in latencies for x in w])
    st = [s for w in stages for s in w]
    mean = {k: float(np.mean([s.get(k, 0.0) for s in st])) if st else float("nan") for k in STAGES}
    mean["proxy_client"] = float(lat.mean() - mean["total"]) if len(lat) else float("nan")
    pct = np.percentile(lat, [50, 95, 99]) if len(lat) else [float("nan")] * 3
    return {"path": path, "concurrency": concurrency, "requests": len(lat), "errors": int(sum(errors)),
            "rps": len(lat) / wall, "p50": float(pct[0]), "p95": float(pct[1]), "p99": float(pct[2]),
            "mean": float(lat.mean()) if len(lat) else float("nan"), "stages": mean,
            "serve_cpu_ms": cpu / max(len(lat), 1) * 1e3, "client_cpu_ms": client / max(len(lat), 1) * 1e3}


def bodies_for(endpoint: str, users: list[Any], items: list[Any], k: int, n_items: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    if endpoint == "recommend":
        return [json.dumps({"user_id": u, "k": k}).encode() for u in users]
    pick = np.asarray(items, dtype=object)
    return [json.dumps({"user_id": u, "item_ids": rng.choice(pick, size=n_items, replace=False).tolist()}).encode()
            for u in users]
