"""Typed configuration: the strict base model, YAML loading with precise errors, and the feature-store sections.

Every config object is a pydantic model that forbids unknown keys. `load_config` reads a YAML file, applies
command-line overrides (dotted key paths), validates, and raises `ConfigError` whose message names the file,
the line, the key path and what was expected. Relative paths in a config are relative to the working
directory the command runs in (the project root in the shipped configs).

Kept as one module (about 650 lines) because `StrictModel`, `ConfigError` and `require_path` are the base of
every section here (and of every config model in training/ and serving/), while `FeatureStoreConfig` composes
all the sections: cutting out the source variants or the loader would need a third base module to avoid an
import cycle. The seam, should it grow further, is the source variants (`LabelRule` to
`TransactionsSource`) next to the base, and the YAML loading section.
"""

from __future__ import annotations

import codecs
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from feature_store.secrets import SecretUrl

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration problem; the message names file, line, key path and the fix."""


class StrictModel(BaseModel):
    """Base of every config object: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------------- sources


ColumnType = Literal["string", "int", "float", "timestamp", "bool"]


class LabelRule(StrictModel):
    """Derives a float32 `label` column from a raw column, for logs that carry a rating, a count or a status
    instead of a 0/1 label: 1.0 where `column >= threshold`, or where the value's text is one of
    `positive_values` (give exactly one of the two), else 0.0; null where `column` is null."""

    column: str = Field(description="the declared column the label is derived from")
    threshold: float | None = Field(
        None, description="label = 1.0 where the (numeric) column is >= this; exclusive with `positive_values`")
    positive_values: list[str] | None = Field(
        None, description="label = 1.0 where the column's value, as text, is one of these; exclusive with "
                          "`threshold`")

    @model_validator(mode="after")
    def _one_rule(self) -> LabelRule:
        if (self.threshold is None) == (self.positive_values is None):
            raise ValueError("give exactly one of 'threshold' or 'positive_values'")
        return self


class SyntheticSource(StrictModel):
    """The built-in generator: users, items, contexts, impressions with a known click probability, purchases.
    It needs no data set, and its true click probability gives an upper bound (the oracle AUC) that a model's
    AUC can be read against.

    Tables: `events` (impression_id, user_id, item_id, ts, channel, device, hour, position, click, p_click),
    `users` (user_id, age_band, gender, region, ts), `items` (item_id, category, brand, price, ts; several rows
    per item: a price history), `purchases` (impression_id, user_id, item_id, ts, quantity, revenue). `p_click`
    is the true click probability (for the oracle AUC; not a model input unless configured). Cached under
    `<output_dir>/raw` and reused while the generator config is unchanged.

    The click model: `logit = base_logit + user bias + item bias + interaction_scale / sqrt(latent_dim) *
    taste . vec + channel, device, hour effects - 0.35 * (log price - category mean log price) - position_bias *
    log(position)`. A user's taste is the sum of one vector per age band, gender and region plus a small
    individual part; an item's vector is one per category plus one per brand plus a small individual part. So
    most of the user x item interaction is a set of pairwise crosses of observable attributes (age band,
    gender, region x category, brand), which a CTR model can learn, and a small per-user and per-item remainder
    (biases with standard deviation 0.1 and 0.15, individual vector parts) that only id embeddings could, given
    enough rows per id. On `configs/demo.yaml` the oracle AUC is 0.771 and a model that knew every observable
    cross exactly, but nothing per id, would reach about 0.766 (the rest is that per-id remainder).
    """

    type: Literal["synthetic"] = Field("synthetic", description="selects the built-in generator")
    n_users: int = Field(20_000, gt=0, description="number of users")
    n_items: int = Field(5_000, gt=0, description="number of items")
    n_impressions: int = Field(1_000_000, gt=0, description="rows of the impression log (`events`): the main "
                                                            "knob of data size and generation time")
    n_categories: int = Field(24, gt=1, description="item categories")
    n_brands: int = Field(200, gt=1, description="item brands")
    n_regions: int = Field(12, gt=1, description="user regions")
    latent_dim: int = Field(8, gt=0, description="width of the hidden user taste and item vectors")
    days: int = Field(30, gt=0, description="time span of the log in days, from `start_date`")
    start_date: str = Field("2026-01-01", description="first day of the log (UTC), as YYYY-MM-DD")

    @field_validator("start_date", mode="before")
    @classmethod
    def _date_text(cls, v: object) -> object:
        return v.isoformat() if hasattr(v, "isoformat") else v  # YAML reads an unquoted 2026-01-01 as a date
    base_logit: float = Field(-2.2, description="intercept of the click model: sets the mean CTR (lower, fewer "
                                                "clicks)")
    interaction_scale: float = Field(1.2, description="weight of the user x item taste term: how much of the "
                                                      "click signal only feature crosses can explain")
    position_bias: float = Field(0.35, description="click penalty per log(position) of the slot")
    purchase_rate: float = Field(0.12, ge=0, le=1, description="share of clicks that become purchases (at the "
                                                               "median price; cheaper items sell more often)")
    seed: int = Field(7, description="the generator's seed (the top-level `seed` does not change the data)")
    first_user_id: int = Field(1, ge=1, le=2**62, description="id of the first user (users are numbered from it): "
                                                              "distinctive ids make raw-id scans meaningful")
    personal_columns: bool = Field(False, description="add `email` and `phone` columns to the users table (made up "
                                                      "from the id), to exercise pseudonymisation of personal data")


