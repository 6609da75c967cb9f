"""Online feature store: the same behaviours proven on a real SQLite file and a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from feature_store.config import RedisOnlineStoreConfig, SQLiteOnlineStoreConfig
from feature_store.online import (
    OnlineStore,
    RedisOnlineStore,
    SQLiteOnlineStore,
    materialize,
    open_online_store,
)
from feature_store.online.base import WRITE_BATCH_ROWS
from feature_store.raycluster import free_port
from tests.conftest import redis_server

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away redis-server on a free 127.0.0.1 port, no persistence; skipped where it cannot start."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@dataclass
class Backend:
    """How to open (again, or from another process) one test's store, and how to look at its storage."""

    kind: str
    spec: dict[str, str]
    opened: list[OnlineStore] = field(default_factory=list)

    def open(self) -> OnlineStore:
        if self.kind == "sqlite":
            store: OnlineStore = SQLiteOnlineStore(self.spec["path"])
        else:
            store = RedisOnlineStore(self.spec["url"], self.spec["namespace"])
        self.opened.append(store)
        return store

    def stored_rows(self) -> int:
        """Row records held across all versions (old versions must not linger)."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.spec["path"]) as con:
                tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE name LIKE 'fv_%'")]
                return sum(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables)
        import redis

        client = redis.Redis.from_url(self.spec["url"])
        try:
            return sum(1 for _ in client.scan_iter(match=f"{self.spec['namespace']}:r:*", count=1000))
        finally:
            client.close()

    def write_progress(self) -> int:
        """A number that grows while a write is under way: WAL bytes, or keys in Redis."""
        if self.kind == "sqlite":
            wal = Path(self.spec["path"] + "-wal")
            return wal.stat().st_size if wal.exists() else 0
        import redis

        client = redis.Redis.from_url(self.spec["url"])
        try:
            return int(client.dbsize())
        finally:
            client.close()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        b = Backend("sqlite", {"kind": "sqlite", "path": str(tmp_path / "online.db")})
    else:
        url = request.getfixturevalue("redis_url")
        b = Backend("redis", {"kind": "redis", "url": url, "namespace": f"test-{uuid.uuid4().hex[:8]}"})
    yield b
    for s in b.opened:
        s.close()


@pytest.fixture
def store(backend: Backend) -> OnlineStore:
    return backend.open()


def _users() -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([1, 2, 3], pa.int64()),
            "ts": pa.array([100, 200, 300], pa.int64()),
            "age": pa.array([31, None, 2**63 - 1], pa.int64()),
            "city": pa.array(["Paris", "Zürich", None]),
            "spend": pa.array([12.5, 0.1, 1.0]),
        }
    )


def _write_users(store: OnlineStore, ttl: float | None = None) -> None:
    store.write("users", _users(), key="user_id", ts_column="ts", ttl_seconds=ttl)


# ------------------------------------------------------------------------------------------------- tests


def test_round_trip_keeps_ints_floats_strings_bools_and_lists_exactly(store: OnlineStore) -> None:
    floats = [0.1, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0, float("nan"), float("inf"), 1e16, 2.0, None]
    n = len(floats)
    table = pa.table(
        {
            "user_id": pa.array(range(n), pa.int64()),
            "ts": pa.array([1_700_000_000] * n, pa.int64()),
            "big": pa.array([2**63 - 1, -(2**63), 0, -1, 7, None, 1, 2, 3, 4], pa.int64()),
            "f64": pa.array(floats, pa.float64()),
            "f32": pa.array(floats, pa.float32()),
            "text": pa.array(['say "hi"', "back\\slash", "new\nline\ttab", "ctl\x01", "🙂 é", "", None,
                              "[1,2]", "null", "a,b"]),
            "flag": pa.array([True, False, None, True, False, True, False, True, False, True]),
            "history": pa.array([[1, 2, 3], [], None, [2**62], [None, 5], [0], [1], [2], [3], [4]],
                                pa.list_(pa.int64())),
            "vector": pa.array([[0.1, 1 / 3], [float("nan"), -0.0], None, [], [1.5, None], [1.0, 2.0],
                                [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 1e-40]], pa.list_(pa.float32())),
            "tags": pa.array([[["a", 'q"'], []], None, [["x\\"]], [], [None], [["b"]], [], [], [], []],
                             pa.list_(pa.list_(pa.string()))),
        }
    )
    assert store.write("users", table, key="user_id", ts_column="ts", ttl_seconds=None) == n
    got = store.read("users", list(range(n)))
    assert got.names == [c for c in table.column_names if c != "user_id"]
    for name in got.names:
        # repr compares types too (1 vs 1.0, -0.0 vs 0.0) and treats nan as equal to nan
        assert repr(got.values[name]) == repr(table.column(name).to_pylist()), name
        expected = ["missing" if v is None else "present" for v in table.column(name).to_pylist()]
        assert got.status[name] == expected, name


def test_unknown_ids_are_missing_and_results_follow_the_order_of_ids(store: OnlineStore) -> None:
    _write_users(store)
    got = store.read("users", [3, 99, 1, 3, None, 2], ["city", "age"])
    assert got.ids == [3, 99, 1, 3, None, 2]
    assert got.names == ["city", "age"]
    assert got.values["city"] == [None, None, "Paris", None, None, "Zürich"]
    assert got.status["city"] == ["missing", "missing", "present", "missing", "missing", "present"]
    assert got.values["age"] == [2**63 - 1, None, 31, 2**63 - 1, None, None]
    assert got.status["age"] == ["present", "missing", "present", "present", "missing", "missing"]
    rows = got.to_rows()
    assert rows[1] is None and rows[4] is None
    assert rows[2] == {"city": "Paris", "age": 31}
    assert rows[5] == {"city": "Zürich", "age": None}  # row found: a null feature is None, not the row
    assert store.read("users", []).values["city"] == []


def test_int_keys_match_text_and_whole_float_ids_but_string_keys_match_text_only(store: OnlineStore) -> None:
    _write_users(store)
    got = store.read("users", ["2", 2, np.int64(2), 2.0, " 2", "+2", "02", 2.5, "two", True], ["city"])
    assert got.values["city"] == ["Zürich"] * 7 + [None] * 3
    assert store.read("users", np.array([1, 3, 5]), ["spend"]).values["spend"] == [12.5, 1.0, None]
    assert store.read("users", pa.array(["3", "1"]), ["spend"]).values["spend"] == [1.0, 12.5]

    items = pa.table({"item_id": ["42", "007", "x"], "ts": [1, 1, 1], "price": [1.0, 2.0, 3.0]})
    store.write("items", items, key="item_id", ts_column="ts", ttl_seconds=None)
    got = store.read("items", ["42", 42, "007", 7, "x"], ["price"])
    assert got.values["price"] == [1.0, None, 2.0, None, 3.0]
    assert got.status["price"] == ["present", "missing", "present", "missing", "present"]


def test_rows_older_than_now_minus_ttl_read_as_expired(store: OnlineStore) -> None:
    _write_users(store, ttl=50)  # ts 100, 200, 300
    got = store.read("users", [1, 2, 3, 4], ["spend", "city"], now=260)
    assert got.status["spend"] == ["expired", "expired", "present", "missing"]
    assert got.values["spend"] == [None, None, 1.0, None]
    assert got.status["city"] == ["expired", "expired", "missing", "missing"]  # null beats fresh: missing
    boundary = store.read("users", [3], ["spend"], now=350)  # ts == now - ttl is not older: still present
    assert boundary.status["spend"] == ["present"]
    assert store.read("users", [3], ["spend"], now=350.5).status["spend"] == ["expired"]
    assert store.read("users", [1], ["spend"]).status["spend"] == ["expired"]  # now defaults to time.time()

    store.write("users", _users(), key="user_id", ts_column="ts", ttl_seconds=None)
    assert store.read("users", [1], ["spend"], now=1e12).status["spend"] == ["present"]


def test_timestamp_ts_column_is_stored_as_epoch_seconds_for_ttl(store: OnlineStore) -> None:
    table = pa.table({"user_id": [1, 2], "ts": pa.array([100_000, 250_000], pa.timestamp("ms")), "x": [1, 2]})
    store.write("users", table, key="user_id", ts_column="ts", ttl_seconds=100)
    got = store.read("users", [1, 2], now=300)
    assert got.values["ts"] == [None, 250]
    assert got.status["x"] == ["expired", "present"]
    assert store.entities()["users"].features["ts"] == "int64"


def test_rewrite_replaces_the_whole_view_and_drops_the_old_version(
    store: OnlineStore, backend: Backend
) -> None:
    _write_users(store)
    v2 = pa.table({"user_id": [2, 4], "ts": [500, 600], "spend": [9.0, 4.0]})
    assert store.write("users", v2, key="user_id", ts_column="ts", ttl_seconds=None) == 2
    got = store.read("users", [1, 2, 3, 4])
    assert got.names == ["ts", "spend"]  # the new view's features only
    assert got.values["spend"] == [None, 9.0, None, 4.0]
    assert got.status["spend"] == ["missing", "present", "missing", "present"]
    info = store.entities()["users"]
    assert (info.version, info.rows) == (2, 2)
    assert backend.stored_rows() == 2


def test_a_second_store_instance_reads_what_the_first_wrote(store: OnlineStore, backend: Backend) -> None:
    _write_users(store, ttl=3600)
    other = backend.open()
    assert other.read("users", [1, 2], now=400).values["city"] == ["Paris", "Zürich"]
    info = other.entities()["users"]
    assert info.features == {"ts": "int64", "age": "int64", "city": "string", "spend": "double"}
    assert (info.key, info.key_type, info.ts_column, info.ttl_seconds) == ("user_id", "int", "ts", 3600.0)
    assert (info.rows, info.version) == (3, 1)
    assert abs(info.written_at - time.time()) < 60


def _table_whose_last_batch_cannot_be_encoded(n: int) -> pa.Table:
    """Valid rows, then (in the batch written last: keys sort last) one string that is not UTF-8."""
    good = pa.array([f"name{i}" for i in range(n - 1)])
    offsets = pa.py_buffer(np.array([0, 2], dtype=np.int32).tobytes())
    bad = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(b"\xff\xfe")])
    return pa.table(
        {
            "user_id": pa.array([f"u{i:07d}" for i in range(n)]),
            "ts": pa.array(np.full(n, 1000, dtype=np.int64)),
            "name": pa.chunked_array([good, bad]),
        }
    )


def test_a_write_that_fails_halfway_leaves_the_previous_version_complete(
    store: OnlineStore, backend: Backend
) -> None:
    v1 = pa.table({"user_id": ["u0000001", "u0000002"], "ts": [1, 2], "name": ["old1", "old2"]})
    store.write("users", v1, key="user_id", ts_column="ts", ttl_seconds=None)
    broken = _table_whose_last_batch_cannot_be_encoded(2 * WRITE_BATCH_ROWS + 100)
    with pytest.raises(UnicodeDecodeError):
        store.write("users", broken, key="user_id", ts_column="ts", ttl_seconds=None)
    got = store.read("users", ["u0000001", "u0000002", "u0000003"])
    assert got.values["name"] == ["old1", "old2", None]
    assert store.entities()["users"].version == 1
    assert backend.stored_rows() == 2  # no half-written rows left behind
    store.write("users", v1.slice(0, 1), key="user_id", ts_column="ts", ttl_seconds=None)
    assert store.read("users", ["u0000001", "u0000002"]).status["name"] == ["present", "missing"]


_KILLED_WRITER = """
import json, sys
import numpy as np, pyarrow as pa
from feature_store.online import RedisOnlineStore, SQLiteOnlineStore
spec = json.loads(sys.argv[1])
store = (SQLiteOnlineStore(spec["path"]) if spec["kind"] == "sqlite"
         else RedisOnlineStore(spec["url"], spec["namespace"]))
