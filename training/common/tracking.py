"""MLflow tracking: where runs go, data lineage, and the run of a training job from open to finished.

Default store: a SQLite file `<output_dir>/mlflow.db` (artifacts under `<output_dir>/mlartifacts`);
`--tracking-uri` or `<stage>.tracking.uri` points at a server. `open_run` creates the job's run (or reopens it when
a job resumes) before training, so per-epoch metrics can go into it while training runs (Lightning's MLFlowLogger
attached to the same run id, or `log_epochs` for the hand-written loops); `training.common.run.finish` logs the rest
once and marks the run FINISHED; a job that raises marks it FAILED (`failed_run`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.layout import RunLayout, StageLayout
from feature_store.secrets import redact_doc, redact_url
from training.common.config import TrackingConfig

LINEAGE_DATA = "recforge.data_hash"
LINEAGE_SPEC = "recforge.spec_fingerprint"


def default_tracking_uri(output_dir: str | Path) -> str:
    return f"sqlite:///{RunLayout(Path(output_dir)).mlflow_db}"


def tracking_client(tracking_uri: str, *, registry: bool = False) -> Any:
    """An MLflow client on `tracking_uri` (and on its model registry, which the same store holds, when `registry`);
    a SQLite store that does not exist yet is seeded first (`seed_sqlite_store`)."""
    import mlflow

    seed_sqlite_store(tracking_uri)
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri if registry else None)


def sqlite_file(tracking_uri: str) -> Path | None:
    """The file of a SQLite tracking URI (`sqlite:///relative/path`, `sqlite:////absolute/path`); None for other
    stores and for an in-memory database."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(tracking_uri)
    except Exception:
        return None
    if url.drivername != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def seed_sqlite_store(tracking_uri: str) -> None:
    """A new SQLite tracking file starts as a copy of an empty MLflow database already migrated to this MLflow's
    schema, made once per MLflow version under the user's cache folder (`$XDG_CACHE_HOME/recforge`, default
    `~/.cache/recforge`). MLflow creates a new database by running every schema migration since its first release:
    1.7 s measured on 2 cores, paid by the first command in every new output folder; the copy takes milliseconds
    and gives the same tables and schema revision (MLflow adds its default experiment when it opens the file, as it
    does after migrating). Anything else (an existing file, a server, another database, no template) is left to
    MLflow."""
    path = sqlite_file(tracking_uri)
    if path is None or "?" in tracking_uri or path.exists():
        return
    template = _sqlite_template()
    if template is None:
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.seed")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, partial)
        os.link(partial, path)  # never replaces a store another process created meanwhile
    except OSError:
        pass  # MLflow creates the store itself and says what is wrong with the path, if anything
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)


def _sqlite_template() -> Path | None:
    """The cached empty, migrated MLflow SQLite database of this MLflow version (made on first use); None when it
    cannot be made (then MLflow migrates each new store itself, as without it)."""
    import mlflow

    try:  # no home folder (Path.home raises) or an unreadable cache: no template
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recforge"
        template = cache / f"mlflow-{mlflow.__version__}-empty.db"
        if template.is_file():
            if _schema_revision(template) is not None:
                return template
            template.unlink()  # damaged: made again below
    except (OSError, RuntimeError):
        return None
    partial = template.with_name(f".{template.name}.{os.getpid()}.partial")
    try:
        from mlflow.store.db.utils import _initialize_tables
        from sqlalchemy import create_engine

        cache.mkdir(parents=True, exist_ok=True)
        engine = create_engine(f"sqlite:///{partial}")
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(partial, template)
    except Exception:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        return None
    return template


