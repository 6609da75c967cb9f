"""Experiments: can a reviewer trust the statistics, does an experiment on the live service find the better model,
and what does running one cost `/recommend`?

Parts:
- stats (no server; the project's own functions: assignment hash, serving.experiments.stats):
  - A/A with peeking: `--aa` experiments (default 1,000) of two identical arms, users assigned by the real hash,
    each user 1 + Poisson(4) shown items and their own CTR (Beta, mean 0.10, concentration 10: users differ, so
    one user's clicks are correlated); a look after every 1/20 of the planned users. False positive = any look
    rejecting at alpha 0.05: the always-valid mSPRT (what decisions use) against the naive delta-method z-test
    peeked at the same looks. 95% Wilson intervals.
  - power: `--power-runs` experiments (default 500) with a true lift of the design's MDE (0.10 -> 0.12, one
    shown item per user: the design's model), run to the planned users per arm (stats.sequential_sample_size)
    with the same 20 looks; detection by the mSPRT, and by one fixed-horizon z-test at the end beside it.
  - SRM: a 50/50 experiment that loses 2% of one arm's users (their exposures never logged), `--srm-runs` per
    size (default 500); flagged = chi-square p < 0.001 (stats.SRM_ALPHA); the same without loss for the false
    alarm rate.
- e2e (the demo scenario's registry, `recforge simulate` against the live server, the monitor beside the app):
  control = the lr ranker, challenger = the demo's dcnv2 champion (the simulator measures both true CTRs), a
  fixed 50/50 split and then Thompson sampling on the same visits; does the experiment pick the challenger, and
  which split lost fewer expected clicks (regret).
- overhead: `/recommend` p99 and Serve CPU per request at concurrency 8 on the demo scenario, no experiment
  against a two-arm A/A experiment (the champion in both arms, exposures logged to the bus and applied by the
  stream processor), alternated in one run.

    .venv/bin/python -m scripts.bench.experiments                    # all parts; writes its section
    .venv/bin/python -m scripts.bench.experiments --parts stats --aa 200 --no-doc

Run it alone on the machine (e2e and overhead use the demo scenario under runs/demo: `make demo` first; the lr
ranker is trained and registered once if the registry has none).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from scripts.bench.common import REPO, command, load_text, logger, machine, machine_text, now
from scripts.bench.doc import emit

NAME = "bench_experiments"
log = logger(NAME)
ALPHA = 0.05
LOOKS = 20
BASELINE, MDE = 0.10, 0.02


# ------------------------------------------------------------------------------------------------ stats
def _wilson(k: int, n: int) -> tuple[float, float]:
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
    return float(low), float(high)


def _looks(users_per_arm: int) -> np.ndarray:
    return np.unique(np.linspace(0, 2 * users_per_arm, LOOKS + 1)[1:].astype(np.int64))


def _sequential(clicks: np.ndarray, shown: np.ndarray, arm: np.ndarray, looks: np.ndarray,
                tau: float) -> tuple[bool, bool, bool]:
    """(naive z rejected at some look, mSPRT rejected by the last look, z rejected at the last look only)."""
    from serving.experiments import stats

    ds, vs, naive = [], [], False
    for end in looks:
        c, s, a = clicks[:end], shown[:end], arm[:end]
        comp = stats.ratio(c[a == 0], s[a == 0], c[a == 1], s[a == 1], alpha=ALPHA)
        _, v0 = stats.ratio_variance(c[a == 0], s[a == 0])
        _, v1 = stats.ratio_variance(c[a == 1], s[a == 1])
        ds.append(comp.difference)
        vs.append(v0 + v1)
        naive |= comp.p_value < ALPHA
    p = stats.msprt(np.array(ds), np.array(vs), tau * tau)
    return naive, bool(p[-1] < ALPHA), bool(comp.p_value < ALPHA)


def aa_part(runs: int, seed: int) -> dict[str, Any]:
    from serving.experiments import stats
    from serving.experiments.assign import pick, unit_points

    planned = stats.sequential_sample_size(BASELINE, MDE, alpha=ALPHA, power=0.8)
    looks = _looks(planned)
    rng = np.random.default_rng(seed)
    naive = seq = srm_alarms = 0
    t0 = time.perf_counter()
    for r in range(runs):
        n = 2 * planned
        arm = pick(unit_points(f"aa-{seed}-{r}", range(n)), [0.5, 0.5]).astype(np.int64)
        shown = 1 + rng.poisson(4, n)
        ctr = rng.beta(BASELINE * 10, (1 - BASELINE) * 10, n)
        clicks = rng.binomial(shown, ctr)
        a, b, _ = _sequential(clicks, shown, arm, looks, MDE)
        naive += a
        seq += b
        srm_alarms += stats.srm(np.bincount(arm, minlength=2).tolist(), [0.5, 0.5]).mismatch
        if (r + 1) % 100 == 0:
            log(f"A/A {r + 1}/{runs}: mSPRT {seq / (r + 1):.3f}, naive {naive / (r + 1):.3f} "
                f"({time.perf_counter() - t0:.0f}s)")
    return {"runs": runs, "users_per_arm": planned, "looks": len(looks),
            "msprt": {"rate": seq / runs, "ci": _wilson(seq, runs)},
            "naive": {"rate": naive / runs, "ci": _wilson(naive, runs)},
            "srm_false_alarms": {"rate": srm_alarms / runs, "ci": _wilson(srm_alarms, runs)}}


def power_part(runs: int, seed: int) -> dict[str, Any]:
    from serving.experiments import stats

    planned = stats.sequential_sample_size(BASELINE, MDE, alpha=ALPHA, power=0.8)
    fixed_n = stats.sample_size(BASELINE, MDE, alpha=ALPHA, power=0.8)
    looks = _looks(planned)
    rng = np.random.default_rng(seed + 1)
    seq = fixed = 0
    for r in range(runs):
        n = 2 * planned
        arm = rng.integers(0, 2, n)
        shown = np.ones(n, dtype=np.int64)
        clicks = rng.binomial(1, np.where(arm == 1, BASELINE + MDE, BASELINE))
        _, b, last = _sequential(clicks, shown, arm, looks, MDE)
        seq += b
        fixed += last
        if (r + 1) % 100 == 0:
            log(f"power {r + 1}/{runs}: mSPRT {seq / (r + 1):.3f}, fixed z {fixed / (r + 1):.3f}")
    return {"runs": runs, "users_per_arm": planned, "fixed_horizon_users_per_arm": fixed_n,
            "msprt": {"rate": seq / runs, "ci": _wilson(seq, runs)},
            "fixed": {"rate": fixed / runs, "ci": _wilson(fixed, runs)}}


def srm_part(runs: int, seed: int, sizes: Sequence[int] = (50_000, 100_000, 200_000)) -> list[dict[str, Any]]:
    from serving.experiments import stats

    rng = np.random.default_rng(seed + 2)
    out = []
    for per_arm in sizes:
        flagged = alarms = 0
        for _ in range(runs):
            a = rng.binomial(2 * per_arm, 0.5)
            b = 2 * per_arm - a
            lost = rng.binomial(b, 0.02)
            flagged += stats.srm([a, b - lost], [0.5, 0.5]).mismatch
            alarms += stats.srm([a, b], [0.5, 0.5]).mismatch
        out.append({"users_per_arm": per_arm, "runs": runs, "flagged": {"rate": flagged / runs,
                                                                         "ci": _wilson(flagged, runs)},
                    "false_alarms": {"rate": alarms / runs, "ci": _wilson(alarms, runs)}})
        log(f"SRM {per_arm:,}/arm: flagged {flagged / runs:.3f}, false alarms {alarms / runs:.3f}")
    return out


# ------------------------------------------------------------------------------------------------ live
def _demo_cfg(*overrides: str) -> Any:
    from recforge.config import load

    return load(REPO / "configs" / "demo.yaml", [f"output_dir={REPO / 'runs' / 'demo'}", *overrides])


def _versions(cfg: Any) -> dict[str, str]:
    """The demo ranker's dcnv2 champion and an lr version (trained and registered once when absent)."""
    import mlflow

    from recforge import pipeline
    from recforge.config import registry_settings, tracking_uri
    from serving import registry

    settings = registry_settings(cfg)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(cfg), registry_uri=tracking_uri(cfg))
    name = settings.ranker_model
    champion = str(client.get_model_version_by_alias(name, "champion").version)
    for mv in client.search_model_versions(f"name='{name}'"):
        if mv.run_id and client.get_run(mv.run_id).data.params.get("train.model") == "lr":
            return {"dcnv2": champion, "lr": str(mv.version)}
    log("training and registering an lr ranker (once)")
    os.environ.setdefault("RECFORGE_PROGRESS", "0")
    pipeline.train_ctr(cfg.model_copy(update={"train": cfg.train.model_copy(update={"model": "lr"})}))
    return {"dcnv2": champion, "lr": str(registry.register_ranker(settings).version)}


