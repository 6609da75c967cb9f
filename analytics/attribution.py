"""Multi-touch attribution: how much of the conversions (and revenue) each marketing channel gets credit for.

Input: touchpoints (journey_id, ts, channel), one row per contact, and outcomes (journey_id, converted, value), one
row per journey. Every method is columnar numpy over the sorted touchpoints (loops run over channels or channel
subsets only) and credits each journey's conversion (0/1) and its value; only converting journeys carry credit.

Methods (credit per channel):
- first_touch: the journey's whole conversion goes to its first channel.
  Rewards channels that open journeys; blind to everything that happened afterwards.
- last_touch: the whole conversion goes to the last channel before it.
  The industry default and biased towards closers (search, email): what opens a journey gets nothing.
- linear: each touchpoint gets 1 / (number of touchpoints in the journey).
  Position-free, but a channel repeated three times gets three shares.
- time_decay: touchpoint weight 2^(-(t_conv - t) / half_life), normalised per journey; t_conv = last touch time.
  Recent contacts count more; the half-life (days) says how fast earlier ones fade.
- markov: removal effect in a Markov chain of the journeys (second order by default; below), scaled to the total
  conversions.
  Credits a channel by how many conversions the observed paths would lose without it.
- shapley: Shapley values of the cooperative game "channels -> conversions" (below).
  Fair-division axioms (efficiency, symmetry, null player); order-free.

Markov chain: states start, each channel, conversion, null. Transition counts come from consecutive touchpoints of
a journey (start -> first channel, channel -> next channel, last channel -> conversion or null), normalised per
row. P(conversion) is the probability of absorption in `conversion` from `start`, solved exactly from the
absorbing chain's sparse linear system (I - Q) x = r. Removing channel c redirects every transition into c to null;
removal_effect(c) = 1 - P(conversion | c removed) / P(conversion); credit(c) = total conversions * removal_effect(c)
/ sum of removal effects (the effects overlap, so they are normalised to share out the observed total). Repeated
touches of one channel make self-loops, which do not change absorption probabilities. A chain of order m (Anderl
et al. 2016; the `order` of R's ChannelAttribution) has the last m channels as its state, so it remembers what
came earlier in a path; removing c redirects the transitions into every state whose latest channel is c. With an
order at least the longest journey the chain is the observed paths themselves, and removal_effect(c) is the share
of conversions in journeys that touch c. The default is order 2: on generated journeys with known effects the first-
order chain flattens the credit and swaps close channels, the second-order one ranks them better (mean Spearman
0.990 against 0.952 over five seeds, docs/benchmarks.md).

Shapley values: characteristic function v(S) = conversions (or value) of the journeys whose set of distinct
channels is a subset of S (the "simplified Shapley" of attribution practice). Why this v: it needs nothing but the
observed journeys (no counterfactual model of journeys that were never seen, unlike v(S) = conversion rate of
journeys with exactly S, which is undefined for the many unobserved subsets) and it is monotone with v(empty) = 0,
so the credits are non-negative and sum to the total conversions. Computed exactly for K <= exact_max_channels
channels: each journey's channel set is an int bitmask, per-mask totals are summed over subsets (the zeta
transform) into v(S) for all 2^K subsets, and phi_c = sum over S without c of |S|!(K-|S|-1)!/K! (v(S+c) - v(S)).
Above that, Monte Carlo over uniformly random channel orders: in one order a journey's total is the marginal
contribution of whichever of its channels comes last, so each order gives an unbiased sample of phi; the mean over
the orders is reported with its standard error per channel. Note that this v is a sum of unanimity games, one per
journey, so its Shapley value equals splitting each journey's conversion equally among its distinct channels;
the general machinery is kept so that another v can replace it, and the equality is a check in the tests.

What none of these can do: they describe the observed paths and are not causal estimates. On the synthetic
journeys (feature_store.readers.journeys), whose true per-channel effects are known, markov and shapley rank the
channels like the truth and last_touch does not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve
from scipy.stats import spearmanr

METHODS: tuple[str, ...] = ("first_touch", "last_touch", "linear", "time_decay", "markov", "shapley")
TOUCHPOINT_COLUMNS: tuple[str, ...] = ("journey_id", "ts", "channel")
OUTCOME_COLUMNS: tuple[str, ...] = ("journey_id", "converted", "value")
SECONDS_PER_DAY = 86_400
# 2^K subsets x 2 measures of float64: 22 channels is 64 MiB; above that use Monte Carlo.
MAX_EXACT_CHANNELS = 22
# Bitmasks are int64.
MAX_SHAPLEY_CHANNELS = 62
# Monte Carlo works on (orders x distinct channel sets) arrays in chunks of about this many cells.
_MC_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class JourneyData:
    """Validated, sorted journeys in columnar form.

    channels: channel names (sorted); code[i] indexes them.
    journey[i], ts[i], code[i]: touchpoint i, sorted by (journey, ts); journey is 0..n_journeys-1.
    first[j], last[j]: index of journey j's first and last touchpoint.
    converted[j] (0/1 float) and value[j]: journey j's outcome.
    null_channel_touchpoints: touchpoints dropped because their channel was null.
    """

    channels: list[str]
    journey: np.ndarray
    ts: np.ndarray
    code: np.ndarray
    first: np.ndarray
    last: np.ndarray
    converted: np.ndarray
    value: np.ndarray
    journey_ids: np.ndarray
    null_channel_touchpoints: int

    @property
    def n_journeys(self) -> int:
        return int(self.first.size)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def measures(self) -> np.ndarray:
        """Per-journey weights, shape (n_journeys, 2): conversions and value."""
        return np.stack([self.converted, self.value], axis=1)


@dataclass(frozen=True)
class Credit:
    """Credit per channel (aligned with JourneyData.channels): conversions and value."""

    conversions: np.ndarray
    value: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttributionResult:
    """Credits of every requested method.

    table: one row per (method, channel): conversions, conversion_share, value, value_share.
    metadata: counts (journeys, touchpoints, null channels dropped, totals) and per-method details: markov's
        P(conversion) and removal effects; shapley's mode ("exact" or "monte_carlo"), permutations and standard
        errors (0 when exact).
    """

    table: pa.Table
    channels: list[str]
    metadata: dict[str, Any]

    def credit(self, method: str, measure: str = "conversions") -> dict[str, float]:
        """Channel -> credit of one method; measure is "conversions" or "value" (or a *_share column)."""
        if measure not in ("conversions", "value", "conversion_share", "value_share"):
            raise ValueError(f"measure must be conversions, value, conversion_share or value_share, got {measure!r}")
        methods = self.table.column("method").to_numpy(zero_copy_only=False)
        if method not in set(methods.tolist()):
            raise ValueError(f"method {method!r} was not computed; computed: {sorted(set(methods.tolist()))}")
        rows = methods == method
        names = self.table.column("channel").to_numpy(zero_copy_only=False)[rows]
        values = self.table.column(measure).to_numpy()[rows]
        return {str(c): float(v) for c, v in zip(names, values)}


# ------------------------------------------------------------------------------------------------ input


def _require_columns(table: pa.Table, columns: Sequence[str], name: str) -> None:
    if not isinstance(table, pa.Table):
        raise ValueError(f"{name} must be a pyarrow.Table, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{name} is missing column(s) {missing}: it needs {list(columns)} "
                         f"(has {table.column_names})")


def _no_nulls(table: pa.Table, column: str, name: str) -> None:
    nulls = table.column(column).null_count
    if nulls:
        raise ValueError(f"{name}.{column} has {nulls} null value(s): fill or drop those rows first")


def _sample_ids(ids: np.ndarray, limit: int = 5) -> str:
    return ", ".join(str(x) for x in ids[:limit].tolist()) + (" ..." if ids.size > limit else "")


def prepare(touchpoints: pa.Table, outcomes: pa.Table) -> JourneyData:
    """Validate and sort the inputs into a JourneyData.

    Touchpoints with a null channel are dropped and counted (JourneyData.null_channel_touchpoints). Raises
    ValueError for missing columns, null journey ids or timestamps, duplicate or unknown outcome journeys,
    touchpoint journeys without an outcome, journeys left with no touchpoint, and invalid converted/value.
    """
    _require_columns(touchpoints, TOUCHPOINT_COLUMNS, "touchpoints")
    _require_columns(outcomes, OUTCOME_COLUMNS, "outcomes")
    for column in ("journey_id", "ts"):
        _no_nulls(touchpoints, column, "touchpoints")
    for column in OUTCOME_COLUMNS:
        _no_nulls(outcomes, column, "outcomes")

    tp_ids_all = touchpoints.column("journey_id").to_numpy().astype(np.int64, copy=False)
    out_ids = outcomes.column("journey_id").to_numpy().astype(np.int64, copy=False)
    converted_raw = outcomes.column("converted").to_numpy(zero_copy_only=False).astype(np.float64)
    value_raw = outcomes.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
    if out_ids.size == 0:
        raise ValueError("outcomes has no rows: there is nothing to attribute")

    unique_out, counts = np.unique(out_ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"outcomes.journey_id must be unique; {int((counts > 1).sum())} id(s) repeat "
                         f"(e.g. {_sample_ids(unique_out[counts > 1])}): one outcome row per journey")
    if not np.isin(converted_raw, (0.0, 1.0)).all():
        raise ValueError("outcomes.converted must be 0/1 or boolean")
    if not np.isfinite(value_raw).all() or (value_raw < 0).any():
        raise ValueError("outcomes.value must be finite and >= 0")
    if (value_raw[converted_raw == 0] != 0).any():
        raise ValueError("outcomes.value must be 0 for journeys that did not convert (it is the conversion's revenue)")

    unknown = ~np.isin(unique_out, tp_ids_all)
    if unknown.any():
        raise ValueError(f"outcomes has {int(unknown.sum())} journey(s) that are not in touchpoints "
                         f"(e.g. {_sample_ids(unique_out[unknown])}): drop them from outcomes or add their "
                         f"touchpoints")
    orphan = ~np.isin(tp_ids_all, unique_out)
    if orphan.any():
        ids = np.unique(tp_ids_all[orphan])
        raise ValueError(f"touchpoints reference {ids.size} journey(s) with no row in outcomes "
                         f"(e.g. {_sample_ids(ids)}): add their outcome (converted, value) or drop them")

    channel_col = touchpoints.column("channel")
    null_mask = pc.is_null(channel_col).to_numpy(zero_copy_only=False)
    n_null = int(null_mask.sum())
    keep = ~null_mask
    tp_ids = tp_ids_all[keep]
    ts = touchpoints.column("ts").to_numpy().astype(np.int64, copy=False)[keep]
    kept_channels = pc.filter(channel_col, pa.array(keep)) if n_null else channel_col
    encoded = pc.dictionary_encode(kept_channels.combine_chunks() if isinstance(kept_channels, pa.ChunkedArray)
                                   else kept_channels)
    dictionary = encoded.dictionary.to_pylist()
    raw_code = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    # Sorted channel names, so the output order does not depend on the input order.
    channels = sorted(str(c) for c in dictionary)
    remap = np.array([channels.index(str(c)) for c in dictionary], dtype=np.int64)
    code = remap[raw_code] if raw_code.size else raw_code

    # Journeys are indexed by their position in the sorted outcome ids.
    journey = np.searchsorted(unique_out, tp_ids)
    has_touch = np.zeros(unique_out.size, dtype=bool)
    has_touch[journey] = True
    if not has_touch.all():
        ids = unique_out[~has_touch]
        raise ValueError(f"{ids.size} journey(s) have no touchpoint with a channel (all their channels are null; "
                         f"e.g. {_sample_ids(ids)}): fill their channel or drop them from touchpoints and outcomes")

    order = np.lexsort((ts, journey))  # stable: equal timestamps keep their input order
    journey, ts, code = journey[order], ts[order], code[order]
    counts_per_journey = np.bincount(journey, minlength=unique_out.size)
    last = np.cumsum(counts_per_journey) - 1
    first = last - counts_per_journey + 1

    order_out = np.argsort(out_ids, kind="stable")
    return JourneyData(
        channels=channels,
        journey=journey,
        ts=ts,
        code=code,
        first=first,
        last=last,
        converted=converted_raw[order_out],
        value=value_raw[order_out],
        journey_ids=unique_out,
        null_channel_touchpoints=n_null,
    )


# ------------------------------------------------------------------------------------------------ rule-based


def _credit_from_touch_weights(data: JourneyData, weights: np.ndarray) -> Credit:
    """Credit from per-touchpoint weights that sum to 1 within each journey."""
    k = data.n_channels
    per_touch = weights * data.converted[data.journey]
    per_touch_value = weights * data.value[data.journey]
    return Credit(
        conversions=np.bincount(data.code, weights=per_touch, minlength=k),
        value=np.bincount(data.code, weights=per_touch_value, minlength=k),
    )


def first_touch(data: JourneyData) -> Credit:
    """Each journey's conversion and value to its first channel."""
    k = data.n_channels
    codes = data.code[data.first]
    return Credit(np.bincount(codes, weights=data.converted, minlength=k),
                  np.bincount(codes, weights=data.value, minlength=k))


