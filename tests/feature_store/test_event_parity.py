"""Online equals offline on real events: a slice of each real data set (MovieLens 100K, UCI Online Retail, the
Taobao sample in ../shared/datasets) replayed in time order through `recforge events push` and `recforge stream
run`, against `recforge prepare` + `recforge materialize` of a second scenario reading the first one's offline
event log (`source.type: events`). Every user's history and activity and every item's popularity must be equal in
both online stores (scripts.bench.events compares the whole data sets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.bench.events_parity import DATASETS, run, summary
from tests.conftest import dataset

pytestmark = pytest.mark.slow

SLICE = 20_000


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_streamed_views_equal_prepare_and_materialize_of_the_logged_events(name: str, tmp_path: Path) -> None:
    folder, load = DATASETS[name]
    data = load(dataset(folder), SLICE)
    res = run(data, tmp_path)
    assert res["accepted"] == data.events.num_rows and res["rejected"] == 0, res
    assert res["applied"] == data.events.num_rows and res["too_late"] == 0, res
    for view, c in res["views"].items():
        assert c["equal"], f"{view}: {c}"
        assert c["keys"] == (res["items"] if view == "item_popularity" else res["users"]), (view, c)
    print(summary(res))
