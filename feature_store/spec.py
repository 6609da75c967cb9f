"""The feature spec: transforms fitted on the train split, saved as versioned JSON + vocabulary Parquet.

`feature_store.spec_fit.SpecFitter` computes mergeable partial statistics per batch (so Ray Data can fit in
parallel) and merges them into a `FeatureSpec`. `FeatureSpec.transform` turns raw rows (an Arrow table, one
dict, or a list of dicts) into model inputs with columnar pyarrow/numpy operations; the batch pipeline and the
online path call the same function, so the same raw row always becomes the same tensors. Output columns:

- categorical / bucketized numeric: int64 index (0 = out-of-vocabulary or missing);
- numeric: float32; vector: list<float32> of fixed width;
- multi-valued and sequence: list<int64> (sequences keep the most recent `max_len`, most recent last);
- `label` float32 (when the input has the label column) and the passthrough columns unchanged;
- the raw entity keys and event time, unchanged, as `__user_key`, `__item_key`, `__ts` (when the input has them):
  never model inputs, they identify each row for per-user evaluation (retrieval) and lineage.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SPEC_FORMAT = "recforge.feature_spec"
SPEC_VERSION = 1
LABEL = "label"
USER_KEY, ITEM_KEY, TS_KEY = "__user_key", "__item_key", "__ts"


class SpecError(ValueError):
    """Raw input does not fit the spec (missing column, wrong width); the message names the feature."""


# ------------------------------------------------------------------------------------------- feature entries


@dataclass
class CategoricalEntry:
    name: str
    column: str
    cardinality: int  # embedding rows, index 0 included
    embedding_dim: int | None = None
    hash_buckets: int | None = None
    vocab_file: str | None = None
    kind: str = "categorical"


@dataclass
class NumericEntry:
    name: str
    column: str
    transform: str
    fill: float
    mean: float = 0.0
    std: float = 1.0
    boundaries: list[float] = field(default_factory=list)
    embedding_dim: int | None = None
    kind: str = "numeric"

    @property
    def is_bucketized(self) -> bool:
        return self.transform == "bucketize"

    @property
    def cardinality(self) -> int:
        return len(self.boundaries) + 2


@dataclass
class MultiValuedEntry:
    name: str
    column: str
    separator: str | None
    max_len: int
    cardinality: int
    embedding_dim: int | None = None
    vocab_file: str | None = None
    kind: str = "multi_valued"


@dataclass
class SequenceEntry:
    name: str
    column: str
    source: str
    max_len: int
    cardinality: int
    kind: str = "sequence"


@dataclass
class VectorEntry:
    name: str
    column: str
    dim: int
    kind: str = "vector"


Entry = CategoricalEntry | NumericEntry | MultiValuedEntry | SequenceEntry | VectorEntry
_ENTRY_TYPES: dict[str, type] = {
    "categorical": CategoricalEntry,
    "numeric": NumericEntry,
    "multi_valued": MultiValuedEntry,
    "sequence": SequenceEntry,
    "vector": VectorEntry,
}


# ------------------------------------------------------------------------------------------------ helpers


def _column(table: pa.Table, name: str, feature: str) -> pa.Array:
    if name not in table.column_names:
        raise SpecError(
            f"feature '{feature}' needs raw column '{name}', which the input lacks "
            f"(has: {', '.join(table.column_names)})"
        )
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _as_list(arr: pa.Array, separator: str | None) -> pa.Array:
    """A multi-valued raw column as list<...>: lists pass, strings are split on `separator`."""
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        return arr.cast(pa.list_(arr.type.value_type)) if not pa.types.is_list(arr.type) else arr
    if pa.types.is_null(arr.type):
        return pa.array([[] for _ in range(len(arr))], pa.list_(pa.string()))
    if separator is None:
        raise SpecError("a multi-valued string column needs 'separator' in its feature config")
    strs = arr.cast(pa.string())
    split = pc.split_pattern(strs, pattern=separator)
    # '' -> [''] -> drop empty tokens
    flat = pc.list_flatten(split)
    keep = pc.not_equal(flat, "")
    return _filter_list_values(split, keep)


def _filter_list_values(lists: pa.Array, keep: pa.Array) -> pa.Array:
    """Drop flattened values where `keep` is false, rebuilding list offsets (nulls become empty lists)."""
    lists = pc.fill_null(lists, pa.scalar([], lists.type)) if lists.null_count else lists
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    keep_np = np.asarray(pc.fill_null(keep, False).to_numpy(zero_copy_only=False), dtype=bool)
    owners = np.repeat(np.arange(len(lengths)), lengths)
    new_len = np.bincount(owners[keep_np], minlength=len(lengths))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(new_len, out=offsets[1:])
    values = pc.filter(pc.list_flatten(lists), keep_np)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


DENSE_LOOKUP_MAX_ID = 1 << 24  # integer vocabularies with ids below this use an array lookup (<= 64 MiB)


def _dense_table(vocab: pa.Array) -> np.ndarray | None:
    """For a vocabulary of small non-negative integers: a table id -> index (int32), else None."""
    if not pa.types.is_integer(vocab.type) or len(vocab) == 0 or vocab.null_count:
        return None
    ids = vocab.to_numpy()
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= DENSE_LOOKUP_MAX_ID or hi > 64 * len(ids) + 1024:
        return None
    table = np.zeros(hi + 1, dtype=np.int32)
    table[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return table


def _lookup(values: pa.Array, vocab: pa.Array, dense: np.ndarray | None = None) -> np.ndarray:
    """Vocabulary index of each value (1-based), 0 for out-of-vocabulary or null."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    if pa.types.is_null(values.type):
        return np.zeros(len(values), dtype=np.int64)
    if dense is not None and pa.types.is_integer(values.type):
        ids = pc.fill_null(values, -1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        ok = (ids >= 0) & (ids < len(dense))
        out = np.zeros(len(ids), dtype=np.int64)
        out[ok] = dense[ids[ok]]
        return out
    if values.type != vocab.type:
        values = _coerce(values, vocab.type)
    idx = pc.index_in(values, value_set=vocab)
    out = pc.fill_null(pc.add(idx.cast(pa.int64()), 1), 0)
    return out.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _coerce(values: pa.Array, target: pa.DataType) -> pa.Array:
    """Cast raw values to the vocabulary's type; values that cannot be cast become null (so OOV)."""
    try:
        return values.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    as_str = values.cast(pa.string())
    if pa.types.is_integer(target):
        ok = pc.fill_null(pc.match_substring_regex(as_str, r"^\s*[-+]?\d+\s*$"), False)
        cleaned = pc.if_else(ok, pc.utf8_trim_whitespace(as_str), pa.scalar(None, pa.string()))
        return cleaned.cast(target)
    return as_str.cast(target) if pa.types.is_string(target) else pa.nulls(len(values), target)


def _hash_index(values: pa.Array, buckets: int) -> np.ndarray:
    """Stable hash bucket (1..buckets) of each value's text; 0 for null."""
    if pa.types.is_null(values.type):
        return np.zeros(len(values), dtype=np.int64)
    text = values.cast(pa.string())
    valid = pc.is_valid(text).to_numpy(zero_copy_only=False)
    filled = pc.fill_null(text, "").to_numpy(zero_copy_only=False).astype(object)
    h = pd.util.hash_array(filled, categorize=True)
    out = (h % np.uint64(buckets)).astype(np.int64) + 1
    out[~valid] = 0
    return out


def _to_float(arr: pa.Array) -> np.ndarray:
    if pa.types.is_null(arr.type):
        return np.full(len(arr), np.nan)
    if not (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type)):
        arr = _coerce(arr, pa.float64())
    return pc.fill_null(arr.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)


