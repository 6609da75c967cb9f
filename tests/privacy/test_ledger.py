"""Privacy-budget ledger: exact exhaustion (rationals, not floats), refusals that leave the ledger unchanged, one
winner when two processes race for the last share, persistence, file modes, and a changed total refused."""

from __future__ import annotations

import multiprocessing as mp
import stat
from fractions import Fraction
from pathlib import Path

import pytest

from privacy.errors import BudgetExceeded, PrivacyError
from privacy.ledger import Ledger


def test_ten_spends_of_a_tenth_exhaust_a_budget_of_one_exactly_and_the_eleventh_is_refused(tmp_path: Path) -> None:
    assert sum([0.1] * 10) != 1.0  # the float drift the ledger must not have
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.ensure_budget("orders", epsilon=1.0, delta=0.0)
    for i in range(10):
        ledger.spend("orders", 0.1, 0.0, query=f"q{i}", who="analyst")
    budget = ledger.budget("orders")
    assert budget.epsilon_spent == Fraction(1) and budget.epsilon_remaining == 0 and budget.queries == 10
    with pytest.raises(BudgetExceeded) as refused:
        ledger.spend("orders", 0.1, 0.0, query="q10", who="analyst")
    assert refused.value.dataset == "orders"
    assert refused.value.requested == (Fraction(1, 10), Fraction(0))
    assert refused.value.remaining == (Fraction(0), Fraction(0))
    assert "orders" in str(refused.value)
    after = ledger.budget("orders")
    assert after == budget
    assert len(ledger.history("orders")) == 10


def test_gaussian_deltas_are_summed_exactly_and_refused_past_the_total(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.ensure_budget("events", epsilon=10.0, delta=1e-5)
    for _ in range(10):
        ledger.spend("events", 0.5, 1e-6, query="gaussian count", who="job")
    budget = ledger.budget("events")
    assert budget.delta_spent == Fraction(1, 100_000) and budget.delta_remaining == 0
    assert budget.epsilon_remaining == Fraction(5)
    with pytest.raises(BudgetExceeded):
        ledger.spend("events", 0.5, 1e-7, query="one more", who="job")
    # epsilon alone still fits: pure-DP queries go on
    ledger.spend("events", 0.5, 0.0, query="laplace count", who="job")
    assert ledger.budget("events").queries == 11
    assert ledger.budget("events").delta_spent == Fraction(1, 100_000)


def _race(path: str, start: mp.synchronize.Event, results: mp.Queue) -> None:  # type: ignore[name-defined]
    ledger = Ledger(Path(path))
    start.wait()
    try:
        ledger.spend("orders", 0.6, 0.0, query="last share", who=mp.current_process().name)
        results.put("won")
    except BudgetExceeded:
        results.put("refused")


def test_two_processes_racing_for_the_last_share_exactly_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.ensure_budget("orders", epsilon=1.0, delta=0.0)
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(path), start, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    start.set()
    outcomes = sorted(results.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert outcomes == ["refused", "won"]
    budget = ledger.budget("orders")
    assert budget.epsilon_spent == Fraction(3, 5) and budget.queries == 1
    assert len(ledger.history("orders")) == 1


def test_budgets_and_history_persist_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "scenario" / "privacy" / "ledger.sqlite"
    first = Ledger(path)
    first.ensure_budget("orders", epsilon=2.0, delta=1e-6)
    first.spend("orders", 0.25, 1e-7, query="segment counts", who="alice")
    first.ensure_budget("visits", epsilon=1.0, delta=0.0)
    reopened = Ledger(path)
    assert reopened.datasets() == ["orders", "visits"]
    budget = reopened.budget("orders")
    assert (budget.epsilon_total, budget.epsilon_spent, budget.delta_spent) == (2, Fraction(1, 4), Fraction(1, 10**7))
    [spend] = reopened.history("orders")
    assert (spend.query, spend.who, spend.epsilon) == ("segment counts", "alice", Fraction(1, 4))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_changed_total_is_refused_without_replace_and_applied_with_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.ensure_budget("orders", epsilon=1.0, delta=0.0)
    ledger.ensure_budget("orders", epsilon=1.0, delta=0.0)  # the same total again is fine
    with pytest.raises(PrivacyError, match=r"'orders'.*epsilon 1.*replace=True"):
        ledger.ensure_budget("orders", epsilon=2.0, delta=0.0)
    assert ledger.budget("orders").epsilon_total == 1
    with pytest.raises(PrivacyError, match="replace=True"):
        ledger.set_budget("orders", epsilon=2.0, delta=0.0)
    ledger.spend("orders", 0.5, 0.0, query="q", who="w")
    changed = ledger.set_budget("orders", epsilon=2.0, delta=0.0, replace=True)
    assert changed.epsilon_total == 2 and changed.epsilon_spent == Fraction(1, 2)


def test_spending_without_a_budget_or_with_bad_numbers_is_refused(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    with pytest.raises(PrivacyError, match="'unknown' has no privacy budget"):
        ledger.spend("unknown", 0.1, 0.0, query="q", who="w")
    ledger.ensure_budget("orders", epsilon=1.0, delta=0.0)
    with pytest.raises(PrivacyError, match="epsilon must be >= 0"):
        ledger.spend("orders", -0.1, 0.0, query="q", who="w")
    with pytest.raises(PrivacyError, match="delta must be below 1"):
        ledger.ensure_budget("other", epsilon=1.0, delta=1.0)
    assert ledger.history("orders") == []
