"""The model registry of a scenario: trained runs become MLflow model versions, and a gate decides which one is
the champion.

- `register_ranker` / `register_retriever` turn a finished training run (the scenario's latest by default) into a
  version of the scenario's registered model (`serving.config.model_names`) whose source is the run's bundle
  (`runs:/<id>/ranker`, `runs:/<id>/retrieval_bundle`; a retriever's FAISS index is logged into its bundle first).
  The version is tagged with its run, lineage (prepared-data hash, feature-spec fingerprint) and test metrics, and
  gets the alias `challenger`.
- `promote` scores the candidate and the current champion on the SAME held-out data (rankers: the scenario's raw
  test rows through each bundle's own spec, AUC and logloss; retrievers: recall@K of each bundle's towers on the
  prepared test queries) and refuses a candidate worse than the champion beyond `registry.gate`. `force` overrides
  a refusal with a recorded reason and user. Every attempt writes a review report (serving.review) into the
  candidate's run (`reviews/<timestamp>/`) and under `<output_dir>/reviews/`, and tags the version with the decision.
  On success the old champion becomes `previous` and the candidate `champion`.
- `rollback` makes `previous` the champion again; `list_models` shows every model, version, alias and decision.

Only MLflow aliases (`champion`, `challenger`, `previous`) are used, never the deprecated stages. The registry lives
in the training tracking store (`train.tracking.uri`, default `<output_dir>/mlflow.db`).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from serving.config import GateConfig, model_names
from serving.review import (
    MetricRow,
    Review,
    Side,
    config_diff,
    recall_figure,
    roc_figure,
    score_histogram_figure,
    write_review,
)
from training.common.tracking import LINEAGE_DATA, LINEAGE_SPEC, default_tracking_uri

if TYPE_CHECKING:
    import mlflow
    import pyarrow as pa

    from recforge.config import RecForgeConfig

log = logging.getLogger("recforge.registry")

Kind = Literal["ranker", "retriever"]
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
ARTIFACT = {"ranker": "ranker", "retriever": "retrieval_bundle"}
MARKER = {"ranker": "bundle.json", "retriever": "two_tower.pt"}  # a file every bundle of that kind holds
TAG_KIND, TAG_RUN = "recforge.kind", "recforge.run_id"
TAG_DECISION = "recforge.decision"
TAG_REVIEW = "recforge.review.uri"
SCORE_CHUNK = 1 << 16  # raw rows scored per Ranker.score call


class RegistryError(ValueError):
    """A registry request that cannot be served (no such run/version, nothing to roll back to, ...); the message
    says what to do."""


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class RegisteredVersion:
    """A model version as `register_*` created it."""

    name: str
    version: int
    kind: str
    run_id: str
    source: str
    aliases: list[str]
    tags: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PromotionResult:
    """The outcome of one `promote` attempt: the decision, the figures that made it and where the review is."""

    model: str
    version: int
    kind: str
    decision: str  # accepted | refused | forced
    champion_before: int | None
    metrics: list[dict[str, Any]]
    failures: list[str]
    user: str
    reason: str | None
    review: dict[str, str]
    aliases: dict[str, int] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.decision in ("accepted", "forced")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "promoted": self.promoted}


# ------------------------------------------------------------------------------------------------ store access
def tracking_uri(cfg: RecForgeConfig) -> str:
    """The tracking (and registry) store of the scenario: `train.tracking.uri`, else `<output_dir>/mlflow.db`."""
    return cfg.train.tracking.uri or default_tracking_uri(cfg.output_dir)


def mlflow_client(cfg: RecForgeConfig) -> mlflow.MlflowClient:
    """An MLflow client on the scenario's tracking store, which also holds the registry."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(cfg)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _user(user: str | None) -> str:
    """Who acts: the argument, else $RECFORGE_USER, else the login name."""
    if user or os.environ.get("RECFORGE_USER"):
        return str(user or os.environ["RECFORGE_USER"])
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (some containers): say so rather than fail
        return "unknown"


def _now() -> tuple[str, str]:
    """(ISO time for people, a sortable file-name-safe stamp)."""
    now = dt.datetime.now(dt.UTC)
    return now.isoformat(timespec="seconds"), now.strftime("%Y%m%d-%H%M%S-%f")


