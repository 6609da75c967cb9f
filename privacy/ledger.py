"""The persistent privacy-budget ledger: one SQLite file per scenario, one budget per data set name.

Composition. The ledger uses basic sequential composition: a data set's spent epsilon is the sum of the epsilons
of every query answered on it, and its spent delta the sum of the deltas. That is loose for many Gaussian
queries (advanced or zCDP composition would charge less) but holds for any mix of mechanisms and needs no
knowledge of what each query did, which is what a ledger shared by every release path can rely on.

Exact arithmetic. Epsilons and deltas are kept as exact rationals: a float is read through its shortest decimal
string (`Fraction(repr(0.1)) == Fraction(1, 10)`) and stored as "num/den" text. With floats, ten spends of 0.1
sum to 0.9999999999999999 and an eleventh 0.1 would be refused for the wrong reason, or a budget would let
through a query it should refuse when the drift goes the other way; with rationals ten spends of 0.1 exhaust a
budget of 1.0 exactly and the eleventh is refused.

Atomicity. `spend` reads the remaining budget and records the spend in one `BEGIN IMMEDIATE` transaction: SQLite
takes the write lock before the read, so two processes racing for the last share are serialised and exactly one
wins; the other sees the updated total and is refused with `BudgetExceeded`, with nothing written. The file is
in WAL mode (readers never block the writer) with a 30 s busy timeout, created with mode 0600 in a directory
created 0700: the ledger says which data sets were queried, how, and by whom.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from privacy.errors import BudgetExceeded, PrivacyError

BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    dataset TEXT PRIMARY KEY,
    epsilon_total TEXT NOT NULL,
    delta_total TEXT NOT NULL,
    epsilon_spent TEXT NOT NULL,
    delta_spent TEXT NOT NULL,
    queries INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS spends (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL REFERENCES budgets(dataset),
    epsilon TEXT NOT NULL,
    delta TEXT NOT NULL,
    query TEXT NOT NULL,
    who TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS spends_dataset ON spends(dataset, id);
"""


@dataclass(frozen=True)
class Budget:
    """A data set's budget; every figure is exact (Fraction; `float(...)` for display)."""

    dataset: str
    epsilon_total: Fraction
    delta_total: Fraction
    epsilon_spent: Fraction
    delta_spent: Fraction
    queries: int

    @property
    def epsilon_remaining(self) -> Fraction:
        return self.epsilon_total - self.epsilon_spent

    @property
    def delta_remaining(self) -> Fraction:
        return self.delta_total - self.delta_spent


@dataclass(frozen=True)
class Spend:
    """One recorded spend."""

    id: int
    dataset: str
    epsilon: Fraction
    delta: Fraction
    query: str
    who: str
    at: float


def exact(value: float | int | str | Fraction, field: str) -> Fraction:
    """The exact rational a user meant by `value`: a float through its shortest decimal string (0.1 -> 1/10)."""
    if isinstance(value, bool):
        raise PrivacyError(f"{field} must be a number; got {value!r}")
    if isinstance(value, Fraction):
        result = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PrivacyError(f"{field} must be finite; got {value!r}")
        result = Fraction(repr(value))
    elif isinstance(value, int | str):
        try:
            result = Fraction(value)
        except (ValueError, ZeroDivisionError) as exc:
            raise PrivacyError(f"{field} must be a number; got {value!r}") from exc
    else:
        raise PrivacyError(f"{field} must be a number; got {value!r}")
    if result < 0:
        raise PrivacyError(f"{field} must be >= 0; got {value!r}")
    return result


def _text(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}"


def _parse(text: str) -> Fraction:
    return Fraction(text)


