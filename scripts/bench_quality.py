"""Benchmark of CTR model quality: every RecForge model on MovieLens 100K, a peer library on the same split,
and DCNv2 against the oracle on the synthetic demo data.

Parts (each run for real; results kept as JSON under the work dir, one file per part, and the doc section is
rendered from every part present, so parts can be rerun separately):

- `movielens`: `configs/movielens.yaml` (rating >= 4 is a click) prepared once; every registered model trained
  with `training.ranking.run.train_ctr` under one family of settings (`ML_*` below); a small learning-rate grid per
  model, the setting chosen on VALID AUC; test metrics reported for the chosen setting only.
- `peer`: DeepCTR-Torch DeepFM and DCN (matrix = DCN-M, and vector) fed the SAME prepared Parquet (our int ids
  as SparseFeat, genres as a mean-pooled VarLenSparseFeat, the history sharing the item embedding), the same
  embedding dim, MLP, cross depth, batch, learning-rate grid and early stopping on valid AUC; test AUC and
  logloss from sklearn, gAUC from `training.common.metrics.gauc`.
- `synthetic`: `configs/demo.yaml` prepared once; DCNv2 with the demo's own train settings and with the
  recommended settings (`DEMO_RECOMMENDED`); test AUC against the oracle AUC (label vs the true `p_click`).
- `explore`: the experiments behind the recommendation (`DEMO_EXPERIMENTS`), VALID AUC only.

    .venv/bin/python scripts/bench_quality.py                      # movielens, peer, synthetic; writes the doc
    .venv/bin/python scripts/bench_quality.py --part explore --only ids_without_min_freq
    .venv/bin/python scripts/bench_quality.py --part movielens --models lr fm --no-doc
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))
import benchdoc  # noqa: E402

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DOC = REPO / "docs" / "benchmarks.md"
SECTION_TITLE = "## CTR quality (bench_quality.py)"
PARTS = ("movielens", "peer", "synthetic", "explore")
DEFAULT_PARTS = ("movielens", "peer", "synthetic")
ML_CONFIG = "configs/movielens.yaml"
DEMO_CONFIG = "configs/demo.yaml"

# ---- MovieLens: one family of settings for every model (ours and the peer's)
ML_EMBEDDING_DIM = 16
ML_BATCH = 1024
ML_MAX_EPOCHS = 20
ML_PATIENCE = 2
ML_LR_GRID = (1e-3, 3e-3, 1e-2)  # Adam, the same rate for dense and embedding parameters; chosen per model on valid AUC
ML_MLP = [256, 128]
ML_CROSS_LAYERS = 3
ML_SEED = 42
PEER_MODELS = ("deepfm", "dcn_matrix", "dcn_vector")
PEER_OURS = {"deepfm": "deepfm", "dcn_matrix": "dcnv2", "dcn_vector": "dcnv2"}
PEER_TOLERANCE = 0.003

# ---- synthetic: a change to configs/demo.yaml worth recommending (config overrides; empty: none), and the
# experiments that show why the demo is set as it is (each relative to configs/demo.yaml).
DEMO_RECOMMENDED: tuple[str, ...] = ()
DEMO_EXPERIMENTS: dict[str, tuple[str, ...]] = {
    "demo_as_is": (),
    "ids_without_min_freq": ("features.categorical.0.min_freq=1", "features.categorical.1.min_freq=1"),
    "lr1e-3_no_decay": ("train.optim.dense_lr=0.001", "train.optim.embedding_lr=0.001", "train.optim.decay=none"),
}
ORACLE_TOLERANCE = 0.01
THREADS = 2

log = logging.getLogger("bench_quality")


# ------------------------------------------------------------------------------------------------ helpers


def datasets_dir() -> Path:
    return REPO.parent / "shared" / "datasets"


def machine() -> dict[str, Any]:
    cpu = benchdoc.cpu_model()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "torch": _version("torch"), "lightning": _version("pytorch-lightning"),
        "deepctr_torch": _version("deepctr-torch"), "sklearn": _version("scikit-learn"),
        "gpu": "none (CPU only)" if not _cuda() else "CUDA",
    }


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class LoadMonitor:
    """Samples the 1-minute load average every few seconds: the machine is shared, timings say so."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.interval_s)

    def __enter__(self) -> LoadMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"mean": round(float(np.mean(s)), 2), "max": round(float(np.max(s)), 2)}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float))


def _quiet_libraries() -> None:
    os.environ["RECFORGE_PROGRESS"] = "0"
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning_fabric",
                 "lightning_fabric.utilities.rank_zero", "lightning", "mlflow", "mlflow.store.db.utils", "alembic",
                 "recforge"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ------------------------------------------------------------------------------------------------ preparing


