"""Synthetic customer journeys with a KNOWN true contribution per channel, to check attribution methods against.

Generative model (vectorised numpy, deterministic by seed):

- K marketing channels, each with a popularity weight, a positional tendency in [0, 1] (0 = opens journeys, e.g.
  the awareness channels tv/display/video; 1 = closes them, e.g. search/email) and a true incremental effect
  `w_c >= 0` on the conversion probability.
- A journey has `1 + Poisson(mean_extra_touches)` touchpoints; each touchpoint's channel is drawn independently
  with the popularity weights. Touchpoints are ordered within the journey by `position_c + Normal(0, noise)`, and
  get increasing Unix timestamps (a random start, then exponential gaps of at least one second).
- The journey converts with probability `p = base_rate + sum of w_c over the DISTINCT channels in the journey`.
  The effects are scaled so that `base_rate + sum of all w_c <= 0.9`, so `p` stays below 1 by construction and
  no cap ever bends the additive model. A converting journey has a log-normal revenue `value`; others have 0.

What "true contribution" means: in this additive model removing channel c from journey j lowers that journey's
conversion probability by exactly `w_c` (if c is in it), whatever else the journey holds. So the expected number
of conversions channel c causes is `truth[c] = sum over journeys j of w_c * [c in j]` (computed from the realised
journeys, not an expectation over journeys). `base_rate` conversions are caused by no channel, so the truth sums
to less than the expected conversions; compare methods to it by shares or by rank. Value is independent of the
channels, so the true value contribution is `truth[c] * mean_value` (`true_value`).

The default parameters make last-touch attribution visibly wrong: the high-effect awareness channels open
journeys and the low-effect ones (search, email, push) close them. Reach is kept comparable across channels
(popularity weights within about 10% of each other) so that the effect, not the reach, orders the truth.
Journeys are short (1 + Poisson(0.7) touches) with noisy order (position noise 0.3): a first-order Markov chain
forgets which channels came earlier in a path, so with long, strictly ordered journeys it cannot see the effect
of the awareness channels (with 1 + Poisson(2) touches and noise 0.15 its rank correlation with the truth falls
to about 0.3); these defaults are the regime where it, and the other path-based methods, can be judged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SECONDS_PER_DAY = 86_400
# 2024-01-01T00:00:00Z: journeys start within `start_window_days` after it.
EPOCH_START = 1_704_067_200

# (name, popularity weight, positional tendency, true incremental effect on the conversion probability).
# Ordered so that the first K of them mix awareness channels and closers for any K.
DEFAULT_CHANNELS: tuple[tuple[str, float, float, float], ...] = (
    ("search", 1.05, 0.92, 0.012),
    ("social", 1.00, 0.45, 0.060),
    ("display", 1.05, 0.15, 0.090),
    ("email", 1.00, 0.85, 0.030),
    ("tv", 0.95, 0.05, 0.110),
    ("affiliate", 0.95, 0.70, 0.045),
    ("video", 1.00, 0.25, 0.075),
    ("push", 1.05, 0.80, 0.004),
)

TOUCHPOINTS_SCHEMA = pa.schema(
    [pa.field("journey_id", pa.int64()), pa.field("ts", pa.int64()), pa.field("channel", pa.string())]
)
JOURNEYS_SCHEMA = pa.schema(
    [
        pa.field("journey_id", pa.int64()),
        pa.field("converted", pa.bool_()),
        pa.field("value", pa.float64()),
        pa.field("p_conversion", pa.float64()),
        pa.field("n_touchpoints", pa.int64()),
    ]
)


@dataclass(frozen=True)
class Journeys:
    """Generated journeys and their ground truth.

    touchpoints: one row per touchpoint (journey_id int64, ts int64 Unix seconds increasing within a journey,
        channel string), sorted by (journey_id, ts).
    journeys: one row per journey (journey_id, converted bool, value float64 revenue or 0, p_conversion the
        true conversion probability, n_touchpoints).
    effects: channel -> w_c, the true incremental effect on a journey's conversion probability.
    truth: channel -> expected incremental conversions caused (sum over journeys of w_c * [c in journey]).
    truth_shares: `truth` normalised to sum to 1.
    true_value: channel -> expected incremental revenue caused (`truth` x the mean conversion value).
    base_rate: the conversion probability of a journey that no channel helps.
    """

    touchpoints: pa.Table
    journeys: pa.Table
    effects: dict[str, float]
    truth: dict[str, float]
    truth_shares: dict[str, float]
    true_value: dict[str, float]
    base_rate: float

    def truth_table(self) -> pa.Table:
        """The truth as a table: channel, effect, true_conversions, true_share, true_value."""
        names = list(self.truth)
        return pa.table(
            {
                "channel": pa.array(names, pa.string()),
                "effect": pa.array([self.effects[c] for c in names], pa.float64()),
                "true_conversions": pa.array([self.truth[c] for c in names], pa.float64()),
                "true_share": pa.array([self.truth_shares[c] for c in names], pa.float64()),
                "true_value": pa.array([self.true_value[c] for c in names], pa.float64()),
            }
        )


def _channel_parameters(channels: int, rng: np.random.Generator, base_rate: float
                        ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Names, popularity, position and effect of `channels` channels: the defaults first, then drawn ones.

    Extra channels (beyond the named defaults) get popularity, position and effect drawn from the seeded rng;
    all effects are then scaled down if needed so that `base_rate + sum(effects) <= 0.9`.
    """
    named = DEFAULT_CHANNELS[:channels]
    names = [c[0] for c in named]
    popularity = np.array([c[1] for c in named], dtype=np.float64)
    position = np.array([c[2] for c in named], dtype=np.float64)
    effect = np.array([c[3] for c in named], dtype=np.float64)
    extra = channels - len(named)
    if extra > 0:
        names += [f"channel_{i:02d}" for i in range(len(named) + 1, channels + 1)]
        popularity = np.concatenate([popularity, rng.uniform(0.95, 1.05, extra)])
        position = np.concatenate([position, rng.uniform(0.0, 1.0, extra)])
        effect = np.concatenate([effect, rng.uniform(0.005, 0.11, extra)])
    budget = 0.9 - base_rate
    if effect.sum() > budget:
        effect = effect * (budget / effect.sum())
    return names, popularity, position, effect