def _has_artifact(client: mlflow.MlflowClient, run_id: str, kind: Kind) -> bool:
    return any(Path(a.path).name == MARKER[kind] for a in client.list_artifacts(run_id, ARTIFACT[kind]))


def _experiments(cfg: RecForgeConfig, kind: Kind) -> list[str]:
    """Experiment names a scenario's runs of `kind` go to (recforge/pipeline.py: train_ctr / train_retrieval)."""
    return [cfg.train.tracking.experiment or cfg.name] if kind == "ranker" else [cfg.name]


def find_run(cfg: RecForgeConfig, kind: Kind, run_id: str | None = None) -> Any:
    """The run to register: `run_id`, else the scenario's latest FINISHED run that holds a `kind` bundle."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(cfg)
    producer = "`recforge train ctr`" if kind == "ranker" else "`recforge train retrieval`"
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise RegistryError(f"run {run_id}: not found in {tracking_uri(cfg)}; check --run-id (the MLflow run id "
                                f"{producer} printed) and --tracking-uri") from None
        if run.info.status != "FINISHED":
            raise RegistryError(f"run {run_id} is {run.info.status}; only finished runs can be registered")
        if not _has_artifact(client, run_id, kind):
            raise RegistryError(f"run {run_id} holds no {kind} bundle (artifact '{ARTIFACT[kind]}/{MARKER[kind]}'); "
                                f"it is not a {producer} run, or it ran with train.tracking.log_model=false")
        return run
    ids = [e.experiment_id for n in _experiments(cfg, kind) if (e := client.get_experiment_by_name(n)) is not None]
    if ids:
        runs = client.search_runs(ids, "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                                  max_results=200)
        for run in runs:
            if _has_artifact(client, run.info.run_id, kind):
                return run
    raise RegistryError(f"no finished {kind} run of scenario '{cfg.name}' in {tracking_uri(cfg)} (experiments "
                        f"{_experiments(cfg, kind)}); run {producer} --config ... first, or pass --run-id")


def _ensure_model(client: mlflow.MlflowClient, name: str, kind: Kind) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={TAG_KIND: kind},
                                       description=f"RecForge {kind}: versions are training runs; aliases "
                                                   f"champion / challenger / previous")


def _create_version(cfg: RecForgeConfig, kind: Kind, run: Any, tags: dict[str, str]) -> RegisteredVersion:
    client = mlflow_client(cfg)
    name = model_names(cfg.name, cfg.registry)[0 if kind == "ranker" else 1]
    _ensure_model(client, name, kind)
    run_id = run.info.run_id
    source = f"runs:/{run_id}/{ARTIFACT[kind]}"
    metric_prefix = "test/" if kind == "ranker" else "test/two_tower/"
    all_tags = {TAG_KIND: kind, TAG_RUN: run_id, **tags,
                **{f"metric.{k}": f"{v:.6g}" for k, v in sorted(run.data.metrics.items())
                   if k.startswith(metric_prefix)}}
    mv = client.create_model_version(name, source, run_id=run_id, tags=all_tags,
                                     description=f"{kind} from run {run_id}")
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    log.info("registered %s v%s from run %s (alias %s)", name, mv.version, run_id, CHALLENGER)
    return RegisteredVersion(name, int(mv.version), kind, run_id, source, [CHALLENGER], all_tags)


# ------------------------------------------------------------------------------------------------ registration
def register_ranker(cfg: RecForgeConfig, run_id: str | None = None) -> RegisteredVersion:
    """Register a `recforge train ctr` run's ranker bundle (the scenario's latest finished run by default)."""
    run = find_run(cfg, "ranker", run_id)
    tags = {LINEAGE_DATA: run.data.tags.get(LINEAGE_DATA, ""), LINEAGE_SPEC: run.data.tags.get(LINEAGE_SPEC, ""),
            "recforge.model": run.data.params.get("train.model", "")}
    return _create_version(cfg, "ranker", run, tags)


def default_index_dir(cfg: RecForgeConfig) -> Path:
    """Where `recforge index build` writes: the local retrieval bundle's `index/` (older: `<output_dir>/index`)."""
    out = Path(cfg.output_dir)
    for candidate in (out / "retrieval" / "bundle" / "index", out / "index"):
        if (candidate / "index.json").is_file():
            return candidate
    return out / "retrieval" / "bundle" / "index"


