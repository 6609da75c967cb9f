"""The whole scenario config: the feature-store sections plus the sections later stages add.

`load(path, overrides)` is the one entry point the CLI uses; unknown keys anywhere are errors that name the
file, line and key path (see feature_store.config.load_config).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import Field, model_validator

from feature_store.config import FeatureStoreConfig, load_config
from serving.config import RegistryConfig, ServingConfig
from training.index.faiss_index import IndexConfig
from training.ranking.config import TrainConfig
from training.retrieval.config import RetrievalConfig


class RecForgeConfig(FeatureStoreConfig):
    """A scenario: data source, features, split, stores, training, retrieval, index, registry and serving."""

    train: TrainConfig = Field(default_factory=TrainConfig, description="the CTR ranking stage (`recforge train "
                                                                        "ctr`)")
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig,
                                       description="the two-tower retrieval stage (`recforge train retrieval`)")
    index: IndexConfig = Field(default_factory=IndexConfig, description="the candidate index over the item "
                                                                        "vectors (`recforge index build`)")
    registry: RegistryConfig = Field(default_factory=RegistryConfig,
                                     description="registered model names and the promotion gate")
    serving: ServingConfig = Field(default_factory=ServingConfig,
                                   description="the Ray Serve application of `recforge serve`")

    @model_validator(mode="after")
    def _ordered_history_needs_positive_sequences(self) -> RecForgeConfig:
        """`retrieval.history: ordered` rebuilds the user tower's sequences from positives: a sequence of all
        events (positive_only: false) would change meaning between the prepared rows and the rebuilt ones."""
        if self.retrieval.history == "ordered":
            bad = [s.name for s in self.features.sequence
                   if s.name in self.retrieval.user_features and not s.positive_only]
            if bad:
                raise ValueError(f"retrieval.history: ordered rebuilds behaviour sequences from positives, but "
                                 f"features.sequence {bad} have positive_only: false; set positive_only: true or "
                                 f"retrieval.history: point_in_time")
        return self


def load(path: str | Path | None, overrides: Iterable[str] = ()) -> RecForgeConfig:
    return load_config(path, RecForgeConfig, overrides)
