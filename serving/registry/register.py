"""Registration: a finished training run becomes a version of the scenario's registered model.

`register_ranker` / `register_retriever` turn a run (the scenario's latest by default) into a version whose source
is the run's bundle (`runs:/<id>/ranker`, `runs:/<id>/retrieval_bundle`), tagged with its run, lineage
(prepared-data hash, feature-spec fingerprint) and test metrics, with the alias `challenger`. A retriever is
registered with its FAISS index, logged into its bundle first after checking that the index holds this run's item
vectors: a registered bundle must serve exactly what was gated.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.registry.settings import Kind, RegistrySettings
from serving.registry.store import (
    ARTIFACT,
    CHALLENGER,
    TAG_KIND,
    TAG_RUN,
    RegistryError,
    download,
    find_run,
    mlflow_client,
)
from training.common.tracking import LINEAGE_DATA, LINEAGE_SPEC

if TYPE_CHECKING:
    import mlflow

log = logging.getLogger("recforge.registry")


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


def _ensure_model(client: mlflow.MlflowClient, name: str, kind: Kind) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={TAG_KIND: kind},
                                       description=f"RecForge {kind}: versions are training runs; aliases "
                                                   f"champion / challenger / previous")


def _create_version(settings: RegistrySettings, kind: Kind, run: Any, tags: dict[str, str]) -> RegisteredVersion:
    client = mlflow_client(settings)
    name = settings.model_name(kind)
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


def register_ranker(settings: RegistrySettings, run_id: str | None = None) -> RegisteredVersion:
    """Register a `recforge train ctr` run's ranker bundle (the scenario's latest finished run by default)."""
    run = find_run(settings, "ranker", run_id)
    tags = {LINEAGE_DATA: run.data.tags.get(LINEAGE_DATA, ""), LINEAGE_SPEC: run.data.tags.get(LINEAGE_SPEC, ""),
            "recforge.model": run.data.params.get("train.model", "")}
    return _create_version(settings, "ranker", run, tags)


def default_index_dir(settings: RegistrySettings) -> Path:
    """Where `recforge index build` writes: the local retrieval bundle's `index/` (older: `<output_dir>/index`)."""
    out = Path(settings.output_dir)
    for candidate in (out / "retrieval" / "bundle" / "index", out / "index"):
        if (candidate / "index.json").is_file():
            return candidate
    return out / "retrieval" / "bundle" / "index"


def register_retriever(settings: RegistrySettings, run_id: str | None = None,
                       index_dir: str | Path | None = None) -> RegisteredVersion:
    """Register a `recforge train retrieval` run: log the FAISS index (`index_dir`, default `default_index_dir`)
    into the run's bundle as `retrieval_bundle/index` after checking that it indexes this run's item vectors,
    then create the version. A run whose bundle already holds a valid index keeps it (a different valid one is
    refused); a stale one (another run's vectors, left in the local bundle directory) is replaced."""
    from training.index.faiss_index import ItemIndex

    run = find_run(settings, "retriever", run_id)
    rid = run.info.run_id
    client = mlflow_client(settings)
    where = Path(index_dir) if index_dir is not None else default_index_dir(settings)
    try:
        index = ItemIndex.load(where)
    except (FileNotFoundError, ValueError) as exc:
        raise RegistryError(f"{exc}; a retriever is registered with its index: run `recforge index build --config "
                            f"...` after `recforge train retrieval`, or pass --index-dir") from None
    with tempfile.TemporaryDirectory() as tmp:
        items = download(client, rid, f"{ARTIFACT['retriever']}/embeddings/item_embeddings.parquet", Path(tmp))
        bundle_info = json.loads(download(client, rid, f"{ARTIFACT['retriever']}/bundle.json", Path(tmp)).read_text())
        check_index_matches(index, items, where, rid)
        if not _logged_index_is_valid(client, rid, where, Path(tmp), items):
            client.log_artifacts(rid, str(where), f"{ARTIFACT['retriever']}/index")
    tags = {LINEAGE_DATA: run.data.tags.get(LINEAGE_DATA, ""),
            LINEAGE_SPEC: run.data.tags.get(LINEAGE_SPEC) or str(bundle_info.get("spec_fingerprint", "")),
            "index.type": index.type, "index.recall": json.dumps(index.recall, sort_keys=True)[:5000]}
    return _create_version(settings, "retriever", run, tags)


def _logged_index_is_valid(client: mlflow.MlflowClient, run_id: str, where: Path, tmp: Path, items: Path) -> bool:
    """True when the run's bundle already holds a valid index equal to the one at `where` (nothing to log); False
    when it holds none or a stale one (built from another run's vectors, to be replaced). A valid but different
    index is refused: a registered bundle's index never changes under it."""
    from training.index.faiss_index import ItemIndex

    path = f"{ARTIFACT['retriever']}/index"
    if not any(Path(a.path).name == "index.json" for a in client.list_artifacts(run_id, path)):
        return False
    logged = download(client, run_id, path, tmp / "logged_index")
    try:
        check_index_matches(ItemIndex.load(logged), items, logged, run_id)
    except (RegistryError, ValueError, FileNotFoundError) as exc:
        log.warning("run %s holds a stale index in its bundle (%s); replacing it with %s", run_id, exc, where)
        return False
    theirs, ours = (json.loads((d / "index.json").read_text()) for d in (logged, where))
    if theirs != ours:
        raise RegistryError(f"run {run_id} already holds an index (retrieval_bundle/index: {theirs.get('type')}, "
                            f"recall {theirs.get('recall')}) that differs from {where}; register without --index-dir, "
                            f"or train a new retrieval run for the new index")
    return True


def check_index_matches(index: Any, items_path: Path, where: Path, run_id: str, sample: int = 256) -> None:
    """Refuse an index that does not hold this run's item vectors: a sample of them must find themselves among
    their own top 10, with their exact self inner product as the score (indexes that store the vectors exactly:
    flat, ivf_flat, hnsw; ivf_pq stores codes, so there finding themselves is the test).

    `index` is an `ItemIndex` over corpus positions (`item_code`, the ids it was built with), so it is searched
    directly: no raw-id mapping is involved."""
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