def prepare_split(config: str, out_dir: Path, overrides: Sequence[str] = (), reuse: bool = False
                  ) -> dict[str, Any]:
    """`recforge prepare` of `config` into `out_dir` (reused when `reuse` and already prepared); its summary."""
    from recforge.config import load

    summary_path = out_dir / "prepared" / "summary.json"
    if reuse and (out_dir / "prepared" / "spec" / "feature_spec.json").is_file() and summary_path.is_file():
        log.info("reusing %s", out_dir / "prepared")
        return json.loads(summary_path.read_text())
    from feature_store.prepare import prepare

    cfg = load(REPO / config, [f"output_dir={out_dir}", *overrides])
    try:
        return prepare(cfg).summary
    finally:
        import ray

        if ray.is_initialized():  # free the workers' cores and memory for training
            ray.shutdown()


def run_dir(work: Path, prepared_root: Path, tag: str) -> Path:
    """A per-run output dir whose `prepared` links to the shared prepared split (train_ctr reads it there)."""
    d = work / "runs" / tag
    d.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(d / "train", ignore_errors=True)  # a fresh run: no checkpoints of an earlier one
    link = d / "prepared"
    if link.is_symlink() or link.exists():
        if link.resolve() == (prepared_root / "prepared").resolve():
            return d
        link.unlink()
    link.symlink_to((prepared_root / "prepared").resolve(), target_is_directory=True)
    return d


def train_run(work: Path, prepared_root: Path, tag: str, name: str, train_doc: dict[str, Any]) -> dict[str, Any]:
    """Train with `training.ranking.run.train_ctr`; valid/test metrics, best epoch, epochs run, seconds."""
    import torch
    from mlflow.tracking import MlflowClient

    from training.ranking.config import TrainConfig
    from training.ranking.run import train_ctr

    cfg = TrainConfig.model_validate(train_doc)
    out = run_dir(work, prepared_root, tag)
    uri = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    t0 = time.perf_counter()
    result = train_ctr(out, name, cfg, tracking_uri=uri)
    seconds = time.perf_counter() - t0
    best = result["best_checkpoint"]
    best_epoch = int(torch.load(best, map_location="cpu", weights_only=False)["epoch"]) + 1 if best else None
    client = MlflowClient(uri)
    per_epoch: dict[str, list[float]] = {}
    for metric in ("auc", "logloss", "gauc"):
        history = client.get_metric_history(result["mlflow"]["run_id"], f"valid/{metric}")
        per_epoch[metric] = [float(m.value) for m in sorted(history, key=lambda m: m.step)]
    # train_ctr's result["valid"] holds the LAST epoch's validation; the tested weights are the best epoch's
    at = (best_epoch or len(per_epoch["auc"])) - 1
    valid_best = {k: v[at] for k, v in per_epoch.items() if len(v) > at}
    return {
        "tag": tag, "model": cfg.model, "train": cfg.model_dump(mode="json", exclude={"tracking"}),
        "valid_auc": valid_best["auc"], "valid_best_epoch": valid_best, "valid_last_epoch": result["valid"],
        "test": result["test"], "best_epoch": best_epoch, "epochs_run": result["epochs_run"],
        "seconds": round(seconds, 1), "valid_auc_per_epoch": [round(v, 4) for v in per_epoch["auc"]],
    }


# ------------------------------------------------------------------------------------------------ MovieLens


def movielens_params(model: str) -> dict[str, Any]:
    """Model sizes for MovieLens: dim 16 for all; MLP [256, 128] where a model has one; 3 cross layers."""
    params: dict[str, Any] = {"embedding_dim": ML_EMBEDDING_DIM}
    if model in ("wide_deep", "deepfm", "dcnv2", "din"):
        params["mlp"] = list(ML_MLP)
    if model == "dcnv2":
        params.update(structure="parallel", cross_layers=ML_CROSS_LAYERS)
    if model == "dlrm":
        params["top_mlp"] = list(ML_MLP)
    if model == "finalmlp":
        params.update(mlp1=list(ML_MLP), mlp2=list(ML_MLP))
    return params


def movielens_train_doc(model: str, lr: float) -> dict[str, Any]:
    return {
        "model": model, "model_params": {model: movielens_params(model)}, "batch_size": ML_BATCH,
        "max_epochs": ML_MAX_EPOCHS, "seed": ML_SEED, "num_threads": THREADS,
        "optim": {"dense": "adam", "dense_lr": lr, "embedding": "adam", "embedding_lr": lr},
        "early_stopping": {"metric": "valid/auc", "mode": "max", "patience": ML_PATIENCE},
        "tracking": {"log_model": False}, "accelerator": "cpu",
    }


