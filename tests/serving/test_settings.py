"""The settings the composition root hands to serving (`recforge.config.registry_settings` / `app_settings`):
the tracking store, experiments and model names resolved once from the scenario config, the way the training jobs
and `recforge serve` use them."""

from __future__ import annotations

from pathlib import Path

from recforge.config import app_settings, load, registry_settings
from tests.conftest import ROOT
from training.common.tracking import default_tracking_uri

DEMO = ROOT / "configs" / "demo.yaml"


def test_registry_settings_default_to_the_scenario_store_experiment_and_model_names(tmp_path: Path) -> None:
    cfg = load(DEMO, [f"output_dir={tmp_path}"])
    s = registry_settings(cfg)
    assert s.tracking_uri == default_tracking_uri(tmp_path)
    assert (s.ranker_experiment, s.retriever_experiment) == (cfg.name, cfg.name)
    assert (s.ranker_model, s.retriever_model) == (f"{cfg.name}-ranker", f"{cfg.name}-retriever")
    assert s.gate == cfg.registry.gate and s.label == cfg.features.label
    assert s.feature_store.source == cfg.source and s.prepared_dir == tmp_path / "prepared"


def test_registry_settings_follow_configured_tracking_uri_experiment_and_names(tmp_path: Path) -> None:
    cfg = load(DEMO, [f"output_dir={tmp_path}", "train.tracking.uri=sqlite:///elsewhere.db",
                      "train.tracking.experiment=rankers", "registry.ranker_name=r", "registry.retriever_name=q",
                      "registry.gate.auc_tolerance=0.01"])
    s = registry_settings(cfg)
    assert s.tracking_uri == "sqlite:///elsewhere.db" and s.experiments("ranker") == ["rankers"]
    assert (s.model_name("ranker"), s.model_name("retriever")) == ("r", "q")
    assert s.gate.auc_tolerance == 0.01


def test_each_stage_is_looked_for_in_its_own_experiment_of_the_one_store(tmp_path: Path) -> None:
    cfg = load(DEMO, [f"output_dir={tmp_path}", "retrieval.tracking.experiment=two-tower",
                      "retrieval.tracking.uri=sqlite:///one.db"])
    s = registry_settings(cfg)
    assert (s.experiments("ranker"), s.experiments("retriever")) == ([cfg.name], ["two-tower"])
    assert s.tracking_uri == "sqlite:///one.db"  # the retrieval stage's store when the ranking stage names none


def test_app_settings_carry_what_the_app_serves_and_reads(tmp_path: Path) -> None:
    cfg = load(DEMO, [f"output_dir={tmp_path}", "serving.port=8123", "registry.ranker_name=r"])
    a = app_settings(cfg)
    assert a.serving.port == 8123 and a.ranker_model == "r" and a.retriever_model == f"{cfg.name}-retriever"
    assert a.tracking_uri == registry_settings(cfg).tracking_uri
    assert a.has_retriever == bool(cfg.retrieval.user_features and cfg.retrieval.item_features)
    assert a.online_store == cfg.online_store and a.features == cfg.features
