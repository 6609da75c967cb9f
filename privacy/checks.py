"""Measurements of the privacy layer, shared by the tests and the benchmark script so that the figures in the docs
and the assertions in the tests come from one code path.

- `noise_variance_check`: for each mechanism (Laplace and Gaussian, on integers and on floats, two epsilons),
  the empirical variance of many OpenDP draws against `Mechanism.variance()`.
- `differencing_attack`: two data sets that differ by one person, released many times; how well the best
  threshold test on the released cell tells them apart (an empirical epsilon with Clopper-Pearson bounds), and
  what the same two queries give without noise (the person's value, exactly).

Randomness. OpenDP draws its noise from the operating system's cryptographic source and cannot be seeded, so
these figures vary from run to run within their sampling error; `seed` fixes the synthetic data only.

The empirical epsilon. For an output threshold t the attacker decides "D'" when the released value exceeds t
(or is at most t); differential privacy bounds every such event E by P[E | D'] <= e^eps P[E | D] and the other
way round. With n releases of each data set the point estimate is the largest log ratio of event frequencies over
a fixed grid of thresholds (both tails, both directions). Its lower confidence bound replaces each frequency by
its one-sided Clopper-Pearson bound (numerator lower, denominator upper) at level alpha / (2 m) for m events
(Bonferroni), so that with probability at least 1 - alpha every bound holds at once: a mechanism that is
eps-DP then gives a lower bound <= eps, and a test that asserts exactly that fails by chance with probability at
most alpha. The statistical margin is the gap between the estimate and that lower bound. The grid is fixed
before sampling from what the attacker knows (the two exact cell values and the published noise scale), as the
Bonferroni argument requires.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from privacy.mechanisms import calibrate
from privacy.release import Measure, ReleaseSpec, prepare, publish, release


def noise_variance_check(draws: int = 100_000, seed: int = 0) -> list[dict[str, Any]]:
    """Theory against empirical variance of `draws` OpenDP draws per mechanism (added to random inputs fixed by
    `seed`, then subtracted: the noise as a release adds it)."""
    rng = np.random.default_rng(seed)
    results = []
    for kind, delta in (("laplace", 0.0), ("gaussian", 1e-6)):
        for integer in (True, False):
            for epsilon in (0.5, 2.0):
                mech = calibrate(kind, epsilon, delta, 3.0, integer=integer)  # type: ignore[arg-type]
                base = rng.integers(0, 1000, draws) if integer else rng.uniform(0.0, 1000.0, draws)
                started = time.perf_counter()
                noise = mech.add_noise(base).astype(np.float64) - base
                seconds = time.perf_counter() - started
                theory = mech.variance()
                empirical = float(np.var(noise, ddof=1))
                results.append({
                    "kind": kind, "integer": integer, "epsilon": epsilon, "delta": delta, "sensitivity": 3.0,
                    "scale": mech.scale, "draws": draws, "variance_theory": theory,
                    "variance_empirical": empirical, "relative_error": abs(empirical - theory) / theory,
                    "seconds": seconds,
                })
    return results


def empirical_epsilon(released_d: np.ndarray, released_d2: np.ndarray, thresholds: np.ndarray,
                      alpha: float = 0.001, min_count: int = 30) -> dict[str, float]:
    """The privacy loss the best threshold test shows between two samples of releases (NaN, a suppressed cell,
    counts as below every threshold): point estimate (over events seen at least `min_count` times under both
    data sets: rarer ones are all noise), Clopper-Pearson lower and upper bounds (Bonferroni over
    the 4 * len(thresholds) events; the lower bound is over every event, the upper one is that of the event the
    estimate picked) and the margin between estimate and lower bound."""
    x = np.where(np.isnan(released_d), -np.inf, released_d)
    y = np.where(np.isnan(released_d2), -np.inf, released_d2)
    n_x, n_y = len(x), len(y)
    above_x = (x[:, None] > thresholds[None, :]).sum(axis=0)
    above_y = (y[:, None] > thresholds[None, :]).sum(axis=0)
    # every event: (count under the numerator's data set, its n, count under the denominator's, its n)
    events = [
        (above_y, n_y, above_x, n_x), (above_x, n_x, above_y, n_y),
        (n_y - above_y, n_y, n_x - above_x, n_x), (n_x - above_x, n_x, n_y - above_y, n_y),
    ]
    level = alpha / (2 * 4 * len(thresholds))
    points, lows, highs = [], [], []
    for num, n_num, den, n_den in events:
        num_lo, num_hi = _cp_lower(num, n_num, level), _cp_upper(num, n_num, level)
        den_lo, den_hi = _cp_lower(den, n_den, level), _cp_upper(den, n_den, level)
        with np.errstate(divide="ignore", invalid="ignore"):
            enough = (num >= min_count) & (den >= min_count)
            points.append(np.where(enough, np.log((num / n_num) / (den / n_den)), -np.inf))
            lows.append(np.where(num_lo > 0, np.log(num_lo / den_hi), -np.inf))
            highs.append(np.where(den_lo > 0, np.log(num_hi / den_lo), np.inf))
    point, low, high = np.concatenate(points), np.concatenate(lows), np.concatenate(highs)
    best = int(np.argmax(point))
    return {"empirical_epsilon": float(point[best]), "lower_bound": float(low.max()),
            "upper_bound": float(high[best]), "margin": float(point[best] - low.max()), "alpha": alpha,
            "events": int(point.size)}


def differencing_attack(epsilon: float, trials: int, seed: int) -> dict[str, Any]:
    """Release a data set D and D' = D plus one person who adds the maximum (the upper bound) to cell A's sum,
    `trials` times each under Laplace at `epsilon`, and measure the empirical privacy loss on cell A's released
    sum; then the same two queries without noise (k-anonymity only), whose difference is the person's value."""
    rng = np.random.default_rng(seed)
    upper = 100.0
    n = 60
    base = pd.DataFrame({
        "customer": np.arange(2 * n),
        "segment": np.repeat(["A", "B"], n),
        # whole numbers, so the exact sums and their difference are exact in floating point
        "amount": rng.integers(0, int(upper), 2 * n).astype(np.float64),
    })
    target = pd.DataFrame({"customer": [2 * n], "segment": ["A"], "amount": [upper]})
    with_person = pd.concat([base, target], ignore_index=True)
    spec = ReleaseSpec(group_by=("segment",), measures=(Measure("spend", "sum", "amount", 0.0, upper),), k=5,
                       mechanism="laplace", epsilon=epsilon, delta=0.0, max_groups_per_person=1,
                       max_rows_per_cell=1, margins=False, keys={"segment": ["A", "B"]})

    prepared = [prepare(base, "customer", spec), prepare(with_person, "customer", spec)]
    cell = int(np.flatnonzero(prepared[0].cells["segment"].to_numpy() == "A")[0])
    samples = []
    started = time.perf_counter()
    for prep in prepared:
        samples.append(np.array([publish(prep).table["spend"].iloc[cell] for _ in range(trials)], dtype=np.float64))
    seconds = time.perf_counter() - started
    first = publish(prepared[0])
    share = float(first.meta["epsilon_split"]["spend"])
    scale = float(first.meta["scales"]["spend"])
    exact = sorted(float(p.exact["spend"][cell]) for p in prepared)
    thresholds = np.arange(exact[0] - 4 * scale, exact[1] + 4 * scale + 1e-9, scale / 2)
    loss = empirical_epsilon(samples[0], samples[1], thresholds)
    difference = samples[1] - samples[0]

    exact_spec = ReleaseSpec(group_by=("segment",), measures=(Measure("spend", "sum", "amount", 0.0, upper),), k=5,
                             mechanism="none", margins=False)
    plain = [release(frame, "customer", exact_spec).table.set_index("segment") for frame in (base, with_person)]
    recovered = float(plain[1].loc["A", "spend"] - plain[0].loc["A", "spend"])
    return {
        "epsilon": epsilon, "epsilon_cell": share, "scale": scale, "trials": trials,
        **loss,
        "dp_recovery_mean_abs_error": float(np.mean(np.abs(difference - upper))),
        "k_only_recovered": recovered, "person_value": upper,
        "k_only_cell_released": bool(not plain[0].loc["A", "suppressed"] and not plain[1].loc["A", "suppressed"]),
        "seconds": seconds,
    }


def _cp_lower(count: np.ndarray, n: int, level: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound of a binomial proportion at error `level`."""
    count = np.asarray(count)
    safe = np.maximum(count, 1)
    return np.where(count > 0, stats.beta.ppf(level, safe, n - count + 1), 0.0)


def _cp_upper(count: np.ndarray, n: int, level: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound of a binomial proportion at error `level`."""
    count = np.asarray(count)
    safe = np.minimum(count, n - 1)
    return np.where(count < n, stats.beta.ppf(1 - level, safe + 1, n - safe), 1.0)
