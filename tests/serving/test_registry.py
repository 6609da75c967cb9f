"""The model registry and its promotion gate on a real MLflow SQLite store: registration from training runs,
the gate on the same held-out data (an untrained ranker is refused, a trained one accepted), forced promotions that
record who and why, review reports, aliases after promote and rollback, the CLI's exit codes, and retrievers
registered with their FAISS index."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from feature_store.prepare import prepare
from recforge import pipeline
from recforge.cli import main
from recforge.config import RecForgeConfig, load, registry_settings
from serving import registry
from serving.registry import RegistryError
from serving.registry.store import os_user
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SMALL = ["source.n_users=500", "source.n_items=150", "source.n_impressions=20000", "source.n_categories=6",
         "source.days=10", "features.categorical.0.min_freq=1", "features.categorical.1.min_freq=1",
         "prepare.batch_rows=10000", "train.batch_size=512", "train.runtime.num_threads=2",
         "train.early_stopping.patience=10", "retrieval.batch_size=256", "retrieval.runtime.num_threads=2",
         "retrieval.refit=false", "retrieval.baselines=[most_popular]", "retrieval.query_sample=100",
         "index.type=flat"]
RANKER, RETRIEVER = "demo-ranker", "demo-retriever"


def cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, ray_local: object) -> Iterator[dict[str, Any]]:
    """Prepared data, a ranker that barely moved from its random start (bad: a few steps at lr 1e-7) and one
    trained 2 epochs (good), and the config as a file."""
    out = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECFORGE_PROGRESS", "0")
        mp.setenv("RECFORGE_USER", "ci-reviewer")
        cfg = load(ROOT / "configs" / "demo.yaml", [*SMALL, f"output_dir={out}"])
        prepare(cfg)
        bad_cfg = load(ROOT / "configs" / "demo.yaml", [*SMALL, f"output_dir={out}", "train.model=lr",
                                                        "train.max_epochs=1", "train.batch_size=4096",
                                                        "train.optim.dense_lr=1e-7", "train.optim.embedding_lr=1e-7"])
        bad = pipeline.train_ctr(bad_cfg)
        good = pipeline.train_ctr(load(ROOT / "configs" / "demo.yaml", [*SMALL, f"output_dir={out}",
                                                                         "train.max_epochs=2"]))
        path = out / "scenario.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        yield {"cfg": cfg, "settings": registry_settings(cfg), "path": str(path), "bad": bad, "good": good}


@pytest.fixture(scope="module")
def story(scenario: dict[str, Any]) -> dict[str, Any]:
    """The ranker's life in the registry, step by step, with the aliases after each step."""
    settings, path = scenario["settings"], scenario["path"]
    bad_run, good_run = scenario["bad"]["mlflow"]["run_id"], scenario["good"]["mlflow"]["run_id"]
    client = registry.mlflow_client(settings)
    s: dict[str, Any] = {}

    def aliases() -> dict[str, int]:
        return {a: int(v) for a, v in client.get_registered_model(RANKER).aliases.items()}

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECFORGE_PROGRESS", "0")
        mp.setenv("RECFORGE_USER", "ci-reviewer")
        s["v1"] = registry.register_ranker(settings, run_id=bad_run)
        s["aliases_registered"] = aliases()
        s["first"] = registry.promote(settings, RANKER, 1)
        s["aliases_first"] = aliases()
        s["rollback_none"] = cli("rollback", "--config", path, "--model", RANKER)
        s["v2"] = registry.register_ranker(settings)  # the latest finished run: the good one
        s["better"] = registry.promote(settings, RANKER, 2)
        s["aliases_better"] = aliases()
        s["v3"] = registry.register_ranker(settings, run_id=bad_run)
        s["refused_cli"] = cli("promote", "--config", path, "--model", RANKER, "--version", "3")
        s["aliases_refused"] = aliases()
        s["force_no_reason"] = cli("promote", "--config", path, "--model", RANKER, "--version", "3", "--force")
        s["forced"] = registry.promote(settings, RANKER, 3, force=True, reason="campaign hotfix, checked by hand",
                                       user="alice")
        s["aliases_forced"] = aliases()
        s["rollback"] = cli("rollback", "--config", path, "--model", RANKER, "--json")
        s["aliases_rollback"] = aliases()
        s["list"] = cli("registry", "list", "--config", path, "--json")
    s["versions"] = {int(v.version): v for v in client.search_model_versions(f"name = '{RANKER}'")}
    s["good_run"], s["bad_run"] = good_run, bad_run
    return s


