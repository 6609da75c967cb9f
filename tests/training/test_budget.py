"""The CTR run warns, with settings that fix it, when its planned optimiser steps are too few to learn."""

from __future__ import annotations

from training.ranking.config import TrainConfig
from training.ranking.run import FEW_STEPS, budget_warning


def test_eight_thousand_rows_in_batches_of_4096_for_two_epochs_is_warned_with_a_fix() -> None:
    cfg = TrainConfig(batch_size=4096, max_epochs=2)
    train_rows = 6_400
    msg = budget_warning(train_rows, -(-train_rows // 4096), cfg)
    assert msg is not None and "is 4 optimiser step(s)" in msg
    assert "train.batch_size=256" in msg and "train.max_epochs=4" in msg
    fixed = TrainConfig(batch_size=256, max_epochs=4)
    assert budget_warning(train_rows, -(-train_rows // 256), fixed) is None  # 25 x 4 = FEW_STEPS


def test_a_max_steps_below_the_floor_is_warned_and_a_large_run_is_not() -> None:
    assert budget_warning(1_000_000, 245, TrainConfig(max_steps=FEW_STEPS - 1)) is not None
    assert budget_warning(1_000_000, 245, TrainConfig(batch_size=4096, max_epochs=1)) is None