def last_touch(data: JourneyData) -> Credit:
    """Each journey's conversion and value to its last channel."""
    k = data.n_channels
    codes = data.code[data.last]
    return Credit(np.bincount(codes, weights=data.converted, minlength=k),
                  np.bincount(codes, weights=data.value, minlength=k))


def linear(data: JourneyData) -> Credit:
    """An equal share per touchpoint (a channel touched twice gets two shares)."""
    lengths = (data.last - data.first + 1).astype(np.float64)
    return _credit_from_touch_weights(data, 1.0 / lengths[data.journey])


def time_decay(data: JourneyData, half_life_days: float = 7.0) -> Credit:
    """Touchpoint weight 2^(-(t_conv - t) / half_life), normalised per journey (t_conv = the last touch's time)."""
    if not half_life_days > 0:
        raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
    age_days = (data.ts[data.last][data.journey] - data.ts).astype(np.float64) / SECONDS_PER_DAY
    raw = np.exp2(-age_days / half_life_days)
    totals = np.bincount(data.journey, weights=raw, minlength=data.n_journeys)
    return _credit_from_touch_weights(data, raw / totals[data.journey])


# ------------------------------------------------------------------------------------------------ markov


MAX_MARKOV_ORDER = 4


def _absorption_probability(q: sp.csc_matrix, r: np.ndarray) -> float:
    """P(absorbed in conversion | start) of an absorbing chain: solve (I - Q) x = r, read x[start]."""
    x = spsolve(sp.identity(q.shape[0], format="csc") - q, r)
    return float(np.atleast_1d(x)[0])