def _rows_to_table(data: pa.Table | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, Mapping):
        return pa.Table.from_pylist([dict(data)])
    return pa.Table.from_pylist([dict(r) for r in data])


def _log1p(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.clip(x, 0.0, None))


# -------------------------------------------------------------------------------------------------- spec


@dataclass
class FeatureSpec:
    """Fitted transforms for every model input; see the module docstring for the output layout."""

    label: str
    timestamp: str
    user_key: str
    item_key: str
    features: list[Entry]
    passthrough: list[str]
    vocabs: dict[str, pa.Array]
    train_rows: int = 0
    created_at: float = field(default_factory=time.time)
    version: int = SPEC_VERSION
    _dense: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False, compare=False)
    _rows: dict[str, _RowVocab] = field(default_factory=dict, repr=False, compare=False)
    _by_name: dict[str, Entry] = field(default_factory=dict, repr=False, compare=False)

    def _vocab_lookup(self, values: pa.Array, name: str) -> np.ndarray:
        if name not in self._dense:
            self._dense[name] = _dense_table(self.vocabs[name])
        return _lookup(values, self.vocabs[name], self._dense[name])

    # -------------------------------------------------------------------------------------- access

    def feature(self, name: str) -> Entry:
        if len(self._by_name) != len(self.features):
            self._by_name.clear()
            self._by_name.update((f.name, f) for f in self.features)
        got = self._by_name.get(name)
        if got is None:
            raise KeyError(f"no feature '{name}' in the spec (has: {[f.name for f in self.features]})")
        return got

    def by_kind(self, kind: str) -> list[Any]:
        return [f for f in self.features if f.kind == kind]

    def sparse_features(self) -> list[CategoricalEntry | NumericEntry]:
        """Single-valued embedded inputs: categoricals and bucketized numerics, in spec order."""
        return [f for f in self.features if f.kind == "categorical" or (f.kind == "numeric" and f.is_bucketized)]

    def dense_features(self) -> list[NumericEntry]:
        return [f for f in self.features if f.kind == "numeric" and not f.is_bucketized]

    def vocab_sizes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.features:
            embedded = isinstance(f, CategoricalEntry | MultiValuedEntry | SequenceEntry)
            if embedded or (isinstance(f, NumericEntry) and f.is_bucketized):
                out[f.name] = f.cardinality
        return out

    def raw_columns(self) -> list[str]:
        """Raw columns `transform` reads (besides the optional label and passthrough)."""
        return list(dict.fromkeys(f.column for f in self.features))

    def output_schema(self) -> pa.Schema:
        fields: list[pa.Field] = []
        for f in self.features:
            if isinstance(f, CategoricalEntry) or (isinstance(f, NumericEntry) and f.is_bucketized):
                fields.append(pa.field(f.name, pa.int64()))
            elif isinstance(f, NumericEntry):
                fields.append(pa.field(f.name, pa.float32()))
            elif isinstance(f, MultiValuedEntry | SequenceEntry):
                fields.append(pa.field(f.name, pa.list_(pa.int64())))
            else:
                fields.append(pa.field(f.name, pa.list_(pa.float32())))
        return pa.schema(fields)

    # -------------------------------------------------------------------------------------- transform

    def transform(
        self, data: pa.Table | Mapping[str, Any] | Sequence[Mapping[str, Any]], *, with_label: bool | None = None,
        features: Sequence[str] | None = None,
    ) -> pa.Table:
        """Raw rows -> model inputs. The label is emitted when present (or required with with_label=True).
        `features` limits the output to those features (e.g. one tower's), so only their raw columns are needed."""
        table = _rows_to_table(data)
        n = table.num_rows
        names: list[str] = []
        arrays: list[pa.Array] = []
        wanted = self.features if features is None else [self.feature(name) for name in features]
        for f in wanted:
            names.append(f.name)
            arrays.append(self._transform_one(f, table, n))
        has_label = self.label in table.column_names
        if with_label and not has_label:
            raise SpecError(f"label column '{self.label}' is missing from the input")
        if has_label and with_label is not False:
            names.append(LABEL)
            arrays.append(pa.array(_to_float(_column(table, self.label, LABEL)).astype(np.float32)))
        for col in self.passthrough:
            if col in table.column_names:
                names.append(col)
                arrays.append(_column(table, col, col))
        for out_name, col in self.key_columns().items():
            if col in table.column_names:
                names.append(out_name)
                arrays.append(_column(table, col, col))
        return pa.Table.from_arrays(arrays, names=names)

    def key_columns(self) -> dict[str, str]:
        """Output name -> raw column of the row keys `transform` carries along (user, item, event time)."""
        return {USER_KEY: self.user_key, ITEM_KEY: self.item_key, TS_KEY: self.timestamp}

    def _transform_one(self, f: Entry, table: pa.Table, n: int) -> pa.Array:
        if isinstance(f, CategoricalEntry):
            col = _column(table, f.column, f.name)
            idx = _hash_index(col, f.hash_buckets) if f.hash_buckets else self._vocab_lookup(col, f.name)
            return pa.array(idx, pa.int64())
        if isinstance(f, NumericEntry):
            x = _numeric(f, _to_float(_column(table, f.column, f.name)))
            return pa.array(x, pa.int64() if f.is_bucketized else pa.float32())
        if isinstance(f, MultiValuedEntry):
            lists = _as_list(_column(table, f.column, f.name), f.separator)
            lists = pc.list_slice(lists, 0, f.max_len)
            return self._encode_lists(lists, f.name)
        if isinstance(f, SequenceEntry):
            lists = _as_list(_column(table, f.column, f.name), None)
            lists = _keep_last(lists, f.max_len)
            source = self.feature(f.source)
            assert isinstance(source, CategoricalEntry)
            if source.hash_buckets:
                flat = pc.list_flatten(lists)
                codes = _hash_index(flat, source.hash_buckets)
                return _rebuild(lists, codes)
            return self._encode_lists(lists, f.source)
        col = _column(table, f.column, f.name)
        return _vector(col, f.dim, f.name)

    def transform_row(self, values: Mapping[str, Any], features: Sequence[str]) -> dict[str, Any]:
        """One raw row (raw column -> value; an absent column is null) -> the model inputs of `features`, equal
        to `transform` of the same row as a one-row table: an int (categorical, bucketized numeric), a float32
        (numeric), an int64 array (multi-valued, sequence: the kept ids), a float32 array (vector).

        The values the online path carries (None, int, float, str and lists of one of them, as JSON decodes
        them) are transformed here without Arrow arrays; a value of any other type or shape goes through the
        Arrow transform for its feature alone, so coercions and errors stay those of `transform`. Why: on a new
        user, the one-row Arrow transform was about half of the fast /recommend path's user-side work (0.5-0.6
        ms of per-column kernel calls for nine features; docs/benchmarks.md, Serving); equality with `transform`
        is tested value type by value type (tests/feature_store/test_transform_row.py)."""
        out: dict[str, Any] = {}
        for name in features:
            f = self.feature(name)
            value = values.get(f.column)
            got = self._row_one(f, value)
            if got is _ARROW:
                arr = self._transform_one(f, pa.table({f.column: pa.array([value])}), 1)
                got = _row_output(f, arr)
            out[name] = got
        return out

    def _row_vocab(self, name: str) -> _RowVocab:
        got = self._rows.get(name)
        if got is None:
            if name not in self._dense:
                self._dense[name] = _dense_table(self.vocabs[name])
            got = self._rows[name] = _RowVocab.of(self.vocabs[name], self._dense[name])
        return got

    def _row_one(self, f: Entry, value: Any) -> Any:
        """`transform_row`'s value for one feature, or `_ARROW` where the Arrow path must decide."""
        if isinstance(f, CategoricalEntry):
            if value is None:
                return 0
            return _hash_one(value, f.hash_buckets) if f.hash_buckets else self._row_vocab(f.name).code(value)
        if isinstance(f, NumericEntry):
            x = _float_one(value)
            if x is None:
                return _ARROW
            out = _numeric(f, np.array([x]))[0]
            return int(out) if f.is_bucketized else out
        if isinstance(f, MultiValuedEntry | SequenceEntry):
            if value is None:
                return np.zeros(0, np.int64)
            if type(value) is not list:
                return _ARROW
            kept = value[-f.max_len:] if isinstance(f, SequenceEntry) else value[: f.max_len]
            if not _same_type(value):  # Arrow types the whole list (and refuses a mix) before slicing it
                return _ARROW
            source = self.feature(f.source) if isinstance(f, SequenceEntry) else f
            if isinstance(source, CategoricalEntry) and source.hash_buckets:
                codes = [_hash_one(v, source.hash_buckets) if v is not None else 0 for v in kept]
            else:
                vocab = self._row_vocab(source.name)
                codes = [vocab.code(v) if v is not None else 0 for v in kept]
            if any(c is _ARROW for c in codes):
                return _ARROW
            return np.array(codes, dtype=np.int64)
        if value is None:
            return np.zeros(f.dim, np.float32)
        if type(value) is not list or len(value) != f.dim or not all(type(v) is float for v in value):
            return _ARROW
        return np.array(value, dtype=np.float64).astype(np.float32)

    def _encode_lists(self, lists: pa.Array, vocab_name: str) -> pa.Array:
        if lists.null_count:
            lists = pc.fill_null(lists, pa.scalar([], lists.type))
        codes = self._vocab_lookup(pc.list_flatten(lists), vocab_name)
        return _rebuild(lists, codes)

    # -------------------------------------------------------------------------------------- persistence

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "version": self.version,
            "created_at": self.created_at,
            "label": self.label,
            "timestamp": self.timestamp,
            "user_key": self.user_key,
            "item_key": self.item_key,
            "train_rows": self.train_rows,
            "passthrough": self.passthrough,
            "features": [asdict(f) for f in self.features],
            "output_schema": [{"name": f.name, "type": str(f.type)} for f in self.output_schema()],
        }

    def save(self, directory: str | Path) -> Path:
        """Write feature_spec.json and vocab/<feature>.parquet (index, value) under `directory`."""
        d = Path(directory)
        (d / "vocab").mkdir(parents=True, exist_ok=True)
        for name, vocab in self.vocabs.items():
            table = pa.table({"index": pa.array(np.arange(1, len(vocab) + 1, dtype=np.int64)), "value": vocab})
            pq.write_table(table, d / "vocab" / f"{name}.parquet")
        doc = self.to_json_dict()
        doc["fingerprint"] = self.fingerprint()
        path = d / "feature_spec.json"
        path.write_text(json.dumps(doc, indent=2, sort_keys=False))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> FeatureSpec:
        d = Path(directory)
        path = d / "feature_spec.json" if d.is_dir() else d
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no feature spec here; run `recforge prepare` first")
        doc = json.loads(path.read_text())
        if doc.get("format") != SPEC_FORMAT:
            raise SpecError(f"{path}: not a RecForge feature spec (format={doc.get('format')!r})")
        if doc["version"] > SPEC_VERSION:
            raise SpecError(f"{path}: spec version {doc['version']} is newer than this RecForge ({SPEC_VERSION})")
        features: list[Entry] = []
        for item in doc["features"]:
            features.append(_ENTRY_TYPES[item["kind"]](**item))
        vocabs: dict[str, pa.Array] = {}
        for f in features:
            vocab_file = getattr(f, "vocab_file", None)
            if vocab_file:
                vocabs[f.name] = pq.read_table(path.parent / vocab_file).column("value").combine_chunks()
        spec = cls(
            label=doc["label"],
            timestamp=doc["timestamp"],
            user_key=doc["user_key"],
            item_key=doc["item_key"],
            features=features,
            passthrough=list(doc["passthrough"]),
            vocabs=vocabs,
            train_rows=doc["train_rows"],
            created_at=doc["created_at"],
            version=doc["version"],
        )
        if "fingerprint" in doc and doc["fingerprint"] != spec.fingerprint():
            raise SpecError(f"{path}: fingerprint mismatch: the spec or its vocabulary files were modified")
        return spec

    def fingerprint(self) -> str:
        """sha256 over the transform-defining content (not the creation time)."""
        h = hashlib.sha256()
        doc = self.to_json_dict()
        doc.pop("created_at")
        h.update(json.dumps(doc, sort_keys=True).encode())
        for name in sorted(self.vocabs):
            h.update(name.encode())
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, pa.schema([pa.field("v", self.vocabs[name].type)])) as w:
                w.write_batch(pa.record_batch([self.vocabs[name]], names=["v"]))
            h.update(sink.getvalue().to_pybytes())
        return h.hexdigest()