def run_movielens(work: Path, models: Sequence[str], reuse: bool) -> dict[str, Any]:
    from training.ranking.models import MODELS

    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"bench_quality: unknown model(s) {unknown}; registered: {', '.join(MODELS)}")
    root = work / "movielens"
    t0 = time.perf_counter()
    summary = prepare_split(ML_CONFIG, root, reuse=reuse)
    prepare_s = time.perf_counter() - t0
    grid: list[dict[str, Any]] = []
    chosen: list[dict[str, Any]] = []
    for model in models:
        runs = []
        for lr in ML_LR_GRID:
            log.info("movielens: %s lr=%g", model, lr)
            r = train_run(work, root, f"ml_{model}_lr{lr:g}", "bench_quality_movielens",
                          movielens_train_doc(model, lr))
            r["lr"] = lr
            runs.append(r)
            log.info("movielens: %s lr=%g valid auc %.4f (%d epochs, %.0f s)", model, lr, r["valid_auc"],
                     r["epochs_run"], r["seconds"])
        best = max(runs, key=lambda r: r["valid_auc"])
        grid.extend({"model": model, "lr": r["lr"], "valid_auc": r["valid_auc"], "best_epoch": r["best_epoch"],
                     "epochs_run": r["epochs_run"], "seconds": r["seconds"], "chosen": r is best} for r in runs)
        chosen.append(best)
    return {"date": _now(), "prepare_seconds": round(prepare_s, 1), "summary": summary, "grid": grid,
            "rows": chosen}


# ------------------------------------------------------------------------------------------------ the peer


@contextlib.contextmanager
def _offline_import() -> Iterator[None]:
    """deepctr_torch asks PyPI for a newer version in a thread at import; keep that off the network and quiet."""
    import requests

    real_get = requests.get

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise requests.ConnectionError("bench_quality: no network calls during the benchmark")

    before = set(threading.enumerate())
    requests.get = refuse  # type: ignore[assignment]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
            for t in set(threading.enumerate()) - before:
                t.join(timeout=10)
    finally:
        requests.get = real_get  # type: ignore[assignment]


def peer_inputs(prepared: Path) -> tuple[dict[str, Any], dict[str, tuple[dict[str, np.ndarray], np.ndarray]],
                                         np.ndarray | None]:
    """Our prepared splits as DeepCTR-Torch inputs: feature columns and, per split, (x dict, y).

    Uses our columnar loader (`table_to_tensors`) so both sides see identical ids, bags and histories.
    """
    from feature_store.spec import FeatureSpec
    from training.common.data import shard_files, table_to_tensors
    from training.common.features import DENSE, LABEL, SPARSE, FeatureLayout, bag_key, bag_len_key, seq_key, seq_len_key

    spec = FeatureSpec.load(prepared / "spec")
    layout = FeatureLayout.from_spec(spec)
    data: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
    groups = None
    for split in ("train", "valid", "test"):
        table = pa.concat_tables(pq.read_table(f) for f in shard_files(prepared / split))
        t = table_to_tensors(table, layout)
        x: dict[str, np.ndarray] = {}
        for i, f in enumerate(layout.sparse):
            x[f.name] = t[SPARSE][:, i].numpy()
        for f in layout.bags:
            x[f.name], x[f"{f.name}__len"] = t[bag_key(f.name)].numpy(), t[bag_len_key(f.name)].numpy()
        for s in layout.sequences:
            x[s.name], x[f"{s.name}__len"] = t[seq_key(s.name)].numpy(), t[seq_len_key(s.name)].numpy()
        if layout.dense_dim:
            x[DENSE] = t[DENSE].numpy()
        data[split] = (x, t[LABEL].numpy().astype(np.float32))
        if split == "test" and layout.user_field is not None:
            groups = x[layout.user_field]
    return {"layout": layout}, data, groups


def peer_columns(layout: Any, dim: int) -> list[Any]:
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat

    cards = {f.name: f.cardinality for f in layout.tables}
    cols: list[Any] = [SparseFeat(f.name, vocabulary_size=f.cardinality, embedding_dim=dim) for f in layout.sparse]
    cols += [VarLenSparseFeat(SparseFeat(f.name, vocabulary_size=f.cardinality, embedding_dim=dim),
                              maxlen=f.max_len, combiner="mean", length_name=f"{f.name}__len") for f in layout.bags]
    cols += [VarLenSparseFeat(SparseFeat(s.name, vocabulary_size=cards[s.source], embedding_dim=dim,
                                         embedding_name=s.source),
                              maxlen=s.max_len, combiner="mean", length_name=f"{s.name}__len")
             for s in layout.sequences]
    if layout.dense_dim:
        cols.append(DenseFeat("dense", layout.dense_dim))
    return cols


def peer_model(kind: str, cols: list[Any]) -> Any:
    from deepctr_torch.models import DCN, DeepFM

    if kind == "deepfm":
        return DeepFM(cols, cols, dnn_hidden_units=tuple(ML_MLP), seed=ML_SEED, device="cpu")
    if kind in ("dcn_matrix", "dcn_vector"):
        return DCN(cols, cols, cross_num=ML_CROSS_LAYERS, cross_parameterization=kind.split("_")[1],
                   dnn_hidden_units=tuple(ML_MLP), seed=ML_SEED, device="cpu")
    raise ValueError(f"unknown peer model '{kind}'; choose one of {PEER_MODELS}")