def _metric(result: Any, name: str, side: str) -> float:
    rows = result.metrics if hasattr(result, "metrics") else result["metrics"]
    return next(r[side] for r in rows if r["name"] == name)


def test_registration_tags_the_version_with_run_lineage_and_metrics_and_makes_it_challenger(
        story: dict[str, Any], scenario: dict[str, Any]) -> None:
    v1, v2 = story["v1"], story["v2"]
    assert (v1.version, v2.version) == (1, 2)
    assert v2.run_id == story["good_run"]  # no --run-id: the latest finished ranker run
    assert v1.source == f"runs:/{story['bad_run']}/ranker"
    lineage = scenario["good"]["lineage"]
    assert v2.tags["recforge.data_hash"] == lineage["recforge.data_hash"]
    assert v2.tags["recforge.spec_fingerprint"] == lineage["recforge.spec_fingerprint"]
    assert (v1.tags["recforge.model"], v2.tags["recforge.model"]) == ("lr", "dcnv2")
    assert float(v2.tags["metric.test/auc"]) == pytest.approx(scenario["good"]["test"]["auc"], rel=1e-5)
    assert story["aliases_registered"] == {"challenger": 1}


def test_first_promotion_passes_on_its_own_metrics(story: dict[str, Any], scenario: dict[str, Any]) -> None:
    first = story["first"]
    assert first.decision == "accepted" and first.champion_before is None and first.failures == []
    assert story["aliases_first"] == {"champion": 1}  # challenger alias removed
    # the gate scores raw held-out rows through the bundle's spec: the AUC of the prepared test split (training
    # evaluated it under bf16 autocast where the CPU has bf16, the gate in fp32: equal to a few 1e-4)
    assert _metric(first, "auc", "candidate") == pytest.approx(scenario["bad"]["test"]["auc"], abs=2e-3)


def test_gate_accepts_a_better_ranker_scored_on_the_same_rows_and_keeps_the_old_champion_as_previous(
        story: dict[str, Any]) -> None:
    better, first = story["better"], story["first"]
    assert better.decision == "accepted" and better.champion_before == 1
    auc_new, auc_old = _metric(better, "auc", "candidate"), _metric(better, "auc", "champion")
    assert auc_new > auc_old + 0.05
    assert auc_old == _metric(first, "auc", "candidate")  # the champion re-scored on the same rows: same figure
    assert _metric(better, "logloss", "candidate") < _metric(better, "logloss", "champion")
    assert story["aliases_better"] == {"champion": 2, "previous": 1}


def test_gate_refuses_a_worse_ranker_with_exit_4_and_the_figures_on_stderr(story: dict[str, Any]) -> None:
    rc, _, err = story["refused_cli"]
    assert rc == 4
    assert "REFUSED" in err and "auc dropped by" in err and "the tolerance is 0.002" in err
    better = story["better"]
    champion_auc = f"{_metric(better, 'auc', 'candidate'):.5f}"
    assert champion_auc in err  # the champion's AUC on the held-out rows
    assert story["aliases_refused"] == {"champion": 2, "previous": 1, "challenger": 3}  # nothing moved
    v3 = story["versions"][3]
    assert v3.tags["recforge.decision.failures"].startswith("auc dropped by")


def test_force_needs_a_reason_and_records_who_and_why(story: dict[str, Any]) -> None:
    rc, _, err = story["force_no_reason"]
    assert rc == 2 and "--force needs a non-empty --reason" in err
    forced = story["forced"]
    assert forced.decision == "forced" and forced.promoted and forced.failures
    assert story["aliases_forced"] == {"champion": 3, "previous": 2}
    tags = story["versions"][3].tags
    assert tags["recforge.decision"] == "forced"
    me = os_user()  # the OS account records the decision; a given name is a claim beside it
    assert tags["recforge.decision.user"] == f"{me} (claims alice)"
    assert tags["recforge.decision.reason"] == "campaign hotfix, checked by hand"
    assert story["versions"][2].tags["recforge.decision.user"] == f"{me} (claims ci-reviewer)"  # $RECFORGE_USER