def register_retriever(cfg: RecForgeConfig, run_id: str | None = None,
                       index_dir: str | Path | None = None) -> RegisteredVersion:
    """Register a `recforge train retrieval` run: log the FAISS index (`index_dir`, default `default_index_dir`)
    into the run's bundle as `retrieval_bundle/index` after checking that it indexes this run's item vectors,
    then create the version. A run whose bundle already holds a valid index keeps it (a different valid one is
    refused); a stale one (another run's vectors, left in the local bundle directory) is replaced."""
    from training.index.faiss_index import ItemIndex

    run = find_run(cfg, "retriever", run_id)
    rid = run.info.run_id
    client = mlflow_client(cfg)
    where = Path(index_dir) if index_dir is not None else default_index_dir(cfg)
    try:
        index = ItemIndex.load(where)
    except (FileNotFoundError, ValueError) as exc:
        raise RegistryError(f"{exc}; a retriever is registered with its index: run `recforge index build --config "
                            f"...` after `recforge train retrieval`, or pass --index-dir") from None
    with tempfile.TemporaryDirectory() as tmp:
        items = _download(client, rid, f"{ARTIFACT['retriever']}/embeddings/item_embeddings.parquet", Path(tmp))
        bundle_info = json.loads(_download(client, rid, f"{ARTIFACT['retriever']}/bundle.json", Path(tmp)).read_text())
        _check_index_matches(index, items, where, rid)
        if not _logged_index_is_valid(client, rid, where, Path(tmp), items):
            client.log_artifacts(rid, str(where), f"{ARTIFACT['retriever']}/index")
    tags = {LINEAGE_DATA: run.data.tags.get(LINEAGE_DATA, ""),
            LINEAGE_SPEC: run.data.tags.get(LINEAGE_SPEC) or str(bundle_info.get("spec_fingerprint", "")),
            "index.type": index.type, "index.recall": json.dumps(index.recall, sort_keys=True)[:5000]}
    return _create_version(cfg, "retriever", run, tags)


def _logged_index_is_valid(client: mlflow.MlflowClient, run_id: str, where: Path, tmp: Path, items: Path) -> bool:
    """True when the run's bundle already holds a valid index equal to the one at `where` (nothing to log); False
    when it holds none or a stale one (built from another run's vectors, to be replaced). A valid but different
    index is refused: a registered bundle's index never changes under it."""
    from training.index.faiss_index import ItemIndex

    path = f"{ARTIFACT['retriever']}/index"
    if not any(Path(a.path).name == "index.json" for a in client.list_artifacts(run_id, path)):
        return False
    logged = _download(client, run_id, path, tmp / "logged_index")
    try:
        _check_index_matches(ItemIndex.load(logged), items, logged, run_id)
    except (RegistryError, ValueError, FileNotFoundError) as exc:
        log.warning("run %s holds a stale index in its bundle (%s); replacing it with %s", run_id, exc, where)
        return False
    theirs, ours = (json.loads((d / "index.json").read_text()) for d in (logged, where))
    if theirs != ours:
        raise RegistryError(f"run {run_id} already holds an index (retrieval_bundle/index: {theirs.get('type')}, "
                            f"recall {theirs.get('recall')}) that differs from {where}; register without --index-dir, "
                            f"or train a new retrieval run for the new index")
    return True


def _download(client: mlflow.MlflowClient, run_id: str, path: str, dst: Path) -> Path:
    from mlflow.exceptions import MlflowException

    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run_id, path, str(dst)))
    except (OSError, MlflowException) as exc:
        raise RegistryError(f"run {run_id}: cannot read artifact '{path}' ({exc}); the run's artifacts are "
                            f"incomplete, register another run") from None


