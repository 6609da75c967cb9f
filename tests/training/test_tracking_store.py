"""A new SQLite tracking store is seeded from a cached, migrated empty MLflow database instead of running every
schema migration (training.common.tracking.seed_sqlite_store), and is then a complete MLflow store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from training.common.tracking import seed_sqlite_store, tracking_client


def _revision(db: Path) -> str:
    with sqlite3.connect(db) as con:
        return str(con.execute("select version_num from alembic_version").fetchone()[0])


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "recforge"


def test_a_new_store_is_a_copy_of_the_migrated_template_and_runs_no_migration(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.store.db.utils as db_utils

    tracking_client(f"sqlite:///{tmp_path / 'first' / 'mlflow.db'}")  # makes the template
    [template] = cache.glob("mlflow-*-empty.db")
    assert _revision(template) == db_utils._get_latest_schema_revision()

    def no_migration(*_: object) -> None:
        raise AssertionError("a seeded store must not run MLflow's migrations")

    monkeypatch.setattr(db_utils, "_upgrade_db", no_migration)
    monkeypatch.setattr(db_utils, "_initialize_tables", no_migration)
    db = tmp_path / "second" / "mlflow.db"
    client = tracking_client(f"sqlite:///{db}", registry=True)
    # the whole store works: an experiment, a run with a metric and a tag, a registered model with an alias
    exp = client.create_experiment("seeded", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp).info.run_id
    client.log_metric(run, "auc", 0.75)
    client.set_tag(run, "k", "v")
    client.set_terminated(run)
    client.create_registered_model("ranker")
    version = client.create_model_version("ranker", (tmp_path / "model").as_uri(), run_id=run).version
    client.set_registered_model_alias("ranker", "champion", version)
    assert client.get_run(run).data.metrics == {"auc": 0.75}
    assert client.get_model_version_by_alias("ranker", "champion").version == version
    assert _revision(db) == _revision(template)
    # MLflow added its default experiment when it opened the copy, as it does after migrating a new file
    assert client.get_experiment("0").name == "Default"
    assert str(cache) not in client.get_experiment("0").artifact_location


def test_seeding_leaves_existing_stores_and_other_uris_alone(tmp_path: Path, cache: Path) -> None:
    db = tmp_path / "mlflow.db"
    client = tracking_client(f"sqlite:///{db}")
    exp = client.create_experiment("kept")
    before = db.read_bytes()
    seed_sqlite_store(f"sqlite:///{db}")  # exists: untouched
    assert db.read_bytes() == before and client.get_experiment(exp).name == "kept"
    for uri in ("sqlite://", "sqlite:///:memory:", "http://127.0.0.1:5000", f"file://{tmp_path / 'mlruns'}",
                "postgresql://user@host/db"):
        seed_sqlite_store(uri)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "mlflow.db"]


def test_an_unwritable_cache_leaves_the_new_store_to_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    db = tmp_path / "mlflow.db"
    client = tracking_client(f"sqlite:///{db}")
    assert client.get_experiment(client.create_experiment("fine")).name == "fine" and db.is_file()


def test_a_damaged_template_is_made_again(tmp_path: Path, cache: Path) -> None:
    import mlflow

    cache.mkdir(parents=True)
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    template.write_bytes(b"not a database")
    client = tracking_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_experiment(client.create_experiment("fine")).name == "fine"
    assert _revision(template) == _revision(tmp_path / "mlflow.db")
