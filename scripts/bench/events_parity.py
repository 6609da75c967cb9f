"""Online equals offline on real events: a data set replayed in time order through `recforge events push` and
`recforge stream run` (scenario A), against `recforge prepare` + `recforge materialize` of scenario B whose
source is A's offline event log (`source.type: events`); every key of every view the stream keeps is compared.

The data sets (../shared/datasets) as events:
- MovieLens 100K ratings: `rate_high` (4 or 5 stars, positive) or `rate_low`;
- UCI Online Retail invoice lines with a customer: `purchase` (value = quantity x unit price) or `return`
  (negative quantity); string ids;
- Taobao UserBehavior sample: `pv`, `fav`, `cart`, `buy` (fav, cart and buy positive; buy a purchase).

Used by the parity test (a slice of each) and by scripts.bench.events (each whole data set).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

VIEWS = ("user_history", "user_activity", "item_popularity")


@dataclass(frozen=True)
class EventSet:
    name: str
    events: pa.Table  # event_id, ts, user_id, item_id, type[, value]; in time order
    types: list[str]
    positive: list[str]
    purchase: list[str]
    id_type: str


def _ordered(t: pa.Table) -> pa.Table:
    t = t.append_column("event_id", pa.array([f"e{i}" for i in range(t.num_rows)]))
    return t.take(pc.sort_indices(t, [("ts", "ascending"), ("event_id", "ascending")]))


def movielens(root: Path, limit: int | None = None) -> EventSet:
    raw = pcsv.read_csv(root / "u.data", read_options=pcsv.ReadOptions(column_names=["user_id", "item_id",
                                                                                    "rating", "ts"]),
                        parse_options=pcsv.ParseOptions(delimiter="\t"))
    kind = pc.if_else(pc.greater_equal(raw.column("rating"), 4), "rate_high", "rate_low")
    t = _ordered(pa.table({"ts": raw.column("ts"), "user_id": raw.column("user_id"),
                           "item_id": raw.column("item_id"), "type": kind}))
    return EventSet("MovieLens 100K", t.slice(0, limit) if limit else t, ["rate_low", "rate_high"],
                    ["rate_high"], [], "int")


def retail(root: Path, limit: int | None = None) -> EventSet:
    raw = pq.read_table(root / "online_retail.parquet")
    raw = raw.filter(pc.is_valid(raw.column("CustomerID")))
    ts = pc.cast(pc.strptime(raw.column("InvoiceDate"), format="%Y-%m-%d %H:%M:%S", unit="s"), pa.int64())
    qty = raw.column("Quantity")
    t = _ordered(pa.table({
        "ts": ts, "user_id": pc.cast(pc.cast(raw.column("CustomerID"), pa.int64()), pa.string()),
        "item_id": pc.cast(raw.column("StockCode"), pa.string()),
        "type": pc.if_else(pc.greater(qty, 0), "purchase", "return"),
        "value": pc.multiply(pc.cast(qty, pa.float64()), raw.column("UnitPrice"))}))
    return EventSet("UCI Online Retail", t.slice(0, limit) if limit else t, ["purchase", "return"],
                    ["purchase"], ["purchase"], "string")


def taobao(root: Path, limit: int | None = None) -> EventSet:
    raw = pcsv.read_csv(root / "UserBehavior_head.csv",
                        read_options=pcsv.ReadOptions(column_names=["user_id", "item_id", "category_id", "type",
                                                                    "ts"]))
    t = _ordered(raw.select(["ts", "user_id", "item_id", "type"]))
    return EventSet("Taobao UserBehavior sample", t.slice(0, limit) if limit else t, ["pv", "fav", "cart", "buy"],
                    ["fav", "cart", "buy"], ["buy"], "int")


DATASETS: dict[str, tuple[str, Callable[[Path, int | None], EventSet]]] = {
    "movielens": ("ml-100k", movielens), "retail": ("online-retail", retail),
    "taobao": ("taobao-userbehavior-head", taobao)}

CONFIG = """\
name: parity
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
  types: {types}
  positive_types: {positive}
  purchase_types: {purchase}
  id_type: {id_type}
  max_clock_skew_s: 0
