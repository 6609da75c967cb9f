"""The statistics of an experiment, from scipy and statsmodels (nothing hand-written that they provide):

- `sample_size`: users per arm to detect an absolute lift `mde` of a rate with a two-sided test
  (statsmodels `NormalIndPower` on Cohen's h);
- `sequential_sample_size`: users per arm at which the always-valid test below reaches that power (what an
  experiment plans for, since it decides with that test);
- `two_proportions`: difference of two rates, its Newcombe (score) interval and the pooled two-proportion z-test
  (statsmodels `confint_proportions_2indep`, `proportions_ztest`);
- `welch`: difference of two means (revenue per user) with Welch's t-test and its interval (scipy);
- `ratio`: difference of two ratio metrics (clicks per shown item) whose unit of randomisation is the user, by the
  delta method (Deng et al. 2018): an exposure-level z-test would treat one user's exposures as independent and
  understate the variance. Neither scipy nor statsmodels has it; it is the variance formula below, then scipy's
  normal distribution;
- `srm`: the sample-ratio-mismatch chi-square test of observed units against the planned shares (scipy); a
  p-value below `SRM_ALPHA` marks the whole result untrustworthy;
- `cuped`: the CUPED adjustment with a pre-period covariate (theta = cov(y, x) / var(x), pooled over arms);
- `msprt`: always-valid p-values of the mixture sequential probability ratio test (normal mixture, Johari et
  al. 2017, "Peeking at A/B tests"), valid however often one looks; `always_valid_interval` is the confidence
  sequence the same test inverts to (the guardrails' stop rule);
- `holm`: Holm's step-down correction for more than two arms (statsmodels `multipletests`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

SRM_ALPHA = 0.001  # the usual threshold: an SRM this unlikely means the assignment or logging is broken


@dataclass(frozen=True)
class Comparison:
    """Treatment minus control: the difference, its confidence interval and the test's statistic and p-value."""

    control: float
    treatment: float
    difference: float
    ci_low: float
    ci_high: float
    statistic: float
    p_value: float


def sample_size(baseline: float, mde: float, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0) -> int:
    """Users per arm (the control arm; the treatment gets `ratio` times as many) for a two-sided test at `alpha`
    to detect a rate moving from `baseline` to `baseline + mde` with probability `power`."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    if not 0 < baseline < 1 or not 0 < baseline + mde < 1 or mde == 0:
        raise ValueError(f"baseline {baseline} and baseline + mde {baseline + mde} must be rates in (0, 1), "
                         "and mde not 0")
    h = abs(proportion_effectsize(baseline + mde, baseline))
    n = NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power, ratio=ratio,
                                     alternative="two-sided")
    return int(np.ceil(n))


def sequential_power(baseline: float, mde: float, n: float, *, alpha: float = 0.05, tau: float | None = None) -> float:
    """Probability that the mSPRT (`msprt`, mixture sd `tau`, default `mde`) has rejected by the time each arm
    has `n` users when the true lift is `mde`, counting the last look only: a lower bound on the power of a test
    looked at continuously (its p-value is a running minimum). The last look rejects when |d| reaches
    c(V) = sqrt(2 V (V + tau2) / tau2 * (log(1/alpha) + log((V + tau2) / V) / 2)), V the difference's variance."""
    tau2 = (tau or mde) ** 2
    v = (baseline * (1 - baseline) + (baseline + mde) * (1 - baseline - mde)) / n
    c = np.sqrt(2 * v * (v + tau2) / tau2 * (np.log(1 / alpha) + 0.5 * np.log((v + tau2) / v)))
    se = np.sqrt(v)
    return float(sps.norm.cdf((abs(mde) - c) / se) + sps.norm.cdf((-abs(mde) - c) / se))


def sequential_sample_size(baseline: float, mde: float, *, alpha: float = 0.05, power: float = 0.8,
                           tau: float | None = None) -> int:
    """Users per arm at which the always-valid test detects `mde` with probability `power` (`sequential_power`,
    the smallest such n by bisection). It is larger than the fixed-horizon `sample_size`: the price of being
    allowed to look at any time."""
    lo, hi = 2, max(sample_size(baseline, mde, alpha=alpha, power=power), 4)
    while sequential_power(baseline, mde, hi, alpha=alpha, tau=tau) < power:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if sequential_power(baseline, mde, mid, alpha=alpha, tau=tau) < power else (lo, mid)
    return hi


def two_proportions(x_control: int, n_control: int, x_treatment: int, n_treatment: int, *,
                    alpha: float = 0.05) -> Comparison:
    """Rates x/n of two arms: the difference (treatment - control) with its score interval, and the pooled
    two-proportion z-test."""
    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

    with warnings.catch_warnings():  # no events in either arm yet: z is NaN, not a warning in the user's log
        warnings.simplefilter("ignore", RuntimeWarning)
        z, p = proportions_ztest([x_treatment, x_control], [n_treatment, n_control])
        low, high = confint_proportions_2indep(x_treatment, n_treatment, x_control, n_control, method="newcomb",
                                               compare="diff", alpha=alpha)
    pc, pt = x_control / n_control, x_treatment / n_treatment
    return Comparison(pc, pt, pt - pc, float(low), float(high), float(z), float(p))


