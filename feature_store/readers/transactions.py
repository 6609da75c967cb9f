"""The transactions reader: invoice lines (Online Retail style) from CSV or Parquet -> 'events', 'purchases'
and 'items'.

Columns of both line tables: invoice, item_id, user_id strings; quantity, price, revenue (= quantity * price)
float32; ts int64 Unix seconds; label float32; then the configured extra columns, renamed. Customer ids are
normalised to text without a float tail (17850.0 -> '17850').

Rules, applied in this order (each rejected line goes to the rejects with its file, line and reason):
1. Bad values: a customer id that is null or one of `missing_customer_values` ("missing required id:
   user_id"), a negative price, a null invoice/item/quantity/price/time, values that do not parse.
2. Non-product codes: an item code matching one of `non_product_codes` (postage, manual adjustments, bank
   charges, test lines; shell-style globs, `*` and `?`, matched case-insensitively against the whole trimmed
   code) is not a product a customer chose ("non-product code: POST").
3. Exact duplicates: a line equal to an earlier line in every column read is an export artefact ("duplicate
   line"); the first copy stays.
4. Cancellations: a line whose invoice starts with `cancellation_prefix` ("C536379"), or whose quantity is
   negative, returns |quantity| units. It is matched to the same customer's purchases of the same item made at
   or before it (same time counts), oldest first (FIFO), and reduces them. A return with no such purchase
   left to reduce (bought before the data starts) is rejected as "unmatched cancellation"; one matched only in
   part reduces what it can (counted in `counts`). Columnar: one sort by (customer, item, time),
   a per-group cumulative sum and cumulative minimum (the unmatched units are where the running balance of
   purchases minus returns would go below zero) and a clip against each purchase's cumulative quantity.

Tables:
- events: the purchases net of returns, label 1.0. A partly returned line keeps its remaining quantity and
  revenue; a fully returned line is dropped as an event (`counts["fully_returned_lines"]`). Returns are never
  events.
- purchases (the profile input, time-correct): every purchase line as bought (gross, label 1.0), and every
  matched return at its own time with negative quantity and revenue, label 0.0, priced at the average purchase
  price of all the customer's returned units of that item (so a customer's revenue sums to the net revenue of
  their events; with one return per customer and item, exactly the price of the units it cancels).
- items: item_id, its most frequent description and its median unit price over the event lines.
`counts` (in the prepare summary as `source_counts`): purchase lines, return lines, fully and partly returned
purchase lines, and return lines matched only in part.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.config import ColumnType, ConfigError, TransactionsSource, require_path
from feature_store.offline import encode_keys
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


def non_product_regex(patterns: list[str]) -> str | None:
    """One anchored RE2 alternation for shell-style globs (`*` any run, `?` one character; every other
    character literal); None for an empty list."""
    if not patterns:
        return None
    special = {"*": ".*", "?": "."}

    def literal(ch: str) -> str:
        return ch if ch.isalnum() or ch == "_" else f"\\x{{{ord(ch):X}}}"

    alternatives = ["".join(special.get(ch) or literal(ch) for ch in pattern) for pattern in patterns]
    return "^(?:" + "|".join(alternatives) + ")$"


def _segmented_cummin(values: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Cumulative minimum that restarts at every new segment id (segments sorted, ids 0..S-1), exact.

    The values are replaced by their dense ranks and each segment is offset below all earlier ones, so one
    `np.minimum.accumulate` over int64 keys restarts per segment without float rounding."""
    if len(values) == 0:
        return values.copy()
    uniq, rank = np.unique(values, return_inverse=True)
    offset = (int(segment[-1]) - segment) * len(uniq)
    return uniq[np.minimum.accumulate(offset + rank) - offset]


