"""Stage-1 threshold: the Kolmogorov limit law and the scale sigma* it is measured in.

Under "no change", with delta = 1 and N → ∞ (Brodsky and Darkhovsky)::

    P{ max_n √N |Y_N(n, 1)| > C } → f(C / sigma*),   f(c) = 2 Σ_{k≥1} (-1)^{k+1} exp(-2k²c²)

``f`` is the tail of the Kolmogorov distribution (the supremum of a Brownian bridge)
and sigma* the long-run standard deviation of the sequence. The threshold C(1) for a
false-alarm probability alpha is ``sigma* · c_alpha`` with ``f(c_alpha) = alpha``; a
one-sided test (only increases, or only decreases) uses ``P{sup B > c} = exp(-2c²)``.

sigma* is estimated from the residuals about the two-segment fit at the candidate split
(so that a real change does not inflate it):

* ``long_run=False``: the sample variance (serially independent data);
* ``long_run=True``: AR(1)-prewhitened Bartlett (Andrews and Monahan, 1992). The
  lag-1 autocorrelation rho_hat (with Kendall's bias correction, clipped to
  [-0.9, 0.97]) whitens the residuals, a Bartlett kernel with the Newey-West bandwidth
  ``⌊4 (n/100)^{2/9}⌋`` estimates what dependence is left, and the result is recoloured
  by ``1/(1 - rho_hat)²``.

Finite samples: two corrections make the threshold hold from a few dozen points on
(:func:`window_critical_value`). sigma_hat is an estimate: as Student's t accounts for
an estimated variance, with ``sigma_hat²/sigma² ≈ chi²_nu/nu`` (nu from
:func:`effective_dof`) ``c_alpha`` solves ``E[f(c_alpha · sigma_hat/sigma)] = alpha``.
And the maximum runs over N points, not a continuum: Siegmund's corrected diffusion
approximation lowers ``c_alpha`` by ``0.5826/√N``. Measured false-alarm rates at
alpha = 0.05 (``docs/changepoint.md``): 0.039 to 0.065 for N = 168 to 1000 on
independent and AR(1) data up to phi = 0.8; at N = 50, 0.044 to 0.054 up to phi = 0.5
but 0.105 at phi = 0.8 (too few points to see such a dependence).

>>> round(critical_value(0.05), 4)
1.3581
>>> round(kolmogorov_sf(critical_value(0.01)), 6)
0.01
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
import numpy.typing as npt

from netsentry.config import Alternative

#: Bounds for rho_hat: beyond them 1/(1 - rho_hat)² is an extrapolation, not an estimate.
RHO_MIN, RHO_MAX = -0.9, 0.97


def kolmogorov_sf(c: float) -> float:
    """``P{sup |B| > c}`` for a Brownian bridge ``B`` (the Kolmogorov tail f(c)).

    >>> round(kolmogorov_sf(1.0), 4)
    0.27
    """
    return float(_tail(np.array([c]), two_sided=True)[0])


def _tail(c: npt.NDArray[np.float64], two_sided: bool) -> npt.NDArray[np.float64]:
    """Element-wise ``P{sup |B| > c}`` (or ``P{sup B > c}`` one-sided)."""
    c = np.maximum(np.asarray(c, dtype=np.float64), 1e-9)
    if not two_sided:
        return np.asarray(np.minimum(np.exp(-2.0 * c * c), 1.0))
    k = np.arange(1, 13, dtype=np.float64)
    sign = np.where(k % 2 == 1, 1.0, -1.0)
    series = 2.0 * (sign * np.exp(-2.0 * (k * k) * (c[..., None] ** 2))).sum(-1)
    # The theta-function form converges in a few terms where the series above does not.
    odd = (2.0 * k - 1.0) ** 2
    theta = np.exp(-odd * np.pi**2 / (8.0 * c[..., None] ** 2)).sum(-1)
    small = 1.0 - math.sqrt(2.0 * math.pi) / c * theta
    return np.asarray(np.clip(np.where(c < 0.6, small, series), 0.0, 1.0))


#: Gauss-Hermite nodes and weights for averaging over the spread of sigma_hat.
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(32)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def effective_dof(n: int | npt.NDArray[np.int64], long_run: bool) -> npt.NDArray[np.float64]:
    """Degrees of freedom nu of sigma_hat² (``sigma_hat²/sigma² ≈ chi²_nu/nu``).

    ``n - 2`` for the sample variance about two segment means. For the prewhitened
    Bartlett estimate ``1/nu = (L+1)/(1.5 n) + 2/n``: the Bartlett variance
    ``(4/3)(L+1)/n`` (Newey-West) plus ``4/n`` from recolouring by rho_hat.
    """
    size = np.maximum(np.asarray(n, dtype=np.float64), 1.0)
    if not long_run:
        return np.asarray(np.maximum(size - 2.0, 2.0))
    lags = np.floor(4.0 * (size / 100.0) ** (2.0 / 9.0))
    return np.asarray(np.maximum(1.0 / ((lags + 1.0) / (1.5 * size) + 2.0 / size), 2.0))


def _critical(
    alpha: float, dof: npt.NDArray[np.float64], two_sided: bool
) -> npt.NDArray[np.float64]:
    """Bisection, vectorised over ``dof``, for ``E[f(c · sigma_hat/sigma)] = alpha``."""
    finite = np.isfinite(dof)
    nu = np.where(finite, dof, 1.0)[:, None]
    # Wilson-Hilferty: (chi²_nu/nu)^{1/3} is close to normal with mean 1 - 2/(9·nu).
    root = 1.0 - 2.0 / (9.0 * nu) + _NODES[None, :] * np.sqrt(2.0 / (9.0 * nu))
    spread = np.where(finite[:, None], np.maximum(root, 1e-3) ** 1.5, 1.0)
    lo, hi = np.full(len(dof), 0.05), np.full(len(dof), 50.0)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        above = (_tail(mid[:, None] * spread, two_sided) * _WEIGHTS).sum(-1) > alpha
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return np.asarray(0.5 * (lo + hi), dtype=np.float64)


def critical_value(
    alpha: float, alternative: Alternative = "two-sided", dof: float = math.inf
) -> float:
    """``c_alpha`` with ``P{sup |B| > c_alpha} = alpha``, or ``P{sup B > c_alpha}`` one-sided.

    With a finite ``dof`` the threshold also covers the estimation error of sigma_hat
    (``E[f(c_alpha sigma_hat/sigma)] = alpha``), as Student's t covers it for one mean.

    >>> round(critical_value(0.05, "greater"), 4), round(critical_value(0.05, dof=30), 3)
    (1.2239, 1.446)
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    two_sided = alternative == "two-sided"
    if math.isinf(dof):
        return math.sqrt(-math.log(alpha) / 2.0) if not two_sided else _bisect(alpha)
    return float(_critical(alpha, np.array([dof]), two_sided)[0])


