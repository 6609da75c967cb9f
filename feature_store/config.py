"""Typed configuration: the strict base model, YAML loading with precise errors, and the feature-store sections.

Every config object is a pydantic model that forbids unknown keys. `load_config` reads a YAML file, applies
command-line overrides (dotted key paths), validates, and raises `ConfigError` whose message names the file,
the line, the key path and what was expected. Relative paths in a config are relative to the working
directory the command runs in (the project root in the shipped configs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration problem; the message names file, line, key path and the fix."""


class StrictModel(BaseModel):
    """Base of every config object: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------------- sources


ColumnType = Literal["string", "int", "float", "timestamp", "bool"]


class LabelRule(StrictModel):
    """How a label column is derived from a raw column: `>= threshold` or membership in `positive_values`."""

    column: str
    threshold: float | None = None
    positive_values: list[str] | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> LabelRule:
        if (self.threshold is None) == (self.positive_values is None):
            raise ValueError("give exactly one of 'threshold' or 'positive_values'")
        return self


class SyntheticSource(StrictModel):
    """The built-in generator: users, items, contexts, impressions with known click probability, purchases."""

    type: Literal["synthetic"] = "synthetic"
    n_users: int = Field(20_000, gt=0)
    n_items: int = Field(5_000, gt=0)
    n_impressions: int = Field(1_000_000, gt=0)
    n_categories: int = Field(24, gt=1)
    n_brands: int = Field(200, gt=1)
    n_regions: int = Field(12, gt=1)
    latent_dim: int = Field(8, gt=0)
    days: int = Field(30, gt=0)
    start_date: str = "2026-01-01"

    @field_validator("start_date", mode="before")
    @classmethod
    def _date_text(cls, v: object) -> object:
        return v.isoformat() if hasattr(v, "isoformat") else v  # YAML reads an unquoted 2026-01-01 as a date
    base_logit: float = -2.2
    interaction_scale: float = 1.2
    position_bias: float = 0.35
    purchase_rate: float = Field(0.12, ge=0, le=1)
    seed: int = 7


class TableSource(StrictModel):
    """A generic CSV/TSV/Parquet event log whose columns and types are named here (in file order for text)."""

    type: Literal["csv", "tsv", "parquet"]
    path: str
    columns: dict[str, ColumnType]
    header: bool = True
    delimiter: str | None = None
    timestamp_format: str | None = None
    required: list[str] = Field(default_factory=list)
    non_negative: list[str] = Field(default_factory=list)
    label: LabelRule | None = None

    @model_validator(mode="after")
    def _known_columns(self) -> TableSource:
        for key in ("required", "non_negative"):
            unknown = [c for c in getattr(self, key) if c not in self.columns]
            if unknown:
                raise ValueError(f"{key} names columns not declared under 'columns': {unknown}")
        return self


class MovieLensSource(StrictModel):
    """MovieLens 100K (u.data/u.user/u.item) or 1M ('::' separated ratings/users/movies.dat) directory."""

    type: Literal["movielens"]
    path: str
    rating_threshold: float = 4.0


class CriteoSource(StrictModel):
    """Criteo display-ads TSV: label, I1-I13 integers, C1-C26 hex strings; empty fields are missing."""

    type: Literal["criteo"]
    path: str
    max_rows: int | None = Field(None, gt=0)


class TransactionsSource(StrictModel):
    """Transaction lines (Online Retail style), CSV or Parquet; the column names map to the canonical ones."""

    type: Literal["transactions"]
    path: str
    invoice_column: str = "InvoiceNo"
    item_column: str = "StockCode"
    quantity_column: str = "Quantity"
    price_column: str = "UnitPrice"
    customer_column: str = "CustomerID"
    timestamp_column: str = "InvoiceDate"
    extra_columns: dict[str, str] = Field(default_factory=lambda: {"Description": "description", "Country": "country"})
    timestamp_format: str | None = None
    missing_customer_values: list[str] = Field(default_factory=lambda: ["0", "0.0", ""])
    allow_negative_quantity: bool = False


Source = Annotated[
    SyntheticSource | TableSource | MovieLensSource | CriteoSource | TransactionsSource,
    Field(discriminator="type"),
]


# -------------------------------------------------------------------------------------------------- features


class CategoricalFeature(StrictModel):
    """A single-valued id: vocabulary fitted on train (index 0 = OOV/missing) or hashed into buckets."""

    name: str
    column: str | None = None
    min_freq: int = Field(1, ge=1)
    max_vocab: int | None = Field(None, gt=0)
    hash_buckets: int | None = Field(None, gt=0)
    embedding_dim: int | None = Field(None, gt=0)

    @property
    def source_column(self) -> str:
        return self.column or self.name


class NumericFeature(StrictModel):
    """A scalar: log1p / standardize / both / quantile buckets (then it is embedded like a categorical)."""

    name: str
    column: str | None = None
    transform: Literal["none", "log1p", "standardize", "log1p_standardize", "bucketize"] = "standardize"
    buckets: int = Field(10, ge=2)
    fill: float | None = None
    embedding_dim: int | None = Field(None, gt=0)

    @property
    def source_column(self) -> str:
        return self.column or self.name


class MultiValuedFeature(StrictModel):
    """A bag of ids (genres, tags): a list column or a string split on `separator`; pooled embedding bag."""

    name: str
    column: str | None = None
    separator: str | None = "|"
    max_len: int = Field(10, gt=0)
    min_freq: int = Field(1, ge=1)
    embedding_dim: int | None = Field(None, gt=0)

    @property
    def source_column(self) -> str:
        return self.column or self.name


class SequenceFeature(StrictModel):
    """A user's last `max_len` values of `source` strictly before the event time, encoded with its vocabulary."""

    name: str
    source: str = Field(description="categorical feature whose column and vocabulary the sequence uses")
    max_len: int = Field(20, gt=0)
    positive_only: bool = True


