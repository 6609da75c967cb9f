"""The GPU section of docs/benchmarks.md from `scripts.bench.gpu`'s results, with its goal lines."""

from __future__ import annotations

import math
from typing import Any

from scripts.bench.common import load_text
from scripts.bench.gpu_e2e import render_e2e

SECTION_TITLE = "## GPU (scripts.bench.gpu)"


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.0f}"


DCNV2_GOAL = 3_000_000  # samples/s on one GPU (NVIDIA's DLRM reference: 4.0M rec/s on one A100-80GB with AMP)
PEER_GOAL = 5.0  # times the peer's samples/s at the same model and batch


def _training_goals(rows: list[dict[str, Any]]) -> list[str]:
    """The goal lines: DCNv2 samples/s (best bf16 feed) and the ratio to DeepCTR-Torch, both ways it is run."""
    def best(r: dict[str, Any]) -> float:
        return max(r["resident_bf16"], r["pinned_bf16"])

    dcn = [r for r in rows if r["model"] == "dcnv2"]
    out = []
    if dcn:
        top = max(dcn, key=best)
        verdict = "met" if best(top) >= DCNV2_GOAL else "NOT met"
        out.append(f"- Goal, DCNv2 at least {DCNV2_GOAL:,} samples/s: **{verdict}** ({best(top):,.0f} at batch "
                   f"{top['batch']:,}, resident or pinned host-fed bf16)")
    for key, what in (("peer_fit", "its own `fit`"), ("peer_step", "its model's step on resident batches")):
        pairs = [(best(r) / r[key], r) for r in rows if r.get(key)]
        if pairs:
            low, r = min(pairs, key=lambda p: p[0])
            verdict = "met" if low >= PEER_GOAL else "NOT met"
            out.append(f"- Goal, at least {PEER_GOAL:g}x DeepCTR-Torch run through {what}: **{verdict}** (lowest "
                       f"ratio {low:.1f}x, {r['model']} batch {r['batch']:,}; highest "
                       f"{max(p[0] for p in pairs):.1f}x)")
    return out


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [SECTION_TITLE, "",
             f"- Date: {res['date']}",
             f"- Device: **{m.get('gpu', 'CPU')}** ({m.get('gpu_mem_gib', 0):.0f} GiB, CUDA {m.get('cuda')}); host "
             f"{m['cpu']}, {m['usable']} cores; Python {m['python']}, torch {m['torch']}"
             + (f"; {load_text(m)}" if "load" in m else ""),
             f"- Command: `{res['command']}`", ""]
    if "training" in res:
        lines += ["### CTR training samples/s (bf16 autocast, fused embedding, CTRTask optimizers)", "",
                  f"Criteo-schema tensors: 13 dense, 26 categorical Zipf ids up to {res['args']['n_ids']:,} per "
                  f"field, embedding dim 16; {res['args']['steps']} timed steps after {res['args']['warmup']}. "
                  f"Peer: {res['peer']} (fp32, its own `fit`; and its model's step on resident batches).", "",
                  "| model | batch | resident | pinned host-fed | InMemoryBatches host | resident fp32 | "
                  "DeepCTR-Torch fit | DeepCTR-Torch step (resident) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["training"]:
            lines.append(f"| {r['model']} | {r['batch']:,} | {_fmt(r['resident_bf16'])} | {_fmt(r['pinned_bf16'])} | "
                         f"{_fmt(r['loader_bf16'])} | {_fmt(r['resident_fp32'])} | {_fmt(r.get('peer_fit'))} | "
                         f"{_fmt(r.get('peer_step'))} |")
        lines += ["", "Resident: `InMemoryBatches(device=cuda)` (gathers on the GPU). Pinned host-fed: gathered on the "
                  "host into two alternating pinned buffers, copied with non_blocking=True. InMemoryBatches host: "
                  "gathered on the host (pageable), then `.to(cuda, non_blocking=True)`. DeepCTR-Torch has no DLRM.",
                  "", *_training_goals(res["training"]), ""]
    for r in res.get("compile", []):
        lines.append(f"- torch.compile, DCNv2 batch {r['batch']:,} resident bf16: eager {_fmt(r['eager'])}, "
                     f"compiled {_fmt(r['compiled'])} samples/s (compile + warm-up {r['compile_warmup_s']:.0f} s)")
    if "quality" in res:
        q = res["quality"]
        lines += ["", "### Fast is not wrong: DCNv2 test AUC after one epoch", "",
                  f"{q['rows']:,} rows (90/10 split), ids up to {q['n_ids']:,}, batch {q['batch']:,}, same initial "
                  f"weights and batch order.", "",
                  "| device | precision | train s | samples/s | test AUC | test logloss |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in q["runs"]:
            lines.append(f"| {r['device']} | {r['precision']} | {r['train_s']:.1f} | {_fmt(r['samples_per_s'])} | "
                         f"{r['test_auc']:.4f} | {r['test_logloss']:.4f} |")
        lines.append(f"\nAUC difference (device - CPU): {q['runs'][0]['test_auc'] - q['runs'][1]['test_auc']:+.4f}")
    if "search" in res:
        s = res["search"]
        lines += ["", f"### Exact top-{s['k']} on torch (`index.type: torch_exact`)", "",
                  f"{s['items']:,} items x {s['dim']} dims (unit vectors around 1,000 centres, as in bench_index), "
                  f"through `ItemIndex.search`; chunk_items {s['chunk_items']:,}, query_batch {s['query_batch']}; "
                  f"IEEE float32 matmul (no TF32); recall@"
                  f"{s['k']} against exact search {s['recall']['recall_at_k']:.4f}. Exclusions: {s['exclusions']}.",
                  "", "| batch | q/s | ms per call | q/s with exclusions | torch_exact on this CPU q/s |",
                  "|---:|---:|---:|---:|---:|"]
        cpu = {r["batch"]: r["qps"] for r in s.get("torch_exact_cpu", [])}
        for r, e in zip(s["torch_exact"], s["torch_exact_excl"], strict=True):
            lines.append(f"| {r['batch']:,} | {_fmt(r['qps'])} | {r['ms_per_call']:.2f} | {_fmt(e['qps'])} | "
                         f"{_fmt(cpu.get(r['batch']))} |")
        if s["faiss"]:
            for f in s["faiss"]:
                q = ", ".join(f"batch {r['batch']}: {_fmt(r['qps'])} q/s" for r in f["qps"])
                lines.append(f"\nFAISS {f['type']} {f['params']} (CPU): recall@{s['k']} {f['recall']:.4f}; {q}")
        else:
            lines.append("\nFAISS figures: see bench_index section (CPU machine).")
    if "two_tower" in res:
        t = res["two_tower"]
        lines += ["", "### Two-tower training", ""]
        lines.append(f"skipped: {t['skipped']}" if "skipped" in t else
                     f"TwoTower + sampled_softmax_loss (logQ), {t['precision']}, batch {t['batch']:,}, ids up to "
                     f"{t['ids']:,}, history {t['history']}: **{_fmt(t['samples_per_s'])} samples/s**")
    if "e2e" in res:
        lines += render_e2e(res["e2e"])
    return "\n".join(lines) + "\n"