class Ledger:
    """The privacy-budget ledger stored at `path` (a SQLite file, created on first use)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, mode=0o700)
            os.chmod(self.path.parent, 0o700)  # mkdir's mode is filtered by the umask
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(self.path, 0o600)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    # ------------------------------------------------------------------------------------------- connections

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: transactions are opened explicitly (BEGIN IMMEDIATE), not by the sqlite3 module
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's write lock from its first statement (reads included)."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ------------------------------------------------------------------------------------------------ budgets

    def ensure_budget(self, dataset: str, epsilon: float, delta: float) -> Budget:
        """The data set's budget, created with this total the first time. A different total later is refused:
        changing a budget is a decision (`set_budget(..., replace=True)`), not a side effect of a config edit."""
        _check_name(dataset)
        eps, dlt = _total(epsilon, delta)
        with self._write() as conn:
            row = _budget_row(conn, dataset)
            if row is None:
                _insert_budget(conn, dataset, eps, dlt)
                row = _budget_row(conn, dataset)
            assert row is not None
            if (row.epsilon_total, row.delta_total) != (eps, dlt):
                raise PrivacyError(
                    f"data set '{dataset}' already has a privacy budget of epsilon {float(row.epsilon_total):g}, "
                    f"delta {float(row.delta_total):g} (spent epsilon {float(row.epsilon_spent):g}, delta "
                    f"{float(row.delta_spent):g}); asked for epsilon {float(eps):g}, delta {float(dlt):g}. "
                    f"Keep the recorded total, or change it deliberately with "
                    f"set_budget('{dataset}', epsilon, delta, replace=True)")
            return row

    def set_budget(self, dataset: str, epsilon: float, delta: float, replace: bool = False) -> Budget:
        """Create the data set's budget, or with `replace=True` change its total (spends are kept; a total below
        what is spent leaves nothing to spend)."""
        _check_name(dataset)
        eps, dlt = _total(epsilon, delta)
        with self._write() as conn:
            row = _budget_row(conn, dataset)
            if row is None:
                _insert_budget(conn, dataset, eps, dlt)
            elif not replace:
                raise PrivacyError(
                    f"data set '{dataset}' already has a privacy budget of epsilon {float(row.epsilon_total):g}, "
                    f"delta {float(row.delta_total):g}; pass replace=True to change it")
            else:
                conn.execute("UPDATE budgets SET epsilon_total = ?, delta_total = ?, updated_at = ? "
                             "WHERE dataset = ?", (_text(eps), _text(dlt), time.time(), dataset))
            row = _budget_row(conn, dataset)
            assert row is not None
            return row

    def budget(self, dataset: str) -> Budget:
        with self._connect() as conn:
            row = _budget_row(conn, dataset)
        if row is None:
            raise PrivacyError(f"data set '{dataset}' has no privacy budget in {self.path.name}; set one with "
                               f"ensure_budget('{dataset}', epsilon, delta)")
        return row

    def datasets(self) -> list[str]:
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT dataset FROM budgets ORDER BY dataset")]

    # ------------------------------------------------------------------------------------------------- spends

    def spend(self, dataset: str, epsilon: float, delta: float, query: str, who: str) -> Spend:
        """Record a spend if it fits what remains, atomically; otherwise raise BudgetExceeded and change nothing."""
        eps = exact(epsilon, "epsilon")
        dlt = exact(delta, "delta")
        if eps == 0 and dlt == 0:
            raise PrivacyError("a spend of epsilon 0 and delta 0 records nothing: releases without noise are not "
                               "differentially private and do not go through the ledger")
        with self._write() as conn:
            row = _budget_row(conn, dataset)
            if row is None:
                raise PrivacyError(f"data set '{dataset}' has no privacy budget; set one with "
                                   f"ensure_budget('{dataset}', epsilon, delta) before spending")
            if eps > row.epsilon_remaining or dlt > row.delta_remaining:
                raise BudgetExceeded(dataset, (eps, dlt), (row.epsilon_remaining, row.delta_remaining))
            at = time.time()
            cur = conn.execute("INSERT INTO spends (dataset, epsilon, delta, query, who, at) VALUES (?, ?, ?, ?, ?, ?)",
                               (dataset, _text(eps), _text(dlt), query, who, at))
            conn.execute("UPDATE budgets SET epsilon_spent = ?, delta_spent = ?, queries = queries + 1, "
                         "updated_at = ? WHERE dataset = ?",
                         (_text(row.epsilon_spent + eps), _text(row.delta_spent + dlt), at, dataset))
            spend_id = cur.lastrowid
            assert spend_id is not None
        return Spend(id=spend_id, dataset=dataset, epsilon=eps, delta=dlt, query=query, who=who, at=at)

    def history(self, dataset: str) -> list[Spend]:
        with self._connect() as conn:
            rows = conn.execute("SELECT id, dataset, epsilon, delta, query, who, at FROM spends WHERE dataset = ? "
                                "ORDER BY id", (dataset,)).fetchall()
        return [Spend(id=r[0], dataset=r[1], epsilon=_parse(r[2]), delta=_parse(r[3]), query=r[4], who=r[5], at=r[6])
                for r in rows]


def _check_name(dataset: str) -> None:
    if not isinstance(dataset, str) or not dataset.strip():
        raise PrivacyError(f"data set name must be a non-empty string; got {dataset!r}")


def _total(epsilon: float, delta: float) -> tuple[Fraction, Fraction]:
    eps = exact(epsilon, "epsilon")
    dlt = exact(delta, "delta")
    if eps <= 0:
        raise PrivacyError(f"a budget's epsilon must be > 0; got {epsilon!r}")
    if dlt >= 1:
        raise PrivacyError(f"a budget's delta must be below 1 (typically 1e-6 or less); got {delta!r}")
    return eps, dlt


def _insert_budget(conn: sqlite3.Connection, dataset: str, eps: Fraction, dlt: Fraction) -> None:
    conn.execute("INSERT INTO budgets (dataset, epsilon_total, delta_total, epsilon_spent, delta_spent, queries, "
                 "updated_at) VALUES (?, ?, ?, '0/1', '0/1', 0, ?)", (dataset, _text(eps), _text(dlt), time.time()))


def _budget_row(conn: sqlite3.Connection, dataset: str) -> Budget | None:
    row = conn.execute("SELECT epsilon_total, delta_total, epsilon_spent, delta_spent, queries FROM budgets "
                       "WHERE dataset = ?", (dataset,)).fetchone()
    if row is None:
        return None
    return Budget(dataset=dataset, epsilon_total=_parse(row[0]), delta_total=_parse(row[1]),
                  epsilon_spent=_parse(row[2]), delta_spent=_parse(row[3]), queries=int(row[4]))