def _bisect(alpha: float) -> float:
    lo, hi = 0.05, 50.0
    while hi - lo > 1e-13:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kolmogorov_sf(mid) > alpha else (lo, mid)
    return 0.5 * (lo + hi)


#: Siegmund's correction for a maximum over N discrete points instead of a continuum:
#: ``-zeta(1/2)/sqrt(2 pi)`` (the mean overshoot of a Gaussian random walk).
DISCRETE_SHIFT = 0.5826


def window_critical_value(
    alpha: float, n: int, alternative: Alternative = "two-sided", long_run: bool = False
) -> float:
    """``c_alpha`` for a window of ``n`` points, the threshold the tests use.

    Two finite-sample corrections to the limit law: the spread of sigma_hat (nu from
    :func:`effective_dof`) and Siegmund's corrected diffusion approximation: the
    maximum over ``n`` points falls short of the bridge's supremum by about
    ``0.5826/√n`` (exact for Gaussian data, close for others), so ``c_alpha`` is
    lowered by that much.

    >>> round(window_critical_value(0.05, 200), 4)
    1.3296
    """
    return _window_critical_value(alpha, int(n), alternative, long_run)


@functools.lru_cache(maxsize=4096)
def _window_critical_value(alpha: float, n: int, alternative: Alternative, long_run: bool) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    dof = effective_dof(np.array([n]), long_run)
    c = _critical(alpha, dof, alternative == "two-sided")[0]
    return float(c - DISCRETE_SHIFT / math.sqrt(max(n, 1)))


