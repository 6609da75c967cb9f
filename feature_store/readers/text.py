"""The one line-numbered delimited-text parser every text reader uses, and the columnar value parsers it owns.

`read_delimited` reads a delimited file into typed Arrow columns and sends every bad row to `Rejects` with
its 1-based physical line number, a stable reason and its text. How it works:
- pyarrow's CSV reader parses every column as a string, single-threaded so that its invalid-row handler sees
  physical line numbers; rows with the wrong field count are skipped there and logged;
- the line numbers of the rows it keeps are recovered with numpy (every physical line is one row: values
  never span lines, empty lines are not ignored), so no Python loop ever runs over rows;
- each column is converted columnar (`parse_column`) and rows with unparsable values, a null required id or
  a negative value in a non-negative column are rejected once, with the first reason in column order.

Conventions: empty fields are nulls (in numeric, bool and timestamp columns so are the usual null tokens
NA, N/A, NaN, null, None); a line whose fields are all empty is a blank line, not a data row, and is neither
kept nor counted; CRLF line endings and a UTF-8 byte-order mark are accepted; `whitespace` as the delimiter
reads aligned columns (runs of spaces and tabs separate, leading and trailing ones are ignored); multi-character
delimiters ('::' in MovieLens 1M) and non-UTF-8 encodings go through a streaming transcoder. Bytes that do not
decode in the file's encoding reject their line (`undecodable bytes (encoding utf-8)`): the transcoder marks them with a
Unicode noncharacter (U+FDD0, which no text file carries) instead of U+FFFD, so a marked row is found columnar
and no value is ever silently altered. A UTF-8 file pays for the transcoder only when pyarrow finds invalid
UTF-8 in it.

With a header, line 1 must name exactly the declared columns (any order): a header that names other columns,
or a first line that parses as data, is a `ConfigError` rather than a silently dropped row; without one, a line
1 that names exactly the declared columns is a `ConfigError` too (it would be read, or rejected, as data).

Kept as one module (about 770 lines) because the value parsers and the reader share one set of conventions
(null tokens, reject reasons, timestamp units) and one contract: every rejected row carries its physical line
number, which the reader recovers and the parsers' masks index into. The value-parsing section (`parse_column`,
`coerce_column`, `row_reasons`) is the seam should it grow further.
"""

from __future__ import annotations

import codecs
import csv as py_csv
import io
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from feature_store.config import ColumnType, ConfigError
from feature_store.rejects import BEYOND_INT64, UNDECODABLE, UNPARSABLE_NUMBER, Rejects

WRONG_FIELD_COUNT = "wrong field count"
UNPARSABLE_TIMESTAMP = "unparsable timestamp"
MISSING_ID = "missing required id"
NEGATIVE = "negative value"

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "timestamp": pa.int64(),
    "bool": pa.bool_(),
}
NULL_TOKENS = pa.array(["", "NA", "N/A", "NaN", "nan", "NAN", "null", "NULL", "None", "none"], pa.string())

_INT_RE = r"^[+-]?[0-9]{1,18}(\.0*)?$"
_INT19_RE = r"^[+-]?[0-9]{19}(\.0*)?$"  # int64 holds some 19-digit integers: compared as text to its limits
_FLOAT_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$|^[+-]?(?i:inf|infinity)$"
_EPOCH_RE = r"^[+-]?[0-9]{1,18}(\.[0-9]*)?$"
_ISO_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S%z", "%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M%z")
_TRUE = pa.array(["true", "t", "1", "yes", "y"], pa.string())
_FALSE = pa.array(["false", "f", "0", "no", "n"], pa.string())
_SEP = "\x1f"  # what a multi-character delimiter becomes inside the transcoder
WHITESPACE = "whitespace"  # the delimiter value for aligned columns: runs of spaces/tabs, leading ones ignored
_RUNS = re.compile(r"[ \t]+")
_EDGES = re.compile(r"^[ \t]+|[ \t]+(?=\r?$)", re.M)


def joiner(delimiter: str) -> str:
    """The text that joins a row's fields back into its `raw` (one space for aligned columns)."""
    return " " if delimiter == WHITESPACE else delimiter
_BAD_BYTES = "\ufdd0"  # what undecodable bytes become inside the transcoder (a noncharacter: never in text)
_BAD_BYTES_HANDLER = "recforge.undecodable"
_DIGITS_RE = r"^[+-]?[0-9]{19,}(\.0*)?$"  # a bad integer of this form is beyond int64: ids better read as text
_BLOCK_SIZE = 8 << 20


