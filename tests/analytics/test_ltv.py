"""BG/NBD and Gamma-Gamma lifetime value: the likelihoods against direct integration over the latent variables,
the closed-form expectations against simulation of the generative process, parameter recovery, the published
CDNOW fits, and the transaction-to-RFM summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import integrate, stats

from analytics.ltv import (
    BGNBD,
    GammaGamma,
    PurchaseSummary,
    bgnbd_log_likelihood,
    clv,
    evaluate,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
    summarize_purchases,
)

CDNOW = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "cdnow"

Arr = NDArray[np.float64]


def _simulate_bgnbd(
    rng: np.random.Generator, n: int, r: float, alpha: float, a: float, b: float, T: Arr, t_future: float
) -> dict[str, Arr]:
    """The BG/NBD generative process, vectorised: the customer drops out right after its D-th repeat purchase,
    D ~ Geometric(p), so the purchases by age t are min(N(t), D) with N the Poisson count. Given N(T) = n events
    on [0, T], the x-th of them is the x-th order statistic of n uniforms: T * Beta(x, n - x + 1)."""
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = np.clip(rng.beta(a, b, n), 1e-12, 1.0)
    drop = rng.geometric(p).astype(np.float64)
    n_cal = rng.poisson(lam * T).astype(np.float64)
    n_future = rng.poisson(lam * t_future).astype(np.float64)
    x = np.minimum(n_cal, drop)
    t_x = np.where(x > 0, T * rng.beta(np.maximum(x, 1.0), n_cal - x + 1.0), 0.0)
    future = np.minimum(n_cal + n_future, drop) - x
    return {"x": x, "t_x": t_x, "T": T, "future": future, "alive": (n_cal < drop).astype(np.float64), "lam": lam}


def _simulate_spend(
    rng: np.random.Generator, n: int, p: float, q: float, v: float
) -> tuple[Arr, Arr, Arr]:
    """Gamma-Gamma: nu ~ Gamma(q, rate v); the sum of x values ~ Gamma(p x, rate nu). Returns x, mean spend and
    each customer's true mean spend p / nu."""
    nu = rng.gamma(q, 1.0 / v, n)
    x = 1.0 + rng.poisson(2.0, n)
    mean = rng.gamma(p * x, 1.0 / nu) / x
    return x, mean, p / nu


def _mean_within(diff: Arr, n_se: float = 4.0) -> None:
    se = diff.std(ddof=1) / np.sqrt(diff.size)
    assert abs(diff.mean()) < n_se * se + 1e-12, (diff.mean(), se)


# ---------------------------------------------------------------------------------------------------------------
# Likelihoods


@pytest.mark.parametrize(("x", "t_x", "T"), [(3.0, 20.0, 30.0), (0.0, 0.0, 25.0), (1.0, 29.5, 30.0)])
def test_bgnbd_likelihood_equals_numerical_integration_over_lambda_and_p(x: float, t_x: float, T: float) -> None:
    r, alpha, a, b = 2.0, 3.0, 2.0, 3.0

    def integrand(p: float, lam: float) -> float:
        alive = (1 - p) ** x * lam**x * np.exp(-lam * T)
        gone = p * (1 - p) ** (x - 1) * lam**x * np.exp(-lam * t_x) if x > 0 else 0.0
        return float((alive + gone) * stats.gamma.pdf(lam, r, scale=1 / alpha) * stats.beta.pdf(p, a, b))

    direct, _ = integrate.dblquad(integrand, 0.0, 20.0, 0.0, 1.0, epsabs=1e-14, epsrel=1e-10)
    ll = bgnbd_log_likelihood(r, alpha, a, b, [x], [t_x], [T])
    assert ll.shape == (1,)
    assert np.exp(ll[0]) == pytest.approx(direct, rel=1e-7)


def test_bgnbd_likelihood_without_repeat_purchase_is_the_hand_derived_closed_form() -> None:
    # x = 0: A2 = B(a, b)/B(a, b) = 1 and no A4 term, so L = (alpha / (alpha + T))^r.
    r, alpha, a, b, T = 0.243, 4.414, 0.793, 2.426, 38.86
    ll = bgnbd_log_likelihood(r, alpha, a, b, [0], [0], [T])
    assert ll[0] == pytest.approx(r * np.log(alpha / (alpha + T)), rel=1e-12)


