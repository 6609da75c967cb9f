"""The `privacy:` section: what `recforge report` may release from which data set, under which k and privacy budget,
and the clean room (`privacy.cleanroom`).

The settings are checked here, at the edge, so a query that names an unknown data set, a measure without bounds,
a k below 2 or a clean room with one party fails when the config is loaded, naming the key; the release library
(privacy.release) checks the same things again for callers that build a spec in code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from feature_store.config import StrictModel

BUILTIN_DATASETS = ("events", "event_log", "customers")
"""Data sets every scenario has (when their producing command ran): `events` the prepared interactions with each
user's latest attributes,
`event_log` the live offline event log, `customers` the latest `recforge segment` assignments (with churn and
LTV scores when those ran); plus `experiment:<name>` for every experiment (one row per exposure with its arm)."""


class BudgetConfig(StrictModel):
    """A data set's total privacy budget: the ledger refuses a query once the epsilons (and deltas) spent on the
    data set would exceed these totals (basic composition)."""

    epsilon: float = Field(1.0, gt=0, description="total epsilon the data set may spend over all its releases")
    delta: float = Field(1e-6, ge=0, lt=1, description="total delta the data set may spend (Gaussian noise and "
                                                       "private group keys spend it)")


class DatasetConfig(StrictModel):
    """A data set of your own (a Parquet file or folder) that `recforge report` may release aggregates of."""

    path: str = Field(description="Parquet file or folder of Parquet files")
    person: str = Field("user_id", description="the column that identifies a person (the unit of privacy)")
    budget: BudgetConfig | None = Field(None, description="this data set's budget (default: `privacy.budget`)")


class MeasureConfig(StrictModel):
    """One released figure per cell."""

    name: str = Field(min_length=1, description="the column name in the released table")
    kind: Literal["people", "rows", "sum", "mean"] = Field(
        "people", description="people (distinct persons), rows, or the sum / mean of `column`")
    column: str | None = Field(None, description="sum / mean: the numeric column")
    lower: float | None = Field(None, description="sum / mean: values are clamped to [lower, upper] (the bounds "
                                                  "set how much one person can change the figure)")
    upper: float | None = Field(None, description="sum / mean: the upper clamp")

    @model_validator(mode="after")
    def _column_and_bounds(self) -> MeasureConfig:
        if self.kind in ("sum", "mean"):
            missing = [k for k in ("column", "lower", "upper") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a {self.kind} needs {', '.join(missing)}")
            if self.lower is not None and self.upper is not None and self.lower >= self.upper:
                raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")
        elif self.column is not None or self.lower is not None or self.upper is not None:
            raise ValueError(f"a {self.kind} count takes no column or bounds")
        return self


def _people() -> list[MeasureConfig]:
    return [MeasureConfig(name="people", kind="people")]


class QueryConfig(StrictModel):
    """A named aggregate release: group-by over a data set, with k-anonymity and optional differential privacy."""

    dataset: str = Field(description="events, event_log, customers, experiment:<name>, or a key of "
                                     "`privacy.datasets`")
    group_by: list[str] = Field(min_length=1, description="columns to group by (segment, region, arm, day, ...); "
                                                          "`day` is derived from `ts` when the data has no such "
                                                          "column")
    measures: list[MeasureConfig] = Field(default_factory=_people, description="released figures per cell")
    k: int | None = Field(None, ge=2, description="minimum people per released cell (default: `privacy.k`)")
    mechanism: Literal["none", "laplace", "gaussian"] = Field(
        "laplace", description="noise: laplace (epsilon-DP), gaussian ((epsilon, delta)-DP) or none (exact "
                               "figures, k-anonymity only: spends no budget, and is open to differencing)")
    epsilon: float = Field(0.1, gt=0, description="the epsilon this query spends from its data set's budget")
    delta: float = Field(0.0, ge=0, lt=1, description="the delta it spends (gaussian, or private group keys)")
    max_groups_per_person: int = Field(1, ge=1, description="a person counts in at most this many cells")
    max_rows_per_cell: int = Field(1, ge=1, description="rows of one person counted per cell (rows, sum, mean)")
    margins: bool = Field(True, description="release the totals per dim level and overall")
    keys: dict[str, list[Any]] | None = Field(
        None, description="public values per group-by column (cells = their cross product, empty ones included; "
                          "a column without public keys needs delta > 0 under DP)")


class CleanRoomParty(StrictModel):
    """One party's pseudonymised file (written by `recforge pseudonymise` with the shared key)."""

    path: str = Field(description="the party's Parquet file, pseudonymised by `recforge pseudonymise`")
    id_column: str = Field(description="the pseudonymised join column (e.g. email)")
    columns: list[str] = Field(default_factory=list, description="attributes the releases may group by or add up")