class TableSource(StrictModel):
    """A generic event log in CSV, TSV or Parquet whose columns and types are named here: any log can be read
    without code, and a row that does not fit the declared types is rejected (counted against
    `prepare.max_reject_fraction`) instead of failing the run.

    If no column is named `ts` and exactly one column is declared `timestamp`, it is renamed `ts`. Empty fields,
    and `NA`, `N/A`, `NaN`, `null`, `None` in non-string columns, are nulls. Values that do not parse reject the
    row (`unparsable number: <col>`, `unparsable timestamp: <col>`; an integer beyond int64, past
    9223372036854775807, in an `int` column is `unparsable number: <col> (integer beyond int64)`: declare such
    ids `string`); a line with the wrong number of fields is rejected as `wrong field count`, a line with bytes
    that do not decode in `encoding` as `undecodable bytes (encoding <name>)`.

    Text with `header: true` must have a line 1 naming exactly the declared columns; a line 1 that names other
    columns, or that parses as data, stops `prepare` (exit 2) instead of being dropped. With `header: false`,
    a line 1 naming exactly the declared columns stops it too. A file without data rows, and a Parquet file
    that cannot be opened, stop it with a message naming the file.
    """

    type: Literal["csv", "tsv", "parquet"] = Field(description="the file format (tsv: tab-separated text)")
    path: str = Field(description="the file")
    columns: dict[str, ColumnType] = Field(
        description="every column of the file and its type; for text without a header, in file order; with a "
                    "header naming exactly these columns, the header's order wins")
    header: bool = Field(True, description="text only: line 1 is a header naming exactly the declared columns "
                                           "(checked: a line 1 that differs, or parses as data, is an error)")
    delimiter: str | None = Field(None, description="text only; null = `,` for csv, tab for tsv; several "
                                                    "characters (e.g. `::`) allowed; `whitespace` = aligned columns "
                                                    "(runs of spaces and tabs, leading ones ignored)")
    encoding: str = Field("utf-8", description="text only: the files' text encoding (`latin-1`, `cp1252`, any "
                                               "Python codec name); a line with bytes it cannot decode is "
                                               "rejected")
    timestamp_format: str | None = Field(
        None, description="strptime format of timestamp columns; null = Unix seconds or ISO 8601. Times without a "
                          "zone are UTC")
    required: list[str] = Field(default_factory=list, description="a null value rejects the row (`missing "
                                                                  "required id: <col>`); declared columns only")
    non_negative: list[str] = Field(default_factory=list, description="a negative value rejects the row "
                                                                      "(`negative value: <col>`); declared columns "
                                                                      "only")
    label: LabelRule | None = Field(None, description="derive a float32 `label` column from another column")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown text encoding {v!r}; use a Python codec name such as utf-8, latin-1, "
                             f"cp1252") from None
        return v

    @model_validator(mode="after")
    def _known_columns(self) -> TableSource:
        for key in ("required", "non_negative"):
            unknown = [c for c in getattr(self, key) if c not in self.columns]
            if unknown:
                raise ValueError(f"{key} names columns not declared under 'columns': {unknown}")
        return self


class MovieLensSource(StrictModel):
    """A MovieLens 100K (`u.data`, `u.user`, `u.item`, `u.genre`) or 1M (`ratings.dat`, `users.dat`,
    `movies.dat`, `::` separated) directory, read with its user and movie attributes.

    Tables: `events` (user_id, item_id, rating, ts, label), `users` (user_id, age, gender, occupation, zip,
    zip_prefix), `items` (item_id, title, year, genres as list<string>). `users` and `items` have no timestamp:
    configure them as static entities.
    """

    type: Literal["movielens"] = Field(description="selects the MovieLens reader")
    path: str = Field(description="the MovieLens 100K or 1M directory")
    rating_threshold: float = Field(4.0, description="`label` = 1.0 where the rating is >= this (what counts as "
                                                     "a like)")


class CriteoSource(StrictModel):
    """The Criteo display-ads TSV (label, I1-I13 integers, C1-C26 hex strings, no header; empty fields are
    missing), the common CTR benchmark.

    Table `events`: label (float32, 0/1), I1..I13 float32, C1..C26 strings (null where empty), ts = the
    1-based line number (the file is time-ordered, so a time split works).
    """

    type: Literal["criteo"] = Field(description="selects the Criteo reader")
    path: str = Field(description="the Criteo TSV file")
    max_rows: int | None = Field(None, gt=0, description="read at most this many data rows (a quicker run on "
                                                         "the head of a large file); null = all")


# UCI Online Retail codes that are not products: postage (POST, DOT: dotcom postage, C2: carriage), manual
# lines (M, m), discounts (D), samples (S), bad-debt adjustments (B, ADJUST*), fees and charges (BANK CHARGES,
# AMAZONFEE, CRUK commission), PADS (a 0.001 price filler line), test lines (TEST*) and gift vouchers.
NON_PRODUCT_CODES = ("POST", "DOT", "C2", "M", "D", "S", "B", "CRUK", "PADS", "BANK CHARGES", "AMAZONFEE",
                     "ADJUST*", "TEST*", "gift_0001_*")


