"""The prepare job end to end with the engine `prepare.engine: auto` picks (in process at these sizes;
test_prepare_engines.py proves that Ray writes the same): outputs, train-only fitting, offline == online
transform, reject accounting, materialize to a real SQLite online store, and MovieLens 100K from ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store.materialize import HISTORY_VIEW, PROFILE_VIEW, materialize_job, open_store
from feature_store.prepare import assemble_events, prepare, read_prepared
from feature_store.readers import read_source
from feature_store.rejects import RejectFractionExceeded
from feature_store.spec import FeatureSpec
from feature_store.split import SPLITS
from recforge.config import RecForgeConfig, load
from tests.conftest import ROOT, dataset

pytestmark = pytest.mark.slow

SMALL = [
    "features.categorical.0.min_freq=5",  # user_id: the demo's threshold scaled to the small data
    "features.categorical.1.min_freq=5",  # item_id
    "source.n_users=1500",
    "source.n_items=400",
    "source.n_impressions=40000",
    "source.n_categories=8",
    "prepare.batch_rows=8000",
]


def small_demo(tmp_path: Path, extra: list[str] | None = None) -> RecForgeConfig:
    return load(ROOT / "configs" / "demo.yaml", [*SMALL, f"output_dir={tmp_path / 'run'}", *(extra or [])])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, ray_local: object) -> tuple[RecForgeConfig, dict]:
    cfg = small_demo(tmp_path_factory.mktemp("demo"))
    result = prepare(cfg)
    return cfg, result.summary


def test_prepare_writes_shards_spec_rejects_summary_and_config(demo_run: tuple[RecForgeConfig, dict]) -> None:
    cfg, summary = demo_run
    out = Path(cfg.output_dir) / "prepared"
    total = 0
    for split in SPLITS:
        t = read_prepared(out / split)
        assert t.num_rows == summary["split"]["rows"][split] > 0
        total += t.num_rows
        assert t.schema.field("user_id").type == pa.int64()
        assert t.schema.field("price").type == pa.float32()
        assert t.schema.field("hist_item_id").type == pa.list_(pa.int64())
        assert t.schema.field("label").type == pa.float32()
    assert total == summary["events_kept"] == 40_000
    assert (out / "spec" / "feature_spec.json").is_file()
    assert pq.read_table(out / "rejects.parquet").num_rows == 0
    assert json.loads((out / "summary.json").read_text())["spec_fingerprint"] == summary["spec_fingerprint"]
    resolved = load(out / "resolved_config.yaml")
    assert resolved.source.n_impressions == 40_000


def test_vocabularies_are_fitted_on_the_train_split_only(demo_run: tuple[RecForgeConfig, dict]) -> None:
    cfg, _ = demo_run
    spec = FeatureSpec.load(Path(cfg.output_dir) / "prepared" / "spec")
    raw = read_source(cfg.source, Path(cfg.output_dir) / "raw")
    assembled = assemble_events(cfg, raw)
    train_ids = assembled.table.column("user_id").filter(pa.array(assembled.codes == 0)).to_numpy()
    ids, counts = np.unique(train_ids, return_counts=True)
    min_freq = cfg.features.categorical[0].min_freq
    frequent = set(ids[counts >= min_freq].tolist())
    assert 0 < len(frequent) < len(ids), "the threshold should keep some train users and drop others"
    assert set(spec.vocabs["user_id"].to_pylist()) == frequent
    train_users = set(ids.tolist())
    later_only = set(assembled.table.column("user_id").to_pylist()) - train_users
    assert later_only, "the time split should leave some users first seen after the cut-off"
    test = read_prepared(Path(cfg.output_dir) / "prepared" / "test")
    raw_test = assembled.table.filter(pa.array(assembled.codes == 2))
    unseen = np.isin(raw_test.column("user_id").to_numpy(), list(later_only))
    assert (test.column("user_id").to_numpy()[unseen] == 0).all()


def test_online_transform_of_raw_rows_equals_the_prepared_batch(demo_run: tuple[RecForgeConfig, dict]) -> None:
    cfg, _ = demo_run
    spec = FeatureSpec.load(Path(cfg.output_dir) / "prepared" / "spec")
    raw = read_source(cfg.source, Path(cfg.output_dir) / "raw")
    assembled = assemble_events(cfg, raw)
    for code, split in enumerate(SPLITS):
        written = read_prepared(Path(cfg.output_dir) / "prepared" / split)
        raw_split = assembled.table.filter(pa.array(assembled.codes == code))
        rows = raw_split.to_pylist()
        picks = np.random.default_rng(code).choice(len(rows), 25, replace=False)
        for i in picks:
            online = spec.transform(rows[i]).to_pylist()[0]
            assert online == written.slice(int(i), 1).to_pylist()[0]


def test_materialize_writes_latest_views_to_sqlite(demo_run: tuple[RecForgeConfig, dict]) -> None:
    cfg, _ = demo_run
    report = materialize_job(cfg)
    assert set(report["entities"]) == {"user", "item", PROFILE_VIEW, "user_segment", HISTORY_VIEW}
    raw = read_source(cfg.source, Path(cfg.output_dir) / "raw")
    events = raw.tables["events"]
    clicks = events.filter(pa.compute.equal(events.column("click"), 1.0))
    user = clicks.column("user_id")[clicks.num_rows - 1].as_py()
    mine = clicks.filter(pa.compute.equal(clicks.column("user_id"), user))
    expected = mine.column("item_id").to_pylist()[-20:]
    with open_store(cfg) as store:
        got = store.read(HISTORY_VIEW, [user, 10**9])
        assert got.values["hist_item_id"][0] == expected
        assert got.status["hist_item_id"] == ["present", "missing"]
        users = raw.tables["users"]
        uid = users.column("user_id")[0].as_py()
        row = store.read("user", [uid]).to_rows()[0]
        assert row is not None and row["age_band"] == users.column("age_band")[0].as_py()


def test_reject_fraction_above_the_limit_fails_with_reasons(tmp_path: Path, ray_local: object) -> None:
    good = "\n".join(f"{u},{i},{1700000000 + k},{k % 2}" for k, (u, i) in enumerate(zip(range(50), range(50))))
    bad = "7,x,notatime,1\n8,9\n"
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,ts,click\n" + good + "\n" + bad)
    data = {
        "name": "csv",
        "output_dir": str(tmp_path / "out"),
        "source": {"type": "csv", "path": str(path),
                   "columns": {"user_id": "int", "item_id": "int", "ts": "timestamp", "click": "int"},
                   "required": ["user_id", "item_id"]},
        "features": {"label": "click", "categorical": [{"name": "user_id"}, {"name": "item_id"}]},
        "prepare": {"max_reject_fraction": 0.01},
    }
    from feature_store.config import load_config

    cfg = load_config(None, RecForgeConfig, data=data)
    with pytest.raises(RejectFractionExceeded) as err:
        prepare(cfg)
    msg = str(err.value)
    assert "2 of 52 rows rejected" in msg and "wrong field count" in msg and f"{path}:" in msg
    rejects = pq.read_table(tmp_path / "out" / "prepared" / "rejects.parquet").to_pylist()
    assert sorted(r["line"] for r in rejects) == [52, 53]

    relaxed = load_config(None, RecForgeConfig, data={**data, "prepare": {"max_reject_fraction": 0.1}})
    summary = prepare(relaxed).summary
    assert summary["rows_rejected"] == 2 and summary["events_kept"] == 50
    assert sum(summary["rejected_by_reason"].values()) == 2


def test_movielens_100k_end_to_end(tmp_path: Path, ray_local: object) -> None:
    ml = dataset("ml-100k")
    cfg = load(ROOT / "configs" / "movielens.yaml", [f"source.path={ml}", f"output_dir={tmp_path}"])
    summary = prepare(cfg).summary
    assert summary["events_kept"] == 100_000 and summary["rows_rejected"] == 0
    assert sum(summary["split"]["rows"].values()) == 100_000
    assert summary["vocab_sizes"]["gender"] == 3  # F, M + OOV
    assert summary["vocab_sizes"]["genres"] <= 20  # 19 genres + OOV
    train = read_prepared(tmp_path / "prepared" / "train")
    assert 0.5 < float(np.mean(train.column("label").to_numpy())) < 0.6  # share of ratings >= 4 in ML-100K
    genres = train.column("genres").to_pylist()
    assert all(1 <= len(g) <= 6 for g in genres)


def test_criteo_tsv_prepares_with_missing_fields_and_bad_lines(tmp_path: Path, ray_local: object) -> None:
    from feature_store.readers.synthetic import generate_criteo_schema

    t = generate_criteo_schema(3000, n_ids=500, seed=1).to_pydict()
    lines = []
    for r in range(3000):
        ints = ["" if t[f"I{j}"][r] is None else str(int(t[f"I{j}"][r])) for j in range(1, 14)]
        cats = [format(t[f"C{j}"][r], "08x") if r % 7 else "" for j in range(1, 27)]
        lines.append("\t".join([str(int(t["label"][r])), *ints, *cats]))
    lines.insert(100, "1\tnot-a-number" + "\t" * 38)
    lines.insert(200, "0\t1\t2")
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n")
    overrides = [f"source.path={path}", f"output_dir={tmp_path / 'out'}", "prepare.max_reject_fraction=0.01"]
    overrides += [f"features.categorical.{i}.min_freq=1" for i in range(26)]
    cfg = load(ROOT / "configs" / "criteo.yaml", overrides)
    summary = prepare(cfg).summary
    assert summary["rows_read_total"] == 3002 and summary["rows_rejected"] == 2
    assert summary["events_kept"] == 3000
    assert set(summary["rejected_by_reason"]) == {"unparsable number: I1", "wrong field count"}
    train = read_prepared(tmp_path / "out" / "prepared" / "train")
    assert train.schema.field("C1").type == pa.int64() and train.schema.field("I1").type == pa.float32()
    ts = read_prepared(tmp_path / "out" / "prepared" / "test")
    assert ts.num_rows == summary["split"]["rows"]["test"] > 0


def timeless_csv_config(tmp_path: Path, split: dict, **features: object) -> RecForgeConfig:
    """Three headerless CSV files (train, dev, test) of user_id, item_id, click: no event time at all."""
    from feature_store.config import load_config

    ranges = {"train.csv": range(0, 60), "dev.csv": range(100, 120), "test.csv": range(200, 230)}
    for name, users in ranges.items():
        (tmp_path / name).write_text("".join(f"{u},{u % 7},{u % 2}\n" for u in users))
    with open(tmp_path / "test.csv", "a") as fh:
        fh.write("oops,1,1\n")
    data = {
        "name": "files",
        "output_dir": str(tmp_path / "out"),
        "source": {"type": "csv", "path": str(tmp_path / "train.csv"), "header": False,
                   "columns": {"user_id": "int", "item_id": "int", "click": "int"}},
        "features": {"label": "click", "categorical": [{"name": "user_id"}, {"name": "item_id"}], **features},
        "split": split,
        "prepare": {"max_reject_fraction": 0.05},
    }
    return load_config(None, RecForgeConfig, data=data)


def test_files_split_prepares_each_file_into_its_split_without_event_time(tmp_path: Path, ray_local: object) -> None:
    files = {"valid": str(tmp_path / "dev.csv"), "test": str(tmp_path / "test.csv")}
    summary = prepare(timeless_csv_config(tmp_path, {"method": "files", "files": files})).summary
    assert summary["split"]["method"] == "files"
    assert summary["split"]["rows"] == {"train": 60, "valid": 20, "test": 30}
    assert summary["split"]["files"] == {"train": str(tmp_path / "train.csv"), **files}
    assert summary["timestamp"] is None and summary["rows_read_total"] == 111
    rejects = pq.read_table(tmp_path / "out" / "prepared" / "rejects.parquet").to_pylist()
    assert [(r["source"], r["line"], r["reason"]) for r in rejects] == [
        (files["test"], 31, "unparsable number: user_id")]
    for split, users in (("train", range(0, 60)), ("valid", range(100, 120)), ("test", range(200, 230))):
        got = read_prepared(tmp_path / "out" / "prepared" / split).column("__user_key").to_pylist()
        assert sorted(got) == list(users)


def test_missing_event_time_fails_before_ray_starts_naming_what_needs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import feature_store.prepare as prepare_mod
    from feature_store.config import ConfigError

    def no_ray(*args: object) -> None:
        raise AssertionError("Ray was started before the config error")

    monkeypatch.setattr(prepare_mod, "ensure_ray", no_ray)
    cfg = timeless_csv_config(tmp_path, {"method": "random"},
                              sequence=[{"name": "hist", "source": "item_id"}])
    with pytest.raises(ConfigError, match=r"features\.timestamp: column 'ts' is not in the events \(source\.columns "
                                          r"declares: user_id, item_id, click\), but features\.sequence\.0 \('hist'\) "
                                          r"needs the event time\. Set features\.timestamp"):
        prepare(cfg)
    with pytest.raises(ConfigError, match=r"split\.method: time needs the event time"):
        prepare(timeless_csv_config(tmp_path, {"method": "time"}))
    assert not (tmp_path / "out" / "prepared").exists()


def test_random_split_prepares_and_materializes_events_without_a_time_column(
    tmp_path: Path, ray_local: object
) -> None:
    cfg = timeless_csv_config(tmp_path, {"method": "random", "test_fraction": 0.2})
    summary = prepare(cfg).summary
    assert summary["timestamp"] is None and summary["split"]["method"] == "random"
    assert sum(summary["split"]["rows"].values()) == summary["events_kept"] == 60
    assert "__ts" not in read_prepared(tmp_path / "out" / "prepared" / "train").column_names
    assert materialize_job(cfg)["as_of"] is None


def _retail_export(path: Path) -> None:
    """A month of invoice lines shaped like the raw UCI export: baskets, postage lines, an exact duplicate,
    C-invoices returning part of a basket, one customer who returns everything (12999), one whose only order
    is on the last day (12998)."""
    rng = np.random.default_rng(3)
    lines = ["InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"]
    invoice = 536000
    for day in range(28):
        for customer in rng.choice(np.arange(12000, 12030), 4, replace=False):
            invoice += 1
            for item in rng.choice(np.arange(20), int(rng.integers(2, 6)), replace=False):
                when = f"2011-11-{day + 1:02d} {10 + item % 8:02d}:00:00"
                qty = int(rng.integers(1, 12))
                lines.append(f"{invoice},{22000 + item},ITEM {item} HEART,{qty},{when},1.25,{customer}.0,UK")
                if rng.random() < 0.1:
                    lines.append(f"C{invoice},{22000 + item},ITEM {item} HEART,-{max(qty // 2, 1)},"
                                 f"2011-11-{day + 2:02d} 09:00:00,1.25,{customer}.0,UK")
            lines.append(f"{invoice},POST,POSTAGE,1,2011-11-{day + 1:02d} 10:00:00,18.00,{customer}.0,UK")
    lines += [
        "536900,22001,ITEM 1 HEART,4,2011-11-03 10:00:00,1.25,12999.0,UK",
        "536900,22002,ITEM 2 HEART,2,2011-11-03 10:00:00,1.25,12999.0,UK",
        "C536901,22001,ITEM 1 HEART,-4,2011-11-10 10:00:00,1.25,12999.0,UK",
        "C536901,22002,ITEM 2 HEART,-2,2011-11-10 10:00:00,1.25,12999.0,UK",
        "536902,22003,ITEM 3 HEART,3,2011-11-29 08:00:00,1.25,12998.0,UK",
        "536902,22004,ITEM 4 HEART,1,2011-11-29 08:00:00,1.25,12998.0,UK",
        "C536903,22005,ITEM 5 HEART,-1,2011-11-05 10:00:00,1.25,12998.0,UK",  # bought before the export
    ]
    lines.append(lines[1])
    path.write_text("\n".join(lines) + "\n")


def test_retail_config_prepares_net_of_returns_and_materializes_the_last_day(tmp_path: Path, ray_local: object) -> None:
    _retail_export(tmp_path / "retail.csv")
    cfg = load(ROOT / "configs" / "retail.yaml", [f"source.path={tmp_path / 'retail.csv'}",
                                                  f"output_dir={tmp_path / 'run'}", "prepare.batch_rows=200"])
    summary = prepare(cfg).summary
    counts, rejected = summary["source_counts"], summary["rejected_by_reason"]
    assert rejected["non-product code: POST"] == 112 and rejected["duplicate line"] == 1
    assert rejected["unmatched cancellation"] == 1
    assert summary["rows_read_total"] == summary["rows_rejected"] + counts["purchase_lines"] + counts["return_lines"]
    assert summary["events_kept"] == counts["purchase_lines"] - counts["fully_returned_lines"]
    assert counts["return_lines"] > 2 and counts["fully_returned_lines"] >= 2
    for split in SPLITS:
        assert set(read_prepared(tmp_path / "run" / "prepared" / split).column("label").to_pylist()) == {1.0}
    materialize_job(cfg)
    with open_store(cfg) as store:
        seg = store.read("user_segment", ["12998", "12999"]).to_rows()
        profile = store.read(PROFILE_VIEW, ["12998", "12999"]).to_rows()
    assert seg[0] is not None and seg[0]["frequency"] == 1  # its only order is on the last day
    assert profile[1] is not None and profile[1]["rfm_monetary"] == pytest.approx(0.0, abs=1e-4)
    assert profile[1]["rfm_frequency"] == 1



def test_prepared_shards_are_written_in_bounded_row_groups_whatever_their_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A streaming reader holds one row group at a time; the shards grow with the data (at most 16 per split),
    so their row groups must not: every shard is cut into groups of at most `SHARD_ROW_GROUP` rows."""
    import feature_store.prepare as prep

    monkeypatch.setattr(prep, "SHARD_ROW_GROUP", 700)
    cfg = small_demo(tmp_path, ["prepare.engine=local"])
    prepare(cfg)
    groups = [pq.ParquetFile(f).metadata for f in sorted((Path(cfg.output_dir) / "prepared").glob("*/*.parquet"))]
    assert groups and max(m.row_group(i).num_rows for m in groups for i in range(m.num_row_groups)) <= 700
    assert max(m.num_row_groups for m in groups) > 1
