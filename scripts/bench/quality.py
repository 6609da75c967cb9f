"""Benchmark of CTR model quality: every RecForge model on MovieLens 100K, a peer library on the same split,
and DCNv2 against the oracle on the synthetic demo data.

Parts (each run for real; results kept as JSON under the work dir, one file per part, and the doc section is
rendered from every part present, so parts can be rerun separately):

- `movielens`: `configs/movielens.yaml` (rating >= 4 is a click) prepared once; every registered model trained
  with `training.ranking.run.train_ctr` under one family of settings (`ML_*` in `scripts.bench.quality_report`);
  a small learning-rate grid per model, the setting chosen on VALID AUC; test metrics for the chosen setting only.
- `peer`: DeepCTR-Torch DeepFM and DCN (matrix = DCN-M, and vector) fed the SAME prepared Parquet (our int ids
  as SparseFeat, genres as a mean-pooled VarLenSparseFeat, the history sharing the item embedding), the same
  embedding dim, MLP, cross depth, batch, learning-rate grid and early stopping on valid AUC; test AUC and
  logloss from sklearn, gAUC from `training.common.metrics.gauc`.
- `synthetic`: `configs/demo.yaml` prepared once; DCNv2 with the demo's own train settings and with the
  recommended settings (`DEMO_RECOMMENDED`); test AUC against the oracle AUC (label vs the true `p_click`).
- `explore`: the experiments behind the recommendation (`DEMO_EXPERIMENTS`), VALID AUC only.

    .venv/bin/python -m scripts.bench.quality                      # movielens, peer, synthetic; writes the doc
    .venv/bin/python -m scripts.bench.quality --part explore --only ids_without_min_freq
    .venv/bin/python -m scripts.bench.quality --part movielens --models lr fm --no-doc
    .venv/bin/python -m scripts.bench.quality --smoke              # every part but explore, tiny, no doc
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.bench.common import REPO, LoadMonitor, command, machine, now, quiet
from scripts.bench.doc import DOC, display, update_doc
from scripts.bench.quality_demo import run_explore, run_synthetic, write_json
from scripts.bench.quality_report import ML_LR_GRID, ML_MAX_EPOCHS, PARTS, PEER_MODELS, SECTION_TITLE, THREADS, render
from scripts.bench.quality_runs import run_movielens, run_peer

DEFAULT_PARTS = ("movielens", "peer", "synthetic")
PACKAGES = ("torch", "pytorch-lightning", "deepctr-torch", "scikit-learn")
SMOKE_SCENARIO = ("source.n_users=2000", "source.n_items=1000", "source.n_impressions=50000", "source.days=10",
                  "features.categorical.0.min_freq=5", "features.categorical.1.min_freq=5", "train.max_epochs=1")
log = logging.getLogger("bench_quality")


def datasets_dir() -> Path:
    return REPO.parent / "shared" / "datasets"


def quality_machine() -> dict[str, Any]:
    import torch

    return machine(*PACKAGES) | {"gpu": "none (CPU only)" if not torch.cuda.is_available() else "CUDA"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--part", nargs="+", choices=PARTS, default=list(DEFAULT_PARTS),
                        help="what to run (default: movielens peer synthetic)")
    parser.add_argument("--models", nargs="+", default=None, help="MovieLens: our models (default: all registered)")
    parser.add_argument("--peer-models", nargs="+", choices=PEER_MODELS, default=list(PEER_MODELS))
    parser.add_argument("--only", nargs="+", default=[], help="explore: run only these experiments")
    parser.add_argument("--work-dir", default="runs/bench_quality", help="prepared data, runs and results JSON")
    parser.add_argument("--reuse-prepared", action="store_true", help="reuse prepared splits already in the work dir")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--render-only", action="store_true", help="only rewrite the doc from the results JSON")
    parser.add_argument("--smoke", action="store_true",
                        help="movielens (lr only), peer (deepfm), synthetic on a tiny scenario: one learning rate, "
                             "one epoch each, under runs/bench_quality_smoke; implies --no-doc")
    args = parser.parse_args(argv)
    args.lr_grid, args.max_epochs, args.extra = ML_LR_GRID, ML_MAX_EPOCHS, ()
    if args.smoke:
        args.part, args.models, args.peer_models = list(DEFAULT_PARTS), args.models or ["lr"], ["deepfm"]
        args.lr_grid, args.max_epochs, args.extra = ML_LR_GRID[:1], 1, SMOKE_SCENARIO
        args.work_dir, args.no_doc = "runs/bench_quality_smoke", True
    return args


def run_part(part: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from training.ranking.models import MODELS

    if part == "movielens":
        return run_movielens(work, args.models or list(MODELS), args.reuse_prepared, args.lr_grid, args.max_epochs)
    if part == "peer":
        return run_peer(work, args.peer_models, args.lr_grid, args.max_epochs)
    if part == "synthetic":
        return run_synthetic(work, args.reuse_prepared, args.extra)
    return run_explore(work, args.only, args.reuse_prepared)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet()
    os.chdir(REPO)  # config paths (../shared/datasets/...) are relative to the repository root
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(THREADS)
    for part in [] if args.render_only else args.part:
        if part in ("movielens", "peer") and not (datasets_dir() / "ml-100k" / "u.data").is_file():
            log.warning("%s: skipped: %s not found (the MovieLens 100K files live outside the repository)",
                        part, datasets_dir() / "ml-100k")
            continue
        start = quality_machine()
        with LoadMonitor() as load:
            result = run_part(part, work, args)
        if part == "explore":  # accumulated per experiment; keep the latest context
            result.update(date=now(), machine=start, command=command("scripts.bench.quality", argv))
        else:
            result.update(machine=start, load=load.summary(), command=command("scripts.bench.quality", argv))
        write_json(work / f"{part}.json", result)
    section = render(work)
    if not args.no_doc:
        update_doc(DOC, "bench_quality", section.rstrip() + "\n")
        log.info("wrote the '%s' section of %s", SECTION_TITLE, display(DOC))
    else:
        print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
