"""Tests of the offline store: point-in-time joins (no leaks, TTL, keys, static tables) and Parquet tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from feature_store.config import EntityConfig
from feature_store.offline import OfflineStore, latest_per_key, point_in_time_join


def _reference_join(events: pa.Table, features: pa.Table, ttl: float | None) -> list[object]:
    """Slow reference: scan all feature rows per event; the newest valid row wins, the later on ties."""
    out = []
    feats = features.to_pylist()
    for ev in events.to_pylist():
        best = None
        for row in feats:
            if ev["key"] is None or row["key"] != ev["key"] or row["fts"] > ev["ts"]:
                continue
            if ttl is not None and ev["ts"] - row["fts"] > ttl:
                continue
            if best is None or row["fts"] >= best["fts"]:
                best = row
        out.append(None if best is None else best["value"])
    return out


def test_future_feature_rows_never_leak_and_a_row_exactly_at_event_time_is_used() -> None:
    events = pa.table({"key": [1, 1, 1], "ts": [100, 150, 99]})
    features = pa.table({"key": [1, 1, 1], "fts": [100, 200, 50], "value": ["at100", "future200", "at50"]})
    out = point_in_time_join(
        events, features, key="key", feature_ts="fts", ttl_seconds=None, columns=["value"]
    )
    assert out.column("value").to_pylist() == ["at100", "at100", "at50"]


def test_ttl_cutoff_is_exact_at_the_boundary() -> None:
    events = pa.table({"key": [7, 7, 7], "ts": [1_000 + 3_600, 1_000 + 3_601, 1_000]})
    features = pa.table({"key": [7], "fts": [1_000], "value": [2.5]})
    out = point_in_time_join(
        events, features, key="key", feature_ts="fts", ttl_seconds=3_600, columns=["value"]
    )
    assert out.column("value").to_pylist() == [2.5, None, 2.5]


def test_random_join_matches_brute_force_and_keeps_event_order_and_count() -> None:
    rng = np.random.default_rng(3)
    n_ev, n_f = 400, 250
    ev_keys = rng.integers(0, 12, n_ev).astype(object)
    ev_keys[rng.random(n_ev) < 0.05] = None
    events = pa.table(
        {"key": pa.array(list(ev_keys), pa.int64()), "ts": rng.integers(0, 60, n_ev), "row": np.arange(n_ev)}
    )
    features = pa.table(
        {"key": rng.integers(0, 10, n_f), "fts": rng.integers(0, 60, n_f), "value": rng.random(n_f)}
    )
    for ttl in (None, 7.0):
        out = point_in_time_join(
            events, features, key="key", feature_ts="fts", ttl_seconds=ttl, columns=["value"]
        )
        assert out.num_rows == n_ev
        assert out.column("row").to_pylist() == list(range(n_ev))
        assert out.column("value").to_pylist() == _reference_join(events, features, ttl)


def test_string_keys_join_like_integer_keys_and_unknown_or_null_keys_get_nulls() -> None:
    events = pa.table({"user": ["a", "b", None, "zzz", "a"], "ts": [10, 10, 10, 10, 5]})
    features = pa.table({"user": ["a", "b", "a"], "ts": [1, 2, 6], "age": [30, 40, 31]})
    out = point_in_time_join(
        events, features, key="user", feature_ts="ts", ttl_seconds=None, columns=["age"], prefix="u_"
    )
    assert out.column_names == ["user", "ts", "u_age"]
    assert out.column("u_age").to_pylist() == [31, 40, None, None, 30]


def test_feature_key_column_may_have_another_name_and_int32_matches_int64() -> None:
    events = pa.table({"item_id": pa.array([5, 6], pa.int64()), "ts": [10, 10]})
    features = pa.table({"id": pa.array([6, 5], pa.int32()), "since": [0, 0], "price": [1.5, 2.5]})
    out = point_in_time_join(
        events,
        features,
        key="item_id",
        features_key="id",
        feature_ts="since",
        ttl_seconds=None,
        columns=["price"],
    )
    assert out.column("price").to_pylist() == [2.5, 1.5]


def test_same_key_and_time_the_later_feature_row_wins() -> None:
    events = pa.table({"key": [1], "ts": [10]})
    features = pa.table({"key": [1, 1, 1], "fts": [3, 3, 2], "value": ["first", "second", "older"]})
    out = point_in_time_join(
        events, features, key="key", feature_ts="fts", ttl_seconds=None, columns=["value"]
    )
    assert out.column("value").to_pylist() == ["second"]


def test_static_table_is_a_plain_left_join() -> None:
    events = pa.table({"user": [3, 1, 2, 3, None], "ts": [9, 8, 7, 6, 5]})
    users = pa.table({"user": [1, 3], "region": ["north", "south"]})
    out = point_in_time_join(events, users, key="user", feature_ts=None, ttl_seconds=None, columns=["region"])
    assert out.column("region").to_pylist() == ["south", "north", None, "south", None]


def test_static_table_with_duplicate_keys_is_an_error_naming_the_key_column() -> None:
    events = pa.table({"user": [1], "ts": [0]})
    users = pa.table({"user_id": [1, 2, 2], "region": ["a", "b", "c"]})
    with pytest.raises(ValueError, match=r"key column 'user_id' has duplicate values \(e\.g\. 2"):
        point_in_time_join(
            events,
            users,
            key="user",
            features_key="user_id",
            feature_ts=None,
            ttl_seconds=None,
            columns=["region"],
        )


def test_a_joined_column_clashing_with_an_event_column_is_an_error_naming_it() -> None:
    events = pa.table({"user": [1], "ts": [0], "region": ["x"]})
    users = pa.table({"user": [1], "region": ["a"]})
    with pytest.raises(ValueError, match=r"\['region'\]"):
        point_in_time_join(events, users, key="user", feature_ts=None, ttl_seconds=None, columns=["region"])


def test_key_type_mismatch_is_an_error_naming_both_columns() -> None:
    events = pa.table({"user": ["1"], "ts": [0]})
    users = pa.table({"user": [1], "region": ["a"]})
    with pytest.raises(TypeError, match=r"events\.user .*features\.user"):
        point_in_time_join(events, users, key="user", feature_ts=None, ttl_seconds=None, columns=["region"])


def test_missing_feature_column_is_an_error_naming_it() -> None:
    events = pa.table({"user": [1], "ts": [0]})
    users = pa.table({"user": [1], "ts": [0]})
    with pytest.raises(KeyError, match="'age'"):
        point_in_time_join(events, users, key="user", feature_ts="ts", ttl_seconds=None, columns=["age"])


def test_empty_feature_table_gives_nulls_and_empty_events_give_empty_table() -> None:
    events = pa.table({"user": [1, 2], "ts": [0, 1]})
    empty = pa.table(
        {"user": pa.array([], pa.int64()), "ts": pa.array([], pa.int64()), "age": pa.array([], pa.float64())}
    )
    out = point_in_time_join(events, empty, key="user", feature_ts="ts", ttl_seconds=None, columns=["age"])
    assert out.column("age").to_pylist() == [None, None]
    out = point_in_time_join(
        events.slice(0, 0),
        events.append_column("age", pa.array([1.0, 2.0])),
        key="user",
        feature_ts="ts",
        ttl_seconds=None,
        columns=["age"],
    )
    assert out.num_rows == 0 and out.column_names == ["user", "ts", "age"]


def test_latest_per_key_returns_newest_row_at_or_before_as_of() -> None:
    table = pa.table({"k": ["a", "b", "a", "b", None], "ts": [5, 1, 9, 4, 10], "v": [1, 2, 3, 4, 5]})
    latest = latest_per_key(table, "k", "ts")
    assert latest.to_pylist() == [{"k": "a", "ts": 9, "v": 3}, {"k": "b", "ts": 4, "v": 4}]
    as_of = latest_per_key(table, "k", "ts", as_of=4)
    assert as_of.to_pylist() == [{"k": "b", "ts": 4, "v": 4}]


def test_offline_store_round_trips_tables_and_names_missing_ones(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path / "offline")
    assert store.names() == []
    table = pa.table({"user": [1, 2], "age": [20, 30]})
    store.write_table("users", table)
    store.write_table("items", pa.table({"item": ["x"]}))
    assert store.names() == ["items", "users"]
    assert store.read_table("users").equals(table)
    with pytest.raises(FileNotFoundError, match=r"no table 'clicks'.*\['items', 'users'\]"):
        store.read_table("clicks")
    with pytest.raises(ValueError, match="not allowed"):
        store.write_table("../escape", table)


def test_get_historical_features_joins_every_entity_point_in_time(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    store.write_table("users", pa.table({"user_id": [1, 2], "age": [20, 30]}))
    items = pa.table({"item_id": ["a", "a", "b"], "valid_from": [0, 100, 0], "price": [1.0, 2.0, 5.0]})
    events = pa.table({"user_id": [2, 1, 3], "item_id": ["a", "a", "b"], "ts": [50, 150, 200]})
    entities = {
        "user": (None, EntityConfig(table="users", key="user_id", features=["age"])),
        "item": (
            items,
            EntityConfig(
                table="items", key="item_id", timestamp="valid_from", ttl_days=0.001, features=["price"]
            ),
        ),
    }
    out = store.get_historical_features(events, entities, prefixes={"item": "item_"})
    assert out.column_names == ["user_id", "item_id", "ts", "age", "item_price"]
    assert out.column("age").to_pylist() == [30, 20, None]
    # ttl 0.001 days = 86.4 s: the 'b' row from t=0 is too old at t=200
    assert out.column("item_price").to_pylist() == [1.0, 2.0, None]
