"""The whole scenario config: the feature-store sections plus the sections later stages add.

`load(path, overrides)` is the one entry point the CLI uses; unknown keys anywhere are errors that name the
file, line and key path (see feature_store.config.load_config).

The packages below `recforge` never see `RecForgeConfig`: this module hands each the part it needs
(`feature_store_config`, `registry_settings` for serving.registry, `app_settings` for serving.app/server), so
derived values (the tracking URI, experiment and model names) are resolved here, once.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from analytics.config import AnalyticsConfig
from feature_store import secrets
from feature_store.config import FeatureStoreConfig, load_config
from privacy.config import PrivacyConfig
from serving.config import AppSettings, ExperimentsConfig, RegistryConfig, ServingConfig, model_names
from serving.registry.settings import RegistrySettings
from training.common.tracking import default_tracking_uri
from training.index.config import IndexConfig
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
    experiments: ExperimentsConfig = Field(default_factory=ExperimentsConfig,
                                           description="experiments on the serving path (`recforge experiment`)")
    analytics: AnalyticsConfig = Field(default_factory=AnalyticsConfig,
                                       description="marketing analyses on the scenario's purchases (`recforge "
                                                   "segment`)")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig,
                                   description="aggregate releases that may leave the platform (`recforge report`: "
                                               "k-anonymity, differential privacy, the budget ledger) and the "
                                               "clean room (`recforge cleanroom`)")

    @model_validator(mode="after")
    def _exposure_and_click_types(self) -> RecForgeConfig:
        """Exposures are logged as events of `experiments.exposure_type` and clicks are read from
        `experiments.click_types`: both must be event types the scenario accepts, and an exposure must not count as
        a positive interaction (it would enter behaviour histories)."""
        e, ev = self.experiments, self.events
        if not e.definitions:  # no experiment: nothing is logged or read with these types
            return self
        if e.exposure_type not in ev.types:
            raise ValueError(f"experiments.exposure_type '{e.exposure_type}' is not in events.types {ev.types}; add it "
                             f"there or pick one of them")
        if e.exposure_type in ev.positive_types:
            raise ValueError(f"experiments.exposure_type '{e.exposure_type}' is in events.positive_types: exposures "
                             f"would enter behaviour histories; use a type that is not positive (impression)")
        unknown = [t for t in e.click_types if t not in ev.types]
        if unknown:
            raise ValueError(f"experiments.click_types {unknown} are not in events.types {ev.types}")
        return self

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

    @model_validator(mode="after")
    def _tower_features_are_declared(self) -> RecForgeConfig:
        """What `train retrieval` checks against the feature spec, checked against the features the spec is fitted
        from (the spec has one feature per declared name), so `recforge config` reports it before any run."""
        if not (self.retrieval.user_features or self.retrieval.item_features):
            return self  # no retrieval stage in this scenario
        declared = [f.name for group in self.features.feature_groups() for f in group]
        errors: list[InitErrorDetails] = []
        for key in ("user_features", "item_features"):
            names = getattr(self.retrieval, key)
            if not names:
                errors.append(InitErrorDetails(
                    type=PydanticCustomError("empty_tower", "empty: name the features of that tower (choices: "
                                                            "{valid})", {"valid": ", ".join(declared)}),
                    loc=("retrieval", key), input=names))
            for i, name in enumerate(names):
                if name not in declared:
                    errors.append(InitErrorDetails(
                        type=PydanticCustomError("unknown_key", "unknown feature", {"valid": ", ".join(declared)}),
                        loc=("retrieval", key, i), input=name))
        both = sorted(set(self.retrieval.user_features) & set(self.retrieval.item_features))
        if both:
            errors.append(InitErrorDetails(
                type=PydanticCustomError("both_towers", "features {both} are in both towers; keep each in one",
                                         {"both": both}),
                loc=("retrieval", "item_features"), input=both))
        if errors:
            raise ValidationError.from_exception_data("RecForgeConfig", errors)
        return self

    @model_validator(mode="after")
    def _gauc_for_early_stopping(self) -> RecForgeConfig:
        reason = gauc_absent_reason(self)
        if self.train.early_stopping.metric.endswith("/gauc") and reason is not None:
            raise ValidationError.from_exception_data("RecForgeConfig", [InitErrorDetails(
                type=PydanticCustomError("gauc_absent", "gAUC is not computed ({reason}); choose valid/auc or "
                                                        "valid/logloss", {"reason": reason}),
                loc=("train", "early_stopping", "metric"), input=self.train.early_stopping.metric)])
        return self

    @model_validator(mode="after")
    def _one_tracking_store(self) -> RecForgeConfig:
        """The registry registers both stages' runs from one MLflow store (`runs:/<id>/...` sources resolve
        within a store), so the two stages may name different experiments but not different stores."""
        a, b = self.train.tracking.uri, self.retrieval.tracking.uri
        if a is not None and b is not None and a != b:
            raise ValueError(f"train.tracking.uri ({a}) and retrieval.tracking.uri ({b}) differ: the model registry "
                             f"reads both stages' runs from one MLflow store; set them to the same URI or leave "
                             f"retrieval.tracking.uri unset")
        return self

    @property
    def retrieval_tracking_uri(self) -> str | None:
        """The retrieval stage's store: its own `tracking.uri`, else the ranking stage's (one registry store)."""
        return self.retrieval.tracking.uri or self.train.tracking.uri


def load(path: str | Path | None, overrides: Iterable[str] = (), *, models: bool = True) -> RecForgeConfig:
    """The scenario config. `models=False` leaves `train.model` / `train.model_params` unchecked against the model
    zoo (which imports torch): for commands that never build a model (`training.ranking.config.checks_models`)."""
    cfg = load_config(path, RecForgeConfig, overrides, context=None if models else {"models": False})
    secrets.register(cfg)  # logs and error messages of this process mask its secret values
    return cfg


def gauc_absent_reason(cfg: FeatureStoreConfig | RecForgeConfig) -> str | None:
    """Why the ranker reports no gAUC, or None when it does. gAUC averages per-group AUCs, which means "how well
    each user's items are ordered" only when the groups are users: `features.user_key` must name the user entity,
    i.e. be the key of `entities.user`, the profiles' `user_key` (profiles enabled), or a feature of the retrieval
    user tower. Criteo's `user_key: C1` is a hashed ad column and is none of these. `train.gauc` true/false
    overrides the rule."""
    key = cfg.features.user_key
    forced = cfg.train.gauc if isinstance(cfg, RecForgeConfig) else None
    if forced is not None:
        return None if forced else "train.gauc is false"
    user = cfg.entities.get("user")
    if user is not None and user.key == key:
        return None
    if cfg.profiles.enabled and cfg.profiles.user_key == key:
        return None
    if isinstance(cfg, RecForgeConfig) and key in cfg.retrieval.user_features:
        return None
    return (f"features.user_key '{key}' does not name the user entity (not the key of entities.user, not the "
            f"profiles' user_key, not a retrieval user-tower feature), so per-group AUCs would not be per-user; "
            f"set train.gauc: true to group by it anyway")


def tracking_uri(cfg: RecForgeConfig) -> str:
    """The scenario's MLflow tracking (and registry) store: `train.tracking.uri`, else `retrieval.tracking.uri`,
    else `<output_dir>/mlflow.db`. One store holds both stages' runs: the registry's `runs:/<id>/...` sources
    resolve within it."""
    return cfg.train.tracking.uri or cfg.retrieval.tracking.uri or default_tracking_uri(cfg.output_dir)


def feature_store_config(cfg: RecForgeConfig) -> FeatureStoreConfig:
    """The feature-store sections of a scenario as a plain `FeatureStoreConfig` (the section objects are shared,
    not copied): what a package below `recforge` may be handed without seeing the later stages' sections."""
    return FeatureStoreConfig.model_validate({k: getattr(cfg, k) for k in FeatureStoreConfig.model_fields})


