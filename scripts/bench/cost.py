"""Cost curves: wall time and peak memory of each stage as the synthetic data grows (1M, 5M, 20M, 50M rows).

Each size is its own scenario of `configs/demo.yaml` with `source.n_impressions` rows; users and items grow with
it (one user per 200 rows and one item per 400, the demo's own ratios at 2M rows), so the stages that scale with
users (the online store write) or items (the index) grow too. Each stage is the CLI command users run, as a
subprocess whose process tree (the driver and every Ray process it starts) is sampled for summed RSS every 100 ms
(`prepare_measure.run_measured`):

- prepare: `recforge prepare` on the Ray engine (a local Ray; Ray Data fits and transforms);
- online store write: `recforge materialize` (entity features, profiles, histories into the online store);
- train: `recforge train ctr` with the streaming loader (`train.streaming: true`: train, valid and test read row
  group by row group), one epoch, the model of `--model`, validation and test included;
- index build: `recforge index build` over one 64-d embedding per item (clustered unit vectors, the data of
  scripts.bench.index, written where the retrieval stage puts its embeddings): the FAISS index with its recall
  check; training the two-tower model itself is not part of this curve.

    python -m scripts.bench.cost [--sizes 1000000,5000000,20000000,50000000] [--model dlrm] [--no-doc]

Goal (docs/benchmarks.md): time per row linear within 1.3x from the smallest to the largest size, and the
streaming training's memory flat.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from scripts.bench.common import REPO, command, load_text, logger, machine, machine_text, now
from scripts.bench.doc import DOC, display, emit
from scripts.bench.prepare_measure import Measurement, run_measured

log = logger("bench_cost")
RECFORGE = str(Path(sys.executable).parent / "recforge")
STAGES = ("prepare", "materialize", "train", "index")
LABEL = {"prepare": "prepare (Ray Data)", "materialize": "online store write", "train": "train ctr, streaming",
         "index": "index build"}
PER = {"prepare": "rows", "materialize": "users", "train": "rows", "index": "items"}
DIM = 64
GOAL_LINEAR = 1.3
PLOT = REPO / "docs" / "img" / "cost_curves.png"


def scenario(rows: int, out: Path, model: str) -> list[str]:
    """The `--config ... --set ...` arguments of the scenario of `rows` rows."""
    sets = [f"source.n_impressions={rows}", f"source.n_users={max(rows // 200, 1000)}",
            f"source.n_items={max(rows // 400, 500)}", f"output_dir={out}", "prepare.engine=ray",
            f"train.model={model}", "train.streaming=true", "train.max_epochs=1", "train.batch_size=4096",
            "index.type=auto"]
    return ["--config", str(REPO / "configs" / "demo.yaml"), *[a for s in sets for a in ("--set", s)]]


def write_embeddings(bundle: Path, items: int, seed: int = 0) -> None:
    """One clustered 64-d unit vector per item and 2,000 queries, as the retrieval stage writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scripts.bench.common import clustered, unit_rows
    from training.index.build import ITEM_EMBEDDINGS, QUERY_EMBEDDINGS

    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((max(items // 100, 16), DIM)).astype(np.float32))
    bundle.mkdir(parents=True, exist_ok=True)

    def table(vectors: np.ndarray, ids: np.ndarray | None) -> pa.Table:
        emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM)
        return pa.table({"item_id": ids, "embedding": emb}) if ids is not None else pa.table({"embedding": emb})

    pq.write_table(table(clustered(items, centres, 0.6, rng), np.arange(1, items + 1)), bundle / ITEM_EMBEDDINGS)
    pq.write_table(table(clustered(2000, centres, 0.6, rng), None), bundle / QUERY_EMBEDDINGS)


def run_size(rows: int, root: Path, model: str) -> dict[str, Any]:
    out = root / f"n{rows}"
    if out.exists():
        shutil.rmtree(out)
    args = scenario(rows, out, model)
    gen = run_measured("generate", [RECFORGE, "generate", *args], out.parent / f"n{rows}-generate.log", 0.1)
    if gen.returncode:
        raise SystemExit(f"bench_cost: generate of {rows:,} rows failed; see {out.parent}/n{rows}-generate.log")
    result: dict[str, Any] = {"rows": rows, "users": max(rows // 200, 1000), "items": max(rows // 400, 500),
                              "generate": _brief(gen), "stages": {}}
    commands = {"prepare": ["prepare"], "materialize": ["materialize"], "train": ["train", "ctr"],
                "index": ["index", "build"]}
    for stage in STAGES:
        if stage == "index":
            write_embeddings(out / "retrieval" / "bundle" / "embeddings", result["items"])
        logfile = out.parent / f"n{rows}-{stage}.log"
        log(f"{rows:,} rows: {stage} ...")
        m = run_measured(stage, [RECFORGE, *commands[stage], *args, "--json"], logfile, 0.1)
        if m.returncode:
            tail = logfile.read_text(errors="replace")[-1500:]
            result["stages"][stage] = {**_brief(m), "failed": tail}
            log(f"{rows:,} rows: {stage} FAILED (exit {m.returncode}):\n{tail}")
            break
        result["stages"][stage] = _brief(m)
        doc = _json_tail(logfile)
        result["stages"][stage]["job_s"] = doc.get("seconds")
        if stage == "train":
            result["stages"][stage]["test_auc"] = doc.get("test", {}).get("auc")
            result["stages"][stage]["global_steps"] = doc.get("global_steps")
        log(f"{rows:,} rows: {stage} {m.wall_s:.1f} s, peak {m.peak_rss / 2**30:.2f} GiB")
    shutil.rmtree(out / "raw", ignore_errors=True)  # the largest files; nothing later reads them
    return result


def _brief(m: Measurement) -> dict[str, Any]:
    d = asdict(m)
    return {"wall_s": round(m.wall_s, 2), "peak_rss": m.peak_rss, "peak_shmem": m.peak_shmem,
            "cpu_s": round(m.cpu_s, 1), "peak_by_process": dict(list(d["peak_by_process"].items())[:5])}


def _json_tail(logfile: Path) -> dict[str, Any]:
    """The `--json` result a command printed last in its log (progress lines go to the same file)."""
    text = logfile.read_text(errors="replace")
    start = text.rfind("\n{\n")
    try:
        return dict(json.loads(text[start + 1:] if start >= 0 else text))
    except ValueError:
        return {}


def per_unit(r: dict[str, Any], stage: str) -> float:
    """Microseconds per row (per user, per item for the stages that scale with those)."""
    units = {"rows": r["rows"], "users": r["users"], "items": r["items"]}[PER[stage]]
    return r["stages"][stage]["wall_s"] * 1e6 / units


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in STAGES:
        done = [r for r in results if stage in r["stages"] and "failed" not in r["stages"][stage]]
        if not done:
            continue
        xs = [r["rows"] / 1e6 for r in done]
        ax_t.plot(xs, [r["stages"][stage]["wall_s"] for r in done], marker="o", label=LABEL[stage])
        ax_m.plot(xs, [r["stages"][stage]["peak_rss"] / 2**30 for r in done], marker="o", label=LABEL[stage])
    for ax, title, unit in ((ax_t, "wall time", "seconds"), (ax_m, "peak memory (RSS summed over processes)",
                                                               "GiB")):
        ax.set_xscale("log")
        ax.set_yscale("log" if ax is ax_t else "linear")
        ax.set_xlabel("synthetic rows (millions)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(results: list[dict[str, Any]], mach: dict[str, Any], argv: list[str] | None, model: str,
            started: str) -> str:
    gib = 2**30
    lines = ["## Cost curves: time and memory as the data grows (scripts.bench.cost)", "",
             f"- Date: {started}", f"- Machine: {machine_text(mach)}; {load_text(mach)}",
             f"- Command: `{command('scripts.bench.cost', argv)}`",
             f"- Data: `configs/demo.yaml` with `source.n_impressions` = the size, one user per 200 rows and one item "
             f"per 400; train ctr `{model}`, one epoch, batch 4,096, `train.streaming: true`; every stage a "
             f"subprocess, peak = the largest sum of RSS over its process tree (the driver and every Ray process), "
             f"sampled every 100 ms; one run per size, nothing else running", "",
             "| rows | users | items | stage | wall s | job s | µs per unit | vs smallest | peak GiB | CPU s |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    first = {s: next((r for r in results if s in r["stages"] and "failed" not in r["stages"][s]), None)
             for s in STAGES}
    for r in results:
        for stage in STAGES:
            st = r["stages"].get(stage)
            if st is None:
                continue
            if "failed" in st:
                lines.append(f"| {r['rows']:,} | {r['users']:,} | {r['items']:,} | {LABEL[stage]} | failed | | | | "
                             f"{st['peak_rss'] / gib:.2f} | |")
                continue
            base = first[stage]
            ratio = per_unit(r, stage) / per_unit(base, stage) if base else float("nan")
            job = f"{st['job_s']:,.1f}" if st.get("job_s") is not None else ""
            lines.append(f"| {r['rows']:,} | {r['users']:,} | {r['items']:,} | {LABEL[stage]} | {st['wall_s']:,.1f} "
                         f"| {job} | {per_unit(r, stage):,.2f} per {PER[stage][:-1]} | {ratio:.2f}x | "
                         f"{st['peak_rss'] / gib:.2f} | {st['cpu_s']:,.0f} |")
    lines += ["", f"![cost curves]({PLOT.relative_to(DOC.parent)})", ""]
    lines += goal_lines(results, first)
    lines += ["", "Memory per stage, as measured (the growth of the peak per extra unit between the smallest and "
                  "the largest size) and why:", ""]
    lines += memory_lines(results)
    return "\n".join(lines) + "\n"


WHY_MEMORY = {
    "prepare": "the driver reads the events and holds the joined table (entity columns, profiles, the category "
               "affinity vector, the behaviour sequence) until it is staged: linear in the rows; the Ray workers "
               "transform one staged file each, so their share does not grow past a file",
    "materialize": "the latest features per user and item, and each user's history from the interaction log: "
                   "linear in users and in the log's rows",
    "train": "the training loop holds the shuffle buffer (`train.streaming`: 262,144 rows, allocated once per "
             "epoch) and the row group being decoded (131,072 rows), whatever the split's size; evaluation reads "
             "one eval batch (16,384 rows) at a time and keeps per valid/test row its probability, label and group "
             "(16 bytes) and, while AUC/gAUC are computed, their sorted keys (about 22 bytes): exact metrics need "
             "every score, so this is the one term that grows with the data, about 3.5 bytes per row at the 80/10/10 "
             "split; the model and optimiser state grow with the vocabularies (one row per user and item id seen "
             "often enough)",
    "index": "the item vectors and the FAISS index over them: linear in the items",
}


def memory_lines(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for stage in STAGES:
        done = [r for r in results if stage in r["stages"] and "failed" not in r["stages"][stage]]
        if len(done) < 2:
            continue
        a, b = done[0], done[-1]
        units = {"rows": "rows", "users": "users", "items": "items"}[PER[stage]]
        grow = (b["stages"][stage]["peak_rss"] - a["stages"][stage]["peak_rss"]) / (b[units] - a[units])
        out.append(f"- {LABEL[stage]}: {a['stages'][stage]['peak_rss'] / 2**30:.2f} GiB at {a['rows']:,} rows, "
                   f"{b['stages'][stage]['peak_rss'] / 2**30:.2f} GiB at {b['rows']:,}: {grow:,.0f} bytes per extra "
                   f"{PER[stage][:-1]}. {WHY_MEMORY[stage]}.")
    return out


def marginal(a: dict[str, Any], b: dict[str, Any], stage: str) -> float:
    """Microseconds per extra unit from size `a` to size `b`: the slope, free of the fixed start-up cost that makes
    the per-unit time of a small size look expensive (and a superlinear stage look linear)."""
    units = {"rows": "rows", "users": "users", "items": "items"}[PER[stage]]
    return (b["stages"][stage]["wall_s"] - a["stages"][stage]["wall_s"]) * 1e6 / (b[units] - a[units])


def goal_lines(results: list[dict[str, Any]], first: dict[str, Any]) -> list[str]:
    """The verdicts: per unit at the largest size against the smallest, and the slope between the two largest
    sizes against the slope between the two smallest (the stricter test: a fixed cost cannot hide a superlinear
    term in it)."""
    out = []
    for stage in STAGES:
        done = [r for r in results if stage in r["stages"] and "failed" not in r["stages"][stage]]
        if len(done) < 2:
            out.append(f"- {LABEL[stage]}: fewer than two sizes completed")
            continue
        a, b = done[0], done[-1]
        ratio = per_unit(b, stage) / per_unit(a, stage)
        unit = PER[stage][:-1]
        line = (f"- {LABEL[stage]}: per {unit} at {b['rows']:,} rows {ratio:.2f}x that at {a['rows']:,}")
        if len(done) >= 3:
            low, high = marginal(done[0], done[1], stage), marginal(done[-2], done[-1], stage)
            slope = high / low if low > 0 else float("inf")
            verdict = "met" if slope <= GOAL_LINEAR and ratio <= GOAL_LINEAR else "not met"
            line += (f"; slope {low:,.2f} µs per extra {unit} from {done[0]['rows']:,} to {done[1]['rows']:,} rows, "
                     f"{high:,.2f} from {done[-2]['rows']:,} to {done[-1]['rows']:,} ({slope:.2f}x)")
        else:
            verdict = "met" if ratio <= GOAL_LINEAR else "not met"
        out.append(f"{line} (goal: linear within {GOAL_LINEAR}x): **{verdict}**; peak memory "
                   f"{a['stages'][stage]['peak_rss'] / 2**30:.2f} -> {b['stages'][stage]['peak_rss'] / 2**30:.2f} GiB")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000000,5000000,20000000,50000000")
    p.add_argument("--model", default="dlrm")
    p.add_argument("--out", default=str(REPO / "runs" / "bench_cost"))
    p.add_argument("--no-doc", action="store_true", help="print the section without writing docs/benchmarks.md")
    args = p.parse_args(argv)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    mach, started = machine("ray", "torch", "pyarrow", "faiss-cpu"), now()
    results = []
    for rows in (int(float(s)) for s in args.sizes.split(",")):
        results.append(run_size(rows, root, args.model))
        (root / "results.json").write_text(json.dumps(results, indent=2))
    if not args.no_doc:
        plot(results, PLOT)
        log(f"plot: {display(PLOT)}")
    emit("bench_cost", section(results, mach, argv, args.model, started), not args.no_doc)


if __name__ == "__main__":
    main()