def _numeric(f: NumericEntry, x: np.ndarray) -> np.ndarray:
    """A numeric feature's float64 raw values (NaN: missing) -> its output: bucket ids (int64) or float32."""
    if f.is_bucketized:
        idx = np.searchsorted(np.asarray(f.boundaries), x, side="right").astype(np.int64) + 1
        idx[np.isnan(x)] = 0
        return idx
    x = np.where(np.isnan(x), f.fill, x)
    if f.transform in ("log1p", "log1p_standardize"):
        x = _log1p(x)
    if f.transform in ("standardize", "log1p_standardize"):
        x = (x - f.mean) / f.std
    return x.astype(np.float32)


_ARROW: Any = object()  # transform_row: this value is left to the Arrow transform
_INT64 = (-(1 << 63), (1 << 63) - 1)
_EXACT_FLOAT_INT = 1 << 53  # Arrow refuses to cast a larger int64 to float64 (not exact)


def _same_type(values: list[Any]) -> bool:
    """Whether the non-null values of a list are all int or all str (Arrow infers one list type from them)."""
    kinds = {type(v) for v in values if v is not None}
    return kinds <= {int} or kinds <= {str}


def _float_one(value: Any) -> float | None:
    """A numeric raw value as Arrow reads it (None: NaN), or None where Arrow's coercion must decide."""
    if value is None:
        return float("nan")
    if type(value) is float:
        return value
    if type(value) is int and -_EXACT_FLOAT_INT <= value <= _EXACT_FLOAT_INT:
        return float(value)
    return None


