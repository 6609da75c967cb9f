"""The whole scenario config: the feature-store sections plus the sections later stages add.

`load(path, overrides)` is the one entry point the CLI uses; unknown keys anywhere are errors that name the
file, line and key path (see feature_store.config.load_config).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import Field

from feature_store.config import FeatureStoreConfig, load_config
from serving.config import RegistryConfig, ServingConfig
from training.config import TrainConfig
from training.index import IndexConfig
from training.retrieval.config import RetrievalConfig


class RecForgeConfig(FeatureStoreConfig):
    """A scenario: data source, features, split, stores, training, retrieval, index, registry and serving."""

    train: TrainConfig = Field(default_factory=TrainConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)


def load(path: str | Path | None, overrides: Iterable[str] = ()) -> RecForgeConfig:
    return load_config(path, RecForgeConfig, overrides)