def train_peer(kind: str, lr: float, cols: list[Any], data: dict[str, tuple[dict[str, np.ndarray], np.ndarray]],
               groups: np.ndarray | None) -> dict[str, Any]:
    """DeepCTR-Torch trained one epoch per `fit` call; the best valid-AUC epoch's weights are tested."""
    import torch
    from sklearn.metrics import log_loss, roc_auc_score

    from training.common.metrics import gauc

    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    model = peer_model(kind, cols)
    model.compile(torch.optim.Adam(model.parameters(), lr=lr), "binary_crossentropy", metrics=[])
    x_tr, y_tr = data["train"]
    x_va, y_va = data["valid"]
    best_auc, best_state, best_epoch, bad, history = -1.0, None, 0, 0, []
    epoch = 0
    for epoch in range(1, ML_MAX_EPOCHS + 1):
        with contextlib.redirect_stdout(io.StringIO()):  # fit prints the device and sample counts
            model.fit(dict(x_tr), y_tr, batch_size=ML_BATCH, epochs=1, verbose=0, shuffle=True)
        valid_auc = float(roc_auc_score(y_va, model.predict(dict(x_va), ML_BATCH * 4).reshape(-1)))
        history.append(round(valid_auc, 4))
        if valid_auc > best_auc:
            best_auc, best_state, best_epoch, bad = valid_auc, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= ML_PATIENCE:
                break
    model.load_state_dict(best_state)
    x_te, y_te = data["test"]
    p = model.predict(dict(x_te), ML_BATCH * 4).reshape(-1)
    p_va = model.predict(dict(x_va), ML_BATCH * 4).reshape(-1)
    seconds = time.perf_counter() - t0
    test = {"auc": float(roc_auc_score(y_te, p)), "logloss": float(log_loss(y_te, np.clip(p, 1e-7, 1 - 1e-7)))}
    if groups is not None:
        test["gauc"] = gauc(y_te, p, groups).value
    return {"peer": kind, "lr": lr, "valid_auc": float(roc_auc_score(y_va, p_va)), "test": test,
            "best_epoch": best_epoch, "epochs_run": epoch, "seconds": round(seconds, 1),
            "valid_auc_per_epoch": history}


def run_peer(work: Path, kinds: Sequence[str]) -> dict[str, Any]:
    try:
        with _offline_import():
            import deepctr_torch  # noqa: F401
    except ImportError:
        raise SystemExit("bench_quality: the peer needs deepctr-torch (pip install deepctr-torch==0.3.0)") from None
    root = work / "movielens"
    prepare_split(ML_CONFIG, root, reuse=True)  # the split the movielens part trained on (seeded, so identical)
    meta, data, groups = peer_inputs(root / "prepared")
    cols = peer_columns(meta["layout"], ML_EMBEDDING_DIM)
    grid: list[dict[str, Any]] = []
    chosen: list[dict[str, Any]] = []
    for kind in kinds:
        runs = []
        for lr in ML_LR_GRID:
            log.info("peer: %s lr=%g", kind, lr)
            r = train_peer(kind, lr, cols, data, groups)
            runs.append(r)
            log.info("peer: %s lr=%g valid auc %.4f (%d epochs, %.0f s)", kind, lr, r["valid_auc"],
                     r["epochs_run"], r["seconds"])
        best = max(runs, key=lambda r: r["valid_auc"])
        grid.extend({"model": kind, "lr": r["lr"], "valid_auc": r["valid_auc"], "best_epoch": r["best_epoch"],
                     "epochs_run": r["epochs_run"], "seconds": r["seconds"], "chosen": r is best} for r in runs)
        chosen.append(best)
    return {"date": _now(), "grid": grid, "rows": chosen}


# ------------------------------------------------------------------------------------------------ synthetic


