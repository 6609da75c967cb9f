"""The experiment statistics against textbook formulas computed here by hand (and the sequential test against a
peeking simulation): the library calls are wired the way the formulas say."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from serving.experiments import stats
from serving.experiments.stats import cuped, holm, msprt, sample_size, srm, two_proportions, welch


def test_sample_size_matches_the_two_proportion_textbook_formula() -> None:
    p1, p2, z_a, z_b = 0.10, 0.11, sps.norm.ppf(0.975), sps.norm.ppf(0.8)
    textbook = (z_a + z_b) ** 2 * (p1 * (1 - p1) + p2 * (1 - p2)) / (p2 - p1) ** 2  # about 14,749
    assert sample_size(0.10, 0.01) == pytest.approx(textbook, rel=0.01)
    assert sample_size(0.10, 0.02) < sample_size(0.10, 0.01) / 3  # a 2x effect needs about a quarter
    with pytest.raises(ValueError, match="rates in"):
        sample_size(0.99, 0.02)


def _wilson(x: int, n: int, z: float) -> tuple[float, float]:
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_two_proportions_give_the_pooled_z_test_and_newcombes_interval() -> None:
    got = two_proportions(200, 1000, 250, 1000)
    pooled = 450 / 2000
    z = 0.05 / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert got.statistic == pytest.approx(z, rel=1e-9)
    assert got.p_value == pytest.approx(2 * sps.norm.sf(z), rel=1e-9)
    zc = sps.norm.ppf(0.975)
    (l1, u1), (l2, u2) = _wilson(250, 1000, zc), _wilson(200, 1000, zc)  # Newcombe (1998), method 10
    assert got.ci_low == pytest.approx(0.05 - math.sqrt((0.25 - l1) ** 2 + (u2 - 0.2) ** 2), abs=1e-9)
    assert got.ci_high == pytest.approx(0.05 + math.sqrt((u1 - 0.25) ** 2 + (0.2 - l2) ** 2), abs=1e-9)


def test_welch_matches_the_satterthwaite_formula() -> None:
    rng = np.random.default_rng(0)
    c, t = rng.exponential(10.0, 400), rng.exponential(11.0, 300)
    got = welch(c, t)
    vc, vt = c.var(ddof=1) / len(c), t.var(ddof=1) / len(t)
    df = (vc + vt) ** 2 / (vc**2 / (len(c) - 1) + vt**2 / (len(t) - 1))
    stat = (t.mean() - c.mean()) / math.sqrt(vc + vt)
    assert got.statistic == pytest.approx(stat, rel=1e-9)
    assert got.p_value == pytest.approx(2 * sps.t.sf(abs(stat), df), rel=1e-9)
    half = sps.t.ppf(0.975, df) * math.sqrt(vc + vt)
    assert (got.ci_low, got.ci_high) == pytest.approx((got.difference - half, got.difference + half), rel=1e-9)


def test_srm_flags_a_lost_share_of_one_arm_and_not_chance() -> None:
    fine = srm([5000, 5100], [0.5, 0.5])
    assert fine.statistic == pytest.approx(2 * 50**2 / 5050) and not fine.mismatch
    lost = srm([5000, 4600], [0.5, 0.5])  # 8% of one arm's exposures not logged
    assert lost.mismatch and lost.p_value < 1e-3
    with pytest.raises(ValueError, match="sum to 1"):
        srm([1, 2], [0.5, 0.6])


def test_cuped_keeps_the_mean_and_removes_the_covariates_share_of_variance() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(10, 2, 20_000)
    y = 0.8 * x + rng.normal(0, 1, 20_000)
    adj = cuped(y, x)
    rho = np.corrcoef(y, x)[0, 1]
    assert adj.mean() == pytest.approx(y.mean(), abs=1e-9)
    assert adj.var(ddof=1) == pytest.approx(y.var(ddof=1) * (1 - rho**2), rel=1e-6)


def test_msprt_keeps_its_error_rate_under_peeking_where_the_naive_z_test_does_not() -> None:
    """600 A/A experiments, 30 looks each (200 users per arm per look): stopping at the first p < 0.05."""
    rng = np.random.default_rng(2)
    sims, looks, per = 600, 30, 200
    c = rng.normal(0, 1, (sims, looks, per)).mean(axis=2).cumsum(axis=1)  # running sums of look means
    t = rng.normal(0, 1, (sims, looks, per)).mean(axis=2).cumsum(axis=1)
    k = np.arange(1, looks + 1)
    diff = (t - c) / k  # running difference of means
    var = 2.0 / (k * per)
    seq = np.array([msprt(d, var, tau2=0.01)[-1] for d in diff])
    naive = (2 * sps.norm.sf(np.abs(diff) / np.sqrt(var))).min(axis=1)
    fpr_seq, fpr_naive = (seq < 0.05).mean(), (naive < 0.05).mean()
    assert fpr_seq <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / sims)
    assert fpr_naive > 0.15  # peeking 30 times inflates a 5% test severalfold
    # and it still detects a real difference
    shifted = np.array([msprt(d + 0.1, var, tau2=0.01)[-1] for d in diff[:100]])
    assert (shifted < 0.05).mean() > 0.9


def test_holm_matches_the_step_down_procedure() -> None:
    reject, adjusted = holm([0.01, 0.04, 0.03])
    assert reject == [True, False, False]
    assert adjusted == pytest.approx([0.03, 0.06, 0.06])


def test_the_sequential_sample_size_reaches_the_power_and_costs_more_than_one_fixed_look() -> None:
    n = stats.sequential_sample_size(0.1, 0.02, alpha=0.05, power=0.8)
    assert stats.sequential_power(0.1, 0.02, n) >= 0.8 > stats.sequential_power(0.1, 0.02, n - 1)
    assert n > stats.sample_size(0.1, 0.02, alpha=0.05, power=0.8)