class CleanRoomConfig(StrictModel):
    """Two parties join on pseudonymised ids inside RecForge; only aggregates leave, each under k and DP."""

    advertiser: CleanRoomParty = Field(description="the advertiser's customer list (segment, converted, revenue)")
    publisher: CleanRoomParty = Field(description="the publisher's exposure log (campaign, impressions)")
    key_env: str = Field("RECFORGE_CLEANROOM_KEY", description="environment variable with the key both parties "
                                                               "hashed with")
    key_file: str | None = Field(None, description="file with that key (0600), instead of `key_env`")
    k: int = Field(20, ge=5, description="minimum people per released cell (at least 5 in a clean room)")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="the joined data's total budget")
    epsilon: float = Field(0.2, gt=0, description="epsilon per release (overlap, reach, lift); a run spends the "
                                                 "sum at once or nothing")
    delta: float = Field(1e-7, gt=0, lt=1, description="delta per release whose group keys come from the data "
                                                      "(segments, campaigns): released only above a noisy threshold")
    segment_column: str | None = Field(None, description="advertiser column for reach per segment")
    converted_column: str | None = Field(None, description="advertiser 0/1 column for conversion lift")
    campaign_column: str | None = Field(None, description="publisher column for lift per campaign")

    @model_validator(mode="after")
    def _columns_declared(self) -> CleanRoomConfig:
        a, p = self.advertiser, self.publisher
        for side, party in (("advertiser", a), ("publisher", p)):
            if party.id_column in party.columns:
                raise ValueError(f"{side}.columns lists the join column '{party.id_column}': ids are never "
                                 f"grouped by or released")
        for name, party, col in (("segment_column", a, self.segment_column),
                                 ("converted_column", a, self.converted_column),
                                 ("campaign_column", p, self.campaign_column)):
            if col is not None and col not in party.columns:
                raise ValueError(f"{name} '{col}' is not among that party's columns {party.columns}")
        return self


class PrivacyConfig(StrictModel):
    """Aggregate reports that may leave the platform (`recforge report`) and the clean room (`recforge cleanroom`)."""

    k: int = Field(10, ge=2, description="minimum people per released cell; smaller cells are suppressed, and "
                                         "complementary cells with them so that totals cannot reveal them")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="each data set's total privacy budget")
    ledger_path: str | None = Field(None, description="the privacy-budget ledger (SQLite); default "
                                                      "`<output_dir>/privacy/ledger.db`")
    releases_dir: str | None = Field(None, description="where releases are written; default "
                                                       "`<output_dir>/privacy/releases`")
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict,
                                               description="your own data sets, besides the built-in ones")
    queries: dict[str, QueryConfig] = Field(default_factory=dict, description="named releases (`recforge report "
                                                                             "run NAME`)")
    cleanroom: CleanRoomConfig | None = Field(None, description="the two-party clean room (`recforge cleanroom`)")

    @model_validator(mode="after")
    def _known_datasets(self) -> PrivacyConfig:
        for name, q in self.queries.items():
            known = q.dataset in BUILTIN_DATASETS or q.dataset in self.datasets or q.dataset.startswith(
                "experiment:")
            if not known:
                raise ValueError(f"queries.{name}.dataset '{q.dataset}' is not a data set: use one of "
                                 f"{[*BUILTIN_DATASETS, 'experiment:<name>', *self.datasets]}")
        return self