def _arms(control: str, challenger: str, allocation: str) -> str:
    """An experiment definition (YAML flow text for a --set override): two ranker versions, 50/50 to start."""
    return json.dumps({"arms": [{"name": "control", "share": 0.5, "ranker": control},
                                {"name": "challenger", "share": 0.5, "ranker": challenger}],
                       "allocation": {"type": allocation, "update_s": 5, "min_share": 0.05},
                       "design": {"baseline": 0.2, "mde": 0.03}, "attribution_window_s": 600})


def e2e_part(visits: int, workdir: str) -> dict[str, Any]:
    from recforge.config import app_settings
    from serving.experiments import manage
    from serving.experiments.simulate import run_simulation
    from serving.server import start_app, stop_app

    v = _versions(_demo_cfg())
    stamp = int(time.time())
    names = {"fixed": f"e2e-fixed-{stamp}", "thompson": f"e2e-thompson-{stamp}"}
    cfg = _demo_cfg("events.stream.serve=true", "events.log_flush_s=1", f"events.log_path={workdir}/log",
                    "events.bus.type=sqlite", f"events.bus.path={workdir}/bus.db",
                    f"experiments.store_path={workdir}/experiments.db", f"experiments.reports_dir={workdir}/reports",
                    "experiments.poll_s=0.5", "serving.events_token=bench-events-token",
                    *(f"experiments.definitions.{n}={_arms(v['lr'], v['dcnv2'], kind)}" for kind, n in names.items()))
    app = app_settings(cfg)
    url = start_app(app)
    out: dict[str, Any] = {"versions": v, "visits": visits}
    try:
        for kind, name in names.items():
            manage.start(app, name)
            time.sleep(3)  # the replicas load both arms
            sim = run_simulation(cfg.source, url, requests=visits, concurrency=4, seed=11, events=cfg.events,
                                 events_token=cfg.serving.events_token)
            time.sleep(4)  # the offline log's last flush
            manage.stop(app, name, "benchmark run over")
            res = manage.result(app, name)
            from serving.experiments.report import write_report

            paths = write_report(app, res, manage.report_dir(app) / name, log_to_mlflow=False)
            c = res["comparisons"]["ctr"]["challenger"]
            out[kind] = {"simulation": sim, "winner": res["winner"], "decision": res["decision"],
                         "trustworthy": res["trustworthy"], "difference": c["difference"],
                         "always_valid_p": c["always_valid_p"], "report": paths["html"],
                         "allocations": len(res["allocations"]),
                         "final_shares": res["allocations"][-1]["shares"]}
            log(f"{kind}: winner {res['winner']}, regret {sim['regret']}, shares {out[kind]['final_shares']}")
    finally:
        stop_app()
    return out


