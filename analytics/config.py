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


class AnalyticsConfig(StrictModel):
    """The marketing analyses (`recforge segment`, ...): the time split they share and each one's settings."""

    holdout_days: float = Field(90.0, gt=0, description="the last days of the data are the next period: analyses "
                                                        "fit on what was known before it and are scored on it")
    output_dir: str | None = Field(None, description="where outputs and reports go; null = "
                                                     "`<output_dir>/analytics`")
    segments: SegmentsConfig = Field(default_factory=SegmentsConfig, description="customer segments")
