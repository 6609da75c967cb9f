"""The generic event-log reader: a CSV, TSV or Parquet file whose columns and types the config declares.

Text goes through `read_delimited` (rejects carry the physical line); Parquet columns are converted with
the same rules (`coerce_column`; rejects carry the 1-based row number and the row's values joined by ',').
Then the config's label rule adds a float32 'label' column, and when the config names no 'ts' column and
declares exactly one timestamp column, that column is renamed 'ts'. The result is the table 'events'.

A file that holds no data row (empty, or a header only) and a Parquet file that cannot be opened (empty,
truncated, not Parquet) are `ConfigError`s naming the file: nothing downstream could use them. With
`split.method: files`, `read_table_files` reads the train, valid and test files with the same rules, one after
the other, and records each file's rows so that the split follows the files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.config import ConfigError, LabelRule, TableSource, require_path
from feature_store.readers.base import RawData
from feature_store.readers.text import (
    ARROW_TYPES,
    check_first_line,
    coerce_column,
    int_overflow,
    raw_text,
    read_delimited,
    row_reasons,
)
from feature_store.rejects import Rejects

DEFAULT_DELIMITERS = {"csv": ",", "tsv": "\t"}


def _open_parquet(path: Path, cfg: TableSource) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(
            f"{cfg.path}: not a readable Parquet file ({exc}); it is empty, truncated or in another format: "
            f"write it again, or set source.type to the file's format (csv, tsv)"
        ) from None


def _no_rows(cfg: TableSource, key: str) -> ConfigError:
    what = "it is empty, or a header only" if cfg.header and cfg.type != "parquet" else "it is empty"
    return ConfigError(f"{cfg.path} ({key}): the file has no data rows ({what}); point {key} at the file that "
                       f"holds the events")


def check_table_file(cfg: TableSource, key: str = "source.path") -> None:
    """What can be checked of `cfg.path` without reading its rows, as `read_table` checks it: the file exists,
    is not empty, and its line 1 (text) or its schema (Parquet) fits the declared columns."""
    path = require_path(cfg.path, key, kind="file")
    if cfg.type == "parquet":
        parquet = _open_parquet(path, cfg)
        _check_parquet_columns(cfg, parquet.schema_arrow.names)
        if parquet.metadata.num_rows == 0:
            raise _no_rows(cfg, key)
        return
    if path.stat().st_size == 0:
        raise _no_rows(cfg, key)
    check_first_line(path, dict(cfg.columns), delimiter=cfg.delimiter or DEFAULT_DELIMITERS[cfg.type],
                     header=cfg.header, source_name=cfg.path, encoding=cfg.encoding,
                     timestamp_format=cfg.timestamp_format)


def _check_parquet_columns(cfg: TableSource, names: list[str]) -> None:
    missing = [c for c in cfg.columns if c not in names]
    if missing:
        raise ConfigError(
            f"{cfg.path}: source.columns names {missing}, which the Parquet file does not have; "
            f"its columns are {names}"
        )


def read_parquet_columns(
    path: Path,
    cfg: TableSource,
    rejects: Rejects,
) -> tuple[pa.Table, int]:
    """Read the declared columns of a Parquet file and convert them columnar; bad rows go to `rejects`
    with their 1-based row number. Returns (typed table in declared order, rows read)."""
    _check_parquet_columns(cfg, _open_parquet(path, cfg).schema_arrow.names)
    try:
        raw = pq.read_table(path, columns=list(cfg.columns))
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(
            f"{cfg.path}: the Parquet data cannot be read ({exc}); the file is damaged or truncated: write it "
            f"again"
        ) from None
    converted: dict[str, pa.Array] = {}
    bad: dict[str, pa.Array] = {}
    overflow: dict[str, pa.Array] = {}
    for name, ctype in cfg.columns.items():
        try:
            converted[name], bad[name] = coerce_column(
                raw.column(name), ctype, timestamp_format=cfg.timestamp_format
            )
        except TypeError as exc:
            raise ConfigError(
                f"{cfg.path}: column '{name}' ({raw.schema.field(name).type}) cannot be read as "
                f"'{ctype}': {exc}; declare a matching type under source.columns"
            ) from None
        if ctype == "int":
            overflow[name] = int_overflow(raw.column(name), bad[name])
    schema = pa.schema([pa.field(n, ARROW_TYPES[t]) for n, t in cfg.columns.items()])
    typed = pa.table(converted, schema=schema)
    reasons = row_reasons(typed, bad, dict(cfg.columns), cfg.required, cfg.non_negative, overflow)
    is_bad = pc.is_valid(reasons)
    if bool(pc.any(is_bad).as_py()):
        rows = np.flatnonzero(is_bad.to_numpy(zero_copy_only=False)) + 1
        rejects.add(cfg.path, rows, reasons.filter(is_bad), raw_text(raw.filter(is_bad)))
        typed = typed.filter(pc.invert(is_bad))
    return typed, raw.num_rows


def apply_label_rule(table: pa.Table, rule: LabelRule, source_name: str) -> pa.Table:
    """Add (or replace) a float32 'label': 1.0 where `rule.column` >= threshold or is one of the positive
    values, 0.0 otherwise; null where the rule's column is null (list it under `required` to reject those)."""
    if rule.column not in table.column_names:
        raise ConfigError(
            f"{source_name}: source.label.column '{rule.column}' is not a declared column; "
            f"declared: {table.column_names}"
        )
    col = table.column(rule.column)
    if rule.threshold is not None:
        kind = col.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise ConfigError(
                f"{source_name}: source.label.threshold needs a numeric column, but '{rule.column}' is "
                f"{col.type}; declare it as int or float, or use source.label.positive_values"
            )
        label = pc.greater_equal(col.cast(pa.float64()), rule.threshold)
    else:
        label = pc.is_in(col.cast(pa.string()), value_set=pa.array(rule.positive_values or [], pa.string()))
        label = pc.if_else(pc.is_null(col), pa.scalar(None, pa.bool_()), label)
    label = label.cast(pa.float32())
    if "label" in table.column_names:
        return table.set_column(table.column_names.index("label"), "label", label)
    return table.append_column("label", label)


