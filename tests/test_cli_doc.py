"""docs/cli.md's command table is generated from the parser's help texts (recforge/clidoc.py)."""

from __future__ import annotations

import pytest

from recforge import clidoc


def test_cli_doc_command_table_matches_the_help_texts() -> None:
    assert clidoc.main(["--check"]) == 0, "docs/cli.md is stale: run python -m recforge.clidoc"


def test_the_command_table_names_every_stage_the_demo_runs() -> None:
    table = clidoc.commands_table()
    demo = next(line for line in table.splitlines() if line.startswith("| `demo`"))
    stages = ["generate", "prepare", "materialize", "train ctr", "train retrieval", "index build", "register",
              "promote", "serve"]
    positions = [demo.index(s) for s in stages]
    assert positions == sorted(positions), demo


def test_a_changed_help_text_is_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    from recforge import cli

    help_text, options = cli.COMMANDS["rollback"]
    monkeypatch.setitem(cli.COMMANDS, "rollback", (help_text + " (changed)", options))
    assert clidoc.main(["--check"]) == 1