def _schema_revision(db: Path) -> str | None:
    """The MLflow schema revision a SQLite file records; None for a file that is not such a database."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            row = con.execute("select version_num from alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def ensure_experiment(tracking_uri: str, name: str, output_dir: str | Path) -> str:
    """The experiment id for `name`, created with artifacts next to the outputs when new."""
    client = tracking_client(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=RunLayout(Path(output_dir)).mlartifacts.as_uri())


def hash_prepared(prepared_dir: str | Path) -> str:
    """sha256 over every prepared shard (name + bytes) of train/valid/test: the data lineage of a run."""
    h = hashlib.sha256()
    root = Path(prepared_dir)
    for split in ("train", "valid", "test"):
        for f in sorted((root / split).glob("*.parquet")):
            h.update(f"{split}/{f.name}".encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested mapping as MLflow params: dotted keys, lists as JSON, everything else as str."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | tuple) else str(v)
    return out


@dataclass(frozen=True)
class TrackedRun:
    """The MLflow run a job logs into."""

    tracking_uri: str
    experiment: str
    run_id: str

    def as_dict(self) -> dict[str, str]:
        """What results and reports show: the URI without its credentials (feature_store.secrets)."""
        return {"tracking_uri": redact_url(self.tracking_uri) or "", "experiment": self.experiment,
                "run_id": self.run_id}

    def client(self) -> Any:
        return tracking_client(self.tracking_uri)


def open_run(tracking: TrackingConfig, *, output_dir: str | Path, scenario: str, stage: StageLayout, run_name: str,
             uri: str | None = None, resuming: bool = False, tags: Mapping[str, str] | None = None) -> TrackedRun:
    """The MLflow run of this job: reopened when `resuming` and the stage folder recorded one (also when the job
    was killed before its first checkpoint), created otherwise.

    `uri` (the CLI's --tracking-uri) wins over `tracking.uri`, which wins over the default store. The run id is kept
    in the stage folder so that a resumed job continues the same run. The run is tagged with the process that runs
    it (host, pid, the pid's start time), and runs of the experiment left RUNNING by a process that is gone are
    marked KILLED first (`mark_dead_runs`)."""
    uri = uri or tracking.uri or default_tracking_uri(output_dir)
    experiment = tracking.experiment or scenario
    experiment_id = ensure_experiment(uri, experiment, output_dir)
    client = tracking_client(uri)
    mark_dead_runs(client, [experiment_id])
    stage.root.mkdir(parents=True, exist_ok=True)
    run_id = stage.run_id_file.read_text().strip() if resuming and stage.run_id_file.is_file() else None
    if run_id is not None and _run_exists(client, run_id):
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "recforge.resumed", str(int(client.get_run(run_id).data.tags.get(
            "recforge.resumed", "0")) + 1))
        for key, value in {**dict(tags or {}), **process_tags()}.items():
            client.set_tag(run_id, key, value)
    else:
        run_id = client.create_run(experiment_id, run_name=run_name,
                                   tags={**dict(tags or {}), **process_tags()}).info.run_id
    stage.run_id_file.write_text(run_id)
    return TrackedRun(uri, experiment, run_id)


# ------------------------------------------------------------------------------------------------ dead runs
TAG_HOST, TAG_PID, TAG_PID_STARTED = "recforge.host", "recforge.pid", "recforge.pid_started"
TAG_KILLED = "recforge.killed"


def process_tags() -> dict[str, str]:
    """Who runs a job: this host, this pid and when the pid started (so a reused pid is not taken for it)."""
    import psutil

    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()),
            TAG_PID_STARTED: f"{psutil.Process().create_time():.3f}"}


def _run_exists(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def run_process_state(tags: Mapping[str, str]) -> str:
    """Whether the process a RUNNING run names still runs it: "alive", "gone" (same host, no such process, or the
    pid now belongs to a process started at another time), or "unknown" (another host, or a run not tagged)."""
    import psutil

    if tags.get(TAG_HOST) != socket.gethostname() or TAG_PID not in tags:
        return "unknown"
    try:
        started = psutil.Process(int(tags[TAG_PID])).create_time()
    except (psutil.NoSuchProcess, ValueError):
        return "gone"
    recorded = tags.get(TAG_PID_STARTED)
    return "alive" if recorded is None or abs(started - float(recorded)) < 0.01 else "gone"


def mark_dead_runs(client: Any, experiment_ids: list[str]) -> list[str]:
    """Mark KILLED every RUNNING run of `experiment_ids` whose process is gone (`run_process_state`), with a tag
    saying so: a job killed with SIGKILL (or by the OOM killer, or a power cut) cannot mark its own run. Returns
    the run ids marked."""
    marked = []
    for run in client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if run_process_state(tags) != "gone":
            continue
        found = time.strftime("%Y-%m-%d %H:%M:%S")
        client.set_tag(run.info.run_id, TAG_KILLED, f"process {tags.get(TAG_PID)} on {tags.get(TAG_HOST)} ended "
                                                    f"without finishing the run (found {found})")
        client.set_terminated(run.info.run_id, status="KILLED")
        marked.append(run.info.run_id)
    return marked


def list_runs(tracking_uri: str, experiments: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The runs of `experiments` (newest first), after marking dead ones KILLED: id, name, status, start, seconds,
    and a note on the process (killed, running elsewhere); and the ids this call marked KILLED."""
    client = tracking_client(tracking_uri)
    ids = [e.experiment_id for e in (client.get_experiment_by_name(n) for n in dict.fromkeys(experiments))
           if e is not None]
    if not ids:
        return [], []
    killed = mark_dead_runs(client, ids)
    out = []
    for run in client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=1000):
        info, tags = run.info, run.data.tags
        end = info.end_time or int(time.time() * 1000)
        note = tags.get(TAG_KILLED, "") if info.status == "KILLED" else ""
        if info.status == "RUNNING":
            state = run_process_state(tags)
            note = {"alive": f"pid {tags.get(TAG_PID)} running", "unknown": f"on host {tags.get(TAG_HOST, '?')}: "
                    "cannot tell whether it still runs"}.get(state, note)
        if tags.get("recforge.resumed"):
            note = (note + "; " if note else "") + f"resumed {tags['recforge.resumed']}x"
        out.append({"run_id": info.run_id, "name": info.run_name, "experiment": client.get_experiment(
                        info.experiment_id).name, "status": info.status,
                    "start": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.start_time / 1000)),
                    "seconds": round((end - info.start_time) / 1000, 1), "note": note})
    return out, killed


