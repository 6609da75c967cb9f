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