def _split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Overrides under `train.` change training only; any other key changes the prepared features."""
    train = [o for o in overrides if o.startswith("train.")]
    return [o for o in overrides if not o.startswith("train.")], train


def demo_train_doc(overrides: Sequence[str]) -> dict[str, Any]:
    from recforge.config import load

    cfg = load(REPO / DEMO_CONFIG, [*overrides, f"train.num_threads={THREADS}", "train.tracking.log_model=false",
                                    "train.accelerator=cpu"])
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
    Uses `feature_store.synthetic` internals (`_make_users`, `_make_items`, `_make_events`) to rebuild the latent
    tables; never used as a feature.
    """
    from feature_store import synthetic as syn
    from recforge.config import load
    from training.common.metrics import auc

    src = load(REPO / DEMO_CONFIG, list(overrides)).source
    rng = np.random.default_rng(src.seed)
    start = syn._start_ts(src)
    users = syn._make_users(src, rng, start)
    items = syn._make_items(src, rng, start)
    ev = syn._make_events(src, rng, start, users, items)
    u, i, y = ev["user"], ev["item"], ev["click"]
    hour = syn._HOUR_EFFECT * np.cos(2 * np.pi * (np.arange(24) - 21) / 24)
    context = (src.base_logit + syn.CHANNEL_EFFECT[ev["channel"]] + syn.DEVICE_EFFECT[ev["device"]]
               + hour[ev["hour"]] + syn._PRICE_EFFECT * (np.log(ev["price"]) - items["cat_mu"][items["cat"][i]])
               - src.position_bias * np.log(ev["position"].astype(np.float64)))
    scale = src.interaction_scale / np.sqrt(src.latent_dim)

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
        for ids, b, sd in ((u, bu, syn._USER_BIAS_SD), (i, bi, syn._ITEM_BIAS_SD)):
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


def run_synthetic(work: Path, reuse: bool) -> dict[str, Any]:
    rows = []
    for label, overrides in (("configs/demo.yaml as is", ()), ("recommended", DEMO_RECOMMENDED)):
        if label == "recommended" and not DEMO_RECOMMENDED:
            continue
        prep_o, train_o = _split_overrides(overrides)
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
    return {"date": _now(), "rows": rows}


def run_explore(work: Path, only: Sequence[str], reuse: bool) -> dict[str, Any]:
    """The experiments behind the recommendation; VALID metrics only are kept (test is never looked at)."""
    path = work / "explore.json"
    previous = _read_json(path) or {"runs": {}}
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
            "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"], "seconds": r["seconds"], "date": _now(),
            "oracle_valid": oracle(root / "prepared", "valid"),
        }
        log.info("explore: %s valid auc %.4f (per epoch %s)", name, r["valid_auc"], r["valid_auc_per_epoch"])
        _write_json(path, previous)  # keep each finished experiment even if a later one fails
    return previous


# ------------------------------------------------------------------------------------------------ the doc


def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _machine_line(m: dict[str, Any], load: dict[str, float] | None) -> str:
    line = (f"{m['cpu']}, {m['usable_cores']} usable cores, {m['ram_gib']} GiB RAM, {m['gpu']}, {m['os']}; "
            f"Python {m['python']}, torch {m['torch']}, pytorch-lightning {m['lightning']}, "
            f"deepctr-torch {m['deepctr_torch']}, scikit-learn {m['sklearn']}")
    if load:
        line += (f"; shared machine: 1-min load average during the run {load['mean']} on average, "
                 f"{load['max']} at most")
    return line


def _part_header(part: dict[str, Any]) -> list[str]:
    return [f"- Date: {part['date']}", f"- Machine: {_machine_line(part['machine'], part.get('load'))}",
            f"- Command: `{part['command']}`"]


def _settings_line() -> str:
    return (f"embedding dim {ML_EMBEDDING_DIM} for every field; MLP {ML_MLP} (DeepFM, Wide&Deep, DCNv2, DIN; DLRM "
            f"top MLP; FinalMLP both streams); DCNv2 parallel with {ML_CROSS_LAYERS} full-rank cross layers; batch "
            f"{ML_BATCH}; Adam with one learning rate for dense and embedding parameters, chosen per model on "
            f"VALID AUC from {{{', '.join(f'{lr:g}' for lr in ML_LR_GRID)}}}; no weight decay, no embedding L2, "
            f"no dropout; gradient clipping 10 (the train default); up to {ML_MAX_EPOCHS} epochs, early stopping on "
            f"valid AUC with patience {ML_PATIENCE}, the best valid epoch's weights tested; seed {ML_SEED}; "
            f"{THREADS} torch threads, CPU")


