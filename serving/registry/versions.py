"""After promotion: `rollback` makes `previous` the champion again, `list_models` shows every model, version,
alias, gate figure and decision of the scenario's store.

Rollback needs no gate: `previous` was a champion that passed (or was forced past) one, and rolling back is what
an operator does when the new champion misbehaves in production, when waiting for a review would cost more.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from serving.registry.settings import RegistrySettings
from serving.registry.store import (
    CHAMPION,
    PREVIOUS,
    TAG_DECISION,
    TAG_KIND,
    TAG_REVIEW,
    RegistryError,
    acting_user,
    alias_of,
    aliases_of,
    mlflow_client,
    now,
    require_model,
)
from training.common.tracking import LINEAGE_DATA, LINEAGE_SPEC

log = logging.getLogger("recforge.registry")


def rollback(settings: RegistrySettings, name: str, user: str | None = None) -> dict[str, Any]:
    """Make the `previous` version the champion again; the replaced champion becomes `previous`."""
    client = mlflow_client(settings)
    require_model(client, name)
    previous = alias_of(client, name, PREVIOUS)
    if previous is None:
        raise RegistryError(f"{name} has no 'previous' version to roll back to (aliases: "
                            f"{aliases_of(client, name) or 'none'}); a version becomes 'previous' when another is "
                            f"promoted over it: promote a version explicitly with `recforge promote`")
    champion = alias_of(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, str(previous))
    if champion is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(champion))
    else:
        client.delete_registered_model_alias(name, PREVIOUS)
    when, _ = now()
    who = acting_user(user)
    for k, v in {"recforge.rollback.at": when, "recforge.rollback.user": who,
                 "recforge.rollback.replaced": str(champion) if champion is not None else "none"}.items():
        client.set_model_version_tag(name, str(previous), k, v)
    log.info("rolled back %s: champion v%s (was v%s)", name, previous, champion)
    return {"model": name, "champion": previous, "replaced": champion, "user": who,
            "aliases": aliases_of(client, name)}


def list_models(settings: RegistrySettings) -> dict[str, Any]:
    """Every registered model with its aliases and versions (run, aliases, test metrics, gate figures, decision)."""
    client = mlflow_client(settings)
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
    return {"tracking_uri": settings.tracking_uri, "models": models}
