"""Tests of user profiles: RFM snapshots and features, segments, category affinity TF-IDF, the config path."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from feature_store.config import ProfilesConfig
from feature_store.profiles import (
    SEGMENT_RULES,
    _snapshot_indices,
    _vectors,
    add_category_affinity,
    add_rfm_features,
    build_user_profiles,
    category_affinity_snapshots,
    fit_idf,
    fit_user_profiles,
    latest_user_profiles,
    rfm_segments,
    rfm_snapshots,
    segment_of,
)

DAY = 86_400
HOUR = 3_600
D0 = 20_000 * DAY  # a UTC midnight
DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def _purchases() -> pa.Table:
    return pa.table(
        {
            "user_id": [1, 2, 1, 1],
            "ts": [D0 + 10 * HOUR, D0 + DAY + 23 * HOUR, D0 + 20 * HOUR, D0 + 2 * DAY + HOUR],
            "revenue": [10.0, 100.0, 5.0, 7.0],
        }
    )


def test_rfm_snapshots_accumulate_per_user_day_and_become_valid_at_next_midnight() -> None:
    snaps = rfm_snapshots(_purchases(), user_key="user_id")
    assert snaps.to_pylist() == [
        {"user_id": 1, "ts": D0 + DAY, "last_purchase_ts": D0 + 20 * HOUR, "frequency": 2, "monetary": 15.0},
        {
            "user_id": 1,
            "ts": D0 + 3 * DAY,
            "last_purchase_ts": D0 + 2 * DAY + HOUR,
            "frequency": 3,
            "monetary": 22.0,
        },
        {
            "user_id": 2,
            "ts": D0 + 2 * DAY,
            "last_purchase_ts": D0 + DAY + 23 * HOUR,
            "frequency": 1,
            "monetary": 100.0,
        },
    ]


def test_rfm_features_match_hand_computation_and_same_day_purchases_stay_invisible() -> None:
    snaps = rfm_snapshots(_purchases(), user_key="user_id")
    events = pa.table(
        {
            "user_id": [1, 1, 1, 1, 2, 3, 2],
            "ts": [
                D0 + 21 * HOUR,
                D0 + DAY,
                D0 + 2 * DAY + 5 * HOUR,
                D0 + 3 * DAY + 12 * HOUR,
                D0 + DAY + 23 * HOUR + 1,
                D0 + 5 * DAY,
                D0 + 10 * DAY,
            ],
        }
    )
    out = add_rfm_features(events, snaps, user_key="user_id")
    assert out.schema.field("rfm_recency_days").type == pa.float32()
    expected_recency = [None, 4 / 24, 33 / 24, 35 / 24, None, None, (8 * 24 + 1) / 24]
    got = out.column("rfm_recency_days").to_pylist()
    assert [g is None for g in got] == [e is None for e in expected_recency]
    assert np.allclose([g for g in got if g is not None], [e for e in expected_recency if e is not None])
    assert out.column("rfm_frequency").to_pylist() == [None, 2, 2, 3, None, None, 1]
    assert out.column("rfm_monetary").to_pylist() == [None, 15, 15, 22, None, None, 100]
    with_ttl = add_rfm_features(events, snaps, user_key="user_id", ttl_seconds=DAY)
    # TTL 1 day counts from the snapshot time (the next midnight): D0+2d+5h is 29 h after D0+1d
    assert with_ttl.column("rfm_frequency").to_pylist() == [None, 2, None, 3, None, None, None]


def test_rfm_features_with_string_user_keys_keep_event_order() -> None:
    purchases = pa.table({"user_id": ["b", "a"], "ts": [D0, D0], "revenue": [1.0, 2.0]})
    events = pa.table({"user_id": ["a", None, "b", "c"], "ts": [D0 + DAY] * 4})
    out = add_rfm_features(events, rfm_snapshots(purchases, user_key="user_id"), user_key="user_id")
    assert out.column("user_id").to_pylist() == ["a", None, "b", "c"]
    assert out.column("rfm_monetary").to_pylist() == [2.0, None, 1.0, None]


def test_rfm_features_refuse_to_overwrite_an_event_column() -> None:
    events = pa.table({"user_id": [1], "ts": [D0], "rfm_frequency": [3.0]})
    with pytest.raises(ValueError, match=r"\['rfm_frequency'\]"):
        add_rfm_features(events, rfm_snapshots(_purchases(), user_key="user_id"), user_key="user_id")


def test_rfm_segments_score_quintiles_and_apply_the_rule_table() -> None:
    as_of = 1_000 * DAY
    rows = [  # user, last purchase days before as_of, frequency, monetary
        ("A", 1, 9, 900.0),
        ("B", 2, 1, 100.0),
        ("C", 3, 7, 700.0),
        ("D", 40, 5, 500.0),
        ("E", 10, 3, 300.0),
    ]
    snaps = pa.table(
        {
            "user": [r[0] for r in rows] + ["A", "D"],
            "ts": [as_of - r[1] * DAY + DAY for r in rows] + [as_of - 50 * DAY, as_of + DAY],
            "last_purchase_ts": [as_of - r[1] * DAY for r in rows] + [as_of - 51 * DAY, as_of],
            "frequency": [r[2] for r in rows] + [1, 99],
            "monetary": [r[3] for r in rows] + [1.0, 9_999.0],
        }
    )
    seg = {r["user"]: r for r in rfm_segments(snaps, as_of=as_of, user_key="user").to_pylist()}
    assert sorted(seg) == ["A", "B", "C", "D", "E"]
    assert [(seg[u]["r_score"], seg[u]["f_score"], seg[u]["m_score"]) for u in "ABCDE"] == [
        (5, 5, 5),
        (4, 1, 1),
        (3, 4, 4),
        (1, 3, 3),
        (2, 2, 2),
    ]
    assert [seg[u]["segment"] for u in "ABCDE"] == ["champions", "new", "loyal", "at_risk", "hibernating"]
    assert seg["D"]["recency_days"] == 40.0 and seg["D"]["frequency"] == 5


def test_rfm_scores_give_ties_the_same_lower_quintile() -> None:
    snaps = pa.table(
        {
            "user": [1, 2, 3, 4],
            "ts": [DAY] * 4,
            "last_purchase_ts": [0] * 4,
            "frequency": [1, 1, 1, 5],
            "monetary": [1.0, 2.0, 3.0, 4.0],
        }
    )
    seg = rfm_segments(snaps, as_of=DAY, user_key="user")
    assert seg.column("f_score").to_pylist() == [1, 1, 1, 4]
    assert seg.column("r_score").to_pylist() == [1, 1, 1, 1]
    assert seg.column("m_score").to_pylist() == [1, 2, 3, 4]


def test_segment_rule_table_covers_every_score_combination_in_order() -> None:
    combos = np.array(list(itertools.product(range(1, 6), repeat=3)))
    names = segment_of(combos[:, 0], combos[:, 1], combos[:, 2])
    assert "unscored" not in set(names)
    assert set(names) == {rule[0] for rule in SEGMENT_RULES}
    spot = {
        (5, 5, 3): "loyal",
        (5, 1, 5): "new",
        (3, 2, 1): "potential",
        (4, 2, 2): "potential",
        (2, 5, 5): "at_risk",
        (2, 1, 1): "hibernating",
        (1, 2, 5): "lost",
        (4, 4, 4): "champions",
    }
    for (r, f, m), name in spot.items():
        assert segment_of(np.array([r]), np.array([f]), np.array([m]))[0] == name


def _interactions() -> pa.Table:
    return pa.table(
        {
            "user": [1, 1, 2, 1, 1, 3, 1],
            "cat": ["a", "b", "a", "a", "c", "b", None],
            "ts": [
                D0 + HOUR,
                D0 + 2 * HOUR,
                D0 + 3 * HOUR,
                D0 + 4 * HOUR,
                D0 + DAY + HOUR,
                D0 + 2 * DAY,
                D0 + 5 * HOUR,
            ],
        }
    )


def test_category_affinity_snapshots_hold_cumulative_counts_per_day() -> None:
    snaps, cats = category_affinity_snapshots(_interactions(), user_key="user", category="cat")
    assert cats == ["a", "b", "c"]
    assert snaps.schema.field("category_counts").type == pa.list_(pa.float32(), 3)
    assert snaps.to_pylist() == [
        {"user": 1, "ts": D0 + DAY, "category_counts": [2.0, 1.0, 0.0]},
        {"user": 1, "ts": D0 + 2 * DAY, "category_counts": [2.0, 1.0, 1.0]},
        {"user": 2, "ts": D0 + DAY, "category_counts": [1.0, 0.0, 0.0]},
        {"user": 3, "ts": D0 + 3 * DAY, "category_counts": [0.0, 1.0, 0.0]},
    ]


def test_integer_categories_sort_numerically_and_a_given_list_fixes_width_and_order() -> None:
    table = pa.table({"user": [1, 1, 1], "cat": [10, 2, 7], "ts": [0, 0, 0]})
    snaps, cats = category_affinity_snapshots(table, user_key="user", category="cat")
    assert cats == ["2", "7", "10"]
    snaps, cats = category_affinity_snapshots(table, user_key="user", category="cat", categories=["10", "99"])
    assert cats == ["10", "99"]
    assert snaps.column("category_counts").to_pylist() == [[1.0, 0.0]]


def test_affinity_weights_equal_hand_computed_tfidf_and_zeros_without_history() -> None:
    snaps, _ = category_affinity_snapshots(_interactions(), user_key="user", category="cat")
    idf = fit_idf(snaps, D0 + 2 * DAY)
    # users seen by D0+2d: 1 -> [2,1,1], 2 -> [1,0,0]; N=2, df=[2,1,1]
    idf_b = math.log(3 / 2) + 1
    assert np.allclose(idf, [1.0, idf_b, idf_b])
    events = pa.table(
        {"user": [1, 2, 4, 1], "ts": [D0 + DAY + 5 * HOUR, D0 + HOUR, D0 + 9 * DAY, D0 + 3 * DAY]}
    )
    out = add_category_affinity(events, snaps, idf, user_key="user")
    got = np.array(out.column("cat_affinity").to_pylist(), dtype=np.float64)
    w0 = np.array([2 / 3, 1 / 3 * idf_b, 0.0])
    w3 = np.array([2 / 4, 1 / 4 * idf_b, 1 / 4 * idf_b])
    assert np.allclose(got[0], w0 / np.linalg.norm(w0), atol=1e-6)
    assert np.allclose(got[1], 0.0) and np.allclose(got[2], 0.0)
    assert np.allclose(got[3], w3 / np.linalg.norm(w3), atol=1e-6)
    assert out.schema.field("cat_affinity").type == pa.list_(pa.float32(), 3)


def test_fit_idf_on_a_count_matrix_and_width_mismatch_is_an_error() -> None:
    idf = fit_idf(np.array([[1, 0], [3, 0], [0, 2]]))
    assert np.allclose(idf, [math.log(4 / 3) + 1, math.log(4 / 2) + 1])
    snaps, _ = category_affinity_snapshots(_interactions(), user_key="user", category="cat")
    with pytest.raises(ValueError, match="idf has 2 values"):
        add_category_affinity(pa.table({"user": [1], "ts": [0]}), snaps, idf, user_key="user")


def _marketplace() -> tuple[pa.Table, pa.Table, pa.Table]:
    purchases = pa.table(
        {
            "user_id": [1, 1, 2, 3, 2],
            "item_id": ["x", "y", "x", "z", "z"],
            "ts": [D0 + HOUR, D0 + DAY + HOUR, D0 + 2 * HOUR, D0 + 5 * DAY, D0 + 6 * DAY],
            "revenue": [3.0, 4.0, 5.0, 6.0, 7.0],
        }
    )
    items = pa.table(  # price history: two rows for x, the newest category wins
        {
            "item_id": ["x", "y", "z", "x"],
            "ts": [0, 0, 0, 10],
            "category": ["old", "toys", "books", "games"],
            "price": [1.0, 2.0, 3.0, 1.5],
        }
    )
    events = pa.table(
        {
            "user_id": [2, 1, 3, 1],
            "item_id": ["y", "x", "x", "z"],
            "ts": [D0 + DAY, D0 + 3 * DAY, D0 + 4 * DAY, D0 + 7 * DAY],
        }
    )
    return events, purchases, items


def test_build_user_profiles_fits_categories_and_idf_before_train_end_only() -> None:
    events, purchases, items = _marketplace()
    cfg = ProfilesConfig(enabled=True)
    train_end = D0 + 3 * DAY
    model = fit_user_profiles(purchases, items, cfg, train_end_ts=train_end)
    assert model.categories == ["games", "toys"]  # 'books' is bought after train_end only
    # users with snapshots by train_end: 1 -> games 1, toys 1; 2 -> games 1. N=2, df=[2,1]
    assert np.allclose(model.idf, [1.0, math.log(3 / 2) + 1])
    out = build_user_profiles(events, purchases, items, cfg, train_end_ts=train_end)
    assert out.column_names == [
        "user_id",
        "item_id",
        "ts",
        "rfm_recency_days",
        "rfm_frequency",
        "rfm_monetary",
        "cat_affinity",
    ]
    assert out.column("rfm_frequency").to_pylist() == [1, 2, None, 2]
    aff = np.array(out.column("cat_affinity").to_pylist())
    assert np.allclose(aff[0], [1.0, 0.0]) and np.allclose(aff[2], [0.0, 0.0])
    top1 = fit_user_profiles(purchases, items, ProfilesConfig(n_categories=1), train_end_ts=train_end)
    assert top1.categories == ["games"]


def test_latest_user_profiles_equal_the_offline_features_at_the_same_time() -> None:
    _, purchases, items = _marketplace()
    cfg = ProfilesConfig(enabled=True)
    as_of = D0 + 6 * DAY
    latest = latest_user_profiles(purchases, items, cfg, train_end_ts=D0 + 3 * DAY, as_of=as_of)
    assert latest.column("user_id").to_pylist() == [1, 2, 3]
    model = fit_user_profiles(purchases, items, cfg, train_end_ts=D0 + 3 * DAY)
    offline = model.add_to(pa.table({"user_id": [1, 2, 3], "ts": [as_of] * 3}))
    for name in ("rfm_recency_days", "rfm_frequency", "rfm_monetary", "cat_affinity"):
        assert latest.column(name).to_pylist() == offline.column(name).to_pylist()
    assert latest.column("rfm_frequency").to_pylist() == [2, 1, 1]  # user 2's day-6 purchase is not visible


def test_profiles_without_a_category_source_name_the_missing_column() -> None:
    _, purchases, _ = _marketplace()
    with pytest.raises(ValueError, match=r"profiles\.category 'category'"):
        fit_user_profiles(purchases, None, ProfilesConfig(), train_end_ts=D0)
    model = fit_user_profiles(purchases, None, ProfilesConfig(category=None), train_end_ts=D0)
    assert model.affinity is None


def test_rfm_on_cdnow_matches_a_pandas_groupby_of_purchases_before_the_cutoff() -> None:
    path = DATASETS / "cdnow" / "CDNOW_master.txt"
    if not path.is_file():
        pytest.skip(f"CDNOW data set not found at {path} (../shared/datasets is absent in a fresh clone)")
    df = pd.read_csv(path, sep=r"\s+", dtype={"customer_id": str, "date": str})
    df["ts"] = (pd.to_datetime(df["date"], format="%Y%m%d") - pd.Timestamp("1970-01-01")) // pd.Timedelta(
        "1s"
    )
    purchases = pa.table(
        {
            "user": df["customer_id"].to_numpy(dtype=object),
            "ts": df["ts"].to_numpy(np.int64),
            "revenue": df["dollar_value"].to_numpy(float),
        }
    )
    as_of = int((pd.Timestamp("1997-07-01") - pd.Timestamp("1970-01-01")) // pd.Timedelta("1s"))
    before = (
        df[df["ts"] < as_of]
        .groupby("customer_id")
        .agg(n=("ts", "size"), m=("dollar_value", "sum"), last=("ts", "max"))
    )
    users = before.index.to_numpy(dtype=object)[::50]
    events = pa.table({"user": users, "ts": np.full(len(users), as_of + 7 * HOUR)})
    out = add_rfm_features(events, rfm_snapshots(purchases, user_key="user"), user_key="user")
    ref = before.loc[users]
    assert out.column("rfm_frequency").to_pylist() == ref["n"].astype(float).tolist()
    assert np.allclose(out.column("rfm_monetary").to_numpy(), ref["m"].to_numpy(), rtol=1e-5)
    recency = (as_of + 7 * HOUR - ref["last"].to_numpy()) / DAY
    assert np.allclose(out.column("rfm_recency_days").to_numpy(), recency, rtol=1e-6)
    seg = rfm_segments(rfm_snapshots(purchases, user_key="user"), as_of=as_of, user_key="user")
    assert seg.num_rows == len(before)


# ------------------------------------------- affinity: equality with the previous per-event implementation


def _previous_affinity(
    events: pa.Table, snapshots: pa.Table, idf: np.ndarray, *, user_key: str, ttl_seconds: float | None
) -> np.ndarray:
    """The implementation before the per-snapshot rewrite: float64 TF-IDF computed for every event row."""
    matrix = _vectors(snapshots.column("category_counts"), "category_counts")
    idx, _ = _snapshot_indices(events, snapshots, user_key, "ts", ttl_seconds)
    out = np.zeros((len(idx), len(idf)), dtype=np.float32)
    for lo in range(0, len(idx), 1_000):
        block = idx[lo : lo + 1_000]
        hit = np.flatnonzero(block >= 0)
        counts = matrix[block[hit]].astype(np.float64)
        total = counts.sum(axis=1, keepdims=True)
        weights = counts / np.where(total > 0, total, 1.0) * idf
        norm = np.sqrt((weights**2).sum(axis=1, keepdims=True))
        out[lo + hit] = weights / np.where(norm > 0, norm, 1.0)
    return out


def _random_affinity_case(seed: int, string_users: bool) -> tuple[pa.Table, pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 3_000
    users = rng.integers(0, 60, n)
    interactions = pa.table(
        {
            "user": users.astype(str) if string_users else users,
            "cat": pa.array(rng.choice(list("abcdefg"), n), mask=rng.random(n) < 0.05),
            "ts": D0 + rng.integers(0, 20 * DAY, n),
        }
    )
    snaps, _ = category_affinity_snapshots(interactions, user_key="user", category="cat")
    m = 5_000
    event_users = rng.integers(0, 70, m)  # users 60..69 have no snapshot
    user_values = event_users.astype(str) if string_users else event_users
    events = pa.table(
        {
            "user": pa.array(user_values, mask=rng.random(m) < 0.03),
            "ts": pa.array(D0 + rng.integers(-DAY, 25 * DAY, m), pa.int64(), mask=rng.random(m) < 0.03),
        }
    )
    return events, snaps, fit_idf(snaps, D0 + 10 * DAY)


def _affinity_matrix(table: pa.Table, name: str = "cat_affinity") -> np.ndarray:
    column = table.column(name).combine_chunks()
    return column.values.to_numpy().reshape(len(column), column.type.list_size)


@pytest.mark.parametrize("string_users", [False, True])
@pytest.mark.parametrize("ttl_seconds", [None, 2.0 * DAY])
def test_affinity_is_bit_identical_to_the_previous_per_event_implementation(
    string_users: bool, ttl_seconds: float | None
) -> None:
    events, snaps, idf = _random_affinity_case(seed=4, string_users=string_users)
    out = add_category_affinity(events, snaps, idf, user_key="user", ttl_seconds=ttl_seconds)
    got = _affinity_matrix(out)
    want = _previous_affinity(events, snaps, idf, user_key="user", ttl_seconds=ttl_seconds)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # same bits, not just close
    assert 0 < (got.sum(axis=1) > 0).sum() < len(got)  # the case has both hits and misses
    assert out.column_names == ["user", "ts", "cat_affinity"]


def test_affinity_block_size_does_not_change_the_weights() -> None:
    events, snaps, idf = _random_affinity_case(seed=8, string_users=False)
    whole = add_category_affinity(events, snaps, idf, user_key="user")
    small = add_category_affinity(events, snaps, idf, user_key="user", block_rows=7)
    assert whole.equals(small)


def test_affinity_with_no_snapshot_rows_gives_zero_vectors_of_the_idf_width() -> None:
    _, snaps, idf = _random_affinity_case(seed=1, string_users=False)
    events = pa.table({"user": [1, 2], "ts": [D0, D0 + DAY]})
    out = add_category_affinity(events, snaps.slice(0, 0), idf, user_key="user")
    assert out.schema.field("cat_affinity").type == pa.list_(pa.float32(), len(idf))
    assert np.array_equal(_affinity_matrix(out), np.zeros((2, len(idf)), np.float32))


# ----------------------------------------------------------------------- orders, returns, the last day


def _orders() -> pa.Table:
    """User 1: a two-line order on day 0, another order on day 1, a return on day 2; user 2 buys on day 2."""
    return pa.table(
        {
            "user_id": [1, 1, 1, 1, 2],
            "invoice": ["A", "A", "B", "CB", "D"],
            "ts": [D0 + HOUR, D0 + HOUR, D0 + DAY + HOUR, D0 + 2 * DAY + 5 * HOUR, D0 + 2 * DAY + 9 * HOUR],
            "revenue": [10.0, 5.0, 8.0, -8.0, 3.0],
        }
    )


def test_rfm_frequency_counts_orders_and_a_return_lowers_monetary_from_its_own_day() -> None:
    snaps = rfm_snapshots(_orders(), user_key="user_id", order="invoice")
    assert snaps.to_pylist() == [
        {"user_id": 1, "ts": D0 + DAY, "last_purchase_ts": D0 + HOUR, "frequency": 1, "monetary": 15.0},
        {"user_id": 1, "ts": D0 + 2 * DAY, "last_purchase_ts": D0 + DAY + HOUR, "frequency": 2, "monetary": 23.0},
        # the return: monetary drops, frequency and the last purchase stay
        {"user_id": 1, "ts": D0 + 3 * DAY, "last_purchase_ts": D0 + DAY + HOUR, "frequency": 2, "monetary": 15.0},
        {"user_id": 2, "ts": D0 + 3 * DAY, "last_purchase_ts": D0 + 2 * DAY + 9 * HOUR, "frequency": 1,
         "monetary": 3.0},
    ]
    by_row = rfm_snapshots(_orders(), user_key="user_id")  # without an order column every purchase row counts
    assert by_row.column("frequency").to_pylist() == [2, 3, 3, 1]


def test_the_profile_at_the_end_of_the_data_includes_its_last_day_but_events_never_see_their_own_day() -> None:
    cfg = ProfilesConfig(category=None, order="invoice")
    model = fit_user_profiles(_orders(), None, cfg, train_end_ts=D0)
    end = D0 + 2 * DAY + 9 * HOUR + 1  # one second after the last purchase, materialize's default as_of
    assert model.data_end_ts == end
    latest = {r["user_id"]: r for r in model.latest(end).to_pylist()}
    assert sorted(latest) == [1, 2]  # user 2 bought on the last day only
    assert latest[1]["rfm_monetary"] == 15.0 and latest[2]["rfm_frequency"] == 1.0
    assert latest[2]["ts"] == end and latest[2]["rfm_recency_days"] == pytest.approx(1 / 86_400)
    segments = rfm_segments(model.rfm, as_of=end, user_key="user_id", data_end_ts=model.data_end_ts)
    assert segments.column("user_id").to_pylist() == [1, 2]
    # before the end of the data the same day is still hidden: it may hold later purchases
    assert [r["user_id"] for r in model.latest(D0 + 2 * DAY + 6 * HOUR).to_pylist()] == [1]
    assert model.latest(D0 + 2 * DAY + 6 * HOUR).column("rfm_monetary").to_pylist() == [23.0]
    # training events: each purchase row as an event sees only the days before its own
    events = model.add_to(_orders().select(["user_id", "ts"]))
    assert events.column("rfm_frequency").to_pylist() == [None, None, 1, 2, None]


def test_saved_profiles_keep_the_end_of_the_data(tmp_path: Path) -> None:
    from feature_store.offline import OfflineStore
    from feature_store.prepare import load_profiles, save_profiles

    model = fit_user_profiles(_orders(), None, ProfilesConfig(category=None, order="invoice"), train_end_ts=D0)
    store = OfflineStore(tmp_path / "offline")
    save_profiles(store, model)
    loaded = load_profiles(store)
    assert loaded is not None and loaded.data_end_ts == model.data_end_ts
    assert loaded.latest(model.data_end_ts).equals(model.latest(model.data_end_ts))
