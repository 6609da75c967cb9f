"""`recforge events push` -> `recforge stream run` -> the online views and the offline log, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from feature_store.events.ingest import read_log
from recforge.cli import main
from recforge.config import load

CONFIG = """\
name: ev
output_dir: {out}
source: {{type: synthetic}}
features:
  label: click
  categorical: [{{name: user_id}}, {{name: item_id}}]
  sequence: [{{name: hist_item_id, source: item_id, max_len: 5}}]
"""


def test_pushed_events_are_applied_logged_once_and_every_bad_line_is_kept_with_its_line(
        tmp_path: Path, capsys: object) -> None:
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(CONFIG.format(out=tmp_path / "out"))
    lines = [json.dumps({"event_id": f"e{i}", "ts": 1_760_000_000 + i * 3600, "user_id": i % 5, "item_id": i,
                         "type": "click"}) for i in range(60)]
    lines.insert(10, "{not json")
    lines.insert(20, json.dumps({"event_id": "u", "ts": 1, "user_id": "x", "item_id": 1, "type": "click"}))
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    assert main(["events", "push", str(events), "-c", str(cfg_path), "--json"]) == 0
    assert main(["events", "push", str(events), "-c", str(cfg_path), "--json"]) == 0  # a replay: nothing twice
    assert main(["stream", "run", "-c", str(cfg_path), "--until-idle", "--json"]) == 0
    assert main(["events", "rejected", "-c", str(cfg_path), "--json"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    docs = json.loads("[" + out.replace("}\n{", "},\n{") + "]")
    push, _, stream, rejected = docs
    assert push["accepted"] == 60 and push["rejected_count"] == 2
    assert {r["reason"] for r in push["rejected"]} == {
        "events.jsonl:line 11: not JSON (Expecting property name enclosed in double quotes at column 2)",
        "events.jsonl:line 21: user_id: must be an integer in this scenario (events.id_type int)"}
    assert stream["applied"] == 60 and stream["duplicates"] == 60
    assert sum(rejected["counts"].values()) == 4 + 60  # two bad lines twice, and the replay's repeats
    cfg = load(cfg_path)
    log = read_log(tmp_path / "out" / "events" / "log", "int")
    assert sorted(log.column("event_id").to_pylist()) == sorted(f"e{i}" for i in range(60))
    days = sorted(p.parent.name for p in (tmp_path / "out" / "events" / "log").glob("date=*/*.parquet"))
    assert len(set(days)) == 3 and sum(pq.read_metadata(p).num_rows for p in
                                       (tmp_path / "out" / "events" / "log").glob("date=*/*.parquet")) == 120
    from feature_store.materialize import open_store

    with open_store(cfg) as store:
        row = store.read("user_history", [0]).to_rows()[0]
    assert row["hist_item_id"] == [35, 40, 45, 50, 55]
