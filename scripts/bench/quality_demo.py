"""The synthetic parts of `scripts.bench.quality`: DCNv2 on configs/demo.yaml against the oracle (the true click
probability) and reference AUCs from the generator's own click model, and the experiments behind the demo's
settings (VALID AUC only)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scripts.bench.common import REPO, now
from scripts.bench.quality_report import DEMO_CONFIG, DEMO_EXPERIMENTS, DEMO_RECOMMENDED, THREADS, read_json
from scripts.bench.quality_runs import prepare_split, train_run

log = logging.getLogger("bench_quality")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float))


def _split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Overrides under `train.` change training only; any other key changes the prepared features."""
    train = [o for o in overrides if o.startswith("train.")]
    return [o for o in overrides if not o.startswith("train.")], train


def demo_train_doc(overrides: Sequence[str]) -> dict[str, Any]:
    from recforge.config import load

    cfg = load(REPO / DEMO_CONFIG, [*overrides, f"train.runtime.num_threads={THREADS}",
                                    "train.tracking.log_model=false", "train.runtime.accelerator=cpu"])
    return cfg.train.model_dump(mode="json")


def demo_prepared(work: Path, prepare_overrides: Sequence[str], reuse: bool) -> tuple[Path, dict[str, Any]]:
    """The demo prepared with these (non-train) overrides; one dir per distinct override set."""
    tag = "demo" if not prepare_overrides else "demo_" + "_".join(
        o.replace("features.", "").replace("=", "-").replace(".", "-").replace("/", "-") for o in prepare_overrides)
    root = work / tag
    return root, prepare_split(DEMO_CONFIG, root, prepare_overrides, reuse=reuse)


def oracle(prepared: Path, split: str) -> float:
    from training.common.metrics import auc

    table = pa.concat_tables(pq.read_table(f, columns=["label", "p_click"])
                             for f in sorted((prepared / split).glob("*.parquet")))
    return auc(table.column("label").to_numpy(), table.column("p_click").to_numpy())


def synthetic_references(overrides: Sequence[str], valid_start: int, test_start: int) -> dict[str, dict[str, float]]:
    """Reference AUCs on valid and test from the generator's own click model (same config and seed).

    - oracle: the true logit (what `p_click` holds);
    - attributes only: the true model with each user's taste replaced by the mean taste of the users sharing
      its (age band, gender, region) and each item's vector by the mean over its brand (the brand fixes the
      category), and no per-user or per-item bias: perfect knowledge of everything observable as attributes;
    - attributes + MAP offsets: the above plus a per-user and a per-item offset estimated on TRAIN rows only
      (maximum a posteriori, Gaussian priors with the generator's bias sd, Newton steps): roughly what a model
      that knew the click model's form could reach from the ids it saw in training.
    The latent tables come from `feature_store.readers.synthetic.latent_click_model`; never used as a feature.
    """
    from feature_store.readers.synthetic import latent_click_model
    from recforge.config import load
    from training.common.metrics import auc

    world = latent_click_model(load(REPO / DEMO_CONFIG, list(overrides)).source)
    users, items, ev, context, scale = (world[k] for k in ("users", "items", "events", "context_logit", "scale"))
    u, i, y = ev["user"], ev["item"], ev["click"]

    def group_mean(x: np.ndarray, keys: np.ndarray) -> np.ndarray:
        _, k = np.unique(keys, return_inverse=True)
        sums = np.zeros((int(k.max()) + 1, x.shape[1]))
        np.add.at(sums, k, x)
        return (sums / np.bincount(k)[:, None])[k]

    taste = group_mean(users["taste"], users["age"].astype(np.int64) * 10_000
                       + users["gender"].astype(np.int64) * 1_000 + users["region"])
    vec = group_mean(items["vec"], items["brand"].astype(np.int64))
    full = (context + scale * np.einsum("ij,ij->i", users["taste"][u], items["vec"][i])
            + users["bias"][u] + items["bias"][i])
    attrs = context + scale * np.einsum("ij,ij->i", taste[u], vec[i])
    train = ev["ts"] < valid_start
    bu, bi = np.zeros(len(users["bias"])), np.zeros(len(items["bias"]))
    for _ in range(8):  # alternating Newton steps on the MAP objective (vectorised over ids)
        for ids, b, sd in ((u, bu, world["user_bias_sd"]), (i, bi, world["item_bias_sd"])):
            p = 1.0 / (1.0 + np.exp(-(attrs + bu[u] + bi[i])[train]))
            grad = np.bincount(ids[train], weights=y[train] - p, minlength=len(b)) - b / sd**2
            hess = np.bincount(ids[train], weights=p * (1 - p), minlength=len(b)) + 1 / sd**2
            b += grad / hess
    offsets = attrs + bu[u] + bi[i]
    out: dict[str, dict[str, float]] = {}
    masks = {"valid": (ev["ts"] >= valid_start) & (ev["ts"] < test_start), "test": ev["ts"] >= test_start}
    for split, mask in masks.items():
        out[split] = {"oracle": auc(y[mask], full[mask]), "attributes_only": auc(y[mask], attrs[mask]),
                      "attributes_map_offsets": auc(y[mask], offsets[mask])}
    out["train_impressions_per_user"] = {"mean": float(train.sum() / max(len(np.unique(u[train])), 1))}
    return out


