"""Promotion: a registered version becomes the champion only when the gate (serving.registry.gate) finds it no
worse than the current champion on the same held-out data.

`force` overrides a refusal with a recorded reason and user. Every attempt writes a review report
(serving.registry.review) into the candidate's run (`reviews/<timestamp>/`) and under `<output_dir>/reviews/`,
and tags the version with the decision. On success the old champion becomes `previous` and the candidate
`champion`; a refusal moves no alias (the CLI exits 4).
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.registry.gate import run_gate
from serving.registry.review import Review, Side, config_diff, write_review
from serving.registry.settings import RegistrySettings
from serving.registry.store import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    TAG_DECISION,
    TAG_REVIEW,
    RegistryError,
    acting_user,
    alias_of,
    aliases_of,
    artifact_path,
    download,
    get_version,
    kind_of,
    mlflow_client,
    now,
)
from training.common.tracking import LINEAGE_DATA, LINEAGE_SPEC

if TYPE_CHECKING:
    import mlflow

log = logging.getLogger("recforge.registry")


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


def promote(settings: RegistrySettings, name: str, version: int | str, force: bool = False,
            reason: str | None = None, user: str | None = None,
            online: dict[str, Any] | None = None) -> PromotionResult:
    """Gate version `version` of model `name` against the current champion on the same held-out data; see the
    module docstring. Returns the decision; a refusal changes no alias (the review is written either way).
    `online`: an experiment's evidence for this version (`recforge promote --experiment`), shown in the review
    beside the offline gate and tagged on the version; the gate still decides (`force` overrides it)."""
    client = mlflow_client(settings)
    mv = get_version(client, name, version)
    kind = kind_of(mv)
    who = acting_user(user)
    reason = (reason or "").strip() or None
    if force and reason is None:
        raise RegistryError("--force needs a non-empty --reason: a forced promotion records who forced it and why")
    champion_v = alias_of(client, name, CHAMPION)
    if champion_v == int(mv.version):
        raise RegistryError(f"{name} v{mv.version} is already the champion")
    champion_mv = get_version(client, name, champion_v) if champion_v is not None else None
    when, stamp = now()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        dirs = {"candidate": download(client, mv.run_id, artifact_path(mv), t / "candidate")}
        if champion_mv is not None:
            dirs["champion"] = download(client, champion_mv.run_id, artifact_path(champion_mv), t / "champion")
        titles = {"candidate": f"candidate v{mv.version}", "champion": f"champion v{champion_v}"}
        outcome = run_gate(settings, kind, dirs, titles)
        cand_cfg = _run_config(client, mv.run_id, t)
        champ_cfg = _run_config(client, champion_mv.run_id, t) if champion_mv is not None else None
    candidate = _side(mv, outcome.metrics["candidate"], outcome.index_recall.get("candidate"))
    champion = (_side(champion_mv, outcome.metrics.get("champion", {}), outcome.index_recall.get("champion"))
                if champion_mv is not None else None)
    heldout = {**outcome.heldout, "prepared_hash": _prepared_hash(settings)}
    failures = outcome.failures
    decision = "accepted" if not failures else "forced" if force else "refused"
    review = Review(name, kind, when, candidate, champion, outcome.rows, decision, who, reason, heldout,
                    config_diff(cand_cfg, champ_cfg) if champion is not None else [],
                    _lineage_warnings(candidate, champion, heldout["prepared_hash"]), outcome.figures,
                    outcome.blockers, online)
    paths = _write_and_log_review(settings, client, mv, review, stamp)
    _tag_decision(client, name, mv, review, paths, when)
    if decision != "refused":
        if champion_v is not None:
            client.set_registered_model_alias(name, PREVIOUS, str(champion_v))
        client.set_registered_model_alias(name, CHAMPION, str(mv.version))
        if alias_of(client, name, CHALLENGER) == int(mv.version):
            client.delete_registered_model_alias(name, CHALLENGER)
    log.info("promotion of %s v%s: %s", name, mv.version, decision)
    return PromotionResult(name, int(mv.version), kind, decision, champion_v,
                           review.summary()["metrics"], failures, who, reason,
                           {k: str(v) for k, v in paths.items()}, aliases_of(client, name))


def _side(mv: Any, metrics: dict[str, float], index_recall: dict[str, Any] | None = None) -> Side:
    return Side(int(mv.version), mv.run_id, mv.tags.get(LINEAGE_DATA, ""), mv.tags.get(LINEAGE_SPEC, ""),
                {k: float(v) for k, v in metrics.items()}, index_recall)


def _run_config(client: mlflow.MlflowClient, run_id: str, tmp: Path) -> dict[str, Any] | None:
    """The resolved config a run logged (ranker: resolved_config.yaml, retriever: resolved_config.json)."""
    import yaml

    names = {a.path for a in client.list_artifacts(run_id)}
    for name in ("resolved_config.yaml", "resolved_config.json"):
        if name in names:
            path = download(client, run_id, name, tmp / run_id)
            doc = yaml.safe_load(path.read_text())  # JSON is YAML
            return doc if isinstance(doc, dict) else None
    return None


def _prepared_hash(settings: RegistrySettings) -> str:
    from training.common.tracking import hash_prepared

    prepared = settings.prepared_dir
    return hash_prepared(prepared) if prepared.is_dir() else ""


def _lineage_warnings(candidate: Side, champion: Side | None, current: str) -> list[str]:
    """Versions trained on other prepared data than the held-out data now: their figures may not be comparable
    with the ones their runs reported."""
    out = []
    for label, side in (("candidate", candidate), ("champion", champion)):
        if side is None:
            continue
        if not side.data_hash:
            out.append(f"{label} v{side.version}: its run recorded no prepared-data hash")
        elif current and side.data_hash != current:
            out.append(f"{label} v{side.version} was trained on prepared data {side.data_hash[:12]}, the held-out "
                       f"data now is {current[:12]}: its held-out rows may differ from the ones it was tested on")
    return out


def _write_and_log_review(settings: RegistrySettings, client: mlflow.MlflowClient, mv: Any, review: Review,
                          stamp: str) -> dict[str, Path | str]:
    local = settings.reviews_dir / f"{mv.name}-v{mv.version}-{stamp}"
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
    if review.online:
        tags["recforge.online_experiment"] = str(review.online["experiment"])
        tags["recforge.online_decision"] = str(review.online["decision"])[:5000]
    if review.failures:
        tags[f"{TAG_DECISION}.failures"] = " | ".join(review.failures)[:5000]
    for row in review.rows:
        key = f"gate.{row.name.replace('@', '_at_')}"  # tag keys allow no '@'
        tags[key] = "nan" if math.isnan(row.candidate) else f"{row.candidate:.6g}"
    for k, v in tags.items():
        client.set_model_version_tag(name, str(mv.version), k, v)
