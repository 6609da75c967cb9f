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
import re
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

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
                                                   "serving.events_token": "text", "serving.read_token": "text",
                                                   "serving.console_token": "text",
                                                   "events.bus.url": "url"}


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
PSEUDONYM_KEY = "pk-PLANTED-3d7e0b1a9c4f58e26a0d7b3c1e9f4a58"
FIRST_USER = 7_310_000_000_001  # distinctive raw ids: 13 digits that cannot turn up by chance
N_USERS = 1000
RAW_TEXT = (b"@example.com", b"+1555731")  # the emails and phones the generator makes up from the ids
# any raw id's digits, but the first one's: it is the generator's setting (source.first_user_id), so the resolved
# configs and the MLflow params hold it as a number of the config
RAW_ID = re.compile(rb"731000000(?!0001(?!\d))\d{4}(?!\d)")


def files_holding(root: Path, values: tuple[str, ...]) -> list[str]:
    """Every file under `root` (any content, binary included) that contains one of `values`."""
    hits = []
    needles = [v.encode() for v in values]
    for f in root.rglob("*"):
        if f.is_file() and not f.is_symlink():
            data = f.read_bytes()
            hits += [f"{f.relative_to(root)}: {v.decode()}" for v in needles if v in data]
    return hits


def raw_ids_in(path: Path, raw_ids: np.ndarray) -> list[str]:
    """Where the file holds a raw user id, email or phone: Parquet and SQLite files are decoded (their pages may be
    compressed), every file's bytes are searched for the raw text and for the ids as 8-byte integers at every
    alignment."""
    data = path.read_bytes()
    hits = [f"bytes {n!r}" for n in RAW_TEXT if n in data] + [f"bytes {m!r}" for m in RAW_ID.findall(data)[:3]]
    for shift in range(8):
        usable = (len(data) - shift) // 8 * 8
        if usable > 0 and np.isin(np.frombuffer(data[shift:shift + usable], dtype="<i8"), raw_ids).any():
            hits.append(f"an int64 raw id at alignment {shift}")
            break
    if data[:4] == b"PAR1":
        table = pq.read_table(path)
        for name in table.column_names:
            col = table.column(name)
            if pa.types.is_integer(col.type) and np.isin(col.to_numpy(zero_copy_only=False), raw_ids).any():
                hits.append(f"column {name}: raw ids")
            elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                text = "\n".join(v for v in col.to_pylist() if v).encode()
                hits += [f"column {name}: {n!r}" for n in RAW_TEXT if n in text] + [
                    f"column {name}: {m!r}" for m in RAW_ID.findall(text)[:3]]
    if data[:16] == b"SQLite format 3\x00":
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                for row in con.execute(f'SELECT * FROM "{table}"'):
                    for v in row:
                        if isinstance(v, int) and v in set(raw_ids.tolist()):
                            hits.append(f"table {table}: raw id {v}")
                        elif isinstance(v, str | bytes):
                            b = v.encode() if isinstance(v, str) else v
                            hits += [f"table {table}: {n!r}" for n in RAW_TEXT if n in b] + [
                                f"table {table}: {m!r}" for m in RAW_ID.findall(b)[:3]]
        finally:
            con.close()
    return [f"{path}: {h}" for h in hits]


def demo_prints_every_stage(text: str, out: Path) -> None:
    """What `recforge demo` must print and write (one demo run serves this and the leak checks: it is the suite's
    longest test)."""
    for needle in ("events     30,000", "rows rejected: 0", "vocabulary sizes", "user_id", "split (time)",
                   "user_history", "Train two-tower retrieval", "most_popular", "Index flat", "recall guard",
                   "Registry (", "demo-ranker v1: accepted", "demo-retriever v1: accepted",
                   "Serving at http://127.0.0.1:", "fallback=popular", "no-such-item:unknown_item", "app shut down",
                   "Total time:"):
        assert needle in text, f"{needle!r} missing from demo output:\n{text}"
    # the purchase the demo posts reaches the user's history through the stream, and /recommend leaves it out
    assert "/recommend after:" in text and "the stream did not apply it" not in text, text
    assert (out / "prepared" / "spec" / "feature_spec.json").is_file()
    bundle = out / "retrieval" / "bundle"
    assert (bundle / "index" / "index.faiss").is_file() and (bundle / "embeddings").is_dir()
    assert list((out / "reviews").glob("demo-ranker-v1-*/review.md"))
    resolved = yaml.safe_load((out / "prepared" / "resolved_config.yaml").read_text())
    assert resolved["source"]["n_impressions"] == 30000 and resolved["prepare"]["num_cpus"] == 2