def overhead_part(seconds: float, rounds: int, workdir: str) -> dict[str, Any]:
    from recforge.config import app_settings
    from scripts.bench.serve import sample_ids
    from scripts.bench.serve_load import bodies_for, load_run
    from serving.experiments import manage
    from serving.server import start_app, stop_app

    v = _versions(_demo_cfg())
    cfg = _demo_cfg("events.stream.serve=true", f"events.log_path={workdir}/log-overhead", "events.bus.type=sqlite",
                    f"events.bus.path={workdir}/bus-overhead.db", f"experiments.store_path={workdir}/overhead.db",
                    "experiments.poll_s=0.5",
                    *(f"experiments.definitions.o{i}={_arms(v['dcnv2'], v['dcnv2'], 'fixed')}" for i in range(rounds)))
    app = app_settings(cfg)
    users, items = sample_ids(cfg, 2000, 0)
    bodies = bodies_for("recommend", users, items, 10, 20, 0)
    url = start_app(app)
    host, port = cfg.serving.host, int(url.rsplit(":", 1)[1])
    rows: dict[str, list[dict[str, Any]]] = {"none": [], "two_arms": []}

    def measured() -> dict[str, Any]:
        """One load run; `beside_cpu_ms`: the CPU per request of the actors beside Serve (the stream processor,
        the experiment monitor), which work per event batch and per analysis pass, not per request."""
        from scripts.bench.serve_load import beside_processes, cpu_seconds

        beside = beside_processes()
        before = cpu_seconds(beside)
        row = load_run(host, port, "/recommend", bodies, 8, seconds)
        row["beside_cpu_ms"] = (cpu_seconds(beside) - before) / max(row["requests"], 1) * 1e3
        return row

    def with_experiment(i: int) -> dict[str, Any]:
        manage.start(app, f"o{i}")
        time.sleep(3)
        load_run(host, port, "/recommend", bodies, 8, 10)  # the arms' versions loaded and warm, as before round 1
        row = measured()
        manage.stop(app, f"o{i}", "benchmark round over")
        time.sleep(2)
        return row

    try:
        load_run(host, port, "/recommend", bodies, 8, 10)
        for i in range(rounds):  # the order alternates, so a drift over the run weighs on both alike
            for kind in (("none", "two_arms") if i % 2 == 0 else ("two_arms", "none")):
                rows[kind].append(with_experiment(i) if kind == "two_arms" else measured())
            log(f"round {i + 1}: p99 none {rows['none'][-1]['p99']:.1f} ms, two arms "
                f"{rows['two_arms'][-1]['p99']:.1f} ms; Serve CPU {rows['none'][-1]['serve_cpu_ms']:.2f} vs "
                f"{rows['two_arms'][-1]['serve_cpu_ms']:.2f} ms per request")
    finally:
        stop_app()
    summary = {k: {"p50": float(np.median([r["p50"] for r in v_])), "p99": float(np.median([r["p99"] for r in v_])),
                   "rps": float(np.median([r["rps"] for r in v_])), "errors": int(sum(r.get("errors", 0) for r in v_)),
                   "serve_cpu_ms": float(np.median([r["serve_cpu_ms"] for r in v_])),
                   "beside_cpu_ms": float(np.median([r["beside_cpu_ms"] for r in v_]))}
               for k, v_ in rows.items()}
    summary["rounds"] = rounds
    summary["seconds"] = seconds
    summary["request_path"] = app.serving.request_path
    summary["p99_ratio"] = summary["two_arms"]["p99"] / summary["none"]["p99"]
    summary["cpu_ratio"] = summary["two_arms"]["serve_cpu_ms"] / summary["none"]["serve_cpu_ms"]
    return summary


