"""Budget allocation across marketing channels (and optionally customer segments) as a linear program solved by
HiGHS through `scipy.optimize.linprog`.

Formulation. For C channels and S segments (S = 1 when no segments are configured) the decision variables are

- `v[c, s] >= 0`: the volume (impressions, sends, clicks bought: the unit the channel is priced in) of channel c
  spent on segment s; spend is `unit_cost[c] * v[c, s]`;
- `t[c, k]` for a channel with diminishing-return tiers: the volume that falls into tier k, with the variable
  bound `0 <= t[c, k] <= width[k]` (`width[k] = up_to[k] - up_to[k-1]`) and the linking equality
  `sum_s v[c, s] = sum_k t[c, k]`, so the tiers split the channel's total volume.

The objective (maximised) is the return, `sum r[c, s] v[c, s] + sum rt[c, k] t[c, k]` (r for flat channels,
rt for tiered ones), or the profit, which subtracts the spend. The constraints are the total budget
(`sum cost v <= total_budget`), the total volume cap, each channel's min and max volume on its total across
segments, each segment's volume cap, and the tier widths above.

Why tiers must be concave. The LP does not know that tier 2 may only fill once tier 1 is full: it is free to put
volume into any tier. When the per-unit return never increases from one tier to the next, filling the better
tier first is always at least as good, so the LP's optimum is exactly the piecewise-linear curve the tiers
describe. With an increasing return the LP would skip the cheap tier and "buy" the better one directly, which
the real channel does not allow; modelling that needs integer variables. `ChannelConfig` therefore rejects
tiers whose return rises.

Shadow prices. Every reported constraint carries `shadow_price`: the objective gained per unit by which the
constraint is relaxed, from HiGHS's dual values. Relaxing means raising a cap (the budget, a max volume, a
segment cap, a tier's width) or lowering a min volume, so the price is >= 0: positive where relaxing would help,
0 where the constraint is not what holds the objective back. For `total_budget` under the return objective it
is the return one more unit of money buys at the margin (the marginal ROI); for a min volume it is what the
forced volume costs in objective per unit. They are local: valid as long as the set of binding constraints does
not change, and not unique when the optimum is degenerate (then HiGHS reports one valid set).

Infeasibility. When no allocation satisfies every constraint, `solve_budget` raises `BudgetInfeasible` naming an
irreducible conflicting subset of the constraints (a deletion filter over the constraint rows, sped up by the
dual of an elastic LP, see `_conflict`), and what to relax. Without a total budget a profitable or rewarding
channel with no cap makes the problem unbounded: `BudgetUnbounded` names it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from scipy.optimize import linprog

from analytics.config import BudgetConfig, ChannelConfig

# Relative tolerance under which a constraint's slack counts as zero (binding), and a dual value as zero.
BINDING_TOL = 1e-6
DUAL_TOL = 1e-9


# --------------------------------------------------------------------------------------------------- the LP


Kind = Literal["total_budget", "max_total_volume", "min_volume", "max_volume", "segment_max_volume", "tier"]


@dataclass(frozen=True)
class BudgetLP:
    """The LP in linprog's form: minimise `c @ x` subject to `A_ub @ x <= b_ub`, `A_eq @ x == b_eq` and
    `bounds[:, 0] <= x <= bounds[:, 1]` (c is the negated objective, since linprog minimises).

    x is `v` (C*S volumes, channel-major: index `c * S + s`) followed by the tier volumes `t`. Each row of A_ub is
    one named constraint (`row_names`, `row_kinds`, `row_index`: the channel or segment index, -1 for the totals);
    min volumes are stored negated (`-sum v <= -min`), so every row is a `<=`.
    """

    c: np.ndarray
    A_ub: sp.csr_array
    b_ub: np.ndarray
    A_eq: sp.csr_array
    b_eq: np.ndarray
    bounds: np.ndarray
    row_names: tuple[str, ...]
    row_kinds: tuple[Kind, ...]
    row_index: np.ndarray
    n_channels: int
    n_segments: int
    tier_channel: np.ndarray  # channel index of each tier variable
    tier_number: np.ndarray  # 1-based tier number within its channel
    tier_names: tuple[str, ...]

    @property
    def n_volume(self) -> int:
        return self.n_channels * self.n_segments


def _fmt(x: float) -> str:
    """A number for a message: thousands separators, no trailing '.0' on whole numbers."""
    if abs(x - round(x)) <= 1e-9 * max(1.0, abs(x)) and abs(x) < 1e15:
        return f"{round(x):,}"
    return f"{x:,.2f}"


def build_lp(cfg: BudgetConfig) -> BudgetLP:
    """Build the LP's arrays from the config: one pass over the channels to read their numbers, the rest with
    numpy index arithmetic and one sparse assembly, so 10,000 volume variables take milliseconds."""
    chans = cfg.channels
    n_c, segments = len(chans), cfg.segments
    n_s = max(1, len(segments))
    n_v = n_c * n_s
    cost = np.array([ch.unit_cost for ch in chans], dtype=float)

    # flat per-(channel, segment) returns; tiered channels get theirs from the tier variables
    ret = np.zeros((n_c, n_s))
    for i, ch in enumerate(chans):
        r = ch.return_per_unit
        if isinstance(r, dict):
            ret[i] = [r[s] for s in segments]
        elif r is not None:
            ret[i] = r
    tier_counts = np.array([len(ch.tiers) for ch in chans], dtype=np.int64)
    tier_channel = np.repeat(np.arange(n_c), tier_counts)
    up_to = np.array([t.up_to for ch in chans for t in ch.tiers], dtype=float)
    tier_ret = np.array([t.return_per_unit for ch in chans for t in ch.tiers], dtype=float)
    tier_start = np.concatenate([[0], np.cumsum(tier_counts)])[:-1]
    tier_number = np.arange(len(tier_channel)) - tier_start[tier_channel] + 1
    prev_up_to = np.where(tier_number > 1, np.concatenate([[0.0], up_to])[:-1], 0.0)
    width = up_to - prev_up_to
    n_t = len(tier_channel)

    profit = cfg.objective == "profit"
    gain_v = (ret - (cost[:, None] if profit else 0.0)).ravel()
    c = -np.concatenate([gain_v, tier_ret])

    v_idx = np.arange(n_v)
    v_chan = np.repeat(np.arange(n_c), n_s)
    v_seg = np.tile(np.arange(n_s), n_c)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    b: list[np.ndarray] = []
    names: list[str] = []
    kinds: list[Kind] = []
    index: list[np.ndarray] = []
    n_rows = 0

    def block(row_of_var: np.ndarray, data: np.ndarray, rhs: np.ndarray, block_names: Sequence[str],
              kind: Kind, owner: np.ndarray) -> None:
        """Append len(rhs) rows; volume variable j goes to row `row_of_var[j]` (-1: not in this block)."""
        nonlocal n_rows
        keep = row_of_var >= 0
        rows.append(row_of_var[keep] + n_rows)
        cols.append(v_idx[keep])
        vals.append(data[keep])
        b.append(rhs)
        names.extend(block_names)
        kinds.extend([kind] * len(rhs))
        index.append(owner)
        n_rows += len(rhs)

    one = np.ones(n_v)
    if cfg.total_budget is not None:
        block(np.zeros(n_v, dtype=np.int64), cost[v_chan], np.array([cfg.total_budget]), ["total_budget"],
              "total_budget", np.array([-1]))
    if cfg.max_total_volume is not None:
        block(np.zeros(n_v, dtype=np.int64), one, np.array([cfg.max_total_volume]), ["max_total_volume"],
              "max_total_volume", np.array([-1]))
    mins = np.array([ch.min_volume for ch in chans], dtype=float)
    has_min = np.flatnonzero(mins > 0)
    row_of = np.full(n_c, -1, dtype=np.int64)
    row_of[has_min] = np.arange(len(has_min))
    block(row_of[v_chan], -one, -mins[has_min], [f"channel '{chans[i].name}' min_volume" for i in has_min],
          "min_volume", has_min)
    has_max = np.array([i for i, ch in enumerate(chans) if ch.max_volume is not None], dtype=np.int64)
    row_of = np.full(n_c, -1, dtype=np.int64)
    row_of[has_max] = np.arange(len(has_max))
    maxes = np.array([chans[i].max_volume for i in has_max], dtype=float)
    block(row_of[v_chan], one, maxes, [f"channel '{chans[i].name}' max_volume" for i in has_max],
          "max_volume", has_max)
    capped = np.array([j for j, s in enumerate(segments) if s in cfg.segment_max_volume], dtype=np.int64)
    row_of = np.full(n_s, -1, dtype=np.int64)
    row_of[capped] = np.arange(len(capped))
    caps = np.array([cfg.segment_max_volume[segments[j]] for j in capped], dtype=float)
    block(row_of[v_seg], one, caps, [f"segment '{segments[j]}' max_volume" for j in capped],
          "segment_max_volume", capped)

    n = n_v + n_t
    A_ub = sp.csr_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, n))

    # linking rows: sum_s v[c, s] - sum_k t[c, k] = 0, one per tiered channel
    tiered = np.flatnonzero(tier_counts > 0)
    eq_of = np.full(n_c, -1, dtype=np.int64)
    eq_of[tiered] = np.arange(len(tiered))
    v_keep = eq_of[v_chan] >= 0
    eq_rows = np.concatenate([eq_of[v_chan][v_keep], eq_of[tier_channel]])
    eq_cols = np.concatenate([v_idx[v_keep], n_v + np.arange(n_t)])
    eq_vals = np.concatenate([np.ones(int(v_keep.sum())), -np.ones(n_t)])
    A_eq = sp.csr_array((eq_vals, (eq_rows, eq_cols)), shape=(len(tiered), n))

    bounds = np.zeros((n, 2))
    bounds[:n_v, 1] = np.inf
    bounds[n_v:, 1] = width
    tier_names = tuple(f"channel '{chans[ci].name}' tier {k} (up_to {_fmt(u)})"
                       for ci, k, u in zip(tier_channel.tolist(), tier_number.tolist(), up_to.tolist()))
    return BudgetLP(c=c, A_ub=A_ub, b_ub=np.concatenate(b), A_eq=A_eq, b_eq=np.zeros(len(tiered)), bounds=bounds,
                    row_names=tuple(names), row_kinds=tuple(kinds), row_index=np.concatenate(index),
                    n_channels=n_c, n_segments=n_s, tier_channel=tier_channel, tier_number=tier_number,
                    tier_names=tier_names)


# --------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BudgetConstraint:
    """One constraint at the optimum. `limit` and `activity` are in the constraint's own terms (a min volume's
    limit is the min, its activity the channel's volume; a tier's limit is its width); `slack` is how far the
    activity is from the limit on the allowed side; `shadow_price` is the objective gained per unit of relaxation
    (raising a cap, lowering a min), >= 0."""

    name: str
    kind: Kind
    limit: float
    activity: float
    slack: float
    binding: bool
    shadow_price: float


@dataclass(frozen=True)
class BudgetResult:
    """The optimal allocation. `allocation` has one row per (channel, segment) pair (segment null without
    segments): volume, spend, return (a tiered channel's return is shared across its segments in proportion to
    volume, since tiers apply to the channel's total); `channels` has one row per channel with the same columns
    totalled. `objective` is the maximised return or profit."""

    allocation: pa.Table
    channels: pa.Table
    objective: float
    total_return: float
    total_spend: float
    total_volume: float
    constraints: tuple[BudgetConstraint, ...]
    seconds: float

    def constraint(self, name: str) -> BudgetConstraint:
        """The constraint called `name` (as in the `constraints` list); KeyError naming the known ones if absent."""
        for con in self.constraints:
            if con.name == name:
                return con
        raise KeyError(f"no constraint {name!r}; constraints are {[c.name for c in self.constraints]}")

    def binding(self) -> list[BudgetConstraint]:
        """The binding constraints, highest shadow price first: what holds the objective back."""
        return sorted((c for c in self.constraints if c.binding), key=lambda c: -c.shadow_price)


class BudgetInfeasible(ValueError):
    """No allocation satisfies every constraint; `conflict` holds the names of an irreducible conflicting set
    (drop any one of them and the rest can be met)."""

    def __init__(self, message: str, conflict: Sequence[str]) -> None:
        super().__init__(message)
        self.conflict = tuple(conflict)


class BudgetUnbounded(ValueError):
    """The objective can grow without limit: a channel worth buying has no cap and there is no total budget."""


# --------------------------------------------------------------------------------------------------- solving


def _linprog(c: np.ndarray, A_ub: sp.csr_array, b_ub: np.ndarray, bounds: np.ndarray,
             A_eq: sp.csr_array) -> object:
    """linprog with empty constraint blocks passed as None (HiGHS wants no zero-row matrices)."""
    has_ub = A_ub.shape[0] > 0
    has_eq = A_eq.shape[0] > 0
    return linprog(c, A_ub=A_ub if has_ub else None, b_ub=b_ub if has_ub else None,
                   A_eq=A_eq if has_eq else None, b_eq=np.zeros(A_eq.shape[0]) if has_eq else None,
                   bounds=bounds, method="highs")


def _elastic(lp: BudgetLP, keep: np.ndarray) -> tuple[bool, np.ndarray]:
    """Feasibility of the rows `keep` (plus the tier bounds and linking rows, always kept), by the elastic LP:
    minimise the total violation `sum e` with `A x - e <= b`, `e >= 0`. Returns (infeasible, support): the
    support is the kept rows with a nonzero dual. Those rows alone are still infeasible (the elastic dual stays
    feasible, with the same positive value, when the rows with zero dual are dropped), which lets the deletion
    filter discard every row outside it in one step."""
    rows = np.flatnonzero(keep)
    m = len(rows)
    n = lp.A_ub.shape[1]
    A = sp.hstack([lp.A_ub[rows], -sp.eye_array(m)], format="csr")
    A_eq = sp.hstack([lp.A_eq, sp.csr_array((lp.A_eq.shape[0], m))], format="csr")
    bounds = np.vstack([lp.bounds, np.column_stack([np.zeros(m), np.full(m, np.inf)])])
    c = np.concatenate([np.zeros(n), np.ones(m)])
    res = _linprog(c, A, lp.b_ub[rows], bounds, A_eq)
    if res.status != 0:
        raise RuntimeError(f"the elastic feasibility LP failed: {res.message}")
    tol = 1e-7 * max(1.0, float(np.abs(lp.b_ub[rows]).max(initial=0.0)))
    support = np.zeros_like(keep)
    if m:
        support[rows[np.abs(res.ineqlin.marginals) > DUAL_TOL]] = True
    return bool(res.fun > tol), support


def _conflict(lp: BudgetLP) -> list[int]:
    """An irreducible infeasible subset of the constraint rows, by the deletion filter: drop each row in turn and
    keep it dropped while the rest stays infeasible. Each infeasibility test also shrinks the candidates to the
    elastic LP's dual support, so a conflict among a few rows of a large problem costs a few solves, not one per
    row. The result is irreducible: a row is kept only when the candidates without it were feasible, and the
    candidates only shrink afterwards."""
    infeasible, current = _elastic(lp, np.ones(len(lp.b_ub), dtype=bool))
    if not infeasible:
        return []
    for row in np.flatnonzero(current):
        if not current[row]:
            continue
        trial = current.copy()
        trial[row] = False
        infeasible, support = _elastic(lp, trial)
        if infeasible:
            current = support
    return np.flatnonzero(current).tolist()


def _joined(parts: list[str], limit: int = 8) -> str:
    """'a and b and c', or the first `limit` and a count of the rest: a conflict among hundreds of min volumes
    must still read as one line."""
    if len(parts) <= limit:
        return " and ".join(parts)
    return " and ".join(parts[:limit]) + f" and {len(parts) - limit} more min_volume constraints"


def _infeasible_message(cfg: BudgetConfig, lp: BudgetLP, rows: list[int]) -> str:
    """Say which constraints conflict, why (what they need together against what the cap allows) and what to
    relax. The constraint structure (min volumes against caps on sums) means an irreducible conflict is some
    min volumes against the budget, the total volume cap, or the caps of all segments."""
    chans = cfg.channels
    kinds = {lp.row_kinds[r] for r in rows}
    mins = [int(lp.row_index[r]) for r in rows if lp.row_kinds[r] == "min_volume"]
    volume = sum(chans[i].min_volume for i in mins)
    together = "together " if len(mins) > 1 else ""
    if kinds == {"min_volume", "total_budget"}:
        parts = [f"channel '{chans[i].name}' min_volume {_fmt(chans[i].min_volume)} "
                 f"(cost {_fmt(chans[i].min_volume * chans[i].unit_cost)})" for i in mins]
        need = sum(chans[i].min_volume * chans[i].unit_cost for i in mins)
        verb = "cost" if len(mins) > 1 else "costs"
        return (f"infeasible: {_joined(parts)} {together}{verb} {_fmt(need)} > total_budget "
                f"{_fmt(cfg.total_budget or 0.0)}; lower a min_volume or raise total_budget")
    parts = [f"channel '{chans[i].name}' min_volume {_fmt(chans[i].min_volume)}" for i in mins]
    if kinds == {"min_volume", "max_total_volume"}:
        return (f"infeasible: {_joined(parts)} {together}need volume {_fmt(volume)} > max_total_volume "
                f"{_fmt(cfg.max_total_volume or 0.0)}; lower a min_volume or raise max_total_volume")
    if kinds == {"min_volume", "segment_max_volume"}:
        segs = [cfg.segments[int(lp.row_index[r])] for r in rows if lp.row_kinds[r] == "segment_max_volume"]
        cap = sum(cfg.segment_max_volume[s] for s in segs)
        names = ", ".join(f"'{s}' {_fmt(cfg.segment_max_volume[s])}" for s in segs)
        return (f"infeasible: {_joined(parts)} {together}need volume {_fmt(volume)} > {_fmt(cap)}, what the "
                f"segment max_volume caps allow ({names}); lower a min_volume or raise a segment max_volume")
    listed = "; ".join(f"{lp.row_names[r]} {_fmt(abs(float(lp.b_ub[r])))}" for r in rows)
    return f"infeasible: these constraints conflict: {listed}; relax one of them"


def _unbounded_message(cfg: BudgetConfig, lp: BudgetLP) -> str:
    """Name the channels (and segments) whose volume can grow without bound while each unit adds to the
    objective: no total budget, no total volume cap, no channel max or tiers, no cap on the segment."""
    gain = -lp.c[: lp.n_volume].reshape(lp.n_channels, lp.n_segments)
    culprits = []
    for i, ch in enumerate(cfg.channels):
        if ch.tiers or ch.max_volume is not None:
            continue
        for j in range(lp.n_segments):
            seg = cfg.segments[j] if cfg.segments else None
            if gain[i, j] > 0 and (seg is None or seg not in cfg.segment_max_volume):
                where = f" in segment '{seg}'" if seg else ""
                culprits.append(f"channel '{ch.name}'{where} ({cfg.objective} {_fmt(gain[i, j])} per unit)")
    if cfg.total_budget is None and cfg.max_total_volume is None and culprits:
        return (f"unbounded: objective '{cfg.objective}' grows without limit through {', '.join(culprits[:5])}"
                f"{' and more' if len(culprits) > 5 else ''}, with no cap; set total_budget, "
                f"max_total_volume or a max_volume")
    return f"unbounded: objective '{cfg.objective}' grows without limit; set total_budget or max_total_volume"


def solve_budget(cfg: BudgetConfig) -> BudgetResult:
    """Solve the allocation LP with HiGHS and report the allocation, every constraint's slack and shadow price.

    Raises `BudgetInfeasible` (naming an irreducible set of conflicting constraints) or `BudgetUnbounded`.
    """
    start = time.perf_counter()
    lp = build_lp(cfg)
    res = _linprog(lp.c, lp.A_ub, lp.b_ub, lp.bounds, lp.A_eq)
    if res.status == 3:
        raise BudgetUnbounded(_unbounded_message(cfg, lp))
    if res.status == 2:
        rows = _conflict(lp)
        if not rows:  # HiGHS's presolve may report "infeasible or unbounded"; the elastic LP found it feasible
            raise BudgetUnbounded(_unbounded_message(cfg, lp))
        raise BudgetInfeasible(_infeasible_message(cfg, lp, rows), [lp.row_names[r] for r in rows])
    if res.status != 0:
        raise RuntimeError(f"HiGHS did not solve the budget LP: {res.message}")

    x = np.maximum(res.x, 0.0)
    n_v, n_c, n_s = lp.n_volume, lp.n_channels, lp.n_segments
    chans = cfg.channels
    vol = x[:n_v].reshape(n_c, n_s)
    cost = np.array([ch.unit_cost for ch in chans])
    spend = vol * cost[:, None]
    flat_ret = np.zeros((n_c, n_s))
    for i, ch in enumerate(chans):
        r = ch.return_per_unit
        if r is not None:
            flat_ret[i] = [r[s] for s in cfg.segments] if isinstance(r, dict) else r
    ret = vol * flat_ret
    tier_ret = np.array([t.return_per_unit for ch in chans for t in ch.tiers], dtype=float)
    tiered_total = np.bincount(lp.tier_channel, weights=x[n_v:] * tier_ret, minlength=n_c)
    chan_vol = vol.sum(axis=1)
    share = np.divide(vol, chan_vol[:, None], out=np.zeros_like(vol), where=chan_vol[:, None] > 0)
    ret += share * tiered_total[:, None]

    segment_col = np.tile(np.array(cfg.segments, dtype=object), n_c) if cfg.segments else [None] * n_v
    allocation = pa.table({
        "channel": pa.array(np.repeat([ch.name for ch in chans], n_s), pa.string()),
        "segment": pa.array(segment_col, pa.string()),
        "volume": vol.ravel(), "spend": spend.ravel(), "return": ret.ravel()})
    channels = pa.table({"channel": pa.array([ch.name for ch in chans], pa.string()), "volume": chan_vol,
                         "spend": spend.sum(axis=1), "return": ret.sum(axis=1)})

    constraints: list[BudgetConstraint] = []
    if len(lp.b_ub):
        ax = lp.A_ub @ x
        sense = np.array([-1.0 if k == "min_volume" else 1.0 for k in lp.row_kinds])
        slack = lp.b_ub - ax
        price = -res.ineqlin.marginals
        for r, name in enumerate(lp.row_names):
            limit = float(sense[r] * lp.b_ub[r])
            constraints.append(BudgetConstraint(
                name=name, kind=lp.row_kinds[r], limit=limit, activity=float(sense[r] * ax[r]),
                slack=float(slack[r]), binding=bool(slack[r] <= BINDING_TOL * max(1.0, abs(limit))),
                shadow_price=float(price[r])))
    widths = lp.bounds[n_v:, 1]
    tier_price = -res.upper.marginals[n_v:]
    for k, name in enumerate(lp.tier_names):
        fill, width = float(x[n_v + k]), float(widths[k])
        constraints.append(BudgetConstraint(
            name=name, kind="tier", limit=width, activity=fill, slack=width - fill,
            binding=bool(width - fill <= BINDING_TOL * max(1.0, width)), shadow_price=float(tier_price[k])))

    total_spend = float(spend.sum())
    total_return = float(ret.sum())
    return BudgetResult(allocation=allocation, channels=channels, objective=float(-res.fun),
                        total_return=total_return, total_spend=total_spend, total_volume=float(vol.sum()),
                        constraints=tuple(constraints), seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------- benchmark


def random_problem(channels: int, segments: int, seed: int,
                   objective: Literal["return", "profit"] = "return") -> BudgetConfig:
    """A feasible random problem of realistic shape, for benchmarks and property tests: unit costs log-normal
    around 2 (cents to tens per unit), returns at an ROI of 0.5 to 2.5 with per-segment variation, a third of
    the channels with two or three diminishing tiers, a fifth with a min volume, half with a max volume, the
    budget a third of what buying every channel's reference volume would cost (so it binds), and caps on half
    the segments. Feasible by construction: the min volumes cost at most a tenth of the budget, and at least one
    segment is uncapped."""
    rng = np.random.default_rng(seed)
    seg_names = [f"seg{j}" for j in range(segments)]
    cost = np.round(rng.lognormal(np.log(2.0), 1.0, channels), 4) + 0.01
    roi = rng.uniform(0.5, 2.5, channels)
    ref_volume = rng.uniform(1_000, 100_000, channels)
    budget = float((cost * ref_volume).sum() / 3)
    min_share = np.where(rng.random(channels) < 0.2, rng.uniform(0.01, 0.3, channels), 0.0)
    min_volume = min_share * ref_volume
    min_cost = float((min_volume * cost).sum())
    if min_cost > budget / 10:
        min_volume *= budget / 10 / min_cost
    chans: list[ChannelConfig] = []
    for i in range(channels):
        rpu = float(cost[i] * roi[i])
        fields: dict[str, object] = {"name": f"ch{i}", "unit_cost": float(cost[i]),
                                     "min_volume": float(np.round(min_volume[i], 2))}
        if rng.random() < 1 / 3:
            k = int(rng.integers(2, 4))
            decay = np.cumprod(np.concatenate([[1.0], rng.uniform(0.4, 0.9, k - 1)]))
            ends = ref_volume[i] * np.cumsum(rng.uniform(0.5, 1.5, k))
            fields["tiers"] = [{"up_to": float(round(u, 2)), "return_per_unit": float(rpu * d)}
                               for u, d in zip(ends, decay)]
        elif segments:
            fields["return_per_unit"] = {s: float(rpu * rng.uniform(0.7, 1.3)) for s in seg_names}
        else:
            fields["return_per_unit"] = rpu
        if rng.random() < 0.5:
            fields["max_volume"] = float(round(max(ref_volume[i] * rng.uniform(0.5, 2.0), min_volume[i] + 1), 2))
        chans.append(ChannelConfig.model_validate(fields))
    caps = {s: float(round(ref_volume.sum() / max(segments, 1) * rng.uniform(0.2, 1.0), 2))
            for s in seg_names[1::2]}
    return BudgetConfig(channels=chans, segments=seg_names, total_budget=round(budget, 2),
                        segment_max_volume=caps, objective=objective)
