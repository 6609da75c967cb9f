"""The report of `scripts.bench.train`: ratios from the runs, the goal and quality lines, the printed table."""

from __future__ import annotations

from typing import Any

from scripts.bench.ctr import PARAMS
from scripts.bench.timing import Run

SECTION_TITLE = "## CTR training throughput (scripts.bench.train)"
MODELS = tuple(PARAMS)
PEER_OF = {"dcnv2": "peer_dcn", "deepfm": "peer_deepfm", "dlrm": "peer_deepfm"}  # DeepCTR-Torch has no DLRM
AUC_TOLERANCE = 0.002  # bf16 may trail fp32 by this much test AUC before the guard flags it


def flops_key(model: str) -> str:
    return {"dcn": "dcnv2"}.get(model, model)


def goal(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def fmt(x: float) -> str:
    return f"{x:,.0f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _overhead(x: float) -> str:
    if x >= 0:
        return f"costs {100 * x:.0f}% of the plain loop's samples/s"
    return f"was {100 * -x:.0f}% faster than the plain loop (noise: no speed-up is expected)"


def _faster(a: float, b: float) -> str:
    return "faster" if a >= b else "slower"


def default_key(model: str) -> str:
    return f"ours_{model}_default"


def precision_name(precision: str) -> str:
    return "bf16 autocast" if precision == "bf16" else "fp32"


def row_of(runs: dict[str, Run], model: str, precision: str) -> str | None:
    """Key of `model`'s plain-loop row with the default backend in `precision` ("fp32" | "bf16"), if measured."""
    for key in (default_key(model), f"ours_{model}_{precision}"):
        if key in runs and runs[key].precision == precision:
            return key
    return None


def alt_key(runs: dict[str, Run], model: str) -> str | None:
    """Key of `model`'s row in the precision the training defaults do not use, if measured."""
    other = "fp32" if runs[default_key(model)].precision == "bf16" else "bf16"
    key = f"ours_{model}_{other}"
    return key if key in runs else None


def lightning_reference(runs: dict[str, Run]) -> str:
    """The plain-loop DCNv2 row in the Lightning run's precision (same backend, same optimizers)."""
    return row_of(runs, "dcnv2", runs["lightning_dcnv2"].precision) or default_key("dcnv2")


def summarize(ctx: dict[str, Any]) -> dict[str, Any]:
    """Ratios the report states, all computed from the runs (bests, and per CPU-second)."""
    runs: dict[str, Run] = ctx["runs"]
    r = {k: v.best for k, v in runs.items()}
    c = {k: v.per_cpu for k, v in runs.items()}
    s: dict[str, Any] = {"goals": {}, "bf16_gain": {}, "bf16_gain_cpu": {}}
    for m in MODELS:
        d, p, alt = default_key(m), PEER_OF[m], alt_key(runs, m)
        s["goals"][m] = {"default": r[d] / r[p], "default_cpu": c[d] / c[p]}
        if alt is not None:
            s["goals"][m] |= {"alt": r[alt] / r[p], "alt_cpu": c[alt] / c[p]}
        b, f = row_of(runs, m, "bf16"), row_of(runs, m, "fp32")
        if b is not None and f is not None:
            s["bf16_gain"][m], s["bf16_gain_cpu"][m] = r[b] / r[f], c[b] / c[f]
    s["dlrm_vs_peer_dcn"] = r[default_key("dlrm")] / r["peer_dcn"]
    auto = row_of(runs, "dcnv2", "fp32")
    if "ours_dcnv2_fused" in runs and auto is not None:
        fused, name = "ours_dcnv2_fused", runs[auto].backend
        s["backend"] = {"auto_key": auto, "auto": name, "faster": name if r[auto] >= r[fused] else "fused",
                        "faster_cpu": name if c[auto] >= c[fused] else "fused"}
    spreads = [max(v.samples_per_s) / min(v.samples_per_s) for v in runs.values() if min(v.samples_per_s) > 0]
    s["spread"] = max(spreads, default=1.0)
    ref = lightning_reference(runs)
    s["lightning_ref"] = ref
    s["lightning_overhead"] = 1 - r["lightning_dcnv2"] / r[ref]
    s["cpu_lightning_overhead"] = 1 - c["lightning_dcnv2"] / c[ref]
    bs = ctx["args"]["batch_size"]
    s["consumption"] = {m: r[default_key(m)] / bs for m in MODELS}
    fastest = max(s["consumption"].values())
    s["loader_ratio"] = {k: v / fastest for k, v in ctx["loaders"].items()}
    s["quality"] = [{"model": q["model"], "diff": q["bf16"]["auc"] - q["fp32"]["auc"],
                     "ok": q["bf16"]["auc"] - q["fp32"]["auc"] >= -AUC_TOLERANCE} for q in ctx["quality"]]
    return s


def _defaults_label(ctx: dict[str, Any]) -> str:
    return f"{precision_name(ctx['default_prec'])}, {ctx['default_backend']} embedding"


def goal_lines(ctx: dict[str, Any]) -> list[str]:
    s, runs = ctx["summary"], ctx["runs"]
    alt = ctx["alt_prec"]
    alt_label = {"fp32": "fp32",
                 "bf16": "bf16 autocast (the opt-in `train.runtime.precision: bf16-mixed`)"}.get(alt or "")
    lines = [f"Goal: at least 2x the peer's samples/s on this CPU, for RecForge's training defaults "
             f"({_defaults_label(ctx)}, CTRTask's optimizers)"
             + (f"; {alt_label} alongside, with the same backend and optimizers:" if alt_label else ":"), ""]
    names = {"dcnv2": "DCNv2 vs DeepCTR-Torch DCN-M, same model",
             "deepfm": "DeepFM vs DeepCTR-Torch DeepFM, same model",
             "dlrm": "DLRM (DeepCTR-Torch has no DLRM) vs their DeepFM"}
    for m in ("dcnv2", "deepfm", "dlrm"):
        g = s["goals"][m]
        line = (f"- {names[m]}: training defaults {g['default']:.2f}x, {goal(g['default'] >= 2)} (per CPU-second "
                f"{g['default_cpu']:.2f}x)")
        if "alt" in g:
            line += (f"; {precision_name(alt or '')} {g['alt']:.2f}x, {goal(g['alt'] >= 2)} (per CPU-second "
                     f"{g['alt_cpu']:.2f}x)")
        if m == "dlrm":
            line += f"; training defaults vs their DCN-M: {s['dlrm_vs_peer_dcn']:.2f}x"
        lines.append(line)
    gain = s["bf16_gain"]
    if gain:
        faster = [m for m in MODELS if gain[m] > 1]
        text = ", ".join(f"{m} {gain[m]:.2f}x ({_faster(gain[m], 1.0)}; per CPU-second "
                         f"{s['bf16_gain_cpu'][m]:.2f}x)" for m in MODELS)
        which = f" ({', '.join(faster)})" if faster else ""
        lines.append(f"- bf16 autocast against fp32, same backend and optimizers, samples/s: {text}. bf16 was "
                     f"faster for {len(faster)} of {len(MODELS)} models{which}; `train.runtime.precision: auto` "
                     f"trains in `{ctx['default_precision']}` on this CPU.")
    elif not ctx["bf16_native"]:
        lines.append("- This CPU has no native bf16 (`cpu_has_native_bf16()` is false), so no bf16 autocast rows were "
                     f"measured; `train.runtime.precision: auto` trains in `{ctx['default_precision']}` on it.")
    if "backend" in s:
        b = s["backend"]
        a, f = runs[b["auto_key"]], runs["ours_dcnv2_fused"]
        head = (f"- Embedding backends (DCNv2, fp32): {b['auto']} (what `auto` picks here) {fmt(a.best)}, fused "
                f"{fmt(f.best)} samples/s (per CPU-second {fmt(a.per_cpu)} and {fmt(f.per_cpu)}): ")
        if b["faster"] != b["faster_cpu"]:
            lines.append(head + f"samples/s favours {b['faster']}, CPU time favours {b['faster_cpu']}: "
                         "inconclusive in this run.")
        else:
            hi, lo = (a, f) if b["faster"] == b["auto"] else (f, a)
            verdict = "`auto`'s pick is the faster" if b["faster"] == b["auto"] else (
                f"**{b['faster']}** is faster, so `auto`'s pick is the slower one in this run")
            lines.append(head + f"{verdict} ({ratio(hi.best, lo.best)} in samples/s, "
                         f"{ratio(hi.per_cpu, lo.per_cpu)} per CPU-second).")
    lt, ref = runs["lightning_dcnv2"], runs[s["lightning_ref"]]
    lines.append(f"- Lightning (`CTRTask` + `pl.Trainer`, DCNv2, `precision=\"{ctx['lightning_precision']}\"` and "
                 f"`gradient_clip_val={ctx['grad_clip']}`, as `recforge train ctr` runs by default) "
                 f"{_overhead(s['lightning_overhead'])} (the row '{ref.name}'; that loop does not clip, so this "
                 f"includes the clipping, which also covers the full embedding gradient). Per CPU-second: "
                 f"{100 * s['cpu_lightning_overhead']:+.0f}% (positive = slower than the plain loop); "
                 f"{fmt(lt.best)} samples/s, {ratio(lt.best, runs['peer_dcn'].best)} the peer's DCN-M.")
    return lines


def quality_lines(ctx: dict[str, Any]) -> list[str]:
    a, s = ctx["args"], ctx["summary"]
    lines = ["", "### bf16 vs fp32 test AUC", ""]
    if not ctx["quality"]:
        why = ("`--quality-steps 0` skipped it" if a["quality_steps"] == 0 else
               "this CPU has no native bf16, so bf16 autocast was not measured")
        return [*lines, f"Not measured in this run: {why}."]
    q0 = ctx["quality"][0]
    epochs = q0["steps"] * a["batch_size"] / ctx["n_train"]
    lines += [f"DCNv2 and DeepFM ({q0['backend']} embedding, CTRTask's optimizers) trained from the same initial "
              f"weights over the same {q0['steps']} shuffled batches of {a['batch_size']:,} ({epochs:.2f} epochs of "
              f"the train split), once in fp32 and once in bf16 autocast, then scored on the test split "
              f"({ctx['n_test']:,} rows) in the precision each was trained in (as `trainer.test` does). The "
              f"guard flags bf16 when its test AUC trails fp32 by more than {AUC_TOLERANCE}.", "",
              "| model | steps | fp32 test AUC | bf16 test AUC | bf16 - fp32 | fp32 logloss | bf16 logloss | "
              "train s, fp32 / bf16 | guard |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for q, g in zip(ctx["quality"], s["quality"], strict=True):
        f, b = q["fp32"], q["bf16"]
        lines.append(f"| {q['model']} | {q['steps']} | {f['auc']:.4f} | {b['auc']:.4f} | {g['diff']:+.4f} | "
                     f"{f['logloss']:.4f} | {b['logloss']:.4f} | {f['train_s']:.0f} / {b['train_s']:.0f} | "
                     f"{'within' if g['ok'] else '**exceeded**'} |")
    bad = [g["model"] for g in s["quality"] if not g["ok"]]
    lines += ["", (f"bf16 stays within {AUC_TOLERANCE} test AUC of fp32 for every model checked." if not bad else
                   f"**bf16 trails fp32 by more than {AUC_TOLERANCE} test AUC for {', '.join(bad)}**: bf16's speed "
                   "comes at an accuracy cost there; look into it before relying on bf16.")
              + " One seed per precision: differences of a few 0.001 can be seed noise rather than precision."]
    return lines


def print_table(ctx: dict[str, Any]) -> None:
    bs, s = ctx["args"]["batch_size"], ctx["summary"]
    print(f"\n{'contender':62} {'model':7} {'samples/s best':>15} {'median':>10} {'steps/s':>8} {'cores':>6} "
          f"{'per CPU-s':>10}  load avg at start")
    for run in ctx["runs"].values():
        print(f"{run.name:62} {run.model:7} {fmt(run.best):>15} {fmt(run.median):>10} {run.best / bs:8.1f} "
              f"{run.best_cores:6.2f} {fmt(run.per_cpu):>10}  {', '.join(f'{x:.2f}' for x in run.load)}")
    print()
    for line in goal_lines(ctx):
        print(line)
    for line in quality_lines(ctx):
        print(line)
    print("\nloader batches/s (x fastest model's steps/s):")
    for name, bps in ctx["loaders"].items():
        print(f"  {name:62} {bps:10,.1f}  {s['loader_ratio'][name]:6.1f}x")
    print(f"\ninference predictions/s (ours {ctx['default_prec']} = default, ours {ctx['alt_prec']}, peer):")
    for model, inf in ctx["inference"].items():
        print(f"  {model:10} {fmt(inf['default']):>12} {fmt(inf['alt']) if inf['alt'] else 'n/a':>12} "
              f"{fmt(inf['peer']) if inf['peer'] else 'n/a':>12}")
    print("\nAdam step over the embedding parameters alone (CPU ms):")
    for k, v in ctx["adam"].items():
        print(f"  {k:90} {v:7.1f}")
    for title, prof in ctx["profiles"].items():
        print(f"\nprofile {title}: {prof['wall_ms_per_step']:.0f} ms/step; "
              + "; ".join(f"{k} {100 * v:.0f}%" for k, v in prof["categories"]))
        for t in prof["top"][:6]:
            print(f"  {t['op']:40} {t['ms_per_step']:8.1f} ms  {100 * t['share']:4.0f}%")
    print("\nseconds per phase: " + ", ".join(f"{k} {v:.0f}" for k, v in ctx["phase_s"].items()))
