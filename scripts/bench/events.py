"""Real-time events: how many events per second the stream applies, how fresh the online features are, and what
ingesting costs the recommendation API.

Parts (each on both buses where it applies: the embedded SQLite log with the SQLite online store, Redis Streams
with the Redis online store; Redis runs with `appendonly yes`, `appendfsync everysec`):

- throughput: the bus pre-loaded with synthetic events (100,000 users, 20,000 items in 24 categories, impression
  70% / click 20% / add_to_cart 6% / purchase 4%, one entry per 1,000 events, as POST /events batches), then
  `recforge stream run`'s loop (processor + offline log writer) for `--seconds`; events applied per second.
  Peer (Redis): the consumer people write first, in Python, event by event: HINCRBY the user's and the item's
  counters, LPUSH + LTRIM the history, pipelined per bus entry, no dedupe and no transaction;
- freshness: a producer process sending 5,000 events/s through the ingestion path (`ingest`: contract check +
  publish, 50 events every 10 ms) while the loop runs; freshness = commit time - the time an event was accepted;
- serve: `/recommend` at concurrency 8 on the tiny serving scenario (scripts.bench.serve --tiny), idle and while
  1,000 events/s are POSTed to /events with the processor running beside the app (`events.stream.serve`).

    .venv/bin/python -m scripts.bench.events                       # all parts; writes its section
    .venv/bin/python -m scripts.bench.events --parts throughput --seconds 20 --no-doc

Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scripts.bench.common import REPO, command, load_text, logger, machine, machine_text, now
from scripts.bench.doc import emit

NAME = "bench_events"
N_USERS, N_ITEMS, N_CATEGORIES = 100_000, 20_000, 24
TYPES = ("impression", "click", "add_to_cart", "purchase")
TYPE_P = (0.70, 0.20, 0.06, 0.04)
ENTRY = 1000
PRELOAD = {"sqlite": 6_000_000, "redis": 3_200_000}
GOAL_EPS, GOAL_SPEEDUP, GOAL_FRESH_P99_MS, FRESH_RATE, SERVE_RATE, GOAL_SERVE = 20_000, 5.0, 100.0, 5000, 1000, 0.20
log = logger(NAME)


# ------------------------------------------------------------------------------------------------ scenario
def scenario(out: Path, redis_url: str | None) -> Any:
    from feature_store.config import FeatureStoreConfig

    doc: dict[str, Any] = {
        "name": "bench-events", "output_dir": str(out), "source": {"type": "synthetic"},
        "entities": {"item": {"table": "items", "key": "item_id", "timestamp": "ts", "features": ["category"]}},
        "features": {"label": "click", "timestamp": "ts",
                     "categorical": [{"name": "user_id"}, {"name": "item_id"}, {"name": "category"}],
                     "sequence": [{"name": "hist_item_id", "source": "item_id", "max_len": 20}]},
        "events": {"stream": {"tag_column": "category"}},
    }
    if redis_url:
        doc["online_store"] = {"type": "redis", "url": redis_url, "namespace": "bench"}
    return FeatureStoreConfig.model_validate(doc)


def write_items(cfg: Any) -> None:
    """The online item view the processor reads categories from, as `recforge materialize` writes it."""
    from feature_store.online import materialize, open_store

    ids = np.arange(N_ITEMS, dtype=np.int64)
    table = pa.table({"item_id": ids, "category": pa.array([f"cat{i % N_CATEGORIES}" for i in ids]),
                      "ts": np.zeros(N_ITEMS, np.int64)})
    with open_store(cfg) as store:
        materialize(store, "item", table, key="item_id", ts_column="ts", features=["category"])


def event_table(n: int, seed: int, t0: float, first_id: int = 0) -> pa.Table:
    """`n` accepted events (the bus's Arrow form), keys skewed as real traffic is (Zipf-like), times 1 ms apart."""
    from feature_store.events.contract import event_schema

    rng = np.random.default_rng(seed)
    users = (rng.zipf(1.3, n) - 1) % N_USERS
    items = (rng.zipf(1.2, n) - 1) % N_ITEMS
    types = rng.choice(len(TYPES), n, p=TYPE_P)
    ts_ms = (t0 * 1000 + np.arange(n)).astype(np.int64)
    value = np.where(types == 3, np.round(rng.uniform(5, 200, n), 2), np.nan)
    return pa.table({"event_id": pa.array([f"b{first_id + i}" for i in range(n)]), "ts": ts_ms // 1000,
                     "ts_ms": ts_ms, "user_id": users.astype(np.int64), "item_id": items.astype(np.int64),
                     "type": pa.array(np.asarray(TYPES)[types]), "value": pa.array(value, from_pandas=True),
                     "context": pa.nulls(n, pa.string()), "exposure_id": pa.nulls(n, pa.string()),
                     "received_at": np.full(n, time.time())}, schema=event_schema("int"))


def raw_events(n: int, seed: int, first_id: int) -> list[dict[str, Any]]:
    """`n` events as a client sends them (JSON objects), `ts` filled in when sent."""
    t = event_table(n, seed, time.time(), first_id).drop_columns(["ts_ms", "received_at", "context", "exposure_id"])
    rows = t.to_pylist()
    for r in rows:
        if r["value"] is None:
            del r["value"]
    return rows


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A redis-server on a free 127.0.0.1 port with the persistence production uses (AOF, fsync every second)."""
    import redis

    from feature_store.raycluster import free_port

    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit(f"{NAME}: redis-server is not on PATH; run `make install`")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
                             "--appendonly", "yes", "--appendfsync", "everysec"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"{NAME}: redis-server did not start") from None
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def bus_setups(kinds: Sequence[str]) -> Iterator[list[tuple[str, Any]]]:
    """(name, FeatureStoreConfig) per bus kind, each on fresh storage."""
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        setups = []
        for kind in kinds:
            url = None
            if kind == "redis":
                (root / "redis-data").mkdir()
                url = stack.enter_context(redis_server(root / "redis-data"))
            setups.append((kind, (root / kind, url)))
        yield setups


def fresh_config(out: Path, url: str | None) -> Any:
    """A new scenario on empty storage (a flushed Redis namespace, a new folder)."""
    if out.exists():
        shutil.rmtree(out)
    if url:
        import redis

        redis.Redis.from_url(url).flushdb()
    cfg = scenario(out, url)
    write_items(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------ throughput
def preload(cfg: Any, n: int, seed: int) -> None:
    from feature_store.events.scenario import open_bus

    t0 = time.time() - 3600
    with open_bus(cfg) as bus:
        for start in range(0, n, 100_000):
            table = event_table(min(100_000, n - start), seed + start, t0 + start / 1000, start)
            for i in range(0, table.num_rows, ENTRY):
                bus.publish(table.slice(i, ENTRY))
    log(f"preloaded {n:,} events")


def throughput(cfg: Any, n: int, seconds: float, seed: int) -> dict[str, Any]:
    from feature_store.events.runner import run_stream

    preload(cfg, n, seed)
    rep = run_stream(cfg, until_idle=True)
    return {"events_per_second": rep["events_per_second"], "applied": rep["applied"], "seconds": rep["seconds"],
            "logged": rep["logged"], "sustained": rep["seconds"] >= seconds}


def baseline(cfg: Any, n: int, seconds: float, seed: int, *, pipelined: bool) -> dict[str, Any]:
    """The per-event Python consumer (see module docstring) on the same Redis bus and server: one round trip per
    command, or (`pipelined`) its commands sent in one pipeline per bus entry."""
    import redis

    from feature_store.events.processor import GROUP
    from feature_store.events.scenario import open_bus

    preload(cfg, n, seed)
    r = redis.Redis.from_url(cfg.online_store.url)
    applied, t0 = 0, time.perf_counter()
    with open_bus(cfg) as bus:
        bus.ensure_group(GROUP)
        while time.perf_counter() - t0 < seconds:
            entries = bus.read(GROUP, "naive", count=1, block_ms=10)
            if not entries:
                break
            for entry in entries:
                pipe = r.pipeline(transaction=False) if pipelined else r
                for e in entry.events.to_pylist():
                    u, i, kind = e["user_id"], e["item_id"], e["type"]
                    pipe.hincrby(f"act:{u}", f"n_{kind}", 1)
                    if kind == "purchase":
                        pipe.hincrby(f"act:{u}", "purchases", 1)
                        pipe.hincrbyfloat(f"act:{u}", "revenue", e["value"] or 0.0)
                    if kind != "impression":
                        pipe.lpush(f"hist:{u}", i)
                        pipe.ltrim(f"hist:{u}", 0, 19)
                    pipe.hincrby(f"pop:{i}", f"n_{kind}", 1)
                if pipelined:
                    pipe.execute()
                bus.ack(GROUP, [entry.id])
                applied += entry.events.num_rows
    elapsed = time.perf_counter() - t0
    return {"events_per_second": round(applied / elapsed, 1), "applied": applied, "seconds": round(elapsed, 3)}


# ------------------------------------------------------------------------------------------------ freshness
def _produce(cfg_doc: dict[str, Any], rate: int, seconds: float, seed: int, ready: Any) -> None:
    """Producer process: `rate` events/s through `ingest`, 50 at a time on a fixed schedule."""
    from feature_store.config import FeatureStoreConfig
    from feature_store.events.ingest import ingest
    from feature_store.events.scenario import open_bus

    cfg = FeatureStoreConfig.model_validate(cfg_doc)
    per = 50
    total = int(rate * seconds)
    events = raw_events(total, seed, 10_000_000)
    ready.set()
    with open_bus(cfg) as bus:
        start = time.perf_counter()
        for k, i in enumerate(range(0, total, per)):
            due = start + k * per / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            now_s = time.time()
            batch = events[i:i + per]
            for e in batch:
                e["ts"] = now_s
            ingest(batch, cfg, bus)


def freshness(cfg: Any, seconds: float, seed: int) -> dict[str, Any]:
    from feature_store.events.runner import run_stream

    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    doc = cfg.model_dump(mode="python")
    proc = ctx.Process(target=_produce, args=(doc, FRESH_RATE, seconds, seed, ready))
    proc.start()
    ready.wait(120)
    rep = run_stream(cfg, seconds=seconds + 2)
    proc.join(60)
    return {"rate": FRESH_RATE, "applied": rep["applied"], "p50_ms": rep["freshness_ms"]["p50"],
            "p99_ms": rep["freshness_ms"]["p99"], "seconds": rep["seconds"]}


# ------------------------------------------------------------------------------------------------ serve
EVENTS_TOKEN = "bench-events-token"  # the app's serving.events_token: ingestion over HTTP needs one
def _post_events(url: str, rate: int, seconds: float, users: list[Any], items: list[Any], stop: Any,
                 tag: str = "s") -> None:
    """Process: `rate` events/s POSTed to /events, 100 per request (bodies built before the clock starts, the
    send time put in as `ts`, so the load generator costs the shared cores little)."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    rng = np.random.default_rng(1)
    per = 100
    n = int(rate * seconds / per) + 1
    kinds = rng.choice(len(TYPES), (n, per), p=TYPE_P)
    who = rng.choice(np.asarray(users, dtype=np.int64), (n, per))
    what = rng.choice(np.asarray(items, dtype=np.int64), (n, per))
    bodies = [json.dumps({"events": [{"event_id": f"{tag}{k}-{j}", "ts": "TS", "user_id": int(who[k, j]),
                                      "item_id": int(what[k, j]), "type": TYPES[kinds[k, j]]}
                                     for j in range(per)]}).replace('"TS"', "{ts}") for k in range(n)]
    start = time.perf_counter()
    for k, body in enumerate(bodies):
        if stop.is_set() or time.perf_counter() - start >= seconds:
            break
        wait = start + k * per / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        conn.request("POST", "/events", body.replace("{ts}", f"{time.time():.3f}"),
                     {"Content-Type": "application/json", "X-Events-Token": EVENTS_TOKEN})
        resp = conn.getresponse()
        resp.read()


def serve_part(seconds: float, warmup: float, overrides: Sequence[str] = (), rounds: int = 3) -> dict[str, Any]:
    from recforge.config import app_settings, load
    from scripts.bench.serve import TINY, sample_ids, setup
    from scripts.bench.serve_load import beside_processes, bodies_for, cpu_seconds, load_run
    from serving.server import start_app, stop_app

    def measured() -> dict[str, Any]:
        """One load run, with the stream processor's CPU per /recommend (`beside_cpu_ms`)."""
        beside = beside_processes()
        before = cpu_seconds(beside)
        row = load_run(host, port, "/recommend", bodies, 8, seconds)
        row["beside_cpu_ms"] = (cpu_seconds(beside) - before) / max(row["requests"], 1) * 1e3
        return row

    out = REPO / "runs" / "bench_serve"
    cfg = load(REPO / "configs" / "demo.yaml", [*TINY, f"output_dir={out}", "events.stream.serve=true",
                                                "events.bus.type=sqlite", f"serving.events_token={EVENTS_TOKEN}",
                                                *overrides])
    setup(cfg)
    shutil.rmtree(out / "events", ignore_errors=True)
    users, items = sample_ids(cfg, 2000, 0)
    url = start_app(app_settings(cfg))
    host, port = cfg.serving.host, int(url.rsplit(":", 1)[1])
    bodies = bodies_for("recommend", users, items, 10, 20, 0)
    runs: dict[str, list[dict[str, Any]]] = {"idle": [], "ingesting": []}

    def ingesting(i: int) -> dict[str, Any]:
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        proc = ctx.Process(target=_post_events, args=(url, SERVE_RATE, seconds + warmup + 5, users, items, stop,
                                                      f"s{i}-"))  # new event ids each round (no duplicates)
        proc.start()
        time.sleep(warmup)
        row = measured()
        stop.set()
        proc.join(30)
        return row

    rows: dict[str, Any] = {}
    try:
        load_run(host, port, "/recommend", bodies, 8, 2 * warmup)
        for i in range(rounds):  # the order alternates, so the cache warming and any drift weigh on both alike
            for kind in (("idle", "ingesting") if i % 2 == 0 else ("ingesting", "idle")):
                runs[kind].append(ingesting(i) if kind == "ingesting" else measured())
                log(f"round {i + 1} {kind}: p99 {runs[kind][-1]['p99']:.1f} ms, Serve CPU "
                    f"{runs[kind][-1]['serve_cpu_ms']:.2f} ms per request")
        for kind, got in runs.items():  # the round with the median Serve CPU per request
            rows[kind] = sorted(got, key=lambda r: r["serve_cpu_ms"])[len(got) // 2]
        rows["rounds"] = rounds
        from feature_store.events.processor import GROUP
        from feature_store.events.scenario import open_bus
        from recforge.config import feature_store_config

        with open_bus(feature_store_config(cfg)) as bus:
            rows["lag_after"] = sum(bus.lag(GROUP).values())
            rows["rejected"] = sum(bus.rejected_counts().values())
    finally:
        stop_app()
    return rows


# ------------------------------------------------------------------------------------------------ parity
def parity() -> list[dict[str, Any]]:
    """Each whole data set through scripts.bench.events_parity (those present under ../shared/datasets)."""
    from scripts.bench.events_parity import DATASETS, run, summary

    out = []
    shared = REPO.parent / "shared" / "datasets"
    for name, (folder, load) in DATASETS.items():
        if not (shared / folder).exists():
            log(f"parity: {folder} not found under ../shared/datasets; skipped")
            continue
        with tempfile.TemporaryDirectory(prefix=f"parity-{name}-") as tmp:
            res = run(load(shared / folder, None), Path(tmp))
        log(summary(res))
        out.append(res)
    return out


# ------------------------------------------------------------------------------------------------ report
def render(res: dict[str, Any], ctx: dict[str, Any]) -> str:
    m = ctx["machine"]
    lines = ["## Real-time events (scripts.bench.events)", "",
             f"- Command: `{ctx['command']}` ({ctx['when']})",
             f"- Machine: {machine_text(m)}; {load_text(m)}; everything (Redis, producer, processor, app, load "
             f"generator) on the same machine",
             f"- Data: synthetic events, {N_USERS:,} users, {N_ITEMS:,} items in {N_CATEGORIES} categories, Zipf-like "
             f"keys, impression/click/add_to_cart/purchase {'/'.join(f'{p:.0%}' for p in TYPE_P)}; views kept: "
             f"user_history (20 items + times), user_activity, user_tags (per category), item_popularity", ""]
    par = res.get("parity")
    if par:
        lines += ["### Parity on real events", "",
                  "Each data set replayed in time order through `recforge events push` + `recforge stream run`, "
                  "then `recforge prepare` + `recforge materialize` of a second scenario reading the first one's "
                  "offline event log (`source.type: events`); every key of every view compared (floats to a "
                  "relative 1e-9). Data from ../shared/datasets (see each SOURCE.md); the event mapping is in "
                  "scripts/bench/events_parity.py.", "",
                  "| data set | events | view | keys | different values | only online / only batch | stream s | "
                  "prepare + materialize s |", "|---|---:|---|---:|---:|---|---:|---:|"]
        for r in par:
            for view, c in r["views"].items():
                lines.append(f"| {r['dataset']} | {r['events']:,} | {view} | {c['keys']:,} | "
                             f"{c['different_values']} | {c['only_online']} / {c['only_batch']} | {r['stream_s']} | "
                             f"{r['batch_s']} |")
        equal = all(c["equal"] for r in par for c in r["views"].values())
        lines += ["", f"- Goal: equal for every key: {'met' if equal else 'NOT met'}.", ""]
    tp = res.get("throughput")
    if tp:
        lines += ["### Throughput", "",
                  f"The bus pre-loaded with events in entries of {ENTRY:,}; then the stream loop "
                  f"(processor + offline log writer, each event committed exactly once with its id) until it has "
                  f"applied and logged them all (sustained: it ran at least {ctx['seconds']:.0f} s).", "",
                  "| bus + online store | events/s | events applied | seconds | sustained |",
                  "|---|---:|---:|---:|---|"]
        for kind, r in tp.items():
            lines.append(f"| {kind} (own store) | {r['events_per_second']:,.0f} | {r['applied']:,} | "
                         f"{r['seconds']:.1f} | {'yes' if r['sustained'] else 'no'} |")
        base = res.get("baseline")
        for key, how in (("baseline", "one round trip per command"),
                         ("baseline_pipelined", "its commands pipelined per bus entry")):
            b = res.get(key)
            if b:
                lines.append(f"| peer: per-event Python consumer on Redis (HINCRBY / LPUSH + LTRIM per event, {how}; "
                             f"no dedupe, no transaction, no offline log) | {b['events_per_second']:,.0f} | "
                             f"{b['applied']:,} | {b['seconds']:.1f} | - |")
        lines.append("")
        for kind, r in tp.items():
            met = "met" if r["events_per_second"] >= GOAL_EPS else "NOT met"
            lines.append(f"- Goal >= {GOAL_EPS:,} events/s sustained, {kind}: {r['events_per_second']:,.0f}, {met}.")
        if base and "redis" in tp:
            ratio = tp["redis"]["events_per_second"] / max(base["events_per_second"], 1e-9)
            met = "met" if ratio >= GOAL_SPEEDUP else "NOT met"
            lines.append(f"- Goal >= {GOAL_SPEEDUP:.0f}x the per-event consumer (Redis, one round trip per command, "
                         f"as the issue states it): {ratio:.1f}x, {met}.")
            piped = res.get("baseline_pipelined")
            if piped:
                lines.append(f"- Beside the same consumer with its commands pipelined per bus entry: "
                             f"{tp['redis']['events_per_second'] / max(piped['events_per_second'], 1e-9):.1f}x.")
        lines.append("")
    fr = res.get("freshness")
    if fr:
        lines += ["### Freshness", "",
                  f"A producer process sends {FRESH_RATE:,} events/s through the ingestion path (contract check "
                  f"and publish, 50 events every 10 ms) while the stream loop runs; freshness is the commit time "
                  f"of an event's view rows minus the time it was accepted.", "",
                  "| bus + online store | events applied | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
        for kind, r in fr.items():
            lines.append(f"| {kind} | {r['applied']:,} | {r['p50_ms']} | {r['p99_ms']} |")
        lines.append("")
        for kind, r in fr.items():
            met = "met" if r["p99_ms"] is not None and r["p99_ms"] <= GOAL_FRESH_P99_MS else "NOT met"
            lines.append(f"- Goal p99 <= {GOAL_FRESH_P99_MS:.0f} ms at {FRESH_RATE:,} events/s, {kind}: "
                         f"{r['p99_ms']} ms, {met}.")
        lines.append("")
    sv = res.get("serve")
    if sv:
        idle, busy = sv["idle"], sv["ingesting"]
        rise = busy["p99"] / idle["p99"] - 1
        lines += ["### /recommend while ingesting", "",
                  f"The tiny serving scenario (`scripts.bench.serve --tiny`: fused topology, 2 ingress replicas), "
                  f"`events.stream.serve: true` (the processor as a Ray actor beside the app, SQLite bus and "
                  f"store); /recommend (k=10) at concurrency 8 for {ctx['seconds']:.0f} s, idle and while another "
                  f"process POSTs {SERVE_RATE:,} events/s to /events (100 per request), alternated "
                  f"{sv.get('rounds', 1)} times (the order alternating; each row the round with the median Serve "
                  f"CPU). Serve CPU ms/req: the "
                  f"HTTP proxy's and the replicas' CPU time (the /events requests' included) per answered "
                  f"/recommend; stream ms/req: the stream processor's.", "",
                  "| | requests | req/s | p50 ms | p99 ms | errors | Serve CPU ms/req | stream ms/req |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in (("idle", idle), (f"ingesting {SERVE_RATE:,} events/s", busy)):
            lines.append(f"| {name} | {r['requests']:,} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                         f"{r['errors']} | {r.get('serve_cpu_ms', float('nan')):.2f} | "
                         f"{r.get('beside_cpu_ms', float('nan')):.2f} |")
        met = "met" if rise <= GOAL_SERVE else "NOT met"
        lines += ["", f"- Goal p99 within +{GOAL_SERVE:.0%} of idle: {rise:+.1%}, {met}. Events still waiting on "
                      f"the bus when the load stopped: {sv['lag_after']:,}; rejected: {sv['rejected']:,}."]
        if "serve_cpu_ms" in idle:
            cpu = busy["serve_cpu_ms"] / idle["serve_cpu_ms"] - 1
            lines.append(f"- Goal Serve CPU per /recommend within +10% of idle (docs/benchmarks.md, Serving): "
                         f"{cpu:+.1%}, {'met' if cpu <= 0.10 else 'NOT met'}.")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["parity", "throughput", "freshness", "serve"],
                    choices=["parity", "throughput", "freshness", "serve"])
    ap.add_argument("--buses", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "redis"])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--preload", type=int, default=None, help="events on the bus before the throughput run "
                    f"(default per bus, about 70 s of work on 2 cores: {PRELOAD})")
    ap.add_argument("--baseline-seconds", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="config overrides of the serve part's scenario")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("RECFORGE_PROGRESS", "0")
    ctx = {"command": command("scripts.bench.events", argv), "when": now(),
           "machine": machine("ray", "redis", "hiredis", "pyarrow"), "seconds": args.seconds}
    res: dict[str, Any] = {}
    if "parity" in args.parts:
        res["parity"] = parity()
    with bus_setups(args.buses) as setups:
        for kind, (out, url) in setups:
            if "throughput" in args.parts:
                log(f"throughput, {kind}")
                r = throughput(fresh_config(out, url), args.preload or PRELOAD[kind], args.seconds, args.seed)
                res.setdefault("throughput", {})[kind] = r
                log(f"{kind}: {r['events_per_second']:,.0f} events/s")
                if kind == "redis":
                    for name, piped in (("baseline", False), ("baseline_pipelined", True)):
                        log(f"peer: per-event consumer, redis, {'pipelined' if piped else 'one round trip each'}")
                        res[name] = baseline(fresh_config(out, url), 200_000, args.baseline_seconds, args.seed,
                                             pipelined=piped)
                        log(f"peer: {res[name]['events_per_second']:,.0f} events/s")
            if "freshness" in args.parts:
                log(f"freshness, {kind}")
                res.setdefault("freshness", {})[kind] = r = freshness(fresh_config(out, url), args.seconds / 2,
                                                                      args.seed)
                log(f"{kind}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
    if "serve" in args.parts:
        log("serve")
        res["serve"] = serve_part(args.seconds, 5.0, args.overrides)
    emit(NAME, render(res, ctx), write=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