def run_synthetic(work: Path, reuse: bool, extra: Sequence[str] = ()) -> dict[str, Any]:
    """DCNv2 on the demo as configured (and with `DEMO_RECOMMENDED`) against the oracle; `extra` overrides apply to
    every run (the smoke run's tiny scenario) and are not reported as the runs' overrides."""
    rows = []
    for label, overrides in (("configs/demo.yaml as is", ()), ("recommended", DEMO_RECOMMENDED)):
        if label == "recommended" and not DEMO_RECOMMENDED:
            continue
        prep_o, train_o = _split_overrides([*extra, *overrides])
        root, summary = demo_prepared(work, prep_o, reuse)
        tag = "demo_as_is" if not overrides else "demo_recommended"
        log.info("synthetic: %s", label)
        r = train_run(work, root, tag, "bench_quality_demo", demo_train_doc(train_o))
        r.update(label=label, overrides=list(overrides), oracle_test=oracle(root / "prepared", "test"),
                 oracle_valid=oracle(root / "prepared", "valid"), summary=summary)
        split = summary["split"]
        r["references"] = synthetic_references([o for o in prep_o if o.startswith("source.")],
                                                split["valid_start_ts"], split["test_start_ts"])
        log.info("synthetic: %s test auc %.4f vs oracle %.4f", label, r["test"]["auc"], r["oracle_test"])
        rows.append(r)
        reuse = True
    return {"date": now(), "rows": rows}


def run_explore(work: Path, only: Sequence[str], reuse: bool) -> dict[str, Any]:
    """The experiments behind the recommendation; VALID metrics only are kept (test is never looked at)."""
    path = work / "explore.json"
    previous = read_json(path) or {"runs": {}}
    names = list(only) or list(DEMO_EXPERIMENTS)
    unknown = [n for n in names if n not in DEMO_EXPERIMENTS]
    if unknown:
        raise SystemExit(f"bench_quality: unknown experiment(s) {unknown}; defined: {', '.join(DEMO_EXPERIMENTS)}")
    for name in names:
        overrides = DEMO_EXPERIMENTS[name]
        prep_o, train_o = _split_overrides(overrides)
        root, _ = demo_prepared(work, prep_o, reuse=True)
        log.info("explore: %s %s", name, " ".join(overrides))
        r = train_run(work, root, f"explore_{name}", "bench_quality_explore", demo_train_doc(train_o))
        previous["runs"][name] = {
            "overrides": list(overrides), "valid_auc": r["valid_auc"],
            "valid_logloss": r["valid_best_epoch"].get("logloss"),
            "valid_gauc": r["valid_best_epoch"].get("gauc"), "valid_auc_per_epoch": r["valid_auc_per_epoch"],
            "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"], "seconds": r["seconds"], "date": now(),
            "oracle_valid": oracle(root / "prepared", "valid"),
        }
        log.info("explore: %s valid auc %.4f (per epoch %s)", name, r["valid_auc"], r["valid_auc_per_epoch"])
        write_json(path, previous)  # keep each finished experiment even if a later one fails
    return previous
