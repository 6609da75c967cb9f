"""Multi-touch attribution: hand-computed cases per method, Shapley exact vs Monte Carlo, input errors, and the
methods scored against the journey generator's known truth."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from analytics.attribution import (
    METHODS,
    AttributionResult,
    attribute,
    journey_masks,
    prepare,
    rank_correlation,
)
from feature_store.readers.journeys import Journeys, generate_journeys

DAY = 86_400


def _tables(rows: list[tuple[int, int, str | None]], outcomes: list[tuple[int, bool, float]]) -> tuple[pa.Table,
                                                                                                         pa.Table]:
    touchpoints = pa.table(
        {
            "journey_id": pa.array([r[0] for r in rows], pa.int64()),
            "ts": pa.array([r[1] for r in rows], pa.int64()),
            "channel": pa.array([r[2] for r in rows], pa.string()),
        }
    )
    out = pa.table(
        {
            "journey_id": pa.array([o[0] for o in outcomes], pa.int64()),
            "converted": pa.array([o[1] for o in outcomes], pa.bool_()),
            "value": pa.array([o[2] for o in outcomes], pa.float64()),
        }
    )
    return touchpoints, out


@pytest.fixture(scope="module")
def generated() -> Journeys:
    return generate_journeys(n_journeys=50_000, seed=7)


@pytest.fixture(scope="module")
def generated_result(generated: Journeys) -> AttributionResult:
    return attribute(generated.touchpoints, generated.journeys)


def test_rule_based_methods_match_a_hand_computed_case() -> None:
    # j1: A (day 0), B (day 7), A (day 14), converted, value 100.  j2: C, not converted.
    # j3: B (day 0), C (day 7), converted, value 50. Rows are shuffled: prepare sorts by (journey, ts).
    rows = [(3, 7 * DAY, "C"), (1, 14 * DAY, "A"), (2, 0, "C"), (1, 0, "A"), (3, 0, "B"), (1, 7 * DAY, "B")]
    tp, out = _tables(rows, [(1, True, 100.0), (2, False, 0.0), (3, True, 50.0)])
    result = attribute(tp, out, methods=["first_touch", "last_touch", "linear", "time_decay"], half_life_days=7.0)
    # first: j1 -> A, j3 -> B.   last: j1 -> A, j3 -> C.
    assert result.credit("first_touch") == pytest.approx({"A": 1.0, "B": 1.0, "C": 0.0})
    assert result.credit("last_touch") == pytest.approx({"A": 1.0, "B": 0.0, "C": 1.0})
    assert result.credit("last_touch", "value") == pytest.approx({"A": 100.0, "B": 0.0, "C": 50.0})
    # linear: j1 thirds (A twice), j3 halves.
    assert result.credit("linear") == pytest.approx({"A": 2 / 3, "B": 1 / 3 + 1 / 2, "C": 1 / 2})
    # time decay, half-life 7 days, t_conv = last touch: j1 weights 1/4, 1/2, 1 (sum 7/4) -> A 5/7, B 2/7;
    # j3 weights 1/2, 1 -> B 1/3, C 2/3.
    expected = {"A": 5 / 7, "B": 2 / 7 + 1 / 3, "C": 2 / 3}
    assert result.credit("time_decay") == pytest.approx(expected)
    assert result.credit("time_decay", "value") == pytest.approx(
        {"A": 100 * 5 / 7, "B": 100 * 2 / 7 + 50 / 3, "C": 50 * 2 / 3})


def test_markov_removal_effects_match_a_hand_computed_chain() -> None:
    # j1: A -> B, converted (value 30).  j2: A, not converted.  j3: B, converted (value 10).
    # Transitions: start->A 2, start->B 1, A->B 1, A->null 1, B->conv 2.
    # P(conv) = 2/3 * 1/2 * 1 + 1/3 * 1 = 2/3.
    # Remove A (start->A goes to null): P = 1/3, effect 1 - (1/3)/(2/3) = 1/2.
    # Remove B: every path to conversion passes B, P = 0, effect 1.
    # Credit = 2 conversions x (1/2, 1) / 1.5 = (2/3, 4/3); value 40 x the same shares.
    tp, out = _tables([(1, 0, "A"), (1, 10, "B"), (2, 0, "A"), (3, 0, "B")],
                      [(1, True, 30.0), (2, False, 0.0), (3, True, 10.0)])
    result = attribute(tp, out, methods=["markov"])
    assert result.metadata["markov"]["p_conversion"] == pytest.approx(2 / 3)
    assert result.metadata["markov"]["removal_effects"] == pytest.approx({"A": 0.5, "B": 1.0})
    assert result.credit("markov") == pytest.approx({"A": 2 / 3, "B": 4 / 3})
    assert result.credit("markov", "value") == pytest.approx({"A": 40 / 3, "B": 80 / 3})


def test_a_second_order_chain_remembers_what_came_before_the_closing_channel() -> None:
    # j1: A -> B, converted.  j2: C -> B, not converted.
    # First order forgets where B was reached from: start->A 1/2, start->C 1/2, A->B, C->B, B->conv 1/2, so
    # P(conv) = 1/2 and removing A or C halves it (effect 1/2 each), removing B ends it (effect 1).
    # Second order: states (A), (C), (A,B) -> conv, (C,B) -> null: P(conv) = 1/2; removing A ends every
    # conversion (effect 1), removing C changes nothing (effect 0), removing B effect 1.
    tp, out = _tables([(1, 0, "A"), (1, 10, "B"), (2, 0, "C"), (2, 10, "B")], [(1, True, 10.0), (2, False, 0.0)])
    first = attribute(tp, out, methods=["markov"], markov_order=1).metadata["markov"]
    second = attribute(tp, out, methods=["markov"], markov_order=2).metadata["markov"]
    assert first["removal_effects"] == pytest.approx({"A": 0.5, "B": 1.0, "C": 0.5})
    assert second["removal_effects"] == pytest.approx({"A": 1.0, "B": 1.0, "C": 0.0})
    assert first["p_conversion"] == pytest.approx(0.5) and second["p_conversion"] == pytest.approx(0.5)
    assert (first["order"], first["states"]) == (1, 3) and (second["order"], second["states"]) == (2, 4)


def test_a_chain_as_long_as_the_longest_journey_is_the_observed_paths() -> None:
    # With order >= the longest journey every state is a whole path prefix: P(conversion) is the observed
    # conversion rate, and removing c loses exactly the conversions of the journeys that touch c.

    j = generate_journeys(3_000, seed=5, channels=5, mean_extra_touches=0.5)
    lengths = np.bincount(j.touchpoints.column("journey_id").to_numpy())
    keep = np.flatnonzero(lengths <= 4)
    tp = j.touchpoints.filter(pc.is_in(j.touchpoints.column("journey_id"), pa.array(keep)))
    out = j.journeys.filter(pc.is_in(j.journeys.column("journey_id"), pa.array(keep)))
    meta = attribute(tp, out, methods=["markov"], markov_order=4).metadata["markov"]
    converted = out.column("converted").to_numpy(zero_copy_only=False)
    assert meta["p_conversion"] == pytest.approx(converted.mean(), rel=1e-9)
    journey = tp.column("journey_id").to_numpy()
    channel = tp.column("channel").to_numpy(zero_copy_only=False)
    conv_ids = set(out.column("journey_id").to_numpy()[converted].tolist())
    for c, effect in meta["removal_effects"].items():
        touching = set(journey[channel == c].tolist())
        assert effect == pytest.approx(len(touching & conv_ids) / len(conv_ids), rel=1e-9), c


def test_markov_order_outside_the_supported_range_is_refused() -> None:
    tp, out = _tables([(1, 0, "A")], [(1, True, 1.0)])
    with pytest.raises(ValueError, match=r"markov order must be 1\.\.4"):
        attribute(tp, out, methods=["markov"], markov_order=5)


def test_shapley_matches_hand_computed_values_and_is_efficient() -> None:
    # Journeys (distinct channel sets): {A} conv, {A,B} conv, {B,C} conv, {A,B,C} conv, {C} not converted.
    # v: {}=0, A=1, B=0, C=0, AB=2, AC=1, BC=1, ABC=4.
    # phi_A = 1/3 (1-0) + 1/6 (2-0) + 1/6 (1-0) + 1/3 (4-1) = 11/6
    # phi_B = 1/3 (0-0) + 1/6 (2-1) + 1/6 (1-0) + 1/3 (4-1) = 4/3
    # phi_C = 1/3 (0-0) + 1/6 (1-1) + 1/6 (1-0) + 1/3 (4-2) = 5/6      (sum 4 = total conversions)
    rows = [(1, 0, "A"), (2, 0, "A"), (2, 5, "B"), (2, 9, "A"), (3, 0, "C"), (3, 1, "B"),
            (4, 0, "B"), (4, 1, "C"), (4, 2, "A"), (5, 0, "C")]
    tp, out = _tables(rows, [(1, True, 1.0), (2, True, 1.0), (3, True, 1.0), (4, True, 1.0), (5, False, 0.0)])
    result = attribute(tp, out, methods=["shapley"])
    assert result.metadata["shapley"]["mode"] == "exact"
    credit = result.credit("shapley")
    assert credit == pytest.approx({"A": 11 / 6, "B": 4 / 3, "C": 5 / 6})
    assert sum(credit.values()) == pytest.approx(result.metadata["total_conversions"])


def test_exact_shapley_equals_equal_split_over_distinct_channels(generated: Journeys,
                                                                generated_result: AttributionResult) -> None:
    # The simplified characteristic function is a sum of one unanimity game per journey, so its Shapley value
    # is each converting journey split equally among its distinct channels: checks the zeta transform at K = 8.
    data = prepare(generated.touchpoints, generated.journeys)
    masks = journey_masks(data)
    n_distinct = np.zeros(masks.size)
    for c in range(data.n_channels):
        n_distinct += (masks >> c) & 1
    expected = {name: float((data.converted * ((masks >> c) & 1) / n_distinct).sum())
                for c, name in enumerate(data.channels)}
    assert generated_result.credit("shapley") == pytest.approx(expected, rel=1e-9)
    assert sum(expected.values()) == pytest.approx(generated_result.metadata["total_conversions"])


def test_monte_carlo_shapley_is_used_above_the_exact_limit_and_agrees_within_its_error() -> None:
    journeys = generate_journeys(n_journeys=5_000, seed=3, channels=6)
    exact = attribute(journeys.touchpoints, journeys.journeys, methods=["shapley"])
    mc = attribute(journeys.touchpoints, journeys.journeys, methods=["shapley"], exact_max_channels=4,
                   permutations=3_000, seed=11)
    assert exact.metadata["shapley"]["mode"] == "exact"
    meta = mc.metadata["shapley"]
    assert meta["mode"] == "monte_carlo" and meta["permutations"] == 3_000
    exact_credit, mc_credit, stderr = exact.credit("shapley"), mc.credit("shapley"), meta["stderr_conversions"]
    for channel in exact_credit:
        assert stderr[channel] > 0
        assert abs(mc_credit[channel] - exact_credit[channel]) <= 4 * stderr[channel], channel
    # Every sampled order shares out exactly the total, so the mean does too.
    assert sum(mc_credit.values()) == pytest.approx(mc.metadata["total_conversions"])
    value_exact, value_mc = exact.credit("shapley", "value"), mc.credit("shapley", "value")
    for channel in value_exact:
        assert abs(value_mc[channel] - value_exact[channel]) <= 4 * meta["stderr_value"][channel] + 1e-9


def test_markov_and_shapley_rank_channels_like_the_truth_and_last_touch_does_not(
        generated: Journeys, generated_result: AttributionResult) -> None:
    correlations = {m: rank_correlation(generated_result.credit(m), generated.truth) for m in METHODS}
    print("\nSpearman vs truth (50,000 journeys, seed 7):",
          ", ".join(f"{m} {r:+.3f}" for m, r in correlations.items()))
    assert correlations["markov"] > 0.9
    assert correlations["shapley"] > 0.9
    assert correlations["last_touch"] < 0.0
    assert correlations["last_touch"] < correlations["markov"] - 0.5
    # Every method shares out the observed conversions.
    for method in METHODS:
        total = sum(generated_result.credit(method).values())
        assert total == pytest.approx(generated_result.metadata["total_conversions"]), method


def test_generator_is_deterministic_by_seed_and_consistent() -> None:
    a, b = generate_journeys(2_000, seed=5), generate_journeys(2_000, seed=5)
    c = generate_journeys(2_000, seed=6)
    assert a.touchpoints.equals(b.touchpoints) and a.journeys.equals(b.journeys) and a.truth == b.truth
    assert not a.touchpoints.equals(c.touchpoints)
    ids = a.touchpoints.column("journey_id").to_numpy()
    ts = a.touchpoints.column("ts").to_numpy()
    same = ids[1:] == ids[:-1]
    assert (ts[1:][same] > ts[:-1][same]).all()
    assert (a.journeys.column("p_conversion").to_numpy() < 1).all()
    assert sum(a.truth_shares.values()) == pytest.approx(1.0)
    wide = generate_journeys(500, seed=1, channels=14)
    assert len(wide.truth) == 14 and wide.base_rate + sum(wide.effects.values()) <= 0.9 + 1e-12


def test_bad_input_raises_errors_that_say_what_to_fix() -> None:
    tp, out = _tables([(1, 0, "A"), (2, 0, "B")], [(1, True, 5.0), (2, False, 0.0)])
    with pytest.raises(ValueError, match=r"touchpoints is missing column\(s\) \['channel'\]"):
        attribute(tp.drop_columns(["channel"]), out)
    with pytest.raises(ValueError, match=r"outcomes is missing column\(s\) \['value'\]"):
        attribute(tp, out.drop_columns(["value"]))
    _, unknown = _tables([], [(1, True, 5.0), (2, False, 0.0), (9, True, 1.0)])
    with pytest.raises(ValueError, match=r"1 journey.* not in touchpoints .*9"):
        attribute(tp, unknown)
    with pytest.raises(ValueError, match="no row in outcomes"):
        attribute(tp, out.slice(0, 1))
    with pytest.raises(ValueError, match="methods"):
        attribute(tp, out, methods=["u_shaped"])


def test_null_channels_are_dropped_and_counted_and_an_all_null_journey_is_an_error() -> None:
    tp, out = _tables([(1, 0, "A"), (1, 5, None), (2, 0, "B")], [(1, True, 5.0), (2, False, 0.0)])
    result = attribute(tp, out, methods=["last_touch"])
    assert result.metadata["null_channel_touchpoints"] == 1
    assert result.credit("last_touch") == pytest.approx({"A": 1.0, "B": 0.0})
    tp_all_null, _ = _tables([(1, 0, "A"), (2, 0, None)], [])
    with pytest.raises(ValueError, match="no touchpoint with a channel"):
        attribute(tp_all_null, out)


def test_rank_correlation_rejects_channels_missing_from_the_truth() -> None:
    assert rank_correlation({"a": 1.0, "b": 2.0}, {"a": 10.0, "b": 20.0, "c": 30.0}) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="not in truth"):
        rank_correlation({"z": 1.0}, {"a": 1.0, "b": 2.0})
