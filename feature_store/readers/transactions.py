"""The transactions reader: invoice lines (Online Retail style) from CSV or Parquet -> 'events', 'purchases'
and 'items'.

events (= purchases): invoice, item_id, user_id strings; quantity, price, revenue (= quantity * price)
float32; ts int64 Unix seconds; label float32 = 1.0; then the configured extra columns, renamed. Customer ids
are normalised to text without a float tail (17850.0 -> '17850'). Rejected: a customer id that is null or
one of `missing_customer_values` ("missing required id: user_id"), a negative quantity unless allowed, a
negative price, a null invoice/item/quantity/price/time, and values that do not parse. items: item_id, its
most frequent description and its median unit price over the kept lines, computed columnar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.config import ColumnType, ConfigError, TransactionsSource, require_path
from feature_store.readers.base import RawData
from feature_store.readers.text import (
    coerce_column,
    header_names,
    raw_text,
    read_delimited,
    row_reasons,
)
from feature_store.rejects import Rejects

PARQUET_SUFFIXES = {".parquet", ".pq"}
_LINE = "__line__"
CANONICAL: dict[str, ColumnType] = {
    "invoice": "string",
    "item_id": "string",
    "user_id": "string",
    "quantity": "float",
    "price": "float",
    "ts": "timestamp",
}


def _source_columns(cfg: TransactionsSource) -> dict[str, str]:
    """canonical name -> column name in the file."""
    return {
        "invoice": cfg.invoice_column,
        "item_id": cfg.item_column,
        "user_id": cfg.customer_column,
        "quantity": cfg.quantity_column,
        "price": cfg.price_column,
        "ts": cfg.timestamp_column,
    }


def _check_present(available: list[str], cfg: TransactionsSource) -> None:
    wanted = {f"source.{key}_column": col for key, col in _key_names(cfg).items()}
    wanted |= {f"source.extra_columns.{col}": col for col in cfg.extra_columns}
    missing = [f"{key}='{col}'" for key, col in wanted.items() if col not in available]
    if missing:
        raise ConfigError(
            f"{cfg.path}: the file has no column for {', '.join(missing)}; its columns are {available}. "
            f"Point those keys at the file's column names."
        )


def _key_names(cfg: TransactionsSource) -> dict[str, str]:
    return {
        "invoice": cfg.invoice_column,
        "item": cfg.item_column,
        "quantity": cfg.quantity_column,
        "price": cfg.price_column,
        "customer": cfg.customer_column,
        "timestamp": cfg.timestamp_column,
    }


def _load(cfg: TransactionsSource, path: Path, rejects: Rejects) -> tuple[pa.Table, list[str], str, int]:
    """The file's columns as read (all strings for CSV) plus a line column; the columns that make up a
    row's raw text and their delimiter; rows read."""
    needed = list(dict.fromkeys([*_source_columns(cfg).values(), *cfg.extra_columns]))
    if path.suffix.lower() in PARQUET_SUFFIXES:
        available = pq.read_schema(path).names
        _check_present(available, cfg)
        needed = [c for c in available if c in needed]  # file order, for the raw text of rejects
        table = pq.read_table(path, columns=needed)
        table = table.append_column(_LINE, pa.array(np.arange(1, table.num_rows + 1, dtype=np.int64)))
        return table, needed, ",", table.num_rows
    delimiter = "\t" if path.suffix.lower() in {".tsv", ".tab"} else ","
    available = [h.strip() for h in header_names(path, "utf-8", delimiter)] if path.stat().st_size else []
    _check_present(available, cfg)
    dupes = sorted({h for h in available if available.count(h) > 1})
    if dupes:
        raise ConfigError(f"{cfg.path}:1: the header repeats column names {dupes}; make them unique")
    strings, rows_read = read_delimited(
        path, dict.fromkeys(available, "string"), delimiter=delimiter, header=True, rejects=rejects,
        source_name=cfg.path, line_column=_LINE,
    )
    return strings, available, delimiter, rows_read


