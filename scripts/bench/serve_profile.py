"""Where one /recommend spends its CPU: the ingress's FastAPI app called in this process (no Ray Serve, no HTTP),
stage by stage, for both request paths (`serving.request_path`).

The app is the one an ingress replica runs (fused topology: retriever and ranker in process), called through ASGI
with the same JSON bodies `scripts.bench.serve` sends, one request at a time on one thread, so the figures are CPU
time per request of the replica's own work (validation, online-store reads, transforms, towers, index, ranker,
response). Stages are timed with `time.perf_counter` around the functions that make them (patched in for the
run; the answers are not touched), and the whole request with `time.process_time`.

    .venv/bin/python -m scripts.bench.serve_profile                  # both paths, 2,000 requests each
    .venv/bin/python -m scripts.bench.serve_profile --cprofile fast  # the top functions of one path
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import io
import json
import logging
import pstats
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from scripts.bench.common import command, load_text, logger, machine, now
from scripts.bench.doc import emit

NAME = "bench_serve_profile"
SORT = "cumulative"
log = logger(NAME)


def build_ingress(cfg: Any, path: str) -> Any:
    """An ingress of the scenario's app, its models in process, outside Ray Serve."""
    from recforge.config import app_settings
    from serving.app import local_ingress

    settings = app_settings(cfg)
    settings = dataclasses.replace(settings, serving=settings.serving.model_copy(update={"request_path": path}))
    try:
        return local_ingress(settings)
    except TimeoutError as exc:
        raise SystemExit(f"serve_profile: {exc} (or run `python -m scripts.bench.serve --setup` first)") from None


