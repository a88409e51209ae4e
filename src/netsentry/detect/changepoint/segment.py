"""Offline segmentation: every change moment of a whole series, by binary segmentation.

Test the series (stage 1 of :mod:`~.statistic`, and the indicator test of
:mod:`~.distribution` when ``cells > 0``); if the larger exceedance is above 1, split
at its change moment and test both halves again, until no segment of at least
``2·min_count`` points shows a change. Each test costs O(N·b) with prefix sums (b the
bandwidth of sigma*, a few dozen at most), so a series with K changes costs
O(N·b·log K) for balanced splits.

Both tests together keep the false-alarm probability of one test at alpha by Bonferroni:
with the distribution test on, the mean test runs at alpha/2 and each of the ``r²``
indicators at alpha/(2r²) (:func:`stage1_levels`).

>>> rng = np.random.default_rng(3)
>>> x = np.r_[rng.normal(0, 1, 200), rng.normal(2, 1, 200), rng.normal(-1, 1, 200)]
>>> [(c.index, c.direction) for c in segment(x, alpha=0.01)]
[(200, 1), (400, -1)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from netsentry.config import Alternative
from netsentry.detect.changepoint.distribution import distribution_split_test
from netsentry.detect.changepoint.kolmogorov import critical_value, window_critical_value
from netsentry.detect.changepoint.statistic import GREATER, LESS, TWO_SIDED, exceedance, split_test

SIDES = {"two-sided": TWO_SIDED, "greater": GREATER, "less": LESS}


@dataclass(frozen=True)
class Change:
    """One change moment: ``index`` is the first point of the new regime.

    ``size`` is the mean of the segment after minus the mean of the segment before,
    ``direction`` its sign, ``std_ratio`` the ratio of their standard deviations,
    ``test`` the test that found it (``"mean"`` or ``"distribution"``) and
    ``exceedance`` its statistic over its threshold at level ``alpha``.
    """

    index: int
    size: float
    direction: int
    std_ratio: float
    test: str
    stage: int
    exceedance: float
    alpha: float


def stage1_levels(alpha: float, cells: int, alternative: Alternative) -> tuple[float, float]:
    """``(alpha of the mean test, alpha of one indicator)``; the second is 0 when it is off.

    >>> stage1_levels(0.01, 0, "two-sided"), stage1_levels(0.01, 3, "two-sided")
    ((0.01, 0.0), (0.005, 0.0005555555555555556))
    """
    if cells and alternative == "two-sided":
        return alpha / 2, alpha / (2 * cells * cells)
    return alpha, 0.0


def validate(alpha: float, delta: float, min_count: int, cells: int) -> None:
    """Refuse parameters outside their ranges, with the range in the message."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be within [0, 1], got {delta}")
    if min_count < 2:
        raise ValueError(f"min_count (points per segment) must be at least 2, got {min_count}")
    if cells != 0 and not 2 <= cells <= 8:
        raise ValueError(f"cells must be 0 (no distribution test) or within 2..8, got {cells}")


def spread_ratio(before: float, after: float) -> float:
    """``after / before`` standard deviation; 1 when both are 0, inf from 0 to more."""
    if before > 0:
        return after / before
    return 1.0 if after == 0 else float("inf")


def segment(
    x: npt.ArrayLike,
    *,
    alpha: float = 0.01,
    delta: float = 0.5,
    min_count: int = 8,
    cells: int = 0,
    long_run: bool = True,
    alternative: Alternative = "two-sided",
) -> list[Change]:
    """Change moments of ``x`` in increasing order (binary segmentation).

    Parameters
    ----------
    alpha : false-alarm probability of each test.
    delta : exponent of ``Y_N(n, delta)`` used to place a change (the test uses delta = 1).
        The default 1/2 places changes near a segment's ends better than delta = 1 and
        gives a higher F1 on every simulation of ``docs/changepoint.md``.
    min_count : fewest points of a segment (ruptures' ``min_size``).
    cells : quantile cells of the distribution test; 0 tests the mean only.
    long_run : sigma* from the long-run (autocorrelation-robust) estimate.
    alternative : ``"greater"`` / ``"less"`` find only increases / decreases (and turn
        the distribution test off).
    """
    validate(alpha, delta, min_count, cells)
    arr = np.ascontiguousarray(x, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("x must be finite (no NaN or inf)")
    side = SIDES[alternative]
    alpha_mean, alpha_dist = stage1_levels(alpha, cells, alternative)
    use_dist = alpha_dist > 0
    c_dist = critical_value(alpha_dist) if use_dist else np.inf
    found: dict[int, tuple[str, float]] = {}
    stack = [(0, arr.shape[0])]
    while stack:
        lo, hi = stack.pop()
        part = arr[lo:hi]
        stat, n_star, sigma = split_test(part, min_count, float(delta), side, long_run, 0)
        if n_star < 0:
            continue
        c_mean = window_critical_value(alpha_mean, hi - lo, alternative, long_run)
        best = exceedance(stat, sigma, c_mean)
        where, test = n_star, "mean"
        if use_dist:
            ratio, index, _ = distribution_split_test(
                part, np.sort(part), cells, min_count, float(delta), long_run, c_dist
            )
            if ratio > best:
                best, where, test = ratio, index, "distribution"
        if best > 1.0 and where > 0:
            found[lo + where] = (test, float(best))
            stack += [(lo, lo + where), (lo + where, hi)]
    bounds = [0, *sorted(found), arr.shape[0]]
    changes = []
    for k, index in enumerate(bounds[1:-1], start=1):
        before, after = arr[bounds[k - 1] : index], arr[index : bounds[k + 1]]
        size = float(after.mean() - before.mean())
        ratio = spread_ratio(float(before.std(ddof=1)), float(after.std(ddof=1)))
        test, best = found[index]
        changes.append(Change(index, size, int(np.sign(size)), ratio, test, 1, best, alpha))
    return changes
