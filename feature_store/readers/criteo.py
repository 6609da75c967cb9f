"""The Criteo display-ads reader: tab-separated label, I1-I13 (integers), C1-C26 (hex strings), no header.

events: label float32 (0 or 1), I1..I13 float32 and C1..C26 strings (null where empty), ts int64 = the
row's 1-based line number (the file is time-ordered; it orders a time split). `max_rows` caps the data rows
read. Rejected: wrong field count, an unparsable integer, an empty label ("missing required id: label") and
a label other than 0 or 1 ("unparsable number: label").
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from feature_store.config import ColumnType, CriteoSource, require_path
from feature_store.readers.base import RawData
from feature_store.readers.text import UNPARSABLE_NUMBER, read_delimited, reject_where
from feature_store.rejects import Rejects

INT_COLUMNS = [f"I{i}" for i in range(1, 14)]
CAT_COLUMNS = [f"C{i}" for i in range(1, 27)]
COLUMNS: dict[str, ColumnType] = {"label": "int"}
COLUMNS |= {c: "int" for c in INT_COLUMNS}
COLUMNS |= {c: "string" for c in CAT_COLUMNS}


def read_criteo(cfg: CriteoSource, work_dir: Path | None = None) -> RawData:
    """Read a Criteo TSV into RawData with the table 'events'. `work_dir` is unused (nothing is cached)."""
    path = require_path(cfg.path, "source.path", kind="file")
    rejects = Rejects()
    table, rows_read = read_delimited(
        path,
        COLUMNS,
        delimiter="\t",
        header=False,
        required=["label"],
        rejects=rejects,
        source_name=cfg.path,
        max_rows=cfg.max_rows,
        quote_char=False,
        line_column="ts",
    )
    not_binary = pc.invert(pc.is_in(table.column("label"), value_set=pa.array([0, 1], pa.int64())))
    table = reject_where(
        table, not_binary, f"{UNPARSABLE_NUMBER}: label", rejects=rejects, source_name=cfg.path,
        line_column="ts", delimiter="\t",
    )
    columns = {"label": table.column("label").cast(pa.float32())}
    columns |= {c: table.column(c).cast(pa.float32()) for c in INT_COLUMNS}
    columns |= {c: table.column(c) for c in CAT_COLUMNS}
    columns["ts"] = table.column("ts")
    return RawData(tables={"events": pa.table(columns)}, rows_read={"events": rows_read}, rejects=rejects,
                   paths={"events": cfg.path})