# ------------------------------------------------------------------------------------------------ report
def _rate(x: dict[str, Any]) -> str:
    return f"{x['rate']:.1%} [{x['ci'][0]:.1%}, {x['ci'][1]:.1%}]"


def render(res: dict[str, Any], ctx: dict[str, Any]) -> str:
    lines = ["## Experiments (scripts.bench.experiments)", "",
             f"- Command: `{ctx['command']}` ({ctx['when']})",
             f"- Machine: {machine_text(ctx['machine'])}; {load_text(ctx['machine'])}; nothing else running", ""]
    if "aa" in res:
        aa, pw = res["aa"], res["power"]
        lines += ["### A/A with peeking, power, sample ratio", "",
                  f"Design: baseline CTR {BASELINE}, MDE +{MDE} (absolute), alpha {ALPHA}, power 0.8: "
                  f"{aa['users_per_arm']:,} users per arm for the always-valid test (one fixed look would need "
                  f"{pw['fixed_horizon_users_per_arm']:,}); a look after every 1/{LOOKS} of them. The statistics are "
                  f"the project's (serving.experiments.stats), the arms the real assignment hash.", "",
                  "| check | runs | rate [95% interval] | goal | met |", "|---|---:|---|---|---|",
                  f"| A/A false positives, mSPRT (always-valid, any look) | {aa['runs']:,} | {_rate(aa['msprt'])} | "
                  f"<= 6% | {'yes' if aa['msprt']['rate'] <= 0.06 else 'NO'} |",
                  f"| A/A false positives, naive z-test peeked at the same looks | {aa['runs']:,} | "
                  f"{_rate(aa['naive'])} | (the peer: inflates) | - |",
                  f"| A/A sample-ratio false alarms (p < 0.001) | {aa['runs']:,} | {_rate(aa['srm_false_alarms'])} | "
                  f"~0.1% | - |",
                  f"| power at the planned users, MDE lift, mSPRT | {pw['runs']:,} | {_rate(pw['msprt'])} | >= 80% | "
                  f"{'yes' if pw['msprt']['rate'] >= 0.8 else 'NO'} |",
                  f"| power, one fixed-horizon z-test at the planned users | {pw['runs']:,} | {_rate(pw['fixed'])} | "
                  f"(beside it) | - |"]
        for s in res["srm"]:
            lines.append(f"| 2% of one arm's users lost, {s['users_per_arm']:,} per arm: flagged | {s['runs']:,} | "
                         f"{_rate(s['flagged'])} | >= 95% | {'yes' if s['flagged']['rate'] >= 0.95 else 'no'} |")
        lines += ["", "A/A users: 1 + Poisson(4) shown items each and their own CTR (Beta, mean 0.10, concentration "
                  "10); power runs: the design's model (one item per user, rate 0.10 vs 0.12). SRM: binomial arm "
                  "counts (the hash's split is checked by the A/A false-alarm row and tests/serving).", ""]
    if "e2e" in res:
        e = res["e2e"]
        lines += ["### End to end: the simulator against the live service", "",
                  f"The demo scenario (`make demo`), control = lr ranker v{e['versions']['lr']}, challenger = the "
                  f"dcnv2 champion v{e['versions']['dcnv2']}; {e['visits']:,} visits of the synthetic generator's "
                  f"users (`recforge simulate`, concurrency 4, k = 10), the outcomes posted to /events, the analysis "
                  f"read back from the offline event log. Thompson: the monitor beside the app updates the shares "
                  f"every 5 s (min share 0.05).", "",
                  "| split | true CTR control / challenger | observed | winner | difference (always-valid p) | "
                  "expected clicks lost (regret) | final shares |", "|---|---|---|---|---|---:|---|"]
        for kind in ("fixed", "thompson"):
            r = e[kind]
            arms = r["simulation"]["arms"]
            tc = " / ".join(f"{arms[a]['true_ctr']:.4f}" for a in ("control", "challenger") if a in arms)
            oc = " / ".join(f"{arms[a]['observed_ctr']:.4f}" for a in ("control", "challenger") if a in arms)
            shares = ", ".join(f"{k} {v:.2f}" for k, v in r["final_shares"].items())
            lines.append(f"| {kind} | {tc} | {oc} | {r['winner']} | {r['difference']:+.4f} "
                         f"({r['always_valid_p']:.2g}) | {r['simulation']['regret']['expected_clicks_lost']:,.1f} | "
                         f"{shares} |")
        f, t = e["fixed"], e["thompson"]
        picked = "met" if f["winner"] == "challenger" else "NOT met"
        lower = t["simulation"]["regret"]["expected_clicks_lost"] < f["simulation"]["regret"]["expected_clicks_lost"]
        lines += ["", f"- Goal: the experiment picks the challenger: {picked}; Thompson's regret below the fixed "
                  f"split's: {'met' if lower else 'NOT met'}.", ""]
    if "overhead" in res:
        o = res["overhead"]
        lines += ["### What an experiment costs /recommend", "",
                  f"The demo scenario's app (fused topology, 2 ingress replicas, the stream processor beside it); "
                  f"`/recommend` k = 10 at concurrency 8 on the {o.get('request_path', 'baseline')} request path, "
                  f"{o['seconds']:.0f} s per measurement, no experiment and a two-arm experiment alternated "
                  f"{o['rounds']} times in one run; medians of the rounds. Both arms serve the champion ranker "
                  f"(an A/A split, 50/50), so the difference is what the experiment itself costs: routing, the "
                  f"arms' pinned versions, every exposure logged to the bus and applied to the online store by the "
                  f"stream processor; the first 10 s after the experiment starts (its versions loading) are not "
                  f"measured, as the 10 s before the first round are not; the order of the two alternates from "
                  f"round to round. Serve CPU: the HTTP proxy's and the replicas' CPU time per answered request "
                  f"(what the serving goal counts); beside: the stream processor's and the experiment monitor's, "
                  f"which work per event batch and per analysis pass (`allocation.update_s`), not per request.", "",
                  "| | p50 ms | p99 ms | requests/s | errors | Serve CPU ms/req | beside ms/req |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for k, label in (("none", "no experiment"), ("two_arms", "two-arm experiment")):
            lines.append(f"| {label} | {o[k]['p50']:.1f} | {o[k]['p99']:.1f} | {o[k]['rps']:.1f} | {o[k]['errors']} "
                         f"| {o[k].get('serve_cpu_ms', float('nan')):.2f} "
                         f"| {o[k].get('beside_cpu_ms', float('nan')):.2f} |")
        lines += ["", f"- Goal: p99 within +10%: {o['p99_ratio'] - 1:+.1%}, "
                  f"{'met' if o['p99_ratio'] <= 1.10 else 'NOT met'}."]
        if "cpu_ratio" in o:
            lines.append(f"- Goal: Serve CPU per /recommend within +10% (the serving goal of docs/benchmarks.md, "
                         f"Serving): {o['cpu_ratio'] - 1:+.1%}, {'met' if o['cpu_ratio'] <= 1.10 else 'NOT met'}.")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="stats,e2e,overhead")
    ap.add_argument("--aa", type=int, default=1000)
    ap.add_argument("--power-runs", type=int, default=500)
    ap.add_argument("--srm-runs", type=int, default=500)
    ap.add_argument("--visits", type=int, default=6000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    ctx = {"command": command("scripts.bench.experiments", argv), "when": now(),
           "machine": machine("ray", "statsmodels", "scipy")}
    res: dict[str, Any] = {}
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-experiments-") as tmp:
        if "stats" in parts:
            res["aa"] = aa_part(args.aa, args.seed)
            res["power"] = power_part(args.power_runs, args.seed)
            res["srm"] = srm_part(args.srm_runs, args.seed)
        if "e2e" in parts:
            res["e2e"] = e2e_part(args.visits, tmp)
        if "overhead" in parts:
            res["overhead"] = overhead_part(args.seconds, args.rounds, tmp)
    (REPO / "runs").mkdir(exist_ok=True)
    (REPO / "runs" / "bench_experiments.json").write_text(json.dumps(res, indent=1, default=str))
    emit(NAME, render(res, ctx), not args.no_doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
