"""The stream processor on both stores and buses: batch parity by construction, exactly-once effect (also
across a kill -9 between commit and acknowledgement), duplicates, late events and a view rewritten mid-step."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from feature_store.config import FeatureStoreConfig
from feature_store.events.bus import EventBus
from feature_store.events.contract import check_events
from feature_store.events.features import (
    ACTIVITY_VIEW,
    HISTORY_VIEW,
    POPULARITY_VIEW,
    TAGS_VIEW,
    StreamFeatures,
    activity_view,
    history_view,
    interactions,
    popularity_view,
    tags_view,
    with_attributes,
)
from feature_store.events.processor import StreamProcessor
from feature_store.events.scenario import open_bus
from feature_store.materialize import open_store
from feature_store.online.base import OnlineStore
from tests.conftest import ROOT, redis_server

T0 = 1_760_000_000


def config(out: Path, redis_url: str | None = None, **events: Any) -> FeatureStoreConfig:
    doc: dict[str, Any] = {
        "name": "stream", "output_dir": str(out), "source": {"type": "synthetic"},
        "entities": {"item": {"table": "items", "key": "item_id", "timestamp": "ts", "features": ["category"]}},
        "features": {"label": "click", "timestamp": "ts",
                     "categorical": [{"name": "user_id"}, {"name": "item_id"}, {"name": "category"}],
                     "sequence": [{"name": "hist_item_id", "source": "item_id", "max_len": 4},
                                  {"name": "all_item_id", "source": "item_id", "max_len": 3,
                                   "positive_only": False},
                                  {"name": "hist_category", "source": "category", "max_len": 3}]},
        "events": {"allowed_lateness_s": 600, "dedupe_window_s": 3600,
                   "stream": {"max_batch_events": 50, "tag_column": "category"}, **events},
    }
    if redis_url:
        doc["online_store"] = {"type": "redis", "url": redis_url, "namespace": f"s{abs(hash(str(out)))}"}
    return FeatureStoreConfig.model_validate(doc)


def item_attributes() -> pa.Table:
    """Items 0..38 in five categories; item 39 has no row (an item the store does not know: null category)."""
    ids = np.arange(39)
    return pa.table({"item_id": pa.array(ids), "category": pa.array([f"c{i % 5}" for i in ids]),
                     "ts": pa.array(np.full(39, T0 - 86400, np.int64))})


def write_items(cfg: FeatureStoreConfig) -> None:
    """The online item view the processor looks attributes up in, as `recforge materialize` writes it."""
    from feature_store.online import materialize

    with open_store(cfg) as store:
        materialize(store, "item", item_attributes(), key="item_id", ts_column="ts", features=["category"])


def random_events(n: int, seed: int = 0, start: int = 0, shuffle_s: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    types = rng.choice(["impression", "click", "add_to_cart", "purchase"], n, p=[0.6, 0.25, 0.1, 0.05])
    ts = T0 + np.arange(n) * 7 + (rng.integers(-shuffle_s, shuffle_s + 1, n) if shuffle_s else 0)
    return [{"event_id": f"e{start + i}", "ts": int(ts[i]), "user_id": int(rng.integers(0, 30)),
             "item_id": int(rng.integers(0, 40)), "type": str(types[i]),
             "value": round(float(rng.uniform(1, 100)), 2) if types[i] == "purchase" else None}
            for i in range(n)]


def publish(bus: EventBus, cfg: FeatureStoreConfig, raws: list[dict[str, Any]], per_entry: int = 13) -> None:
    for i in range(0, len(raws), per_entry):
        checked = check_events(raws[i:i + per_entry], cfg.events, now=T0 + 10**7)
        assert not checked.rejected, checked.rejected[:3]
        bus.publish(checked.accepted)


def drain(proc: StreamProcessor) -> None:
    while proc.step(block_ms=20).entries:
        pass


def snapshot(store: OnlineStore, cfg: FeatureStoreConfig) -> dict[str, Any]:
    """Every stream view as {key: row} plus the committed counters: what "the same end state" compares."""
    out: dict[str, Any] = {}
    sf = StreamFeatures.from_config(cfg)
    for view, keys in ((HISTORY_VIEW, range(30)), (ACTIVITY_VIEW, range(30)), (POPULARITY_VIEW, range(40)),
                       (TAGS_VIEW, range(30))):
        got = store.read(view, list(keys))
        out[view] = {k: r for k, r in zip(keys, got.to_rows()) if r is not None}
    state = store.stream_state("online") or {}
    out["counters"] = {k: state.get(k) for k in ("applied", "duplicates", "too_late", "watermark")}
    assert sf
    return out


def batch_views(cfg: FeatureStoreConfig, raws: list[dict[str, Any]]) -> dict[str, dict[Any, dict[str, Any]]]:
    """The views computed once over all the events, as the batch job does."""
    sf = StreamFeatures.from_config(cfg)
    rows = interactions(check_events(raws, cfg.events, now=T0 + 10**7).accepted, sf)
    rows = with_attributes(rows, item_attributes().select(["item_id", "category"]), sf)
    out = {}
    for view, table, key in ((HISTORY_VIEW, history_view(rows, sf), sf.user_key),
                             (TAGS_VIEW, tags_view(rows, sf), sf.user_key),
                             (ACTIVITY_VIEW, activity_view(rows, sf), sf.user_key),
                             (POPULARITY_VIEW, popularity_view(rows, sf), sf.item_key)):
        assert table is not None
        out[view] = {r.pop(key): r for r in table.to_pylist()}
    return out


def assert_same_views(got: dict[str, Any], expected: dict[str, Any]) -> None:
    for view, rows in expected.items():
        assert set(got[view]) == set(rows), view
        for k, row in rows.items():
            for name, v in row.items():
                g = got[view][k][name]
                if isinstance(v, float):
                    assert g == pytest.approx(v, rel=1e-12), (view, k, name)
                else:
                    assert g == v, (view, k, name, g, v)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis-stream")) as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def cfg(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStoreConfig:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    out = config(tmp_path, url)
    write_items(out)
    return out


def test_streamed_views_equal_the_batch_functions_over_all_events(cfg: FeatureStoreConfig) -> None:
    raws = random_events(400, shuffle_s=20)  # out of order, within the allowed lateness
    with open_store(cfg) as store, open_bus(cfg) as bus:
        publish(bus, cfg, raws)
        proc = StreamProcessor(cfg, store, bus, consumer="t")
        drain(proc)
        got = snapshot(store, cfg)
    assert_same_views(got, batch_views(cfg, raws))
    tags = [r for r in got[TAGS_VIEW].values() if r["tags"]]  # behaviour tags and attribute histories are real
    assert len(tags) > 20 and all(set(r["tags"]) <= {f"c{i}" for i in range(5)} for r in tags)
    assert any(len(r["hist_category"]) == 3 for r in got[HISTORY_VIEW].values())
    assert got["counters"] == {"applied": 400, "duplicates": 0, "too_late": 0,
                               "watermark": max(r["ts"] for r in raws)}


def test_entries_of_another_bus_or_of_a_bus_file_made_again_are_applied_not_taken_for_redeliveries(
        tmp_path: Path) -> None:
    """SQLite bus entry ids count from 1 in every file: a second bus over the same online store (another path, or
    the same path after its file was deleted) reuses them, and its entries must not be skipped as already
    committed ones (its events are new: they are applied)."""
    import shutil

    from feature_store.events.sqlite_bus import SQLiteBus

    cfg = config(tmp_path)
    write_items(cfg)
    first, second = random_events(40), random_events(40, seed=1, start=40)
    with open_store(cfg) as store:
        for n, raws in enumerate((first, second)):
            with SQLiteBus(tmp_path / f"bus-{n}.db") as bus:  # the same entry ids 1, 2, ... in both
                publish(bus, cfg, raws)
                drain(StreamProcessor(cfg, store, bus, consumer="t"))
        shutil.rmtree(tmp_path / "again", ignore_errors=True)
        third = random_events(40, seed=2, start=80)
        for raws in (third[:20], third[20:]):  # one path, its file deleted and made again in between
            with SQLiteBus(tmp_path / "again" / "bus.db") as bus:
                publish(bus, cfg, raws)
                drain(StreamProcessor(cfg, store, bus, consumer="t"))
            shutil.rmtree(tmp_path / "again")
        got = snapshot(store, cfg)
    assert got["counters"]["applied"] == 120 and got["counters"]["duplicates"] == 0
    assert_same_views(got, batch_views(cfg, first + second + third))


def test_a_repeated_event_is_applied_once_and_counted_with_its_reason(cfg: FeatureStoreConfig) -> None:
    raws = random_events(60)
    with open_store(cfg) as store, open_bus(cfg) as bus:
        publish(bus, cfg, raws)
        publish(bus, cfg, raws[10:20], per_entry=4)  # a client's retries, in other entries
        drain(StreamProcessor(cfg, store, bus, consumer="t"))
        got = snapshot(store, cfg)
        assert {r["event_id"] for r in bus.rejected(limit=100)} == {f"e{i}" for i in range(10, 20)}
        assert bus.rejected_counts() == {"event_id: already applied (a repeated event; not applied again)": 10}
    assert_same_views(got, batch_views(cfg, raws))
    assert got["counters"]["applied"] == 60 and got["counters"]["duplicates"] == 10


def test_a_first_batch_without_purchases_keeps_the_views_types_for_later_purchases(
        cfg: FeatureStoreConfig) -> None:
    """Sums are float64 even when no event of a batch has a value (np.bincount would give int64 zeros), so the
    view written by the first batch takes the later ones."""
    raws = [{"event_id": "v1", "ts": T0, "user_id": 1, "item_id": 10, "type": "click"},
            {"event_id": "v2", "ts": T0 + 1, "user_id": 1, "item_id": 11, "type": "purchase", "value": 19.5}]
    with open_store(cfg) as store, open_bus(cfg) as bus:
        publish(bus, cfg, raws[:1])
        proc = StreamProcessor(cfg, store, bus, consumer="t")
        drain(proc)
        publish(bus, cfg, raws[1:])
        drain(proc)
        got = snapshot(store, cfg)
    assert got[ACTIVITY_VIEW][1]["revenue"] == 19.5 and got[ACTIVITY_VIEW][1]["purchases"] == 1
    assert got["counters"]["applied"] == 2


def test_late_events_within_the_allowed_lateness_land_in_event_time_order_older_ones_are_counted(
        cfg: FeatureStoreConfig) -> None:
    base = T0 + 10_000
    raws = [{"event_id": "a", "ts": base, "user_id": 1, "item_id": 10, "type": "click"},
            {"event_id": "b", "ts": base + 100, "user_id": 1, "item_id": 11, "type": "click"},
            {"event_id": "c", "ts": base + 50, "user_id": 1, "item_id": 12, "type": "click"},  # 50 s late
            {"event_id": "d", "ts": base - 1000, "user_id": 1, "item_id": 13, "type": "click"}]  # 1100 s late
    with open_store(cfg) as store, open_bus(cfg) as bus:
        publish(bus, cfg, raws[:2])
        publish(bus, cfg, raws[2:])
        drain(StreamProcessor(cfg, store, bus, consumer="t"))
        row = store.read(HISTORY_VIEW, [1]).to_rows()[0]
        counters = snapshot(store, cfg)["counters"]
    assert row["hist_item_id"] == [10, 12, 11] and row["hist_item_id_ts"] == [base, base + 50, base + 100]
    assert counters["too_late"] == 1 and counters["applied"] == 3


def foreign_owner() -> str:
    """A lease holder that is another live process of this host (pid 1 always runs)."""
    import socket

    return json.dumps({"host": socket.gethostname(), "pid": 1, "id": "other", "consumer": "processor"},
                      separators=(",", ":"))


def test_a_second_processor_is_refused_while_another_holds_the_stream_and_starts_once_it_is_released(
        cfg: FeatureStoreConfig) -> None:
    from feature_store.online.base import StreamBusy

    raws = random_events(30)
    with open_store(cfg) as store, open_bus(cfg) as bus:
        publish(bus, cfg, raws)
        other = foreign_owner()
        assert store.claim_stream("online", other, 30.0) == other
        proc = StreamProcessor(cfg, store, bus, consumer="t")
        with pytest.raises(StreamBusy, match="another stream processor runs for this scenario"):
            proc.step(block_ms=20)
        assert (store.stream_state("online") or {}).get("applied") is None  # nothing applied meanwhile
        store.release_stream("online", other)
        drain(proc)
        assert snapshot(store, cfg)["counters"]["applied"] == 30
        proc.close()
        assert store.claim_stream("online", other, 30.0) == other  # released on close


def test_a_commit_by_a_processor_that_lost_its_lease_is_refused_and_changes_nothing(cfg: FeatureStoreConfig) -> None:
    from feature_store.online.base import LeaseLost, StreamCommit

    with open_store(cfg) as store:
        assert store.claim_stream("online", foreign_owner(), 30.0) == foreign_owner()
        with pytest.raises(LeaseLost):
            store.commit_stream("online", StreamCommit(upserts={}, new_rows={}, applied_ids=["x"], applied_ts=[1],
                                                       state={"applied": 1}, owner="me"))
        assert store.stream_state("online") is None and not store.applied("online", ["x"]).any()


def test_a_view_rewritten_between_read_and_commit_is_recomputed_not_overwritten(cfg: FeatureStoreConfig) -> None:
    with open_store(cfg) as store, open_bus(cfg) as bus:
        proc = StreamProcessor(cfg, store, bus, consumer="t")
        publish(bus, cfg, random_events(20))
        drain(proc)
        publish(bus, cfg, [{"event_id": "x", "ts": T0 + 500, "user_id": 3, "item_id": 7, "type": "purchase",
                            "value": 5.0}])
        real = proc._changes
        rewritten = {"done": False}

        def rewrite_then_compute(applied: pa.Table) -> Any:
            out = real(applied)
            if not rewritten["done"]:  # a materialize lands now: the activity view is replaced whole
                rewritten["done"] = True
                table = pa.table({"user_id": pa.array([3], pa.int64()),
                                  **{f"n_{t}": pa.array([100], pa.int64()) for t in cfg.events.types},
                                  "purchases": pa.array([100], pa.int64()), "revenue": pa.array([1000.0]),
                                  "last_purchase_ts": pa.array([T0], pa.int64()), "ts": pa.array([T0], pa.int64())})
                store.write(ACTIVITY_VIEW, table, key="user_id", ts_column="ts", ttl_seconds=None)
            return out

        proc._changes = rewrite_then_compute  # type: ignore[method-assign]
        proc.step(block_ms=50)
        row = store.read(ACTIVITY_VIEW, [3]).to_rows()[0]
    assert row["n_purchase"] == 101 and row["revenue"] == 1005.0 and row["purchases"] == 101


KILLED_PROCESSOR = """
import json, os, signal, sys
from feature_store.config import FeatureStoreConfig
from feature_store.events.scenario import open_bus
from feature_store.events.processor import StreamProcessor
from feature_store.materialize import open_store