def _mark_undecodable(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return _BAD_BYTES, exc.end


codecs.register_error(_BAD_BYTES_HANDLER, _mark_undecodable)


@contextmanager
def _quiet_undecodable_rows() -> Iterator[None]:
    """Silence the UnicodeDecodeError pyarrow raises, and reports as unraisable, when it cannot hand a line
    with invalid UTF-8 to the invalid-row handler: the read then fails and is retried through the transcoder,
    which rejects that line. Any other unraisable exception still reaches the previous hook."""
    previous = sys.unraisablehook

    def hook(info: sys.UnraisableHookArgs) -> None:
        if not isinstance(info.exc_value, UnicodeDecodeError):
            previous(info)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def undecodable_reason(encoding: str) -> str:
    """The reject reason of a line with bytes that do not decode in `encoding`."""
    return f"{UNDECODABLE} (encoding {codecs.lookup(encoding).name})"


# ------------------------------------------------------------------------------------------ value parsing


def _null_str(n: int) -> pa.Array:
    return pa.nulls(n, pa.string())


def _any(mask: pa.Array | pa.ChunkedArray) -> bool:
    return bool(pc.any(mask).as_py())


def _to_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


def _strip_plus(trimmed: pa.Array) -> pa.Array:
    if _any(pc.starts_with(trimmed, "+")):
        return pc.replace_substring_regex(trimmed, r"^\+", "")
    return trimmed


def _parse_int(trimmed: pa.Array, is_null: pa.Array) -> tuple[pa.Array, pa.Array]:
    ok = pc.fill_null(pc.match_substring_regex(trimmed, _INT_RE), False)
    long = pc.fill_null(pc.match_substring_regex(trimmed, _INT19_RE), False)
    if _any(long):  # 19 digits of equal length compare as text like numbers
        digits = pc.utf8_slice_codeunits(pc.replace_substring_regex(trimmed, r"^[+-]", ""), 0, 19)
        limit = pc.if_else(pc.starts_with(trimmed, "-"), pa.scalar(str(-(2**63))[1:]), pa.scalar(str(2**63 - 1)))
        ok = pc.or_(ok, pc.and_(long, pc.fill_null(pc.less_equal(digits, limit), False)))
    text = pc.if_else(ok, trimmed, _null_str(len(trimmed)))
    if _any(pc.match_substring(text, ".")):
        text = pc.replace_substring_regex(text, r"\.0*$", "")
    values = pc.cast(_strip_plus(text), pa.int64())
    return values, pc.and_(pc.invert(ok), pc.invert(is_null))


def _parse_float(trimmed: pa.Array, is_null: pa.Array) -> tuple[pa.Array, pa.Array]:
    ok = pc.fill_null(pc.match_substring_regex(trimmed, _FLOAT_RE), False)
    values = pc.cast(_strip_plus(pc.if_else(ok, trimmed, _null_str(len(trimmed)))), pa.float64())
    return values, pc.and_(pc.invert(ok), pc.invert(is_null))


def _parse_bool(trimmed: pa.Array, is_null: pa.Array) -> tuple[pa.Array, pa.Array]:
    low = pc.utf8_lower(trimmed)
    is_true = pc.is_in(low, value_set=_TRUE)
    is_false = pc.is_in(low, value_set=_FALSE)
    values = pc.if_else(is_true, True, pc.if_else(is_false, pa.scalar(False), pa.scalar(None, pa.bool_())))
    bad = pc.and_(pc.invert(pc.or_(is_true, is_false)), pc.invert(is_null))
    return values, bad


def _parse_iso(text: pa.Array) -> pa.Array:
    """ISO 8601 date / date-time strings (T or space, optional fraction, Z or +hh:mm) -> int64 seconds."""
    norm = pc.replace_substring_regex(text, r"^([0-9]{4}-[0-9]{2}-[0-9]{2})T", r"\1 ")
    norm = pc.replace_substring_regex(norm, r"(:[0-9]{2})\.[0-9]+", r"\1")
    norm = pc.replace_substring_regex(norm, r"[zZ]$", "+0000")
    out = pa.nulls(len(text), pa.int64())
    for fmt in _ISO_FORMATS:
        missing = pc.and_(pc.is_null(out), pc.is_valid(norm))
        if not _any(missing):
            break
        parsed = pc.strptime(norm, format=fmt, unit="s", error_is_null=True).cast(pa.int64())
        out = pc.coalesce(out, parsed)
    return out


def parse_timestamp_strings(trimmed: pa.Array, timestamp_format: str | None) -> pa.Array:
    """Parse trimmed timestamp strings (nulls stay null) into int64 Unix seconds; unparsable -> null.

    With `timestamp_format` (strptime syntax, e.g. '%Y-%m-%d %H:%M:%S' or '%d/%m/%Y %H:%M%z') every value
    must match it; without one, integer (or decimal, floored) Unix seconds and ISO 8601 are accepted.
    Times without a zone are taken as UTC.
    """
    if timestamp_format:
        return pc.strptime(trimmed, format=timestamp_format, unit="s", error_is_null=True).cast(pa.int64())
    epoch = pc.fill_null(pc.match_substring_regex(trimmed, _EPOCH_RE), False)
    text = pc.if_else(epoch, trimmed, _null_str(len(trimmed)))
    if _any(pc.match_substring(text, ".")):
        text = pc.replace_substring_regex(text, r"\.[0-9]*$", "")
    out = pc.cast(_strip_plus(text), pa.int64())
    rest = pc.and_(pc.invert(epoch), pc.is_valid(trimmed))
    if _any(rest):
        out = pc.coalesce(out, _parse_iso(pc.if_else(rest, trimmed, _null_str(len(trimmed)))))
    return out


def parse_column(
    values: pa.Array | pa.ChunkedArray, ctype: ColumnType, *, timestamp_format: str | None = None
) -> tuple[pa.Array, pa.Array]:
    """Convert a string column to `ctype`, columnar. Returns (typed values, bad mask).

    Empty strings are null (and so are NULL_TOKENS for non-string types); `bad` is True where a non-null
    value does not parse. Types: int -> int64 ('3' or '3.0'), float -> float64, timestamp -> int64 Unix
    seconds (see `parse_timestamp_strings`), bool -> true/false/1/0 (also t/f, yes/no), string -> string.
    """
    arr = _to_array(values)
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    n = len(arr)
    if ctype == "string":
        is_empty = pc.fill_null(pc.equal(arr, ""), False)
        out = pc.if_else(is_empty, _null_str(n), arr) if _any(is_empty) else arr
        return out, pa.array(np.zeros(n, dtype=bool))
    trimmed = pc.ascii_trim_whitespace(arr)
    is_null = pc.fill_null(pc.is_in(trimmed, value_set=NULL_TOKENS), True)
    trimmed = pc.if_else(is_null, _null_str(n), trimmed)
    if ctype == "int":
        return _parse_int(trimmed, is_null)
    if ctype == "float":
        return _parse_float(trimmed, is_null)
    if ctype == "bool":
        return _parse_bool(trimmed, is_null)
    if ctype == "timestamp":
        out = parse_timestamp_strings(trimmed, timestamp_format)
        return out, pc.and_(pc.is_null(out), pc.invert(is_null))
    raise ValueError(f"unknown column type {ctype!r}; use one of {sorted(ARROW_TYPES)}")


_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _nan_to_null(arr: pa.Array) -> pa.Array:
    if pa.types.is_floating(arr.type) and _any(pc.is_nan(arr)):
        return pc.if_else(pc.fill_null(pc.is_nan(arr), False), pa.scalar(None, arr.type), arr)
    return arr


def coerce_column(
    values: pa.Array | pa.ChunkedArray, ctype: ColumnType, *, timestamp_format: str | None = None
) -> tuple[pa.Array, pa.Array]:
    """Convert a column of any Arrow type (e.g. from Parquet) to `ctype`. Returns (typed values, bad mask).

    Strings go through `parse_column`; numbers are cast (float NaN -> null; a non-integral float in an int
    column, or a number other than 0/1 in a bool column, is bad); Arrow timestamps and dates become int64
    Unix seconds, as do plain numbers in a timestamp column. Raises TypeError for types it cannot convert.
    """
    arr = _to_array(values)
    kind = arr.type
    if pa.types.is_dictionary(kind):
        arr, kind = arr.cast(kind.value_type), kind.value_type
    n = len(arr)
    no_bad = pa.array(np.zeros(n, dtype=bool))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return parse_column(arr.cast(pa.string()), ctype, timestamp_format=timestamp_format)
    if pa.types.is_null(kind):
        return pa.nulls(n, ARROW_TYPES[ctype]), no_bad
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    if ctype == "string":
        return parse_column(arr.cast(pa.string()), "string")
    if ctype == "timestamp" and pa.types.is_timestamp(kind):
        seconds = pc.divide(arr.cast(pa.int64()).cast(pa.float64()), _UNIT_PER_SECOND[kind.unit])
        return pc.floor(seconds).cast(pa.int64()), no_bad
    if ctype == "timestamp" and pa.types.is_date(kind):
        return pc.multiply(arr.cast(pa.date32()).cast(pa.int32()).cast(pa.int64()), 86_400), no_bad
    if pa.types.is_boolean(kind) and ctype != "timestamp":
        return arr.cast(ARROW_TYPES[ctype]), no_bad
    if not numeric:
        raise TypeError(f"cannot read an Arrow {kind} column as {ctype}")
    if ctype == "float":
        return _nan_to_null(arr.cast(pa.float64())), no_bad
    if pa.types.is_integer(kind) and ctype in ("int", "timestamp"):
        return arr.cast(pa.int64()), no_bad
    as_float = _nan_to_null(arr.cast(pa.float64()))
    if ctype == "bool":
        bad = pc.fill_null(pc.invert(pc.is_in(as_float, value_set=pa.array([0.0, 1.0]))), False)
        bad = pc.and_(bad, pc.is_valid(as_float))
        return pc.if_else(bad, pa.scalar(None, pa.bool_()), pc.equal(as_float, 1.0)), bad
    if ctype == "timestamp":  # fractional seconds are floored
        return pc.floor(as_float).cast(pa.int64(), safe=False), no_bad
    in_range = pc.and_(pc.less(pc.abs(as_float), 9.2e18), pc.equal(pc.floor(as_float), as_float))
    bad = pc.and_(pc.invert(pc.fill_null(in_range, True)), pc.is_valid(as_float))
    clean = pc.if_else(bad, pa.scalar(None, pa.float64()), as_float)
    return clean.cast(pa.int64(), safe=False), bad


def int_overflow(values: pa.Array | pa.ChunkedArray, bad: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Where a bad value of an int column is an integer beyond int64 (all digits, 19 or more of them, past its
    limits): ids such as these are read as `string`, which the reject reason suggests."""
    arr = _to_array(values)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) or not _any(bad):
        return pa.array(np.zeros(len(arr), dtype=bool))
    digits = pc.fill_null(pc.match_substring_regex(pc.ascii_trim_whitespace(arr), _DIGITS_RE), False)
    return pc.and_(digits, pc.fill_null(_to_array(bad), False))


def row_reasons(
    table: pa.Table,
    bad: dict[str, pa.Array],
    types: dict[str, ColumnType],
    required: Sequence[str] = (),
    non_negative: Sequence[str] = (),
    overflow: dict[str, pa.Array] | None = None,
) -> pa.Array:
    """Per-row reject reason (null = row is good): the first problem in column order, checked per column as
    unparsable value (`unparsable number: <col> (integer beyond int64)` where `overflow` marks it), then
    missing required id, then negative value."""
    n = table.num_rows
    reasons = _null_str(n)
    for name in table.column_names:
        checks: list[tuple[pa.Array, str]] = []
        if overflow is not None and name in overflow:
            checks.append((overflow[name], f"{UNPARSABLE_NUMBER}: {name} {BEYOND_INT64}"))
        if name in bad:
            kind = UNPARSABLE_TIMESTAMP if types.get(name) == "timestamp" else UNPARSABLE_NUMBER
            checks.append((bad[name], f"{kind}: {name}"))
        col = table.column(name)
        if name in required:
            checks.append((pc.is_null(col), f"{MISSING_ID}: {name}"))
        if name in non_negative and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            checks.append((pc.fill_null(pc.less(col, 0), False), f"{NEGATIVE}: {name}"))
        for mask, text in checks:
            mask = _to_array(mask)
            if not _any(mask):
                continue
            reasons = pc.if_else(pc.and_(pc.is_null(reasons), mask), pa.scalar(text), reasons)
    return reasons


# ------------------------------------------------------------------------------------------ line numbers


def kept_line_numbers(row_index: np.ndarray, skipped_lines: np.ndarray, first_line: int) -> np.ndarray:
    """Physical line numbers of parsed rows `row_index` (0-based among the rows the CSV reader returned),
    given the sorted physical lines it skipped and the line of the first data row."""
    skipped = np.sort(np.asarray(skipped_lines, dtype=np.int64)) - first_line
    kept_before_skip = skipped - np.arange(len(skipped), dtype=np.int64)
    row_index = np.asarray(row_index, dtype=np.int64)
    return first_line + row_index + np.searchsorted(kept_before_skip, row_index, side="right")


def raw_text(table: pa.Table, delimiter: str = ",") -> pa.Array:
    """Each row's values cast to text (null -> empty) and joined with `delimiter`: the `raw` of a reject."""
    if table.num_columns == 0:
        return _null_str(table.num_rows)
    parts = [pc.fill_null(_to_array(c).cast(pa.string()), "") for c in table.columns]
    return pc.binary_join_element_wise(*parts, delimiter)


def reject_where(
    table: pa.Table,
    mask: pa.Array | pa.ChunkedArray,
    reason: str | pa.Array,
    *,
    rejects: Rejects,
    source_name: str,
    line_column: str,
    raw: pa.Array | None = None,
    delimiter: str = ",",
) -> pa.Table:
    """Send the rows of `table` where `mask` is True to `rejects` (line numbers from `line_column`,
    `raw` text per row or the joined values) and return the other rows."""
    mask = pc.fill_null(_to_array(mask), False)
    if not _any(mask):
        return table
    bad_rows = table.filter(mask)
    text = raw.filter(mask) if raw is not None else raw_text(bad_rows.drop_columns([line_column]), joiner(delimiter))
    reasons = reason if isinstance(reason, str) else _to_array(reason).filter(mask)
    rejects.add(source_name, bad_rows.column(line_column).to_numpy(), reasons, text)
    return table.filter(pc.invert(mask))


# ------------------------------------------------------------------------------------------ transcoding


class _TranscodedFile(io.RawIOBase):
    """A byte stream of `path` decoded from `encoding` (undecodable bytes -> the U+FDD0 marker, BOM dropped),
    with a multi-character delimiter replaced by one separator character, re-encoded as UTF-8, chunk by chunk."""

    def __init__(self, path: str | os.PathLike[str], encoding: str, delimiter: str, chunk: int = 4 << 20):
        super().__init__()
        name = codecs.lookup(encoding).name
        self._raw = open(path, "rb")  # noqa: SIM115 - closed by close()
        decoder = codecs.getincrementaldecoder("utf-8-sig" if name == "utf-8" else name)
        self._decoder = decoder(errors=_BAD_BYTES_HANDLER)
        self._delimiter = delimiter if len(delimiter) > 1 else None
        self._chunk = chunk
        self._pending = ""
        self._out = b""
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        raw = self._raw.read(self._chunk)
        self._eof = not raw
        text = self._pending + self._decoder.decode(raw, final=self._eof)
        self._pending = ""
        if self._delimiter == WHITESPACE:  # whole lines only: a run of blanks may straddle two chunks
            if not self._eof:
                cut = text.rfind("\n") + 1
                text, self._pending = text[:cut], text[cut:]
            text = _RUNS.sub(_SEP, _EDGES.sub("", text))
        elif self._delimiter:
            text = text.replace(self._delimiter, _SEP)
            if not self._eof:  # hold back a tail that may be the start of a delimiter split across chunks
                for k in range(len(self._delimiter) - 1, 0, -1):
                    if text.endswith(self._delimiter[:k]):
                        text, self._pending = text[:-k], text[-k:]
                        break
        self._out, self._pos = text.encode("utf-8"), 0

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while self._pos >= len(self._out) and not self._eof:
            self._fill()
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


# ------------------------------------------------------------------------------------------ the reader


@dataclass
class _Collected:
    kept: list[pa.Table] = field(default_factory=list)
    kept_index: list[np.ndarray] = field(default_factory=list)
    reject_index: list[np.ndarray] = field(default_factory=list)
    reject_reason: list[pa.Array] = field(default_factory=list)
    reject_raw: list[pa.Array] = field(default_factory=list)
    skipped_lines: list[int] = field(default_factory=list)
    skipped_text: list[str] = field(default_factory=list)
    parsed_rows: int = 0
    data_rows: int = 0


def header_names(path: Path, encoding: str, delimiter: str, quote_char: str | bool = '"') -> list[str]:
    """The fields of line 1 (BOM and line ending removed, quotes honoured)."""
    with open(path, "rb") as fh:
        first = fh.readline(1 << 20)
    name = codecs.lookup(encoding).name
    text = first.decode("utf-8-sig" if name == "utf-8" else name, errors="replace").rstrip("\r\n")
    if delimiter == WHITESPACE:
        return text.split()
    if len(delimiter) > 1:
        return text.split(delimiter)
    try:
        if quote_char is False:
            return next(py_csv.reader([text], delimiter=delimiter, quoting=py_csv.QUOTE_NONE), [])
        return next(py_csv.reader([text], delimiter=delimiter, quotechar=str(quote_char)), [])
    except py_csv.Error as exc:  # e.g. a field longer than the csv module allows: not a text header
        raise ConfigError(f"{path}:1: line 1 cannot be read as delimited text ({exc}); check that the file is "
                          f"text (not binary or compressed) and that its delimiter is '{delimiter}'") from None


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _check_header_text(path: Path, source_name: str, encoding: str, delimiter: str) -> None:
    """A header must be text: line 1 with undecodable bytes or control characters means a binary file, or text
    in another encoding, and names no columns."""
    with open(path, "rb") as fh:
        first = fh.readline(1 << 20)
    name = codecs.lookup(encoding).name
    try:
        text = first.decode("utf-8-sig" if name == "utf-8" else name).rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source_name}:1: the header has bytes that do not decode as {name} (byte 0x{first[exc.start]:02x} at "
            f"offset {exc.start}); if the file is text in another encoding, set source.encoding (e.g. latin-1); a "
            f"binary or compressed file cannot be read as delimited text"
        ) from None
    control = [c for c in text if ord(c) < 32 and c not in (" \t" if delimiter == WHITESPACE else delimiter)]
    if control:
        raise ConfigError(
            f"{source_name}:1: the header holds control characters ({control[0]!r}): this looks like a binary or "
            f"compressed file, not delimited text; point the source at the text file"
        )


def _parses_as_data(fields: list[str], columns: dict[str, ColumnType], timestamp_format: str | None) -> bool:
    """Whether `fields`, in declared order, parse under the declared types with at least one non-string value:
    a first line like that is data, not a header."""
    typed = [(v, t) for v, t in zip(fields, columns.values()) if t != "string"]
    if len(fields) != len(columns) or not typed:
        return False
    for value, ctype in typed:
        parsed, bad = parse_column(pa.array([value], pa.string()), ctype, timestamp_format=timestamp_format)
        if _any(bad) or parsed.null_count:
            return False
    return True


def _column_order(
    path: Path, columns: dict[str, ColumnType], source_name: str, encoding: str, delimiter: str,
    quote_char: str | bool, header: bool, timestamp_format: str | None,
) -> list[str]:
    """Column names in file order, after checking line 1 so that no row is lost or misread.

    With a header, it must name exactly the declared columns (its order then wins); otherwise it is an error
    that says whether line 1 looks like data (`header: false`) or names other columns (fix `columns`). Without
    a header, a line 1 naming exactly the declared columns is an error (it would be read as a data row)."""
    names = list(columns)
    if header:
        _check_header_text(path, source_name, encoding, delimiter)
    first = [h.strip() for h in header_names(path, encoding, delimiter, quote_char)]
    shown = _shorten(repr(first))
    names_match = sorted(first) == sorted(names)
    if not header:
        if names_match:
            raise ConfigError(
                f"{source_name}:1: line 1 names the declared columns {shown}, so it is a header, but "
                f"source.header is false and it would be read as a data row; set source.header: true"
            )
        return names
    if names_match:
        return first
    if _parses_as_data(first, columns, timestamp_format):
        raise ConfigError(
            f"{source_name}:1: line 1 {shown} parses as data under the declared column types, but "
            f"source.header is true, so it would be dropped as a header; set source.header: false (the file "
            f"has no header)"
        )
    if len(first) != len(names):
        raise ConfigError(
            f"{source_name}:1: the header has {len(first)} fields {shown} but the source declares "
            f"{len(names)} columns {names}; declare every column of the file, in file order, under "
            f"source.columns (or set source.header: false if line 1 is data)"
        )
    raise ConfigError(
        f"{source_name}:1: the header names {shown} but source.columns declares {names}; declare the header's "
        f"names under source.columns (any order), or set source.header: false if line 1 is data"
    )


def check_first_line(
    path: str | os.PathLike[str],
    columns: dict[str, ColumnType],
    *,
    delimiter: str,
    header: bool,
    source_name: str,
    encoding: str = "utf-8",
    quote_char: str | bool = '"',
    timestamp_format: str | None = None,
) -> None:
    """The checks `read_delimited` makes of line 1 (see `_column_order`), alone: a quick look before a long job."""
    if Path(path).stat().st_size:
        _column_order(Path(path), columns, source_name, encoding, delimiter, quote_char, header, timestamp_format)


def _consume(
    reader: pa_csv.CSVStreamingReader,
    order: list[str],
    types: dict[str, ColumnType],
    timestamp_format: str | None,
    required: Sequence[str],
    non_negative: Sequence[str],
    delimiter: str,
    max_rows: int | None,
    keep_index: bool,
    out: _Collected,
    undecodable: str | None,
) -> None:
    """Convert and check each parsed batch; `undecodable` (the reason) when the transcoder marked bad bytes."""
    for batch in reader:
        n = batch.num_rows
        if n == 0:
            continue
        strings = [batch.column(i) for i in range(batch.num_columns)]
        blank = pc.equal(strings[0], "")
        for col in strings[1:]:
            blank = pc.and_(blank, pc.equal(col, ""))
        blank = pc.fill_null(blank, False)
        converted: dict[str, pa.Array] = {}
        bad: dict[str, pa.Array] = {}
        overflow: dict[str, pa.Array] = {}
        for name, col in zip(order, strings):
            converted[name], bad[name] = parse_column(col, types[name], timestamp_format=timestamp_format)
            if types[name] == "int":
                overflow[name] = int_overflow(col, bad[name])
        typed = pa.table(converted)
        reasons = row_reasons(typed, bad, types, required, non_negative, overflow)
        if undecodable is not None:
            marked = pc.match_substring(strings[0], _BAD_BYTES)
            for col in strings[1:]:
                marked = pc.or_(marked, pc.match_substring(col, _BAD_BYTES))
            reasons = pc.if_else(pc.fill_null(marked, False), pa.scalar(undecodable), reasons)
        has_reason = pc.is_valid(reasons)
        keep = pc.and_(pc.invert(blank), pc.invert(has_reason))
        reject = pc.and_(pc.invert(blank), has_reason)
        idx = np.arange(out.parsed_rows, out.parsed_rows + n, dtype=np.int64)
        out.kept.append(typed.filter(keep))
        if keep_index:
            out.kept_index.append(idx[keep.to_numpy(zero_copy_only=False)])
        if _any(reject):
            rej = reject.to_numpy(zero_copy_only=False)
            out.reject_index.append(idx[rej])
            out.reject_reason.append(reasons.filter(reject))
            raw_fields = [c.filter(reject) for c in strings]
            raw = pc.binary_join_element_wise(*raw_fields, joiner(delimiter))
            if undecodable is not None:  # shown like any decoder shows bad bytes
                raw = pc.replace_substring(raw, _BAD_BYTES, "\ufffd")
            out.reject_raw.append(raw)
        out.parsed_rows += n
        out.data_rows += n - int(pc.sum(blank).as_py() or 0)
        if max_rows is not None and out.data_rows >= max_rows:
            break  # rows never span lines, so every skipped line before these rows is already logged


def read_delimited(
    path: str | os.PathLike[str],
    columns: dict[str, ColumnType],
    *,
    delimiter: str,
    header: bool,
    timestamp_format: str | None = None,
    required: Sequence[str] = (),
    non_negative: Sequence[str] = (),
    rejects: Rejects,
    source_name: str,
    max_rows: int | None = None,
    encoding: str = "utf-8",
    quote_char: str | bool = '"',
    line_column: str | None = None,
    block_size: int = _BLOCK_SIZE,
) -> tuple[pa.Table, int]:
    """Read a delimited text file into typed columns; bad rows go to `rejects`.

    Args:
        path: the file to read.
        columns: column name -> type, in file order (with a header naming exactly these columns, the
            header's order wins).
        delimiter: field separator; one character, or several (e.g. '::'), or `whitespace` (runs of blanks), which
            cost a transcoding pass.
        header: whether line 1 is a header (then data starts on line 2).
        timestamp_format: strptime format of timestamp columns; None = Unix seconds or ISO 8601.
        required: columns whose null value rejects the row ("missing required id: <col>").
        non_negative: columns whose negative value rejects the row ("negative value: <col>").
        rejects: the log that receives rejected rows (source = `source_name`, physical line, reason, text).
        source_name: the file path as the config gives it, used in rejects and errors.
        max_rows: read at most this many data rows (kept + rejected).
        encoding: text encoding; a line with undecodable bytes is rejected ("undecodable bytes (encoding X)").
        quote_char: CSV quote character, or False to read quotes as ordinary characters.
        line_column: if given, add an int64 column of that name holding each kept row's physical line.

    Returns:
        (table with one column per entry of `columns`, in that order, typed per ARROW_TYPES;
         rows read = kept + rejected data rows).
    """
    path = Path(path)
    names = list(columns)
    schema = pa.schema([pa.field(n, ARROW_TYPES[t]) for n, t in columns.items()])
    if not names:
        raise ConfigError(f"{source_name}: no columns declared; list the file's columns under source.columns")
    if path.stat().st_size == 0:
        return schema.empty_table(), 0
    order = _column_order(path, columns, source_name, encoding, delimiter, quote_char, header, timestamp_format)
    single = len(delimiter) == 1
    is_utf8 = codecs.lookup(encoding).name == "utf-8"
    undecodable = undecodable_reason(encoding)

    def run(transcode: bool) -> _Collected:
        out = _Collected()

        def on_invalid(row: pa_csv.InvalidRow) -> str:
            out.skipped_lines.append(row.number)
            out.skipped_text.append(row.text)
            return "skip"

        read_opts = pa_csv.ReadOptions(
            use_threads=False, column_names=order, skip_rows=1 if header else 0, block_size=block_size
        )
        parse_opts = pa_csv.ParseOptions(
            delimiter=delimiter if single else _SEP,
            quote_char=quote_char,
            invalid_row_handler=on_invalid,
            ignore_empty_lines=False,
        )
        convert_opts = pa_csv.ConvertOptions(
            column_types={n: pa.string() for n in order},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        source: str | _TranscodedFile = _TranscodedFile(path, encoding, delimiter) if transcode else str(path)
        try:
            reader = pa_csv.open_csv(
                source, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts
            )
            _consume(
                reader, order, columns, timestamp_format, required, non_negative, delimiter, max_rows,
                max_rows is not None or line_column is not None, out, undecodable if transcode else None,
            )
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                return out
            raise
        finally:
            if isinstance(source, _TranscodedFile):
                source.close()
        return out

    direct = single and is_utf8
    try:
        try:
            if direct:
                with _quiet_undecodable_rows():
                    got = run(transcode=False)
            else:
                got = run(transcode=True)
        except pa.ArrowInvalid:
            if not direct:
                raise
            # invalid UTF-8 somewhere (in a value, or in a line pyarrow cannot hand to the invalid-row handler):
            # the transcoder marks the bytes and their lines are rejected
            got = run(transcode=True)
    except pa.ArrowInvalid as exc:
        raise ConfigError(
            f"{source_name}: cannot be read as delimited text ({exc}); check that it is a text file (not "
            f"binary or compressed) and that the source's type, delimiter and encoding match it"
        ) from None
    return _finish(got, schema, delimiter, single, header, max_rows, line_column, rejects, source_name, undecodable)


def _finish(
    got: _Collected,
    schema: pa.Schema,
    delimiter: str,
    single: bool,
    header: bool,
    max_rows: int | None,
    line_column: str | None,
    rejects: Rejects,
    source_name: str,
    undecodable: str,
) -> tuple[pa.Table, int]:
    first_line = 2 if header else 1
    skipped = np.asarray(got.skipped_lines, dtype=np.int64)
    skipped_text = pa.array(got.skipped_text, pa.string())
    if not single and len(skipped_text):
        skipped_text = pc.replace_substring(skipped_text, _SEP, joiner(delimiter))
    table = (
        pa.concat_tables(got.kept).select(schema.names).cast(schema)
        if got.kept
        else schema.empty_table()
    )
    rej_idx = np.concatenate(got.reject_index) if got.reject_index else np.zeros(0, np.int64)
    rej_lines = kept_line_numbers(rej_idx, skipped, first_line)
    rej_reason = pa.concat_arrays(got.reject_reason) if got.reject_reason else _null_str(0)
    rej_raw = pa.concat_arrays(got.reject_raw) if got.reject_raw else _null_str(0)
    kept_lines = np.zeros(0, np.int64)
    if got.kept_index:
        kept_lines = kept_line_numbers(np.concatenate(got.kept_index), skipped, first_line)
    if max_rows is not None:
        data_lines = np.sort(np.concatenate([kept_lines, rej_lines, skipped]))
        if len(data_lines) > max_rows:
            cutoff = data_lines[max_rows - 1]
            n_kept = int(np.searchsorted(kept_lines, cutoff, side="right"))
            table, kept_lines = table.slice(0, n_kept), kept_lines[:n_kept]
            keep_rej = rej_lines <= cutoff
            rej_lines = rej_lines[keep_rej]
            rej_reason, rej_raw = rej_reason.filter(keep_rej), rej_raw.filter(keep_rej)
            keep_skip = skipped <= cutoff
            skipped, skipped_text = skipped[keep_skip], skipped_text.filter(pa.array(keep_skip))
    if line_column is not None:
        table = table.append_column(pa.field(line_column, pa.int64()), pa.array(kept_lines, pa.int64()))
    skipped_reason: str | pa.Array = WRONG_FIELD_COUNT
    marked = pc.fill_null(pc.match_substring(skipped_text, _BAD_BYTES), False)
    if len(skipped_text) and _any(marked):  # bad bytes that also broke the field count: the bytes are the cause
        skipped_reason = pc.if_else(marked, pa.scalar(undecodable), pa.scalar(WRONG_FIELD_COUNT))
        skipped_text = pc.replace_substring(skipped_text, _BAD_BYTES, "\ufffd")
    rejects.add(source_name, skipped, skipped_reason, skipped_text)
    rejects.add(source_name, rej_lines, rej_reason, rej_raw)
    return table, table.num_rows + len(skipped) + len(rej_lines)
