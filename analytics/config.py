"""Typed config of the marketing analyses: the `analytics:` section of a scenario, validated at the edge like
every other section (unknown keys are errors; docs/config.md is generated from these models).

The analyses read the scenario's purchases through its `profiles` columns (`profiles.table`, `user_key`, `amount`,
`order`), so they need no column mapping of their own; what is here is the time split and each analysis's knobs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from feature_store.config import StrictModel

SegmentFeature = Literal["recency_days", "frequency", "monetary", "tenure_days", "avg_order_value"]


class SegmentsConfig(StrictModel):
    """`recforge segment`: K-means on log-scaled, standardised RFM (docs/cli.md#segments)."""

    features: list[SegmentFeature] = Field(
        ["recency_days", "frequency", "monetary"], min_length=2,
        description="customer features clustered (log1p, then standardised); tenure_days and avg_order_value are "
                    "the optional profile features")
    k_min: int = Field(3, ge=2, description="smallest number of segments tried")
    k_max: int = Field(8, ge=2, description="largest number of segments tried; the mean silhouette picks k")
    k: int | None = Field(None, ge=2, description="fix the number of segments instead (the curve is still shown)")
    silhouette_sample: int = Field(5000, ge=100, description="customers the silhouette is computed on (one fixed "
                                                             "random sample; its cost grows with the square)")
    seed: int = Field(42, description="K-means initialisations and the silhouette sample")
    view: str = Field("customer_segment", description="online-store view of the assignments (keyed by the user "
                                                      "key: columns kmeans_segment, kmeans_segment_id)")

    @model_validator(mode="after")
    def _range(self) -> SegmentsConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min {self.k_min} is above k_max {self.k_max}")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"features {self.features} name a feature twice")
        return self


# ---------------------------------------------------------------------------------------------- budget


class TierConfig(StrictModel):
    """One step of a channel's piecewise-linear return curve: volume up to `up_to` (from the previous tier's
    `up_to`, or 0) returns `return_per_unit` per unit."""

    up_to: float = Field(..., gt=0, description="the channel's total volume at which this tier ends")
    return_per_unit: float = Field(..., description="return per unit of volume inside this tier; must not be "
                                                    "higher than the previous tier's (diminishing returns)")


class ChannelConfig(StrictModel):
    """A channel money can be spent on, priced per unit of volume, with either a flat return per unit (one value,
    or one per segment) or diminishing-return tiers."""

    name: str = Field(..., min_length=1, description="unique channel name, used in results and messages")
    unit_cost: float = Field(..., gt=0, description="spend per unit of volume")
    return_per_unit: float | dict[str, float] | None = Field(
        None, description="return per unit of volume: one number, or a map segment -> number naming every "
                          "segment when segments are used; exclusive with `tiers`")
    min_volume: float = Field(0.0, ge=0, description="volume the channel must get at least (total across "
                                                     "segments), e.g. a contract commitment")
    max_volume: float | None = Field(None, gt=0, description="volume the channel can take at most (total "
                                                             "across segments); null = no cap")
    tiers: list[TierConfig] = Field(
        [], description="diminishing-return tiers of the channel's total volume, in order; the last tier's "
                        "`up_to` caps the volume; exclusive with `return_per_unit`")

    @model_validator(mode="after")
    def _check(self) -> ChannelConfig:
        where = f"channel '{self.name}'"
        if (self.return_per_unit is None) == (not self.tiers):
            raise ValueError(f"{where}: give exactly one of 'return_per_unit' or 'tiers'")
        for k in range(1, len(self.tiers)):
            prev, tier = self.tiers[k - 1], self.tiers[k]
            if tier.up_to <= prev.up_to:
                raise ValueError(f"{where}: tiers[{k}].up_to {tier.up_to:g} must be above tiers[{k - 1}].up_to "
                                 f"{prev.up_to:g} (tiers are listed in order of volume)")
            if tier.return_per_unit > prev.return_per_unit:
                raise ValueError(
                    f"{where}: tiers[{k}].return_per_unit {tier.return_per_unit:g} is above tiers[{k - 1}]'s "
                    f"{prev.return_per_unit:g}; tier returns must not increase (diminishing returns), otherwise the "
                    f"allocation would fill the better later tier without the earlier one and is not a linear "
                    f"program")
        if self.max_volume is not None and self.min_volume > self.max_volume:
            raise ValueError(f"{where}: min_volume {self.min_volume:g} is above max_volume {self.max_volume:g}")
        if self.tiers and self.min_volume > self.tiers[-1].up_to:
            raise ValueError(f"{where}: min_volume {self.min_volume:g} is above the last tier's up_to "
                             f"{self.tiers[-1].up_to:g}, which caps the channel's volume")
        return self


class BudgetConfig(StrictModel):
    """A budget allocation problem: channels, optional segments, the budget and caps, and what to maximise."""

    channels: list[ChannelConfig] = Field(..., min_length=1, description="the channels to allocate across")
    segments: list[str] = Field(
        [], description="optional customer segments: each channel's volume is split across them; a channel's "
                        "min/max volume apply to its total across segments")
    total_budget: float | None = Field(
        None, gt=0, description="total spend allowed; null = no budget (then every channel worth buying needs a "
                                "cap, or the problem is unbounded)")
    max_total_volume: float | None = Field(None, gt=0, description="cap on the volume of all channels together; "
                                                                    "null = no cap")
    segment_max_volume: dict[str, float] = Field(
        {}, description="cap on the volume reaching each named segment, over all channels")
    objective: Literal["return", "profit"] = Field(
        "return", description="'return' maximises the sum of returns; 'profit' the returns minus the spend")

    @model_validator(mode="after")
    def _check(self) -> BudgetConfig:
        names = [ch.name for ch in self.channels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"channels: duplicate channel names {dupes}")
        segs = set(self.segments)
        if len(segs) != len(self.segments):
            raise ValueError(f"segments: duplicate segment names {sorted(self.segments)}")
        if any(not s for s in self.segments):
            raise ValueError("segments: segment names must not be empty")
        for i, ch in enumerate(self.channels):
            if isinstance(ch.return_per_unit, dict):
                where = f"channels[{i}].return_per_unit (channel '{ch.name}')"
                if not self.segments:
                    raise ValueError(f"{where} is a per-segment map but no 'segments' are defined")
                unknown = sorted(set(ch.return_per_unit) - segs)
                if unknown:
                    raise ValueError(f"{where} names unknown segments {unknown}; segments are {self.segments}")
                missing = [s for s in self.segments if s not in ch.return_per_unit]
                if missing:
                    raise ValueError(f"{where} has no value for segments {missing}")
        unknown = sorted(set(self.segment_max_volume) - segs)
        if unknown:
            raise ValueError(f"segment_max_volume names unknown segments {unknown}; segments are {self.segments}")
        negative = sorted(s for s, cap in self.segment_max_volume.items() if cap < 0)
        if negative:
            raise ValueError(f"segment_max_volume must be >= 0; negative for {negative}")
        return self



# ---------------------------------------------------------------------------------------------- the others


class ChurnConfig(StrictModel):
    """`recforge churn`: time to the next purchase, from the split, with survival models (docs/cli.md#churn)."""

    horizon_days: float = Field(60.0, gt=0, description="churn = no purchase within this many days; at most "
                                                        "`analytics.holdout_days` (the next period must show it)")
    penalizer: float = Field(0.01, ge=0, description="L2 penalty of the Cox and Weibull fits (a nearly singular "
                                                     "covariate matrix still fits)")
    view: str = Field("churn_risk", description="online-store view of each customer's churn probability at the "
                                                "horizon (columns churn_probability, churn_horizon_days)")
    profile_columns: list[str] = Field(default_factory=list, description="columns of the purchases table that "
                                       "describe the customer (e.g. country), used as features beside RFM: the "
                                       "value on the customer's first row, one indicator per common level")
    min_level_customers: int = Field(30, ge=1, description="a profile level gets its own indicator with at least "
                                                           "this many train customers; rarer levels are pooled "
                                                           "into 'other'")


class LtvConfig(StrictModel):
    """`recforge ltv`: BG/NBD purchases and Gamma-Gamma spend per customer (docs/cli.md#lifetime-value)."""

    unit_days: float = Field(7.0, gt=0, description="the models' time unit in days (weeks, as in the literature)")
    horizon_days: float | None = Field(None, gt=0, description="predicted value over this many days; null = "
                                                               "`analytics.holdout_days`")
    annual_discount_rate: float = Field(0.0, ge=0, description="discount of future revenue per year")
    penalizer: float = Field(0.0, ge=0, description="L2 penalty on the model parameters")
    view: str = Field("customer_value", description="online-store view (columns expected_purchases, p_purchase, "
                                                    "p_alive, expected_value)")


class AttributionConfig(StrictModel):
    """`recforge attribution`: credit for conversions across channel touchpoints (docs/cli.md#attribution).
    Journeys come from `touchpoints` and `outcomes` files, or from the built-in generator (known true effects)."""

    touchpoints: str | None = Field(None, description="Parquet or CSV of touchpoints (journey_id, ts, channel); "
                                                      "null = generated journeys")
    outcomes: str | None = Field(None, description="Parquet or CSV of journeys' outcomes (journey_id, converted, "
                                                   "value); required with `touchpoints`")
    journeys: int = Field(50_000, gt=0, description="generated journeys (when no files are given)")
    channels: int = Field(8, ge=2, description="generated channels")
    seed: int = Field(7, description="the generator's seed and the Monte Carlo Shapley's")
    half_life_days: float = Field(7.0, gt=0, description="time decay: a touch this long before the conversion "
                                                         "gets half the weight")
    exact_max_channels: int = Field(12, ge=1, le=20, description="Shapley values exactly up to this many channels "
                                                                 "(2^channels subsets), Monte Carlo beyond")
    permutations: int = Field(2_000, gt=0, description="Monte Carlo Shapley: random channel orders")
    markov_order: int = Field(2, ge=1, le=4, description="Markov removal effect: how many past channels the chain's "
                                                         "state remembers (1 = the current channel only, the "
                                                         "textbook chain; 2 also remembers which channel led there, "
                                                         "which ranks generated journeys' true effects better, "
                                                         "docs/benchmarks.md)")

    @model_validator(mode="after")
    def _files(self) -> AttributionConfig:
        if (self.touchpoints is None) != (self.outcomes is None):
            raise ValueError("give both touchpoints and outcomes files, or neither (generated journeys)")
        return self


class AnalyticsConfig(StrictModel):
    """The marketing analyses (`recforge segment`, ...): the time split they share and each one's settings."""

    holdout_days: float = Field(90.0, gt=0, description="the last days of the data are the next period: analyses "
                                                        "fit on what was known before it and are scored on it")
    output_dir: str | None = Field(None, description="where outputs and reports go; null = "
                                                     "`<output_dir>/analytics`")
    segments: SegmentsConfig = Field(default_factory=SegmentsConfig, description="customer segments")
    churn: ChurnConfig = Field(default_factory=ChurnConfig, description="churn risk")
    ltv: LtvConfig = Field(default_factory=LtvConfig, description="customer lifetime value")
    budget: BudgetConfig | None = Field(None, description="budget allocation across channels (`recforge budget`); "
                                                          "null = none defined")
    attribution: AttributionConfig = Field(default_factory=AttributionConfig, description="multi-touch attribution")

    @model_validator(mode="after")
    def _horizons(self) -> AnalyticsConfig:
        if self.churn.horizon_days > self.holdout_days:
            raise ValueError(f"churn.horizon_days {self.churn.horizon_days:g} is longer than holdout_days "
                             f"{self.holdout_days:g}: the next period cannot show who churned at that horizon; "
                             f"shorten the horizon or lengthen the holdout")
        return self
