"""Benchmark of the recommendation API: latency and throughput of /recommend and /predict over HTTP on 127.0.0.1.

The app (serving.server.start_app: a local Ray Serve with the scenario's champion ranker and retriever) runs in
this process's Ray; the load comes from client threads in this process, each with one keep-alive connection
(http.client), sending requests back to back for `--seconds` per (endpoint, concurrency) after a warm-up, so the
client shares the machine with the server (the figures include that). Bodies: known users of the scenario drawn
at random (seeded); /predict asks for `--predict-items` random catalogue items; /recommend asks for k=`--k`.

Reported per run: requests, requests/s, latency p50/p95/p99 (client-measured, ms), errors (any non-200 or dropped
connection), and where the time goes: the app's own per-stage timings (its `Server-Timing` header: feature lookup,
retrieval, ranking; mean ms) and the rest (client-measured latency minus the ingress's total: HTTP proxy, the
hop to the ingress replica, JSON and the client), and the CPU time the Serve processes spent per request. A
no-work endpoint on the same Serve proxy is measured alongside as the reference (`scripts.bench.serve_load`).
Goals at concurrency 8: p99 <= 50 ms, /recommend req/s >= 15% of the no-work floor's, and the fast request path's
Serve CPU per request at most half the baseline path's: `--request-paths` (default both) starts the app once per
`serving.request_path` in the same run, so the two paths and the floor are measured side by side.

    .venv/bin/python -m scripts.bench.serve --setup                      # the demo scenario, 60 s per run
    .venv/bin/python -m scripts.bench.serve --tiny --seconds 5 --no-doc  # quick look on a tiny scenario

`--setup` runs whatever the scenario lacks (generate/prepare/materialize, train ctr + retrieval, index, register
and promote both models); without it the scenario's models must already be champions. Rewrites its own section
of docs/benchmarks.md (between its marker comments) unless `--no-doc`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scripts.bench.common import REPO, command, load_text, logger, machine, now
from scripts.bench.doc import emit
from scripts.bench.serve_load import FLOOR_PATH, STAGES, bodies_for, deploy_floor, load_run

NAME = "bench_serve"
GOAL_P99_MS, GOAL_CONCURRENCY, GOAL_FLOOR_SHARE = 50.0, 8, 0.15
TINY = ["source.n_users=2000", "source.n_items=1000", "source.n_impressions=100000", "source.days=10",
        "features.categorical.0.min_freq=5", "features.categorical.1.min_freq=5", "train.max_epochs=1",
        "retrieval.max_epochs=1", "retrieval.baselines=[]", "retrieval.refit=false", "retrieval.query_sample=200"]
log = logger(NAME)


# ------------------------------------------------------------------------------------------------ scenario
def champions(cfg: Any) -> dict[str, str | None]:
    from mlflow.exceptions import MlflowException

    from recforge.config import registry_settings
    from serving.registry import mlflow_client

    settings = registry_settings(cfg)
    client = mlflow_client(settings)
    out: dict[str, str | None] = {}
    for name in (settings.ranker_model, settings.retriever_model):
        try:
            out[name] = str(client.get_model_version_by_alias(name, cfg.serving.alias).version)
        except MlflowException:
            out[name] = None
    return out


def setup(cfg: Any) -> None:
    """Build and register what the scenario lacks, so both models have a champion."""
    from feature_store.config import SyntheticSource
    from recforge import pipeline
    from recforge.config import registry_settings
    from serving import registry

    settings = registry_settings(cfg)
    out = Path(cfg.output_dir)
    os.environ.setdefault("RECFORGE_PROGRESS", "0")
    if not (out / "prepared" / "spec").is_dir():
        if isinstance(cfg.source, SyntheticSource):
            log("generate")
            pipeline.generate(cfg)
        log("prepare")
        pipeline.prepare(cfg)
    if not (out / "online.db").is_file():
        log("materialize")
        pipeline.materialize(cfg)
    ranker, retriever = settings.ranker_model, settings.retriever_model
    have = champions(cfg)
    if have[ranker] is None:
        log("train ctr, register, promote")
        pipeline.train_ctr(cfg)
        registry.promote(settings, ranker, registry.register_ranker(settings).version)
    if have[retriever] is None:
        log("train retrieval, index, register, promote")
        pipeline.train_retrieval(cfg)
        pipeline.build_index(cfg)
        registry.promote(settings, retriever, registry.register_retriever(settings).version)


def sample_ids(cfg: Any, n: int, seed: int) -> tuple[list[Any], list[Any]]:
    """`n` random known user ids and the item catalogue, from the offline store's entity tables."""
    from feature_store.offline import OfflineStore
    from feature_store.prepare import layout

    offline = OfflineStore(layout(cfg).offline)
    f = cfg.features
    keys: dict[str, list[Any]] = {}
    for role, key in (("user", f.user_key), ("item", f.item_key)):
        ent = next((e for e in cfg.entities.values() if e.key == key), None)
        if ent is None:
            raise SystemExit(f"bench_serve: the config has no entity keyed by {role} key '{key}' (entities:)")
        keys[role] = np.unique(offline.read_table(ent.table).column(key).to_numpy(zero_copy_only=False)).tolist()
    rng = np.random.default_rng(seed)
    users = rng.choice(np.asarray(keys["user"], dtype=object), size=n).tolist()
    return users, keys["item"]