def markov_states(data: JourneyData, order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Each touchpoint's state in the chain of `order`: the last `order` channels up to and including it (fewer at
    the start of a journey), as an index into the observed states; and each state's most recent channel.

    The state is coded as an integer in base K + 1 (digit 0 = before the journey began, c + 1 = channel c; the
    lowest digit is the touchpoint's own channel), then renumbered over the states that occur."""
    k = data.n_channels
    n = data.code.size
    base = k + 1
    position = np.arange(n) - np.repeat(data.first, data.last - data.first + 1)
    key = np.zeros(n, dtype=np.int64)
    for lag in range(order - 1, -1, -1):
        earlier = np.roll(data.code.astype(np.int64), lag)
        key = key * base + np.where(position >= lag, earlier + 1, 0)
    observed, state = np.unique(key, return_inverse=True)
    return state.reshape(-1), (observed % base) - 1


def markov_transitions(data: JourneyData, order: int = 1) -> tuple[sp.csc_matrix, np.ndarray, np.ndarray]:
    """Transient-to-transient probabilities Q (sparse), transient-to-conversion probabilities r, and each transient
    state's most recent channel (-1 for start).

    Transient states: 0 = start, then the observed `markov_states`. Absorbing: conversion, null (implied by the
    rows' remainder)."""
    if not 1 <= order <= MAX_MARKOV_ORDER:
        raise ValueError(f"markov order must be 1..{MAX_MARKOV_ORDER}, got {order}")
    touch_state, latest = markov_states(data, order)
    state = touch_state + 1
    n_transient = latest.size + 1
    conversion, null = n_transient, n_transient + 1
    same_journey = data.journey[1:] == data.journey[:-1]
    src = np.concatenate([np.zeros(data.n_journeys, dtype=np.int64), state[:-1][same_journey], state[data.last]])
    end_state = np.where(data.converted > 0, conversion, null)
    dst = np.concatenate([state[data.first], state[1:][same_journey], end_state])
    counts = sp.csr_matrix((np.ones(src.size), (src, dst)), shape=(n_transient, n_transient + 2))
    row_total = np.asarray(counts.sum(axis=1)).ravel()
    probs = sp.diags(np.divide(1.0, row_total, out=np.zeros_like(row_total), where=row_total > 0)) @ counts
    r = np.asarray(probs[:, conversion].todense()).ravel()
    return probs[:, :n_transient].tocsc(), r, np.concatenate([[-1], latest])


def markov(data: JourneyData, order: int = 1) -> Credit:
    """Removal-effect attribution in the Markov chain of `order` (see the module docstring)."""
    k = data.n_channels
    q, r, latest = markov_transitions(data, order)
    p_conv = _absorption_probability(q, r)
    removal = np.zeros(k)
    if p_conv > 0:
        for c in range(k):
            # transitions into a state whose latest channel is c now end in null
            q_removed = (q @ sp.diags((latest != c).astype(np.float64))).tocsc()
            removal[c] = 1.0 - _absorption_probability(q_removed, r) / p_conv
    removal = np.clip(removal, 0.0, None)  # guard tiny negative round-off
    total_removal = removal.sum()
    share = removal / total_removal if total_removal > 0 else np.zeros(k)
    return Credit(
        conversions=share * data.converted.sum(),
        value=share * data.value.sum(),
        meta={"p_conversion": p_conv, "removal_effects": removal, "order": order, "states": int(latest.size - 1)},
    )


# ------------------------------------------------------------------------------------------------ shapley


def journey_masks(data: JourneyData) -> np.ndarray:
    """Each journey's set of distinct channels as an int64 bitmask (bit c = channel c)."""
    if data.n_channels > MAX_SHAPLEY_CHANNELS:
        raise ValueError(f"shapley supports at most {MAX_SHAPLEY_CHANNELS} channels (int64 bitmasks), got "
                         f"{data.n_channels}: group rare channels or drop 'shapley' from methods")
    bits = np.left_shift(np.int64(1), data.code.astype(np.int64))
    return np.bitwise_or.reduceat(bits, data.first)


def _popcount(n_bits: int) -> np.ndarray:
    """Number of set bits of 0 .. 2^n_bits - 1."""
    counts = np.zeros(1, dtype=np.int64)
    for _ in range(n_bits):
        counts = np.concatenate([counts, counts + 1])
    return counts


def shapley_exact(masks: np.ndarray, weights: np.ndarray, n_channels: int) -> np.ndarray:
    """Exact Shapley values, shape (n_channels, n_measures), of v(S) = sum of weights of journeys with mask in S.

    weights: (n_journeys, n_measures). v over all 2^K subsets is the zeta (sum-over-subsets) transform of the
    per-mask totals; then phi_c = sum over S without c of |S|!(K-|S|-1)!/K! (v(S+c) - v(S)).
    """
    k = n_channels
    size = 1 << k
    n_measures = weights.shape[1]
    v = np.stack([np.bincount(masks, weights=weights[:, m], minlength=size) for m in range(n_measures)], axis=1)
    for bit in range(k):
        block = v.reshape(-1, 2, 1 << bit, n_measures)
        block[:, 1] += block[:, 0]
    coef = np.array([math.factorial(s) * math.factorial(k - s - 1) / math.factorial(k) for s in range(k)])
    size_of = _popcount(k)
    phi = np.zeros((k, n_measures))
    for c in range(k):
        block = v.reshape(-1, 2, 1 << c, n_measures)
        marginal = block[:, 1] - block[:, 0]  # v(S + c) - v(S) for every S without c
        sizes = size_of.reshape(-1, 2, 1 << c)[:, 0]
        phi[c] = np.tensordot(coef[sizes], marginal, axes=([0, 1], [0, 1]))
    return phi


def shapley_monte_carlo(masks: np.ndarray, weights: np.ndarray, n_channels: int, permutations: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo Shapley values over random channel orders: (mean, standard error), each (n_channels, n_measures).

    In one order the marginal contribution of channel c is the total of the journeys whose channels are all in
    the prefix ending at c and not in the prefix before it, i.e. the journeys whose last channel (in that order)
    is c. Orders are drawn as argsort of iid uniform keys, so a journey's last channel is its channel with the
    largest key. Journeys are first aggregated by distinct mask.
    """
    if permutations < 2:
        raise ValueError(f"permutations must be >= 2 (the standard error needs two), got {permutations}")
    k = n_channels
    n_measures = weights.shape[1]
    uniq, inverse = np.unique(masks, return_inverse=True)
    totals = np.stack([np.bincount(inverse, weights=weights[:, m], minlength=uniq.size) for m in range(n_measures)],
                      axis=1)
    has = ((uniq[None, :] >> np.arange(k, dtype=np.int64)[:, None]) & 1).astype(bool)  # (k, n_masks)
    samples = np.empty((permutations, k, n_measures))
    chunk = max(1, _MC_CHUNK_CELLS // max(1, uniq.size))
    for lo in range(0, permutations, chunk):
        m = min(chunk, permutations - lo)
        keys = rng.random((m, k))
        best_key = np.full((m, uniq.size), -1.0)
        best_channel = np.zeros((m, uniq.size), dtype=np.int64)
        for c in range(k):
            candidate = np.where(has[c][None, :], keys[:, c : c + 1], -1.0)
            better = candidate > best_key
            best_key = np.where(better, candidate, best_key)
            best_channel = np.where(better, c, best_channel)
        flat = (np.arange(m)[:, None] * k + best_channel).ravel()
        for meas in range(n_measures):
            w = np.broadcast_to(totals[:, meas][None, :], (m, uniq.size)).ravel()
            samples[lo : lo + m, :, meas] = np.bincount(flat, weights=w, minlength=m * k).reshape(m, k)
    mean = samples.mean(axis=0)
    stderr = samples.std(axis=0, ddof=1) / math.sqrt(permutations)
    return mean, stderr


def shapley(data: JourneyData, exact_max_channels: int = 12, permutations: int = 2_000, seed: int = 0) -> Credit:
    """Shapley attribution: exact for <= exact_max_channels channels, else Monte Carlo (see the module docstring)."""
    if not 1 <= exact_max_channels <= MAX_EXACT_CHANNELS:
        raise ValueError(f"exact_max_channels must be in [1, {MAX_EXACT_CHANNELS}] (2^K subsets are enumerated), "
                         f"got {exact_max_channels}")
    k = data.n_channels
    masks = journey_masks(data)
    weights = data.measures()
    if k <= exact_max_channels:
        phi = shapley_exact(masks, weights, k)
        return Credit(phi[:, 0], phi[:, 1], meta={"mode": "exact", "permutations": 0,
                                                  "stderr_conversions": np.zeros(k), "stderr_value": np.zeros(k)})
    mean, stderr = shapley_monte_carlo(masks, weights, k, permutations, np.random.default_rng(seed))
    return Credit(mean[:, 0], mean[:, 1], meta={"mode": "monte_carlo", "permutations": permutations,
                                                "stderr_conversions": stderr[:, 0], "stderr_value": stderr[:, 1]})


# ------------------------------------------------------------------------------------------------ entry point


def _shares(x: np.ndarray) -> np.ndarray:
    total = x.sum()
    return x / total if total > 0 else np.zeros_like(x)


def attribute(
    touchpoints: pa.Table,
    outcomes: pa.Table,
    methods: Sequence[str] = METHODS,
    half_life_days: float = 7.0,
    exact_max_channels: int = 12,
    permutations: int = 2_000,
    seed: int = 0,
    markov_order: int = 2,
) -> AttributionResult:
    """Run the requested attribution methods on touchpoints (journey_id, ts, channel) and outcomes
    (journey_id, converted, value). `seed` drives the Shapley Monte Carlo only (the rest is deterministic)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods: unknown or empty {list(unknown) or list(methods)}; choose from {list(METHODS)}")
    data = prepare(touchpoints, outcomes)
    k = data.n_channels
    runners = {
        "first_touch": lambda: first_touch(data),
        "last_touch": lambda: last_touch(data),
        "linear": lambda: linear(data),
        "time_decay": lambda: time_decay(data, half_life_days),
        "markov": lambda: markov(data, markov_order),
        "shapley": lambda: shapley(data, exact_max_channels, permutations, seed),
    }
    metadata: dict[str, Any] = {
        "n_journeys": data.n_journeys,
        "n_touchpoints": int(data.code.size),
        "null_channel_touchpoints": data.null_channel_touchpoints,
        "total_conversions": float(data.converted.sum()),
        "total_value": float(data.value.sum()),
        "half_life_days": float(half_life_days),
    }
    columns: dict[str, list[Any]] = {name: [] for name in
                                     ("method", "channel", "conversions", "conversion_share", "value", "value_share")}
    for method in dict.fromkeys(methods):
        credit = runners[method]()
        columns["method"] += [method] * k
        columns["channel"] += data.channels
        columns["conversions"] += credit.conversions.tolist()
        columns["conversion_share"] += _shares(credit.conversions).tolist()
        columns["value"] += credit.value.tolist()
        columns["value_share"] += _shares(credit.value).tolist()
        if method == "markov":
            metadata["markov"] = {
                "p_conversion": credit.meta["p_conversion"],
                "order": credit.meta["order"],
                "states": credit.meta["states"],
                "removal_effects": dict(zip(data.channels, credit.meta["removal_effects"].tolist())),
            }
        elif method == "shapley":
            metadata["shapley"] = {
                "mode": credit.meta["mode"],
                "permutations": credit.meta["permutations"],
                "exact_max_channels": exact_max_channels,
                "stderr_conversions": dict(zip(data.channels, credit.meta["stderr_conversions"].tolist())),
                "stderr_value": dict(zip(data.channels, credit.meta["stderr_value"].tolist())),
            }
    table = pa.table(
        {
            "method": pa.array(columns["method"], pa.string()),
            "channel": pa.array(columns["channel"], pa.string()),
            "conversions": pa.array(columns["conversions"], pa.float64()),
            "conversion_share": pa.array(columns["conversion_share"], pa.float64()),
            "value": pa.array(columns["value"], pa.float64()),
            "value_share": pa.array(columns["value_share"], pa.float64()),
        }
    )
    return AttributionResult(table=table, channels=list(data.channels), metadata=metadata)


def rank_correlation(credit: Mapping[str, float], truth: Mapping[str, float]) -> float:
    """Spearman rank correlation between a method's credit and the true contribution, over the truth's channels.

    A channel in the truth but not in the credit (never touched) counts as 0 credit; a credited channel missing
    from the truth is an error, since the comparison would silently ignore it.
    """
    extra = sorted(set(credit) - set(truth))
    if extra:
        raise ValueError(f"credit has channel(s) not in truth: {extra}")
    names = list(truth)
    if len(names) < 2:
        raise ValueError("rank_correlation needs at least 2 channels")
    result = spearmanr([float(credit.get(c, 0.0)) for c in names], [float(truth[c]) for c in names])
    return float(result.statistic)
