"""One suite, both buses: the SQLite log and Redis Streams (a redis-server started here) keep the same contract."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from feature_store.config import EventsConfig
from feature_store.events.bus import EventBus
from feature_store.events.contract import check_events
from feature_store.events.redis_bus import RedisStreamBus
from feature_store.events.sqlite_bus import SQLiteBus
from tests.conftest import RedisProcess, redis_server

CFG = EventsConfig()


def batch(start: int, n: int) -> pa.Table:
    raws = [{"event_id": f"e{i}", "ts": 1_700_000_000 + i, "user_id": i % 7, "item_id": i % 11, "type": "click"}
            for i in range(start, start + n)]
    return check_events(raws, CFG).accepted


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis-bus")) as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def bus(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventBus]:
    if request.param == "sqlite":
        b: EventBus = SQLiteBus(tmp_path / "bus.db")
    else:
        b = RedisStreamBus(request.getfixturevalue("redis_url"), namespace=f"t{time.time_ns()}")
    yield b
    b.close()


def ids_of(entries: list) -> list[str]:
    return [e.id for e in entries]


def test_a_published_batch_is_read_back_whole_and_in_order(bus: EventBus) -> None:
    bus.ensure_group("g")
    sent = batch(0, 5)
    first, second = bus.publish(sent), bus.publish(batch(5, 3))
    got = bus.read("g", "c1", count=10, block_ms=50)
    assert ids_of(got) == [first, second]
    assert got[0].events.equals(sent)
    assert got[1].events.column("event_id").to_pylist() == ["e5", "e6", "e7"]
    assert bus.read("g", "c1", count=10, block_ms=20) == []  # delivered once


def test_two_consumers_of_one_group_never_get_the_same_entry(bus: EventBus) -> None:
    bus.ensure_group("g")
    published = [bus.publish(batch(i * 2, 2)) for i in range(20)]
    got: dict[str, list[str]] = {"a": [], "b": []}

    def consume(name: str) -> None:
        while True:
            entries = bus.read("g", name, count=3, block_ms=100)
            if not entries:
                return
            got[name] += ids_of(entries)

    threads = [threading.Thread(target=consume, args=(n,)) for n in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got["a"] + got["b"], key=published.index) == published
    assert not set(got["a"]) & set(got["b"])


def test_each_group_reads_everything_and_a_new_group_starts_at_the_first_entry(bus: EventBus) -> None:
    bus.ensure_group("online")
    ids = [bus.publish(batch(0, 1)), bus.publish(batch(1, 1))]
    assert ids_of(bus.read("online", "c", count=10, block_ms=10)) == ids
    bus.ensure_group("offline")
    bus.ensure_group("online")  # idempotent: does not rewind
    assert ids_of(bus.read("offline", "c", count=10, block_ms=10)) == ids
    assert bus.read("online", "c", count=10, block_ms=10) == []


def test_unacknowledged_entries_come_back_to_the_consumer_that_restarts(bus: EventBus) -> None:
    bus.ensure_group("g")
    ids = [bus.publish(batch(i, 1)) for i in range(4)]
    assert ids_of(bus.read("g", "worker", count=4, block_ms=10)) == ids
    bus.ack("g", ids[:1])
    assert ids_of(bus.pending("g", "worker", count=10)) == ids[1:]
    assert bus.pending("g", "other", count=10) == []
    assert bus.lag("g") == {"pending": 3, "unread": 0}


def test_a_dead_consumers_entries_are_reclaimed_only_after_the_idle_time(bus: EventBus) -> None:
    bus.ensure_group("g")
    ids = [bus.publish(batch(i, 1)) for i in range(3)]
    bus.read("g", "dead", count=3, block_ms=10)
    assert bus.reclaim("g", "alive", min_idle_s=60, count=10) == []
    time.sleep(0.3)
    taken = bus.reclaim("g", "alive", min_idle_s=0.2, count=10)
    assert ids_of(taken) == ids
    assert ids_of(bus.pending("g", "alive", count=10)) == ids and bus.pending("g", "dead", count=10) == []


def test_trim_drops_only_what_every_group_acknowledged(bus: EventBus) -> None:
    bus.ensure_group("a")
    bus.ensure_group("b")
    ids = [bus.publish(batch(i, 1)) for i in range(5)]
    bus.ack("a", ids_of(bus.read("a", "c", count=5, block_ms=10)))
    got_b = bus.read("b", "c", count=2, block_ms=10)
    bus.ack("b", [got_b[0].id])  # b: ids[0] acked, ids[1] pending, ids[2:] unread
    assert bus.trim() == 1
    assert ids_of(bus.pending("b", "c", count=10)) == [ids[1]]
    assert ids_of(bus.read("b", "c", count=10, block_ms=10)) == ids[2:]
    assert bus.lag("b") == {"pending": 4, "unread": 0}


def test_a_read_waits_for_a_publish_up_to_its_block_time(bus: EventBus) -> None:
    bus.ensure_group("g")
    timer = threading.Timer(0.15, lambda: bus.publish(batch(0, 1)))
    t0 = time.perf_counter()
    timer.start()
    got = bus.read("g", "c", count=1, block_ms=3000)
    waited = time.perf_counter() - t0
    assert len(got) == 1 and 0.1 < waited < 2.0
    t0 = time.perf_counter()
    assert bus.read("g", "c", count=1, block_ms=100) == []
    assert time.perf_counter() - t0 >= 0.09


def test_rejected_events_are_kept_with_their_reason_and_counted_by_kind(bus: EventBus) -> None:
    checked = check_events([{"event_id": "x", "ts": 1, "user_id": "u", "item_id": 1, "type": "click"},
                            {"event_id": "y", "ts": 2, "user_id": "v", "item_id": 1, "type": "click"},
                            {"event_id": "z", "ts": 3, "user_id": 1, "item_id": 1, "type": "look"}], CFG)
    bus.reject([(r.event_id, r.reason, r.event) for r in checked.rejected])
    latest = bus.rejected(limit=2)
    assert [r["event_id"] for r in latest] == ["z", "y"]
    assert "not one of this scenario's events.types" in latest[0]["reason"] and '"look"' in latest[0]["event"]
    counts = bus.rejected_counts()
    assert counts["user_id: must be an integer in this scenario (events.id_type int)"] == 2
    assert sum(counts.values()) == 3


def test_the_sqlite_log_keeps_accepted_batches_and_group_positions_across_reopening(tmp_path: Path) -> None:
    with SQLiteBus(tmp_path / "bus.db") as bus:
        bus.ensure_group("g")
        ids = [bus.publish(batch(i, 2)) for i in range(3)]
        bus.read("g", "c", count=1, block_ms=10)
    with SQLiteBus(tmp_path / "bus.db") as bus:
        assert ids_of(bus.pending("g", "c", count=10)) == ids[:1]
        assert ids_of(bus.read("g", "c", count=10, block_ms=10)) == ids[1:]


def test_the_redis_bus_waits_for_a_server_that_goes_away_and_comes_back(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path, persistent=True)
    server.start()
    try:
        bus = RedisStreamBus(server.url, namespace="t", retry_s=20)
        bus.ensure_group("g")
        first = bus.publish(batch(0, 2))
        server.stop()
        threading.Timer(1.0, server.start).start()
        t0 = time.perf_counter()
        second = bus.publish(batch(2, 2))  # retried until the server is back
        assert time.perf_counter() - t0 >= 0.9
        assert ids_of(bus.read("g", "c", count=10, block_ms=100)) == [first, second]  # the first survived
        server.stop()
        quick = RedisStreamBus.__new__(RedisStreamBus)
        quick.__dict__.update(bus.__dict__, retry_s=0.3)
        with pytest.raises(ConnectionError, match=r"unreachable for 0s.*events.bus.url"):
            quick.publish(batch(4, 1))
        bus.close()
    finally:
        server.stop()
