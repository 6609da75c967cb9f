"""A served model's lifecycle: which registered version a deployment serves (`ModelSource`: an alias, or a
pinned version for an experiment's arm), and `ModelSlot`, which loads it and swaps versions atomically.

Lifecycle (`ModelSlot`): a model deployment serves `models:/<name>@<alias>` of the MLflow registry. At start it
resolves the alias, downloads that version's artifacts (a ranker bundle or a retrieval bundle) and loads them; a
background thread then checks the alias every `poll_seconds` and, when it points at another version, loads that
version next to the serving one and swaps one reference: a request reads the reference once, so it is answered
entirely by the old or entirely by the new version and none is dropped. A version that fails to load (missing
files, wrong format, a broken state dict) leaves the old version serving; the error is kept for `/models` and
that version is not retried until the alias moves again or an admin reload forces it. A pinned slot serves one
version and never moves (`recforge experiment start` loads each arm's versions through it before any traffic).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("recforge.serving")


@dataclass(frozen=True)
class ModelSource:
    """Which registered model a deployment serves and how often it checks the alias."""

    role: str  # "ranker" | "retriever"
    name: str
    alias: str
    tracking_uri: str
    poll_seconds: float
    version: str | None = None  # a pinned version (an experiment's arm) instead of the alias


@dataclass(frozen=True)
class ModelRef:
    """The registry version that answered a request."""

    name: str
    version: str
    alias: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "alias": self.alias}


@dataclass(frozen=True)
class Loaded:
    """A loaded model version: `model` is a `Ranker` or a `Retriever`."""

    ref: ModelRef
    run_id: str | None
    model: Any
    loaded_at: float
    path: Path


def iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class ModelSlot:
    """The version a deployment serves, swapped atomically when the alias moves (see the module docstring).

    Args:
        source: registered model, alias, tracking URI and poll interval.
        loader: bundle directory -> loaded model (raises when the directory is not a usable bundle).
    """

    def __init__(self, source: ModelSource, loader: Callable[[Path], Any]) -> None:
        self.source = source
        self.loader = loader
        self._current: Loaded | None = None
        self._lock = threading.Lock()  # one check at a time (poll thread and admin reload)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_version: str | None = None
        self.last_error: dict[str, Any] | None = None
        self.last_check: float | None = None
        self.swaps = 0
        self._dir = Path(tempfile.mkdtemp(prefix=f"recforge-{source.role}-"))
        self._client: Any = None

    @property
    def uri(self) -> str:
        s = self.source
        return f"models:/{s.name}/{s.version}" if s.version is not None else f"models:/{s.name}@{s.alias}"

    def current(self) -> Loaded | None:
        """The serving version (read once per request: one reference, so a swap never splits a request)."""
        return self._current

    def _registry(self) -> Any:
        if self._client is None:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            from training.common.tracking import tracking_client

            self._client = tracking_client(self.source.tracking_uri, registry=True)
        return self._client

    def check(self, force: bool = False) -> bool:
        """Resolve the alias and load its version when it differs from the serving one; True when swapped.
        Never raises: a failure is recorded in `last_error` and the serving version stays."""
        with self._lock:
            self.last_check = time.time()
            version = None
            try:
                if self.source.version is not None:
                    mv = self._registry().get_model_version(self.source.name, self.source.version)
                else:
                    mv = self._registry().get_model_version_by_alias(self.source.name, self.source.alias)
                version = str(mv.version)
                current = self._current
                if current is not None and current.ref.version == version and not force:
                    self.last_error = None
                    return False
                if version == self._failed_version and not force:
                    return False
                loaded = self._load(version, mv.run_id)
            except Exception as exc:
                self._failed_version = version
                self.last_error = {"version": version, "error": f"{type(exc).__name__}: {exc}",
                                   "at": iso(time.time())}
                log.warning("%s: version %s not loaded, %s keeps serving: %s", self.uri, version,
                            self._current.ref.version if self._current else "nothing", exc)
                return False
            old, self._current = self._current, loaded  # the swap: one reference assignment
            self._failed_version, self.last_error = None, None
            self.swaps += 1
            if old is not None and old.path != loaded.path:
                shutil.rmtree(old.path.parent, ignore_errors=True)
            log.info("%s: now serving version %s", self.uri, version)
            return True

    def _load(self, version: str, run_id: str | None) -> Loaded:
        import mlflow

        client = self._registry()
        dst = Path(tempfile.mkdtemp(prefix=f"v{version}-", dir=self._dir))
        try:
            uri = client.get_model_version_download_uri(self.source.name, version)
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst),
                                                            tracking_uri=self.source.tracking_uri))
            model = self.loader(path)
        except BaseException:
            shutil.rmtree(dst, ignore_errors=True)
            raise
        ref = ModelRef(self.source.name, version, self.source.alias if self.source.version is None else "")
        return Loaded(ref=ref, run_id=run_id, model=model, loaded_at=time.time(), path=path)

    def start(self) -> None:
        """First check now (so a replica starts serving), then poll in a daemon thread."""
        self.check()
        self._thread = threading.Thread(target=self._poll, name=f"poll-{self.source.role}", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.source.poll_seconds):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        shutil.rmtree(self._dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        """What `/models` shows: serving version, since when, last check and the last load error."""
        cur = self._current
        return {
            "model": self.uri,
            "name": self.source.name,
            "alias": self.source.alias,
            "version": cur.ref.version if cur else None,
            "run_id": cur.run_id if cur else None,
            "loaded_at": iso(cur.loaded_at) if cur else None,
            "last_check": iso(self.last_check),
            "poll_seconds": self.source.poll_seconds,
            "swaps": self.swaps,
            "last_error": self.last_error,
            "replica_pid": os.getpid(),
        }

    def unavailable(self) -> str:
        why = self.last_error["error"] if self.last_error else "not loaded yet"
        return f"{self.source.role} {self.uri}: no version loaded ({why})"


def load_ranker(device: str, choose_graph: bool = False) -> Callable[[Path], Any]:
    """The loader of ranker bundles (embeddings fused for serving) on `device`; `choose_graph`: also choose the
    inference graph for this machine (`serving.inference.RankerGraph`, kept as the ranker's `inference`), at
    load time rather than on the first request."""
    def load(path: Path) -> Any:
        from training.ranking.bundle import load_bundle

        ranker = load_bundle(path, fused=True)  # same outputs; no KeyedJaggedTensor per request
        ranker.model.to(device)
        if choose_graph:
            from serving.inference import RankerGraph

            ranker.inference = RankerGraph(ranker.model, ranker.layout, device)
        return ranker

    return load


def load_retriever(path: Path) -> Any:
    """A retrieval bundle (towers, index, popularity list)."""
    from training.retrieval.bundle import load_retriever as load

    return load(path)
