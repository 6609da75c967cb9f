"""The reader contract: every source becomes a `RawData` of Arrow tables plus the rejects found reading it.

Canonical conventions every reader follows:
- table 'events' always exists; sources may add 'users', 'items', 'purchases';
- event times are int64 seconds since the Unix epoch (UTC) in a column named 'ts';
- ids keep their source type (int64 or string); missing values are nulls, never sentinels;
- `rows_read[table]` counts data rows read from input (kept + rejected), so nothing vanishes uncounted;
- events read from one file per split (`split.method: files`) are concatenated, and `parts` says which rows
  came from which file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from feature_store.rejects import Rejects


@dataclass
class RawData:
    """What a source yields: named Arrow tables, per-table input row counts, rejects, input paths, for events
    read from one file per split the rows of each file, and counts of what the source's own rules did to kept
    rows (e.g. purchase lines netted by returns), reported in the prepare summary as `source_counts`."""

    tables: dict[str, pa.Table]
    rows_read: dict[str, int]
    rejects: Rejects = field(default_factory=Rejects)
    paths: dict[str, str] = field(default_factory=dict)
    parts: dict[str, int] = field(default_factory=dict)
    """When the events were read from several files (`split.method: files`): split name -> that file's kept
    rows, in the events' row order; empty otherwise."""
    counts: dict[str, int] = field(default_factory=dict)
    pseudonymised: dict[str, object] | None = None
    """With pseudonymisation on: {"key_id", "columns"} (what was hashed, under which key); None for raw ids."""

    @property
    def events(self) -> pa.Table:
        return self.tables["events"]

    def total_read(self) -> int:
        return sum(self.rows_read.values())
