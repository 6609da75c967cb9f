"""Budget allocation LP: hand-computed optima and shadow prices, tiers, strong duality against an independently
solved dual, infeasibility diagnosis, config validation and the size it must handle quickly."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import ValidationError
from scipy.optimize import linprog

from analytics.budget import (
    BudgetInfeasible,
    BudgetLP,
    BudgetUnbounded,
    build_lp,
    random_problem,
    solve_budget,
)
from analytics.config import BudgetConfig, ChannelConfig, TierConfig


def channel(name: str, unit_cost: float, **kw: object) -> ChannelConfig:
    return ChannelConfig.model_validate({"name": name, "unit_cost": unit_cost, **kw})


def test_three_channel_lp_matches_hand_computed_optimum_and_shadow_prices() -> None:
    # A: cost 2, return 6 (ROI 3), max 100; B: cost 1, return 2 (ROI 2), max 500; C: cost 4, return 4 (ROI 1),
    # min 10; budget 600, objective return.
    # By hand: C's forced 10 units cost 40; the best ROI, A, takes its max 100 (cost 200); the remaining 360 buys
    # B (below its max 500). Return 6*100 + 2*360 + 4*10 = 1,360, spend 600.
    # Binding: the budget, A's max, C's min; B's max has slack 140.
    # Shadow prices (gain per unit of relaxation): budget: one more unit of money buys one more B at return 2 -> 2.
    # A's max: one more A returns 6 but its cost 2 would have bought 2 B (return 4) -> 2.
    # C's min: one unit less of C frees 4 money = 4 B units (return 8) and loses C's 4 -> 4. B's max: 0.
    # Check as a dual certificate: reduced returns A 6 - 2*2 - 2 = 0, B 2 - 2*1 = 0, C 4 - 2*4 + 4 = 0, and the
    # dual objective 600*2 + 100*2 - 10*4 = 1,360 equals the primal.
    cfg = BudgetConfig(channels=[channel("A", 2, return_per_unit=6, max_volume=100),
                                 channel("B", 1, return_per_unit=2, max_volume=500),
                                 channel("C", 4, return_per_unit=4, min_volume=10)], total_budget=600)
    res = solve_budget(cfg)
    assert res.objective == pytest.approx(1360)
    assert res.total_spend == pytest.approx(600)
    assert res.total_volume == pytest.approx(470)
    totals = {row["channel"]: row for row in res.channels.to_pylist()}
    assert {k: totals[k]["volume"] for k in "ABC"} == pytest.approx({"A": 100, "B": 360, "C": 10})
    assert {k: totals[k]["return"] for k in "ABC"} == pytest.approx({"A": 600, "B": 720, "C": 40})
    expected = {"total_budget": (True, 2.0, 0.0), "channel 'A' max_volume": (True, 2.0, 0.0),
                "channel 'C' min_volume": (True, 4.0, 0.0), "channel 'B' max_volume": (False, 0.0, 140.0)}
    assert {c.name for c in res.constraints} == set(expected)
    for name, (binding, price, slack) in expected.items():
        con = res.constraint(name)
        assert con.binding is binding, name
        assert con.shadow_price == pytest.approx(price, abs=1e-9), name
        assert con.slack == pytest.approx(slack, abs=1e-9), name
    assert res.constraint("channel 'C' min_volume").activity == pytest.approx(10)
    # highest price first; the tie between the budget and A's max keeps the constraint order
    assert [c.name for c in res.binding()] == ["channel 'C' min_volume", "total_budget", "channel 'A' max_volume"]
    assert res.seconds > 0


def test_tiers_fill_the_better_tiers_first_and_price_their_widths() -> None:
    # email: cost 1, tiers 0-100 at 5, 100-300 at 3, 300-600 at 1.5; display: cost 1, flat return 2, no cap;
    # budget 500. Marginal returns in order: email tier 1 (5), tier 2 (3), display (2), email tier 3 (1.5), so
    # email takes 300 (tiers 1 and 2 full, tier 3 empty) and display the other 200.
    # Return 5*100 + 3*200 + 2*200 = 1,500. Shadow prices: budget 2 (display is the marginal use), tier 1 width
    # 5 - 2 = 3, tier 2 width 3 - 2 = 1, tier 3 (not full) 0.
    email = channel("email", 1, tiers=[{"up_to": 100, "return_per_unit": 5}, {"up_to": 300, "return_per_unit": 3},
                                       {"up_to": 600, "return_per_unit": 1.5}])
    cfg = BudgetConfig(channels=[email, channel("display", 1, return_per_unit=2)], total_budget=500)
    res = solve_budget(cfg)
    assert res.objective == pytest.approx(1500)
    tiers = [res.constraint(f"channel 'email' tier {k} (up_to {u})") for k, u in ((1, 100), (2, 300), (3, 600))]
    assert [t.activity for t in tiers] == pytest.approx([100, 200, 0], abs=1e-9)
    assert [t.limit for t in tiers] == pytest.approx([100, 200, 300])
    assert [t.binding for t in tiers] == [True, True, False]
    assert [t.shadow_price for t in tiers] == pytest.approx([3, 1, 0], abs=1e-9)
    assert res.constraint("total_budget").shadow_price == pytest.approx(2)
    totals = {row["channel"]: row for row in res.channels.to_pylist()}
    assert totals["email"]["volume"] == pytest.approx(300)
    assert totals["email"]["return"] == pytest.approx(1100)

    # Email alone with budget 250: tier 1 full, 150 in tier 2, nothing in tier 3 (its own worse return would
    # never be preferred: concavity makes "fill in order" optimal). Budget shadow price = tier 2's return 3.
    alone = solve_budget(BudgetConfig(channels=[email], total_budget=250))
    assert alone.objective == pytest.approx(5 * 100 + 3 * 150)
    fills = [c.activity for c in alone.constraints if c.kind == "tier"]
    assert fills == pytest.approx([100, 150, 0], abs=1e-9)
    assert alone.constraint("total_budget").shadow_price == pytest.approx(3)


def test_segment_caps_split_a_channel_and_price_the_cap() -> None:
    # search: cost 1, return 3 per unit on 'young', 1 on 'old'; 'young' capped at 100; budget 300, min 250 on the
    # channel's total. Optimum: young 100 (return 300), old 200 (return 200) = 500. The min (250 <= 300) is slack.
    # Shadow prices: budget 1 (the marginal unit goes to 'old'), young's cap 3 - 1 = 2.
    cfg = BudgetConfig(channels=[channel("search", 1, return_per_unit={"young": 3, "old": 1}, min_volume=250)],
                       segments=["young", "old"], segment_max_volume={"young": 100}, total_budget=300)
    res = solve_budget(cfg)
    rows = {(r["channel"], r["segment"]): r for r in res.allocation.to_pylist()}
    assert rows["search", "young"]["volume"] == pytest.approx(100)
    assert rows["search", "old"]["volume"] == pytest.approx(200)
    assert rows["search", "old"]["return"] == pytest.approx(200)
    assert res.objective == pytest.approx(500)
    assert res.constraint("segment 'young' max_volume").shadow_price == pytest.approx(2)
    assert res.constraint("total_budget").shadow_price == pytest.approx(1)
    assert not res.constraint("channel 'search' min_volume").binding
    assert res.constraint("channel 'search' min_volume").slack == pytest.approx(50)


def test_profit_objective_stops_where_returns_no_longer_cover_cost() -> None:
    # cost 1 per unit; tiers return 3 up to 100, then 0.5 up to 400. Profit: tier 1 earns 2 per unit, tier 2
    # loses 0.5, so only tier 1 is bought though the budget (1,000) would allow 400. Profit 200, budget slack.
    cfg = BudgetConfig(channels=[channel("email", 1, tiers=[{"up_to": 100, "return_per_unit": 3},
                                                            {"up_to": 400, "return_per_unit": 0.5}])],
                       total_budget=1000, objective="profit")
    res = solve_budget(cfg)
    assert res.objective == pytest.approx(200)
    assert res.total_spend == pytest.approx(100)
    assert not res.constraint("total_budget").binding
    assert res.constraint("total_budget").shadow_price == pytest.approx(0, abs=1e-9)
    assert res.constraint("channel 'email' tier 1 (up_to 100)").shadow_price == pytest.approx(2)


def solve_dual(lp: BudgetLP) -> float:
    """The dual of `min c x, A x <= b, E x = 0, 0 <= x <= u`, solved separately by interior point:
    `max -b y - u w` over `y, w >= 0`, z free, with `c + A^T y + w - E^T z >= 0` (w only on finite u).
    Returns the dual's optimum, which strong duality says equals the primal's maximised objective."""
    m, n = lp.A_ub.shape
    finite = np.flatnonzero(np.isfinite(lp.bounds[:, 1]))
    W = sp.csr_array((np.ones(len(finite)), (finite, np.arange(len(finite)))), shape=(n, len(finite)))
    p = lp.A_eq.shape[0]
    # -A^T y - W w + E^T z <= c
    A = sp.hstack([-lp.A_ub.T, -W, lp.A_eq.T], format="csr")
    cost = np.concatenate([lp.b_ub, lp.bounds[finite, 1], np.zeros(p)])
    bounds = [(0, None)] * (m + len(finite)) + [(None, None)] * p
    res = linprog(cost, A_ub=A, b_ub=lp.c, bounds=bounds, method="highs-ipm")
    assert res.status == 0, res.message
    return float(res.fun)


@pytest.mark.parametrize(("channels", "segments", "seed", "objective"),
                         [(12, 0, 0, "return"), (25, 3, 1, "return"), (40, 4, 2, "profit"), (60, 2, 3, "return"),
                          (30, 5, 4, "profit")])
def test_random_optimum_equals_the_independently_solved_dual(channels: int, segments: int, seed: int,
                                                             objective: str) -> None:
    cfg = random_problem(channels, segments, seed, objective=objective)  # type: ignore[arg-type]
    res = solve_budget(cfg)
    lp = build_lp(cfg)
    dual = solve_dual(lp)
    assert res.objective == pytest.approx(dual, rel=1e-7)

    # The reported shadow prices are themselves a dual certificate: nonnegative, and b.y + u.w (the dual
    # objective of the reported prices, rows in lp order then tiers) equals the optimum.
    rows = [c for c in res.constraints if c.kind != "tier"]
    tiers = [c for c in res.constraints if c.kind == "tier"]
    y = np.array([c.shadow_price for c in rows])
    w = np.array([c.shadow_price for c in tiers])
    assert (y >= -1e-7).all() and (w >= -1e-7).all()
    assert float(lp.b_ub @ y + lp.bounds[lp.n_volume:, 1] @ w) == pytest.approx(res.objective, rel=1e-6)
    # and complementary slackness: a constraint with slack has no price
    for con in res.constraints:
        if con.slack > 1e-3 * max(1.0, abs(con.limit)):
            assert con.shadow_price == pytest.approx(0, abs=1e-6), con.name

    # the allocation is consistent with the totals and respects the budget
    assert sum(res.channels.column("spend").to_pylist()) == pytest.approx(res.total_spend)
    assert res.allocation.num_rows == channels * max(1, segments)
    assert res.total_spend <= cfg.total_budget * (1 + 1e-9)
    expected = res.total_return - (res.total_spend if objective == "profit" else 0.0)
    assert res.objective == pytest.approx(expected, rel=1e-9)


def test_tiny_lp_optimum_equals_brute_force_vertex_enumeration() -> None:
    # Two flat channels, budget and a volume cap: every vertex of the 2-D feasible polygon is the intersection of
    # two of its boundary lines; the best feasible one must equal the LP optimum.
    cfg = BudgetConfig(channels=[channel("a", 3, return_per_unit=7, max_volume=40),
                                 channel("b", 1, return_per_unit=2, min_volume=5)],
                       total_budget=150, max_total_volume=80)
    lines = [((3, 1), 150), ((1, 1), 80), ((1, 0), 40), ((0, 1), 5), ((1, 0), 0), ((0, 1), 0)]
    best = -np.inf
    for i in range(len(lines)):
        for j in range(i + 1, len(lines)):
            M = np.array([lines[i][0], lines[j][0]], dtype=float)
            if abs(np.linalg.det(M)) < 1e-12:
                continue
            a, b = np.linalg.solve(M, [lines[i][1], lines[j][1]])
            if min(a, b) >= -1e-9 and 3 * a + b <= 150 + 1e-9 and a + b <= 80 + 1e-9 and a <= 40 + 1e-9 \
                    and b >= 5 - 1e-9:
                best = max(best, 7 * a + 2 * b)
    assert solve_budget(cfg).objective == pytest.approx(best)


def infeasible_budget_config(**overrides: object) -> BudgetConfig:
    """tv and radio's min volumes cost 5,000 + 4,000 > 8,000; email has a min and a max of its own but fits in
    any case (email + tv = 5,100, email + radio = 4,100), the volume cap is far away."""
    fields: dict[str, object] = {
        "channels": [channel("tv", 5, return_per_unit=6, min_volume=1000),
                     channel("radio", 5, return_per_unit=2, min_volume=800),
                     channel("email", 1, return_per_unit=4, min_volume=100, max_volume=1000)],
        "total_budget": 8000, "max_total_volume": 10_000}
    return BudgetConfig.model_validate({**fields, **overrides})


def test_infeasible_budget_names_exactly_the_conflicting_min_volumes() -> None:
    with pytest.raises(BudgetInfeasible) as err:
        solve_budget(infeasible_budget_config())
    assert set(err.value.conflict) == {"total_budget", "channel 'tv' min_volume", "channel 'radio' min_volume"}
    message = str(err.value)
    assert message == ("infeasible: channel 'tv' min_volume 1,000 (cost 5,000) and channel 'radio' min_volume 800 "
                       "(cost 4,000) together cost 9,000 > total_budget 8,000; lower a min_volume or raise "
                       "total_budget")
    assert "email" not in message and "max_total_volume" not in message
    # irreducible: relaxing any one member makes the rest feasible
    chans = infeasible_budget_config().channels
    solve_budget(infeasible_budget_config(total_budget=None))
    for i in (0, 1):
        relaxed = [c.model_copy(update={"min_volume": 0.0}) if k == i else c for k, c in enumerate(chans)]
        solve_budget(infeasible_budget_config(channels=relaxed))


def test_infeasible_volume_and_segment_caps_name_the_caps_that_conflict() -> None:
    with pytest.raises(BudgetInfeasible) as err:
        solve_budget(infeasible_budget_config(total_budget=None, max_total_volume=1500))
    assert set(err.value.conflict) == {"max_total_volume", "channel 'tv' min_volume", "channel 'radio' min_volume"}
    assert "need volume 1,800 > max_total_volume 1,500" in str(err.value)

    # both segments capped, 500 + 1,000 < 1,800 needed by tv and radio; email's 100 fits with either alone
    cfg = infeasible_budget_config(total_budget=None, max_total_volume=None, segments=["young", "old"],
                                   segment_max_volume={"young": 500, "old": 1000})
    with pytest.raises(BudgetInfeasible) as err:
        solve_budget(cfg)
    assert set(err.value.conflict) == {"channel 'tv' min_volume", "channel 'radio' min_volume",
                                       "segment 'young' max_volume", "segment 'old' max_volume"}
    assert "1,800 > 1,500" in str(err.value) and "raise a segment max_volume" in str(err.value)


def test_profit_without_budget_or_cap_is_reported_unbounded_naming_the_channel() -> None:
    cfg = BudgetConfig(channels=[channel("tv", 5, return_per_unit=6), channel("radio", 5, return_per_unit=2)],
                       objective="profit")
    with pytest.raises(BudgetUnbounded, match=r"channel 'tv' \(profit 1 per unit\)") as err:
        solve_budget(cfg)
    assert "radio" not in str(err.value)  # radio loses money per unit: buying none is optimal
    capped = cfg.model_copy(update={"channels": [channel("tv", 5, return_per_unit=6, max_volume=10),
                                                 channel("radio", 5, return_per_unit=2)]})
    assert solve_budget(capped).objective == pytest.approx(10)


def test_increasing_tier_returns_are_rejected_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="must not increase"):
        channel("email", 1, tiers=[{"up_to": 100, "return_per_unit": 2}, {"up_to": 200, "return_per_unit": 3}])
    with pytest.raises(ValidationError, match="must be above"):
        channel("email", 1, tiers=[{"up_to": 100, "return_per_unit": 2}, {"up_to": 50, "return_per_unit": 1}])


@pytest.mark.parametrize(("build", "match"), [
    (lambda: BudgetConfig.model_validate({"channels": [{"name": "a", "unit_cost": 1, "return_per_unit": 1}],
                                          "budget": 10}), "budget"),
    (lambda: ChannelConfig.model_validate({"name": "a", "unit_cost": 1, "return_per_unit": 1, "roi": 2}), "roi"),
    (lambda: TierConfig.model_validate({"up_to": 1, "return_per_unit": 1, "from": 0}), "from"),
    (lambda: BudgetConfig(channels=[channel("a", 1, return_per_unit=1), channel("a", 2, return_per_unit=1)]),
     "duplicate channel names"),
    (lambda: channel("a", 1, return_per_unit=1, min_volume=5, max_volume=3), "min_volume 5 is above max_volume 3"),
    (lambda: channel("a", 1), "exactly one of 'return_per_unit' or 'tiers'"),
    (lambda: BudgetConfig(channels=[channel("a", 1, return_per_unit={"young": 1, "kids": 2})],
                          segments=["young"]), r"unknown segments \['kids'\]"),
    (lambda: BudgetConfig(channels=[channel("a", 1, return_per_unit={"young": 1})], segments=["young", "old"]),
     r"no value for segments \['old'\]"),
    (lambda: BudgetConfig(channels=[channel("a", 1, return_per_unit=1)], segments=["young"],
                          segment_max_volume={"old": 5}), "segment_max_volume names unknown segments"),
])
def test_invalid_configs_are_rejected_naming_the_field(build: object, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        build()  # type: ignore[operator]


def test_thousand_channels_by_ten_segments_solves_in_well_under_a_second() -> None:
    cfg = random_problem(1000, 10, seed=0)
    start = time.perf_counter()
    res = solve_budget(cfg)
    seconds = time.perf_counter() - start
    print(f"1,000 channels x 10 segments: {seconds * 1000:.0f} ms (solve_budget reports {res.seconds * 1000:.0f} ms)")
    assert seconds < 5
    assert res.allocation.num_rows == 10_000
    assert res.constraint("total_budget").binding
    assert res.total_spend == pytest.approx(cfg.total_budget, rel=1e-6)
