"""Secrets never leave the process that needs them: planted in the config, they appear in no output.

Fast: the secret fields are declared once (by type) and every JSON dump of a config, log record, error message and
store description masks them. Slow: the whole demo path (`recforge demo` with a password-protected Redis online
store and an admin token) runs in a fresh process, then every file it wrote (MLflow's database and artifacts,
resolved configs, checkpoints, bundles, reports), its stdout and stderr, and the answers of a served app are
searched for the planted values.
"""

from __future__ import annotations

import io
import json
import logging
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from feature_store.config import dump_config
from feature_store.secrets import redact_url, scrub, secret_fields
from recforge.config import RecForgeConfig, load
from tests.conftest import ROOT, redis_server

TOKEN = "tok-PLANTED-7f3a91c2"
PASSWORD = "pw-PLANTED-5be04d18"
TRACKING_PASSWORD = "mlf-PLANTED-0c9e2a77"


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:secret@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
    ("redis://user:secret@cache.internal:6380/2", "redis://***@cache.internal:6380/2"),
    ("rediss://user:secret@cache.internal", "rediss://***@cache.internal"),
    ("https://alice:s%40cret@mlflow.example.com/api", "https://***@mlflow.example.com/api"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
])
def test_a_url_shows_its_host_but_not_its_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_secret_fields_are_declared_once_by_type() -> None:
    assert dict(secret_fields(RecForgeConfig)) == {"online_store.url": "url", "train.tracking.uri": "url",
                                                   "retrieval.tracking.uri": "url", "serving.admin_token": "text",
                                                   "serving.events_token": "text", "events.bus.url": "url"}


def planted(tmp_path: Path) -> RecForgeConfig:
    return load(ROOT / "configs" / "demo.yaml", [
        f"output_dir={tmp_path}", f"serving.admin_token={TOKEN}", "online_store.type=redis",
        f"online_store.url=redis://:{PASSWORD}@127.0.0.1:6379/0",
        f"train.tracking.uri=https://alice:{TRACKING_PASSWORD}@mlflow.example.com"])


def test_every_json_dump_of_a_config_masks_its_secrets_and_the_code_still_gets_them(tmp_path: Path) -> None:
    cfg = planted(tmp_path)
    text = json.dumps(cfg.model_dump(mode="json"))
    for value in (TOKEN, PASSWORD, TRACKING_PASSWORD):
        assert value not in text
    assert "redis://***@127.0.0.1:6379/0" in text and "https://***@mlflow.example.com" in text
    assert cfg.serving.admin_token == TOKEN and PASSWORD in cfg.online_store.url  # type: ignore[union-attr]


def test_resolved_config_files_are_redacted_and_private(tmp_path: Path) -> None:
    cfg = planted(tmp_path)
    out = tmp_path / "resolved.yaml"
    out.write_text("old")
    out.chmod(0o644)  # an earlier run's file: rewritten private
    dump_config(cfg, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    assert TOKEN not in text and PASSWORD not in text and TRACKING_PASSWORD not in text


def test_log_records_and_error_text_mask_registered_secrets(tmp_path: Path) -> None:
    from recforge import logs

    planted(tmp_path)  # loading registers its secret values
    logs.setup(False)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    for f in root.handlers[0].filters:
        handler.addFilter(f)
    root.addHandler(handler)
    try:
        logging.getLogger("recforge.test").warning("token %s and url %s", TOKEN,
                                                   "redis://u:other-pass@h:1/0")
    finally:
        root.removeHandler(handler)
    assert TOKEN not in stream.getvalue() and "other-pass" not in stream.getvalue()
    assert "redis://***@h:1/0" in stream.getvalue()
    assert scrub(f"failed with {TOKEN}") == "failed with ***"


def test_a_redis_store_describes_itself_without_its_password(tmp_path: Path) -> None:
    from feature_store.online import RedisOnlineStore

    with redis_server(tmp_path, password=PASSWORD) as url:
        store = RedisOnlineStore(url)
        assert PASSWORD not in repr(store) and "***@127.0.0.1" in repr(store)
        wrong = url.replace(PASSWORD, PASSWORD + "-wrong")
        with pytest.raises(ConnectionError) as err:
            RedisOnlineStore(wrong)
        assert PASSWORD not in str(err.value) and "***@127.0.0.1" in str(err.value)


# ------------------------------------------------------------------------------------------------ the demo path
def files_holding(root: Path, values: tuple[str, ...]) -> list[str]:
    """Every file under `root` (any content, binary included) that contains one of `values`."""
    hits = []
    needles = [v.encode() for v in values]
    for f in root.rglob("*"):
        if f.is_file() and not f.is_symlink():
            data = f.read_bytes()
            hits += [f"{f.relative_to(root)}: {v.decode()}" for v in needles if v in data]
    return hits


@pytest.mark.slow
def test_the_demo_path_leaks_no_planted_secret(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    with redis_server(tmp_path, password=PASSWORD) as url:
        cmd = [sys.executable, "-m", "recforge.cli", "demo", "--output-dir", str(out), "--impressions", "30000",
               "--users", "1000", "--items", "300", "--set", "source.n_categories=6", "--num-cpus", "2",
               "--set", f"serving.admin_token={TOKEN}", "--set", "online_store.type=redis",
               "--set", f"online_store.url={url}"]
        demo = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert demo.returncode == 0, demo.stderr[-3000:]
        assert "Materialize -> redis:redis://***@127.0.0.1" in demo.stdout
        shown = subprocess.run([sys.executable, "-m", "recforge.cli", "config", "-c", "configs/demo.yaml",
                                "--output-dir", str(out), "--json",
                                "--set", f"serving.admin_token={TOKEN}", "--set", "online_store.type=redis",
                                "--set", f"online_store.url={url}"], cwd=ROOT, capture_output=True, text=True,
                               timeout=120)
        wrong = url.replace(PASSWORD, PASSWORD + "-x")
        failed = subprocess.run([sys.executable, "-m", "recforge.cli", "materialize", "-c", "configs/demo.yaml",
                                 "--output-dir", str(out),
                                 "--set", "online_store.type=redis", "--set", f"online_store.url={wrong}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "redis://***@127.0.0.1" in failed.stderr, failed.stderr[-2000:]
    values = (TOKEN, PASSWORD)
    for name, text in (("demo stdout", demo.stdout), ("demo stderr", demo.stderr), ("config", shown.stdout),
                       ("failed materialize", failed.stdout + failed.stderr)):
        assert not [v for v in values if v in text], f"{name} shows a planted secret"
    assert not files_holding(out, values)
    resolved = list(out.rglob("resolved_config.yaml"))
    assert resolved and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in resolved), resolved


def test_the_security_docs_name_every_secret_field() -> None:
    section = (ROOT / "docs" / "cli.md").read_text().split("## Security", 1)[1]
    missing = [name for name, _ in secret_fields(RecForgeConfig) if f"`{name}`" not in section]
    assert not missing, f"docs/cli.md#security does not list {missing}"
