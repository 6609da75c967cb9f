"""Tests of the synthetic generators: determinism, canonical schemas, the known click model, price history,
purchases, the Parquet cache of `load_synthetic`, and the Criteo-shaped benchmark table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from sklearn.metrics import roc_auc_score

from feature_store.config import SyntheticSource
from feature_store.readers.synthetic import (
    SCHEMAS,
    generate,
    generate_criteo_schema,
    load_synthetic,
)

SMALL = {"n_users": 3_000, "n_items": 800, "n_impressions": 40_000, "days": 14}


def small_cfg(**overrides: object) -> SyntheticSource:
    return SyntheticSource(**{**SMALL, **overrides})


@pytest.fixture(scope="module")
def tables() -> dict[str, pa.Table]:
    return generate(small_cfg())


@pytest.fixture(scope="module")
def events(tables: dict[str, pa.Table]) -> pd.DataFrame:
    return tables["events"].to_pandas()


def price_at_impression(tables: dict[str, pa.Table]) -> pd.DataFrame:
    """Point-in-time join: each impression gets the item's last price row with ts <= the impression ts."""
    ev = tables["events"].to_pandas().sort_values("ts")
    items = tables["items"].to_pandas().rename(columns={"ts": "price_ts"}).sort_values("price_ts")
    return pd.merge_asof(ev, items, left_on="ts", right_on="price_ts", by="item_id", direction="backward")


# ------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_tables() -> None:
    a, b = generate(small_cfg(n_impressions=5_000)), generate(small_cfg(n_impressions=5_000))
    for name in SCHEMAS:
        assert a[name].equals(b[name]), name


def test_different_seed_gives_different_tables() -> None:
    a, b = generate(small_cfg(n_impressions=5_000, seed=1)), generate(small_cfg(n_impressions=5_000, seed=2))
    for name in ("events", "users", "items"):
        assert not a[name].equals(b[name]), name


# ------------------------------------------------------------------------------------------- schema


def test_tables_have_exact_canonical_schemas(tables: dict[str, pa.Table]) -> None:
    assert set(tables) == {"events", "users", "items", "purchases"}
    for name, schema in SCHEMAS.items():
        assert tables[name].schema.equals(schema), f"{name}: {tables[name].schema}"
    ev = tables["events"].schema
    assert [f.name for f in ev] == [
        "impression_id", "user_id", "item_id", "ts", "channel", "device", "hour", "position",
        "click", "p_click",
    ]
    assert ev.field("click").type == pa.float32() and ev.field("ts").type == pa.int64()
    for name in SCHEMAS:
        assert all(col.null_count == 0 for col in tables[name].columns), name


def test_ids_start_at_one_and_events_reference_known_entities(tables: dict[str, pa.Table]) -> None:
    cfg = small_cfg()
    ev = tables["events"].to_pandas()
    assert ev["impression_id"].tolist() == list(range(1, cfg.n_impressions + 1))
    assert tables["users"].column("user_id").to_pylist() == list(range(1, cfg.n_users + 1))
    assert ev["user_id"].between(1, cfg.n_users).all()
    assert ev["item_id"].between(1, cfg.n_items).all()
    item_ids = np.unique(tables["items"].column("item_id").to_numpy())
    assert item_ids.tolist() == list(range(1, cfg.n_items + 1))