class TransactionsSource(StrictModel):
    """Invoice lines (Online Retail style), CSV or Parquet: every kept purchase line is a positive, so the data has
    positives only (retrieval's setting). The `*_column` keys map the file's column names to the canonical ones.

    Tables: `events` (invoice, item_id, user_id as strings; quantity, price, revenue = quantity x price as
    float32; ts; label = 1.0; the extra columns): the purchases net of returns; `purchases` (same columns): every
    purchase line as bought plus every matched return at its own time with negative quantity and revenue and
    label 0.0, the input of time-correct profiles; `items` (item_id, most frequent description, median price).
    Customer ids lose a float tail (`17850.0` -> `17850`).

    Rules, in order, each rejected line with its own reason: bad values; `non_product_codes` ("non-product code:
    POST"); exact duplicate lines ("duplicate line": equal to an earlier line in every column read; the first
    copy stays); cancellations (see `cancellation_prefix`): matched to the same customer's purchases of the same
    item at or before the return, oldest first, and subtracted from them (quantity and revenue); a fully returned
    purchase line is dropped as an event, a partly returned one keeps the rest; returns are never events; a return
    with nothing to match (bought before the data starts) is rejected as "unmatched cancellation". The summary's
    `source_counts` has the purchase, return, fully and partly returned line counts.
    """

    type: Literal["transactions"] = Field(description="selects the transactions reader")
    path: str = Field(description="`.parquet`/`.pq` is read as Parquet; `.tsv`/`.tab` as tab-separated; anything "
                                  "else as CSV with a header")
    invoice_column: str = Field("InvoiceNo", description="the file's invoice id column")
    item_column: str = Field("StockCode", description="the file's item id column")
    quantity_column: str = Field("Quantity", description="the file's quantity column")
    price_column: str = Field("UnitPrice", description="the file's unit price column")
    customer_column: str = Field("CustomerID", description="the file's customer id column (becomes `user_id`)")
    timestamp_column: str = Field("InvoiceDate", description="the file's invoice time column (becomes `ts`)")
    extra_columns: dict[str, str] = Field(
        default_factory=lambda: {"Description": "description", "Country": "country"},
        description="more columns to keep: file column -> name in the tables")
    timestamp_format: str | None = Field(None, description="strptime format of the time column; null = Unix "
                                                           "seconds or ISO 8601 (as for csv)")
    missing_customer_values: list[str] = Field(
        default_factory=lambda: ["0", "0.0", ""],
        description="customer ids that mean 'no customer' (the row is rejected: a purchase without a user "
                    "cannot train a recommender)")
    cancellation_prefix: str | None = Field(
        "C", description="an invoice starting with this marks a cancellation line (Online Retail: `C536379`); a "
                         "line with a negative quantity is one whatever its invoice. It returns |quantity| units: "
                         "they are netted against the customer's earlier purchases of the item (oldest first) and "
                         "never become an event; null = only negative quantities are returns")
    non_product_codes: list[str] = Field(
        default_factory=lambda: list(NON_PRODUCT_CODES),
        description="item codes that are not products (postage, manual lines, discounts, fees, samples, tests): "
                    "their lines are rejected as `non-product code: <code>`. Shell-style globs (`*` any run of "
                    "characters, `?` one), matched case-insensitively against the whole code with surrounding "
                    "spaces trimmed; [] keeps every code. The default lists the UCI Online Retail codes")

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "allow_negative_quantity" in data:
            raise ValueError(
                "'allow_negative_quantity' was removed: negative quantities are now returns, netted against the "
                "customer's earlier purchases of the item (see `cancellation_prefix`); delete the key")
        return data


class EventsSource(StrictModel):
    """The scenario's own event log: every event `POST /events` and `recforge events push` accepted, as the
    stream's offline log writer keeps it (Parquet, one folder per UTC day), each `event_id` once. Trains the
    models on what users did with what they were shown, and lets `recforge materialize` rebuild the views the
    stream keeps (`user_history`, `user_activity`, `item_popularity`) with the functions the stream uses.

    Tables: `events` (event_id, user_id, item_id, ts, type, value, exposure_id; `label` = 1.0 for
    `events.positive_types`, else 0.0; one column per `context` key, typed from the values, a key that clashes
    with one of these named `context_<key>`); `purchases` (the events of `events.purchase_types`: user_id,
    item_id, ts, revenue = `value` or 0, event_id), the input of `profiles`. Each event is one row: an impression
    and the click that followed it are two rows (label 0 and 1), as they are two events.
    """

    type: Literal["events"] = Field(description="selects the scenario's event log")
    path: str | None = Field(None, description="the log folder; null = `events.log_path`, else "
                                               "<output_dir>/events/log")
    types: list[str] | None = Field(None, description="the event types that become rows of `events` (e.g. "
                                                      "impression and click for a CTR model); null = all")


Source = Annotated[
    SyntheticSource | TableSource | MovieLensSource | CriteoSource | TransactionsSource | EventsSource,
    Field(discriminator="type"),
]


# -------------------------------------------------------------------------------------------------- features


class CategoricalFeature(StrictModel):
    """A single-valued id (user, item, category, device, ...), embedded by the models.

    Prepared as an int64 index: a vocabulary ordered by train frequency (ties by value), values seen fewer than
    `min_freq` times left out, at most `max_vocab` kept; **0 = out-of-vocabulary or missing**. With
    `hash_buckets`, a stable hash of the value's text into 1..buckets instead (no vocabulary; `min_freq` and
    `max_vocab` unused). Embedding rows = vocabulary size + 1.
    """

    name: str = Field(description="the feature's name: its prepared column and model input (unique across all "
                                  "kinds)")
    column: str | None = Field(None, description="the raw column it reads (after the joins); null = `name`")
    min_freq: int = Field(1, ge=1, description="values seen fewer times in train map to 0 (OOV): rare ids share "
                                               "one row instead of each getting an undertrained one")
    max_vocab: int | None = Field(None, gt=0, description="keep at most this many values, the most frequent; "
                                                          "null = all (bounds the embedding table)")
    hash_buckets: int | None = Field(
        None, gt=0, description="hash values into this many buckets instead of a vocabulary: for ids too many, or "
                                "too often new, for a vocabulary fitted on train")
    embedding_dim: int | None = Field(
        None, gt=0, description="embedding width recorded in the feature spec; null = the model's. The CTR models "
                                "embed every field at `train.model_params.<model>.embedding_dim`")

    @property
    def source_column(self) -> str:
        return self.column or self.name


