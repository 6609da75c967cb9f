"""What every benchmark script shares: the machine description and rewriting its own section of the doc.

Each `scripts/bench_*.py` owns the block of docs/benchmarks.md between its `<!-- NAME:start -->` and
`<!-- NAME:end -->` markers and rewrites only that block.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
DOC_HEADER = "# Benchmarks\n\nEach `scripts/bench_*.py` rewrites only its own section (between its marker comments).\n"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() where that is unreadable)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, Any]:
    """CPU model, cores (all and usable), RAM, OS and Python version of this machine."""
    cpu = cpu_model()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {"cpu": cpu, "cores": os.cpu_count(), "usable": len(os.sched_getaffinity(0)), "ram_gib": ram,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def emit(name: str, section: str, write: bool) -> None:
    """Print a benchmark's section and, with `write`, put it into docs/benchmarks.md (its marker block)."""
    print(section)
    if write:
        update_doc(DOC, name, section)
        print(f"{name}: wrote its section of {DOC}", file=sys.stderr, flush=True)


def update_doc(path: Path, name: str, section: str) -> None:
    """Replace the block between `<!-- name:start -->` and `<!-- name:end -->` in `path`, or append it."""
    start_mark, end_mark = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start_mark}\n{section}{end_mark}"
    text = path.read_text() if path.is_file() else DOC_HEADER
    start, end = text.find(start_mark), text.find(end_mark)
    if (start == -1) != (end == -1) or (start != -1 and end < start):
        raise SystemExit(f"{name}: {path}: markers {start_mark} / {end_mark} are unbalanced; fix them by hand")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = text[:start] + block + text[end + len(end_mark):]
    path.write_text(text)