def _hash_one(value: Any, buckets: int) -> Any:
    """`_hash_index` of one non-null value: of its text (an int's decimal digits, as Arrow casts it)."""
    if type(value) is str:
        text = value
    elif type(value) is int and _INT64[0] <= value <= _INT64[1]:
        text = str(value)
    else:
        return _ARROW
    h = pd.util.hash_array(np.array([text], dtype=object), categorize=True)
    return int(h[0] % np.uint64(buckets)) + 1


@dataclass(frozen=True)
class _RowVocab:
    """A vocabulary as `transform_row` reads it: the dense int table or a value -> index dict, for the value
    type that matches the vocabulary without a cast (int for integer vocabularies, str for string ones)."""

    kind: type | None  # int, str, or None (every value goes through Arrow)
    dense: np.ndarray | None
    index: dict[Any, int]

    @classmethod
    def of(cls, vocab: pa.Array, dense: np.ndarray | None) -> _RowVocab:
        if dense is not None:
            return cls(int, dense, {})
        if vocab.null_count == 0 and pa.types.is_int64(vocab.type):
            kind: type | None = int
        elif vocab.null_count == 0 and pa.types.is_string(vocab.type):
            kind = str
        else:
            return cls(None, None, {})
        return cls(kind, None, {v: i + 1 for i, v in enumerate(vocab.to_pylist())})

    def code(self, value: Any) -> Any:
        """The 1-based index of a non-null value (0: out of vocabulary), or `_ARROW`."""
        if type(value) is not self.kind or (self.kind is int and not _INT64[0] <= value <= _INT64[1]):
            return _ARROW
        if self.dense is not None:
            return int(self.dense[value]) if 0 <= value < len(self.dense) else 0
        return self.index.get(value, 0)