class NumericFeature(StrictModel):
    """A scalar (price, age, counts), fed to the models' dense input, or embedded when bucketized.

    Prepared as float32: missing values get `fill` (default: the train mean of the raw value), then `log1p` (of
    max(x, 0)) and/or standardization with the train mean and std. `bucketize` gives an int64 bucket index from
    train quantile boundaries instead (at most `buckets` buckets; duplicate boundaries merge), 0 = missing,
    embedded like a categorical.
    """

    name: str = Field(description="the feature's name: its prepared column and model input (unique across all "
                                  "kinds)")
    column: str | None = Field(None, description="the raw column it reads (after the joins); null = `name`")
    transform: Literal["none", "log1p", "standardize", "log1p_standardize", "bucketize"] = Field(
        "standardize", description="log1p tames heavy tails (prices, counts); standardize centres and scales; "
                                   "bucketize lets the model learn a non-linear effect per quantile bucket")
    buckets: int = Field(10, ge=2, description="bucketize: at most this many quantile buckets")
    fill: float | None = Field(None, description="value for missing entries, before the transform; null = the "
                                                 "train mean")
    embedding_dim: int | None = Field(None, gt=0, description="bucketize: embedding width recorded in the feature "
                                                              "spec; null = the model's")

    @property
    def source_column(self) -> str:
        return self.column or self.name


class MultiValuedFeature(StrictModel):
    """A bag of ids (genres, tags), embedded as a pooled embedding bag.

    Prepared as list<int64> of vocabulary indices (0 = OOV), the first `max_len` values; the column is a list,
    or a string split on `separator`.
    """

    name: str = Field(description="the feature's name: its prepared column and model input (unique across all "
                                  "kinds)")
    column: str | None = Field(None, description="the raw column it reads (after the joins); null = `name`")
    separator: str | None = Field("|", description="splits a string column into values; null = the column must "
                                                   "already be a list")
    max_len: int = Field(10, gt=0, description="keep the first this many values of a row")
    min_freq: int = Field(1, ge=1, description="values seen fewer times in train map to 0 (OOV)")
    embedding_dim: int | None = Field(None, gt=0, description="embedding width recorded in the feature spec; "
                                                              "null = the model's")

    @property
    def source_column(self) -> str:
        return self.column or self.name


class SequenceFeature(StrictModel):
    """A behaviour history: what the user did before this event (DIN attends over it, the retrieval user tower
    pools it).

    Prepared as list<int64>: the user's last `max_len` values of the source feature's column from events strictly
    before this event (with `positive_only`, only events whose label > 0), most recent last, encoded with the
    source feature's vocabulary (or hash), so the history shares the source's embedding table.
    """

    name: str = Field(description="the feature's name: its prepared column and model input (unique across all "
                                  "kinds)")
    source: str = Field(description="a categorical feature's name: the column and vocabulary the history holds "
                                    "(usually the item id)")
    max_len: int = Field(20, gt=0, description="keep the last this many events")
    positive_only: bool = Field(True, description="only events whose label > 0 (clicks, likes) enter the "
                                                  "history; false = every event")


class VectorFeature(StrictModel):
    """A fixed-width float vector (e.g. the profiles' `cat_affinity`, or a precomputed embedding), fed to the
    models' dense input as list<float32>; a null vector becomes zeros."""

    name: str = Field(description="the feature's name: its prepared column and model input (unique across all "
                                  "kinds)")
    column: str | None = Field(None, description="the raw column it reads (after the joins); null = `name`")
    dim: int | None = Field(None, gt=0, description="the vector width; null = taken from train (all train rows "
                                                    "must agree)")

    @property
    def source_column(self) -> str:
        return self.column or self.name


class FeaturesConfig(StrictModel):
    """Which raw columns become which model inputs; `prepare` fits the feature spec from this on the train split.

    Feature `name`s must be unique across all kinds. `column` (default: the name) is the raw column a feature
    reads: any column of the events **after** the joins, i.e. the reader's columns, the entity `features`, the
    profile columns `rfm_recency_days`, `rfm_frequency`, `rfm_monetary`, `cat_affinity`, and each sequence
    feature's own name. A feature whose column is missing stops `prepare` with exit 2, naming the feature and
    listing the available columns.

    Every statistic (vocabularies, means, quantiles, widths) is fitted on the **train split only**, so valid and
    test see what serving would. The prepared data also has `label` (float32, from `features.label`) and the
    passthrough columns.
    """

    label: str = Field(description="label column of the events, after the reader (e.g. `click`, `label`)")
    timestamp: str = Field(
        "ts", description="event time column (int64 Unix seconds): orders histories, point-in-time joins and the "
                          "time split. Events without this column are prepared without time when nothing needs "
                          "it (a random or files split, static entities, no profiles or sequences); otherwise "
                          "`prepare` stops with exit 2 naming the keys that need it (for a csv, tsv or parquet "
                          "source, before Ray starts)")
    user_key: str = Field("user_id", description="user id column (histories, profiles, retrieval; the groups of gAUC "
                                                 "where it names the user, see [metrics.md](metrics.md#gauc))")
    item_key: str = Field("item_id", description="item id column (retrieval corpus, DIN's candidate)")
    categorical: list[CategoricalFeature] = Field(default_factory=list, description="single-valued ids")
    numeric: list[NumericFeature] = Field(default_factory=list, description="scalars")
    multi_valued: list[MultiValuedFeature] = Field(default_factory=list, description="bags of ids")
    sequence: list[SequenceFeature] = Field(default_factory=list, description="behaviour histories")
    vector: list[VectorFeature] = Field(default_factory=list, description="fixed-width float vectors")
    passthrough: list[str] = Field(default_factory=list, description="columns copied unchanged into the prepared "
                                                                     "data (ids, the oracle `p_click`, ...)")

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


class SplitFiles(StrictModel):
    """The valid and test files of `split.method: files`; `source.path` is the train file."""

    valid: str | None = Field(None, description="the valid file (early stopping); null = no valid rows")
    test: str = Field(description="the test file (the reported metrics)")


