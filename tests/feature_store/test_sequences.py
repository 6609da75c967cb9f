"""Tests of behaviour sequences: strict-before histories, ties, positive filter, max_len, latest histories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from feature_store import sequences
from feature_store.offline import as_array, composite_keys, encode_keys, int_times
from feature_store.sequences import history_sequences, latest_histories

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def _reference(rows: list[dict], max_len: int, positive: str | None) -> list[list]:
    """Slow reference: for each event scan all events of its user (input order breaks time ties)."""
    out = []
    for ev in rows:
        hist = []
        if ev["user"] is not None and ev["ts"] is not None:
            for other in rows:
                if other["user"] != ev["user"] or other["item"] is None or other["ts"] is None:
                    continue
                if other["ts"] >= ev["ts"] or (positive and not (other[positive] or 0) > 0):
                    continue
                hist.append(other)
        hist.sort(key=lambda r: r["ts"])  # stable: equal times keep input order
        out.append([r["item"] for r in hist][-max_len:] if hist else [])
    return out


def _random_events(seed: int, n: int = 500) -> pa.Table:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 15, n).astype(object)
    users[rng.random(n) < 0.03] = None
    items = rng.integers(100, 140, n).astype(object)
    items[rng.random(n) < 0.03] = None
    ts = rng.integers(0, 40, n).astype(object)  # many equal times
    ts[rng.random(n) < 0.02] = None
    return pa.table(
        {
            "user": pa.array(list(users), pa.int64()),
            "item": pa.array(list(items), pa.int64()),
            "ts": pa.array(list(ts), pa.int64()),
            "click": rng.integers(0, 2, n),
        }
    )


@pytest.mark.parametrize("positive", [None, "click"])
@pytest.mark.parametrize("max_len", [1, 3, 50])
def test_histories_match_a_brute_force_reference_on_random_events(positive: str | None, max_len: int) -> None:
    events = _random_events(seed=max_len)
    got = history_sequences(events, user="user", item="item", max_len=max_len, positive=positive)
    assert len(got) == events.num_rows
    assert got.to_pylist() == _reference(events.to_pylist(), max_len, positive)


def test_events_at_the_same_second_are_not_history_of_each_other() -> None:
    events = pa.table({"user": [1, 1, 1, 1], "item": [10, 11, 12, 13], "ts": [5, 5, 6, 5]})
    got = history_sequences(events, user="user", item="item", max_len=10)
    assert got.to_pylist() == [[], [], [10, 11, 13], []]


def test_history_is_most_recent_last_cut_to_max_len_with_string_ids() -> None:
    events = pa.table(
        {"user": ["u", "u", "v", "u", "u"], "item": ["a", "b", "x", "c", "d"], "ts": [1, 2, 3, 4, 9]}
    )
    got = history_sequences(events, user="user", item="item", max_len=2)
    assert got.type == pa.list_(pa.string())
    assert got.to_pylist() == [[], ["a"], [], ["a", "b"], ["b", "c"]]


def test_positive_filter_keeps_only_positive_events_as_history_but_every_event_gets_one() -> None:
    events = pa.table({"user": [1, 1, 1, 1], "item": [1, 2, 3, 4], "ts": [1, 2, 3, 4], "label": [1, 0, 1, 0]})
    got = history_sequences(events, user="user", item="item", max_len=5, positive="label")
    assert got.to_pylist() == [[], [1], [1], [1, 3]]


def test_non_positive_max_len_is_an_error() -> None:
    events = pa.table({"user": [1], "item": [1], "ts": [1]})
    with pytest.raises(ValueError, match="max_len"):
        history_sequences(events, user="user", item="item", max_len=0)


def test_missing_column_is_an_error_naming_it() -> None:
    events = pa.table({"user": [1], "item": [1], "ts": [1]})
    with pytest.raises(KeyError, match="'clicked'"):
        history_sequences(events, user="user", item="item", max_len=3, positive="clicked")


def test_latest_histories_give_each_user_their_last_items_up_to_as_of() -> None:
    events = _random_events(seed=11)
    rows = events.to_pylist()
    as_of = 25
    table = latest_histories(events, user="user", item="item", max_len=4, positive="click", as_of=as_of)
    assert table.column_names == ["user", "history", "ts"]
    for row in table.to_pylist():
        mine = [
            r
            for r in rows
            if r["user"] == row["user"]
            and r["item"] is not None
            and r["ts"] is not None
            and r["ts"] <= as_of
            and r["click"] > 0
        ]
        mine.sort(key=lambda r: r["ts"])
        assert row["history"] == [r["item"] for r in mine][-4:]
        assert row["ts"] == mine[-1]["ts"]
    users_with_history = {
        r["user"]
        for r in rows
        if r["user"] is not None
        and r["item"] is not None
        and r["ts"] is not None
        and r["ts"] <= as_of
        and r["click"] > 0
    }
    assert set(table.column("user").to_pylist()) == users_with_history


def test_latest_history_equals_the_history_of_a_later_event() -> None:
    events = pa.table({"user": [2, 1, 2, 2], "item": [7, 8, 9, 6], "ts": [1, 2, 3, 3]})
    latest = latest_histories(events, user="user", item="item", max_len=3)
    probe = pa.concat_tables([events, pa.table({"user": [2], "item": [0], "ts": [4]})])
    assert latest.to_pylist()[0] == {"user": 2, "history": [7, 9, 6], "ts": 3}
    assert history_sequences(probe, user="user", item="item", max_len=3).to_pylist()[-1] == [7, 9, 6]


def test_taobao_purchase_histories_match_the_reference_on_sampled_rows() -> None:
    path = DATASETS / "taobao-userbehavior-head" / "UserBehavior_head.csv"
    if not path.is_file():
        pytest.skip(
            f"Taobao UserBehavior head not found at {path} (../shared/datasets is absent in a fresh clone)"
        )
    raw = pacsv.read_csv(
        path, read_options=pacsv.ReadOptions(column_names=["user", "item", "category", "behavior", "ts"])
    )
    events = raw.append_column("bought", pa.array(np.asarray(raw.column("behavior").to_pylist()) == "buy"))
    got = history_sequences(events, user="user", item="item", max_len=5, positive="bought")
    assert len(got) == events.num_rows
    users = events.column("user").to_numpy()
    ts = events.column("ts").to_numpy()
    items = events.column("item").to_numpy()
    bought = events.column("bought").to_numpy(zero_copy_only=False)
    lengths = np.diff(got.offsets.to_numpy())
    assert lengths.max() == 5
    rng = np.random.default_rng(0)
    sample = np.r_[rng.choice(events.num_rows, 100, replace=False), rng.choice(np.flatnonzero(lengths), 100)]
    for i in sample:
        mask = (users == users[i]) & (ts < ts[i]) & bought
        order = np.argsort(ts[mask], kind="stable")
        assert got[int(i)].as_py() == items[mask][order][-5:].tolist()


# ------------------------------------------------- equality with the previous (searchsorted) implementation


def _previous_history_sequences(
    events: pa.Table, *, user: str, item: str, ts: str = "ts", max_len: int, positive: str | None = None
) -> pa.Array:
    """The implementation before the sort-once rewrite: two searchsorted calls and an [n, L] index gather."""
    codes, _ = encode_keys(as_array(events.column(user)))
    t, valid = int_times(events.column(ts), ts)
    ok = valid & (codes >= 0) & pc.is_valid(as_array(events.column(item))).to_numpy(zero_copy_only=False)
    if positive is not None:
        pos = as_array(events.column(positive)).cast(pa.float64())
        ok &= pc.fill_null(pc.greater(pos, 0.0), False).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(ok)
    (comp,) = composite_keys([codes[rows]], [t[rows]])
    rows = rows[np.argsort(comp, kind="stable")]
    items = as_array(events.column(item))
    e_ok = valid & (codes >= 0)
    safe_codes = np.where(e_ok, codes, 0)
    t_min = int(t[valid].min()) if valid.any() else 0
    t_eff = np.where(valid, t, t_min)
    cand_comp, event_comp, user_start_comp = composite_keys(
        [codes[rows], safe_codes, safe_codes], [t[rows], t_eff, np.full(len(t), t_min)]
    )
    end = np.searchsorted(cand_comp, event_comp, side="left")
    first = np.searchsorted(cand_comp, user_start_comp, side="left")
    length = np.where(e_ok, np.minimum(end - first, max_len), 0)
    start = end - length
    offsets = np.zeros(len(length) + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])
    flat = np.repeat(start - offsets[:-1], length) + np.arange(offsets[-1], dtype=np.int64)
    values = items.take(pa.array(rows[flat], pa.int64()))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def _assert_identical(got: pa.Array, want: pa.Array) -> None:
    assert got.type == want.type
    assert got.offsets.equals(want.offsets)
    assert got.values.equals(want.values)
    assert got.equals(want)


def _larger_events(seed: int, n: int = 4_000, item_type: pa.DataType | None = None) -> pa.Table:
    rng = np.random.default_rng(seed)
    table = _random_events(seed, n)
    items = table.column("item").combine_chunks()
    if item_type is not None and pa.types.is_string(item_type):
        items = pc.binary_join_element_wise("i", items.cast(pa.string()), "")
    else:
        items = items.cast(item_type or pa.int64())
    click = pa.array(rng.choice([0.0, 1.0, 2.5, np.nan], n), pa.float64(), mask=rng.random(n) < 0.05)
    return table.set_column(1, "item", items).set_column(3, "click", click)


@pytest.mark.parametrize("item_type", [pa.int64(), pa.int32(), pa.float32(), pa.string()])
@pytest.mark.parametrize("positive", [None, "click"])
def test_histories_are_identical_to_the_previous_implementation(
    item_type: pa.DataType, positive: str | None
) -> None:
    events = _larger_events(seed=3, item_type=item_type)
    for max_len in (1, 4, 1_000):
        kwargs = {"user": "user", "item": "item", "max_len": max_len, "positive": positive}
        _assert_identical(history_sequences(events, **kwargs), _previous_history_sequences(events, **kwargs))


def test_chunked_gather_gives_the_same_lists_as_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    events = _larger_events(seed=5)
    whole = history_sequences(events, user="user", item="item", max_len=6)
    for chunk_values in (1, 7, 100):
        monkeypatch.setattr(sequences, "_GATHER_CHUNK_VALUES", chunk_values)
        _assert_identical(history_sequences(events, user="user", item="item", max_len=6), whole)


def test_chunked_input_columns_and_string_users_give_identical_histories() -> None:
    events = _larger_events(seed=9)
    users = events.column("user").cast(pa.string())
    events = events.set_column(0, "user", users)
    chunked = pa.concat_tables([events.slice(0, 1_000), events.slice(1_000)])
    assert chunked.column("user").num_chunks == 2
    got = history_sequences(chunked, user="user", item="item", max_len=5, positive="click")
    want = _previous_history_sequences(events, user="user", item="item", max_len=5, positive="click")
    _assert_identical(got, want)


def test_events_without_any_valid_user_or_time_get_empty_lists_of_the_item_type() -> None:
    events = pa.table(
        {
            "user": pa.array([None, 1, None], pa.int64()),
            "item": pa.array(["a", "b", "c"]),
            "ts": pa.array([1, None, 3], pa.int64()),
        }
    )
    got = history_sequences(events, user="user", item="item", max_len=3)
    assert got.type == pa.list_(pa.string())
    assert got.to_pylist() == [[], [], []]
    empty = history_sequences(events.slice(0, 0), user="user", item="item", max_len=3)
    assert len(empty) == 0 and empty.type == pa.list_(pa.string())


@pytest.mark.parametrize("spread", [10, 2**40, 2**62])
def test_stable_sort_equals_numpy_stable_argsort_for_narrow_and_wide_keys(spread: int) -> None:
    rng = np.random.default_rng(spread % 1_000)
    keys = rng.integers(-spread, spread, 50_000, dtype=np.int64)
    keys[::7] = keys[0]  # many ties: their input order must be kept
    order, sorted_keys = sequences._stable_sort(keys)
    assert np.array_equal(order, np.argsort(keys, kind="stable"))
    assert np.array_equal(sorted_keys, np.sort(keys))


def test_latest_histories_match_the_history_of_a_probe_event_after_every_user() -> None:
    events = _larger_events(seed=13)
    latest = latest_histories(events, user="user", item="item", max_len=4, positive="click")
    users = latest.column("user").to_pylist()
    t_end = int(pc.max(events.column("ts")).as_py()) + 1
    probes = pa.table(
        {
            "user": pa.array(users, pa.int64()),
            "item": pa.array([0] * len(users), pa.int64()),
            "ts": pa.array([t_end] * len(users), pa.int64()),
            "click": pa.array([0.0] * len(users)),
        }
    )
    both = pa.concat_tables([events, probes])
    hist = history_sequences(both, user="user", item="item", max_len=4, positive="click")
    assert hist.slice(events.num_rows).to_pylist() == latest.column("history").to_pylist()