def registry_settings(cfg: RecForgeConfig) -> RegistrySettings:
    """The `RegistrySettings` of a scenario (serving.registry). Experiments are where the training jobs log (and
    where `register` looks for a stage's latest run): `train.tracking.experiment` / `retrieval.tracking.experiment`,
    each defaulting to the scenario name."""
    ranker_model, retriever_model = model_names(cfg.name, cfg.registry)
    return RegistrySettings(
        name=cfg.name,
        output_dir=Path(cfg.output_dir),
        tracking_uri=tracking_uri(cfg),
        ranker_experiment=cfg.train.tracking.experiment or cfg.name,
        retriever_experiment=cfg.retrieval.tracking.experiment or cfg.name,
        ranker_model=ranker_model,
        retriever_model=retriever_model,
        gate=cfg.registry.gate,
        feature_store=feature_store_config(cfg),
    )


def prepared_summary(cfg: RecForgeConfig) -> dict[str, Any] | None:
    """The prepared data's summary.json (`recforge prepare`), or None where this machine has none."""
    import json

    from feature_store.layout import RunLayout

    path = RunLayout(Path(cfg.output_dir)).summary
    return json.loads(path.read_text()) if path.is_file() else None


def app_settings(cfg: RecForgeConfig) -> AppSettings:
    """The `AppSettings` of a scenario (serving.app.build_app, serving.server.start_app / serve_forever)."""
    from analytics.report import output_dir as analytics_output_dir  # its imports are heavy: only when serving

    ranker_model, retriever_model = model_names(cfg.name, cfg.registry)
    return AppSettings(
        name=cfg.name,
        output_dir=Path(cfg.output_dir),
        serving=cfg.serving,
        tracking_uri=tracking_uri(cfg),
        ranker_model=ranker_model,
        retriever_model=retriever_model,
        features=cfg.features,
        online_store=cfg.online_store,
        has_retriever=bool(cfg.retrieval.user_features and cfg.retrieval.item_features),
        feature_store=feature_store_config(cfg),
        experiments=cfg.experiments,
        analytics_dir=analytics_output_dir(feature_store_config(cfg), cfg.analytics),
    )
