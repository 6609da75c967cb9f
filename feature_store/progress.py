"""One progress display per long step (generate, prepare's stages, training epochs, index build, materialize).

On a terminal a step is a rich progress line updated in place (a bar when the step knows its total, a spinner
otherwise) that disappears when the step ends; in a log file or CI it writes a few plain log lines instead: the
start, at most three milestones (25/50/75% of a known total, once the step has run 30 s) and the end with its
figures. Never a stream of carriage-return updates: a log stays readable line by line. `RECFORGE_PROGRESS=0` (set
by `--json`, tests and benchmarks) keeps even a terminal to the plain lines.

Lives in the lowest package so that every stage (feature_store, training, serving, recforge) reports the same way.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("recforge.progress")

MILESTONES = (0.25, 0.5, 0.75)
MILESTONE_AFTER_S = 30.0  # a step shorter than this logs start and end only


def interactive() -> bool:
    """Update in place: stderr is a terminal and `RECFORGE_PROGRESS` is not 0."""
    return os.environ.get("RECFORGE_PROGRESS", "1") != "0" and sys.stderr.isatty()


@functools.cache
def console() -> Any:
    """The one rich console on stderr that the progress lines and, on a terminal, the log records share (the CLI's
    `rich.logging.RichHandler`): a log line printed while a progress line is live goes above it instead of
    through it."""
    from rich.console import Console

    return Console(stderr=True)


def _figures(figures: Mapping[str, Any]) -> str:
    parts = []
    for k, v in figures.items():
        if isinstance(v, float):
            v = f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.0f}"
        elif isinstance(v, int):
            v = f"{v:,}"
        parts.append(f"{k} {v}")
    return ", ".join(parts)


class Step:
    """A running step: `advance(n)` as work completes, `figures` (shown at the end) set at any time."""

    def __init__(self, name: str, total: int | None, unit: str) -> None:
        self.name = name
        self.total = total
        self.unit = unit
        self.done = 0
        self.figures: dict[str, Any] = {}
        self.started = time.perf_counter()
        self._next_milestone = 0
        self._live: Any = None
        self._task: Any = None
        if interactive():
            import rich.progress as rp

            columns: list[Any] = [rp.SpinnerColumn(), rp.TextColumn("{task.description}")]
            if total:
                columns += [rp.BarColumn(), rp.MofNCompleteColumn()]
            self._live = rp.Progress(*columns, rp.TimeElapsedColumn(), rp.TextColumn("{task.fields[figures]}"),
                                     console=console(), transient=True)
            self._live.start()
            self._task = self._live.add_task(name, total=total, figures="")
        else:
            log.info("%s ...", name)

    def advance(self, n: int = 1, **figures: Any) -> None:
        self.done += n
        self.figures.update(figures)
        if self._live is not None:
            self._live.update(self._task, advance=n, figures=_figures(figures))
            return
        while (self.total and self._next_milestone < len(MILESTONES)
               and self.done >= MILESTONES[self._next_milestone] * self.total):
            self._next_milestone += 1
            if self.done < self.total and time.perf_counter() - self.started >= MILESTONE_AFTER_S:
                log.info("%s: %d/%d %s (%.0fs)", self.name, self.done, self.total, self.unit,
                         time.perf_counter() - self.started)

    def close(self) -> float:
        seconds = time.perf_counter() - self.started
        if self._live is not None:
            self._live.stop()
        shown = _figures(self.figures)
        log.info("%s done in %.1fs%s", self.name, seconds, f": {shown}" if shown else "")
        return seconds


@contextmanager
def step(name: str, total: int | None = None, unit: str = "") -> Iterator[Step]:
    """Report the step `name` while the block runs; `total` units of work (advanced with `Step.advance`) give
    a bar and milestones, None a spinner and just start and end."""
    s = Step(name, total, unit)
    try:
        yield s
    finally:
        s.close()
