"""Train/valid/test assignment: seeded random (optionally whole groups, e.g. users), by event time, or by file.

`assign_splits` returns an int8 code per row (0 train, 1 valid, 2 test) and a `SplitReport` with the rule
that was applied (time cut-offs, group counts), so the split is reproducible and auditable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.config import SplitConfig

SPLITS = ("train", "valid", "test")


@dataclass
class SplitReport:
    method: str
    rows: dict[str, int]
    valid_start_ts: int | None = None
    test_start_ts: int | None = None
    group_by: str | None = None
    groups: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def train_end_ts(self) -> int | None:
        """First timestamp NOT in train for a time split (train rows are strictly before it)."""
        return self.valid_start_ts if self.valid_start_ts is not None else self.test_start_ts


def _codes_from_uniform(u: np.ndarray, cfg: SplitConfig) -> np.ndarray:
    codes = np.zeros(len(u), dtype=np.int8)
    codes[u >= 1.0 - cfg.test_fraction - cfg.valid_fraction] = 1
    codes[u >= 1.0 - cfg.test_fraction] = 2
    return codes


def assign_splits(
    table: pa.Table, cfg: SplitConfig, *, ts_column: str = "ts", parts: Mapping[str, int] | None = None,
    files: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, SplitReport]:
    """Split code per row of `table` according to `cfg`.

    The `files` method needs `parts` (split name -> rows, in table order, as `RawData.parts` records them);
    `files` (split name -> path) goes into the report."""
    n = table.num_rows
    if cfg.method == "files":
        if not parts or sum(parts.values()) != n:
            raise ValueError("split.method=files needs the events read one file per split (RawData.parts)")
        codes = np.repeat(np.array([SPLITS.index(k) for k in parts], np.int8), list(parts.values()))
        return codes, SplitReport("files", _counts(codes), files=dict(files or {}))
    if cfg.method == "time":
        if ts_column not in table.column_names:
            raise ValueError(f"split.method=time needs the timestamp column '{ts_column}' in the events")
        ts = pc.fill_null(table.column(ts_column), 0).to_numpy().astype(np.int64)
        train_q = 1.0 - cfg.valid_fraction - cfg.test_fraction
        cut_valid = int(np.quantile(ts, train_q, method="higher")) if n else 0
        cut_test = int(np.quantile(ts, 1.0 - cfg.test_fraction, method="higher")) if n else 0
        codes = np.zeros(n, dtype=np.int8)
        codes[ts >= cut_valid] = 1
        codes[ts >= cut_test] = 2
        if cfg.valid_fraction == 0:
            cut_valid = cut_test
        report = SplitReport("time", _counts(codes), valid_start_ts=cut_valid, test_start_ts=cut_test)
        return codes, report
    if cfg.group_by:
        if cfg.group_by not in table.column_names:
            raise ValueError(f"split.group_by: column '{cfg.group_by}' is not in the events")
        keys = table.column(cfg.group_by).to_numpy(zero_copy_only=False)
        h = pd.util.hash_array(np.asarray(keys, dtype=object), hash_key=f"{cfg.seed:016d}"[:16])
        u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        codes = _codes_from_uniform(u, cfg)
        groups = {}
        for code, name in enumerate(SPLITS):
            groups[name] = int(pd.unique(keys[codes == code]).size)
        return codes, SplitReport("random", _counts(codes), group_by=cfg.group_by, groups=groups)
    u = np.random.default_rng(cfg.seed).random(n)
    codes = _codes_from_uniform(u, cfg)
    return codes, SplitReport("random", _counts(codes))


def _counts(codes: np.ndarray) -> dict[str, int]:
    bc = np.bincount(codes, minlength=3)
    return {name: int(bc[i]) for i, name in enumerate(SPLITS)}