cfg = FeatureStoreConfig.model_validate(json.loads(sys.argv[1]))
kill_after = int(sys.argv[2])
commits = {"n": 0}

def hook():
    commits["n"] += 1
    if commits["n"] == kill_after:  # committed, not yet acknowledged
        os.kill(os.getpid(), signal.SIGKILL)

with open_store(cfg) as store, open_bus(cfg) as bus:
    proc = StreamProcessor(cfg, store, bus, consumer="worker", on_commit=hook)
    proc.cfg.events.stream.reclaim_idle_s = 0.05
    while proc.step(block_ms=50).entries:
        pass
"""


def run_processor(cfg: FeatureStoreConfig, kill_after: int) -> int:
    done = subprocess.run([sys.executable, "-c", KILLED_PROCESSOR, cfg.model_dump_json(), str(kill_after)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, -signal.SIGKILL), done.stderr[-3000:]
    return done.returncode


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
def test_a_processor_killed_between_commit_and_ack_ends_in_the_state_of_one_that_never_crashed(
        store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url") if store_kind == "redis" else None
    raws = random_events(500, seed=3, shuffle_s=30)
    raws += [dict(r, event_id=r["event_id"]) for r in raws[100:120]]  # repeats too
    states = []
    for name, kills in (("straight", []), ("killed", [2, 3, 1])):
        cfg = config(tmp_path / name, url)
        with open_bus(cfg) as bus:
            publish(bus, cfg, raws, per_entry=17)
        for k in kills:
            assert run_processor(cfg, k) == -signal.SIGKILL
        assert run_processor(cfg, 0) == 0
        with open_store(cfg) as store, open_bus(cfg) as bus:
            states.append(snapshot(store, cfg))
            assert bus.lag("online") == {"pending": 0, "unread": 0}
    assert json.dumps(states[0], sort_keys=True) == json.dumps(states[1], sort_keys=True)
    assert states[1]["counters"]["applied"] == 500 and states[1]["counters"]["duplicates"] == 20