class SplitConfig(StrictModel):
    """The train/valid/test split of the events: random (optionally grouped, e.g. by user), by time, or by file.

    `time` cuts at the quantiles of the event times: events at or after the valid cut-off go to valid, at or after
    the test cut-off to test (equal timestamps stay together, so fractions are approximate). It measures what
    serving faces, the future; a random split leaks it. The cut-offs are in `summary.json`
    (`split.valid_start_ts`, `split.test_start_ts`).

    `files` keeps a data set's own split (the public CTR samples ship train / dev / test files): the rows of
    `source.path` are train, those of `split.files.valid` valid and of `split.files.test` test. Every file is
    read with the source's columns, types and checks (rejects name their own file and line); relative paths
    start where `recforge` runs, like `source.path`. Needs a `csv`, `tsv` or `parquet` source; the fractions,
    `seed` and `group_by` do not apply. `summary.json` lists the files under `split.files`.
    """

    method: Literal["random", "time", "files"] = Field(
        "random", description="random rows (or groups), by event time, or one file per split (`files`)")
    files: SplitFiles | None = Field(None, description="`files` split only: the valid and test files "
                                                       "(`source.path` is train)")
    valid_fraction: float = Field(0.1, ge=0, lt=1, description="share of events for valid (early stopping); "
                                                               "`valid_fraction + test_fraction` must be below 1")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="share of events for test (the reported metrics)")
    seed: int = Field(42, description="random split only: which rows go where")
    group_by: str | None = Field(None, description="random split only: whole groups (e.g. `user_id`) go to one "
                                                   "split, by a seeded hash of the key")

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("valid_fraction + test_fraction must be below 1")
        if self.method != "random" and self.group_by:
            raise ValueError("group_by applies to the random split only")
        if self.method == "files" and self.files is None:
            raise ValueError("method 'files' needs split.files.test (and optionally split.files.valid): the "
                             "files of those splits; source.path is the train file")
        if self.method != "files" and self.files is not None:
            raise ValueError(f"split.files applies to method 'files' only (method is '{self.method}'); set "
                             f"split.method: files or remove split.files")
        return self


# ---------------------------------------------------------------------------------------- offline / online


class EntityConfig(StrictModel):
    """An entity feature table (users, items) joined onto the events point-in-time: each event sees the row
    valid at its time, never a later one, so training sees what serving would have known."""

    table: str = Field(description="a table of the source (`users`, `items`, ...)")
    key: str = Field(description="key column, in the table and in the events (same kind: both integers or both "
                                 "strings)")
    timestamp: str | None = Field(
        None, description="column saying when each row became valid: joined point-in-time. null = a static table: "
                          "one row per key (duplicates are an error), plain left join")
    ttl_days: float | None = Field(None, gt=0, description="a row older than this at the event time is not used "
                                                           "(null values); needs `timestamp`")
    features: list[str] = Field(description="columns to add to the events; they must not already exist there")

    @model_validator(mode="after")
    def _ttl_needs_time(self) -> EntityConfig:
        if self.ttl_days is not None and self.timestamp is None:
            raise ValueError("ttl_days needs 'timestamp' (a static table has no age to expire)")
        return self


class ProfilesConfig(StrictModel):
    """User profiles for precision marketing, from a table of monetary events, as daily point-in-time snapshots
    (see [architecture.md](architecture.md#profiles)).

    They add `rfm_recency_days`, `rfm_frequency`, `rfm_monetary` (float32, null before the user's first purchase
    day) and, with a category, `cat_affinity` (list<float32>) to the events; declare them under `features` to
    use them.
    """

    enabled: bool = Field(False, description="compute the profiles")
    table: str = Field("purchases", description="source table of purchases (needs a `ts` column)")
    user_key: str = Field("user_id", description="user column in that table and in the events")
    amount: str = Field("revenue", description="numeric amount column (the monetary value). A row with a "
                                               "negative amount is a return: it lowers monetary but is not a "
                                               "purchase (neither frequency nor recency)")
    order: str | None = Field(
        None, description="order id column (e.g. `invoice`): frequency counts a user's distinct orders, so a "
                          "basket of many lines is one purchase; null = every purchase row counts once")
    category: str | None = Field("category", description="category column for affinity; null disables affinity")
    category_table: str | None = Field(
        "items", description="table mapping `item_key` to `category` when the purchases lack it (its newest row per "
                             "item)")
    item_key: str = Field("item_id", description="item column of the purchases and of `category_table`")
    ttl_days: float | None = Field(None, gt=0, description="a snapshot older than this is not used")
    n_categories: int | None = Field(
        None, gt=0, description="affinity width: the top-N train categories; null = every category seen before the "
                                "train cut-off")


class SQLiteOnlineStoreConfig(StrictModel):
    """One SQLite file: no server to run, for one machine (the demo, tests, a single serving node)."""

    type: Literal["sqlite"] = Field("sqlite", description="selects SQLite")
    path: str | None = Field(None, description="database file; null = `<output_dir>/online.db`")


class RedisOnlineStoreConfig(StrictModel):
    """A Redis server, shared by serving replicas on several machines."""

    type: Literal["redis"] = Field(description="selects Redis")
    url: SecretUrl = Field("redis://127.0.0.1:6379/0", description="server URL; secret: its credentials "
                                                             "(`redis://:password@host`) are redacted in every "
                                                             "output")
    namespace: str = Field("recforge", description="prefix of every key the store owns (several scenarios can "
                                                   "share one server)")


OnlineStoreConfig = Annotated[SQLiteOnlineStoreConfig | RedisOnlineStoreConfig, Field(discriminator="type")]


# ------------------------------------------------------------------------------------------------- events


