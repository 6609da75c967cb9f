"""The experiments' state: which ran or run, with which pinned versions, since when, their allocation over time and
why they stopped. One SQLite file (`experiments.store_path`, default `<output_dir>/experiments.db`) written by the
commands (`recforge experiment start | stop`) and the experiment monitor (Thompson updates, guardrail stops), read
by every serving replica every `experiments.poll_s` (one indexed query, well under a millisecond).

WAL mode: readers never wait for the writer, and a replica reading while a command writes sees the state before
or after that write, never half of it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.config import ExperimentConfig, ExperimentsConfig

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    definition TEXT NOT NULL,
    arms TEXT NOT NULL,
    planned_users_per_arm INTEGER NOT NULL,
    started_at REAL NOT NULL,
    stopped_at REAL,
    stop_reason TEXT
);
CREATE TABLE IF NOT EXISTS allocations (
    name TEXT NOT NULL,
    at REAL NOT NULL,
    shares TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS allocations_by_name ON allocations (name, at);
"""


class ExperimentStateError(ValueError):
    """A command that the experiments' state refuses (unknown, already running, already stopped)."""


@dataclass(frozen=True)
class ArmVersions:
    """What one arm serves, pinned at start: registry versions per role ("7"), or the popular policy."""

    name: str
    policy: str
    ranker: str | None
    retriever: str | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "policy": self.policy, "ranker": self.ranker, "retriever": self.retriever}


@dataclass(frozen=True)
class Allocation:
    at: float
    shares: tuple[float, ...]
    reason: str


@dataclass(frozen=True)
class ExperimentState:
    """One experiment as the store holds it."""

    name: str
    status: str  # "running" | "stopped"
    definition: ExperimentConfig
    arms: tuple[ArmVersions, ...]
    planned_users_per_arm: int
    started_at: float
    stopped_at: float | None
    stop_reason: str | None
    allocations: tuple[Allocation, ...] = field(default=())

    @property
    def shares(self) -> tuple[float, ...]:
        return self.allocations[-1].shares if self.allocations else tuple(self.definition.initial_shares())

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.arms]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "arms": [a.to_json() for a in self.arms],
                "shares": dict(zip(self.arm_names, self.shares)), "control": self.definition.control_arm,
                "primary": self.definition.primary, "allocation": self.definition.allocation.type,
                "traffic": self.definition.traffic.model_dump(),
                "planned_users_per_arm": self.planned_users_per_arm, "started_at": _iso(self.started_at),
                "stopped_at": _iso(self.stopped_at), "stop_reason": self.stop_reason}


def experiment_store_path(output_dir: Path | str, cfg: ExperimentsConfig) -> Path:
    """`experiments.store_path`, else `<output_dir>/experiments.db`."""
    return Path(cfg.store_path) if cfg.store_path else Path(output_dir) / "experiments.db"


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class ExperimentStore:
    """The state file. Each method is one short transaction; connections are per call (cheap for SQLite, and
    safe from any thread)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
            yield con
        finally:
            con.close()

    def start(self, definition: ExperimentConfig, name: str, arms: list[ArmVersions], planned: int,
              *, now: float | None = None) -> ExperimentState:
        """Record `name` as running, refusing a name already used and a traffic slice that overlaps a running
        experiment's (the same users would be in both)."""
        now = time.time() if now is None else now
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                self._refuse(con, definition, name)
                con.execute("INSERT INTO experiments VALUES (?, 'running', ?, ?, ?, ?, NULL, NULL)",
                            (name, definition.model_dump_json(), json.dumps([a.to_json() for a in arms]), planned, now))
                con.execute("INSERT INTO allocations VALUES (?, ?, ?, ?)",
                            (name, now, json.dumps(definition.initial_shares()), "start"))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return self.get(name)

    def check_startable(self, definition: ExperimentConfig, name: str) -> None:
        """Raise what `start` would refuse (a used name, an overlapping slice) without writing anything."""
        with self._db() as con:
            self._refuse(con, definition, name)

    def _refuse(self, con: sqlite3.Connection, definition: ExperimentConfig, name: str) -> None:
        row = con.execute("SELECT status, started_at FROM experiments WHERE name = ?", (name,)).fetchone()
        if row is not None:
            raise ExperimentStateError(
                f"experiment '{name}' already {'runs' if row[0] == 'running' else 'ran'} (started {_iso(row[1])}); "
                f"its events are logged under that name, so a new run needs another name (copy the definition "
                f"under a new key of experiments.definitions)")
        t = definition.traffic
        for other in self._running(con):
            o = other.definition.traffic
            if t.offset < o.offset + o.share and o.offset < t.offset + t.share:
                raise ExperimentStateError(
                    f"experiment '{name}' takes users [{t.offset:g}, {t.offset + t.share:g}) but running experiment "
                    f"'{other.name}' takes [{o.offset:g}, {o.offset + o.share:g}): the same users would be in both. "
                    f"Stop '{other.name}' first or give the two experiments disjoint `traffic` slices")

    def stop(self, name: str, reason: str, *, now: float | None = None) -> ExperimentState:
        now = time.time() if now is None else now
        with self._db() as con:
            cur = con.execute("UPDATE experiments SET status = 'stopped', stopped_at = ?, stop_reason = ? "
                              "WHERE name = ? AND status = 'running'", (now, reason, name))
            if cur.rowcount == 0:
                state = self.get(name)  # raises for an unknown name
                raise ExperimentStateError(f"experiment '{name}' is already stopped (since {_iso(state.stopped_at)}: "
                                           f"{state.stop_reason})")
        return self.get(name)

    def allocate(self, name: str, shares: list[float], reason: str, *, now: float | None = None) -> None:
        """A new allocation for a running experiment (Thompson update, guardrail stop)."""
        with self._db() as con:
            con.execute("INSERT INTO allocations SELECT ?, ?, ?, ? WHERE EXISTS "
                        "(SELECT 1 FROM experiments WHERE name = ? AND status = 'running')",
                        (name, time.time() if now is None else now, json.dumps(shares), reason, name))

    def get(self, name: str) -> ExperimentState:
        with self._db() as con:
            rows = self._states(con, "WHERE name = ?", (name,))
        if not rows:
            known = ", ".join(s.name for s in self.all()) or "none yet"
            raise ExperimentStateError(f"no experiment '{name}' was started (started: {known}); start it with "
                                       f"`recforge experiment start {name}`")
        return rows[0]

    def all(self) -> list[ExperimentState]:
        if not self.path.exists():
            return []
        with self._db() as con:
            return self._states(con, "", ())

    def running(self) -> list[ExperimentState]:
        if not self.path.exists():
            return []
        with self._db() as con:
            return self._running(con)

    def _running(self, con: sqlite3.Connection) -> list[ExperimentState]:
        return self._states(con, "WHERE status = 'running'", ())

    @staticmethod
    def _states(con: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[ExperimentState]:
        out = []
        for name, status, definition, arms, planned, started, stopped, reason in con.execute(
                f"SELECT * FROM experiments {where} ORDER BY started_at", args).fetchall():
            allocs = tuple(Allocation(at, tuple(json.loads(sh)), why) for at, sh, why in con.execute(
                "SELECT at, shares, reason FROM allocations WHERE name = ? ORDER BY at, rowid", (name,)))
            out.append(ExperimentState(name, status, ExperimentConfig.model_validate_json(definition),
                                       tuple(ArmVersions(**a) for a in json.loads(arms)), int(planned), started,
                                       stopped, reason, allocs))
        return out
