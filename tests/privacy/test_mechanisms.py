"""Noise mechanisms: the variance OpenDP's draws actually have against `Mechanism.variance()`, the calibrated scale
against closed forms, OpenDP's own privacy map confirming the calibration, and named refusals of bad parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st

from privacy.checks import noise_variance_check
from privacy.errors import PrivacyError
from privacy.mechanisms import Mechanism, calibrate


@pytest.fixture(scope="module")
def variance_rows() -> list[dict]:
    return noise_variance_check(draws=100_000, seed=0)


def test_empirical_variance_of_100k_draws_is_within_3_percent_of_theory_for_every_mechanism(
        variance_rows: list[dict]) -> None:
    # the standard error of a variance from 100k draws is 0.45% (Gaussian) to 0.7% (Laplace, kurtosis 6):
    # 3% is over 4 standard errors
    kinds = {(r["kind"], r["integer"]) for r in variance_rows}
    assert kinds == {("laplace", True), ("laplace", False), ("gaussian", True), ("gaussian", False)}
    assert len({r["epsilon"] for r in variance_rows}) >= 2
    for row in variance_rows:
        assert row["draws"] == 100_000
        assert row["relative_error"] < 0.03, row


def test_discrete_laplace_variance_is_the_closed_form_and_differs_from_the_continuous_one() -> None:
    mech = calibrate("laplace", 2.0, 0.0, 1.0, integer=True)
    b = mech.scale
    assert b == pytest.approx(0.5, rel=1e-9)
    closed = 2 * math.exp(-1 / b) / (1 - math.exp(-1 / b)) ** 2
    assert mech.variance() == pytest.approx(closed, rel=1e-12)
    assert mech.variance() == pytest.approx(st.dlaplace(a=1 / b).var(), rel=1e-9)
    # at b = 0.5 the lattice matters: the continuous formula 2b^2 = 0.5 is far off (0.313)
    assert abs(mech.variance() - 2 * b * b) > 0.1


def test_discrete_gaussian_variance_is_summed_from_its_pmf() -> None:
    mech = calibrate("gaussian", 1.0, 1e-6, 1.0, integer=True)
    sigma = mech.scale
    x = np.arange(-200, 201)
    pmf = np.exp(-(x**2) / (2 * sigma**2))
    pmf /= pmf.sum()
    assert mech.variance() == pytest.approx(float((x**2 * pmf).sum()), rel=1e-9)
    small = Mechanism("gaussian", 1.0, 1e-6, 1.0, True, 0.3)
    # at sigma 0.3 almost all mass sits at 0: the variance is well below sigma^2 = 0.09
    assert small.variance() < 0.05


def test_calibrated_continuous_laplace_scale_is_sensitivity_over_epsilon() -> None:
    for sensitivity, epsilon in [(1.0, 1.0), (3.0, 0.5), (100.0, 0.1), (0.25, 4.0)]:
        mech = calibrate("laplace", epsilon, 0.0, sensitivity, integer=False)
        # float mechanisms keep one part in a million of epsilon back (coarse noise grid, see the module)
        assert mech.scale == pytest.approx(sensitivity / epsilon, rel=2e-6)
        assert mech.scale >= sensitivity / epsilon
        integer = calibrate("laplace", epsilon, 0.0, sensitivity, integer=True)
        assert integer.scale == pytest.approx(sensitivity / epsilon, rel=1e-9)


def test_calibrated_gaussian_is_the_smallest_scale_opendp_accepts() -> None:
    import opendp.prelude as dp

    mech = calibrate("gaussian", 1.0, 1e-6, 2.0, integer=False)

    def eps_at(scale: float) -> float:
        meas = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(dp.m.make_gaussian(
            dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float), scale=scale)), 1e-6)
        return meas.map(2.0)[0]

    assert eps_at(mech.scale) <= 1.0
    assert eps_at(mech.scale * 0.999) > 1.0
    # tighter than the classic analytic bound sigma = sqrt(2 ln(1.25/delta)) * sensitivity / epsilon
    assert mech.scale < math.sqrt(2 * math.log(1.25 / 1e-6)) * 2.0 / 1.0


def test_add_noise_keeps_integer_counts_integer_and_floats_float() -> None:
    counts = calibrate("laplace", 1.0, 0.0, 1.0, integer=True).add_noise(np.array([5, 10, 15], dtype=np.int64))
    assert counts.dtype == np.int64 and counts.shape == (3,)
    sums = calibrate("gaussian", 1.0, 1e-6, 1.0, integer=False).add_noise(np.array([1.5, 2.5]))
    assert sums.dtype == np.float64 and sums.shape == (2,)
    assert calibrate("laplace", 1.0, 0.0, 1.0, integer=True).add_noise(np.array([], dtype=np.int64)).size == 0


def test_noise_interval_covers_its_level() -> None:
    for kind, delta in [("laplace", 0.0), ("gaussian", 1e-6)]:
        for integer in (True, False):
            mech = calibrate(kind, 1.0, delta, 2.0, integer=integer)
            half = mech.interval(0.95)
            if not integer:
                expected = 0.95
            elif kind == "laplace":
                expected = st.dlaplace(a=1 / mech.scale).cdf(half) - st.dlaplace(a=1 / mech.scale).cdf(-half - 1)
            else:
                x = np.arange(-1000, 1001)
                pmf = np.exp(-(x**2) / (2 * mech.scale**2))
                expected = pmf[np.abs(x) <= half].sum() / pmf.sum()
            # discrete intervals are the smallest integer half-width reaching the level
            assert expected >= 0.95 - 1e-12
            noise = mech.add_noise(np.zeros(20_000, dtype=np.int64 if integer else np.float64))
            coverage = float(np.mean(np.abs(noise) <= half))
            # 4 standard errors of a proportion near 0.95 over 20,000 draws
            assert abs(coverage - expected) < 0.006, (kind, integer, coverage, expected)
    mech = calibrate("laplace", 1.0, 0.0, 1.0, integer=False)
    assert mech.interval(0.95) == pytest.approx(mech.scale * math.log(20), rel=1e-12)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"kind": "laplace", "epsilon": 0.0, "delta": 0.0, "sensitivity": 1.0}, "epsilon"),
    ({"kind": "laplace", "epsilon": math.inf, "delta": 0.0, "sensitivity": 1.0}, "epsilon"),
    ({"kind": "laplace", "epsilon": -1.0, "delta": 0.0, "sensitivity": 1.0}, "epsilon"),
    ({"kind": "laplace", "epsilon": 1.0, "delta": 1e-6, "sensitivity": 1.0}, "delta"),
    ({"kind": "gaussian", "epsilon": 1.0, "delta": 0.0, "sensitivity": 1.0}, "delta"),
    ({"kind": "gaussian", "epsilon": 1.0, "delta": 1.0, "sensitivity": 1.0}, "delta"),
    ({"kind": "laplace", "epsilon": 1.0, "delta": 0.0, "sensitivity": 0.0}, "sensitivity"),
    ({"kind": "laplace", "epsilon": 1.0, "delta": 0.0, "sensitivity": math.nan}, "sensitivity"),
    ({"kind": "exponential", "epsilon": 1.0, "delta": 0.0, "sensitivity": 1.0}, "kind"),
])
def test_bad_parameters_are_refused_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(PrivacyError, match=field):
        calibrate(integer=False, **kwargs)


def test_non_finite_values_and_floats_for_counts_are_refused() -> None:
    with pytest.raises(PrivacyError, match="NaN or infinite"):
        calibrate("laplace", 1.0, 0.0, 1.0, integer=False).add_noise(np.array([1.0, np.nan]))
    with pytest.raises(PrivacyError, match="integer"):
        calibrate("laplace", 1.0, 0.0, 1.0, integer=True).add_noise(np.array([1.5]))
    with pytest.raises(PrivacyError, match="level"):
        calibrate("laplace", 1.0, 0.0, 1.0, integer=False).interval(1.5)
