"""Splits: random is seeded and proportional, grouped keeps groups whole, time never mixes past and future."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from feature_store.config import SplitConfig
from feature_store.split import assign_splits


def events(n: int = 20_000) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({"user_id": rng.integers(1, 500, n), "ts": rng.integers(1_000, 100_000, n)})


def test_random_split_is_seeded_and_proportional() -> None:
    cfg = SplitConfig(method="random", valid_fraction=0.1, test_fraction=0.2, seed=3)
    a, rep = assign_splits(events(), cfg)
    b, _ = assign_splits(events(), cfg)
    c, _ = assign_splits(events(), cfg.model_copy(update={"seed": 4}))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    frac = np.bincount(a) / len(a)
    assert np.allclose(frac, [0.7, 0.1, 0.2], atol=0.02)
    assert sum(rep.rows.values()) == len(a)


def test_grouped_split_never_puts_one_user_in_two_splits() -> None:
    t = events()
    codes, rep = assign_splits(t, SplitConfig(method="random", group_by="user_id", seed=1))
    users = t.column("user_id").to_numpy()
    for code in range(3):
        others = users[codes != code]
        assert not np.isin(users[codes == code], others).any()
    assert sum(rep.groups.values()) == len(np.unique(users))


def test_time_split_orders_train_before_valid_before_test() -> None:
    t = events()
    codes, rep = assign_splits(t, SplitConfig(method="time", valid_fraction=0.1, test_fraction=0.1))
    ts = t.column("ts").to_numpy()
    assert ts[codes == 0].max() < ts[codes == 1].min()
    assert ts[codes == 1].max() < ts[codes == 2].min()
    assert rep.valid_start_ts == ts[codes == 1].min() and rep.test_start_ts == ts[codes == 2].min()
    assert rep.train_end_ts == rep.valid_start_ts
    assert abs(rep.rows["test"] / len(ts) - 0.1) < 0.01


def test_time_split_keeps_equal_timestamps_together() -> None:
    t = pa.table({"ts": np.repeat(np.arange(10), 100)})
    codes, _ = assign_splits(t, SplitConfig(method="time", valid_fraction=0.15, test_fraction=0.15))
    ts = t.column("ts").to_numpy()
    for v in range(10):
        assert len(set(codes[ts == v])) == 1


def test_files_split_puts_each_file_rows_in_its_split_and_reports_the_files() -> None:
    cfg = SplitConfig(method="files", files={"valid": "dev.csv", "test": "test.csv"})
    table = pa.table({"user_id": list(range(10))})
    codes, rep = assign_splits(table, cfg, parts={"train": 6, "valid": 1, "test": 3},
                               files={"train": "train.csv", "valid": "dev.csv", "test": "test.csv"})
    assert codes.tolist() == [0] * 6 + [1] + [2] * 3
    assert rep.method == "files" and rep.rows == {"train": 6, "valid": 1, "test": 3}
    assert rep.files == {"train": "train.csv", "valid": "dev.csv", "test": "test.csv"}


def test_random_split_needs_no_time_column() -> None:
    table = pa.table({"user_id": list(range(1000))})
    codes, rep = assign_splits(table, SplitConfig(method="random"), ts_column="ts")
    assert len(codes) == 1000 and rep.rows["train"] > rep.rows["test"] > 0
