"""Noise for differentially private releases, calibrated and sampled through OpenDP.

Why OpenDP and not numpy's samplers. Textbook Laplace noise drawn with floating-point arithmetic leaks: the set of
doubles `x + noise` can reach depends on `x`, so an exact output can reveal the input (Mironov 2012). OpenDP's
samplers draw exact discrete noise from a cryptographic source and round on a grid, with privacy maps that are
proven for that implementation. This module therefore never draws noise itself: it builds an OpenDP measurement
and lets its privacy map decide the scale.

Why one measurement per vector. `Mechanism.add_noise` hands the whole vector (every cell of one measure) to one
OpenDP measurement over `vector_domain` with an L1 (Laplace) or L2 (Gaussian) distance, so one call is one
release of the vector, and the sensitivity is the distance between the vectors of two neighbouring data sets
(what a person can change across all cells at once), not a per-cell figure.

Counts and sums. Counts use the discrete mechanisms on 64-bit integers (discrete Laplace, discrete Gaussian): the
output is a count, no rounding is needed afterwards, and an integer sensitivity is exact. Sums use the mechanisms
on floats, which OpenDP samples as discrete noise on a grid of spacing 2^k.

Calibration. `calibrate` binary-searches the smallest scale whose OpenDP privacy map at `d_in = sensitivity` is
within the target. Laplace is pure epsilon-DP. OpenDP's Gaussian is rho-zCDP; it is converted to approximate DP
with `make_zCDP_to_approxDP` (the tight conversion through the privacy profile) and `make_fix_delta`, so the
search runs directly on (epsilon, delta). The searches are cached: a release recalibrates the same parameters
every time.

Granularity of float noise. OpenDP's default float granularity is the finest one (2^-1074), which makes every
draw a big-integer computation. 100,000 draws on a shared 2-core machine: Gaussian 5.9-6.1 s that way against
1.1-1.4 s with `k = floor(log2(scale)) - 40` (noise on a grid 2^40 times finer than the scale), Laplace 2.3 s
against 0.6 s. A coarser grid costs privacy in
the map (rounding can move each entry by up to 2^k, so the map needs the vector's size), hence: float
mechanisms are calibrated at the exact default granularity for `epsilon * (1 - 1e-6)`, and `add_noise` uses the
coarse grid only when OpenDP's map for that grid and the vector's length still fits `epsilon`, which holds for
any vector under about a million entries; longer vectors fall back to the default grid. The scale this costs is
one part in a million.

OpenDP does not check that an input lies in the declared domain (a NaN handed to a `nan=False` float domain comes
back as noise around an arbitrary number), so `add_noise` refuses non-finite values itself.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import opendp.prelude as dp
from scipy import stats

from privacy.errors import PrivacyError

# OpenDP ships its measurements behind feature flags: "contrib" marks the constructors whose proofs are vetted by
# the OpenDP team but not (yet) by its external review. It is enabled here, in the one module that builds
# measurements, so that no other code path can construct OpenDP noise without going through the calibration below.
# "floating-point" is not needed: 0.16's float Laplace and Gaussian sample exactly on a grid, without the
# floating-point arithmetic that flag is about.
dp.enable_features("contrib")

Kind = Literal["laplace", "gaussian"]

# Relative epsilon kept back when calibrating float mechanisms, so the coarse-grid measurement fits (see above).
FLOAT_HEADROOM = 1e-6
# Float noise grid: 2^(floor(log2(scale)) - GRID_BITS).
GRID_BITS = 40
# Beyond this sigma the discrete Gaussian's variance equals sigma^2 to far below double precision (by Poisson
# summation the relative gap is of order exp(-2 pi^2 sigma^2)), and its pmf would take millions of points.
DISCRETE_GAUSSIAN_NUMERIC_MAX_SIGMA = 1e5


@dataclass(frozen=True)
class Mechanism:
    """A calibrated noise mechanism: `kind` with `scale` (b of Laplace, sigma of Gaussian) such that one call of
    `add_noise` on a vector whose neighbours differ by at most `sensitivity` (L1 for Laplace, L2 for Gaussian, in
    output units) is (epsilon, delta)-DP. `integer` mechanisms take and return int64 counts."""

    kind: Kind
    epsilon: float
    delta: float
    sensitivity: float
    integer: bool
    scale: float

    def add_noise(self, values: np.ndarray) -> np.ndarray:
        """One release of the whole vector through one OpenDP measurement (int64 in, int64 out when `integer`)."""
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise PrivacyError(f"add_noise takes a 1-dimensional vector; got shape {arr.shape}")
        if self.integer:
            if arr.size and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
                raise PrivacyError(f"this {self.kind} mechanism adds integer noise to counts: pass an integer "
                                   f"vector (got dtype {arr.dtype}), or calibrate with integer=False for sums")
            arr = arr.astype(np.int64)
        else:
            arr = arr.astype(np.float64)
            if not np.isfinite(arr).all():
                raise PrivacyError("add_noise got NaN or infinite values: clamp or fill them before the release "
                                   "(OpenDP would not refuse them and the output would be meaningless)")
        if arr.size == 0:
            return arr.copy()
        measurement = _noise_measurement(self, int(arr.size))
        out = measurement(arr.tolist())
        return np.asarray(out, dtype=np.int64 if self.integer else np.float64)

    def variance(self) -> float:
        """The exact variance of the noise one entry receives."""
        return _variance(self.kind, self.integer, self.scale)

    def interval(self, level: float = 0.95) -> float:
        """Half-width t of the central noise interval: P(|noise| <= t) >= level (exactly `level` for the continuous
        mechanisms, the smallest such integer for the discrete ones)."""
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < level < 1.0:
            raise PrivacyError(f"interval level must be in (0, 1), e.g. 0.95; got {level!r}")
        return _interval(self.kind, self.integer, self.scale, float(level))


@functools.lru_cache(maxsize=1024)
def _variance(kind: Kind, integer: bool, b: float) -> float:
    if kind == "laplace":
        if not integer:
            return 2.0 * b * b
        # discrete Laplace, pmf proportional to exp(-|x|/b): 2 e^{-1/b} / (1 - e^{-1/b})^2
        p = math.exp(-1.0 / b)
        one_minus_p = -math.expm1(-1.0 / b)
        return 2.0 * p / (one_minus_p * one_minus_p)
    if not integer or b > DISCRETE_GAUSSIAN_NUMERIC_MAX_SIGMA:
        return b * b
    x, pmf = _discrete_gaussian_pmf(b)
    return float(np.sum(x.astype(np.float64) ** 2 * pmf))


@functools.lru_cache(maxsize=1024)
def _interval(kind: Kind, integer: bool, b: float, level: float) -> float:
    if kind == "laplace":
        if integer:
            return float(stats.dlaplace(a=1.0 / b).interval(level)[1])
        return float(stats.laplace(scale=b).interval(level)[1])
    if not integer:
        return float(stats.norm(scale=b).interval(level)[1])
    if b > DISCRETE_GAUSSIAN_NUMERIC_MAX_SIGMA:
        return float(math.ceil(stats.norm(scale=b).interval(level)[1] - 0.5))
    x, pmf = _discrete_gaussian_pmf(b)
    half = len(x) // 2  # x[half] == 0
    covered = np.concatenate([[pmf[half]], pmf[half] + 2.0 * np.cumsum(pmf[half + 1:])])
    return float(np.searchsorted(covered, level - 1e-15))


def calibrate(kind: Kind, epsilon: float, delta: float, sensitivity: float, integer: bool) -> Mechanism:
    """The mechanism with the smallest scale whose OpenDP privacy map at `d_in = sensitivity` is within
    (epsilon, delta). Laplace: delta must be 0 (pure DP). Gaussian: delta in (0, 1)."""
    if kind not in ("laplace", "gaussian"):
        raise PrivacyError(f"mechanism kind must be 'laplace' or 'gaussian'; got {kind!r}")
    _check_positive("epsilon", epsilon)
    _check_positive("sensitivity", sensitivity)
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not math.isfinite(delta):
        raise PrivacyError(f"delta must be a number; got {delta!r}")
    if kind == "laplace" and delta != 0:
        raise PrivacyError(f"delta must be 0 for the Laplace mechanism (it is pure epsilon-DP); got {delta!r}: "
                           "use the gaussian mechanism for (epsilon, delta)-DP")
    if kind == "gaussian" and not 0.0 < delta < 1.0:
        raise PrivacyError(f"delta must be in (0, 1) for the Gaussian mechanism, typically well below "
                           f"1/number of people (e.g. 1e-6); got {delta!r}")
    scale = _calibrated_scale(kind, float(epsilon), float(delta), float(sensitivity), bool(integer))
    return Mechanism(kind=kind, epsilon=float(epsilon), delta=float(delta), sensitivity=float(sensitivity),
                     integer=bool(integer), scale=scale)


def _check_positive(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise PrivacyError(f"{field} must be a finite number > 0; got {value!r}")


def _build(kind: Kind, integer: bool, scale: float, delta: float, size: int | None = None,
           k: int | None = None) -> dp.Measurement:
    """The OpenDP measurement: vector of int64 or float, L1 (Laplace) or L2 (Gaussian) distance in float units;
    Gaussian converted from rho-zCDP to (epsilon, delta)-DP at the given delta."""
    atom = dp.atom_domain(T="i64") if integer else dp.atom_domain(T=float, nan=False)
    domain = dp.vector_domain(atom, size=size)
    if kind == "laplace":
        return dp.m.make_laplace(domain, dp.l1_distance(T=float), scale=scale, k=k)
    zcdp = dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale=scale, k=k)
    return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(zcdp), delta)


def _target(kind: Kind, epsilon: float, delta: float) -> float | tuple[float, float]:
    return epsilon if kind == "laplace" else (epsilon, delta)


@functools.lru_cache(maxsize=1024)
def _calibrated_scale(kind: Kind, epsilon: float, delta: float, sensitivity: float, integer: bool) -> float:
    eps = epsilon if integer else epsilon * (1.0 - FLOAT_HEADROOM)
    target = _target(kind, eps, delta)

    def fits(scale: float) -> bool:
        try:
            return bool(_build(kind, integer, scale, delta).check(sensitivity, target))
        except dp.OpenDPException:  # a scale so small that the map overflows: certainly not within the target
            return False

    # Search bounds: `upper` passes by a textbook bound (Laplace: sensitivity / epsilon; Gaussian: the zCDP
    # conversion eps <= rho + 2 sqrt(rho ln(1/delta)) with rho = min(eps/2, eps^2 / (16 ln(1/delta))) gives at
    # most eps), doubled; `lower` is a billion times smaller. OpenDP's own bound inference probes scales so small
    # that the Gaussian map overflows, which it reports as an error rather than a failed check.
    if kind == "laplace":
        upper = 2.0 * sensitivity / eps
    else:
        log_inv_delta = math.log(1.0 / delta)
        rho = min(eps / 2.0, eps * eps / (16.0 * log_inv_delta))
        upper = 2.0 * sensitivity / math.sqrt(2.0 * rho)
    try:
        scale = dp.binary_search(fits, bounds=(upper * 1e-9, upper), T=float)
    except (ValueError, dp.OpenDPException) as exc:
        raise PrivacyError(f"no {kind} noise scale reaches epsilon {epsilon:g}, delta {delta:g} at sensitivity "
                           f"{sensitivity:g} ({exc}); use a larger epsilon or delta, or tighter bounds") from exc
    if not _build(kind, integer, scale, delta).check(sensitivity, _target(kind, epsilon, delta)):
        raise PrivacyError(f"OpenDP's privacy map does not confirm the calibrated {kind} scale {scale:g}; "
                           "report this with the parameters")
    return float(scale)


@functools.lru_cache(maxsize=256)
def _noise_measurement(mechanism: Mechanism, size: int) -> dp.Measurement:
    """The measurement add_noise invokes for a vector of `size` entries: the coarse float grid when OpenDP's map
    for it fits (epsilon, delta), the exact default grid otherwise; integers have one grid."""
    m = mechanism
    if not m.integer:
        k = math.floor(math.log2(m.scale)) - GRID_BITS
        coarse = _build(m.kind, False, m.scale, m.delta, size=size, k=k)
        if coarse.check(m.sensitivity, _target(m.kind, m.epsilon, m.delta)):
            return coarse
    return _build(m.kind, m.integer, m.scale, m.delta)


def _discrete_gaussian_pmf(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Support -M..M (M = 12 sigma + 2: the mass beyond is below 1e-31) and the normalised pmf of the discrete
    Gaussian, proportional to exp(-x^2 / (2 sigma^2))."""
    bound = math.ceil(12.0 * sigma) + 2
    x = np.arange(-bound, bound + 1, dtype=np.int64)
    weights = np.exp(-(x.astype(np.float64) ** 2) / (2.0 * sigma * sigma))
    return x, weights / weights.sum()