def _row_output(f: Entry, arr: pa.Array) -> Any:
    """`transform_row`'s form of a one-row output array of `_transform_one`."""
    if isinstance(f, CategoricalEntry) or (isinstance(f, NumericEntry) and f.is_bucketized):
        return int(arr.to_numpy(zero_copy_only=False)[0])
    if isinstance(f, NumericEntry):
        return arr.to_numpy(zero_copy_only=False)[0]
    values = arr[0].as_py() or []
    return np.array(values, dtype=np.float32 if isinstance(f, VectorEntry) else np.int64)


def _keep_last(lists: pa.Array, max_len: int) -> pa.Array:
    if lists.null_count:
        lists = pc.fill_null(lists, pa.scalar([], lists.type))
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    if len(lengths) == 0 or lengths.max(initial=0) <= max_len:
        return lists
    starts = np.maximum(lengths - max_len, 0)
    offsets = lists.offsets.to_numpy() - lists.offsets[0].as_py()
    flat = pc.list_flatten(lists)
    owners = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(flat)) - offsets[:-1][owners]
    keep = pos >= starts[owners]
    return _filter_list_values(lists, pa.array(keep))


def _rebuild(lists: pa.Array, codes: np.ndarray) -> pa.Array:
    offsets = lists.offsets.to_numpy()
    offsets = (offsets - offsets[0]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(codes, pa.int64()))


def _vector(col: pa.Array, dim: int, name: str) -> pa.Array:
    if pa.types.is_null(col.type):
        return pa.array(np.zeros((len(col), dim), np.float32).tolist(), pa.list_(pa.float32()))
    if col.null_count:
        col = pc.fill_null(col, pa.scalar([0.0] * dim, col.type))
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != dim).any():
        bad = int(np.flatnonzero(lengths != dim)[0])
        raise SpecError(f"vector feature '{name}': row {bad} has {lengths[bad]} values, expected {dim}")
    values = pc.list_flatten(col).cast(pa.float32())
    values = pc.fill_null(values, 0.0)
    offsets = np.arange(len(col) + 1, dtype=np.int32) * dim
    return pa.ListArray.from_arrays(pa.array(offsets), values)
