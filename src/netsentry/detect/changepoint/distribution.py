"""Changes of distribution through indicator sequences (not only changes of the mean).

Split the range of the window into ``r`` cells ``A_1..A_r`` at its empirical quantiles
and form the ``r²`` indicator sequences::

    V_t^{ij} = 1(x_t ∈ A_i, x_{t+2} ∈ A_j),   t = 1..N-2

A change in the two-dimensional distribution of ``(x_t, x_{t+2})`` is a change in the
mean of at least one of them, so the mean test of :mod:`~.statistic` applied to each
``V^{ij}`` detects it: a variance change, for instance, moves mass between the middle
and the outer cells (use ``r ≥ 3``: with two cells split at the median a symmetric
change of spread is invisible).

Even for independent ``x`` the indicators are dependent up to lag 2 (``V_t`` and
``V_{t+2}`` share ``x_{t+2}``), so their sigma* always includes the lag-1 and lag-2
autocovariances (see :func:`~.kolmogorov.long_run_variance`). The ``r²`` tests are
combined by Bonferroni: each one runs at ``alpha / r²`` and the largest exceedance decides.
A split found at index ``n`` of the indicators is a change at ``x`` index ``n + 1``
(the middle of the two indicators that straddle it).

>>> rng = np.random.default_rng(7)
>>> x = np.r_[rng.normal(0, 1, 300), rng.normal(0, 3, 300)]  # same mean, triple spread
>>> result = distribution_test(x, alpha=0.01)
>>> result.exceedance > 1, abs(result.index - 300) < 30
(True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

from netsentry.detect.changepoint.kolmogorov import (
    critical_value,
    lags_needed,
    variance_from_autocovariances,
)
from netsentry.detect.changepoint.statistic import TWO_SIDED, exceedance, split_test

#: The lag of the pairs ``(x_t, x_{t+LAG})`` whose joint distribution is watched.
LAG = 2


@numba.njit(cache=True, nogil=True)
def cell_codes(x: np.ndarray, ordered: np.ndarray, cells: int) -> np.ndarray:
    """Cell of each value, ``0..cells-1``, cut at the empirical quantiles of ``x``.

    ``ordered`` is ``x`` sorted (a sliding window keeps it sorted as it moves, so no
    window is sorted from scratch). Cell ``i`` ends at the order statistic
    ``⌈N·(i+1)/r⌉``; ties go to the lower cell, so heavily tied data (many zeros) can
    leave a cell empty.
    """
    n = x.shape[0]
    edges = np.empty(cells - 1)
    for i in range(1, cells):
        edges[i - 1] = ordered[max((n * i + cells - 1) // cells - 1, 0)]
    codes = np.empty(n, dtype=np.int64)
    for t in range(n):
        c = 0
        while c < cells - 1 and x[t] > edges[c]:
            c += 1
        codes[t] = c
    return codes


@numba.njit(cache=True, nogil=True)
def _indicator_autocovariances(pair: np.ndarray, counts: np.ndarray, lags: int) -> np.ndarray:
    """``gamma_l`` of every centred indicator ``V^k - p_k`` at once, in O(M·lags).

    ``Σ_t (V_t - p)(V_{t-l} - p) = C_l - p(A_l + B_l) + (M - l)p²`` with ``C_l`` the
    pairs ``t - l, t`` both in cell pair k, ``A_l`` the ones of ``V_l..V_{M-1}`` and
    ``B_l`` those of ``V_0..V_{M-1-l}``.
    """
    m = pair.shape[0]
    r2 = counts.shape[0]
    co = np.zeros((r2, lags + 1))
    for lag in range(min(lags, m - 1) + 1):
        for t in range(lag, m):
            if pair[t] == pair[t - lag]:
                co[pair[t], lag] += 1.0
    head = np.zeros(r2)  # ones among V_0..V_{l-1}
    tail = np.zeros(r2)  # ones among V_{M-l}..V_{M-1}
    g = np.zeros((r2, lags + 1))
    for lag in range(min(lags, m - 1) + 1):
        if lag > 0:
            head[pair[lag - 1]] += 1.0
            tail[pair[m - lag]] += 1.0
        for k in range(r2):
            p = counts[k] / m
            a = counts[k] - head[k]
            b = counts[k] - tail[k]
            g[k, lag] = (co[k, lag] - p * (a + b) + (m - lag) * p * p) / m
    return g


@numba.njit(cache=True, nogil=True)
def distribution_split_test(
    x: np.ndarray,
    ordered: np.ndarray,
    cells: int,
    min_count: int,
    delta: float,
    long_run: bool,
    c_alpha: float,
) -> tuple[float, int, int]:
    """``(exceedance, change index in x, cell pair i·r + j)`` of the strongest indicator.

    All ``r²`` indicators are tested in one pass: the CUSUM ``S_n - n·p`` of an
    indicator only jumps where it is 1, so its extremes lie next to its own ones (or at
    the ends of the range), and the autocovariances of every indicator come from
    co-occurrence counts. So the whole test costs O(M·lags), about one mean test.
    ``c_alpha`` is the critical value for *one* indicator (already Bonferroni-corrected).
    Returns ``(0, -1, -1)`` when ``x`` is too short.
    """
    n = x.shape[0]
    m = n - LAG
    lo = max(min_count, 1)
    hi = m - lo
    if m < 2 or hi < lo:
        return 0.0, -1, -1
    r2 = cells * cells
    codes = cell_codes(x, ordered, cells)
    pair = np.empty(m, dtype=np.int64)
    counts = np.zeros(r2)
    for t in range(m):
        pair[t] = codes[t] * cells + codes[t + LAG]
        counts[pair[t]] += 1.0
    # Prefix counts at the split points where each indicator's CUSUM can peak.
    running = np.zeros(r2)
    top = np.zeros(r2)
    top_n = np.full(r2, -1, dtype=np.int64)
    for split in range(hi + 1):
        if split >= lo:
            for k in (pair[split - 1], pair[split]):  # just after / before a jump
                z = abs(running[k] - split * counts[k] / m)
                if z > top[k]:
                    top[k], top_n[k] = z, split
            if split in (lo, hi):
                for k in range(r2):
                    z = abs(running[k] - split * counts[k] / m)
                    if z > top[k]:
                        top[k], top_n[k] = z, split
        running[pair[split]] += 1.0
    lags = lags_needed(m, long_run, LAG)
    g = _indicator_autocovariances(pair, counts, lags)
    best, best_k = 0.0, -1
    for k in range(r2):
        if counts[k] == 0 or counts[k] == m or top_n[k] < 0:
            continue
        sigma = math.sqrt(variance_from_autocovariances(g[k], m, long_run, LAG, 1))
        ratio = exceedance(top[k] / math.sqrt(m), sigma, c_alpha)
        if ratio > best:
            best, best_k = ratio, k
    if best_k < 0:
        return 0.0, -1, -1
    n_star = top_n[best_k]
    if delta != 1.0:
        v = np.zeros(m)
        for t in range(m):
            if pair[t] == best_k:
                v[t] = 1.0
        n_star = split_test(v, min_count, delta, TWO_SIDED, False, 0, True)[1]
    index = min(max(n_star + (LAG + 1) // 2, min_count), n - min_count)
    return best, index, best_k


def indicator_sequences(x: npt.ArrayLike, cells: int = 3) -> npt.NDArray[np.float64]:
    """The ``r² x (N-2)`` matrix of ``V_t^{ij}`` (row ``i·r + j``), for reading.

    >>> indicator_sequences([0.0, 5.0, 1.0, 6.0], cells=2).tolist()
    [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    """
    arr = np.ascontiguousarray(x, dtype=np.float64)
    codes = cell_codes(arr, np.sort(arr), cells)
    pair = codes[:-LAG] * cells + codes[LAG:]
    return np.asarray(pair[None, :] == np.arange(cells * cells)[:, None], dtype=np.float64)


@dataclass(frozen=True)
class DistributionTest:
    """Outcome of :func:`distribution_test`: above 1 means a change at level alpha."""

    exceedance: float
    index: int
    cells: tuple[int, int]


def distribution_test(
    x: npt.ArrayLike,
    *,
    alpha: float = 0.01,
    cells: int = 3,
    min_count: int = 8,
    delta: float = 1.0,
    long_run: bool = False,
) -> DistributionTest:
    """Test ``x`` for one change of the distribution of ``(x_t, x_{t+2})``.

    ``index`` is the first point of the new regime (-1 when ``x`` is too short) and
    ``cells`` the pair ``(i, j)`` whose indicator moved most.
    """
    if cells < 2:
        raise ValueError(f"cells must be at least 2, got {cells}")
    arr = np.ascontiguousarray(x, dtype=np.float64)
    c_alpha = critical_value(alpha / (cells * cells))
    ratio, index, pair = distribution_split_test(
        arr, np.sort(arr), cells, min_count, float(delta), long_run, c_alpha
    )
    i, j = divmod(int(pair), cells) if pair >= 0 else (-1, -1)
    return DistributionTest(float(ratio), int(index), (i, j))
