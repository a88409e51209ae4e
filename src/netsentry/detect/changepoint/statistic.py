"""The Brodsky-Darkhovsky statistic and the single-split test built on it.

For a sequence ``x_1..x_N`` and ``0 ≤ delta ≤ 1``::

    Y_N(n, delta) = [(n/N)(1 - n/N)]^delta · [ (1/n) Σ_{k≤n} x_k - (1/(N-n)) Σ_{k>n} x_k ]

With prefix sums ``S_n`` every ``Y_N(n, delta)`` costs O(1), so the whole family costs
O(N). For delta = 1 it is ``(S_n - (n/N) S_N) / N``, the CUSUM of the centred sequence,
which is what the Kolmogorov threshold of :mod:`~.kolmogorov` is calibrated for. So
the *test* (is there a change?) always uses ``√N · max_n |Y_N(n, 1)|``; delta only chooses
the *estimate* of the change moment ``n* = argmax_n |Y_N(n, delta)|``.

Values are centred on their first element before summing: the statistic does not
change, and values near 1e9 with a small spread keep their precision.

>>> x = np.r_[np.zeros(50), np.ones(50)]
>>> y = brodsky_darkhovsky(x)
>>> int(np.argmax(np.abs(y))) + 1, float(y[49])  # n* = 50 points in the left segment
(50, -0.25)
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

from netsentry.detect.changepoint.kolmogorov import long_run_variance

#: Sides of the test: any change, only increases, only decreases of the mean.
TWO_SIDED, GREATER, LESS = 0, 1, 2


def brodsky_darkhovsky(x: npt.ArrayLike, delta: float = 1.0) -> npt.NDArray[np.float64]:
    """``Y_N(n, delta)`` for ``n = 1..N-1`` (element ``n - 1``), in O(N) with prefix sums.

    >>> brodsky_darkhovsky([1.0, 1.0, 4.0], delta=0.0).tolist()
    [-1.5, -3.0]
    """
    arr = np.asarray(x, dtype=np.float64)
    big_n = arr.shape[0]
    if big_n < 2:
        return np.empty(0)
    s = np.cumsum(arr - arr[0])
    n = np.arange(1, big_n, dtype=np.float64)
    left = s[:-1] / n
    right = (s[-1] - s[:-1]) / (big_n - n)
    weight = (n / big_n * (1.0 - n / big_n)) ** delta
    return np.asarray(weight * (left - right), dtype=np.float64)


@numba.njit(cache=True, nogil=True)
def split_test(
    x: np.ndarray,
    min_count: int,
    delta: float,
    side: int,
    long_run: bool,
    dependent_lags: int,
    pooled: bool = False,
) -> tuple[float, int, float]:
    """One stage-1 test on ``x``: ``(T, n*, sigma*)``.

    ``T = √N · max_n ±Y_N(n, 1)`` over splits leaving at least ``min_count`` points on
    each side (sign by ``side``), ``n*`` the delta-estimate of the change moment (the
    number of points before it, -1 when ``x`` is too short), and ``sigma*`` the long-run
    standard deviation of the residuals about the two means split at the delta = 1 argmax
    (``pooled``: about the overall mean, as under "no change").
    """
    big_n = x.shape[0]
    if big_n < 2 * min_count or big_n < 2:
        return 0.0, -1, 0.0
    s = np.empty(big_n + 1)
    s[0] = 0.0
    x0 = x[0]
    for i in range(big_n):
        s[i + 1] = s[i] + (x[i] - x0)
    total = s[big_n]
    best, n_one = -np.inf, -1
    best_d, n_delta = -np.inf, -1
    for n in range(max(min_count, 1), big_n - max(min_count, 1) + 1):
        frac = n / big_n
        z = s[n] - frac * total  # N · Y_N(n, 1): positive when the left mean is higher
        stat = abs(z) if side == TWO_SIDED else (-z if side == GREATER else z)
        if stat > best:
            best, n_one = stat, n
        if delta != 1.0:
            y = (frac * (1.0 - frac)) ** delta * (s[n] / n - (total - s[n]) / (big_n - n))
            stat_d = abs(y) if side == TWO_SIDED else (-y if side == GREATER else y)
            if stat_d > best_d:
                best_d, n_delta = stat_d, n
    if n_one < 0:
        return 0.0, -1, 0.0
    if delta == 1.0:
        n_delta = n_one
    mean_left = s[n_one] / n_one
    mean_right = (total - s[n_one]) / (big_n - n_one)
    if pooled:
        mean_left = mean_right = total / big_n
    e = np.empty(big_n)
    for i in range(big_n):
        e[i] = (x[i] - x0) - (mean_left if i < n_one else mean_right)
    sigma = math.sqrt(long_run_variance(e, long_run, dependent_lags, 1 if pooled else 2))
    return max(best, 0.0) / math.sqrt(big_n), n_delta, sigma


@numba.njit(cache=True, nogil=True)
def exceedance(stat: float, sigma: float, c_alpha: float) -> float:
    """``T / C(1)`` with ``C(1) = sigma*·c_alpha``: above 1 means a change at level alpha.

    Zero sigma* (each side constant): 0 when nothing moved, ``inf`` otherwise.
    """
    if sigma > 0.0:
        return stat / (sigma * c_alpha)
    return np.inf if stat > 0.0 else 0.0


def max_statistic(
    x: npt.ArrayLike,
    *,
    min_count: int = 1,
    delta: float = 1.0,
    side: int = TWO_SIDED,
    long_run: bool = False,
) -> tuple[float, int, float]:
    """``(√N·max|Y_N(n,1)|, n*, sigma*)`` for a whole sequence (see :func:`split_test`).

    >>> stat, n_star, sigma = max_statistic([0.0, 0.0, 0.0, 3.0, 3.0, 3.0])
    >>> round(stat, 3), n_star, sigma
    (1.837, 3, 0.0)
    """
    arr = np.ascontiguousarray(x, dtype=np.float64)
    stat, n_star, sigma = split_test(arr, min_count, float(delta), side, long_run, 0)
    return float(stat), int(n_star), float(sigma)