def _grid_table(grid: list[dict[str, Any]]) -> list[str]:
    models = list(dict.fromkeys(g["model"] for g in grid))
    head = "| model | " + " | ".join(f"lr {lr:g}: valid AUC (best / run epochs)" for lr in ML_LR_GRID) + " |"
    lines = [head, "|---|" + "---:|" * len(ML_LR_GRID)]
    for m in models:
        cells = []
        for lr in ML_LR_GRID:
            g = next((g for g in grid if g["model"] == m and g["lr"] == lr), None)
            if g is None:
                cells.append("")
                continue
            text = f"{_f(g['valid_auc'])} ({g['best_epoch']} / {g['epochs_run']})"
            cells.append(f"**{text}**" if g["chosen"] else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def render_movielens(ml: dict[str, Any] | None, peer: dict[str, Any] | None) -> list[str]:
    out = ["### MovieLens 100K as CTR", ""]
    if ml is None and peer is None:
        return [*out, "Not run yet (needs ../shared/datasets/ml-100k).", ""]
    if ml is not None and ml.get("skipped"):
        return [*out, f"Skipped: {ml['skipped']}", ""]
    if ml is not None:
        s = ml["summary"]
        rows = s["split"]["rows"]
        out += _part_header(ml)
        out += [
            f"- Data: `{ML_CONFIG}`: {s['events_kept']:,} ratings, rating >= 4 is a click; random split (seed 42) "
            f"train {rows['train']:,} / valid {rows['valid']:,} / test {rows['test']:,}; click rate "
            f"{s['label_mean']['train']:.3f} / {s['label_mean']['valid']:.3f} / {s['label_mean']['test']:.3f}. "
            f"Features: user_id, item_id, gender, occupation, zip_prefix, age (8 quantile buckets), year "
            f"(10 buckets), genres (multi-valued, mean-pooled), hist_item_id (the user's last 20 positively rated "
            f"items before the rating, sharing the item embedding); prepared once by `recforge prepare` "
            f"({s['seconds']:.1f} s)",
            f"- Settings (the same family for every model): {_settings_line()}",
            "- Seconds: wall time of `train_ctr` (data loading, every epoch with its validation pass, test, "
            "bundle export and MLflow logging) on the shared machine above",
            "",
            "| model | lr (chosen on valid) | valid AUC | test AUC | test logloss | test gAUC | best / run epochs "
            "| seconds |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in ml["rows"]:
            t = r["test"]
            out.append(f"| {r['model']} | {r['lr']:g} | {_f(r['valid_auc'])} | {_f(t['auc'])} | "
                       f"{_f(t['logloss'])} | {_f(t.get('gauc'))} | {r['best_epoch']} / {r['epochs_run']} | "
                       f"{r['seconds']:.0f} |")
        test = {r["model"]: r["test"]["auc"] for r in ml["rows"]}
        if all(m in test for m in ("deepfm", "dcnv2", "lr", "fm")):
            weakest_deep = min(test["deepfm"], test["dcnv2"])
            strongest_shallow = max(test["lr"], test["fm"])
            held = weakest_deep > strongest_shallow
            out += ["", f"Goal: DeepFM and DCNv2 beat LR and FM on test AUC: **{'met' if held else 'NOT met'}** "
                    f"(DeepFM {_f(test['deepfm'])}, DCNv2 {_f(test['dcnv2'])} vs LR {_f(test['lr'])}, FM "
                    f"{_f(test['fm'])}; smallest margin {weakest_deep - strongest_shallow:+.4f})."]
        out += ["", "Learning-rate grid, VALID AUC only (bold: the chosen setting):", "", *_grid_table(ml["grid"])]
        out.append("")
    if peer is not None:
        out += render_peer(ml, peer)
    return out


def render_peer(ml: dict[str, Any] | None, peer: dict[str, Any]) -> list[str]:
    ours = {r["model"]: r for r in (ml or {}).get("rows", [])}
    out = [
        "#### Side by side with DeepCTR-Torch on the same prepared split", "",
        *_part_header(peer),
        "- Peer: DeepCTR-Torch `DeepFM` and `DCN` (`cross_parameterization='matrix'`, i.e. DCN-M, the DCNv2 cross; "
        "and `'vector'`, the original DCN) fed our prepared Parquet: each single-valued field's int64 ids as a "
        "`SparseFeat` (vocabulary = the spec's cardinality), genres as a mean-pooled `VarLenSparseFeat` with its "
        "lengths, hist_item_id as a mean-pooled `VarLenSparseFeat` sharing the item embedding "
        "(`embedding_name='item_id'`); the same features in the linear and deep parts (the library's usual use). "
        f"Same embedding dim {ML_EMBEDDING_DIM}, MLP {ML_MLP}, {ML_CROSS_LAYERS} cross layers, batch {ML_BATCH}, "
        f"Adam, the same learning-rate grid chosen on valid AUC, one `fit` epoch at a time with early stopping on "
        f"valid AUC (patience {ML_PATIENCE}, at most {ML_MAX_EPOCHS} epochs) and the best epoch's weights tested; "
        "the library's own defaults otherwise (init std 1e-4, L2 1e-5 on embeddings and linear weights). "
        "Test AUC and logloss from scikit-learn, gAUC from `training.common.metrics.gauc`. Seconds: training, "
        "per-epoch validation and test prediction.",
        "",
        "| peer model | lr | valid AUC | test AUC | test logloss | test gAUC | best / run epochs | seconds | ours "
        "| our test AUC | ours - peer | within 0.003 or better |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    verdicts = []
    for r in peer["rows"]:
        t = r["test"]
        mine = ours.get(PEER_OURS[r["peer"]])
        diff = mine["test"]["auc"] - t["auc"] if mine else None
        ok = None if diff is None else diff >= -PEER_TOLERANCE
        if ok is not None:
            verdicts.append(ok)
        out.append(
            f"| DeepCTR-Torch {r['peer']} | {r['lr']:g} | {_f(r['valid_auc'])} | {_f(t['auc'])} | "
            f"{_f(t['logloss'])} | {_f(t.get('gauc'))} | {r['best_epoch']} / {r['epochs_run']} | {r['seconds']:.0f} | "
            f"{PEER_OURS[r['peer']]} | {_f(mine['test']['auc']) if mine else 'n/a'} | "
            f"{'n/a' if diff is None else f'{diff:+.4f}'} | {'n/a' if ok is None else 'yes' if ok else '**no**'} |")
    if verdicts:
        out += ["", f"Goal: our models match or beat the peer's test AUC (within {PEER_TOLERANCE} or better): "
                f"**{'met' if all(verdicts) else 'NOT met'}** ({sum(verdicts)} of {len(verdicts)} pairs)."]
    out += ["", "Peer learning-rate grid, VALID AUC only (bold: chosen):", "", *_grid_table(peer["grid"]), ""]
    return out


def _train_settings(t: dict[str, Any]) -> str:
    o = t["optim"]
    return (f"batch {t['batch_size']}, max_epochs {t['max_epochs']}, {o['dense']} dense_lr {o['dense_lr']:g} / "
            f"{o['embedding']} embedding_lr {o['embedding_lr']:g}, embedding_l2 {o['embedding_l2']:g}, decay "
            f"{o['decay']}, early stopping on {t['early_stopping']['metric']} (patience "
            f"{t['early_stopping']['patience']}), model_params {json.dumps(t['model_params'].get(t['model'], {}))}")


def render_synthetic(syn: dict[str, Any] | None, explore: dict[str, Any] | None) -> list[str]:
    out = ["### Synthetic impressions (configs/demo.yaml) against the oracle", ""]
    if syn is not None:
        first = syn["rows"][0]
        s = first["summary"]
        rows = s["split"]["rows"]
        out += _part_header(syn)
        out += [
            f"- Data: `{DEMO_CONFIG}`: {s['events_kept']:,} impressions with a known click model, split by time "
            f"into train {rows['train']:,} / valid {rows['valid']:,} / test {rows['test']:,}; click rate "
            f"{s['label_mean']['test']:.4f} on test. Oracle AUC = AUC of the label against the true `p_click` "
            f"(a passthrough column, never a feature): test {_f(first['oracle_test'])}, valid "
            f"{_f(first['oracle_valid'])}",
            "- Model: DCNv2 trained by `train_ctr` with the config's `train:` section (plus "
            f"`train.num_threads={THREADS}`, `train.accelerator=cpu`)"
            + (", and with the recommended overrides. " if DEMO_RECOMMENDED else ". ")
            + f"The config's train settings at the time of the run: {_train_settings(first['train'])}",
            "",
            "| run | overrides | valid AUC | test AUC | oracle test AUC | oracle - test | test logloss | test gAUC "
            "| best / run epochs | seconds |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in syn["rows"]:
            t = r["test"]
            gap = r["oracle_test"] - t["auc"]
            overrides = " ".join(f"`{o}`" for o in r["overrides"]) or "(none)"
            out.append(f"| {r['label']} | {overrides} | {_f(r['valid_auc'])} | {_f(t['auc'])} | "
                       f"{_f(r['oracle_test'])} | {gap:.4f} | {_f(t['logloss'])} | {_f(t.get('gauc'))} | "
                       f"{r['best_epoch']} / {r['epochs_run']} | {r['seconds']:.0f} |")
        refs = first.get("references")
        if refs:
            out += ["", "What the data allows (reference AUCs from the generator's own click model, same data and "
                    "split; `synthetic_references` in the script):", "",
                    "| reference | valid AUC | test AUC |", "|---|---:|---:|",
                    f"| oracle: the true click probability | {_f(refs['valid']['oracle'])} | "
                    f"{_f(refs['test']['oracle'])} |",
                    "| attributes only: true model, each user's taste replaced by the mean over users with the same "
                    "(age band, gender, region), each item's vector by the mean over its brand, no per-user or "
                    f"per-item bias | {_f(refs['valid']['attributes_only'])} | {_f(refs['test']['attributes_only'])} |",
                    "| attributes + per-user and per-item offsets estimated on TRAIN (MAP, Gaussian priors with the "
                    f"generator's sd) | {_f(refs['valid']['attributes_map_offsets'])} | "
                    f"{_f(refs['test']['attributes_map_offsets'])} |"]
        best = syn["rows"][-1]
        gap = best["oracle_test"] - best["test"]["auc"]
        out += ["", f"Goal: DCNv2 test AUC within {ORACLE_TOLERANCE} of the oracle: "
                f"**{'met' if gap <= ORACLE_TOLERANCE else 'NOT met'}** ({best['label']}: "
                f"{_f(best['test']['auc'])} vs {_f(best['oracle_test'])}, gap {gap:.4f})."]
        if refs:
            ref_gap = refs["test"]["oracle"] - refs["test"]["attributes_map_offsets"]
            out.append(
                f"References from the generator's own click model (see `synthetic_references`): attributes only "
                f"{_f(refs['test']['attributes_only'])}, attributes + MAP per-id offsets "
                f"{_f(refs['test']['attributes_map_offsets'])} ({ref_gap:.4f} below the oracle: with about "
                f"{refs['train_impressions_per_user']['mean']:.0f} train impressions per user, a user's own bias "
                f"and taste cannot be recovered). DCNv2 ({best['label']}) is "
                f"{refs['test']['attributes_only'] - best['test']['auc']:+.4f} from the attributes-only reference "
                f"and {refs['test']['attributes_map_offsets'] - best['test']['auc']:+.4f} from the MAP one "
                "(reference - model).")
        out.append("")
        if DEMO_RECOMMENDED:
            out += ["Recommended change to `configs/demo.yaml` (the `recommended` row; chosen on valid AUC):", "",
                    *(f"- `{o}`" for o in DEMO_RECOMMENDED), ""]
    if explore and explore.get("runs"):
        out += ["#### Experiments behind the recommendation (VALID AUC only; test never looked at)", "",
                "Each row: `train_ctr` on the demo data with `configs/demo.yaml` plus the overrides "
                f"(`train.num_threads={THREADS}`); oracle valid AUC for reference; `python scripts/bench_quality.py "
                "--part explore`.", "",
                "| experiment | overrides | valid AUC | oracle valid - valid | valid AUC per epoch | best / run epochs "
                "| seconds |",
                "|---|---|---:|---:|---|---:|---:|"]
        for name, r in explore["runs"].items():
            overrides = " ".join(f"`{o}`" for o in r["overrides"]) or "(none)"
            per_epoch = ", ".join(f"{v:.4f}" for v in r["valid_auc_per_epoch"])
            out.append(f"| {name} | {overrides} | {_f(r['valid_auc'])} | {r['oracle_valid'] - r['valid_auc']:.4f} | "
                       f"{per_epoch} | {r['best_epoch']} / {r['epochs_run']} | {r['seconds']:.0f} |")
        out.append("")
    if syn is None and not (explore and explore.get("runs")):
        out += ["Not run yet.", ""]
    return out


def render(work: Path) -> str:
    parts = {p: _read_json(work / f"{p}.json") for p in PARTS}
    lines = [
        SECTION_TITLE, "",
        "Model quality, not speed: every figure below comes from a real run of `scripts/bench_quality.py` "
        "(results kept under `runs/bench_quality/*.json`), on CPU. Settings are chosen on the VALID split; test "
        "figures are reported once, for the chosen settings.", "",
    ]
    lines += render_movielens(parts["movielens"], parts["peer"])
    lines += render_synthetic(parts["synthetic"], parts["explore"])
    return "\n".join(lines).rstrip() + "\n"


def update_doc(path: Path, section: str) -> None:
    """Replace this benchmark's block (between its markers) in `path`, or append it; nothing else changes."""
    benchdoc.update_doc(path, "bench_quality", section.rstrip() + "\n")


# ------------------------------------------------------------------------------------------------ main


def _command(argv: Sequence[str]) -> str:
    return shlex.join(["python", "scripts/bench_quality.py", *argv])


def main(argv: Sequence[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    raw_argv = list(sys.argv[1:] if argv is None else argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    _quiet_libraries()
    os.chdir(REPO)  # config paths (../shared/datasets/...) are relative to the repository root
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(THREADS)
    if not args.render_only:
        from training.ranking.models import MODELS

        for part in args.part:
            if part in ("movielens", "peer") and not (datasets_dir() / "ml-100k" / "u.data").is_file():
                log.warning("%s: skipped: %s not found (the MovieLens 100K files live outside the repository)",
                            part, datasets_dir() / "ml-100k")
                continue
            with LoadMonitor() as load:
                if part == "movielens":
                    result = run_movielens(work, args.models or list(MODELS), args.reuse_prepared)
                elif part == "peer":
                    result = run_peer(work, args.peer_models)
                elif part == "synthetic":
                    result = run_synthetic(work, args.reuse_prepared)
                else:
                    result = run_explore(work, args.only, args.reuse_prepared)
            if part == "explore":  # accumulated per experiment; keep the latest context
                result.update(date=_now(), machine=machine(), command=_command(raw_argv))
            else:
                result.update(machine=machine(), load=load.summary(), command=_command(raw_argv))
            _write_json(work / f"{part}.json", result)
    section = render(work)
    if not args.no_doc:
        update_doc(DOC, section)
        log.info("wrote the '%s' section of %s", SECTION_TITLE, DOC.relative_to(REPO))
    else:
        print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