def _check_index_matches(index: Any, items_path: Path, where: Path, run_id: str, sample: int = 256) -> None:
    """Refuse an index that does not hold this run's item vectors: a sample of them must find themselves among
    their own top 10, with their exact self inner product as the score (indexes that store the vectors exactly:
    flat, ivf_flat, hnsw; ivf_pq stores codes, so there finding themselves is the test)."""
    import pyarrow.parquet as pq

    table = pq.read_table(items_path)
    n = table.num_rows
    if index.n_items != n:
        raise RegistryError(f"{where}: the index holds {index.n_items} items, run {run_id}'s bundle has {n}; it was "
                            f"built for another run: run `recforge index build` after this run, or pass --index-dir")
    if n == 0:
        return
    pick = np.unique(np.linspace(0, n - 1, min(sample, n)).astype(np.int64))
    emb = table.column("embedding").combine_chunks().take(pick)
    vectors = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(pick), -1)
    if vectors.shape[1] != index.dim:
        raise RegistryError(f"{where}: index dimension {index.dim}, run {run_id}'s vectors have {vectors.shape[1]}; "
                            f"rebuild the index for this run with `recforge index build`")
    key = "item_code" if "item_code" in table.column_names else "item_id"
    own = table.column(key).to_numpy()[pick].astype(np.int64)
    found, scores = index.search(vectors, min(10, n))
    mine = found == own[:, None]
    matched = mine.any(axis=1)
    if index.type != "ivf_pq":
        self_ip = (vectors.astype(np.float64) ** 2).sum(axis=1)
        own_score = np.where(mine, scores, -np.inf).max(axis=1)
        matched &= np.abs(own_score - self_ip) <= 1e-4 * np.maximum(1.0, self_ip)
    hit = float(matched.mean())
    if hit < 0.9:
        raise RegistryError(f"{where}: only {hit:.0%} of run {run_id}'s item vectors find themselves in this index; "
                            f"it was built from another run's embeddings: run `recforge index build` after this run")