def test_events_are_sorted_by_time_inside_the_configured_window(events: pd.DataFrame) -> None:
    cfg = small_cfg()
    start = int(pd.Timestamp(cfg.start_date, tz="UTC").timestamp())
    ts = events["ts"].to_numpy()
    assert (np.diff(ts) >= 0).all()
    assert ts.min() >= start and ts.max() < start + cfg.days * 86_400
    # hour is the UTC hour of ts
    assert (events["hour"].to_numpy() == (ts // 3600) % 24).all()


def test_categorical_values_come_from_the_documented_vocabularies(tables: dict[str, pa.Table]) -> None:
    cfg = small_cfg()
    ev, users, items = (tables[n].to_pandas() for n in ("events", "users", "items"))
    assert set(ev["channel"]) == {"app", "web", "email", "push"}
    assert set(ev["device"]) == {"ios", "android", "desktop"}
    assert ev["position"].between(1, 10).all() and ev["position"].nunique() == 10
    assert set(users["age_band"]) == {"18-24", "25-34", "35-44", "45-54", "55-64", "65+"}
    assert set(users["gender"]) == {"f", "m", "u"}
    assert set(users["region"]) <= {f"r{i:02d}" for i in range(cfg.n_regions)}
    assert items["category"].str.fullmatch(r"c\d{2}").all()
    assert items["brand"].str.fullmatch(r"b\d{3}").all()
    # each brand belongs to one category
    assert (items.groupby("brand")["category"].nunique() == 1).all()


def test_hours_follow_a_diurnal_pattern(events: pd.DataFrame) -> None:
    share = events["hour"].value_counts(normalize=True)
    assert share.loc[[19, 20, 21]].mean() > 2.5 * share.loc[[7, 8, 9]].mean()


def test_user_activity_and_item_popularity_are_skewed(events: pd.DataFrame) -> None:
    for key in ("user_id", "item_id"):
        counts = events[key].value_counts().to_numpy()
        top_share = counts[: max(1, len(counts) // 100)].sum() / counts.sum()
        assert top_share > 0.05, f"top 1% of {key} hold only {top_share:.1%} of impressions"


# ------------------------------------------------------------------------------------------- click model


def test_p_click_is_a_probability_and_the_oracle_auc_is_informative(events: pd.DataFrame) -> None:
    p = events["p_click"].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    assert set(np.unique(events["click"])) == {0.0, 1.0}
    auc = roc_auc_score(events["click"], p)
    assert 0.7 <= auc <= 0.9, auc


def test_mean_ctr_is_in_a_sane_range_and_matches_p_click(events: pd.DataFrame) -> None:
    ctr = events["click"].mean()
    assert 0.03 <= ctr <= 0.15, ctr
    assert abs(ctr - events["p_click"].mean()) < 0.01


def test_position_bias_makes_slot_one_clicked_more_than_slot_ten(events: pd.DataFrame) -> None:
    by_pos = events.groupby("position")["click"].mean()
    assert by_pos.loc[1] > 1.3 * by_pos.loc[10]


def test_stronger_position_bias_widens_the_gap_between_slots() -> None:
    def ratio(bias: float) -> float:
        ev = generate(small_cfg(n_impressions=20_000, position_bias=bias))["events"].to_pandas()
        by_pos = ev.groupby("position")["p_click"].mean()
        return float(by_pos.loc[1] / by_pos.loc[10])

    assert ratio(1.0) > ratio(0.1) > 1.0


def test_observable_attributes_predict_clicks_out_of_sample(tables: dict[str, pa.Table]) -> None:
    """The latent taste follows the user attributes and the item vector follows category: a target encoding of
    (age_band, gender, category) fitted on one half ranks the other half's clicks well above chance."""
    ev = tables["events"].to_pandas()
    users = tables["users"].to_pandas()[["user_id", "age_band", "gender"]]
    items = tables["items"].to_pandas().drop_duplicates("item_id")[["item_id", "category"]]
    df = ev.merge(users, on="user_id").merge(items, on="item_id")
    keys = ["age_band", "gender", "category"]
    train, test = df[df["impression_id"] % 2 == 0], df[df["impression_id"] % 2 == 1]
    prior, weight = train["click"].mean(), 20.0
    stats = train.groupby(keys)["click"].agg(["sum", "count"])
    stats["enc"] = (stats["sum"] + weight * prior) / (stats["count"] + weight)
    scored = test.merge(stats["enc"].reset_index(), on=keys, how="left").fillna({"enc": prior})
    assert roc_auc_score(scored["click"], scored["enc"]) > 0.6


# ------------------------------------------------------------------------------------------- price history


def test_every_impression_has_a_price_row_valid_at_or_before_it(tables: dict[str, pa.Table]) -> None:
    joined = price_at_impression(tables)
    assert joined["price"].notna().all()
    assert (joined["price_ts"] <= joined["ts"]).all()
    assert (joined["price"] > 0).all()


def test_items_have_a_price_history_that_changes_inside_the_window(tables: dict[str, pa.Table]) -> None:
    cfg = small_cfg()
    start = int(pd.Timestamp(cfg.start_date, tz="UTC").timestamp())
    items = tables["items"].to_pandas()
    rows = items.groupby("item_id").size()
    assert rows.between(1, 3).all() and (rows > 1).mean() > 0.3
    first = items.groupby("item_id")["ts"].min()
    assert (first < start).mean() > 0.7  # most items exist before the window
    assert (items.groupby("item_id")["ts"].apply(lambda s: s.is_monotonic_increasing)).all()
    # the point-in-time price differs from the item's first price for a good share of impressions
    joined = price_at_impression(tables)
    first_price = items.sort_values("ts").drop_duplicates("item_id").set_index("item_id")["price"]
    changed = joined["price"].to_numpy() != first_price.loc[joined["item_id"]].to_numpy()
    assert changed.mean() > 0.1


def test_users_sign_up_before_their_impressions(tables: dict[str, pa.Table]) -> None:
    ev = tables["events"].to_pandas()
    users = tables["users"].to_pandas().rename(columns={"ts": "signup"})
    joined = ev.merge(users, on="user_id", how="left")
    assert joined["signup"].notna().all()
    assert (joined["signup"] < joined["ts"]).all()


# ------------------------------------------------------------------------------------------- purchases


def test_purchases_only_follow_clicks_and_come_after_them(tables: dict[str, pa.Table]) -> None:
    ev = tables["events"].to_pandas()
    pur = tables["purchases"].to_pandas()
    assert len(pur) > 0
    joined = pur.merge(ev, on="impression_id", suffixes=("", "_ev"), how="left")
    assert (joined["click"] == 1.0).all()
    assert (joined["user_id"] == joined["user_id_ev"]).all()
    assert (joined["item_id"] == joined["item_id_ev"]).all()
    delay = joined["ts"] - joined["ts_ev"]
    assert delay.between(60, 900).all()
    assert pur["quantity"].between(1, 3).all()
    assert pur["impression_id"].is_unique
    assert 0.02 < len(pur) / ev["click"].sum() < 0.4


def test_purchase_revenue_uses_the_price_valid_at_the_impression(tables: dict[str, pa.Table]) -> None:
    joined = price_at_impression(tables)[["impression_id", "price"]]
    pur = tables["purchases"].to_pandas().merge(joined, on="impression_id")
    expected = (pur["price"].astype(np.float64) * pur["quantity"]).astype(np.float32)
    np.testing.assert_allclose(pur["revenue"], expected, rtol=1e-6)


def test_expensive_items_convert_less_often() -> None:
    tabs = generate(small_cfg(n_impressions=60_000, purchase_rate=0.5))
    joined = price_at_impression(tabs)
    clicks = joined[joined["click"] == 1.0].copy()
    bought = set(tabs["purchases"].column("impression_id").to_pylist())
    clicks["bought"] = clicks["impression_id"].isin(bought)
    cheap = clicks["price"] <= clicks["price"].median()
    assert clicks.loc[cheap, "bought"].mean() > clicks.loc[~cheap, "bought"].mean()


# ------------------------------------------------------------------------------------------- errors, size


def test_bad_start_date_error_names_the_key_and_format() -> None:
    with pytest.raises(ValueError, match=r"source\.start_date.*YYYY-MM-DD"):
        generate(small_cfg(start_date="01/02/2026"))


def test_one_million_impressions_generate() -> None:
    cfg = SyntheticSource(n_impressions=1_000_000)
    ev = generate(cfg)["events"]
    assert ev.num_rows == 1_000_000
    assert 0.03 <= pc.mean(ev["click"]).as_py() <= 0.15


# ------------------------------------------------------------------------------------------- cache


def test_load_synthetic_writes_parquet_and_manifest(tmp_path: Path) -> None:
    cfg = small_cfg(n_impressions=5_000)
    raw = load_synthetic(cfg, tmp_path)
    for name in SCHEMAS:
        assert Path(raw.paths[name]) == tmp_path / f"{name}.parquet"
        assert Path(raw.paths[name]).is_file()
        assert raw.rows_read[name] == raw.tables[name].num_rows
    meta = json.loads((tmp_path / "manifest.json").read_text())
    assert meta["config"]["n_impressions"] == 5_000 and meta["config"]["seed"] == cfg.seed
    assert meta["rows"]["events"] == 5_000
    assert meta["mean_ctr"] == pytest.approx(float(np.mean(raw.events["click"].to_numpy())))
    assert raw.events.equals(generate(cfg)["events"])


def test_load_synthetic_second_call_reads_the_cache(tmp_path: Path) -> None:
    cfg = small_cfg(n_impressions=5_000)
    first = load_synthetic(cfg, tmp_path)
    mtimes = {p: Path(p).stat().st_mtime_ns for p in first.paths.values()}
    second = load_synthetic(cfg, tmp_path)
    assert {p: Path(p).stat().st_mtime_ns for p in second.paths.values()} == mtimes
    for name in SCHEMAS:
        assert second.tables[name].schema.equals(SCHEMAS[name])
        assert second.tables[name].equals(first.tables[name])


def test_load_synthetic_regenerates_when_the_config_changes(tmp_path: Path) -> None:
    first = load_synthetic(small_cfg(n_impressions=5_000), tmp_path)
    changed = load_synthetic(small_cfg(n_impressions=6_000, seed=99), tmp_path)
    assert changed.rows_read["events"] == 6_000
    assert not changed.events.slice(0, 5_000).equals(first.events)
    meta = json.loads((tmp_path / "manifest.json").read_text())
    assert meta["config"]["seed"] == 99 and meta["rows"]["events"] == 6_000


def test_load_synthetic_regenerates_when_a_cached_file_is_missing(tmp_path: Path) -> None:
    cfg = small_cfg(n_impressions=5_000)
    load_synthetic(cfg, tmp_path)
    (tmp_path / "purchases.parquet").unlink()
    again = load_synthetic(cfg, tmp_path)
    assert (tmp_path / "purchases.parquet").is_file()
    assert again.tables["purchases"].equals(generate(cfg)["purchases"])


# ------------------------------------------------------------------------------------------- criteo-shaped


@pytest.fixture(scope="module")
def criteo() -> pa.Table:
    return generate_criteo_schema(50_000, n_ids=5_000, seed=3)


def test_criteo_schema_has_the_criteo_columns_and_types(criteo: pa.Table) -> None:
    names = ["label"] + [f"I{j}" for j in range(1, 14)] + [f"C{f}" for f in range(1, 27)]
    assert criteo.column_names == names and criteo.num_rows == 50_000
    assert criteo.schema.field("label").type == pa.float32()
    for j in range(1, 14):
        col = criteo.column(f"I{j}")
        assert col.type == pa.float32()
        assert 0.02 < col.null_count / criteo.num_rows < 0.08
        assert pc.min(col).as_py() >= 0
    for f in range(1, 27):
        col = criteo.column(f"C{f}")
        assert col.type == pa.int64() and col.null_count == 0
        assert pc.min(col).as_py() >= 1 and pc.max(col).as_py() <= 5_000


def test_criteo_ids_are_zipf_skewed(criteo: pa.Table) -> None:
    for f in (1, 13, 26):
        counts = np.bincount(criteo.column(f"C{f}").to_numpy(), minlength=5_001)[1:]
        assert counts.max() > 50 * np.median(counts), f"C{f} is not skewed"


def test_criteo_labels_have_a_realistic_ctr_and_learnable_signal(criteo: pa.Table) -> None:
    label = criteo.column("label").to_numpy()
    assert set(np.unique(label)) == {0.0, 1.0}
    assert 0.2 <= label.mean() <= 0.3
    # the click model uses C1: its per-id empirical CTR (fitted on half the rows) ranks the other half
    c1 = criteo.column("C1").to_numpy()
    half = len(label) // 2
    sums = np.bincount(c1[:half], weights=label[:half], minlength=5_001)
    cnts = np.bincount(c1[:half], minlength=5_001)
    enc = (sums + 10 * label[:half].mean()) / (cnts + 10)
    assert roc_auc_score(label[half:], enc[c1[half:]]) > 0.55


def test_criteo_is_deterministic_by_seed() -> None:
    assert generate_criteo_schema(2_000, seed=1).equals(generate_criteo_schema(2_000, seed=1))
    assert not generate_criteo_schema(2_000, seed=1).equals(generate_criteo_schema(2_000, seed=2))


def test_criteo_rejects_a_zipf_exponent_of_one_or_less() -> None:
    with pytest.raises(ValueError, match="zipf_a must be > 1"):
        generate_criteo_schema(10, zipf_a=1.0)


def test_the_click_model_reproduces_every_generated_impressions_true_probability() -> None:
    from feature_store.readers.synthetic import CHANNELS, DEVICES, click_model, latent_click_model

    cfg = small_cfg()
    ev = latent_click_model(cfg)["events"]
    model = click_model(cfg)
    p = model.click_probability(ev["user"] + 1, ev["item"] + 1, channel=np.array(CHANNELS)[ev["channel"]],
                                device=np.array(DEVICES)[ev["device"]], hour=ev["hour"], position=ev["position"],
                                ts=ev["ts"])
    np.testing.assert_array_equal(p, ev["p_click"])
    buy = model.purchase_probability(ev["item"][:100] + 1, ev["ts"][:100])
    assert np.all((buy > 0) & (buy <= 1))