class VectorFeature(StrictModel):
    """A fixed-length float vector (e.g. category affinity weights), passed through as float32."""

    name: str
    column: str | None = None
    dim: int | None = Field(None, gt=0, description="vector width; None = taken from the train data")

    @property
    def source_column(self) -> str:
        return self.column or self.name


class FeaturesConfig(StrictModel):
    """Which raw columns become which model inputs; the feature spec is fitted from this on the train split."""

    label: str
    timestamp: str = "ts"
    user_key: str = "user_id"
    item_key: str = "item_id"
    categorical: list[CategoricalFeature] = Field(default_factory=list)
    numeric: list[NumericFeature] = Field(default_factory=list)
    multi_valued: list[MultiValuedFeature] = Field(default_factory=list)
    sequence: list[SequenceFeature] = Field(default_factory=list)
    vector: list[VectorFeature] = Field(default_factory=list)
    passthrough: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_and_linked(self) -> FeaturesConfig:
        names = [f.name for group in self.feature_groups() for f in group]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature names must be unique; repeated: {dupes}")
        cats = {f.name for f in self.categorical}
        for seq in self.sequence:
            if seq.source not in cats:
                raise ValueError(f"sequence feature '{seq.name}': source '{seq.source}' is not a categorical feature")
        return self

    def feature_groups(self) -> tuple[list[Any], ...]:
        return (self.categorical, self.numeric, self.multi_valued, self.sequence, self.vector)


class SplitConfig(StrictModel):
    """Random (optionally grouped, e.g. by user) or time-ordered train/valid/test split."""

    method: Literal["random", "time"] = "random"
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 42
    group_by: str | None = None

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("valid_fraction + test_fraction must be below 1")
        if self.method == "time" and self.group_by:
            raise ValueError("group_by applies to the random split only")
        return self


# ---------------------------------------------------------------------------------------- offline / online


class EntityConfig(StrictModel):
    """An entity feature table (users, items) joined point-in-time onto the events."""

    table: str = Field(description="name of the table the source provides, e.g. 'users'")
    key: str
    timestamp: str | None = Field(None, description="column with the time each row became valid; None = static")
    ttl_days: float | None = Field(None, gt=0)
    features: list[str]

    @model_validator(mode="after")
    def _ttl_needs_time(self) -> EntityConfig:
        if self.ttl_days is not None and self.timestamp is None:
            raise ValueError("ttl_days needs 'timestamp' (a static table has no age to expire)")
        return self


class ProfilesConfig(StrictModel):
    """Precision-marketing user profiles (RFM + category affinity), computed as daily point-in-time snapshots."""

    enabled: bool = False
    table: str = Field("purchases", description="table of monetary events (purchases / transactions)")
    user_key: str = "user_id"
    amount: str = "revenue"
    category: str | None = Field("category", description="column (after joins) for affinity; None disables")
    category_table: str | None = Field("items", description="table that maps item_key to category, if needed")
    item_key: str = "item_id"
    ttl_days: float | None = Field(None, gt=0)
    n_categories: int | None = Field(None, gt=0, description="affinity vector width; default: all train categories")


class SQLiteOnlineStoreConfig(StrictModel):
    type: Literal["sqlite"] = "sqlite"
    path: str | None = Field(None, description="default: <output_dir>/online.db")


class RedisOnlineStoreConfig(StrictModel):
    type: Literal["redis"]
    url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "recforge"