# ------------------------------------------------------------------------------------------------ versions/aliases
def _version(client: mlflow.MlflowClient, name: str, version: int | str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        pass
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    except MlflowException:
        versions = []
    if not versions:
        raise RegistryError(f"no registered model '{name}' (or it has no versions); `recforge registry list` shows "
                            f"the models, `recforge register` creates versions")
    raise RegistryError(f"model '{name}' has no version {version} (versions: {', '.join(map(str, versions))})")


def _alias(client: mlflow.MlflowClient, name: str, alias: str) -> int | None:
    aliases = client.get_registered_model(name).aliases
    return int(aliases[alias]) if alias in aliases else None


def _aliases(client: mlflow.MlflowClient, name: str) -> dict[str, int]:
    return {a: int(v) for a, v in client.get_registered_model(name).aliases.items()}


def _kind_of(mv: Any) -> Kind:
    kind = mv.tags.get(TAG_KIND)
    if kind in ARTIFACT:
        return kind  # type: ignore[return-value]
    return "retriever" if str(mv.source).rstrip("/").endswith(ARTIFACT["retriever"]) else "ranker"


def _artifact_path(mv: Any) -> str:
    """The run-relative artifact path of a version's source (`runs:/<id>/<path>`)."""
    source = str(mv.source)
    prefix = f"runs:/{mv.run_id}/"
    return source[len(prefix):] if source.startswith(prefix) else ARTIFACT[_kind_of(mv)]


def _side(mv: Any, metrics: dict[str, float], index_recall: dict[str, Any] | None = None) -> Side:
    return Side(int(mv.version), mv.run_id, mv.tags.get(LINEAGE_DATA, ""), mv.tags.get(LINEAGE_SPEC, ""),
                {k: float(v) for k, v in metrics.items()}, index_recall)


def _run_config(client: mlflow.MlflowClient, run_id: str, tmp: Path) -> dict[str, Any] | None:
    """The resolved config a run logged (ranker: resolved_config.yaml, retriever: resolved_config.json)."""
    import yaml

    names = {a.path for a in client.list_artifacts(run_id)}
    for name in ("resolved_config.yaml", "resolved_config.json"):
        if name in names:
            path = _download(client, run_id, name, tmp / run_id)
            doc = yaml.safe_load(path.read_text())  # JSON is YAML
            return doc if isinstance(doc, dict) else None
    return None


# ------------------------------------------------------------------------------------------------ the gate
def heldout_rows(cfg: RecForgeConfig) -> pa.Table:
    """The scenario's held-out test rows as RAW rows (joined features before any transform), so that each ranker
    scores them through its own feature spec."""
    import pyarrow as pa

    from feature_store.prepare import assemble_events, layout
    from feature_store.readers import read_source
    from feature_store.split import SPLITS

    raw = read_source(cfg.source, layout(cfg).raw)
    assembled = assemble_events(cfg, raw)
    rows = assembled.table.filter(pa.array(assembled.codes == SPLITS.index("test")))
    if rows.num_rows == 0:
        raise RegistryError(f"the test split of scenario '{cfg.name}' is empty: the gate has no held-out rows; raise "
                            f"split.test_fraction")
    return rows


def _score(ranker: Any, rows: pa.Table) -> np.ndarray:
    parts = [ranker.score(rows.slice(i, SCORE_CHUNK)) for i in range(0, rows.num_rows, SCORE_CHUNK)]
    return np.concatenate(parts).astype(np.float64)


def _gate_rankers(cfg: RecForgeConfig, dirs: dict[str, Path], titles: dict[str, str], gate: GateConfig
                  ) -> tuple[dict[str, dict[str, float]], list[MetricRow], dict[str, Any], dict[str, Any], list[str]]:
    """AUC and logloss of each bundle (keys of `dirs`: candidate, champion) on the same raw held-out rows."""
    from training.common.metrics import auc, logloss
    from training.ranking.bundle import load_bundle

    rows = heldout_rows(cfg)
    labels = rows.column(cfg.features.label).to_numpy(zero_copy_only=False).astype(np.float64)
    n_pos = int((labels == 1).sum())
    if n_pos == 0 or n_pos == len(labels):
        raise RegistryError(f"the held-out rows of scenario '{cfg.name}' hold one class only ({n_pos} positives of "
                            f"{len(labels)}): AUC is undefined, the gate cannot compare; raise split.test_fraction")
    probs = {side: _score(load_bundle(d), rows) for side, d in dirs.items()}
    metrics = {side: {"auc": auc(labels, p), "logloss": logloss(labels, p)} for side, p in probs.items()}
    champ = metrics.get("champion")
    table = [MetricRow("auc", metrics["candidate"]["auc"], champ["auc"] if champ else None, True, gate.auc_tolerance),
             MetricRow("logloss", metrics["candidate"]["logloss"], champ["logloss"] if champ else None, False,
                       gate.logloss_tolerance)]
    named = {titles[side]: p for side, p in probs.items()}
    figures = {"roc": roc_figure(labels, named), "scores": score_histogram_figure(named)}
    heldout = {"rows": len(labels), "positives": n_pos, "split": "test (raw rows, each model's own spec)"}
    return metrics, table, heldout, figures, []


def _gate_retrievers(cfg: RecForgeConfig, dirs: dict[str, Path], titles: dict[str, str], gate: GateConfig
                     ) -> tuple[dict[str, dict[str, float]], list[MetricRow], dict[str, Any], dict[str, Any],
                                list[str], dict[str, dict[str, Any]]]:
    """recall@K of each bundle's towers on the test queries of the scenario's prepared data."""
    from training.retrieval.bundle import load_retriever

    prepared = Path(cfg.output_dir) / "prepared"
    ks = sorted({10, 20, 50, 100, gate.recall_k})
    key = f"recall@{gate.recall_k}"
    metrics: dict[str, dict[str, float]] = {}
    recalls: dict[str, dict[str, Any]] = {}
    blockers: list[str] = []
    for side, d in dirs.items():
        retriever = load_retriever(d)
        recalls[side] = retriever.index_recall
        try:
            metrics[side] = retriever.evaluate(prepared, ks)
        except (ValueError, FileNotFoundError) as exc:
            if side == "candidate":
                raise RegistryError(f"the candidate cannot be evaluated on {prepared}: {exc}") from None
            blockers.append(f"the champion cannot be evaluated on the candidate's held-out data ({exc}); the gate "
                            f"cannot compare them: promote with --force and a --reason to replace it")
    champ = metrics.get("champion")
    table = [MetricRow(key, float(metrics["candidate"][key]), float(champ[key]) if champ else None, True,
                       gate.recall_tolerance)]
    curves = {titles[side]: {k: float(m[f"recall@{k}"]) for k in ks if f"recall@{k}" in m}
              for side, m in metrics.items()}
    figures = {"recall_at_k": recall_figure(curves)}
    heldout = {"data": "the test queries of the prepared data (full corpus, seen items excluded)",
               "ks": ",".join(map(str, ks))}
    return metrics, table, heldout, figures, blockers, recalls


def promote(cfg: RecForgeConfig, name: str, version: int | str, force: bool = False, reason: str | None = None,
            user: str | None = None) -> PromotionResult:
    """Gate version `version` of model `name` against the current champion on the same held-out data; see the
    module docstring. Returns the decision; a refusal changes no alias (the review is written either way)."""
    client = mlflow_client(cfg)
    mv = _version(client, name, version)
    kind = _kind_of(mv)
    who = _user(user)
    reason = (reason or "").strip() or None
    if force and reason is None:
        raise RegistryError("--force needs a non-empty --reason: a forced promotion records who forced it and why")
    champion_v = _alias(client, name, CHAMPION)
    if champion_v == int(mv.version):
        raise RegistryError(f"{name} v{mv.version} is already the champion")
    champion_mv = _version(client, name, champion_v) if champion_v is not None else None
    when, stamp = _now()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        dirs = {"candidate": _download(client, mv.run_id, _artifact_path(mv), t / "candidate")}
        if champion_mv is not None:
            dirs["champion"] = _download(client, champion_mv.run_id, _artifact_path(champion_mv), t / "champion")
        titles = {"candidate": f"candidate v{mv.version}", "champion": f"champion v{champion_v}"}
        recalls: dict[str, dict[str, Any]] = {}
        if kind == "ranker":
            metrics, rows, heldout, figures, blockers = _gate_rankers(cfg, dirs, titles, cfg.registry.gate)
        else:
            metrics, rows, heldout, figures, blockers, recalls = _gate_retrievers(cfg, dirs, titles,
                                                                                  cfg.registry.gate)
        cand_cfg = _run_config(client, mv.run_id, t)
        champ_cfg = _run_config(client, champion_mv.run_id, t) if champion_mv is not None else None
    candidate = _side(mv, metrics["candidate"], recalls.get("candidate") if kind == "retriever" else None)
    champion = (_side(champion_mv, metrics.get("champion", {}), recalls.get("champion"))
                if champion_mv is not None else None)
    heldout["prepared_hash"] = _prepared_hash(cfg)
    failures = blockers + [f for f in (r.failure() for r in rows) if f is not None]
    decision = "accepted" if not failures else "forced" if force else "refused"
    review = Review(name, kind, when, candidate, champion, rows, decision, who, reason, heldout,
                    config_diff(cand_cfg, champ_cfg) if champion is not None else [],
                    _lineage_warnings(candidate, champion, heldout["prepared_hash"]), figures, blockers)
    paths = _write_and_log_review(cfg, client, mv, review, stamp)
    _tag_decision(client, name, mv, review, paths, when)
    if decision != "refused":
        if champion_v is not None:
            client.set_registered_model_alias(name, PREVIOUS, str(champion_v))
        client.set_registered_model_alias(name, CHAMPION, str(mv.version))
        if _alias(client, name, CHALLENGER) == int(mv.version):
            client.delete_registered_model_alias(name, CHALLENGER)
    log.info("promotion of %s v%s: %s", name, mv.version, decision)
    return PromotionResult(name, int(mv.version), kind, decision, champion_v,
                           review.summary()["metrics"], failures, who, reason,
                           {k: str(v) for k, v in paths.items()}, _aliases(client, name))


def _prepared_hash(cfg: RecForgeConfig) -> str:
    from training.common.tracking import hash_prepared

    prepared = Path(cfg.output_dir) / "prepared"
    return hash_prepared(prepared) if prepared.is_dir() else ""


def _lineage_warnings(candidate: Side, champion: Side | None, now: str) -> list[str]:
    out = []
    for label, side in (("candidate", candidate), ("champion", champion)):
        if side is None:
            continue
        if not side.data_hash:
            out.append(f"{label} v{side.version}: its run recorded no prepared-data hash")
        elif now and side.data_hash != now:
            out.append(f"{label} v{side.version} was trained on prepared data {side.data_hash[:12]}, the held-out "
                       f"data now is {now[:12]}: its held-out rows may differ from the ones it was tested on")
    return out


def _write_and_log_review(cfg: RecForgeConfig, client: mlflow.MlflowClient, mv: Any, review: Review,
                          stamp: str) -> dict[str, Path | str]:
    local = Path(cfg.output_dir) / "reviews" / f"{mv.name}-v{mv.version}-{stamp}"
    paths: dict[str, Path | str] = dict(write_review(review, local))
    artifact_dir = f"reviews/{stamp}"
    client.log_artifacts(mv.run_id, str(local), artifact_dir)
    paths["artifact_uri"] = f"runs:/{mv.run_id}/{artifact_dir}/review.html"
    paths["local_dir"] = local
    return paths


def _tag_decision(client: mlflow.MlflowClient, name: str, mv: Any, review: Review, paths: dict[str, Path | str],
                  when: str) -> None:
    tags = {TAG_DECISION: review.decision, f"{TAG_DECISION}.at": when, f"{TAG_DECISION}.user": review.user,
            f"{TAG_DECISION}.against": str(review.champion.version) if review.champion else "none",
            TAG_REVIEW: str(paths["artifact_uri"]), "recforge.review.local": str(paths["html"])}
    if review.reason:
        tags[f"{TAG_DECISION}.reason"] = review.reason[:5000]
    if review.failures:
        tags[f"{TAG_DECISION}.failures"] = " | ".join(review.failures)[:5000]
    for row in review.rows:
        key = f"gate.{row.name.replace('@', '_at_')}"  # tag keys allow no '@'
        tags[key] = "nan" if math.isnan(row.candidate) else f"{row.candidate:.6g}"
    for k, v in tags.items():
        client.set_model_version_tag(name, str(mv.version), k, v)


# ------------------------------------------------------------------------------------------------ rollback, list
def rollback(cfg: RecForgeConfig, name: str, user: str | None = None) -> dict[str, Any]:
    """Make the `previous` version the champion again; the replaced champion becomes `previous`."""
    client = mlflow_client(cfg)
    _version_exists_or_fail(client, name)
    previous = _alias(client, name, PREVIOUS)
    if previous is None:
        raise RegistryError(f"{name} has no 'previous' version to roll back to (aliases: "
                            f"{_aliases(client, name) or 'none'}); a version becomes 'previous' when another is "
                            f"promoted over it: promote a version explicitly with `recforge promote`")
    champion = _alias(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, str(previous))
    if champion is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(champion))
    else:
        client.delete_registered_model_alias(name, PREVIOUS)
    when, _ = _now()
    who = _user(user)
    for k, v in {"recforge.rollback.at": when, "recforge.rollback.user": who,
                 "recforge.rollback.replaced": str(champion) if champion is not None else "none"}.items():
        client.set_model_version_tag(name, str(previous), k, v)
    log.info("rolled back %s: champion v%s (was v%s)", name, previous, champion)
    return {"model": name, "champion": previous, "replaced": champion, "user": who,
            "aliases": _aliases(client, name)}


