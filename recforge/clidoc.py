"""The command table of docs/cli.md, generated from the parser's help texts so that the two cannot disagree.

`python -m recforge.clidoc` rewrites the table between the markers in docs/cli.md; `--check` only compares and
exits 1 when the file differs (tests/test_cli_doc.py runs the check).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recforge.cli import build_parser

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
BEGIN = ("<!-- commands: generated from the parser by `python -m recforge.clidoc`; edit the help texts in "
         "recforge/cli.py -->")
END = "<!-- end of commands -->"
SUBCOMMANDS = {"train": ("ctr", "retrieval"), "index": ("build",), "registry": ("list",)}


def commands_table() -> str:
    """| command | what it does | for every subcommand, in the parser's order, with its help text."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    rows = ["| command | what it does |", "|---|---|"]
    for action in sub._choices_actions:
        name = action.dest
        shown = " \\| ".join(f"{name} {k}" for k in SUBCOMMANDS[name]) if name in SUBCOMMANDS else name
        help_text = (action.help or "").replace("|", "\\|")
        rows.append(f"| `{shown}` | {help_text} |")
    return "\n".join(rows)


def render(text: str) -> str:
    """`text` (docs/cli.md) with the table between the markers replaced by the generated one."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + commands_table() + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    text = DOC.read_text()
    new = render(text)
    if check:
        if new != text:
            print(f"{DOC.name}: the command table differs from the CLI's help texts; run python -m recforge.clidoc",
                  file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
