"""Exact, mergeable running moments: count, mean and M2 (sum of squared deviations).

The seed keeps ``s = Σx`` and ``q = Σx²`` and derives ``std = sqrt((q - s²/n)/(n-1))``.
That formula cancels catastrophically: for values near 1e9 with a spread of 1,
``q`` and ``s²/n`` agree in their first 17 digits and the difference is noise.
Here each group's moments are computed in two passes (mean, then squared deviations
from it) and groups are combined with Chan, Golub and LeVeque's update::

    n    = na + nb
    d    = mean_b - mean_a
    mean = mean_a + d * nb / n
    M2   = M2_a + M2_b + d² * na * nb / n

which is exact up to rounding in the deviations, never in the raw magnitudes.

>>> import numpy as np
>>> n, mean, m2 = merge(np.array([2]), np.array([1e9]), np.array([0.5]),
...                     np.array([2]), np.array([1e9 + 1]), np.array([0.5]))
>>> float(np.sqrt(m2[0] / (n[0] - 1)))  # std of [1e9-.5, 1e9+.5, 1e9+.5, 1e9+1.5]
0.816496580927726
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def merge(
    na: Ints, mean_a: Floats, m2_a: Floats, nb: Ints, mean_b: Floats, m2_b: Floats
) -> tuple[Ints, Floats, Floats]:
    """Combine two sets of moments element-wise (either side may have count 0)."""
    n = na + nb
    safe_n = np.where(n > 0, n, 1).astype(np.float64)
    delta = mean_b - mean_a
    mean = np.where(n > 0, mean_a + delta * (nb / safe_n), 0.0)
    m2 = m2_a + m2_b + delta * delta * (na * (nb / safe_n))
    return n, mean, np.where(n > 0, m2, 0.0)


def grouped(frame: pl.DataFrame, by: str = "key", value: str = "value") -> pl.DataFrame:
    """Per-group ``n``, ``mean`` and ``m2`` of ``value``, two-pass within each group."""
    x = pl.col(value)
    return frame.group_by(by).agg(
        pl.len().cast(pl.Int64).alias("n"),
        x.mean().alias("mean"),
        ((x - x.mean()) ** 2).sum().alias("m2"),
    )


def std(n: Ints, m2: Floats) -> Floats:
    """Sample standard deviation (ddof=1); NaN where fewer than two values."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 1, np.sqrt(np.maximum(m2, 0.0) / (n - 1)), np.nan)