class SQLiteBusConfig(StrictModel):
    """The embedded event bus: a durable log in one SQLite file (WAL mode), for one machine."""

    type: Literal["sqlite"] = Field("sqlite", description="selects the SQLite log")
    path: str | None = Field(None, description="database file; null = `<output_dir>/events/bus.db`")


class RedisBusConfig(StrictModel):
    """Redis Streams: consumer groups, acknowledgements and reclaim of a dead consumer's entries."""

    type: Literal["redis"] = Field(description="selects Redis Streams")
    url: SecretUrl | None = Field(None, description="server URL; null = `online_store.url` (the online store's "
                                                    "Redis); secret: its credentials are redacted in every output")
    namespace: str | None = Field(None, description="prefix of the bus's keys; null = `online_store.namespace` "
                                                    "(else `recforge`)")


BusConfig = Annotated[SQLiteBusConfig | RedisBusConfig, Field(discriminator="type")]


class StreamConfig(StrictModel):
    """How the stream processor (`recforge stream run`) applies events to the online features."""

    max_batch_events: int = Field(20_000, gt=0, description="most events applied in one transaction (a larger "
                                                            "batch costs fewer store round trips per event)")
    poll_ms: int = Field(10, gt=0, description="how long a read waits for new events before it returns empty")
    min_interval_ms: int = Field(10, ge=0, description="least time between two commits: events arriving meanwhile "
                                                       "join the next batch. Each commit has a fixed cost (reads of "
                                                       "every view, a transaction), so under a steady trickle this "
                                                       "bounds the processor's CPU at the price of up to this much "
                                                       "freshness (scripts.bench.events)")
    reclaim_idle_s: float = Field(30.0, gt=0, description="entries a consumer took but did not acknowledge for "
                                                          "this long are taken over (that consumer died)")
    popularity_half_life_hours: float = Field(24.0, gt=0, description="half-life of the trending score of "
                                                                      "`item_popularity`")
    serve: bool = Field(False, description="`recforge serve` also runs the processor (a Ray actor beside the app)")
    tag_column: str | None = Field(None, description="an item attribute held by an item entity (e.g. `category`): "
                                                     "the `user_tags` view counts each user's positive events per "
                                                     "value of it (behaviour tags); null: no tag view")


class EventsConfig(StrictModel):
    """The event contract of a scenario, the bus that carries events and how they are applied.

    An event is what a user did with an item: `event_id` (the idempotency key), `ts`, `user_id`, `item_id`,
    `type` (one of `types`), optional `value` (revenue), `context` and `exposure_id` (docs/cli.md#events).
    """

    types: list[str] = Field(["impression", "click", "add_to_cart", "purchase"], min_length=1,
                             description="the event types this scenario accepts")
    positive_types: list[str] = Field(["click", "add_to_cart", "purchase"], description="types that count as a "
                                      "positive interaction (label 1): they enter behaviour histories")
    purchase_types: list[str] = Field(["purchase"], description="types that are purchases: they update RFM "
                                      "(count, the sum of `value`, last purchase time)")
    id_type: Literal["int", "string"] = Field("int", description="the kind of `user_id` and `item_id`: the "
                                              "scenario's keys (int: an id must be an integer, also when sent "
                                              "as text)")
    max_batch_events: int = Field(1000, gt=0, description="most events in one `POST /events` request (413 above)")
    max_id_length: int = Field(256, gt=0, description="longest string id (`event_id`, `exposure_id`, string "
                                                      "user and item ids)")
    max_context_fields: int = Field(64, gt=0, description="most keys in an event's `context`")
    max_value_length: int = Field(1024, gt=0, description="longest string value in an event's `context`")
    max_clock_skew_s: float = Field(300.0, ge=0, description="an event whose `ts` is more than this far in the "
                                                             "future of the receiving clock is rejected")
    allowed_lateness_s: float = Field(3600.0, ge=0, description="events up to this much older than the newest "
                                                                "event applied are applied in event-time order; "
                                                                "older ones are counted as too late and left to "
                                                                "the next batch job (they are in the offline log)")
    dedupe_window_s: float = Field(7 * 86400.0, gt=0, description="how long an applied `event_id` is "
                                                                 "remembered (in event time; at least "
                                                                 "`allowed_lateness_s`, so that every event "
                                                                 "the processor may still apply is checked)")
    bus: BusConfig | None = Field(None, description="the bus; null = Redis Streams on the online store's server "
                                                    "when `online_store.type` is redis, else the SQLite log")
    log_path: str | None = Field(None, description="the offline event log (Parquet, one folder per UTC day); "
                                                   "null = `<output_dir>/events/log`")
    log_flush_events: int = Field(100_000, gt=0, description="the offline log writes a Parquet file once this many "
                                                            "events wait (or `log_flush_s` passed): few, large files")
    log_flush_s: float = Field(10.0, gt=0, description="longest an accepted event waits before it is written to the "
                                                      "offline log (kept pending on the bus until then)")
    stream: StreamConfig = Field(default_factory=StreamConfig, description="the stream processor")

    @model_validator(mode="after")
    def _consistent(self) -> EventsConfig:
        for name in ("positive_types", "purchase_types"):
            unknown = [t for t in getattr(self, name) if t not in self.types]
            if unknown:
                raise ValueError(f"events.{name} names {unknown}, which are not in events.types {self.types}")
        if len(set(self.types)) != len(self.types):
            raise ValueError(f"events.types lists a type twice: {self.types}")
        if self.log_flush_s >= self.stream.reclaim_idle_s:
            raise ValueError(f"events.log_flush_s ({self.log_flush_s:g}) must be below events.stream.reclaim_idle_s "
                             f"({self.stream.reclaim_idle_s:g}): entries the log writer holds would look abandoned")
        if self.dedupe_window_s < self.allowed_lateness_s:
            raise ValueError(f"events.dedupe_window_s ({self.dedupe_window_s:g}) must be at least "
                             f"events.allowed_lateness_s ({self.allowed_lateness_s:g}): an event the processor may "
                             "still apply must still be checked against the ids it applied")
        return self


