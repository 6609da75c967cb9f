"""`recforge init --from FILE`: draft a commented scenario config from a sample of a CSV, TSV or Parquet file.

The draft is a starting point a person reads and edits, so every inferred choice is written with its evidence as a
YAML comment ("12,345 distinct in the 50,000-row sample"). What is inferred, and from what:
- text layout: the encoding (UTF-8 when the sample decodes, else Latin-1), the delimiter (the candidate that
  splits the sample's lines into one consistent field count), and whether line 1 is a header (a value in line 1
  fails the type every later line of its column has, or every line-1 value is a name none of the column's values
  match);
- column types, with the same columnar value parsers `prepare` uses (`parse_column`), so a column drafted `int`
  parses as `int` at prepare time: int within int64, else float, else a timestamp (Unix seconds in 1990-2040, ISO
  8601, or one of the common day/month formats), else string. Integers longer than int64 and hex digests are
  strings (ids, not numbers);
- roles: the label (`--label COL`, else a 0/1 column named like a click), the event time, the user and item ids
  (by name: user / customer / member and item / product / movie / stock code; for a file without a header, the
  first two id-like columns), the features: ids and low-cardinality columns categorical, the rest numeric
  (`log1p_standardize` for non-negative skewed values). Row ids (nearly one distinct value per row) and the label's
  source column are left out, and said so;
- the split (by time when there is an event time, else random) and the training budget (batch size and epochs
  sized to the row count: about `TARGET_STEPS` optimiser steps, early stopping ends sooner).

Nothing here trains or writes data: the config it writes is run by `recforge prepare` and `recforge train ctr`
unchanged (tests/e2e/test_init.py does that for each shipped data set).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.config import ConfigError
from feature_store.readers.text import parse_column

SAMPLE_ROWS = 50_000
SAMPLE_BYTES = 8 << 20
TARGET_STEPS = 600
MIN_EPOCHS, MAX_EPOCHS = 3, 30
PARQUET_SUFFIXES = {".parquet", ".pq"}
DELIMITERS = (",", "\t", ";", "|", "::")
WHITESPACE = "whitespace"
EPOCH_RANGE = (631_152_000, 2_208_988_800)  # 1990-01-01 .. 2040-01-01, Unix seconds
DAY_FORMATS = ("%Y%m%d", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%m/%d/%Y",
               "%d/%m/%Y", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d")
LABEL_NAMES = ("label", "click", "clicked", "is_click", "target", "y", "converted", "conversion", "purchased")
USER_HINTS = ("user", "customer", "client", "member", "visitor", "uid", "buyer")
ITEM_HINTS = ("item", "product", "movie", "sku", "stockcode", "stock_code", "article", "song", "video", "offer")
TIME_HINTS = ("ts", "time", "timestamp", "date", "datetime", "when", "event_time", "invoicedate")
CATEGORICAL_MAX_DISTINCT = 64  # integers with at most this many values are codes (hour, position), not amounts
ROW_ID_SHARE = 0.5  # more distinct values than this share of the sample's rows: a row id, not a feature
HASH_BUCKETS_ABOVE = 1_000_000
_HEX = r"^[0-9a-fA-F]{8,}$"
_NAME = r"^[A-Za-z_][A-Za-z0-9_ .\-]*$"


@dataclass
class Column:
    """One column of the sample: its drafted type, role and the evidence for both."""

    name: str
    ctype: str
    distinct: int
    nulls: int
    role: str = "feature"  # label | timestamp | user | item | feature | skip
    timestamp_format: str | None = None
    why: list[str] = field(default_factory=list)
    values: pa.Array | None = None  # typed sample values


@dataclass
class Sample:
    """What was read of the file: raw layout facts plus typed columns."""

    path: Path
    kind: str  # csv | tsv | parquet
    rows: int  # rows in the sample
    total_rows: int  # rows in the file (exact for Parquet and for text read whole, else estimated)
    exact_total: bool
    columns: list[Column]
    header: bool = True
    delimiter: str | None = None
    encoding: str = "utf-8"
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- reading


def _decode(raw: bytes) -> tuple[str, str]:
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(raw) - 3:  # the sample cut a multi-byte character in two
            return raw[: exc.start].decode("utf-8"), "utf-8"
        return raw.decode("latin-1"), "latin-1"


def _split_lines(text: str, delimiter: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if delimiter == WHITESPACE:
        return [ln.split() for ln in lines]
    return [ln.split(delimiter) for ln in lines]


def _sniff_delimiter(lines: list[str]) -> str:
    """The candidate whose split gives the most lines with the most common field count (> 1 field)."""
    head = "\n".join(lines[:500])
    best, best_score = None, (0, 0)
    for d in (*DELIMITERS, WHITESPACE):
        counts = [len(r) for r in _split_lines(head, d)]
        if not counts:
            continue
        mode = max(set(counts), key=counts.count)
        score = (counts.count(mode), mode) if mode > 1 else (0, 0)
        if score > best_score:
            best, best_score = d, score
    if best is None:
        raise ConfigError("no delimiter splits the sample's lines into columns (tried , tab ; | :: and runs of "
                          "spaces); is it a delimited text file? Pass a CSV, TSV or Parquet file")
    return best


def _looks_like_header(first: list[str], columns: list[Column], body: dict[str, pa.Array]) -> bool:
    for value, col in zip(first, columns):
        if col.ctype != "string":
            _, bad = parse_column(pa.array([value]), col.ctype, timestamp_format=col.timestamp_format)
            if bool(bad[0].as_py()) or value.strip() == "":
                return True
    names_like = all(re.match(_NAME, v.strip()) for v in first)
    unseen = all(not bool(pc.any(pc.equal(body[c.name], v)).as_py()) for v, c in zip(first, columns))
    return names_like and unseen and all(c.ctype == "string" for c in columns)


def read_sample(path: Path, rows: int = SAMPLE_ROWS) -> Sample:
    """Read at most `rows` rows of `path` and type every column."""
    if not path.is_file():
        raise ConfigError(f"--from: file '{path}' does not exist; pass a CSV, TSV or Parquet file")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _parquet_sample(path, rows)
    with path.open("rb") as fh:
        raw = fh.read(SAMPLE_BYTES)
        whole = len(raw) < SAMPLE_BYTES
    if b"\x00" in raw[:4096]:
        raise ConfigError(f"--from: '{path}' holds NUL bytes: a binary file, not delimited text; pass a CSV, TSV "
                          "or Parquet file")
    text, encoding = _decode(raw.removeprefix(b"\xef\xbb\xbf"))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not whole:
        lines = lines[:-1]  # the sample cut the last line
    n_lines = len(lines)
    lines = lines[: rows + 1]
    if len(lines) < 2:
        raise ConfigError(f"--from: '{path}' has fewer than two non-empty lines; nothing to infer from")
    delimiter = _sniff_delimiter(lines)
    split = _split_lines("\n".join(lines), delimiter)
    width = max(set(len(r) for r in split), key=[len(r) for r in split].count)
    split = [r for r in split if len(r) == width]
    first, body_rows = split[0], split[1:]
    names = [f"col_{i + 1}" for i in range(width)]
    body = {n: pa.array([r[i].strip() for r in body_rows], pa.string()) for i, n in enumerate(names)}
    columns = [_type_column(n, body[n]) for n in names]
    header = _looks_like_header(first, columns, body)
    if header:  # typed again under their names: a name can say "time" or "id"
        renamed = _unique_names([v.strip() for v in first])
        columns = [_type_column(new, body[old]) for new, old in zip(renamed, names)]
    else:
        split = split[:rows]
        extra = {n: pa.array([r[i].strip() for r in split], pa.string()) for i, n in enumerate(names)}
        columns = [_type_column(n, extra[n]) for n in names]
    sampled_rows = len(split) - (1 if header else 0)
    if whole:
        total, exact = n_lines - (1 if header else 0), True
    else:
        total, exact = int(path.stat().st_size / max(len(raw), 1) * n_lines) - (1 if header else 0), False
    kind = "tsv" if delimiter == "\t" else "csv"
    return Sample(path=path, kind=kind, rows=sampled_rows, total_rows=total, exact_total=exact, columns=columns,
                  header=header, delimiter=delimiter, encoding=encoding)


def _unique_names(names: list[str]) -> list[str]:
    out: list[str] = []
    for i, n in enumerate(names):
        n = n or f"col_{i + 1}"
        out.append(n if n not in out else f"{n}_{i + 1}")
    return out


def _parquet_sample(path: Path, rows: int) -> Sample:
    try:
        pf = pq.ParquetFile(path)
        table = pf.read_row_groups(list(range(_groups_for(pf, rows))))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"--from: '{path}' is not a readable Parquet file ({exc}); pass a CSV, TSV or Parquet "
                          "file") from None
    table = table.slice(0, rows)
    columns: list[Column] = []
    for name in table.column_names:
        arr = table.column(name).combine_chunks()
        t = arr.type
        if pa.types.is_dictionary(t):
            arr, t = arr.dictionary_decode(), t.value_type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            columns.append(_type_column(name, arr.cast(pa.string()), numeric_source=pa.types.is_floating(t)))
        elif pa.types.is_timestamp(t) or pa.types.is_date(t):
            columns.append(Column(name, "timestamp", _distinct(arr), arr.null_count, values=arr,
                                  why=[f"a Parquet {t} column"]))
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            columns.append(_type_column(name, arr.cast(pa.string())))
        else:
            columns.append(Column(name, "string", 0, arr.null_count, role="skip",
                                  why=[f"Parquet type {t} is not a scalar column prepare reads: left out"]))
    return Sample(path=path, kind="parquet", rows=table.num_rows, total_rows=pf.metadata.num_rows, exact_total=True,
                  columns=columns)


def _groups_for(pf: pq.ParquetFile, rows: int) -> int:
    seen = 0
    for i in range(pf.num_row_groups):
        seen += pf.metadata.row_group(i).num_rows
        if seen >= rows:
            return i + 1
    return max(pf.num_row_groups, 1)


# ---------------------------------------------------------------------------------------------- typing


def _distinct(arr: pa.Array) -> int:
    return len(pc.unique(arr.drop_null())) if len(arr) else 0


def _parses(values: pa.Array, ctype: str, fmt: str | None = None) -> tuple[bool, pa.Array]:
    typed, bad = parse_column(values, ctype, timestamp_format=fmt)
    return not bool(pc.any(bad).as_py()), typed


def _type_column(name: str, values: pa.Array, *, numeric_source: bool = False) -> Column:
    """The narrowest type every non-null sample value parses as (see the module docstring)."""
    nulls = int(pc.sum(pc.or_(pc.is_null(values), pc.equal(values, ""))).as_py() or 0)
    distinct = _distinct(values)
    present = values.filter(pc.and_(pc.is_valid(values), pc.not_equal(values, "")))
    lowered = name.lower()
    if len(present) == 0:
        return Column(name, "string", 0, nulls, role="skip", why=["empty in the sample: left out"])
    if bool(pc.all(pc.match_substring_regex(present, _HEX)).as_py()) and not bool(
            pc.all(pc.match_substring_regex(present, r"^[0-9]+$")).as_py()):
        return Column(name, "string", distinct, nulls, values=present, why=["hex digests: an id, read as text"])
    ok_int, typed = _parses(present, "int")
    if ok_int:
        v = typed.to_numpy(zero_copy_only=False)
        if lowered in TIME_HINTS or any(h in lowered for h in ("time", "date")):
            if v.min() >= EPOCH_RANGE[0] and v.max() < EPOCH_RANGE[1]:
                return Column(name, "timestamp", distinct, nulls, values=typed,
                              why=["integers in the Unix-seconds range of 1990-2040"])
            ok, ts = _parses(present, "timestamp", "%Y%m%d")
            if ok and bool(pc.all(pc.match_substring_regex(present, r"^[0-9]{8}$")).as_py()):
                return Column(name, "timestamp", distinct, nulls, timestamp_format="%Y%m%d", values=ts,
                              why=["8-digit days (YYYYMMDD)"])
        if v.min() >= EPOCH_RANGE[0] and v.max() < EPOCH_RANGE[1] and distinct > 0.2 * len(present) and \
                not numeric_source:
            return Column(name, "timestamp", distinct, nulls, values=typed,
                          why=["integers in the Unix-seconds range of 1990-2040, mostly distinct"])
        why = ["whole numbers" + (" (stored as floats)" if numeric_source else "")]
        return Column(name, "int", distinct, nulls, values=typed, why=why)
    if bool(pc.all(pc.match_substring_regex(present, r"^[+-]?[0-9]{19,}$")).as_py()):
        return Column(name, "string", distinct, nulls, values=present,
                      why=["integers longer than int64: an id, read as text"])
    ok_float, typed = _parses(present, "float")
    if ok_float:
        return Column(name, "float", distinct, nulls, values=typed, why=["decimal numbers"])
    ok_ts, typed = _parses(present, "timestamp")
    if ok_ts:
        return Column(name, "timestamp", distinct, nulls, values=typed, why=["ISO 8601 times"])
    for fmt in DAY_FORMATS:
        ok_ts, typed = _parses(present, "timestamp", fmt)
        if ok_ts:
            return Column(name, "timestamp", distinct, nulls, timestamp_format=fmt, values=typed,
                          why=[f"times in the format {fmt}"])
    return Column(name, "string", distinct, nulls, values=present, why=["text"])


# ---------------------------------------------------------------------------------------------- roles


def _by_hint(columns: Sequence[Column], hints: Sequence[str], exclude: set[str]) -> Column | None:
    for c in columns:
        low = c.name.lower().replace(" ", "_")
        if c.name not in exclude and c.ctype in ("int", "string") and any(h in low for h in hints):
            return c
    return None


def _pick_label(sample: Sample, label: str | None) -> Column:
    by_name = {c.name: c for c in sample.columns}
    if label is not None:
        if label in by_name:
            return by_name[label]
        if label.isdigit() and 1 <= int(label) <= len(sample.columns):
            return sample.columns[int(label) - 1]
        raise ConfigError(f"--label {label!r}: no such column in '{sample.path}'; its columns are "
                          f"{', '.join(by_name)} (or give a 1-based column position)")
    for c in sample.columns:
        if c.name.lower() in LABEL_NAMES and c.ctype in ("int", "float", "bool") and c.distinct <= 2:
            return c
    raise ConfigError(f"'{sample.path}': no 0/1 label column found (looked for {', '.join(LABEL_NAMES)}); name "
                      f"the column to learn with --label COL (one of {', '.join(by_name)}): a 0/1 column is used as "
                      "is, a number becomes 'at least its median', text becomes 'anything but its most common value'")


def _label_rule(col: Column) -> tuple[dict[str, Any], str]:
    """The `source.label` rule for the label column, and a comment saying what counts as positive."""
    assert col.values is not None
    if col.ctype in ("int", "float", "bool"):
        v = np.asarray(col.values.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        v = v[~np.isnan(v)]
        uniq = np.unique(v)
        if len(uniq) < 2:
            raise ConfigError(f"--label {col.name}: the column has one value in the sample ({uniq[:1].tolist()}); "
                              "a label needs positives and negatives")
        if set(uniq.tolist()) <= {0.0, 1.0}:
            return {"column": col.name, "threshold": 1}, f"{col.name} is 0/1: 1 is a positive"
        threshold = float(np.median(v))
        if threshold <= uniq[0]:  # at least the median would take every row
            threshold = float(uniq[1])
        share = float(np.mean(v >= threshold))
        t: float | int = int(threshold) if threshold.is_integer() else threshold
        return ({"column": col.name, "threshold": t},
                f"{col.name} >= {t} (its median) is a positive: {share:.0%} of the sample; edit the threshold")
    counts = pc.value_counts(col.values)
    values = counts.field("values").to_pylist()
    n = np.asarray(counts.field("counts"))
    if len(values) > 20:
        raise ConfigError(f"--label {col.name}: a text column with {len(values)} distinct values in the sample; "
                          "name a 0/1, numeric or few-valued column")
    order = np.argsort(-n)
    positives = sorted(str(values[i]) for i in order[1:])
    share = float(n[order[1:]].sum() / n.sum())
    return ({"column": col.name, "positive_values": positives},
            f"{col.name} in {positives} is a positive ({share:.1%} of the sample); '{values[order[0]]}', the most "
            "common value, is the negative")


def assign_roles(sample: Sample, label: str | None) -> None:
    """Mark label, timestamp, user, item, features and left-out columns (in place)."""
    lab = _pick_label(sample, label)
    lab.role = "label"
    times = [c for c in sample.columns if c.ctype == "timestamp" and c.role == "feature"]
    if times:
        times[0].role = "timestamp"
        for extra in times[1:]:
            extra.role, extra.why = "skip", [*extra.why, "a second time column: left out"]
    taken = {lab.name}
    user = _by_hint(sample.columns, USER_HINTS, taken)
    if user is not None:
        taken.add(user.name)
    item = _by_hint(sample.columns, ITEM_HINTS, taken)
    if not sample.header:
        ids = [c for c in sample.columns if c.role == "feature" and c.ctype in ("int", "string")
               and c.distinct > CATEGORICAL_MAX_DISTINCT and c.name not in taken]
        user = user or (ids[0] if ids else None)
        item = item or (ids[1] if len(ids) > 1 else None)
    for col, role, names in ((user, "user", "user_id"), (item, "item", "item_id")):
        if col is not None:
            col.role = role
            nth = "first" if role == "user" else "second"
            col.why.append(f"the {role} id" + ("" if sample.header else f" (guessed: the {nth} id-like column)"))
            if not sample.header:
                col.name = names
    if not sample.header and times:
        times[0].name = "ts"
    for c in sample.columns:
        if c.role != "feature":
            continue
        if c.distinct > ROW_ID_SHARE * max(sample.rows, 1) and c.ctype in ("int", "string"):
            c.role = "skip"
            c.why.append(f"{c.distinct:,} distinct in {sample.rows:,} rows: a row id, not a feature; left out")


# ---------------------------------------------------------------------------------------------- drafting


def _pow2(x: float) -> int:
    return 1 << max(0, round(math.log2(max(x, 1))))


def train_budget(rows: int) -> tuple[int, int, str]:
    """Batch size and epochs for `rows` events: batches of about a 400th of the data (256..4096, a power of two),
    and enough epochs for about TARGET_STEPS optimiser steps (MIN_EPOCHS..MAX_EPOCHS)."""
    train_rows = max(int(rows * 0.8), 1)
    batch = min(max(_pow2(train_rows / 400), 256), 4096)
    steps = max(math.ceil(train_rows / batch), 1)
    epochs = min(max(math.ceil(TARGET_STEPS / steps), MIN_EPOCHS), MAX_EPOCHS)
    return batch, epochs, f"{train_rows:,} train rows / {batch} = {steps:,} steps per epoch"


def _id_like(c: Column, header: bool) -> bool:
    """An integer column that names things rather than counts them: its name says id / no / code / key, or (no
    header to go by) its values are large non-negative codes (median >= 1,000 over many distinct values)."""
    tokens = set(re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", c.name).lower()))
    if tokens & {"id", "ids", "no", "code", "key", "sku", "zip"} or c.name.lower().endswith("id"):
        return True
    if header or c.values is None or c.distinct <= CATEGORICAL_MAX_DISTINCT:
        return False
    v = np.asarray(c.values.to_numpy(zero_copy_only=False))
    return bool(v.min() >= 0 and np.median(v) >= 1_000)


def _feature_entry(c: Column, header: bool) -> tuple[str, dict[str, Any], str]:
    """(group, entry, comment) of a feature column."""
    id_like = c.ctype == "int" and _id_like(c, header)
    if id_like and c.role not in ("user", "item"):
        c.why.append("an id (by its " + ("name)" if header else "values: large non-negative codes)"))
    if c.role in ("user", "item") or c.ctype in ("string", "bool") or id_like or (
            c.ctype == "int" and c.distinct <= CATEGORICAL_MAX_DISTINCT):
        entry: dict[str, Any] = {"name": c.name}
        if c.distinct > HASH_BUCKETS_ABOVE:
            entry["hash_buckets"] = 1 << 20
        elif c.distinct > 10_000:
            entry["min_freq"] = 2
        return "categorical", entry, f"{c.distinct:,} distinct"
    assert c.values is not None
    v = np.asarray(c.values.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    v = v[np.isfinite(v)]
    nonneg = v.size > 0 and float(v.min()) >= 0
    med = float(np.median(v)) if v.size else 0.0
    p99 = float(np.quantile(v, 0.99)) if v.size else 0.0
    skewed = nonneg and p99 > 10 * max(med, 1e-9)
    transform = "log1p_standardize" if skewed else "standardize"
    why = f"median {med:.4g}, p99 {p99:.4g}" + (": skewed, log1p first" if skewed else "")
    return "numeric", {"name": c.name, "transform": transform}, why


def _placeholder(c: Column) -> list[str]:
    """A warning when one value covers a large share of an id column: often a stand-in for 'unknown'."""
    if c.values is None or c.role not in ("user", "item") or len(c.values) == 0:
        return []
    counts = pc.value_counts(c.values)
    top = int(np.argmax(np.asarray(counts.field("counts"))))
    share = counts.field("counts")[top].as_py() / len(c.values)
    if share < 0.05:
        return []
    return [f"CHECK: the value {counts.field('values')[top].as_py()!r} is {share:.0%} of the sample, often a "
            "stand-in for 'unknown'; filter it out of the file if so"]


def draft_config(path: Path, *, label: str | None = None, name: str | None = None) -> tuple[dict[str, Any], str]:
    """The drafted config (a plain dict) and its YAML text with comments."""
    sample = read_sample(path)
    assign_roles(sample, label)
    stem = path.stem if len(path.stem) >= 3 else f"{path.resolve().parent.name}_{path.stem}"  # u.data: ml-100k_u
    scenario = name or re.sub(r"[^a-z0-9_]+", "_", stem.lower()).strip("_") or "scenario"
    lab = next(c for c in sample.columns if c.role == "label")
    rule, label_why = _label_rule(lab)
    ts = next((c for c in sample.columns if c.role == "timestamp"), None)
    used = [c for c in sample.columns if c.role != "skip"]
    source: dict[str, Any] = {"type": sample.kind, "path": str(path)}
    if sample.kind != "parquet":
        source["header"] = sample.header
        if sample.delimiter not in (",", "\t"):
            source["delimiter"] = sample.delimiter
        if sample.encoding != "utf-8":
            source["encoding"] = sample.encoding
    source["columns"] = {c.name: c.ctype for c in used}
    if ts is not None and ts.timestamp_format:
        source["timestamp_format"] = ts.timestamp_format
    source["label"] = rule
    # the table source renames its one timestamp column to `ts`; without one, the default `ts` names no column
    # and the events are prepared without time (a random split needs none)
    features: dict[str, Any] = {"label": "label", "timestamp": "ts"}
    user = next((c for c in used if c.role == "user"), None)
    item = next((c for c in used if c.role == "item"), None)
    if user is not None:
        features["user_key"] = user.name
    if item is not None:
        features["item_key"] = item.name
    groups: dict[str, list[dict[str, Any]]] = {"categorical": [], "numeric": []}
    comments: dict[str, str] = {}
    for c in used:
        if c.role in ("label", "timestamp"):
            continue
        group, entry, why = _feature_entry(c, sample.header)
        groups[group].append(entry)
        comments[c.name] = "; ".join([*c.why, why, *_placeholder(c)])
    features.update({k: v for k, v in groups.items() if v})
    batch, epochs, budget_why = train_budget(sample.total_rows)
    cfg: dict[str, Any] = {
        "name": scenario,
        "output_dir": f"runs/{scenario}",
        "seed": 42,
        "source": source,
        "features": features,
        "split": ({"method": "time", "valid_fraction": 0.1, "test_fraction": 0.1} if ts is not None
                  else {"method": "random", "valid_fraction": 0.1, "test_fraction": 0.1, "seed": 42}),
        "train": {"model": "dcnv2", "batch_size": batch, "max_epochs": epochs},
    }
    facts = _facts(sample, label_why, ts, budget_why)
    return cfg, render_yaml(cfg, facts, comments, sample)


def _facts(sample: Sample, label_why: str, ts: Column | None, budget_why: str) -> list[str]:
    total = f"{sample.total_rows:,}" + ("" if sample.exact_total else " (estimated from the file size)")
    out = [f"Drafted by `recforge init --from {sample.path}` from its first {sample.rows:,} rows; {total} rows in all.",
           "Every choice below is a guess from that sample, with its evidence: read it, edit it, then run",
           "  recforge prepare --config THIS_FILE && recforge train ctr --config THIS_FILE",
           f"label: {label_why}"]
    if sample.kind != "parquet":
        d = {"\t": "tab", WHITESPACE: "runs of spaces"}.get(sample.delimiter or ",", repr(sample.delimiter))
        out.append(f"text: {sample.encoding}, delimiter {d}, " + ("line 1 is a header" if sample.header else
                                                                   "no header line (column names drafted here)"))
    out.append(f"time: '{ts.name}' ({'; '.join(ts.why)}): the split is by time" if ts is not None
               else "time: no time column found, so the split is random (no histories or profiles)")
    skipped = [c for c in sample.columns if c.role == "skip"]
    for c in skipped:
        out.append(f"left out: '{c.name}': {'; '.join(c.why)}")
    out.append(f"training budget: {budget_why}; about {TARGET_STEPS} steps in all, early stopping ends sooner")
    return out


def render_yaml(cfg: dict[str, Any], facts: list[str], comments: dict[str, str], sample: Sample) -> str:
    """The config as YAML: a header of facts, block style at the top two levels, one flow-style line per feature
    with its evidence as a comment."""
    import yaml

    def flow(obj: Any) -> str:
        text = yaml.safe_dump(obj, default_flow_style=True, sort_keys=False, width=10_000, allow_unicode=True)
        return text.strip().removesuffix("...").strip()

    lines = [f"# {f}" for f in facts] + [""]
    for key, value in cfg.items():
        if not isinstance(value, dict):
            lines.append(f"{key}: {flow(value)}")
            continue
        lines += ["", f"{key}:"] if lines[-1] else [f"{key}:"]
        for sub, v in value.items():
            if key == "features" and sub in ("categorical", "numeric"):
                lines.append(f"  {sub}:")
                lines += [f"    - {flow(e)}  # {comments.get(e['name'], '')}".rstrip(" #") for e in v]
            else:
                lines.append(f"  {sub}: {flow(v)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- the command


def add_parser(sub: Any) -> None:
    """`recforge init --from FILE [--label COL] [--output PATH] [--name NAME] [--force]`."""
    p = sub.add_parser("init", help="draft a commented scenario config from a CSV, TSV or Parquet file (types, "
                                    "label, time, features, split and training budget inferred from a sample)",
                       description="Read a sample of FILE and write a scenario config that `recforge prepare` and "
                                   "`recforge train ctr` run unchanged; each inferred choice is commented.")
    p.add_argument("--from", dest="source", required=True, metavar="FILE", help="the event log: .csv, .tsv, "
                                                                                 "delimited text or .parquet")
    p.add_argument("--label", default=None, metavar="COL", help="the column to learn (name, or 1-based position "
                                                                "for a file without a header); default: a 0/1 "
                                                                "column named like a click")
    p.add_argument("--name", default=None, help="scenario name (default: from the file name)")
    p.add_argument("--output", "-o", default=None, metavar="PATH",
                   help="where to write the config (default: configs/<name>.yaml; `-` prints it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")


def run(args: Any) -> int:
    """Draft, write (or print) and say what to run next; exit 2 with a message on any input problem."""
    import sys

    try:
        cfg, text = draft_config(Path(args.source), label=args.label, name=args.name)
        from recforge.config import RecForgeConfig

        try:
            RecForgeConfig.model_validate(cfg)
        except ValueError as exc:  # a draft that does not validate is a bug of the drafter, said as such
            raise ConfigError(f"the config drafted from '{args.source}' does not validate, a defect of `recforge "
                              f"init`; print it with --output - and fix it by hand: {exc}") from None
        out = Path(args.output) if args.output else Path("configs") / f"{cfg['name']}.yaml"
        if args.output == "-":
            print(text, end="")
            return 0
        if out.exists() and not args.force:
            raise ConfigError(f"--output: '{out}' exists; pass --force to overwrite it or --output another path")
    except ConfigError as exc:
        print(f"recforge init: error: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    n_features = sum(len(v) for k, v in cfg["features"].items() if k in ("categorical", "numeric"))
    print(f"wrote {out}: {len(cfg['source']['columns'])} columns, {n_features} features, {cfg['split']['method']} "
          f"split, {cfg['train']['model']} for up to {cfg['train']['max_epochs']} epochs of batch "
          f"{cfg['train']['batch_size']}\nnext: recforge prepare --config {out} && recforge train ctr --config {out}")
    return 0
