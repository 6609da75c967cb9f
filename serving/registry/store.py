"""Access to the MLflow tracking store that holds the registry: the client, finding runs, versions and aliases,
downloading artifacts, and the names (aliases, tags, artifact paths) every registry module agrees on.

Why one module: every registry step reads the same store through the same conventions, and the error messages
that tell a user what to do when a run or version is missing should read the same from every command.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.registry.settings import Kind, RegistrySettings

if TYPE_CHECKING:
    import mlflow

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
ARTIFACT: dict[str, str] = {"ranker": "ranker", "retriever": "retrieval_bundle"}
# a file every bundle of that kind holds (a run without it cannot become a version of that kind)
MARKER: dict[str, str] = {"ranker": "bundle.json", "retriever": "two_tower.pt"}
PRODUCER: dict[str, str] = {"ranker": "`recforge train ctr`", "retriever": "`recforge train retrieval`"}
TAG_KIND, TAG_RUN = "recforge.kind", "recforge.run_id"
TAG_DECISION = "recforge.decision"
TAG_REVIEW = "recforge.review.uri"


class RegistryError(ValueError):
    """A registry request that cannot be served (no such run/version, nothing to roll back to, ...); the message
    says what to do."""


def mlflow_client(settings: RegistrySettings) -> mlflow.MlflowClient:
    """An MLflow client on the scenario's tracking store, which also holds the registry."""
    from training.common.tracking import tracking_client

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return tracking_client(settings.tracking_uri, registry=True)


def os_user() -> str:
    """The login name of the account this process runs as (from the OS, not from anything the caller sets)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (some containers): record the uid itself
        return f"uid {os.geteuid()}"


def acting_user(claim: str | None) -> str:
    """Who acts, as decisions record it: the OS account running the command; a name the caller gives (`--user`,
    else $RECFORGE_USER) is shown beside it as a claim only, since anyone can set it: `alice (claims ci-bot)`."""
    who = os_user()
    claim = (claim or os.environ.get("RECFORGE_USER") or "").strip()
    return f"{who} (claims {claim})" if claim and claim != who else who


def now() -> tuple[str, str]:
    """(ISO time for people, a sortable file-name-safe stamp)."""
    t = dt.datetime.now(dt.UTC)
    return t.isoformat(timespec="seconds"), t.strftime("%Y%m%d-%H%M%S-%f")


def has_bundle(client: mlflow.MlflowClient, run_id: str, kind: Kind) -> bool:
    """Whether the run logged a `kind` bundle (its marker file), i.e. it can become a version of that kind."""
    return any(Path(a.path).name == MARKER[kind] for a in client.list_artifacts(run_id, ARTIFACT[kind]))


def find_run(settings: RegistrySettings, kind: Kind, run_id: str | None = None) -> Any:
    """The run to register: `run_id`, else the scenario's latest FINISHED run that holds a `kind` bundle."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    producer = PRODUCER[kind]
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise RegistryError(f"run {run_id}: not found in {settings.tracking_uri}; check --run-id (the MLflow run "
                                f"id {producer} printed) and --tracking-uri") from None
        if run.info.status != "FINISHED":
            raise RegistryError(f"run {run_id} is {run.info.status}; only finished runs can be registered")
        if not has_bundle(client, run_id, kind):
            raise RegistryError(f"run {run_id} holds no {kind} bundle (artifact '{ARTIFACT[kind]}/{MARKER[kind]}'); "
                                f"it is not a {producer} run, or it ran with train.tracking.log_model=false")
        return run
    names = settings.experiments(kind)
    ids = [e.experiment_id for n in names if (e := client.get_experiment_by_name(n)) is not None]
    if ids:
        runs = client.search_runs(ids, "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                                  max_results=200)
        for run in runs:
            if has_bundle(client, run.info.run_id, kind):
                return run
    raise RegistryError(f"no finished {kind} run of scenario '{settings.name}' in {settings.tracking_uri} "
                        f"(experiments {names}); run {producer} --config ... first, or pass --run-id")


def download(client: mlflow.MlflowClient, run_id: str, path: str, dst: Path) -> Path:
    """Download a run artifact under `dst`; an unreadable one is a RegistryError naming the run and path."""
    from mlflow.exceptions import MlflowException

    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run_id, path, str(dst)))
    except (OSError, MlflowException) as exc:
        raise RegistryError(f"run {run_id}: cannot read artifact '{path}' ({exc}); the run's artifacts are "
                            f"incomplete, register another run") from None


# ------------------------------------------------------------------------------------------------ versions/aliases
def get_version(client: mlflow.MlflowClient, name: str, version: int | str) -> Any:
    """The model version, or a RegistryError that lists the versions there are."""
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


def require_model(client: mlflow.MlflowClient, name: str) -> None:
    """Fail with a pointer to `recforge registry list` when no model `name` is registered."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model '{name}'; `recforge registry list` shows the models") from None


def alias_of(client: mlflow.MlflowClient, name: str, alias: str) -> int | None:
    """The version `alias` points at, None when unset."""
    aliases = client.get_registered_model(name).aliases
    return int(aliases[alias]) if alias in aliases else None


def aliases_of(client: mlflow.MlflowClient, name: str) -> dict[str, int]:
    """Every alias of model `name` and its version."""
    return {a: int(v) for a, v in client.get_registered_model(name).aliases.items()}


def kind_of(mv: Any) -> Kind:
    """A version's kind: its tag, else guessed from its source path (versions created outside `register_*`)."""
    kind = mv.tags.get(TAG_KIND)
    if kind in ARTIFACT:
        return kind  # type: ignore[return-value]
    return "retriever" if str(mv.source).rstrip("/").endswith(ARTIFACT["retriever"]) else "ranker"


def artifact_path(mv: Any) -> str:
    """The run-relative artifact path of a version's source (`runs:/<id>/<path>`)."""
    source = str(mv.source)
    prefix = f"runs:/{mv.run_id}/"
    return source[len(prefix):] if source.startswith(prefix) else ARTIFACT[kind_of(mv)]