def net_returns(
    customer: np.ndarray, item: np.ndarray, ts: np.ndarray, quantity: np.ndarray, is_return: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Match returns to purchases per (customer code, item code), oldest purchase first.

    A return (`is_return`, |quantity| units) can reduce the purchases made at or before its time. Returns
    (units each purchase line loses, units of each return line that matched); both zero elsewhere.
    """
    n = len(quantity)
    units = np.abs(quantity.astype(np.float64))
    if n == 0:
        return np.zeros(0), np.zeros(0)
    pair = customer.astype(np.int64) * (int(item.max()) + 1) + item
    order = np.lexsort((np.arange(n), is_return, ts, pair))  # purchases before returns at the same time
    pair_s, ret_s, units_s = pair[order], is_return[order], units[order]
    new = np.r_[True, pair_s[1:] != pair_s[:-1]]
    segment = np.cumsum(new) - 1
    starts = np.flatnonzero(new)

    def group_cumsum(v: np.ndarray) -> np.ndarray:
        cum = np.cumsum(v)
        return cum - (cum - v)[starts][segment]

    balance = group_cumsum(np.where(ret_s, -units_s, units_s))  # purchased minus returned, so far
    deficit = -np.minimum(_segmented_cummin(balance, segment), 0.0)  # returned units never matched, so far
    unmatched = np.diff(np.r_[0.0, deficit])
    unmatched[starts] = deficit[starts]
    matched_s = np.where(ret_s, units_s - unmatched, 0.0)
    total_matched = np.add.reduceat(matched_s, starts)[segment]
    bought = np.where(ret_s, 0.0, units_s)
    before = group_cumsum(bought) - bought  # units bought earlier in the group
    lost_s = np.where(ret_s, 0.0, np.clip(total_matched - before, 0.0, bought))
    lost, matched = np.zeros(n), np.zeros(n)
    lost[order], matched[order] = lost_s, matched_s
    return lost, matched


def read_transactions(cfg: TransactionsSource, work_dir: Path | None = None) -> RawData:
    """Read transaction lines into 'events', 'purchases' and 'items' (see the module docstring).
    `work_dir` is unused."""
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
    reasons = row_reasons(typed, bad, CANONICAL, required=list(CANONICAL), non_negative=["price"])
    for extra, name in cfg.extra_columns.items():
        values = source.column(extra)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            values, _ = coerce_column(values, "string")
        typed = typed.append_column(name, values)
    typed = typed.append_column(_LINE, source.column(_LINE))

    def reject(mask: pa.Array, reason: str | pa.Array) -> None:
        nonlocal source, typed
        if not bool(pc.any(mask).as_py()):
            return
        bad_rows = source.filter(mask)
        rejects.add(cfg.path, bad_rows.column(_LINE).to_numpy(),
                    reason if isinstance(reason, str) else reason.filter(mask),
                    raw_text(bad_rows.select(raw_columns), delimiter))
        keep = pc.invert(mask)
        source, typed = source.filter(keep), typed.filter(keep)

    reject(pc.is_valid(reasons), reasons)  # rule 1: bad values
    pattern = non_product_regex(cfg.non_product_codes)
    if pattern is not None:  # rule 2: non-product codes
        code = pc.ascii_trim_whitespace(typed.column("item_id"))
        reject(pc.match_substring_regex(code, pattern, ignore_case=True).combine_chunks(),
               pc.binary_join_element_wise("non-product code: ", code, "").combine_chunks())
    # rule 3: exact duplicates (null values compare equal here); the first copy is the lowest line
    firsts = source.group_by(raw_columns, use_threads=False).aggregate([(_LINE, "min")])
    reject(pc.invert(pc.is_in(source.column(_LINE), value_set=firsts.column(f"{_LINE}_min"))).combine_chunks(),
           "duplicate line")

    # rule 4: cancellations, netted against purchases; then each line's quantity, price and label in both tables
    quantity = typed.column("quantity").to_numpy().astype(np.float64)
    is_return = quantity < 0
    if cfg.cancellation_prefix:
        prefixed = pc.starts_with(typed.column("invoice"), cfg.cancellation_prefix)
        is_return |= prefixed.to_numpy(zero_copy_only=False).astype(bool)
    customer, _ = encode_keys(typed.column("user_id"))
    item, _ = encode_keys(typed.column("item_id"))
    ts = typed.column("ts").to_numpy()
    lost, matched = net_returns(customer, item, ts, quantity, is_return)
    reject(pa.array(is_return & (matched == 0)), "unmatched cancellation")
    keep = ~(is_return & (matched == 0))
    is_return, quantity, lost, matched, customer, item = (
        a[keep] for a in (is_return, np.abs(quantity), lost, matched, customer, item)
    )
    price = typed.column("price").to_numpy().astype(np.float64)
    # a return is priced at the average purchase price of its customer's returned units of the item
    pair = customer * (int(item.max(initial=0)) + 1) + item
    _, pair_group = np.unique(pair, return_inverse=True)
    lost_value = np.bincount(pair_group, lost * price, minlength=pair_group.max(initial=-1) + 1)
    lost_units = np.bincount(pair_group, lost, minlength=len(lost_value))
    avg_price = np.divide(lost_value, lost_units, out=np.zeros_like(lost_value), where=lost_units > 0)
    line_quantity = np.where(is_return, -matched, quantity)
    line_price = np.where(is_return, avg_price[pair_group], price)
    lines = _lines_table(typed, cfg, line_quantity, line_price, np.where(is_return, 0.0, 1.0))
    net = np.where(is_return, 0.0, quantity - lost)
    is_event = ~is_return & ~((lost > 0) & (net <= 0))
    events = _lines_table(typed, cfg, net, price, np.ones(len(net))).filter(pa.array(is_event))
    counts = {
        "purchase_lines": int((~is_return).sum()),
        "return_lines": int(is_return.sum()),
        "fully_returned_lines": int((~is_return & (lost > 0) & (net <= 0)).sum()),
        "partly_returned_lines": int((~is_return & (lost > 0) & (net > 0)).sum()),
        "return_lines_partly_matched": int((is_return & (matched < quantity)).sum()),
    }
    return RawData(
        tables={"events": events, "purchases": lines, "items": items_table(events)},
        rows_read={"events": rows_read},
        rejects=rejects,
        paths={"events": cfg.path, "purchases": cfg.path, "items": cfg.path},
        counts=counts,
    )


def _lines_table(
    typed: pa.Table, cfg: TransactionsSource, quantity: np.ndarray, price: np.ndarray, label: np.ndarray
) -> pa.Table:
    q = pa.array(quantity.astype(np.float32))
    p = pa.array(price.astype(np.float32))
    table = pa.table(
        {
            "invoice": typed.column("invoice"),
            "item_id": typed.column("item_id"),
            "quantity": q,
            "price": p,
            "user_id": typed.column("user_id"),
            "ts": typed.column("ts"),
            "revenue": pc.multiply(q, p),
            "label": pa.array(label.astype(np.float32)),
        }
    )
    for name in cfg.extra_columns.values():
        table = table.append_column(name, typed.column(name))
    return table