@pytest.mark.slow
def test_the_demo_path_leaks_no_planted_secret_and_no_raw_user_id(tmp_path: Path) -> None:
    """The whole demo path (generate -> prepare -> materialize -> train -> register/promote -> serve with
    /recommend, /predict, POST /events, an experiment with simulated visitors and its report), then the segments and
    a privacy release, with pseudonymisation on and distinctive raw ids, emails and phones in the source: no file
    written (Parquet, SQLite, MLflow database and artifacts, logs, reports) nor the Redis online store holds a raw
    id, and no output shows a planted secret."""
    import os

    out = tmp_path / "demo"
    env = {**os.environ, "RECFORGE_PSEUDONYM_KEY": PSEUDONYM_KEY}
    privacy = ["--set", "pseudonymisation.enabled=true", "--set", "pseudonymisation.columns=[email, phone]",
               "--set", f"source.first_user_id={FIRST_USER}", "--set", "source.personal_columns=true"]
    with redis_server(tmp_path, password=PASSWORD) as url:
        store = ["--set", "online_store.type=redis", "--set", f"online_store.url={url}"]
        cmd = [sys.executable, "-m", "recforge.cli", "demo", "--output-dir", str(out), "--impressions", "30000",
               "--users", str(N_USERS), "--items", "300", "--set", "source.n_categories=6", "--num-cpus", "2",
               "--set", f"serving.admin_token={TOKEN}", *store, *privacy]
        demo = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert demo.returncode == 0, demo.stderr[-3000:]
        assert "Materialize -> redis:redis://***@127.0.0.1" in demo.stdout
        demo_prints_every_stage(demo.stdout, out)
        common = ["-c", "configs/demo.yaml", "--output-dir", str(out), "--set", "source.n_impressions=30000",
                  "--set", f"source.n_users={N_USERS}", "--set", "source.n_items=300", "--set",
                  "source.n_categories=6", "--set", "analytics.holdout_days=7", "--set",
                  "analytics.churn.horizon_days=5", *store, *privacy]
        segment = subprocess.run([sys.executable, "-m", "recforge.cli", "segment", *common], cwd=ROOT,
                                 capture_output=True, text=True, timeout=300, env=env)
        assert segment.returncode == 0, segment.stderr[-3000:]
        report = subprocess.run([sys.executable, "-m", "recforge.cli", "report", "run", "by_segment", *common,
                                 "--set", "privacy.queries.by_segment={dataset: customers, group_by: "
                                          "[kmeans_segment], epsilon: 0.5, delta: 1.0e-7}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert report.returncode == 0, report.stderr[-3000:]
        shown = subprocess.run([sys.executable, "-m", "recforge.cli", "config", "-c", "configs/demo.yaml",
                                "--output-dir", str(out), "--json",
                                "--set", f"serving.admin_token={TOKEN}", *store], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
        wrong = url.replace(PASSWORD, PASSWORD + "-x")
        failed = subprocess.run([sys.executable, "-m", "recforge.cli", "materialize", "-c", "configs/demo.yaml",
                                 "--output-dir", str(out),
                                 "--set", "online_store.type=redis", "--set", f"online_store.url={wrong}", *privacy],
                                cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        import redis

        client = redis.Redis.from_url(url)
        online = b"\n".join(k + b"=" + b"|".join(client.hgetall(k).values()) if client.type(k) == b"hash"
                             else k for k in client.scan_iter(count=1000))
    assert failed.returncode == 2 and "redis://***@127.0.0.1" in failed.stderr, failed.stderr[-2000:]
    values = (TOKEN, PASSWORD, PSEUDONYM_KEY)
    for name, text in (("demo stdout", demo.stdout), ("demo stderr", demo.stderr), ("config", shown.stdout),
                       ("failed materialize", failed.stdout + failed.stderr), ("segment", segment.stdout),
                       ("report", report.stdout)):
        assert not [v for v in values if v in text], f"{name} shows a planted secret"
    assert not files_holding(out, values)
    resolved = list(out.rglob("resolved_config.yaml"))
    assert resolved and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in resolved), resolved

    raw_ids = np.arange(FIRST_USER, FIRST_USER + N_USERS, dtype=np.int64)
    written = [f for f in out.rglob("*") if f.is_file() and not f.is_symlink()
               and (out / "raw") not in f.parents]  # raw/: the generated source itself, the input as given
    kinds = {f.suffix for f in written}
    assert {".parquet", ".db", ".json", ".html"} <= kinds, kinds  # the scan covers every kind of output
    assert any("mlartifacts" in f.parts for f in written) and any(f.name == "ledger.db" for f in written)
    leaks = [hit for f in written for hit in raw_ids_in(f, raw_ids)]
    assert not leaks, leaks[:20]
    ray_logs = Path(tempfile.gettempdir()) / "ray" / "session_latest" / "logs"  # the demo's own Ray session
    if ray_logs.is_dir():  # the serving replicas' and the stream processor's logs
        logged = [f for f in ray_logs.rglob("*") if f.is_file() and f.suffix in (".log", ".out", ".err")]
        assert logged
        leaks = [f"{f}: {n!r}" for f in logged for n in (*RAW_TEXT, PSEUDONYM_KEY.encode())
                 if n in f.read_bytes()] + [f"{f}: raw id" for f in logged if RAW_ID.search(f.read_bytes())]
        assert not leaks, leaks[:20]
    assert not [n for n in RAW_TEXT if n in online] and not RAW_ID.search(online), \
        "the Redis online store holds a raw id, email or phone"
    assert online.count(b"\n") > 100  # the store was read: it holds the users' features, under pseudonyms
    assert "Release by_segment of data set customers" in report.stdout, report.stdout


def test_the_security_docs_name_every_secret_field() -> None:
    section = (ROOT / "docs" / "cli.md").read_text().split("## Security", 1)[1]
    missing = [name for name, _ in secret_fields(RecForgeConfig) if f"`{name}`" not in section]
    assert not missing, f"docs/cli.md#security does not list {missing}"