@functools.lru_cache(maxsize=256)
def critical_value_table(
    alpha: float, max_length: int, alternative: Alternative, long_run: bool
) -> npt.NDArray[np.float64]:
    """:func:`window_critical_value` for windows of ``0..max_length`` points (entry N)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    sizes = np.arange(max_length + 1)
    table = _critical(alpha, effective_dof(sizes, long_run), alternative == "two-sided")
    table -= DISCRETE_SHIFT / np.sqrt(np.maximum(sizes, 1))
    table.setflags(write=False)
    return table


def threshold(alpha: float, sigma: float, alternative: Alternative = "two-sided") -> float:
    """C(1) = sigma* · c_alpha: the level that ``√N · max_n |Y_N(n, 1)|`` exceeds with prob. alpha.

    >>> round(threshold(0.05, 2.0), 4)
    2.7162
    """
    return sigma * critical_value(alpha, alternative)


@numba.njit(cache=True, nogil=True)
def newey_west_bandwidth(n: int) -> int:
    """Bartlett bandwidth ``⌊4 (n/100)^{2/9}⌋`` (Newey and West, 1994)."""
    return int(4.0 * (n / 100.0) ** (2.0 / 9.0))


@numba.njit(cache=True, nogil=True)
def lags_needed(n: int, long_run: bool, dependent_lags: int) -> int:
    """How many autocovariances :func:`variance_from_autocovariances` reads (past lag 0)."""
    if not long_run:
        return dependent_lags
    return newey_west_bandwidth(n) + dependent_lags + 1


@numba.njit(cache=True, nogil=True)
def autocovariances(e: np.ndarray, lags: int) -> np.ndarray:
    """``gamma_l = (1/n) Σ_t e_t e_{t-l}`` for ``l = 0..lags`` (0 past the data)."""
    n = e.shape[0]
    g = np.zeros(lags + 1)
    for lag in range(min(lags, n - 1) + 1):
        s = 0.0
        for t in range(lag, n):
            s += e[t] * e[t - lag]
        g[lag] = s / n
    return g


@numba.njit(cache=True, nogil=True)
def variance_from_autocovariances(
    g: np.ndarray, n: int, long_run: bool, dependent_lags: int, fitted_means: int
) -> float:
    """Long-run variance from the residuals' autocovariances ``g`` (see
    :func:`long_run_variance`); ``g`` holds at least :func:`lags_needed` + 1 values.
    """
    k = fitted_means
    if n < 2 or g[0] <= 0.0:
        return 0.0
    if not long_run:
        v = g[0]
        for lag in range(1, dependent_lags + 1):
            v += 2.0 * g[lag]
        v = max(v, g[0] / (1.0 + 2.0 * dependent_lags))
        return float(v / max(1.0 - k * (dependent_lags + 1.0) / n, 0.5))
    rho = g[1] / g[0]
    rho = min(max(rho + k * (1.0 + 3.0 * rho) / n, RHO_MIN), RHO_MAX)
    lags = newey_west_bandwidth(n) + dependent_lags
    # Autocovariances of the whitened u_t = e_t - rho·e_{t-1}, from those of e.
    v = (1.0 + rho * rho) * g[0] - 2.0 * rho * g[1]
    for lag in range(1, lags + 1):
        u_lag = (1.0 + rho * rho) * g[lag] - rho * (g[lag - 1] + g[lag + 1])
        v += 2.0 * (1.0 - lag / (lags + 1.0)) * u_lag
    v /= max(1.0 - k * (lags + 1.0) / n, 0.5)
    return float(max(v, 0.0) / ((1.0 - rho) * (1.0 - rho)))


@numba.njit(cache=True, nogil=True)
def long_run_variance(
    e: np.ndarray, long_run: bool, dependent_lags: int, fitted_means: int = 1
) -> float:
    """Variance of the residuals ``e`` as it enters √N-scaled sums.

    ``long_run``: AR(1)-prewhitened Bartlett (module docstring). Otherwise the sample
    variance, plus ``2 Σ_{l≤dependent_lags} gamma_l`` when the sequence is dependent up
    to that lag even for independent data (the indicator sequences of
    :mod:`~netsentry.detect.changepoint.distribution`); that sum is floored at
    ``gamma_0 / (1 + 2·dependent_lags)`` so a noisy estimate never reaches zero.

    ``e`` are residuals about ``fitted_means`` segment means; each fitted mean biases
    the autocovariances down by about ``gamma_0/n``, which is undone by dividing by
    ``1 - k(L+1)/n`` (k fitted means, L lags; floored at 1/2) and, for rho_hat, by
    Kendall's correction ``rho_hat + k(1 + 3·rho_hat)/n``.
    """
    n = e.shape[0]
    g = autocovariances(e, lags_needed(n, long_run, dependent_lags))
    return variance_from_autocovariances(g, n, long_run, dependent_lags, fitted_means)


def long_run_std(x: npt.ArrayLike, *, long_run: bool = True) -> float:
    """sigma* of a sequence about its mean (see the module docstring for the estimator).

    >>> rng = np.random.default_rng(0)
    >>> e = rng.normal(size=20_000)
    >>> x = np.empty_like(e); x[0] = e[0]
    >>> for t in range(1, len(e)): x[t] = 0.5 * x[t - 1] + e[t]
    >>> round(long_run_std(x), 1)  # AR(1), phi = 0.5: sigma_e / (1 - phi) = 2
    2.0
    """
    arr = np.asarray(x, dtype=np.float64)
    return math.sqrt(long_run_variance(arr - arr.mean(), long_run, 0))
