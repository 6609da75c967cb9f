"""The whole scenario config: the feature-store sections plus the sections later stages add.

`load(path, overrides)` is the one entry point the CLI uses; unknown keys anywhere are errors that name the
file, line and key path (see feature_store.config.load_config).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import Field

from feature_store.config import FeatureStoreConfig, load_config
from training.config import TrainConfig


class RecForgeConfig(FeatureStoreConfig):
    """A scenario: data source, features, split, stores, training (and, in later stages, serving)."""

    train: TrainConfig = Field(default_factory=TrainConfig)


def load(path: str | Path | None, overrides: Iterable[str] = ()) -> RecForgeConfig:
    return load_config(path, RecForgeConfig, overrides)
