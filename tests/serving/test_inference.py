"""The ranker's inference graph chosen at start-up answers like the eager model within the stated tolerance."""

from __future__ import annotations

import pytest
import torch

from serving.inference import TOLERANCE, RankerGraph, UserSide, request_side_key, synthetic_batch
from tests.training.test_embedding_and_data import CFG, raw_table
from training.ranking.models import build_model


def _model() -> tuple[torch.nn.Module, object]:
    from feature_store.spec_fit import SpecFitter
    from training.common.features import FeatureLayout
    from training.ranking.models.dcnv2 import DCNv2Config

    spec = SpecFitter(CFG).fit(raw_table(500))
    layout = FeatureLayout.from_spec(spec)
    torch.manual_seed(0)
    return build_model("dcnv2", layout, DCNv2Config(embedding_dim=8, mlp=[32, 16])).eval(), layout


def test_the_chosen_graph_answers_like_the_eager_model_and_refusals_say_why() -> None:
    model, layout = _model()
    graph = RankerGraph(model, layout, repeat=2)
    assert graph.kind in graph.timings_ms and "eager" in graph.timings_ms
    for n, seed in ((1, 5), (33, 6), (200, 7)):
        batch = synthetic_batch(layout, n, seed)
        with torch.inference_mode():
            want = torch.sigmoid(model(batch)).numpy()
        assert abs(graph.probabilities(batch) - want).max() <= TOLERANCE
    for name, why in graph.refused.items():  # every refusal names its reason
        assert name not in graph.timings_ms and why


def test_a_graph_off_by_more_than_the_tolerance_is_refused() -> None:
    model, layout = _model()
    graph = RankerGraph(model, layout, device="cuda-not-chosen")  # no choice on other devices: eager
    assert graph.kind == "eager" and graph.timings_ms == {}
    off = RankerGraph.__new__(RankerGraph)
    off.eager, off.kind, off.timings_ms, off.refused, off._fn = model, "eager", {}, {}, model
    off._candidates = lambda sample: {"shifted": lambda b: model(b) + 0.1}  # type: ignore[method-assign]
    off._choose(layout, 1)
    assert off.kind == "eager" and "shifted" in off.refused and "> 1e-06" in off.refused["shifted"]


def test_user_side_cache_keys_by_every_value_and_the_context_and_evicts_the_oldest() -> None:
    cache = UserSide(2)
    calls: list[int] = []

    def make(i: int) -> int:
        calls.append(i)
        return i

    a = request_side_key(1, {"hist": [1, 2], "x": 1.0}, None)
    assert cache.get(a, "v", lambda: make(1)) == 1 and cache.get(a, "v", lambda: make(9)) == 1
    assert request_side_key(1, {"hist": [1, 2, 3], "x": 1.0}, None) != a  # a new history: a new entry
    assert request_side_key(1, {"hist": [1, 2], "x": 1}, None) != a  # 1 and 1.0 are different JSON values
    assert request_side_key(1, {"hist": [1, 2], "x": True}, None) != request_side_key(1, {"hist": [1, 2], "x": 1},
                                                                                     None)
    assert request_side_key(1, {"hist": [1, 2], "x": 1.0}, {"hour": 3}) != a
    b, c = (request_side_key(u, {}, None) for u in (2, 3))
    cache.get(b, "v", lambda: make(2))
    cache.get(c, "v", lambda: make(3))  # evicts a
    cache.get(a, "v", lambda: make(4))
    assert calls == [1, 2, 3, 4] and cache.stats()["users"] == 2


@pytest.mark.parametrize("params", [{}, {"structure": "stacked"}, {"low_rank": 4}])
def test_split_scoring_answers_like_the_forward_for_every_dcnv2_shape(params: dict[str, object]) -> None:
    """Items (item_id, price, tags) paired with one request side (the others): the split's per-item and
    per-request parts give the model's own probabilities within the tolerance, for new items added later too
    and after the item cache starts over."""
    import numpy as np

    from feature_store.spec_fit import SpecFitter
    from serving.inference import SplitScorer
    from training.common.data import add_sides, row_to_tensors, table_to_tensors
    from training.common.features import FeatureLayout
    from training.ranking.models.dcnv2 import DCNv2Config

    raw = raw_table(300)
    spec = SpecFitter(CFG).fit(raw)
    layout = FeatureLayout.from_spec(spec)
    torch.manual_seed(1)
    model = build_model("dcnv2", layout, DCNv2Config(embedding_dim=8, mlp=[32, 16], **params)).eval()
    items = ["item_id", "price", "tags"]
    request = [f.name for f in spec.features if f.name not in items]
    table = spec.transform(raw, with_label=False)
    cached = table_to_tensors(table, layout, only=set(items))
    split = SplitScorer(model, layout, items, request)
    slots = torch.from_numpy(np.random.default_rng(0).integers(0, 300, 200))
    for generation, (user, upto) in enumerate([(3, 120), (7, 300), (11, 300)]):
        one = row_to_tensors(spec.transform_row(raw.slice(user, 1).to_pylist()[0], request), layout,
                             only=set(request))
        part = {k: (v.flip(0) if generation == 2 else v)[:upto] for k, v in cached.items()}
        split.items(part, generation // 2)  # two calls share a generation (items added); the third starts over
        # with other items in the same slots
        mine = slots[slots < upto]
        got = split.probabilities(mine, split.request(add_sides(part, mine[:1], one, layout)))
        with torch.inference_mode():
            want = torch.sigmoid(model(add_sides(part, mine, one, layout))).numpy()
        assert got.shape == want.shape and abs(got - want).max() <= TOLERANCE
        assert split.check(got, want) and split.verified
    assert not split.check(want + 1e-5, want)  # an answer off by more than the tolerance is refused