def test_every_attempt_writes_a_review_with_both_metrics_deltas_lineage_and_decision(
        story: dict[str, Any], scenario: dict[str, Any]) -> None:
    forced = story["forced"]
    md = Path(forced.review["markdown"]).read_text()
    html = Path(forced.review["html"]).read_text()
    auc_c, auc_p = _metric(forced, "auc", "candidate"), _metric(forced, "auc", "champion")
    for text in (md, html):
        assert f"{auc_c:.5f}" in text and f"{auc_p:.5f}" in text and f"{auc_c - auc_p:+.5f}" in text
        assert scenario["good"]["lineage"]["recforge.data_hash"] in text
        assert scenario["bad"]["lineage"]["recforge.spec_fingerprint"] in text
        assert "FORCED" in text and "alice" in text and "campaign hotfix" in text
        assert "train.model" in text  # config diff: lr (candidate) vs dcnv2 (champion)
    assert "| `train.model` | lr | dcnv2 |" in md
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(images) == 2 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "<img" in html and "src='plots/" not in html  # self-contained
    assert (Path(forced.review["local_dir"]) / "plots" / "roc.png").is_file()
    # one review per attempt: 3 accepted/forced + 1 refused, under <output_dir>/reviews and in the runs
    reviews = sorted((Path(scenario["cfg"].output_dir) / "reviews").glob(f"{RANKER}-v*"))
    assert [p.name.split("-")[2] for p in reviews].count("v3") == 2 and len(reviews) == 4
    summary = json.loads(Path(forced.review["json"]).read_text())
    assert summary["decision"] == "forced" and summary["champion"]["version"] == 2
    client = registry.mlflow_client(scenario["settings"])
    uri = story["versions"][3].tags["recforge.review.uri"]
    assert uri == forced.review["artifact_uri"] and uri.startswith(f"runs:/{story['bad_run']}/reviews/")
    folder = uri.split("/", 2)[2].rsplit("/", 1)[0]  # reviews/<timestamp>
    logged = {Path(a.path).name for a in client.list_artifacts(story["bad_run"], folder)}
    assert {"review.md", "review.html", "review.json", "plots"} <= logged


def test_rollback_restores_previous_and_fails_clearly_without_one(story: dict[str, Any]) -> None:
    rc, _, err = story["rollback_none"]
    assert rc == 2 and "has no 'previous' version to roll back to" in err
    rc, out, _ = story["rollback"]
    assert rc == 0 and json.loads(out)["champion"] == 2 and json.loads(out)["replaced"] == 3
    assert story["aliases_rollback"] == {"champion": 2, "previous": 3}


def test_registry_list_shows_versions_aliases_metrics_and_decisions(story: dict[str, Any]) -> None:
    rc, out, _ = story["list"]
    assert rc == 0
    doc = json.loads(out)
    model = next(m for m in doc["models"] if m["name"] == RANKER)
    assert model["kind"] == "ranker" and model["aliases"] == {"champion": 2, "previous": 3}  # after the rollback
    by_version = {v["version"]: v for v in model["versions"]}
    assert [by_version[v]["decision"] for v in (1, 2, 3)] == ["accepted", "accepted", "forced"]
    assert by_version[3]["decision_reason"] == "campaign hotfix, checked by hand"
    assert float(by_version[2]["gate"]["auc"]) == pytest.approx(_metric(story["better"], "auc", "candidate"), rel=1e-5)
    assert "test/auc" in by_version[1]["metrics"]


def test_promote_names_the_missing_version(scenario: dict[str, Any], story: dict[str, Any]) -> None:
    with pytest.raises(RegistryError, match=r"has no version 99 \(versions: 1, 2, 3"):
        registry.promote(scenario["settings"], RANKER, 99)


def test_gate_scores_a_ranker_with_another_vocabulary_through_its_own_spec(scenario: dict[str, Any],
                                                                           story: dict[str, Any],
                                                                           tmp_path: Path) -> None:
    """A candidate prepared with other vocabularies (rare ids pooled into OOV) is scored on the scenario's raw
    test rows through its own spec: its gate AUC is the test AUC of its own run."""
    settings = scenario["settings"]
    other = load(ROOT / "configs" / "demo.yaml", [*SMALL, f"output_dir={tmp_path}", "train.model=lr",
                                                  "train.max_epochs=1", "features.categorical.0.min_freq=40",
                                                  "features.categorical.1.min_freq=150",
                                                  f"train.tracking.uri={settings.tracking_uri}"])
    prepare(other)
    trained = pipeline.train_ctr(other)
    version = registry.register_ranker(settings, run_id=trained["mlflow"]["run_id"])
    result = registry.promote(settings, RANKER, version.version, user="carol")
    champion = story["aliases_rollback"]["champion"]
    assert result.champion_before == champion
    their_spec = trained["lineage"]["recforge.spec_fingerprint"]
    assert their_spec != scenario["good"]["lineage"]["recforge.spec_fingerprint"]
    assert _metric(result, "auc", "candidate") == pytest.approx(trained["test"]["auc"], abs=2e-3)
    assert _metric(result, "auc", "champion") == _metric(story["better"], "auc", "candidate")  # champion v2
    review = json.loads(Path(result.review["json"]).read_text())
    assert review["candidate"]["spec_fingerprint"] == their_spec
    assert any("was trained on prepared data" in w for w in review["warnings"])