def generate_journeys(
    n_journeys: int = 50_000,
    seed: int = 7,
    channels: int = 8,
    *,
    base_rate: float = 0.02,
    mean_extra_touches: float = 0.7,
    position_noise: float = 0.3,
    mean_gap_days: float = 2.0,
    start_window_days: float = 90.0,
    mean_value: float = 80.0,
) -> Journeys:
    """Generate `n_journeys` journeys over `channels` channels with a known true contribution per channel.

    Deterministic by `seed` (one numpy Generator, fixed draw order). See the module docstring for the model and
    the exact meaning of the truth.
    """
    if n_journeys < 1:
        raise ValueError(f"n_journeys must be >= 1, got {n_journeys}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if not 0.0 <= base_rate < 0.9:
        raise ValueError(f"base_rate must be in [0, 0.9), got {base_rate}")
    rng = np.random.default_rng(seed)
    names, popularity, position, effect = _channel_parameters(channels, rng, base_rate)
    k = len(names)

    # Touchpoints: journey lengths, channels by popularity, order by positional tendency plus noise.
    lengths = 1 + rng.poisson(mean_extra_touches, n_journeys).astype(np.int64)
    journey_of = np.repeat(np.arange(n_journeys, dtype=np.int64), lengths)
    n_touch = journey_of.size
    code = rng.choice(k, size=n_touch, p=popularity / popularity.sum())
    order_key = position[code] + rng.normal(0.0, position_noise, n_touch)
    order = np.lexsort((order_key, journey_of))  # journey_of is already sorted; lexsort orders within a journey
    code = code[order]

    # Timestamps: a start per journey plus cumulative gaps (>= 1 s), so ts strictly increases within a journey.
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gaps = np.maximum(1, np.ceil(rng.exponential(mean_gap_days * SECONDS_PER_DAY, n_touch))).astype(np.int64)
    gaps[starts] = 0
    cum = np.cumsum(gaps)
    offset_in_journey = cum - np.repeat(cum[starts], lengths)
    start_ts = EPOCH_START + rng.integers(0, int(start_window_days * SECONDS_PER_DAY), n_journeys)
    ts = np.repeat(start_ts, lengths) + offset_in_journey

    # Distinct channels per journey (a journey x channel indicator) and the additive conversion probability.
    present = np.zeros((n_journeys, k), dtype=bool)
    present[journey_of, code] = True
    p_conversion = base_rate + present.astype(np.float64) @ effect
    converted = rng.random(n_journeys) < p_conversion
    # Log-normal revenue with mean `mean_value` (sigma 0.6), for converting journeys only.
    sigma = 0.6
    revenue = rng.lognormal(np.log(mean_value) - sigma**2 / 2, sigma, n_journeys)
    value = np.where(converted, revenue, 0.0)

    reach = present.sum(axis=0).astype(np.float64)
    truth_arr = effect * reach
    total = truth_arr.sum()
    shares = truth_arr / total if total > 0 else np.zeros(k)

    touchpoints = pa.table(
        {
            "journey_id": pa.array(journey_of, pa.int64()),
            "ts": pa.array(ts, pa.int64()),
            "channel": pa.array(np.asarray(names, dtype=object)[code], pa.string()),
        },
        schema=TOUCHPOINTS_SCHEMA,
    )
    journeys = pa.table(
        {
            "journey_id": pa.array(np.arange(n_journeys, dtype=np.int64)),
            "converted": pa.array(converted),
            "value": pa.array(value, pa.float64()),
            "p_conversion": pa.array(p_conversion, pa.float64()),
            "n_touchpoints": pa.array(lengths, pa.int64()),
        },
        schema=JOURNEYS_SCHEMA,
    )
    return Journeys(
        touchpoints=touchpoints,
        journeys=journeys,
        effects={c: float(w) for c, w in zip(names, effect)},
        truth={c: float(t) for c, t in zip(names, truth_arr)},
        truth_shares={c: float(s) for c, s in zip(names, shares)},
        true_value={c: float(t * mean_value) for c, t in zip(names, truth_arr)},
        base_rate=float(base_rate),
    )