def welch(control: np.ndarray, treatment: np.ndarray, *, alpha: float = 0.05) -> Comparison:
    """Means of two samples (per-user values): the difference with Welch's t-test and its interval."""
    c, t = np.asarray(control, dtype=np.float64), np.asarray(treatment, dtype=np.float64)
    with warnings.catch_warnings():  # constant samples (no revenue yet): NaN statistics, not warnings
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.ttest_ind(t, c, equal_var=False)
        ci = res.confidence_interval(confidence_level=1 - alpha)
    return Comparison(float(c.mean()), float(t.mean()), float(t.mean() - c.mean()), float(ci.low),
                      float(ci.high), float(res.statistic), float(res.pvalue))


def ratio_variance(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """(sum num / sum den, the variance of that ratio) over independent units with per-unit `num` and `den`
    (delta method: var(N/D) ~ (var N - 2 r cov(N, D) + r^2 var D) / (n mean(D)^2))."""
    x, y = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    n = len(x)
    if n < 2 or y.sum() == 0:
        return float("nan"), float("nan")
    r = x.sum() / y.sum()
    cov = np.cov(x, y, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * y.mean() ** 2)
    return float(r), float(max(var, 0.0))


def ratio(num_control: np.ndarray, den_control: np.ndarray, num_treatment: np.ndarray, den_treatment: np.ndarray,
          *, alpha: float = 0.05) -> Comparison:
    """Ratio metrics of two arms (e.g. clicks / shown items, per user): the difference with a z-test
    and its interval, the variance of each ratio by the delta method (`ratio_variance`)."""
    rc, vc = ratio_variance(num_control, den_control)
    rt, vt = ratio_variance(num_treatment, den_treatment)
    d, se = rt - rc, float(np.sqrt(vc + vt))
    z = d / se if se > 0 else (0.0 if d == 0 else float("inf") * np.sign(d))
    half = sps.norm.ppf(1 - alpha / 2) * se
    return Comparison(rc, rt, d, d - half, d + half, float(z), float(2 * sps.norm.sf(abs(z))))


@dataclass(frozen=True)
class SRM:
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    statistic: float
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_ALPHA


def srm(observed: list[int], shares: list[float]) -> SRM:
    """Chi-square goodness of fit of the units each arm got against the planned `shares` (summing to 1)."""
    obs = np.asarray(observed, dtype=np.float64)
    share = np.asarray(shares, dtype=np.float64)
    if obs.shape != share.shape or not np.isclose(share.sum(), 1.0):
        raise ValueError(f"srm: {len(observed)} counts against shares {shares} (they must match and sum to 1)")
    expected = share * obs.sum()
    res = sps.chisquare(obs, expected)
    return SRM(tuple(int(x) for x in observed), tuple(float(x) for x in expected), float(res.statistic),
               float(res.pvalue))


def cuped(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`y` adjusted by the pre-period covariate `x` (all arms pooled): y - theta (x - mean x), theta =
    cov(y, x) / var(x). The mean is unchanged; the variance shrinks by the squared correlation."""
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    var = x.var(ddof=1)
    theta = 0.0 if var == 0 else np.cov(y, x, ddof=1)[0, 1] / var
    return y - theta * (x - x.mean())


def msprt(differences: np.ndarray, variances: np.ndarray, tau2: float) -> np.ndarray:
    """Always-valid p-values after each look: `differences[k]` is the observed treatment - control difference
    of means at look k, `variances[k]` its variance (var_c / n_c + var_t / n_t). With a normal mixture N(0, tau2)
    over the true difference, the likelihood ratio against 0 is
    sqrt(V / (V + tau2)) exp(d^2 tau2 / (2 V (V + tau2))), and p_k = min(p_{k-1}, 1 / LR_k)."""
    d = np.asarray(differences, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    log_lr = 0.5 * np.log(v / (v + tau2)) + d**2 * tau2 / (2 * v * (v + tau2))
    p = np.minimum(1.0, np.exp(-log_lr))
    return np.minimum.accumulate(p)


def always_valid_interval(difference: float, variance: float, tau2: float, alpha: float = 0.05) -> tuple[float, float]:
    """The (1 - alpha) confidence sequence of the normal-mixture mSPRT at one look: every difference whose
    likelihood ratio stays below 1/alpha, d +- sqrt(V (V + tau2) / tau2 * (2 log(1/alpha) + log((V + tau2) / V))).
    It covers the true difference at every look at once with probability 1 - alpha, so a rule "stop when it
    excludes x" may be checked after every batch."""
    v = float(variance)
    if not v > 0:
        return float("nan"), float("nan")
    half = float(np.sqrt(v * (v + tau2) / tau2 * (2 * np.log(1 / alpha) + np.log((v + tau2) / v))))
    return difference - half, difference + half


def holm(p_values: list[float], *, alpha: float = 0.05) -> tuple[list[bool], list[float]]:
    """Holm's step-down correction: (reject per hypothesis, adjusted p-values)."""
    from statsmodels.stats.multitest import multipletests

    reject, adjusted, _, _ = multipletests(p_values, alpha=alpha, method="holm")
    return [bool(r) for r in reject], [float(a) for a in adjusted]