def test_bgnbd_likelihood_stays_finite_for_heavy_buyers() -> None:
    ll = bgnbd_log_likelihood(0.243, 4.414, 0.793, 2.426, [300], [38.0], [39.0])
    assert np.isfinite(ll).all()


def test_gamma_gamma_likelihood_equals_numerical_integration_over_nu() -> None:
    p, q, v, x, zbar = 6.25, 3.74, 15.44, 3.0, 35.0

    def integrand(nu: float) -> float:
        # the mean of x values has density x * f_sum(x * zbar), the sum ~ Gamma(p x, rate nu)
        return float(x * stats.gamma.pdf(x * zbar, p * x, scale=1 / nu) * stats.gamma.pdf(nu, q, scale=1 / v))

    direct, _ = integrate.quad(integrand, 0.0, np.inf, epsabs=1e-16, epsrel=1e-11, limit=200)
    ll = gamma_gamma_log_likelihood(p, q, v, [x], [zbar])
    assert np.exp(ll[0]) == pytest.approx(direct, rel=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# Expectations against simulation

TRUE = {"r": 0.6, "alpha": 5.0, "a": 0.8, "b": 2.5}
MODEL = BGNBD(**TRUE, log_likelihood=np.nan, n_customers=0, converged=True)


def test_unconditional_expected_purchases_match_a_monte_carlo_of_the_process() -> None:
    rng = np.random.default_rng(1)
    n = 400_000
    for t in (5.0, 40.0, 150.0):
        sim = _simulate_bgnbd(rng, n, **TRUE, T=np.full(n, t), t_future=0.0)
        mc, se = sim["x"].mean(), sim["x"].std(ddof=1) / np.sqrt(n)
        assert abs(float(MODEL.expected_purchases_new(t)) - mc) < 4 * se, (t, mc, se)


def test_conditional_expectation_and_p_alive_match_simulated_futures_within_each_frequency() -> None:
    # Law of total expectation: within any group defined by the observed data, the mean of E[Y(t) | x, t_x, T]
    # equals the mean of the simulated future purchases, and the mean P(alive) the share still alive.
    rng = np.random.default_rng(2)
    n = 300_000
    T = rng.uniform(10.0, 52.0, n)
    sim = _simulate_bgnbd(rng, n, **TRUE, T=T, t_future=26.0)
    pred = MODEL.expected_purchases(26.0, sim["x"], sim["t_x"], T)
    alive = MODEL.p_alive(sim["x"], sim["t_x"], T)
    for group in (sim["x"] == 0, sim["x"] == 1, (sim["x"] >= 2) & (sim["x"] <= 4), sim["x"] >= 5):
        assert group.sum() > 5_000
        _mean_within(pred[group] - sim["future"][group])
        _mean_within(alive[group] - sim["alive"][group])
    assert np.all(alive[sim["x"] == 0] == 1.0)


def test_purchase_distribution_sums_to_one_and_its_mean_is_the_closed_form_expectation() -> None:
    x, t_x, T = np.array([0.0, 1.0, 4.0, 12.0]), np.array([0.0, 3.0, 20.0, 29.0]), np.array([10.0, 30.0, 30.0, 30.0])
    pmf = MODEL.probability_of_purchases(26.0, x, t_x, T, max_purchases=400)
    assert pmf.min() >= 0 and pmf.sum(axis=1) == pytest.approx(1.0, abs=1e-12)
    assert pmf[:, -1].max() < 1e-9  # nothing left beyond 400 purchases: the mean below is the whole mean
    mean = pmf @ np.arange(pmf.shape[1])
    assert mean == pytest.approx(MODEL.expected_purchases(26.0, x, t_x, T), rel=1e-8)


def test_purchase_distribution_matches_simulated_futures_within_each_frequency() -> None:
    # Within groups of the observed data, the mean predicted P(Y = y) equals the share of simulated customers who
    # made exactly y purchases, and the median forecast beats the mean forecast on absolute error.
    rng = np.random.default_rng(4)
    n = 300_000
    T = rng.uniform(10.0, 52.0, n)
    sim = _simulate_bgnbd(rng, n, **TRUE, T=T, t_future=26.0)
    pmf = MODEL.probability_of_purchases(26.0, sim["x"], sim["t_x"], T, max_purchases=8)
    for group in (sim["x"] == 0, sim["x"] == 1, (sim["x"] >= 2) & (sim["x"] <= 4), sim["x"] >= 5):
        future = np.minimum(sim["future"][group], 8)
        for y in range(9):
            _mean_within(pmf[group, y] - (future == y))
    median = MODEL.median_purchases(26.0, sim["x"], sim["t_x"], T)
    mean = MODEL.expected_purchases(26.0, sim["x"], sim["t_x"], T)
    assert np.abs(median - sim["future"]).mean() < np.abs(mean - sim["future"]).mean()


def test_conditional_expectation_of_a_brand_new_customer_is_the_unconditional_one() -> None:
    t = np.array([1.0, 10.0, 52.0])
    assert MODEL.expected_purchases(t, 0, 0, 0) == pytest.approx(MODEL.expected_purchases_new(t), rel=1e-12)


def test_expected_spend_matches_the_simulated_true_mean_within_each_frequency() -> None:
    rng = np.random.default_rng(3)
    model = GammaGamma(p=6.25, q=3.74, v=15.44, log_likelihood=np.nan, n_customers=0, converged=True)
    x, mean, true_mean = _simulate_spend(rng, 300_000, 6.25, 3.74, 15.44)
    pred = model.expected_spend(x, mean)
    for k in (1.0, 2.0, 3.0, 5.0):
        _mean_within(pred[x == k] - true_mean[x == k])
    assert float(model.expected_spend(0, 0)[0]) == pytest.approx(6.25 * 15.44 / 2.74)


# ---------------------------------------------------------------------------------------------------------------
# Parameter recovery


def test_bgnbd_recovers_simulated_parameters() -> None:
    rng = np.random.default_rng(4)
    n = 20_000
    T = rng.uniform(20.0, 52.0, n)
    sim = _simulate_bgnbd(rng, n, **TRUE, T=T, t_future=0.0)
    fit = fit_bgnbd(sim["x"], sim["t_x"], T)
    assert fit.converged and fit.n_customers == n
    for (name, value), se in zip(TRUE.items(), fit.std_errors):
        est = fit.params[name]
        assert abs(est - value) < 3 * se, (name, est, value, se)  # within sampling error
        assert abs(est - value) / value < 0.15, (name, est, value)
    # the optimum: the true parameters cannot have a higher likelihood
    assert fit.log_likelihood >= bgnbd_log_likelihood(*TRUE.values(), sim["x"], sim["t_x"], T).sum()


def test_gamma_gamma_recovers_simulated_parameters_and_ignores_customers_without_spend() -> None:
    rng = np.random.default_rng(5)
    x, mean, _ = _simulate_spend(rng, 20_000, 6.25, 3.74, 15.44)
    x = np.concatenate([x, [0.0, 0.0, 4.0]])
    mean = np.concatenate([mean, [0.0, 0.0, 0.0]])
    fit = fit_gamma_gamma(x, mean)
    assert fit.converged and fit.n_customers == 20_000
    for (name, value), se in zip({"p": 6.25, "q": 3.74, "v": 15.44}.items(), fit.std_errors):
        est = fit.params[name]
        assert abs(est - value) < 3 * se, (name, est, value, se)
    assert fit.mean_spend == pytest.approx(6.25 * 15.44 / 2.74, rel=0.03)


# ---------------------------------------------------------------------------------------------------------------
# CLV


def test_clv_is_expected_purchases_times_expected_spend_and_discounting_lowers_it() -> None:
    gg = GammaGamma(p=6.25, q=3.74, v=15.44, log_likelihood=np.nan, n_customers=0, converged=True)
    x, t_x, T, m = np.array([0.0, 2.0, 7.0]), np.array([0.0, 10.0, 30.0]), np.array([39.0, 39.0, 39.0]), np.array(
        [0.0, 20.0, 50.0]
    )
    undiscounted = clv(MODEL, gg, x, t_x, T, m, horizon=52)
    direct = MODEL.expected_purchases(52, x, t_x, T) * gg.expected_spend(x, m)
    assert undiscounted == pytest.approx(direct, rel=1e-10)
    # steps only matter with discounting; a horizon that is not a multiple of the step keeps its last part
    assert clv(MODEL, gg, x, t_x, T, m, horizon=52, step=5) == pytest.approx(direct, rel=1e-10)
    discounted = clv(MODEL, gg, x, t_x, T, m, horizon=52, discount_rate=0.01)
    assert np.all(discounted < undiscounted) and np.all(discounted > undiscounted * 1.01**-52)


# ---------------------------------------------------------------------------------------------------------------
# Transactions to RFM


def test_summary_merges_same_day_purchases_and_splits_calibration_from_holdout() -> None:
    rows = [
        # customer, day, amount
        ("a", 0.0, 10.0),
        ("a", 0.4, 5.0),  # same day as the first: one transaction of 15
        ("a", 7.0, 20.0),
        ("a", 7.5, -30.0),  # day 7 nets to -10: a purchase day, but not in the monetary mean
        ("a", 14.0, 30.0),  # exactly at the calibration end: calibration
        ("a", 21.0, 8.0),  # holdout
        ("a", 60.0, 99.0),  # after the holdout: ignored
        ("b", 3.0, 12.0),  # one purchase, no repeat
        ("c", 25.0, 50.0),  # first purchase after the calibration end: not in the summary
    ]
    cust = np.array([r[0] for r in rows])
    s = summarize_purchases(cust, np.array([r[1] for r in rows]), np.array([r[2] for r in rows]), 14.0, 28.0,
                            unit_days=7.0)
    assert isinstance(s, PurchaseSummary)
    assert list(s.customer) == ["a", "b"] and len(s) == 2
    assert s.n_late_customers == 1 and s.n_nonpositive_days == 1
    assert s.frequency.tolist() == [2.0, 0.0]
    assert s.recency.tolist() == [2.0, 0.0]
    assert s.T.tolist() == [2.0, 11.0 / 7.0]
    assert s.monetary.tolist() == [30.0, 0.0] and s.monetary_frequency.tolist() == [1.0, 0.0]
    assert s.holdout_purchases.tolist() == [1.0, 0.0] and s.holdout_revenue.tolist() == [8.0, 0.0]
    # naive window (0, 14]: a's repeat days 7 and 14 (the acquisition day is day 0, not a repeat)
    assert s.naive_purchases.tolist() == [2.0, 0.0] and s.naive_revenue.tolist() == [30.0, 0.0]
    assert s.horizon == 2.0


def test_summary_splits_a_day_that_straddles_the_calibration_end() -> None:
    s = summarize_purchases(np.array([1, 1, 1]), np.array([0.0, 14.2, 14.8]), np.array([5.0, 6.0, 7.0]), 14.5, 20.0)
    assert s.frequency.tolist() == [1.0] and s.recency.tolist() == [14.0] and s.T.tolist() == [14.5]
    assert s.monetary.tolist() == [6.0]
    assert s.holdout_purchases.tolist() == [1.0] and s.holdout_revenue.tolist() == [7.0]


# ---------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("x", "t_x", "T", "message"),
    [
        ([1, -1], [1, 0], [5, 5], r"frequency must be >= 0.*rows 1"),
        ([1, 2], [1, 6], [5, 5], r"recency must be <= T.*rows 1"),
        ([0, 1], [2, 1], [5, 5], r"recency must be 0 when frequency is 0.*rows 0"),
        ([1.5], [1], [5], r"whole number"),
        ([1], [np.nan], [5], r"recency has non-finite values"),
    ],
)
def test_bad_rfm_input_raises_naming_the_rule_and_rows(x: list[float], t_x: list[float], T: list[float],
                                                        message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_bgnbd(x, t_x, T)
    with pytest.raises(ValueError, match=message):
        MODEL.p_alive(x, t_x, T)


def test_negative_monetary_raises() -> None:
    with pytest.raises(ValueError, match=r"monetary must be >= 0"):
        fit_gamma_gamma([1, 2, 3, 4], [5.0, -1.0, 3.0, 2.0])


# ---------------------------------------------------------------------------------------------------------------
# CDNOW


@pytest.fixture(scope="module")
def cdnow() -> tuple[PurchaseSummary, BGNBD, GammaGamma]:
    path = CDNOW / "CDNOW_master.txt"
    if not path.is_file():
        pytest.skip(f"../shared/datasets/cdnow not found: {path} is absent (only in the project's development "
                    f"checkout); these tests fit the published CDNOW models")
    tokens = np.array(path.read_text().split()[4:]).reshape(-1, 4)  # header: customer_id date number_of_cds dollar
    # dates YYYYMMDD -> days since 1997-01-01, parsed once per distinct date (546 of them)
    uniq, inv = np.unique(tokens[:, 1], return_inverse=True)
    iso = np.array([f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in uniq], dtype="datetime64[D]")
    days = (iso - np.datetime64("1997-01-01")).astype(np.float64)
    ts = days[inv.reshape(-1)]
    # Calibration: 1997-01-01 .. 1997-09-30 (day 272, 39 weeks); holdout the next 39 weeks, to 1998-06-30 (day 545).
    summary = summarize_purchases(tokens[:, 0].astype(np.int64), ts, tokens[:, 3].astype(np.float64), 272.0, 545.0,
                                  unit_days=7.0)
    bg = fit_bgnbd(summary.frequency, summary.recency, summary.T)
    gg = fit_gamma_gamma(summary.monetary_frequency, summary.monetary)
    return summary, bg, gg


def test_cdnow_fits_agree_with_the_published_one_tenth_sample_estimates(
    cdnow: tuple[PurchaseSummary, BGNBD, GammaGamma],
) -> None:
    summary, bg, gg = cdnow
    # SOURCE.md: this is the full file, 23,570 customers (the whole Q1-1997 cohort), not the 2,357-customer 1/10
    # sample of Fader-Hardie-Lee. The published values are one draw of a 1/10 sample of this cohort, so they differ
    # from the full-cohort fit by about the sampling error of a 1/10 sample: the full fit's standard error times
    # sqrt(10). Assert within 3 of those (and the per-customer log-likelihood, -9582.4 / 2357, within 2%).
    assert len(summary) == 23_570 and summary.n_late_customers == 0
    assert bg.converged and gg.converged
    scale = np.sqrt(10.0)
    for name, published, se in zip(("r", "alpha", "a", "b"), (0.243, 4.414, 0.793, 2.426), bg.std_errors):
        assert abs(bg.params[name] - published) < 3 * se * scale, (name, bg.params[name], published, se)
    assert bg.log_likelihood / bg.n_customers == pytest.approx(-9582.4 / 2357, rel=0.02)
    for name, published, se in zip(("p", "q", "v"), (6.25, 3.74, 15.44), gg.std_errors):
        assert abs(gg.params[name] - published) < 3 * se * scale, (name, gg.params[name], published, se)
    # the independence assumption behind clv(): frequency and spend are nearly uncorrelated on CDNOW
    has_spend = summary.monetary > 0
    assert abs(np.corrcoef(summary.frequency[has_spend], summary.monetary[has_spend])[0, 1]) < 0.15


def test_cdnow_holdout_predictions_beat_the_same_as_last_period_baseline(
    cdnow: tuple[PurchaseSummary, BGNBD, GammaGamma],
) -> None:
    summary, bg, gg = cdnow
    assert summary.horizon == 39.0
    result = evaluate(bg, gg, summary)
    assert result["purchases_mae_model"] < result["purchases_mae_naive"]
    assert result["revenue_mae_model"] < result["revenue_mae_naive"]
    assert result["purchases_corr_model"] > result["purchases_corr_naive"]
    assert result["revenue_corr_model"] > result["revenue_corr_naive"]
    # in aggregate the model is within 20% of the actual holdout repeat purchases
    assert result["purchases_total_model"] == pytest.approx(result["purchases_total_actual"], rel=0.2)
