"""`FeatureSpec.transform_row` (the one-row path serving uses for a user's side) answers exactly as `transform`
does for the same row as a one-row table: value type by value type, errors included, and its batch
(`row_to_tensors`) equals `table_to_tensors` of the table."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from feature_store.config import FeaturesConfig
from feature_store.spec import FeatureSpec
from feature_store.spec_fit import SpecFitter
from tests.feature_store.test_spec import CFG, train_table
from training.common.data import row_to_tensors, table_to_tensors
from training.common.features import FeatureLayout

# every kind of value a raw column can hold in a request or an online-store row (JSON types and beyond)
VALUES: list[Any] = [
    None, 0, 1, 2, 3, -5, 10**12, 2**53 + 1, 2**70, True, False,
    0.0, 3.0, 3.5, -1.25, float("nan"), float("inf"),
    "", "a", "b", "zz", "2", " 2 ", "+2", "x|y", "y||q|x|z", "not-a-number",
    [], [None], ["a"], ["a", "b", "c"], ["b", "a", "zz", "a", "b"], ["a", None, "b"], [1, 2, 3], [2, None],
    [1.0, 0.0], [0.25, float("nan")], [1.0, 2.0, 3.0], [1, 0], [1.0, None], ["a", 1], [True, False], [[1]],
    {"a": 1}, b"a", (1, 2),
]


def _out(run: Any) -> tuple[str, Any]:
    """('ok', value) or ('error', (type, message)) of `run()`."""
    try:
        return "ok", run()
    except Exception as exc:  # the two paths must fail alike, whatever the error
        return "error", (type(exc).__name__, str(exc))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _as_py(value: Any) -> Any:
    """transform_row's value as Arrow's `to_pylist` gives the table's (float32 widened as Arrow widens it)."""
    if isinstance(value, np.ndarray):
        return [_as_py(v) for v in value]
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _check_every_value(spec: FeatureSpec) -> int:
    checked = 0
    for f in spec.features:
        for value in VALUES:
            want = _out(lambda f=f, value=value: spec.transform(pa.table({f.column: pa.array([value])}),
                                                                features=[f.name]).column(f.name).to_pylist()[0])
            got = _out(lambda f=f, value=value: _as_py(spec.transform_row({f.column: value}, [f.name])[f.name]))
            assert want[0] == got[0] and (_same(want[1], got[1]) if want[0] == "ok" else want[1] == got[1]), \
                f"feature {f.name!r} ({f.kind}), value {value!r}: transform {want} != transform_row {got}"
            checked += 1
    return checked


@pytest.fixture()
def spec() -> FeatureSpec:
    return SpecFitter(CFG).fit(train_table())


def test_every_value_type_transforms_as_the_arrow_path_does(spec: FeatureSpec) -> None:
    assert _check_every_value(spec) == len(spec.features) * len(VALUES)


def test_sparse_integer_ids_and_hashed_sequences_transform_as_the_arrow_path_does() -> None:
    cfg = FeaturesConfig.model_validate({
        "label": "click",
        "categorical": [{"name": "user_id"}, {"name": "shop", "hash_buckets": 5}],
        "numeric": [{"name": "price", "transform": "standardize"}],
        "sequence": [{"name": "shops", "source": "shop", "max_len": 3}],
    })
    table = pa.table({"user_id": [10**12, 3, 10**12 + 7, 3], "shop": ["a", "b", "c", None],
                      "price": [1.0, 2.0, None, 4.0], "shops": [["a", "b"], [], None, ["c", "a", "b", "d"]],
                      "click": [1, 0, 1, 0]})
    spec = SpecFitter(cfg).fit(table)
    assert spec.vocabs["user_id"].to_pylist()[:1] == [3]  # ids too sparse for the dense table: the dict path
    extra = [10**12, 10**12 + 7, 10**12 + 8]
    VALUES.extend(extra)
    try:
        assert _check_every_value(spec) == len(spec.features) * len(VALUES)
    finally:
        del VALUES[-len(extra):]


def test_row_batch_equals_the_table_batch(spec: FeatureSpec) -> None:
    layout = FeatureLayout.from_spec(spec)
    names = [f.name for f in spec.features]
    rows = [*train_table().to_pylist(), {"user_id": 3, "hist": ["a", "b", "c", "a"], "genres": ["x", "y", "z"],
                                         "aff": [0.5, float("nan")], "price": None}]
    for row in rows:
        table = spec.transform(pa.table({c: pa.array([row.get(c)]) for c in spec.raw_columns()}), features=names)
        one = spec.transform_row(row, names)
        for only in (None, {"user_id", "price", "hist", "aff"}):
            kept = one if only is None else {k: v for k, v in one.items() if k in only}
            want, got = table_to_tensors(table, layout, only=only), row_to_tensors(kept, layout, only=only)
            assert want.keys() == got.keys()
            for key in want:
                assert want[key].dtype == got[key].dtype and want[key].shape == got[key].shape, key
                assert torch.equal(want[key].nan_to_num(-7.0), got[key].nan_to_num(-7.0)), (row, key)