async def call(asgi: Any, body: bytes) -> tuple[int, bytes]:
    """One POST /recommend through the ASGI app; (status, body)."""
    sent = False
    out: dict[str, Any] = {"status": 0, "body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/recommend", "raw_path": b"/recommend", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    await asgi(scope, receive, send)
    return out["status"], out["body"]


STAGES: dict[str, tuple[str, str]] = {  # stage -> (module, attribute path) timed inclusive
    "user features (online store)": ("serving.features", "FeatureReader.user"),
    "user transform + tower": ("training.retrieval.bundle", "Retriever.user_vectors"),
    "user side (cache; on a miss transform + tower / inputs)": ("serving.inference", "UserSide.get"),
    "index search": ("training.retrieval.bundle", "Retriever.search"),
    "item lookup (cache)": ("serving.features", "ItemInputs.lookup"),
    "item lookup (int ids)": ("serving.features", "ItemInputs.lookup_ids"),
    "ranker inputs (request side)": ("serving.features", "ItemInputs.rows"),
    "ranker inputs (gather)": ("serving.features", "ItemInputs.batch"),
    "ranker forward": ("serving.deployments", "score_transformed"),
    "ranker forward (graph)": ("serving.inference", "RankerGraph.probabilities"),
    "ranker items' first layers (new items)": ("serving.inference", "SplitScorer.items"),
    "ranker forward (split first layers)": ("serving.inference", "SplitScorer.probabilities"),
    "response JSON": ("serving.app", "_answer"),
}


@contextmanager
def timed_stages() -> Iterator[dict[str, list[float]]]:
    """Patch the stage functions with timing wrappers for the duration of the block."""
    import importlib

    times: dict[str, list[float]] = defaultdict(list)
    undo: list[Callable[[], None]] = []
    for stage, (module, attr) in STAGES.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        owner_name, _, fn_name = attr.rpartition(".")
        owner = getattr(mod, owner_name, None) if owner_name else mod
        if owner is None or not hasattr(owner, fn_name):
            continue
        original = getattr(owner, fn_name)

        def wrap(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
            def timed(*a: Any, **kw: Any) -> Any:
                t = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    times[key].append((time.perf_counter() - t) * 1e3)
            return timed

        setattr(owner, fn_name, wrap(original, stage))
        undo.append(lambda o=owner, n=fn_name, f=original: setattr(o, n, f))
    try:
        yield times
    finally:
        for u in undo:
            u()


def measure(ingress: Any, bodies: Sequence[bytes], *, profile: bool = False) -> dict[str, Any]:
    from serving.app import build_api

    asgi = build_api(ingress)
    loop = asyncio.new_event_loop()
    for b in bodies[:50]:  # warm-up: caches filled, lazy imports done
        loop.run_until_complete(call(asgi, b))
    prof = cProfile.Profile() if profile else None
    cpu, answers = [], []
    with timed_stages() as stages:
        if prof is not None:
            prof.enable()
        for b in bodies:
            c0 = time.process_time()
            status, out = loop.run_until_complete(call(asgi, b))
            cpu.append((time.process_time() - c0) * 1e3)
            answers.append((status, out))
        if prof is not None:
            prof.disable()
    loop.close()
    n = len(bodies)
    result = {"cpu_ms": float(np.mean(cpu)), "p50_ms": float(np.median(cpu)), "answers": answers,
              "stages": {k: sum(v) / n for k, v in stages.items()}}
    if prof is not None:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(SORT).print_stats(60)
        result["profile"] = s.getvalue()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--users", type=int, default=2000, help="request bodies (random known users), sent in turn "
                                                          "as scripts.bench.serve sends them")
    ap.add_argument("--paths", nargs="+", default=["baseline", "fast"], choices=["baseline", "fast"])
    ap.add_argument("--cprofile", choices=["baseline", "fast"], default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    start = machine()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    from recforge.config import load
    from scripts.bench.serve import sample_ids

    cfg = load(args.config, args.overrides)
    users, _ = sample_ids(cfg, args.users, args.seed)
    bodies = [json.dumps({"user_id": u, "k": 10}).encode() for u in users]
    bodies = [bodies[i % len(bodies)] for i in range(args.requests)]
    results = {}
    extra: list[str] = []
    for path in args.paths:
        ingress = build_ingress(cfg, path)
        results[path] = measure(ingress, bodies, profile=args.cprofile == path)
        if path == "fast":
            side = ingress.ranker.instance.user_side.stats()
            graph = ingress.ranker.instance.slot.current().model.inference.status()
            extra.append(f"fast path's user-side cache after the run: {side['users']:,} users, {side['hits']:,} "
                         f"hits, {side['misses']:,} misses (retriever and ranker lookups together), "
                         f"{side['transforms']:,} transforms of a user row (one serves both models)")
            split = ingress.ranker.instance._items[id(ingress.ranker.instance.slot.current())][1].split
            if split is not None:
                extra.append(f"ranker split scoring (first layers per item and per request): "
                             f"{'on' if split.verified else 'refused'}, largest difference from the forward on "
                             f"the first request {split.largest_difference:.1e} (tolerance 1e-06)")
            extra.append(f"ranker inference graph chosen at load: {graph['graph']} (CPU ms per 200 rows: " +
                         ", ".join(f"{k} {v:.2f}" for k, v in graph["cpu_ms"].items()) + "; " +
                         "; ".join(f"{k} refused: {v}" for k, v in graph["refused"].items()) + ")")
        r = results[path]
        log(f"{path}: {r['cpu_ms']:.2f} ms CPU per request (median {r['p50_ms']:.2f})")
        for stage, ms in r["stages"].items():
            log(f"  {stage}: {ms:.2f} ms")
        if "profile" in r:
            print(r["profile"])
    same = None
    if len(results) == 2:
        a, b = (results[p]["answers"] for p in ("baseline", "fast"))
        same = sum(x[0] == y[0] and _items(x[1]) == _items(y[1]) for x, y in zip(a, b))
        log(f"same items in the same order: {same} of {len(a)} answers")
    ctx = {"machine": start, "date": now(), "command": command("scripts.bench.serve_profile", argv),
           "requests": args.requests, "users": len(set(users)), "same": same, "extra": extra}
    emit(NAME, render(results, ctx), write=not args.no_doc and args.cprofile is None)
    return 0


def render(results: dict[str, dict[str, Any]], ctx: dict[str, Any]) -> str:
    m = ctx["machine"]
    paths = list(results)
    stages = list(dict.fromkeys(k for r in results.values() for k in r["stages"]))
    out = ["## One /recommend, stage by stage (scripts.bench.serve_profile)", "",
           f"`{ctx['command']}` on {ctx['date']}: {m['cpu']}, {m['usable']} usable of {m['cores']} cores, "
           f"{load_text(m)}; nothing else running.", "",
           f"The ingress's FastAPI app of the demo scenario (fused: retriever and ranker in process) called through "
           f"ASGI in one process, without Ray Serve or HTTP, one request at a time on one thread: {ctx['requests']:,} "
           f"requests over {ctx['users']:,} known users sent in turn (as scripts.bench.serve sends them), after 50 "
           f"warm-up requests; k=10 of 200 candidates. Stage figures are mean wall ms per request of the functions "
           f"that make them (on one thread, CPU time); a stage a path does not run is blank.", "",
           "| stage | " + " | ".join(f"{p} ms" for p in paths) + " |", "|---|" + "---:|" * len(paths)]
    for stage in stages:
        out.append(f"| {stage} | " + " | ".join(f"{results[p]['stages'][stage]:.2f}" if stage in results[p]['stages']
                                               else "" for p in paths) + " |")
    out.append("| **CPU per request (whole request)** | " + " | ".join(f"**{results[p]['cpu_ms']:.2f}**"
                                                                      for p in paths) + " |")
    out.append("")
    if ctx["same"] is not None:
        out.append(f"- Same items in the same order on both paths: {ctx['same']:,} of {ctx['requests']:,} answers.")
    if len(paths) == 2:
        ratio = results["fast"]["cpu_ms"] / results["baseline"]["cpu_ms"]
        out.append(f"- CPU per request, fast / baseline: {ratio:.2f}x "
                   f"(in process; the Serve figures, with HAProxy and the replica's own overhead, are in the section "
                   f"above).")
    for line in ctx["extra"]:
        out.append(f"- {line}")
    return "\n".join(out) + "\n"


def _items(body: bytes) -> list[Any]:
    return [i["item_id"] for i in json.loads(body).get("items", [])]


if __name__ == "__main__":
    raise SystemExit(main())
