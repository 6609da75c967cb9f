"""Rejected rows: every bad input row is kept with its source file, line number and reason, and counted.

Readers add rejects in columnar batches (`Rejects.add`). The log is written as Parquet
(`source, line, reason, raw`), summarised by reason, and checked against the configured maximum reject
fraction, which fails the job with the top reasons and an example line, and the hints (`Rejects.hints`) that
turn a recognised pattern of reasons into the config change that fixes it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REJECT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("line", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
    ]
)


UNPARSABLE_NUMBER = "unparsable number"
BEYOND_INT64 = "(integer beyond int64)"
UNDECODABLE = "undecodable bytes"
_OVERFLOW_REASON = re.compile(rf"^{UNPARSABLE_NUMBER}: (.+) {re.escape(BEYOND_INT64)}$")


class RejectFractionExceeded(RuntimeError):
    """More rows were rejected than `prepare.max_reject_fraction` allows."""


class Rejects:
    """An append-only, columnar log of rejected rows."""

    def __init__(self) -> None:
        self._parts: list[pa.Table] = []

    def add(
        self,
        source: str,
        lines: Sequence[int] | np.ndarray | pa.Array,
        reason: str | Sequence[str] | pa.Array,
        raw: Sequence[str | None] | pa.Array | None = None,
    ) -> None:
        """Record rejected rows of `source` at 1-based `lines` with one reason (or one per row)."""
        line_arr = pa.array(np.asarray(lines, dtype=np.int64)) if not isinstance(lines, pa.Array) else lines
        n = len(line_arr)
        if n == 0:
            return
        if isinstance(reason, str):
            reason_arr = pa.array([reason] * n, pa.string())
        else:
            reason_arr = pa.array(reason, pa.string()) if not isinstance(reason, pa.Array) else reason
        if raw is None:
            raw_arr = pa.nulls(n, pa.string())
        else:
            raw_arr = raw if isinstance(raw, pa.Array) else pa.array(raw, pa.string())
            raw_arr = raw_arr.cast(pa.string())
        if not (len(reason_arr) == len(raw_arr) == n):
            raise ValueError("lines, reason and raw must have the same length")
        self._parts.append(
            pa.Table.from_arrays(
                [pa.array([source] * n, pa.string()), line_arr.cast(pa.int64()), reason_arr, raw_arr],
                schema=REJECT_SCHEMA,
            )
        )

    def withhold_raw(self, text: str) -> None:
        """Replace every kept line's raw text by `text` (pseudonymisation: a raw line holds raw ids; its file and
        line number still say where to read it in the source)."""
        self._parts = [p.set_column(3, REJECT_SCHEMA.field("raw"), pa.array([text] * p.num_rows, pa.string()))
                       for p in self._parts]

    def extend(self, other: Rejects) -> None:
        self._parts.extend(other._parts)

    def __len__(self) -> int:
        return sum(p.num_rows for p in self._parts)

    def to_table(self) -> pa.Table:
        if not self._parts:
            return REJECT_SCHEMA.empty_table()
        return pa.concat_tables(self._parts).sort_by([("source", "ascending"), ("line", "ascending")])

    def counts_by_reason(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for part in self._parts:
            vc = part.column("reason").value_counts()
            for item in vc.to_pylist():
                counts[item["values"]] += item["counts"]
        return dict(counts.most_common())

    def hints(self) -> list[str]:
        """What to change in the config for the rejects whose reasons show a known cause: a column whose
        unparsable numbers are mostly integers beyond int64 (ids: declare it `string`), and lines whose bytes do
        not decode (set `source.encoding`)."""
        counts = self.counts_by_reason()
        out = []
        for reason, n in counts.items():
            m = _OVERFLOW_REASON.match(reason)
            if m and n > counts.get(f"{UNPARSABLE_NUMBER}: {m.group(1)}", 0):
                rows = f"{n} rows hold" if n > 1 else "1 row holds"
                out.append(f"column '{m.group(1)}': {rows} integers beyond int64 (ids most likely, too long for a "
                           f"number); declare it `string` under source.columns")
        bad_bytes = {r: n for r, n in counts.items() if r.startswith(UNDECODABLE)}
        for reason, n in bad_bytes.items():
            out.append(f"{n} line{'s' if n > 1 else ''} rejected as {reason}: if the file is in another encoding, set "
                       f"source.encoding (e.g. latin-1, cp1252)")
        return out

    def write(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.to_table(), out)
        return out

    def check_fraction(self, rows_read: int, max_fraction: float) -> None:
        """Raise `RejectFractionExceeded` when rejected / read exceeds `max_fraction`."""
        n = len(self)
        if rows_read <= 0 or n / rows_read <= max_fraction:
            return
        table = self.to_table()
        top = list(self.counts_by_reason().items())[:3]
        first = table.slice(0, 1).to_pylist()[0]
        reasons = "; ".join(f"{r} ({c} rows)" for r, c in top)
        raise RejectFractionExceeded(
            f"{n} of {rows_read} rows rejected ({n / rows_read:.1%}), above prepare.max_reject_fraction="
            f"{max_fraction:.1%}. Top reasons: {reasons}. Example: {first['source']}:{first['line']}: "
            f"{first['reason']}: {first['raw']!r}. "
            + "".join(f"Hint: {h}. " for h in self.hints())
            + "Fix the input or raise prepare.max_reject_fraction."
        )