def _normalise_customer(values: pa.Array, missing: list[str]) -> pa.Array:
    """Text ids without a float tail ('17850.0' -> '17850'); sentinel values become null."""
    text = pc.ascii_trim_whitespace(values)
    sentinel = pa.array(missing, pa.string())
    is_missing = pc.is_in(text, value_set=sentinel)
    text = pc.replace_substring_regex(text, r"^([+-]?[0-9]+)\.0*$", r"\1")
    is_missing = pc.fill_null(pc.or_(is_missing, pc.is_in(text, value_set=sentinel)), True)
    return pc.if_else(is_missing, pa.scalar(None, pa.string()), text)


def items_table(events: pa.Table) -> pa.Table:
    """Per item: the most frequent description (ties: alphabetically first) and the median unit price."""
    by_price = events.select(["item_id", "price"]).sort_by([("item_id", "ascending"), ("price", "ascending")])
    codes = pc.dictionary_encode(by_price.column("item_id")).combine_chunks()
    idx = codes.indices.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]]) if len(idx) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(idx)])
    prices = by_price.column("price").to_numpy().astype(np.float64)
    median = (prices[starts + (counts - 1) // 2] + prices[starts + counts // 2]) / 2
    items = pa.table(
        {
            "item_id": by_price.column("item_id").take(pa.array(starts, pa.int64())),
            "price": pa.array(median, pa.float32()),
        }
    )
    if "description" not in events.column_names:
        return items.select(["item_id", "price"])
    desc = events.select(["item_id", "description"]).filter(pc.is_valid(events.column("description")))
    freq = desc.group_by(["item_id", "description"]).aggregate([([], "count_all")])
    freq = freq.sort_by([("item_id", "ascending"), ("count_all", "descending"), ("description", "ascending")])
    top = freq.group_by("item_id", use_threads=False).aggregate([("description", "first")])
    top = top.rename_columns(["item_id", "description"])
    joined = items.join(top, "item_id", join_type="left outer")
    return joined.select(["item_id", "description", "price"]).sort_by("item_id")


def read_transactions(cfg: TransactionsSource, work_dir: Path | None = None) -> RawData:
    """Read transaction lines into 'events', 'purchases' and 'items'. `work_dir` is unused."""
    path = require_path(cfg.path, "source.path", kind="file")
    rejects = Rejects()
    source, raw_columns, delimiter, rows_read = _load(cfg, path, rejects)
    converted: dict[str, pa.Array] = {}
    bad: dict[str, pa.Array] = {}
    for canon, col in _source_columns(cfg).items():
        ctype = CANONICAL[canon]
        try:
            converted[canon], bad[canon] = coerce_column(
                source.column(col), ctype, timestamp_format=cfg.timestamp_format
            )
        except TypeError as exc:
            raise ConfigError(f"{cfg.path}: column '{col}' cannot be read as {ctype}: {exc}") from None
    converted["user_id"] = _normalise_customer(converted["user_id"], cfg.missing_customer_values)
    typed = pa.table(converted)
    non_negative = ["price"] if cfg.allow_negative_quantity else ["quantity", "price"]
    reasons = row_reasons(typed, bad, CANONICAL, required=list(CANONICAL), non_negative=non_negative)
    for extra, name in cfg.extra_columns.items():
        values = source.column(extra)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            values, _ = coerce_column(values, "string")
        typed = typed.append_column(name, values)
    is_bad = pc.is_valid(reasons)
    if bool(pc.any(is_bad).as_py()):
        bad_rows = source.filter(is_bad)
        rejects.add(cfg.path, bad_rows.column(_LINE).to_numpy(), reasons.filter(is_bad),
                    raw_text(bad_rows.select(raw_columns), delimiter))
        typed = typed.filter(pc.invert(is_bad))
    quantity = typed.column("quantity").cast(pa.float32())
    price = typed.column("price").cast(pa.float32())
    n = typed.num_rows
    events = pa.table(
        {
            "invoice": typed.column("invoice"),
            "item_id": typed.column("item_id"),
            "quantity": quantity,
            "price": price,
            "user_id": typed.column("user_id"),
            "ts": typed.column("ts"),
            "revenue": pc.multiply(quantity, price),
            "label": pa.array(np.ones(n, dtype=np.float32)),
        }
    )
    for name in cfg.extra_columns.values():
        events = events.append_column(name, typed.column(name))
    return RawData(
        tables={"events": events, "purchases": events, "items": items_table(events)},
        rows_read={"events": rows_read},
        rejects=rejects,
        paths={"events": cfg.path, "purchases": cfg.path, "items": cfg.path},
    )
