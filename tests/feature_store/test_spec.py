"""The feature spec: fitted on train only, exact transforms, persistence, and one path for rows and batches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from feature_store.config import FeaturesConfig
from feature_store.spec import FeatureSpec, SpecError
from feature_store.spec_fit import SpecFitter

CFG = FeaturesConfig.model_validate(
    {
        "label": "click",
        "categorical": [{"name": "user_id"}, {"name": "item_id", "min_freq": 2}, {"name": "zip", "hash_buckets": 7}],
        "numeric": [
            {"name": "price", "transform": "log1p_standardize"},
            {"name": "age", "transform": "bucketize", "buckets": 4},
            {"name": "clicks", "transform": "log1p", "fill": 0},
        ],
        "multi_valued": [{"name": "genres", "max_len": 2}],
        "sequence": [{"name": "hist", "source": "item_id", "max_len": 2}],
        "vector": [{"name": "aff", "dim": 2}],
        "passthrough": ["p"],
    }
)


def train_table() -> pa.Table:
    return pa.table(
        {
            "user_id": [1, 2, 2, 3],
            "item_id": ["a", "b", "a", "b"],
            "zip": ["1", "2", None, "3"],
            "price": [1.0, None, 3.0, 4.0],
            "age": [10, 20, 30, None],
            "clicks": [0, 5, None, 1],
            "genres": ["x|y", "y", "", None],
            "hist": [["a", "b", "c"], [], None, ["zz"]],
            "aff": [[1.0, 0.0], [0.0, 1.0], None, [0.5, 0.5]],
            "click": [1, 0, 1, 0],
            "p": [0.1, 0.2, 0.3, 0.4],
        }
    )


@pytest.fixture()
def spec() -> FeatureSpec:
    return SpecFitter(CFG).fit(train_table())


def test_vocabulary_orders_by_train_frequency_and_reserves_zero(spec: FeatureSpec) -> None:
    assert spec.vocabs["user_id"].to_pylist() == [2, 1, 3]
    out = spec.transform(_rest() | {"user_id": 2, "item_id": "a"})
    assert out.column("user_id").to_pylist() == [1]
    assert spec.feature("user_id").cardinality == 4


def test_values_unseen_in_train_map_to_oov(spec: FeatureSpec) -> None:
    out = spec.transform(_rest() | {"user_id": 999, "item_id": "never"})
    assert out.column("user_id").to_pylist() == [0]
    assert out.column("item_id").to_pylist() == [0]


def test_min_freq_drops_rare_values() -> None:
    t = train_table().set_column(1, "item_id", pa.array(["a", "a", "b", "c"]))
    spec = SpecFitter(CFG).fit(t)
    assert spec.vocabs["item_id"].to_pylist() == ["a"]


def test_string_ids_match_an_integer_vocabulary(spec: FeatureSpec) -> None:
    out = spec.transform(_rest() | {"user_id": "2", "item_id": "a"})
    assert out.column("user_id").to_pylist() == [1]
    junk = spec.transform(_rest() | {"user_id": "not-a-number", "item_id": "a"})
    assert junk.column("user_id").to_pylist() == [0]


def test_hash_buckets_are_stable_and_in_range(spec: FeatureSpec) -> None:
    a = spec.transform(train_table()).column("zip").to_pylist()
    b = spec.transform(train_table()).column("zip").to_pylist()
    assert a == b
    assert a[2] == 0  # null -> 0
    assert all(1 <= v <= 7 for i, v in enumerate(a) if i != 2)


def test_numeric_transforms_use_train_statistics(spec: FeatureSpec) -> None:
    price = spec.feature("price")
    logs = np.log1p([1.0, 3.0, 4.0])
    assert price.mean == pytest.approx(logs.mean())
    assert price.std == pytest.approx(logs.std())
    out = spec.transform(train_table())
    fill = (1.0 + 3.0 + 4.0) / 3
    expected_missing = (math.log1p(fill) - logs.mean()) / logs.std()
    assert out.column("price").to_pylist()[1] == pytest.approx(expected_missing, rel=1e-6)
    assert out.column("clicks").to_pylist()[2] == 0.0  # explicit fill 0 then log1p
    assert out.column("age").to_pylist()[3] == 0  # missing bucket
    assert out.column("age").type == pa.int64()


def test_multi_valued_splits_truncates_and_encodes(spec: FeatureSpec) -> None:
    out = spec.transform(pa.table({"genres": ["y|x|y|q", None, ""]} | _rest_cols(3)))
    y, x = 1, 2  # y seen twice in train
    assert out.column("genres").to_pylist() == [[y, x], [], []]


def test_sequences_keep_the_most_recent_items_with_the_source_vocabulary(spec: FeatureSpec) -> None:
    out = spec.transform(pa.table({"hist": [["b", "a", "zz", "a"], None]} | _rest_cols(2, skip="hist")))
    a = spec.vocabs["item_id"].to_pylist().index("a") + 1
    assert out.column("hist").to_pylist() == [[0, a], []]


def test_vector_width_is_checked(spec: FeatureSpec) -> None:
    with pytest.raises(SpecError, match="vector feature 'aff': row 0 has 3 values, expected 2"):
        spec.transform({"aff": [1.0, 2.0, 3.0]} | _rest(skip="aff"))


def test_missing_raw_column_names_the_feature(spec: FeatureSpec) -> None:
    row = _rest()
    row.pop("price")
    with pytest.raises(SpecError, match="feature 'price' needs raw column 'price'"):
        spec.transform(row)


def test_one_row_dict_equals_the_batch_row(spec: FeatureSpec) -> None:
    batch = spec.transform(train_table())
    for i, row in enumerate(train_table().to_pylist()):
        assert spec.transform(row).to_pylist()[0] == batch.slice(i, 1).to_pylist()[0]


def test_save_and_load_round_trip_gives_identical_outputs(spec: FeatureSpec, tmp_path: Path) -> None:
    spec.save(tmp_path)
    loaded = FeatureSpec.load(tmp_path)
    assert loaded.fingerprint() == spec.fingerprint()
    assert loaded.transform(train_table()).equals(spec.transform(train_table()))
    doc = json.loads((tmp_path / "feature_spec.json").read_text())
    assert doc["format"] == "recforge.feature_spec" and doc["version"] == 1
    assert {f["name"] for f in doc["features"]} >= {"user_id", "genres", "hist"}


def test_tampered_vocabulary_is_detected(spec: FeatureSpec, tmp_path: Path) -> None:
    spec.save(tmp_path)
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"index": [1], "value": ["zzz"]}), tmp_path / "vocab" / "item_id.parquet")
    with pytest.raises(SpecError, match="fingerprint mismatch"):
        FeatureSpec.load(tmp_path)


def test_partials_merge_to_the_same_spec_as_one_pass() -> None:
    t = train_table()
    fitter = SpecFitter(CFG)
    merged = fitter.finish([fitter.partial(t.slice(0, 1)), fitter.partial(t.slice(1, 2)), fitter.partial(t.slice(3))])
    whole = fitter.fit(t)
    for name, vocab in whole.vocabs.items():
        assert merged.vocabs[name].equals(vocab)
    for a, b in zip(merged.dense_features(), whole.dense_features()):
        assert (a.mean, a.std, a.fill) == pytest.approx((b.mean, b.std, b.fill), rel=1e-12)
    out_m, out_w = merged.transform(t), whole.transform(t)
    assert np.allclose(out_m.column("price").to_numpy(), out_w.column("price").to_numpy(), rtol=1e-6)


def _rest(skip: str = "") -> dict[str, object]:
    row = train_table().slice(0, 1).to_pylist()[0]
    row.pop("click")
    row.pop(skip, None)
    return row


def _rest_cols(n: int, skip: str = "genres") -> dict[str, object]:
    row = _rest()
    row.pop(skip, None)
    row.pop("genres", None) if skip != "genres" else None
    cols = {k: [v] * n for k, v in row.items() if k != skip}
    if skip != "genres":
        cols["genres"] = ["x"] * n
    return cols


def test_dense_integer_lookup_matches_the_hash_lookup() -> None:
    import pyarrow.compute as pc

    from feature_store.spec import _dense_table, _lookup

    vocab = pa.array([7, 3, 100, 0, 42], pa.int64())
    values = pa.array([3, None, -5, 100, 10**12, 0, 8, 42, 7], pa.int64())
    dense = _dense_table(vocab)
    assert dense is not None
    hashed = pc.fill_null(pc.add(pc.index_in(values, value_set=vocab).cast(pa.int64()), 1), 0).to_numpy()
    assert _lookup(values, vocab, dense).tolist() == hashed.tolist() == [2, 0, 0, 3, 0, 4, 0, 5, 1]
    assert _dense_table(pa.array([1, 10**9])) is None  # too sparse for a table


def test_bucket_boundaries_weigh_blocks_by_their_size() -> None:
    from feature_store.spec_fit import QUANTILE_SAMPLE

    cfg = FeaturesConfig.model_validate({"label": "y", "numeric": [{"name": "x", "transform": "bucketize",
                                                                     "buckets": 4}]})
    rng = np.random.default_rng(0)
    big = rng.uniform(0, 100, 5 * QUANTILE_SAMPLE)  # sampled down to QUANTILE_SAMPLE
    small = rng.uniform(1000, 2000, 2000)  # kept whole: must not weigh as much as the big block
    fitter = SpecFitter(cfg)
    spec = fitter.finish([fitter.partial(pa.table({"x": big, "y": np.zeros(len(big))})),
                          fitter.partial(pa.table({"x": small, "y": np.zeros(len(small))}))])
    exact = np.quantile(np.concatenate([big, small]), [0.25, 0.5, 0.75])
    assert np.allclose(spec.feature("x").boundaries, exact, rtol=0.02)
