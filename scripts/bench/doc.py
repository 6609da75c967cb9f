"""docs/benchmarks.md: each benchmark owns the block between `<!-- NAME:start -->` and `<!-- NAME:end -->` and
rewrites only that block."""

from __future__ import annotations

import sys
from pathlib import Path

from scripts.bench.common import REPO

DOC = REPO / "docs" / "benchmarks.md"
DOC_HEADER = ("# Benchmarks\n\nEach module of `scripts/bench/` rewrites only its own section (between its marker "
              "comments).\n")


def update_doc(path: Path, name: str, section: str) -> None:
    """Replace the block between `<!-- name:start -->` and `<!-- name:end -->` in `path`, or append it."""
    start_mark, end_mark = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    body = section if section.endswith("\n") else section + "\n"
    block = f"{start_mark}\n{body}{end_mark}"
    text = path.read_text() if path.is_file() else DOC_HEADER
    start, end = text.find(start_mark), text.find(end_mark)
    if (start == -1) != (end == -1) or (start != -1 and end < start):
        raise SystemExit(f"{name}: {path}: markers {start_mark} / {end_mark} are unbalanced; fix them by hand")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = text[:start] + block + text[end + len(end_mark):]
    path.write_text(text)


def emit(name: str, section: str, write: bool, path: Path = DOC) -> None:
    """Print a benchmark's section and, with `write`, put it into its marker block of `path`."""
    print(section)
    if write:
        update_doc(path, name, section)
        print(f"{name}: wrote its section of {display(path)}", file=sys.stderr, flush=True)


def display(path: Path) -> str:
    """`path` relative to the repository root where it lies inside it (reports never show this machine's paths)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)