OnlineStoreConfig = Annotated[SQLiteOnlineStoreConfig | RedisOnlineStoreConfig, Field(discriminator="type")]


class PrepareConfig(StrictModel):
    """How `recforge prepare` runs: where Ray is, how much of it, output sharding, reject tolerance."""

    ray_address: str | None = None
    num_cpus: int | None = Field(None, gt=0)
    batch_rows: int = Field(131_072, gt=0)
    max_reject_fraction: float = Field(0.05, ge=0, le=1)

    @field_validator("ray_address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return v or None


# -------------------------------------------------------------------------------------------------- loading


def _yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map every key path in a YAML document to its 1-based line number."""
    out: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                out[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, str(i)))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return out
    if root is not None:
        walk(root, ())
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value parsed as YAML scalar/flow)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected KEY.PATH=VALUE, e.g. prepare.num_cpus=2")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{item}': value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[tuple[list[str], Any]]) -> dict[str, Any]:
    """Set dotted key paths in a nested dict (creating mappings as needed); list items by index."""
    for path, value in overrides:
        try:
            _set_path(data, path, value)
        except (IndexError, ValueError, TypeError) as exc:
            raise ConfigError(f"override '{'.'.join(path)}': no such position in the config ({exc})") from None
    return data


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = data
    for part in path[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if not isinstance(node.get(part), dict | list):
            node[part] = {}
        node = node[part]
    if isinstance(node, list):
        node[int(path[-1])] = value
    else:
        node[path[-1]] = value


def _format_errors(exc: ValidationError, source: str, lines: Mapping[tuple[str, ...], int]) -> str:
    msgs = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        # drop discriminator tags pydantic inserts (e.g. 'synthetic') so the path matches the YAML
        path = tuple(p for p in loc if p not in _DISCRIMINATOR_TAGS)
        line = None
        probe = path
        while probe and line is None:
            line = lines.get(probe)
            probe = probe[:-1]
        where = f"{source}:{line}" if line else source
        dotted = ".".join(path) or "<top level>"
        kind = err["type"]
        if kind == "extra_forbidden":
            hint = "unknown key; remove it or check its spelling against docs/config.md"
        elif kind == "missing":
            hint = "required key is missing"
        else:
            got = err.get("input")
            shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
            hint = f"{err['msg']} (got {shown})"
        msgs.append(f"{where}: {dotted}: {hint}")
    return "invalid configuration:\n  " + "\n  ".join(msgs)


_DISCRIMINATOR_TAGS = {"synthetic", "csv", "tsv", "parquet", "movielens", "criteo", "transactions", "sqlite", "redis"}


def load_config(
    path: str | os.PathLike[str] | None,
    model: type[M],
    overrides: Iterable[str] = (),
    data: dict[str, Any] | None = None,
) -> M:
    """Load YAML `path` (or `data`), apply `KEY.PATH=VALUE` overrides, validate against `model`."""
    source = str(path) if path is not None else "<config>"
    text = ""
    if data is None:
        if path is None:
            raise ConfigError("no config given: pass --config FILE (see configs/)")
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found; pass an existing YAML file, e.g. configs/demo.yaml")
        text = p.read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{source}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}")
    data = apply_overrides(data, (parse_override(o) for o in overrides))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, _yaml_lines(text))) from None


def dump_config(cfg: BaseModel, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config (defaults filled in) as YAML next to an output."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return out


def require_path(value: str, key: str, *, kind: Literal["file", "dir", "any"] = "any") -> Path:
    """Check that a configured path exists; error names the key and what to do."""
    p = Path(value)
    ok = p.is_file() if kind == "file" else p.is_dir() if kind == "dir" else p.exists()
    if not ok:
        what = {"file": "file", "dir": "directory", "any": "file or directory"}[kind]
        raise ConfigError(f"{key}: {what} '{value}' does not exist; fix the path (relative paths start at the "
                          f"directory you run recforge from)")
    return p


# ------------------------------------------------------------------------------------------------ the job


class FeatureStoreConfig(StrictModel):
    """The sections the feature store reads; `recforge.config.RecForgeConfig` extends it with later stages."""

    name: str
    output_dir: str = Field(description="where every output of this scenario goes (relative to the cwd)")
    seed: int = 42
    source: Source
    features: FeaturesConfig
    split: SplitConfig = Field(default_factory=SplitConfig)
    entities: dict[str, EntityConfig] = Field(default_factory=dict)
    profiles: ProfilesConfig = Field(default_factory=ProfilesConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    online_store: OnlineStoreConfig = Field(default_factory=SQLiteOnlineStoreConfig)
