"""The report of `scripts.bench.train`: ratios from the runs, the doc section, the printed table."""

from __future__ import annotations

from typing import Any

from scripts.bench.ctr import EMB_DIM, PARAMS
from scripts.bench.timing import Run
from scripts.bench.train_parts import adam_layouts

SECTION_TITLE = "## CTR training throughput (bench_train.py)"
MODELS = tuple(PARAMS)
PEER_OF = {"dcnv2": "peer_dcn", "deepfm": "peer_deepfm", "dlrm": "peer_deepfm"}  # DeepCTR-Torch has no DLRM
AUC_TOLERANCE = 0.002  # bf16 may trail fp32 by this much test AUC before the guard flags it
DCN_PARAMS, DLRM_PARAMS, DEEPFM_PARAMS = PARAMS["dcnv2"], PARAMS["dlrm"], PARAMS["deepfm"]


def _flops_key(model: str) -> str:
    return {"dcn": "dcnv2"}.get(model, model)


def _goal(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def _ratio(a: float, b: float) -> str:
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


def _goal_lines(ctx: dict[str, Any]) -> list[str]:
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
        line = (f"- {names[m]}: training defaults {g['default']:.2f}x, {_goal(g['default'] >= 2)} (per CPU-second "
                f"{g['default_cpu']:.2f}x)")
        if "alt" in g:
            line += (f"; {precision_name(alt or '')} {g['alt']:.2f}x, {_goal(g['alt'] >= 2)} (per CPU-second "
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
        head = (f"- Embedding backends (DCNv2, fp32): {b['auto']} (what `auto` picks here) {_fmt(a.best)}, fused "
                f"{_fmt(f.best)} samples/s (per CPU-second {_fmt(a.per_cpu)} and {_fmt(f.per_cpu)}): ")
        if b["faster"] != b["faster_cpu"]:
            lines.append(head + f"samples/s favours {b['faster']}, CPU time favours {b['faster_cpu']}: "
                         "inconclusive in this run.")
        else:
            hi, lo = (a, f) if b["faster"] == b["auto"] else (f, a)
            verdict = "`auto`'s pick is the faster" if b["faster"] == b["auto"] else (
                f"**{b['faster']}** is faster, so `auto`'s pick is the slower one in this run")
            lines.append(head + f"{verdict} ({_ratio(hi.best, lo.best)} in samples/s, "
                         f"{_ratio(hi.per_cpu, lo.per_cpu)} per CPU-second).")
    lt, ref = runs["lightning_dcnv2"], runs[s["lightning_ref"]]
    lines.append(f"- Lightning (`CTRTask` + `pl.Trainer`, DCNv2, `precision=\"{ctx['lightning_precision']}\"` and "
                 f"`gradient_clip_val={ctx['grad_clip']}`, as `recforge train ctr` runs by default) "
                 f"{_overhead(s['lightning_overhead'])} (the row '{ref.name}'; that loop does not clip, so this "
                 f"includes the clipping, which also covers the full embedding gradient). Per CPU-second: "
                 f"{100 * s['cpu_lightning_overhead']:+.0f}% (positive = slower than the plain loop); "
                 f"{_fmt(lt.best)} samples/s, {_ratio(lt.best, runs['peer_dcn'].best)} the peer's DCN-M.")
    return lines


def _quality_lines(ctx: dict[str, Any]) -> list[str]:
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


def render_section(ctx: dict[str, Any]) -> str:
    a, m, runs, s = ctx["args"], ctx["machine"], ctx["runs"], ctx["summary"]
    v, alt = m["versions"], ctx["alt_prec"] or ("bf16" if ctx["default_prec"] == "fp32" else "fp32")
    loads = [x for run in runs.values() for x in run.load]
    lines = [
        SECTION_TITLE, "",
        "RecForge's CTR training step (model + columnar loader + optimizers) against DeepCTR-Torch with the same",
        "model sizes on the same prepared data, measured side by side in one process, contenders interleaved.",
        "",
        f"- Date: {ctx['date']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['usable']} usable), {m['ram_gib']:.1f} GiB RAM, {m['os']}; "
        f"native bf16: {'yes' if ctx['bf16_native'] else 'no'} (`cpu_has_native_bf16()`); "
        f"Python {m['python']}, torch {v['torch']}, deepctr-torch {v['deepctr-torch']}, torchrec {v['torchrec']}, "
        f"pytorch-lightning {v['pytorch-lightning']}; `torch.set_num_threads({a['threads']})`",
        f"- Load average (1 min) when the contenders started: {min(loads):.2f} to {max(loads):.2f} "
        f"(the machine is shared: a load above {m['usable']} means other jobs competed for the cores)",
        f"- Command: `{ctx['command']}` ({ctx['phase_s']['total'] / 60:.0f} min in all)",
        *([f"- **Caution**: other jobs loaded the machine during this run (load average up to {max(loads):.1f} on "
           f"{m['usable']} cores)"
           + (f"; the same contender's samples/s varied up to {s['spread']:.1f}x between rounds" if a["repeat"] > 1
              else "") + (". Treat the wall-clock ratios as rough; the per CPU-second columns are steadier."
                          if a["threads"] == 1 else
                          f". With {a['threads']} threads per process, OpenMP threads spin while a sibling waits for "
                          "a core, which inflates wall and CPU time alike: neither column is reliable; re-run on a "
                          "quiet machine, or with `--threads 1`.")]
          if max(loads) > m["usable"] else []),
        f"- Data: `generate_criteo_schema({a['rows']:,}, n_ids={a['n_ids']:,})` (13 numeric with ~5% nulls, "
        f"26 categorical Zipf ids), train {ctx['n_train']:,} / test {ctx['n_test']:,} rows; spec fitted on train: "
        f"C1..C26 vocabularies ({ctx['emb_rows']:,} embedding rows in all, {ctx['emb_rows'] * EMB_DIM:,} embedding "
        f"parameters at dim {EMB_DIM}), I1..I13 log1p_standardize; Parquet shards of 262,144 rows, row groups of "
        "65,536 (written before timing, so read from the page cache)",
        f"- Models: DCNv2 parallel, cross {DCN_PARAMS['cross_layers']} full-rank layers, MLP {DCN_PARAMS['mlp']}; "
        f"DLRM bottom {DLRM_PARAMS['bottom_mlp']}+[{EMB_DIM}], top {DLRM_PARAMS['top_mlp']}+[1]; DeepFM MLP "
        f"{DEEPFM_PARAMS['mlp']}; embedding dim {EMB_DIM}; batch {a['batch_size']:,}; Adam lr 1e-3 everywhere",
        f"- RecForge's training defaults here: `embedding_backend: auto` -> {ctx['default_backend']}, "
        f"`train.runtime.precision: auto` -> `{ctx['default_precision']}` on CPU "
        f"({precision_name(ctx['default_prec'])} in the plain loop), `CTRTask.configure_optimizers()` -> "
        "Adam(fused=True) for dense and embedding parameters",
        "",
        "### Training samples/s",
        "",
        f"Rounds: {a['repeat']}, contenders interleaved (ours, peer, ours, ...), the order reversed every other round. "
        "'best' is the fastest round (the least disturbed by other load); 'vs peer' compares bests (DLRM against "
        "their DeepFM); 'cores busy' is the process's CPU seconds per wall second during the fastest round's timed "
        f"steps (at most {a['threads']}: less means it waited, for other jobs or on its own serial parts); 'samples "
        "per CPU-s' divides samples by the process's CPU time instead of wall time: with one thread it hardly moves "
        "with the machine's load (waiting costs no CPU time), with more threads spin-waiting counts in it.",
        "",
        "| contender | model | samples/s (best) | median | steps/s (best) | vs peer | dense GFLOP/s | cores busy | "
        "samples per CPU-s | vs peer | every round | dense / embedding params |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for run in runs.values():
        vs = vs_cpu = ""
        if run.family != "peer" and PEER_OF[run.model] in runs:
            vs = _ratio(run.best, runs[PEER_OF[run.model]].best)
            vs_cpu = _ratio(run.per_cpu, runs[PEER_OF[run.model]].per_cpu)
        lines.append(
            f"| {run.name} | {run.model} | {_fmt(run.best)} | {_fmt(run.median)} | {run.best / a['batch_size']:.1f} | "
            f"{vs} | {run.best * ctx['flops'][_flops_key(run.model)] / 1e9:.0f} | {run.best_cores:.2f} | "
            f"{_fmt(run.per_cpu)} | {vs_cpu} | "
            f"{', '.join(_fmt(x) for x in run.samples_per_s)} | {run.dense_params:,} / {run.emb_params:,} |")
    lines += ["", *_goal_lines(ctx), *_quality_lines(ctx)]
    lines += ["", "### Loaders alone", "",
              f"Batches of {a['batch_size']:,} rows per second against the fastest model's consumption with the "
              f"training defaults ({max(s['consumption'].values()):.1f} steps/s; DCNv2 "
              f"{s['consumption']['dcnv2']:.1f}, DLRM {s['consumption']['dlrm']:.1f}, DeepFM "
              f"{s['consumption']['deepfm']:.1f}). InMemoryBatches: {a['loader_batches']} shuffled gathers from the "
              "in-memory split; StreamingBatches: one whole epoch from the Parquet shards (read, `table_to_tensors`, "
              f"shuffle buffer of 262,144 rows). Best of {a['repeat']}.", "",
              "| loader | batches/s | x fastest model's steps/s | goal >= 10x |", "|---|---:|---:|---|"]
    for name, bps in ctx["loaders"].items():
        ratio = s["loader_ratio"][name]
        lines.append(f"| {name} | {bps:,.1f} | {ratio:.1f}x | {_goal(ratio >= 10)} |")
    lines += ["", "### Inference", "",
              f"Predictions/s scoring the test split ({ctx['n_test']:,} rows), eval mode, `torch.no_grad`, batch "
              f"{a['eval_batch']:,}, best of {a['repeat']} passes. Ours: `InMemoryBatches` over the loaded split "
              f"+ model ({ctx['default_backend']} embedding) + sigmoid, in the training defaults' precision "
              f"({precision_name(ctx['default_prec'])}) and in {precision_name(alt)}; peer: their "
              "`model.predict(x, batch_size)` (their DataLoader over a TensorDataset, per-row indexing and "
              "collation included).", "",
              f"| model | RecForge, {precision_name(ctx['default_prec'])} (default) | RecForge, "
              f"{precision_name(alt)} | DeepCTR-Torch | default vs peer | {precision_name(alt)} vs peer |",
              "|---|---:|---:|---:|---:|---:|"]
    for model, inf in ctx["inference"].items():
        peer, other = inf["peer"], inf["alt"]
        lines.append(f"| {model} | {_fmt(inf['default'])} | {_fmt(other) if other else 'n/a'} | "
                     f"{_fmt(peer) if peer else 'n/a'} | {_ratio(inf['default'], peer) if peer else ''} | "
                     f"{_ratio(other, peer) if peer and other else ''} |")
    fl, adam = ctx["flops"], ctx["adam"]
    one_loop, one_fused = (adam[n] for n, per_field, _ in adam_layouts(ctx["default_backend"]) if not per_field)
    lines += ["", "### Where the time goes", "",
              f"Dense-layer work per training sample (6 x the multiply-adds of the Linear layers, plus DLRM's dot "
              f"products): DCNv2 {fl['dcnv2'] / 1e6:.2f} MFLOP (its three full-rank {ctx['x0_dim']}x{ctx['x0_dim']}"
              f" cross layers are {100 * ctx['cross_share']:.0f}% of it), DLRM {fl['dlrm'] / 1e6:.2f}, DeepFM "
              f"{fl['deepfm'] / 1e6:.2f}; a batch of {a['batch_size']:,} is {a['batch_size'] * fl['dcnv2'] / 1e9:.1f}"
              f" GFLOP for DCNv2. The 'dense GFLOP/s' column above is this work times samples/s: in fp32 both "
              "libraries run the same matrix products (same sizes, torch's CPU GEMM), so a mostly-GEMM step can only "
              "gain from the rest of the step (input pipeline, embedding lookups, optimizer, framework glue) or from "
              "a cheaper number format (bf16 autocast runs the Linear layers in bf16 and accumulates in fp32).", "",
              f"The embedding parameters' optimizer step alone ({ctx['emb_rows'] * EMB_DIM:,} parameters, gradients "
              "dense as `nn.Embedding(sparse=False)` makes them; CPU ms per step, best of "
              f"{a['repeat']}):", "", "| layout and optimizer | CPU ms per step |", "|---|---:|",
              *(f"| {k} | {v:.1f} |" for k, v in adam.items()), "",
              "torch's default (for-loop) Adam makes several passes over each tensor (`lerp_`, `mul_`, "
              "`addcmul_`, `sqrt`, `div`, `addcdiv_`); `fused=True`, which CTRTask uses for both optimizers, does "
              f"one. Over one table the for-loop Adam took {_ratio(one_loop, one_fused)} the CPU time of the fused one "
              "here.",
              "",
              f"`torch.profiler` (CPU) over {a['profile_steps']} steps after warm-up; self CPU time per op (the "
              "profiler slows small ops, so ms/step runs above the timed rate). Shares by category are grouped "
              "by op name.", ""]
    for title, prof in ctx["profiles"].items():
        cats = "; ".join(f"{k} {100 * v:.0f}%" for k, v in prof["categories"])
        lines += [f"**{title}** ({prof['wall_ms_per_step']:.0f} ms per step under the profiler): {cats}.", "",
                  "| op | ms/step | share |", "|---|---:|---:|"]
        lines += [f"| `{t['op']}` | {t['ms_per_step']:.1f} | {100 * t['share']:.0f}% |" for t in prof["top"]]
        lines.append("")
    lines += [
        "### How it is measured", "",
        "- RecForge (plain loop): `build_model(...)` with the embedding backend `auto` resolves to (or fused, the "
        "backend comparison row), driven by `TaskSteps` (scripts/bench/ctr.py) as Lightning's automatic "
        "optimization drives `CTRTask`; a step is: next batch from `InMemoryBatches` (shuffled `index_select` "
        "gathers), `CTRTask.training_step` (forward, `BCEWithLogitsLoss` on fp32 logits; under "
        "`torch.autocast(\"cpu\", dtype=torch.bfloat16)` in the bf16 rows), `zero_grad`, backward, `step` of the "
        f"optimizer from `CTRTask.configure_optimizers()`; no gradient clipping. {a['warmup']} warm-up steps, then "
        f"{a['steps']} timed steps (wall clock, `time.perf_counter`).",
        "- RecForge (Lightning): the project's Trainer, `build_trainer(runtime, precision=lightning_precision("
        "train.runtime.precision, ...), max_steps=warm-up + steps, grad_clip=OptimConfig().grad_clip)` (no logger, "
        "no checkpointing, no progress bar, no validation) fitting `CTRTask` on `InMemoryBatches`; a callback "
        "stamps each `on_train_batch_end`; the rate is taken between the end of the last warm-up step and the end "
        "of the last step.",
        "- DeepCTR-Torch: `DCN(cross_parameterization='matrix', cross_num=3, dnn_hidden_units=(256, 128))` with no "
        "linear part (our DCNv2 has none) and `DeepFM(dnn_hidden_units=(256, 128))` with the linear part (ours "
        "has its LR term), `SparseFeat(vocabulary_size=our cardinality, embedding_dim=16)` and `DenseFeat(1)` on "
        "our transformed columns (passed as float32, the dtype their fit casts to), `compile(Adam(lr=1e-3), "
        "'binary_crossentropy')`, all L2 terms set to 0 (their default 1e-5 adds a full-table L2 penalty each "
        "step; ours has none). Timed with their own `model.fit(x, y, batch_size="
        f"{a['batch_size']}, epochs=1, verbose=0, shuffle=True)`, called twice on the same model (its optimizer "
        f"state persists): first on {a['warmup']} batches of train rows (warm-up), then on "
        f"{ctx['peer_rows']:,} train rows ({ctx['peer_rows'] // a['batch_size']} batches), timed from their "
        "`on_epoch_begin` to their `on_epoch_end` callback: their input concatenation, TensorDataset and model "
        "construction are excluded, their DataLoader (per-row indexing + collate) is included, as our gathers "
        "are.",
        "- Same process, same threads for all; models are built fresh for each round (not timed).",
    ]
    return "\n".join(lines) + "\n"


def print_table(ctx: dict[str, Any]) -> None:
    bs, s = ctx["args"]["batch_size"], ctx["summary"]
    print(f"\n{'contender':62} {'model':7} {'samples/s best':>15} {'median':>10} {'steps/s':>8} {'cores':>6} "
          f"{'per CPU-s':>10}  load avg at start")
    for run in ctx["runs"].values():
        print(f"{run.name:62} {run.model:7} {_fmt(run.best):>15} {_fmt(run.median):>10} {run.best / bs:8.1f} "
              f"{run.best_cores:6.2f} {_fmt(run.per_cpu):>10}  {', '.join(f'{x:.2f}' for x in run.load)}")
    print()
    for line in _goal_lines(ctx):
        print(line)
    for line in _quality_lines(ctx):
        print(line)
    print("\nloader batches/s (x fastest model's steps/s):")
    for name, bps in ctx["loaders"].items():
        print(f"  {name:62} {bps:10,.1f}  {s['loader_ratio'][name]:6.1f}x")
    print(f"\ninference predictions/s (ours {ctx['default_prec']} = default, ours {ctx['alt_prec']}, peer):")
    for model, inf in ctx["inference"].items():
        print(f"  {model:10} {_fmt(inf['default']):>12} {_fmt(inf['alt']) if inf['alt'] else 'n/a':>12} "
              f"{_fmt(inf['peer']) if inf['peer'] else 'n/a':>12}")
    print("\nAdam step over the embedding parameters alone (CPU ms):")
    for k, v in ctx["adam"].items():
        print(f"  {k:90} {v:7.1f}")
    for title, prof in ctx["profiles"].items():
        print(f"\nprofile {title}: {prof['wall_ms_per_step']:.0f} ms/step; "
              + "; ".join(f"{k} {100 * v:.0f}%" for k, v in prof["categories"]))
        for t in prof["top"][:6]:
            print(f"  {t['op']:40} {t['ms_per_step']:8.1f} ms  {100 * t['share']:4.0f}%")
    print("\nseconds per phase: " + ", ".join(f"{k} {v:.0f}" for k, v in ctx["phase_s"].items()))