def mlflow_metric_name(name: str) -> str:
    """`name` in the characters MLflow allows (letters, digits, `_ / . -` and space): `valid/recall@50` ->
    `valid/recall50`, the name Lightning's MLflow logger stored before (so runs stay comparable), without its
    warning on every epoch."""
    return re.sub(r"[^a-zA-Z0-9_/. -]+", "", name)


def lightning_logger(run: TrackedRun) -> Any:
    """Lightning's `MLFlowLogger` attached to `run`, with metric names made valid for MLflow before they reach it."""
    from pytorch_lightning.loggers import MLFlowLogger

    class _Logger(MLFlowLogger):
        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            super().log_metrics({mlflow_metric_name(k): v for k, v in metrics.items()}, step)

    return _Logger(experiment_name=run.experiment, tracking_uri=run.tracking_uri, run_id=run.run_id,
                   log_model=False)


@contextmanager
def failed_run(run: TrackedRun) -> Iterator[None]:
    """Marks the run FAILED when the block raises (also on Ctrl-C), so no run of a dead job stays RUNNING."""
    try:
        yield
    except BaseException:
        run.client().set_terminated(run.run_id, status="FAILED")
        raise


def log_epochs(run: TrackedRun, rows: list[dict[str, float]]) -> None:
    """Per-epoch metrics (step = global step at the end of the epoch, as Lightning's MLFlowLogger does)."""
    import mlflow

    stamp = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric(mlflow_metric_name(k), float(v), stamp, int(row.get("step", i)))
               for i, row in enumerate(rows) for k, v in row.items()
               if k not in ("epoch", "step") and np.isfinite(v)]
    client = run.client()
    for i in range(0, len(metrics), 500):
        client.log_batch(run.run_id, metrics=metrics[i: i + 500])


def log_params(run: TrackedRun, config: Mapping[str, Any]) -> None:
    """The resolved config as flattened params (skipping the ones a resumed run already has). `config` is a JSON
    dump (secret fields already redacted by their types); known secret values are masked again here, for a
    caller that passed a plain mapping."""
    import mlflow

    client = run.client()
    existing = set(client.get_run(run.run_id).data.params)
    batch = [mlflow.entities.Param(k[:250], v[:6000]) for k, v in flatten(redact_doc(config)).items()
             if k[:250] not in existing]
    for i in range(0, len(batch), 100):
        client.log_batch(run.run_id, params=batch[i: i + 100])