"""


def _cli(args: list[str]) -> dict[str, Any]:
    """`recforge <args> --json`; its JSON answer (exit code 0 asserted)."""
    from recforge.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*args, "--json"])
    if code != 0:
        raise RuntimeError(f"recforge {' '.join(args)} exited {code}: {out.getvalue()[-2000:]}")
    return json.loads(out.getvalue())


def run(data: EventSet, work: Path) -> dict[str, Any]:
    """Replay `data` through the stream (scenario A), prepare + materialize its log (scenario B), compare."""
    work.mkdir(parents=True, exist_ok=True)
    events_file = work / "events.parquet"
    pq.write_table(data.events, events_file)
    fmt = {"types": json.dumps(data.types), "positive": json.dumps(data.positive),
           "purchase": json.dumps(data.purchase), "id_type": data.id_type}
    online, batch = work / "online.yaml", work / "batch.yaml"
    online.write_text(CONFIG.format(out=work / "a", source="{type: events}", **fmt))
    batch.write_text(CONFIG.format(out=work / "b", source=f"{{type: events, path: {work / 'a' / 'events' / 'log'}}}",
                                   **fmt))
    t0 = time.perf_counter()
    push = _cli(["events", "push", str(events_file), "-c", str(online)])
    stream = _cli(["stream", "run", "-c", str(online), "--until-idle"])
    t1 = time.perf_counter()
    _cli(["prepare", "-c", str(batch)])
    _cli(["materialize", "-c", str(batch)])
    t2 = time.perf_counter()
    users = pc.unique(data.events.column("user_id")).to_pylist()
    items = pc.unique(data.events.column("item_id")).to_pylist()
    a, b = _views(online, users, items), _views(batch, users, items)
    compared = {view: compare(a[view], b[view]) for view in VIEWS}
    return {"dataset": data.name, "events": data.events.num_rows, "accepted": push["accepted"],
            "rejected": push["rejected_count"], "applied": stream["applied"], "too_late": stream["too_late"],
            "users": len(users), "items": len(items), "stream_s": round(t1 - t0, 2), "batch_s": round(t2 - t1, 2),
            "views": compared}


def _views(cfg_path: Path, users: list[Any], items: list[Any]) -> dict[str, dict[Any, dict[str, Any]]]:
    from feature_store.online import open_store
    from recforge.config import feature_store_config, load

    out: dict[str, dict[Any, dict[str, Any]]] = {}
    with open_store(feature_store_config(load(cfg_path))) as store:
        for view in VIEWS:
            keys = items if view == "item_popularity" else users
            got = store.read(view, keys)
            out[view] = {k: r for k, r in zip(keys, got.to_rows()) if r is not None}
    return out


def compare(a: dict[Any, dict[str, Any]], b: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    """Keys in both, only in one, and differing values (floats: relative 1e-9); the first few differences."""
    diffs: list[str] = []
    for key in a.keys() & b.keys():
        for name, value in a[key].items():
            other = b[key].get(name)
            same = (math.isclose(value, other, rel_tol=1e-9, abs_tol=1e-9)
                    if isinstance(value, float) and isinstance(other, float) else value == other)
            if not same:
                diffs.append(f"{key}.{name}: {value!r} != {other!r}")
    return {"keys": len(a.keys() & b.keys()), "only_online": len(a.keys() - b.keys()),
            "only_batch": len(b.keys() - a.keys()), "different_values": len(diffs), "examples": diffs[:5],
            "equal": not diffs and a.keys() == b.keys() and bool(a)}


def summary(res: dict[str, Any]) -> str:
    views = "; ".join(f"{v}: {c['keys']:,} keys, {c['different_values']} different, {c['only_online']}/"
                      f"{c['only_batch']} only online/batch" for v, c in res["views"].items())
    return f"{res['dataset']}: {res['events']:,} events -> {views}"


__all__ = ["DATASETS", "EventSet", "compare", "run", "summary"]
