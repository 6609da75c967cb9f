"""The CTR training throughput section of docs/benchmarks.md from `scripts.bench.train`'s results."""

from __future__ import annotations

from typing import Any

from scripts.bench.ctr import EMB_DIM, PARAMS
from scripts.bench.train_parts import adam_layouts
from scripts.bench.train_report import (
    PEER_OF,
    SECTION_TITLE,
    flops_key,
    fmt,
    goal,
    goal_lines,
    precision_name,
    quality_lines,
    ratio,
)

DCN_PARAMS, DLRM_PARAMS, DEEPFM_PARAMS = PARAMS["dcnv2"], PARAMS["dlrm"], PARAMS["deepfm"]


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
            vs = ratio(run.best, runs[PEER_OF[run.model]].best)
            vs_cpu = ratio(run.per_cpu, runs[PEER_OF[run.model]].per_cpu)
        lines.append(
            f"| {run.name} | {run.model} | {fmt(run.best)} | {fmt(run.median)} | {run.best / a['batch_size']:.1f} | "
            f"{vs} | {run.best * ctx['flops'][flops_key(run.model)] / 1e9:.0f} | {run.best_cores:.2f} | "
            f"{fmt(run.per_cpu)} | {vs_cpu} | "
            f"{', '.join(fmt(x) for x in run.samples_per_s)} | {run.dense_params:,} / {run.emb_params:,} |")
    lines += ["", *goal_lines(ctx), *quality_lines(ctx)]
    lines += ["", "### Loaders alone", "",
              f"Batches of {a['batch_size']:,} rows per second against the fastest model's consumption with the "
              f"training defaults ({max(s['consumption'].values()):.1f} steps/s; DCNv2 "
              f"{s['consumption']['dcnv2']:.1f}, DLRM {s['consumption']['dlrm']:.1f}, DeepFM "
              f"{s['consumption']['deepfm']:.1f}). InMemoryBatches: {a['loader_batches']} shuffled gathers from the "
              "in-memory split; StreamingBatches: one whole epoch from the Parquet shards (read, `table_to_tensors`, "
              f"shuffle buffer of 262,144 rows). Best of {a['repeat']}.", "",
              "| loader | batches/s | x fastest model's steps/s | goal >= 10x |", "|---|---:|---:|---|"]
    for name, bps in ctx["loaders"].items():
        times = s["loader_ratio"][name]
        lines.append(f"| {name} | {bps:,.1f} | {times:.1f}x | {goal(times >= 10)} |")
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
        lines.append(f"| {model} | {fmt(inf['default'])} | {fmt(other) if other else 'n/a'} | "
                     f"{fmt(peer) if peer else 'n/a'} | {ratio(inf['default'], peer) if peer else ''} | "
                     f"{ratio(other, peer) if peer and other else ''} |")
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
              f"one. Over one table the for-loop Adam took {ratio(one_loop, one_fused)} the CPU time of the fused one "
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