def canonical_ts(table: pa.Table, cfg: TableSource) -> pa.Table:
    """Rename the one declared timestamp column to 'ts' when the config names no 'ts' column."""
    stamps = [n for n, t in cfg.columns.items() if t == "timestamp"]
    if "ts" in cfg.columns or len(stamps) != 1:
        return table
    return table.rename_columns(["ts" if n == stamps[0] else n for n in table.column_names])


def event_columns(cfg: TableSource) -> list[str]:
    """The columns the events of `cfg` will have, known from the config alone (no file is read)."""
    names = list(cfg.columns)
    stamps = [n for n, t in cfg.columns.items() if t == "timestamp"]
    if "ts" not in cfg.columns and len(stamps) == 1:
        names = ["ts" if n == stamps[0] else n for n in names]
    return names + (["label"] if cfg.label is not None and "label" not in names else [])


def read_table(cfg: TableSource, work_dir: Path | None = None, *, key: str = "source.path") -> RawData:
    """Read a TableSource into RawData with the table 'events'. `work_dir` is unused (nothing is cached);
    `key` is the config key that names the file, for errors."""
    path = require_path(cfg.path, key, kind="file")
    rejects = Rejects()
    if cfg.type == "parquet":
        table, rows_read = read_parquet_columns(path, cfg, rejects)
    else:
        delimiter = cfg.delimiter or DEFAULT_DELIMITERS[cfg.type]
        table, rows_read = read_delimited(
            path,
            dict(cfg.columns),
            delimiter=delimiter,
            header=cfg.header,
            timestamp_format=cfg.timestamp_format,
            required=cfg.required,
            non_negative=cfg.non_negative,
            rejects=rejects,
            source_name=cfg.path,
            encoding=cfg.encoding,
        )
    if rows_read == 0:
        raise _no_rows(cfg, key)
    if cfg.label is not None:
        table = apply_label_rule(table, cfg.label, cfg.path)
    table = canonical_ts(table, cfg)
    return RawData(tables={"events": table}, rows_read={"events": rows_read}, rejects=rejects,
                   paths={"events": cfg.path})


def read_table_files(cfg: TableSource, files: dict[str, str], work_dir: Path | None = None) -> RawData:
    """Read several files of one TableSource (`files`: split name -> path, in table order) into one RawData.

    Every file is read with the same columns, types and checks; its rejects carry its own path and line. The
    events are concatenated in the order of `files`, and `RawData.parts` records each file's kept rows.
    """
    tables: list[pa.Table] = []
    rejects = Rejects()
    rows_read = 0
    parts: dict[str, int] = {}
    for name, path in files.items():
        key = "source.path" if name == "train" else f"split.files.{name}"
        one = read_table(cfg.model_copy(update={"path": path}), work_dir, key=key)
        tables.append(one.events)
        rejects.extend(one.rejects)
        rows_read += one.rows_read["events"]
        parts[name] = one.events.num_rows
    return RawData(tables={"events": pa.concat_tables(tables)}, rows_read={"events": rows_read}, rejects=rejects,
                   paths={"events": cfg.path, **{f"events.{n}": p for n, p in files.items() if n != "train"}},
                   parts=parts)