# ------------------------------------------------------------------------------------------------ retrievers
@pytest.fixture(scope="module")
def retrieval_runs(scenario: dict[str, Any], story: dict[str, Any]) -> dict[str, Any]:
    """A two-tower run with its index, then a second run (another seed) that barely moved from its random start,
    registered first against the stale index, then with its own."""
    cfg: RecForgeConfig = scenario["cfg"]
    settings = scenario["settings"]
    os.environ["RECFORGE_PROGRESS"] = "0"
    first = pipeline.train_retrieval(load(scenario["path"], ["retrieval.max_epochs=3"]))
    index = pipeline.build_index(cfg)
    old_index = Path(cfg.output_dir) / "first_index"
    shutil.copytree(index["path"], old_index)
    v1 = registry.register_retriever(settings)
    promoted = registry.promote(settings, RETRIEVER, 1, user="bob")
    weak = pipeline.train_retrieval(load(scenario["path"], ["retrieval.max_epochs=1", "retrieval.optim.dense_lr=1e-7",
                                                            "retrieval.optim.embedding_lr=1e-7",
                                                            "retrieval.runtime.seed=7"]))
    with pytest.raises(RegistryError) as stale:
        registry.register_retriever(settings, index_dir=old_index)  # an index of the first run's vectors
    pipeline.build_index(cfg)
    v2 = registry.register_retriever(settings)
    refused = registry.promote(settings, RETRIEVER, 2, user="bob")
    return {"first": first, "weak": weak, "index": index, "v1": v1, "v2": v2, "promoted": promoted,
            "refused": refused, "stale": str(stale.value)}


def test_retriever_is_registered_with_its_index_logged_into_the_bundle(retrieval_runs: dict[str, Any],
                                                                      scenario: dict[str, Any]) -> None:
    from training.retrieval.bundle import load_retriever

    r = retrieval_runs
    assert r["v1"].source == f"runs:/{r['first']['mlflow']['run_id']}/retrieval_bundle"
    assert r["v2"].run_id == r["weak"]["mlflow"]["run_id"]
    assert "find themselves in this index" in r["stale"]
    client = registry.mlflow_client(scenario["settings"])
    local = client.download_artifacts(r["first"]["mlflow"]["run_id"], "retrieval_bundle",
                                      str(Path(scenario["cfg"].output_dir) / "dl"))
    retriever = load_retriever(local)
    assert retriever.index is not None and retriever.index_recall == r["index"]["recall"]
    # a new training run writes its bundle whole (no index of an earlier run survives); registration adds its own
    weak_index = client.download_artifacts(r["weak"]["mlflow"]["run_id"], "retrieval_bundle/index/index.json",
                                           str(Path(scenario["cfg"].output_dir) / "dl_weak"))
    rebuilt = Path(scenario["cfg"].output_dir) / "retrieval" / "bundle" / "index" / "index.json"
    assert json.loads(Path(weak_index).read_text()) == json.loads(rebuilt.read_text())


def test_retriever_gate_compares_recall_on_the_same_queries(retrieval_runs: dict[str, Any]) -> None:
    r = retrieval_runs
    key = "recall@50"
    first, refused = r["promoted"], r["refused"]
    assert first.decision == "accepted" and first.aliases["champion"] == 1
    assert _metric(first, key, "candidate") == pytest.approx(r["first"]["test"]["two_tower"][key], abs=1e-9)
    assert refused.decision == "refused" and refused.aliases == {"champion": 1, "challenger": 2}
    assert _metric(refused, key, "champion") == _metric(first, key, "candidate")
    assert _metric(refused, key, "candidate") < _metric(refused, key, "champion") - 0.005
    html = Path(refused.review["html"]).read_text()
    assert "alt='recall_at_k'" in html and "Index recall" in html
    assert str(r["index"]["recall"]["recall_at_k"]) in html
