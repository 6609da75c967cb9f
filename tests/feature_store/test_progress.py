"""`feature_store.progress` outside a terminal: a few log lines per step, never carriage-return updates."""

from __future__ import annotations

import logging

import pytest

from feature_store import progress


def test_a_step_in_a_log_writes_start_and_end_with_its_figures(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="recforge.progress"), progress.step("fit", total=1000) as s:
        for _ in range(1000):
            s.advance(1)
        s.figures["rows"] = 1234
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "fit ..."
    assert messages[-1].startswith("fit done in ") and messages[-1].endswith(": rows 1,234")
    assert len(messages) == 2  # a quick step: no milestones


def test_a_long_step_logs_at_most_three_milestones(caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "MILESTONE_AFTER_S", 0.0)
    with caplog.at_level(logging.INFO, logger="recforge.progress"), progress.step("epoch 1/3", 400, "batches") as s:
        for _ in range(400):
            s.advance(1)
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split(" (")[0] for m in messages[1:-1]] == ["epoch 1/3: 100/400 batches", "epoch 1/3: 200/400 batches",
                                                          "epoch 1/3: 300/400 batches"]
    assert len(messages) == 5


def test_progress_is_plain_lines_when_switched_off_even_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    monkeypatch.setenv("RECFORGE_PROGRESS", "0")
    assert not progress.interactive()
    monkeypatch.setenv("RECFORGE_PROGRESS", "1")
    assert progress.interactive()