def _version_exists_or_fail(client: mlflow.MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model '{name}'; `recforge registry list` shows the models") from None


def list_models(cfg: RecForgeConfig) -> dict[str, Any]:
    """Every registered model with its aliases and versions (run, aliases, test metrics, gate figures, decision)."""
    client = mlflow_client(cfg)
    models = []
    for rm in client.search_registered_models(max_results=1000):
        by_version: dict[int, list[str]] = {}
        for alias, v in rm.aliases.items():
            by_version.setdefault(int(v), []).append(alias)
        versions = []
        for mv in sorted(client.search_model_versions(f"name = '{rm.name}'"), key=lambda m: int(m.version)):
            tags = dict(mv.tags)
            versions.append({
                "version": int(mv.version),
                "run_id": mv.run_id,
                "created": dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.UTC).isoformat(
                    timespec="seconds"),
                "aliases": sorted(by_version.get(int(mv.version), [])),
                "metrics": {k[len("metric."):]: v for k, v in tags.items() if k.startswith("metric.")},
                "gate": {k[len("gate."):]: v for k, v in tags.items() if k.startswith("gate.")},
                "decision": tags.get(TAG_DECISION),
                "decision_user": tags.get(f"{TAG_DECISION}.user"),
                "decision_reason": tags.get(f"{TAG_DECISION}.reason"),
                "review": tags.get(TAG_REVIEW),
                "data_hash": tags.get(LINEAGE_DATA, ""),
                "spec_fingerprint": tags.get(LINEAGE_SPEC, ""),
            })
        models.append({"name": rm.name, "kind": rm.tags.get(TAG_KIND, ""),
                       "aliases": {a: int(v) for a, v in rm.aliases.items()}, "versions": versions})
    return {"tracking_uri": tracking_uri(cfg), "models": models}
