"""Benchmark of retrieval quality: the two-tower model against most-popular, item-KNN and implicit ALS/BPR.

For each data set (`--datasets`, default MovieLens 100K and UCI Online Retail from ../shared/datasets), one run:
`recforge prepare` with the scenario's config, then `recforge train retrieval` (`train_retrieval`), which trains
the two-tower model (early stopping on valid recall@50) once per `--seeds` seed (default three; the goals are
judged on the mean, so a verdict is not one draw) and fits every baseline on the SAME per-user time split
(each user's latest 20% of positives are test; the latest 10% of the rest valid, which the baselines fit on
too), then ranks the whole corpus for every test user with seen items excluded. Writes a table per data set
(Recall/NDCG/HitRate@K, MRR, fit seconds) and the goal lines to its section of docs/benchmarks.md.

    .venv/bin/python -m scripts.bench.retrieval
    .venv/bin/python -m scripts.bench.retrieval --datasets movielens --no-doc
    .venv/bin/python -m scripts.bench.retrieval --smoke     # MovieLens, one seed, one epoch, one baseline, no doc
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.bench.common import REPO, command, load_text, logger, machine, now, quiet
from scripts.bench.doc import emit

CONFIGS = {"movielens": "configs/movielens.yaml", "retail": "configs/retail.yaml"}
KS = (10, 20, 50, 100)
NAME = "bench_retrieval"


SMOKE = ["retrieval.max_epochs=1", "retrieval.refit=false", "retrieval.baselines=[most_popular]"]
log = logger(NAME)


def run_one(name: str, work: Path, threads: int, seeds: Sequence[int], overrides: Sequence[str] = ()
            ) -> dict[str, Any]:
    """Prepare once, then train the two-tower model once per seed (the baselines with the first seed only: they
    do not depend on the model's seed); the first seed's run is the full table, the others add seed rows."""
    from feature_store.prepare import prepare
    from recforge.config import load
    from training.retrieval.run import train_retrieval

    cfg = load(REPO / CONFIGS[name], [f"output_dir={work / name}", f"retrieval.runtime.num_threads={threads}",
                                      *overrides])
    if not Path(cfg.source.path).exists():  # type: ignore[union-attr]
        raise SystemExit(f"{NAME}: {cfg.source.path} is absent; the real data sets live in ../shared/datasets")  # type: ignore[union-attr]
    t0 = time.perf_counter()
    summary = prepare(cfg).summary
    log(f"{name}: prepared in {time.perf_counter() - t0:.1f} s")
    result: dict[str, Any] = {}
    per_seed: dict[int, dict[str, float]] = {}
    for i, seed in enumerate(seeds):
        runtime = cfg.retrieval.runtime.model_copy(update={"seed": seed})
        rcfg = cfg.retrieval.model_copy(update={"runtime": runtime, **({} if i == 0 else {"baselines": []})})
        run = train_retrieval(cfg.output_dir, f"{NAME}_{name}", rcfg).to_dict()
        per_seed[seed] = run["test"]["two_tower"]
        if i == 0:
            result = run
            result["retrieval_config"] = rcfg.model_dump(mode="json")
        log(f"{name}: seed {seed}: two-tower recall@10 {per_seed[seed]['recall@10']:.4f}, recall@50 "
            f"{per_seed[seed]['recall@50']:.4f}")
    result["prepare_rows"] = summary["events_kept"]
    result["seeds"] = per_seed
    return result


GOAL_METRICS = ("recall@10", "recall@50", "ndcg@10")


def seed_mean(per_seed: dict[int, dict[str, float]]) -> dict[str, float]:
    return {k: sum(m[k] for m in per_seed.values()) / len(per_seed) for k in GOAL_METRICS}


def lr_text(optim: dict[str, Any]) -> str:
    """`lr X` (one rate for towers and embeddings, the default) or both rates."""
    dense, emb = optim["dense_lr"], optim["embedding_lr"]
    return f"lr {dense}" if dense == emb else f"lr {dense} (towers) / {emb} (embeddings)"


def render(results: dict[str, dict[str, Any]], ctx: dict[str, Any]) -> str:
    m = ctx["machine"]
    out = ["## Retrieval quality (scripts.bench.retrieval)", "",
           "The two-tower model (`recforge train retrieval`) against most-popular, item-KNN (cosine item-item) and "
           "the `implicit` library's ALS and BPR, on the same per-user time split, in one run per data set. "
           "Full-corpus ranking for every test user, the user's train/valid items excluded.", "",
           f"- Date: {ctx['date']}",
           f"- Machine: {m['cpu']}, {m['usable']} cores usable, {m['ram_gib']:.1f} GiB RAM, {m['os']}; Python "
           f"{m['python']}; {load_text(m)}",
           f"- Command: `{ctx['command']}`", ""]
    for name, r in results.items():
        c = r["counts"]
        rc = r["retrieval_config"]
        seed = rc["runtime"]["seed"]
        out += [f"### {name} (`{CONFIGS[name]}`)", "",
                f"- Data: {r['prepare_rows']:,} prepared rows, {c['positives']:,} positives (label >= "
                f"{rc['positive_threshold']}); {c['users']:,} users, corpus {c['items']:,} items (those with a row in "
                f"the prepared train split; {c['positives_outside_corpus']:,} positives on other items dropped for "
                f"every method)",
                f"- Split (seed {seed}): per user by time, test = latest {rc['test_fraction']:.0%} of positives "
                f"({c['test']:,}), valid = latest {rc['valid_fraction']:.0%} of the rest ({c['valid']:,}), train "
                f"{c['train']:,}; baselines fit on train + valid",
                f"- Two-tower: {json.dumps(rc['model'])}, negatives {json.dumps(rc['negatives'])}, batch "
                f"{rc['batch_size']}, {lr_text(rc['optim'])}, {r['epochs_run']} epochs run (best "
                f"{r['best_epoch'] + 1}, valid recall@{rc['select_k']})"
                + (f", then refit on train + valid for {r['refit_epochs']} epochs" if r.get("refit_epochs") else "")
                + f"; {r['fit_seconds']:.1f} s training in all, {r['train_samples_per_second']:,.0f} samples/s", "",
                "| method | " + " | ".join(f"recall@{k}" for k in KS) + " | ndcg@10 | ndcg@50 | hit_rate@50 | mrr | "
                "fit s |", "|---|" + "---:|" * (len(KS) + 5)]
        for method, mt in r["test"].items():
            fit = r["fit_seconds"] if method == "two_tower" else mt.get("fit_seconds", float("nan"))
            label = f"two_tower (seed {seed})" if method == "two_tower" and len(r["seeds"]) > 1 else method
            out.append(f"| {label} | " + " | ".join(f"{mt[f'recall@{k}']:.4f}" for k in KS)
                       + f" | {mt['ndcg@10']:.4f} | {mt['ndcg@50']:.4f} | {mt['hit_rate@50']:.4f} | {mt['mrr']:.4f} "
                       f"| {fit:.1f} |")
        seeds = r["seeds"]
        tt = seed_mean(seeds)
        out.append("")
        if len(seeds) > 1:
            out += ["Two-tower per training seed (the table above is the first; the baselines do not depend on it):",
                    "", "| seed | " + " | ".join(GOAL_METRICS) + " |", "|---:|" + "---:|" * len(GOAL_METRICS)]
            out += [f"| {seed} | " + " | ".join(f"{m[k]:.4f}" for k in GOAL_METRICS) + " |"
                    for seed, m in seeds.items()]
            out += ["| mean | " + " | ".join(f"**{tt[k]:.4f}**" for k in GOAL_METRICS) + " |", ""]
        for peer in ("most_popular", "item_knn"):
            if peer not in r["test"]:
                continue
            p = r["test"][peer]
            wins = [k for k in GOAL_METRICS if tt[k] > p[k]]
            verdict = "met" if len(wins) == len(GOAL_METRICS) else "NOT met"
            every = sum(all(m[k] > p[k] for k in GOAL_METRICS) for m in seeds.values())
            out.append(f"- Goal, beat {peer} (recall@10, recall@50 and ndcg@10, mean of {len(seeds)} seed"
                       f"{'s' if len(seeds) > 1 else ''}): **{verdict}** (two-tower {tt['recall@10']:.4f} / "
                       f"{tt['recall@50']:.4f} / {tt['ndcg@10']:.4f} vs {p['recall@10']:.4f} / {p['recall@50']:.4f} "
                       f"/ {p['ndcg@10']:.4f}; all three beaten at {every} of {len(seeds)} seeds)")
        for peer in ("als", "bpr"):
            if peer in r["test"]:
                p = r["test"][peer]
                out.append(f"- Against implicit {peer.upper()}: recall@50 {tt['recall@50'] - p['recall@50']:+.4f}, "
                           f"ndcg@10 {tt['ndcg@10'] - p['ndcg@10']:+.4f} (two-tower - {peer}); fit "
                           f"{r['fit_seconds']:.1f} s vs {p['fit_seconds']:.1f} s")
        out.append("")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--work-dir", type=Path, default=REPO / "runs" / NAME)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 123],
                    help="two-tower training seeds; the goals are judged on their mean")
    ap.add_argument("--smoke", action="store_true", help="MovieLens, one seed, one epoch, most-popular only; no doc")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.datasets, args.seeds, args.no_doc = ["movielens"], args.seeds[:1], True
        args.work_dir = REPO / "runs" / f"{NAME}_smoke"
    logging.basicConfig(level=logging.WARNING)
    quiet()
    start = machine()
    results = {name: run_one(name, args.work_dir, args.threads, args.seeds, SMOKE if args.smoke else ())
               for name in args.datasets}
    ctx = {"date": now(), "machine": start, "command": command("scripts.bench.retrieval", argv)}
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "results.json").write_text(json.dumps({"ctx": ctx, "results": results}, indent=2, default=str))
    emit(NAME, render(results, ctx), write=not args.no_doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
