"""Online equals offline on real events: the Taobao UserBehavior sample (../shared/datasets) replayed in time order
through `recforge events push` and `recforge stream run`, against `recforge prepare` + `recforge materialize` of a
second scenario reading the first one's offline event log (`source.type: events`). Every user's history and
activity and every item's popularity must be the same in both online stores."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from recforge.cli import main
from recforge.config import load
from tests.conftest import dataset

pytestmark = pytest.mark.slow

CONFIG = """\
name: {name}
output_dir: {out}
source: {source}
split: {{method: random}}
features:
  label: label
  timestamp: ts
  categorical: [{{name: user_id}}, {{name: item_id}}]
  sequence:
    - {{name: hist_item_id, source: item_id, max_len: 20}}
    - {{name: seen_item_id, source: item_id, max_len: 10, positive_only: false}}
events:
  types: [pv, fav, cart, buy]
  positive_types: [fav, cart, buy]
  purchase_types: [buy]
  allowed_lateness_s: 3600
  max_clock_skew_s: 0
"""


def taobao_events(path: Path) -> pa.Table:
    """The sample as events, in time order (a replay), one event_id per line."""
    raw = pcsv.read_csv(dataset("taobao-userbehavior-head") / "UserBehavior_head.csv",
                        read_options=pcsv.ReadOptions(column_names=["user_id", "item_id", "category_id", "type",
                                                                    "ts"]))
    events = pa.table({"event_id": pa.array([f"tb{i}" for i in range(raw.num_rows)]), "ts": raw.column("ts"),
                       "user_id": raw.column("user_id"), "item_id": raw.column("item_id"),
                       "type": raw.column("type")})
    events = events.take(pc.sort_indices(events, [("ts", "ascending"), ("event_id", "ascending")]))
    pq.write_table(events, path)
    return events


def views(cfg_path: Path, users: list[Any], items: list[Any]) -> dict[str, dict[Any, dict[str, Any]]]:
    from feature_store.online import open_store
    from recforge.config import feature_store_config

    out: dict[str, dict[Any, dict[str, Any]]] = {}
    with open_store(feature_store_config(load(cfg_path))) as store:
        for view, keys in (("user_history", users), ("user_activity", users), ("item_popularity", items)):
            got = store.read(view, keys)
            out[view] = {k: r for k, r in zip(keys, got.to_rows()) if r is not None}
    return out


def test_streamed_views_equal_prepare_and_materialize_of_the_logged_events_on_taobao(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = taobao_events(tmp_path / "taobao.parquet")
    online = tmp_path / "online.yaml"
    online.write_text(CONFIG.format(name="tb", out=tmp_path / "a", source="{type: events}"))
    batch = tmp_path / "batch.yaml"
    batch.write_text(CONFIG.format(name="tb", out=tmp_path / "b",
                                   source=f"{{type: events, path: {tmp_path / 'a' / 'events' / 'log'}}}"))

    assert main(["events", "push", str(tmp_path / "taobao.parquet"), "-c", str(online), "--json"]) == 0
    assert main(["stream", "run", "-c", str(online), "--until-idle", "--json"]) == 0
    assert main(["prepare", "-c", str(batch), "--json"]) == 0
    assert main(["materialize", "-c", str(batch), "--json"]) == 0
    docs = [json.loads(d) for d in capsys.readouterr().out.strip().replace("}\n{", "}\x00{").split("\x00")]
    push, stream = docs[0], docs[1]
    assert push["accepted"] == events.num_rows and push["rejected_count"] == 0
    assert stream["applied"] == events.num_rows and stream["too_late"] == 0

    users = pc.unique(events.column("user_id")).to_pylist()
    items = pc.unique(events.column("item_id")).to_pylist()
    a, b = views(online, users, items), views(batch, users, items)
    assert len(a["user_activity"]) == len(users) and len(a["item_popularity"]) == len(items)
    assert sum(1 for r in a["user_history"].values() if r["hist_item_id"]) > 100
    for view in a:
        assert set(a[view]) == set(b[view]), view
        for key, row in a[view].items():
            for name, value in row.items():
                other = b[view][key][name]
                if isinstance(value, float):
                    assert math.isclose(value, other, rel_tol=1e-9, abs_tol=1e-12), (view, key, name)
                else:
                    assert value == other, (view, key, name, value, other)