# `prepare.local_max_rows`' default, from timing whole `recforge prepare` processes of configs/demo.yaml on 2 cores
# (scripts.bench.prepare --small --rows N; docs/architecture.md#ray): the local engine took 2.3 s against Ray's
# 28 s at 10,000 rows, 9.1 s against 20.5 s at 2,000,000 (and half the memory), 27 s against 34 s at 5,000,000,
# where Ray's transform on both cores had nearly caught up; with more cores Ray's share grows
LOCAL_MAX_ROWS = 2_000_000


class PseudonymisationConfig(StrictModel):
    """Pseudonymisation at ingestion (feature_store.pseudonymise): user ids and the personal columns listed become
    keyed HMAC-SHA256 pseudonyms where data enters (source readers, `POST /events` and `recforge events push`, the
    user id of a serving request), so no later output holds them. The key is read from the environment or a key
    file, never from this file; the same key must be used by every later run and by the serving app."""

    enabled: bool = Field(False, description="replace user ids and `columns` by pseudonyms at ingestion")
    key_env: str = Field("RECFORGE_PSEUDONYM_KEY", min_length=1,
                         description="environment variable holding the key (used when `key_file` is not set)")
    key_file: str | None = Field(None, description="file holding the key (mode 0600 or stricter); takes the place "
                                                   "of `key_env`")
    min_key_bytes: int = Field(32, ge=16, description="shortest key accepted, in bytes")
    columns: list[str] = Field(default_factory=list,
                               description="personal columns hashed besides the user id (e.g. email, phone), in "
                                           "every table and event context that has them")
    normalise: bool = Field(True, description="trim and lower-case personal columns before hashing, so lists typed "
                                              "differently still match")


class PrepareConfig(StrictModel):
    """How `recforge prepare` runs: which engine (in this process or Ray), where Ray is, how much of it, block
    size, reject tolerance. Both engines run the same fit and transform code on the same blocks, so they write
    the same spec and the same prepared rows."""

    engine: Literal["auto", "local", "ray"] = Field(
        "auto", description="where the spec fit and the transform run: `local` in this process (no Ray start-up, "
                            "for small data), `ray` with Ray Data (streams large data through workers, or a "
                            "cluster); `auto` = `local` when the event rows are below `local_max_rows` and no "
                            "`ray_address` is given, else `ray`. `summary.json` records the engine and why")
    local_max_rows: int = Field(
        LOCAL_MAX_ROWS, ge=0, description="`engine: auto` prepares fewer event rows than this in this process, "
                                          "more on Ray; 0 = always Ray. The default comes from timing both engines "
                                          "on 2 cores ([architecture.md](architecture.md#ray)); with many cores "
                                          "Ray pays off sooner")
    ray_address: str | None = Field(
        None, description="null = a local Ray; `auto`, `HOST:PORT` or `ray://HOST:10001` attaches to a cluster (an "
                          "empty string means null)")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of the local Ray (null = all); not used when "
                                                         "attaching to a cluster")
    batch_rows: int = Field(131_072, gt=0, description="rows per block, for fitting and transforming (at least; at "
                                                       "most 16 blocks per split), with either engine; quantile "
                                                       "sampling is per block, so changing it can change bucket "
                                                       "boundaries")
    max_reject_fraction: float = Field(0.05, ge=0, le=1, description="`prepare` fails (exit 2) when rejected / "
                                                                     "read rows (all tables) exceed this")

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