n = 600_000
ids = np.arange(n, dtype=np.int64)
table = pa.table({"user_id": ids, "ts": np.full(n, 10, dtype=np.int64), "spend": ids * 0.25,
                  "history": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 8)), 8)})
print("writing", flush=True)
store.write("users", table, key="user_id", ts_column="ts", ttl_seconds=None)
print("finished", flush=True)
"""


def test_a_writer_killed_mid_write_leaves_the_previous_version_readable(
    store: OnlineStore, backend: Backend
) -> None:
    _write_users(store)
    before = store.read("users", [1, 2, 3])
    baseline = backend.write_progress()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, json.dumps(backend.spec)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "writing", child.stderr.read() if child.stderr else line
        deadline = time.monotonic() + 30
        while backend.write_progress() < baseline + 2_000_000 // (1 if backend.kind == "sqlite" else 100):
            assert child.poll() is None, "the writer ended before it could be killed mid-write"
            assert time.monotonic() < deadline, "the writer made no visible progress"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL  # killed mid-write, it never reached the end

    reopened = backend.open()
    after = reopened.read("users", [1, 2, 3])
    assert after.values == before.values and after.status == before.status
    assert reopened.entities()["users"].version == 1
    _write_users(reopened)  # the next write succeeds and clears what the killed one left
    assert reopened.entities()["users"].version == 2
    assert backend.stored_rows() == 3


def test_materialize_keeps_the_latest_row_per_key_and_ignores_rows_after_as_of(store: OnlineStore) -> None:
    log = pa.table(
        {
            "user_id": [1, 1, 2, 2, 1, 3, 2, 4, 4],
            "ts": pa.array([10, 30, 5, 50, 20, 99, 50, None, 1], pa.int64()),
            "clicks": [1, 3, 5, 6, 2, 9, 7, 0, 8],
            "segment": ["a", "c", "x", "y", "b", "z", "w", "n", "m"],
        }
    )
    report = materialize(store, "users", log, key="user_id", ts_column="ts", as_of=60, features=["clicks"])
    assert (report.rows_in, report.rows_as_of, report.entities_written) == (9, 7, 3)
    assert report.version == 1 and report.seconds >= 0
    got = store.read("users", [1, 2, 3, 4])
    assert got.names == ["clicks", "ts"]  # the ts column always travels: TTL reads it
    assert got.values["clicks"] == [3, 7, None, 8]  # key 2: tie at ts 50, the later input row wins
    assert got.status["clicks"] == ["present", "present", "missing", "present"]  # 3 only after as_of

    everything = materialize(store, "users", log, key="user_id", ts_column="ts")
    assert (everything.rows_as_of, everything.entities_written, everything.version) == (9, 4, 2)
    got = store.read("users", [1, 2, 3, 4])
    assert got.values["segment"] == ["c", "w", "z", "m"]  # key 4: a null ts counts as oldest


def test_reading_an_unknown_entity_or_feature_names_it_and_the_known_ones(store: OnlineStore) -> None:
    _write_users(store)
    with pytest.raises(KeyError, match=r"'items'.*\['users'\]"):
        store.read("items", [1])
    with pytest.raises(KeyError, match=r"\['colour'\].*'city'"):
        store.read("users", [1], ["city", "colour"])


def test_write_rejects_duplicate_or_null_keys_and_unstorable_columns_naming_them(store: OnlineStore) -> None:
    dupes = pa.table({"user_id": [1, 2, 1], "ts": [1, 2, 3], "x": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"'user_id' repeats 1 key.*\[1\]"):
        store.write("users", dupes, key="user_id", ts_column="ts", ttl_seconds=None)
    nulls = pa.table({"user_id": [1, None], "ts": [1, 2], "x": [1, 2]})
    with pytest.raises(ValueError, match=r"'user_id' has 1 null value\(s\) \(first at row 1\)"):
        store.write("users", nulls, key="user_id", ts_column="ts", ttl_seconds=None)
    blobs = pa.table({"user_id": [1], "ts": [1], "raw": pa.array([b"\x00"], pa.binary())})
    with pytest.raises(TypeError, match=r"'raw' has Arrow type binary"):
        store.write("users", blobs, key="user_id", ts_column="ts", ttl_seconds=None)
    no_time = pa.table({"user_id": [1, 2], "ts": pa.array([1, None], pa.int64())})
    with pytest.raises(ValueError, match=r"'ts' has 1 null value\(s\) but ttl_seconds"):
        store.write("users", no_time, key="user_id", ts_column="ts", ttl_seconds=10)
    with pytest.raises(KeyError, match=r"ts_column 'when' is not a column"):
        store.write("users", dupes, key="user_id", ts_column="when", ttl_seconds=None)
    assert store.entities() == {}


def test_open_online_store_defaults_sqlite_to_the_default_path(tmp_path: Path) -> None:
    default = tmp_path / "out" / "online.db"
    with open_online_store(SQLiteOnlineStoreConfig(), default) as s:
        assert isinstance(s, SQLiteOnlineStore) and s.path == default
        _write_users(s)
    assert default.is_file()
    explicit = tmp_path / "elsewhere.db"
    with open_online_store(SQLiteOnlineStoreConfig(path=str(explicit)), default) as s:
        assert s.path == explicit and s.entities() == {}


def test_open_online_store_opens_redis_for_type_redis(redis_url: str, tmp_path: Path) -> None:
    default = tmp_path / "online.db"
    url = redis_url
    with open_online_store(RedisOnlineStoreConfig(type="redis", url=url, namespace="cfg-test"), default) as r:
        assert isinstance(r, RedisOnlineStore)
        _write_users(r)
        assert r.read("users", [1], ["city"]).values["city"] == ["Paris"]


def test_redis_store_names_the_url_when_the_server_is_unreachable() -> None:
    pytest.importorskip("redis", reason="the redis Python client is not installed")
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ConnectionError, match=r"online_store.url='redis://127\.0\.0\.1"):
        RedisOnlineStore(url, "x")


class _ScanThatSkipsOneKey:
    """A Redis client whose first SCAN leaves out one matching key, as a server shrinking its table may."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.scans = 0

    def scan_iter(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        self.scans += 1
        keys = iter(self._client.scan_iter(*args, **kwargs))
        if self.scans == 1:
            next(keys, None)
        yield from keys

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_redis_rewrite_deletes_old_rows_that_one_scan_pass_skipped(redis_url: str) -> None:
    store = RedisOnlineStore(redis_url, f"skip-{uuid.uuid4().hex[:8]}")
    _write_users(store)
    flaky = _ScanThatSkipsOneKey(store._r)
    store._r = flaky
    store.write("users", pa.table({"user_id": [7], "ts": [1]}), key="user_id", ts_column="ts", ttl_seconds=None)
    assert flaky.scans >= 2
    assert sum(1 for _ in flaky.scan_iter(match=f"{store.namespace}:r:*")) == 1  # only the new version's row


def test_read_row_answers_as_read_does_for_one_id_across_views_and_ttl(store: OnlineStore) -> None:
    _write_users(store, ttl=150)
    store.write("profiles", pa.table({"user_id": pa.array([2, 3], pa.int64()), "ts": pa.array([10**10, 10**10]),
                                      "tags": pa.array([["a", "b"], None]), "score": pa.array([0.5, None])}),
                key="user_id", ts_column="ts", ttl_seconds=None)
    names = {"users": ["age", "city", "spend"], "profiles": None}
    for user in [1, 2, 3, "2", 2.0, " 3 ", 4, "x", None, True, 2**70, 2.5]:
        got = store.read_row(names, user, now=250)
        for view, wanted in names.items():
            want = store.read(view, [user], wanted, now=250)
            assert got[view].values == want.values and got[view].status == want.status, (user, view)
            assert got[view].names == want.names and got[view].ids == [user]


def test_normalize_id_equals_the_columnar_normalize_ids_for_every_kind_of_id() -> None:
    from feature_store.online.base import normalize_id, normalize_ids

    ids: list[Any] = [0, -7, 2**63 - 1, 2**63, 2**64 - 1, 2**70, -(2**63), 3.0, -2.0, 2.5, float("nan"),
                      float("inf"), 2.0**63, 9.2e18, "42", " 42 ", "+7", "-0", "007", "4x", "", "1e3", "x", None, True,
                      False, np.int32(5), np.int64(-3), np.uint64(2**64 - 1), np.float32(4.0), np.float64(1.5)]
    for key_type in ("int", "string"):
        for value in ids:
            assert normalize_id(value, key_type) == normalize_ids([value], key_type)[0].as_py(), (value, key_type)
