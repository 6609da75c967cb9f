"""Pseudonymisation at ingestion: user ids and personal columns become keyed HMAC-SHA256 pseudonyms where data enters.

Why at read time: every later stage (prepared splits, the offline and online stores, training batches, MLflow
artifacts, the event bus and its offline log, exposures, reports) then only ever sees pseudonyms, so no stage has
to remember to hash and no output can hold a raw id by accident. The places data enters are few: the source
readers (`read_scenario_source`), event ingestion (`POST /events`, `recforge events push`) and the user id of a
request to the serving API; all three call `Pseudonymiser`.

The key:
- comes from the environment variable named by `pseudonymisation.key_env` or the file named by
  `pseudonymisation.key_file` (mode 0600 or stricter): never from the config itself, so a config file, its
  resolved copies and the MLflow params never hold it, and it is registered with `feature_store.secrets` so no log
  line or error message can print it;
- must hold at least `pseudonymisation.min_key_bytes` bytes (32 by default: the HMAC-SHA256 block-size guidance of
  RFC 2104 asks for at least the output length); a shorter or missing key stops the command before it reads a row;
- is identified by `key_id`, an HMAC of a fixed label under the key (not the key, not reversible): prepare records
  it, serving and the clean room check that theirs matches, so data hashed under two keys is never joined or
  served by mistake.

The pseudonym: HMAC-SHA256 of the value's text (an int's decimal digits, a string's UTF-8), the first 8 bytes
read big-endian and shifted right once, so it is a non-negative int64. An integer column stays int64 and a string
column holds that number's decimal text: every column keeps its type, so configs, specs and joins are unchanged,
and `123` and `"123"` get the same pseudonym in either type. Collisions: with n ids the chance of any is about
n^2 / 2^64 (3e-8 at 1M ids, 5e-6 at 10M). Personal columns (`pseudonymisation.columns`, e.g. email, phone) are
trimmed and lower-cased before hashing (`normalise`), so two parties' lists match however each typed them.
Nulls stay null. The hash runs once per distinct value (about 1 us each: 1M distinct ids take about a second);
rows are mapped back with a columnar take.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store import secrets
from feature_store.config import ConfigError, PseudonymisationConfig

KEY_ID_LABEL = b"recforge pseudonym key id"
WITHHELD = "(withheld: pseudonymisation is on; read this line in the source file)"
METADATA_KEY = b"recforge.pseudonymised"
"""Parquet schema metadata a pseudonymised file carries: `key_id:column,column` (what was hashed, under which key)."""


class PseudonymKeyError(ConfigError):
    """The pseudonymisation key is missing, too short or not private."""


def read_key(cfg: PseudonymisationConfig) -> bytes:
    """The key bytes from `key_file` (when set) or the environment variable `key_env`, checked; registered as a
    secret so no later log line or error can print it."""
    if cfg.key_file:
        path = Path(cfg.key_file)
        if not path.is_file():
            raise PseudonymKeyError(f"pseudonymisation.key_file: {path} does not exist; write the key there (e.g. "
                                    f"`openssl rand -hex 32 > {path}; chmod 600 {path}`) or use "
                                    f"pseudonymisation.key_env")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PseudonymKeyError(f"pseudonymisation.key_file: {path} is readable by other users (mode "
                                    f"{mode:o}); run `chmod 600 {path}`")
        key = path.read_bytes().strip()
        where = f"pseudonymisation.key_file {path}"
    else:
        value = os.environ.get(cfg.key_env)
        if not value:
            raise PseudonymKeyError(f"pseudonymisation is on but the environment variable {cfg.key_env} "
                                    f"(pseudonymisation.key_env) is not set; set it to a secret of at least "
                                    f"{cfg.min_key_bytes} bytes (e.g. `export {cfg.key_env}=$(openssl rand -hex 32)`) "
                                    f"and keep it: the same key must hash every later run and the serving app")
        key = value.strip().encode("utf-8")
        where = f"the environment variable {cfg.key_env}"
    if len(key) < cfg.min_key_bytes:
        raise PseudonymKeyError(f"pseudonymisation: the key in {where} has {len(key)} bytes, fewer than "
                                f"pseudonymisation.min_key_bytes ({cfg.min_key_bytes}); use a longer random key "
                                f"(e.g. `openssl rand -hex 32`)")
    secrets.add([key.decode("utf-8", "replace")])
    return key


def key_id_of(key: bytes) -> str:
    """The key's public identifier: 16 hex digits of an HMAC of a fixed label (says which key, reveals nothing)."""
    return hmac.new(key, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def _pseudonym(key: bytes, text: str) -> int:
    digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class Pseudonymiser:
    """Keyed pseudonyms for ids and personal columns (see the module docstring)."""

    key: bytes
    columns: tuple[str, ...] = ()
    """Personal columns hashed besides the user id (normalised first)."""
    normalise: bool = True

    def __repr__(self) -> str:  # the key never reaches a log through a repr
        return f"Pseudonymiser(key_id={self.key_id}, columns={list(self.columns)})"

    @property
    def key_id(self) -> str:
        return key_id_of(self.key)

    def _text(self, v: Any, personal: bool) -> str:
        """What is hashed: the value's text, trimmed and lower-cased for personal columns (`normalise`)."""
        return str(v).strip().lower() if personal and self.normalise else str(v)

    def value(self, v: int | str, *, personal: bool = False) -> int | str:
        """One value's pseudonym, in the value's type (int -> int, str -> decimal text)."""
        p = _pseudonym(self.key, self._text(v, personal))
        return p if isinstance(v, int) and not isinstance(v, bool) else str(p)

    def array(self, arr: pa.Array | pa.ChunkedArray, *, personal: bool = False) -> pa.Array:
        """Every value's pseudonym, computed once per distinct value; the array's type is kept (integers -> int64,
        anything else -> string); nulls stay null."""
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        integer = pa.types.is_integer(arr.type)
        if not integer and not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
            arr = pc.cast(arr, pa.string())
        uniques = pc.unique(arr.drop_null())
        texts = [self._text(v, personal) for v in uniques.to_pylist()]
        hashed = np.fromiter((_pseudonym(self.key, t) for t in texts), dtype=np.int64, count=len(texts))
        idx = pc.index_in(arr, value_set=uniques)
        out = pa.array(hashed).take(idx)
        if integer:
            return out.cast(pa.int64())
        return pc.cast(out, pa.string())

    def table(self, table: pa.Table, ids: Iterable[str]) -> tuple[pa.Table, list[str]]:
        """`table` with its id columns (`ids`) and personal columns replaced by pseudonyms; also which were."""
        done: list[str] = []
        for name in table.column_names:
            personal = name in self.columns
            if not personal and name not in ids:
                continue
            out = self.array(table.column(name), personal=personal)
            table = table.set_column(table.column_names.index(name), pa.field(name, out.type), out)
            done.append(name)
        if done:
            table = mark(table, self.key_id, done)
        return table, done

    def event(self, raw: Any, id_fields: tuple[str, ...] = ("user_id",)) -> Any:
        """A raw event (as sent, before the contract checks it) with its user id and personal context values
        replaced by pseudonyms; a value that is neither an int nor a text (the contract will reject it) and any
        event that is not an object are withheld, so the dead-letter log cannot keep a raw id either."""
        if not isinstance(raw, dict):
            return WITHHELD
        out = dict(raw)
        for name in id_fields:
            if name in out:
                out[name] = self._scalar(out[name], personal=False)
        context = out.get("context")
        if isinstance(context, dict) and self.columns:
            out["context"] = {k: self._scalar(v, personal=True) if k in self.columns else v
                              for k, v in context.items()}
        return out

    def _scalar(self, v: Any, *, personal: bool) -> Any:
        if v is None:
            return None
        if isinstance(v, int | str) and not isinstance(v, bool):
            return self.value(v, personal=personal)
        return WITHHELD


_loaded: dict[tuple[Any, ...], Pseudonymiser] = {}


def cached(cfg: PseudonymisationConfig) -> Pseudonymiser | None:
    """`load`, once per process and setting (event ingestion calls it per batch)."""
    if not cfg.enabled:
        return None
    key = (cfg.key_env, cfg.key_file, cfg.min_key_bytes, tuple(cfg.columns), cfg.normalise)
    if key not in _loaded:
        _loaded[key] = load(cfg)  # type: ignore[assignment]
    return _loaded[key]


def mark(table: pa.Table, key_id: str, columns: Iterable[str]) -> pa.Table:
    """`table` with the schema metadata saying which columns hold pseudonyms under which key (kept in Parquet)."""
    meta = dict(table.schema.metadata or {})
    previous = marked(table.schema)
    cols = sorted({*columns, *(previous[1] if previous and previous[0] == key_id else ())})
    meta[METADATA_KEY] = f"{key_id}:{','.join(cols)}".encode()
    return table.replace_schema_metadata(meta)


def marked(schema: pa.Schema) -> tuple[str, list[str]] | None:
    """(key_id, columns) from a schema's pseudonymisation metadata, or None for data that was not pseudonymised."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if not raw:
        return None
    key_id, _, cols = raw.decode().partition(":")
    return key_id, [c for c in cols.split(",") if c]


def load(cfg: PseudonymisationConfig) -> Pseudonymiser | None:
    """The scenario's pseudonymiser, or None when `pseudonymisation.enabled` is false. Raises PseudonymKeyError
    (naming the setting and the fix) when the key is missing, short or readable by others."""
    if not cfg.enabled:
        return None
    return Pseudonymiser(read_key(cfg), tuple(cfg.columns), cfg.normalise)


def check_same_key(p: Pseudonymiser | None, summary: dict[str, Any] | None) -> None:
    """Refuse to serve data hashed under another key (or not hashed) with this one, or hashed data without a key:
    every request's user id would miss the stores. `summary`: the prepared data's summary (None: not known here,
    e.g. a serving host without the prepared files; nothing to compare)."""
    if summary is None:
        return
    hashed = summary.get("pseudonymised")
    if p is None and hashed:
        raise PseudonymKeyError(f"the prepared data holds pseudonyms (key id {hashed['key_id']}) but "
                                f"pseudonymisation is off: turn it on with the same key, or requests' raw ids "
                                f"will never match")
    if p is not None and not hashed:
        raise PseudonymKeyError("pseudonymisation is on but the prepared data holds raw ids: prepare again with "
                                "pseudonymisation on (then train and promote), or turn it off")
    if p is not None and hashed and hashed["key_id"] != p.key_id:
        raise PseudonymKeyError(f"the key given has id {p.key_id} but the prepared data was hashed with key id "
                                f"{hashed['key_id']}: use that key (a new key means preparing and training again)")


def pseudonymise_file(src: Path, out: Path, columns: list[str], cfg: PseudonymisationConfig) -> dict[str, Any]:
    """`recforge pseudonymise`: a party's CSV / TSV / Parquet file -> Parquet with `columns` replaced by their
    pseudonyms (trimmed and lower-cased first, as personal data) and the record of what was hashed under which key,
    which the clean room checks. Every other column is copied as it is."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if not src.is_file():
        raise ConfigError(f"{src}: no such file")
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the input file: write the pseudonymised copy elsewhere")
    suffix = src.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            table = pq.read_table(src)
        else:
            delimiter = "\t" if suffix in (".tsv", ".tab") else ","
            table = pcsv.read_csv(src, parse_options=pcsv.ParseOptions(delimiter=delimiter),
                                  convert_options=pcsv.ConvertOptions(
                                      column_types={c: pa.string() for c in columns}))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"{src}: cannot be read as {'Parquet' if suffix in ('.parquet', '.pq') else 'CSV'}: "
                          f"{exc}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ConfigError(f"{src}: no column(s) {missing} (it has {table.column_names})")
    p = Pseudonymiser(read_key(cfg), tuple(columns), cfg.normalise)
    hashed, done = p.table(table, ())
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(hashed, out)
    return {"input": str(src), "output": str(out), "rows": table.num_rows, "columns": done, "key_id": p.key_id}


def id_columns(cfg: Any) -> set[str]:
    """The columns of a scenario that hold user ids: the features' and profiles' user keys."""
    return {cfg.features.user_key, cfg.profiles.user_key}


__all__ = ["METADATA_KEY", "WITHHELD", "PseudonymKeyError", "Pseudonymiser", "cached", "check_same_key",
           "id_columns", "key_id_of", "load", "mark", "marked", "pseudonymise_file", "read_key"]