# ------------------------------------------------------------------------------------------------ load


# ------------------------------------------------------------------------------------------------ report
def replicas_text(s: Any) -> str:
    if s.topology == "fused":
        return f"fused topology, {s.ingress_replicas} ingress replicas (each holds both models)"
    return (f"split topology, {s.ingress_replicas} ingress, {s.retriever_replicas} retriever and "
            f"{s.ranker_replicas} ranker replicas")


def proxy_text() -> str:
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        return "HAProxy (Ray Serve high-throughput mode, gRPC between replicas)"
    return "Ray Serve's Python proxy actor"


def render(rows: list[dict[str, Any]], ctx: dict[str, Any]) -> str:
    m = ctx["machine"]
    out = ["## Serving (scripts.bench.serve)", "",
           f"`{ctx['command']}` on {ctx['date']}: {m['cpu']}, {m['usable']} usable of {m['cores']} cores, "
           f"{m['ram_gib']:.0f} GiB, {m['os']}, Python {m['python']}; Ray {ctx['ray']}; {load_text(m)}.", "",
           f"Scenario `{ctx['scenario']}`: {ctx['models']}; {ctx['candidates']} retrieval candidates ranked per "
           f"/recommend (k={ctx['k']}), {ctx['predict_items']} items per /predict; {ctx['users']} distinct known "
           f"users. App and load generator on the same machine, HTTP keep-alive on 127.0.0.1, {ctx['seconds']:.0f} s "
           f"per row after a {ctx['warmup']:.0f} s warm-up; {ctx['replicas']}; HTTP proxy: {ctx['proxy']}. "
           f"`{FLOOR_PATH}` is the reference: an endpoint on the same Serve proxy that does no work, i.e. what Ray "
           f"Serve itself costs here.", "",
           "| endpoint | request path | concurrency | requests | req/s | p50 ms | p95 ms | p99 ms | errors | features "
           "| retrieval | ranking | Serve calls | app total | proxy + client | Serve CPU ms/req | client CPU ms/req |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["stages"]
        stages = ["-"] * 5 if r["path"] == FLOOR_PATH else [f"{s[k]:.1f}" for k in STAGES]
        out.append(f"| {r['path']} | {r.get('request_path') or '-'} | {r['concurrency']} | {r['requests']:,} | "
                   f"{r['rps']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | {r['errors']} | "
                   f"{' | '.join(stages)} | "
                   f"{s['proxy_client']:.1f} | {r['serve_cpu_ms']:.1f} | {r['client_cpu_ms']:.1f} |")
    out += ["", "Stage columns: mean ms per request from the app's `Server-Timing` header (features: online-store "
            "reads of the user and, for items not cached yet, of the items; retrieval: user tower + index search; "
            "ranking: the request-side transform and the CTR model; Serve calls: the rest of the time the ingress "
            "waited on the models, i.e. routing, queueing and transfer between replicas (about 0 in the fused "
            "topology); app total: the ingress's wall time). proxy + client: mean client latency minus app total, "
            "i.e. HTTP, the proxy and the wait for a free replica. Serve CPU ms/req: CPU time of the HTTP proxy "
            "and all replicas per answered request; client CPU ms/req: the load generator's (2 cores / their sum "
            "= the machine's ceiling in req/s).", ""]
    out += goal_lines(rows)
    return "\n".join(out) + "\n"


def goal_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The goals at concurrency 8, each met or not: p99, req/s against the floor's, Serve CPU per /recommend of
    the fast request path against the baseline path's in the same run."""
    at = {(r["path"], r.get("request_path") or ""): r for r in rows if r["concurrency"] == GOAL_CONCURRENCY}
    floor = at.get((FLOOR_PATH, ""))
    out: list[str] = []
    if floor is not None:
        out.append(f"- Reference at concurrency {GOAL_CONCURRENCY}: the no-work endpoint answers {floor['rps']:,.0f} "
                   f"req/s, p99 {floor['p99']:.1f} ms, {floor['serve_cpu_ms']:.2f} Serve CPU ms per request.")
    for (path, rp), r in at.items():
        if path == FLOOR_PATH:
            continue
        ok = r["p99"] <= GOAL_P99_MS and r["errors"] == 0
        line = (f"- {path}, {rp} path, concurrency {GOAL_CONCURRENCY}: p99 {r['p99']:.1f} ms (goal <= "
                f"{GOAL_P99_MS:.0f}): {'met' if ok else 'NOT met'}")
        if floor is not None:
            share = r["rps"] / floor["rps"]
            line += (f"; {r['rps']:.1f} req/s = {share:.1%} of the floor's (goal >= {GOAL_FLOOR_SHARE:.0%}): "
                     f"{'met' if share >= GOAL_FLOOR_SHARE else 'NOT met'}")
        base = at.get((path, "baseline"))
        if rp == "fast" and base is not None:
            ratio = r["serve_cpu_ms"] / base["serve_cpu_ms"]
            line += (f"; Serve CPU {r['serve_cpu_ms']:.2f} vs {base['serve_cpu_ms']:.2f} ms per request on the "
                     f"baseline path = {ratio:.2f}x (goal <= 0.50x): {'met' if ratio <= 0.5 else 'NOT met'}")
        out.append(line + ".")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    ap.add_argument("--tiny", action="store_true", help="a small scenario under runs/bench_serve (implies --setup)")
    ap.add_argument("--setup", action="store_true", help="build, register and promote what the scenario lacks")
    ap.add_argument("--seconds", type=float, default=60.0, help="measured seconds per (endpoint, concurrency)")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--endpoints", nargs="+", default=["recommend", "predict"], choices=["recommend", "predict"])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--predict-items", type=int, default=20)
    ap.add_argument("--users", type=int, default=2000, help="request bodies (random known users) per endpoint")
    ap.add_argument("--port", type=int, default=None, help="default: serving.port")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--request-paths", nargs="+", default=["baseline", "fast"], choices=["baseline", "fast"],
                    help="serving.request_path values measured one after the other in this run")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = machine()
    from recforge.config import app_settings, load
    from serving.server import start_app, stop_app

    tiny = [*TINY, f"output_dir={REPO / 'runs' / NAME}"] if args.tiny else []
    overrides = [*tiny, *args.overrides]
    if args.port:
        overrides.append(f"serving.port={args.port}")
    cfg = load(args.config, overrides)
    if args.setup or args.tiny:
        setup(cfg)
    versions = champions(cfg)
    if not all(versions.values()):
        raise SystemExit(f"bench_serve: no '{cfg.serving.alias}' version for {versions}; run with --setup (or "
                         f"`recforge register` + `recforge promote`)")
    users, items = sample_ids(cfg, args.users, args.seed)
    rows: list[dict[str, Any]] = []
    for n, request_path in enumerate(args.request_paths):
        path_cfg = load(args.config, [*overrides, f"serving.request_path={request_path}"])
        log(f"starting the app, request path {request_path} ({versions})")
        url = start_app(app_settings(path_cfg))
        host, port = path_cfg.serving.host, int(url.rsplit(":", 1)[1])
        try:
            runs = [(f"/{e}", bodies_for(e, users, items, args.k, min(args.predict_items, len(items)), args.seed))
                    for e in args.endpoints]
            if n == len(args.request_paths) - 1:  # the floor once, on the same Serve
                deploy_floor()
                runs.append((FLOOR_PATH, [json.dumps({"user_id": u}).encode() for u in users]))
            for path, bodies in runs:
                load_run(host, port, path, bodies, max(args.concurrency), args.warmup)
                for c in args.concurrency:
                    row = load_run(host, port, path, bodies, c, args.seconds)
                    row["request_path"] = "" if path == FLOOR_PATH else request_path
                    log(f"{path} ({row['request_path'] or 'floor'}) c={c}: {row['rps']:.1f} req/s, p50 "
                        f"{row['p50']:.1f} p99 {row['p99']:.1f} ms, {row['serve_cpu_ms']:.2f} Serve CPU ms/req, "
                        f"{row['errors']} errors")
                    rows.append(row)
        finally:
            stop_app()
    import ray

    ctx = {"date": now(), "machine": start, "command": command("scripts.bench.serve", argv), "ray": ray.__version__,
           "scenario": cfg.name, "models": ", ".join(f"{n} v{v}" for n, v in versions.items()),
           "candidates": cfg.serving.candidates, "k": args.k, "predict_items": args.predict_items,
           "users": len(set(users)), "seconds": args.seconds, "warmup": args.warmup,
           "replicas": replicas_text(cfg.serving), "proxy": proxy_text()}
    emit(NAME, render(rows, ctx), write=not args.no_doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