def _unwrap(ann: Any, part: str | int | None) -> Any:
    """The type behind an annotation: Annotated and Optional peeled, a union of models resolved by its `type` tag
    (`part`, the next `loc` part, which pydantic puts in the location of a discriminated union's error)."""
    while True:
        origin = typing.get_origin(ann)
        if origin is typing.Annotated:
            ann = typing.get_args(ann)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [m for m in typing.get_args(ann) if m is not type(None)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            tagged = [m for m in models if "type" in m.model_fields
                      and part in typing.get_args(m.model_fields["type"].annotation)]
            if tagged:
                return _Tagged(tagged[0])
            if len(members) != 1:
                return None
            ann = members[0]
        else:
            return ann


class _Tagged:
    """A union member chosen by its discriminator tag: the tag's own `loc` part is consumed, not a field name."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model


def _model_fields_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str] | None:
    """The keys of the config model that holds the key at `loc` (pydantic's error location), for listing the valid
    keys next to an unknown one; None where the path leaves the typed models."""
    current: Any = model
    parts = list(loc[:-1])
    i = 0
    while i < len(parts):
        part = parts[i]
        if isinstance(current, _Tagged):  # this part is the tag itself
            current = current.model
            i += 1
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = _unwrap(field.annotation, parts[i + 1] if i + 1 < len(parts) else None)
        elif typing.get_origin(current) in (dict, list):  # this part is the key or index
            current = _unwrap(typing.get_args(current)[-1], parts[i + 1] if i + 1 < len(parts) else None)
        else:
            return None
        if current is None:
            return None
        i += 1
    if isinstance(current, _Tagged):
        current = current.model
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else None


def _format_errors(exc: ValidationError, source: str, lines: Mapping[tuple[str, ...], int],
                   model: type[BaseModel] | None = None) -> str:
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
        if kind in ("extra_forbidden", "unknown_key"):
            valid = (err.get("ctx") or {}).get("valid")
            if valid is None and model is not None:
                fields = _model_fields_at(model, tuple(err["loc"]))
                valid = ", ".join(fields) if fields else None
            what = err["msg"] if err["msg"].startswith("unknown ") else "unknown key"
            hint = f"{what}; remove it or check its spelling against docs/config.md"
            if valid:
                label = {"unknown model": "valid models",
                         "unknown feature": "declared features"}.get(what, "valid keys")
                hint += f" ({label}: {valid})"
        elif kind == "missing":
            hint = "required key is missing"
        elif kind in ("union_tag_not_found", "union_tag_invalid"):
            tags = (err.get("ctx") or {}).get("expected_tags", "")
            got = (err.get("ctx") or {}).get("tag")
            dotted += ".type"
            hint = (f"unknown type {got!r}" if got is not None else "required key is missing") + \
                (f"; use one of {tags}" if tags else "")
        else:
            got = err.get("input")
            shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
            hint = f"{err['msg'].removeprefix('Value error, ')} (got {shown})"
        msgs.append(f"{where}: {dotted}: {hint}")
    return "invalid configuration:\n  " + "\n  ".join(msgs)


_DISCRIMINATOR_TAGS = {"synthetic", "csv", "tsv", "parquet", "movielens", "criteo", "transactions", "events", "sqlite",
                       "redis"}


def _config_text(p: Path, source: str) -> str:
    """The config file's text; a file that is not UTF-8 text (binary, another encoding) is a ConfigError."""
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{source}:{line}: not a UTF-8 text file (byte 0x{data[exc.start]:02x} at offset {exc.start} does not "
            f"decode); a config is YAML text: pass the right file, or save it as UTF-8"
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ConfigError(f"{source}:{line}: a NUL byte: this is a binary file, not YAML text; pass the config "
                          f"file (e.g. configs/demo.yaml)")
    return text


def load_config(
    path: str | os.PathLike[str] | None,
    model: type[M],
    overrides: Iterable[str] = (),
    data: dict[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
) -> M:
    """Load YAML `path` (or `data`), apply `KEY.PATH=VALUE` overrides, validate against `model` (with the pydantic
    validation `context`, which validators of later stages may read)."""
    source = str(path) if path is not None else "<config>"
    text = ""
    if data is None:
        if path is None:
            raise ConfigError("no config given: pass --config FILE (see configs/)")
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found; pass an existing YAML file, e.g. configs/demo.yaml")
        text = _config_text(p, source)
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
        return model.model_validate(data, context=dict(context) if context else None)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, _yaml_lines(text), model)) from None


def dump_config(cfg: BaseModel, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config (defaults filled in) as YAML next to an output: secrets redacted (their types
    serialise so, feature_store.secrets) and the file readable by its owner only (mode 0600, from its creation:
    never a moment world-readable), since a config is where people put what they should not."""
    return write_private(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def write_private(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to a file only its owner can read (0600 from its creation; an existing file is made so)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: set it
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
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

    name: str = Field(description="scenario name (reports, MLflow experiment, registered model names)")
    output_dir: str = Field(description="where every output of this scenario goes (see "
                                        "[cli.md](cli.md#where-outputs-go))")
    seed: int = Field(42, description="seed of the spec fitter's quantile sampling; other stages have their own "
                                      "(`source.seed`, `split.seed`, `train.runtime.seed`)")
    source: Source = Field(
        description="the input data: `source.type` picks the reader.\n\n"
                    "`type` is required, also for `synthetic`. Every reader yields a table `events` with int64 Unix "
                    "seconds (UTC) in a column `ts`; some also yield `users`, `items`, `purchases` (the table names "
                    "that `entities.<name>.table` and `profiles.table` refer to).")
    features: FeaturesConfig = Field(description="which columns become which model inputs")
    split: SplitConfig = Field(default_factory=SplitConfig, description="the train/valid/test split")
    entities: dict[str, EntityConfig] = Field(
        default_factory=dict,
        description="entity feature tables (users, items) by entity name.\n\n"
                    "The name is also the online view's name (`user`, `item` in the configs).")
    profiles: ProfilesConfig = Field(default_factory=ProfilesConfig,
                                     description="RFM and category-affinity user profiles")
    prepare: PrepareConfig = Field(default_factory=PrepareConfig,
                                   description="how `prepare` runs: engine, Ray, block size, reject limit")
    online_store: OnlineStoreConfig = Field(
        default_factory=SQLiteOnlineStoreConfig,
        description="where `materialize` writes the online features.\n\n"
                    "`type` selects the backend; it is required whenever the section is given. Omitting the "
                    "section means SQLite at `<output_dir>/online.db`.")
    events: EventsConfig = Field(default_factory=EventsConfig,
                                 description="the event contract, its bus and the stream processor")
    pseudonymisation: PseudonymisationConfig = Field(
        default_factory=PseudonymisationConfig,
        description="keyed pseudonyms for user ids and personal columns, applied where data enters")

    @model_validator(mode="after")
    def _files_split_source(self) -> FeatureStoreConfig:
        if self.split.method == "files" and self.source.type not in ("csv", "tsv", "parquet"):
            raise ValueError(f"split.method 'files' reads one file per split and needs a csv, tsv or parquet "
                             f"source; source.type is '{self.source.type}': use split.method random or time")
        tag = self.events.stream.tag_column
        if tag is not None and not any(e.key == self.features.item_key and tag in e.features
                                       for e in self.entities.values()):
            raise ValueError(f"events.stream.tag_column '{tag}' is not a feature of an entity keyed by "
                             f"'{self.features.item_key}' (the processor looks each item's value up there); add it "
                             "to that entity's features or set tag_column to one of them")
        if isinstance(self.source, EventsSource) and self.source.types is not None:
            unknown = sorted(set(self.source.types) - set(self.events.types))
            if unknown:
                raise ValueError(f"source.types names {unknown}, which are not in events.types {self.events.types}")
        return self
