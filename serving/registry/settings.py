"""What the registry needs to know about a scenario, as one small frozen object.

Why not the whole scenario config: `serving` sits below `recforge` in the import order (feature_store <- training
<- serving <- recforge), so the registry cannot know `RecForgeConfig`. The composition root builds this object
(`recforge.config.registry_settings(cfg)`) and hands it down; tests build it the same way. Everything here is a
plain value except `gate` (the `registry.gate` section) and `feature_store` (the feature-store sections, which the
gate needs to rebuild the raw held-out rows with `feature_store.prepare.assemble_events`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from feature_store.config import FeatureStoreConfig
from serving.config import GateConfig

Kind = Literal["ranker", "retriever"]


@dataclass(frozen=True)
class RegistrySettings:
    """One scenario's registry: where its store is, which experiments its runs go to, what its models are called
    and how strict the promotion gate is.

    Attributes:
        name: the scenario's name (messages, default experiment).
        output_dir: the scenario's output directory (prepared data, the local index, review reports).
        tracking_uri: the MLflow tracking store, which also holds the registry.
        ranker_experiment: the experiment `recforge train ctr` logs to.
        retriever_experiment: the experiment `recforge train retrieval` logs to.
        ranker_model: the registered-model name of the scenario's rankers.
        retriever_model: the registered-model name of the scenario's retrievers.
        gate: the promotion gate's tolerances.
        feature_store: the feature-store sections (source, features, split, entities, ...) of the scenario.
    """

    name: str
    output_dir: Path
    tracking_uri: str
    ranker_experiment: str
    retriever_experiment: str
    ranker_model: str
    retriever_model: str
    gate: GateConfig
    feature_store: FeatureStoreConfig

    @property
    def prepared_dir(self) -> Path:
        """The prepared data set: the retriever gate's held-out queries and the lineage hash."""
        return Path(self.output_dir) / "prepared"

    @property
    def reviews_dir(self) -> Path:
        """Where every promotion attempt's review is written locally (it is also logged into the run)."""
        return Path(self.output_dir) / "reviews"

    @property
    def label(self) -> str:
        """The label column of the raw rows the ranker gate scores."""
        return self.feature_store.features.label

    def experiments(self, kind: Kind) -> list[str]:
        """Experiment names a scenario's runs of `kind` go to (where `find_run` looks for the latest one)."""
        return [self.ranker_experiment if kind == "ranker" else self.retriever_experiment]

    def model_name(self, kind: Kind) -> str:
        """The registered-model name of `kind`."""
        return self.ranker_model if kind == "ranker" else self.retriever_model
