"""Stage 2: is the number of disorders abnormal?

Stage 1 says *that* and *when* a series changed. Stage 2 counts the stage-1 triggers
``Z`` in a window (a block of points of one entity) and compares the count with
normal operation: from the counts of past normal blocks estimate mu and sigma and
alarm when ``Z > C(2) = mu + lambda·sigma``. The multiplier lambda for a false-alarm
probability alpha comes from one of three bounds on ``P{Z - mu ≥ lambda·sigma}``:

``"normal"``
    ``lambda = t_{1-alpha}``, the standard normal quantile: right for sums of many
    independent terms (central limit theorem).
``"chebyshev"``
    ``P{|Z - mu| ≥ lambda·sigma} ≤ 1/lambda²``, so ``lambda = 1/√alpha``: any
    distribution with a finite variance.
``"vp"`` (Vysochanskij-Petunin)
    ``P{|Z - mu| ≥ lambda·sigma} ≤ 4/(9·lambda²)`` for a *unimodal* Z and
    ``lambda > √(8/3)``, so ``lambda = √(4/(9·alpha))`` with ``alpha < 1/6``: tighter
    than Chebyshev when samples are few. At lambda = 3 the bound is 4/81 ≈ 0.0494.

The counts are kept as exact, mergeable moments (count, mean, M2).

>>> round(tail_bound(3.0, "vp"), 4), round(multiplier(0.05, "normal"), 4)
(0.0494, 1.6449)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

Bound = Literal["normal", "chebyshev", "vp"]
BOUNDS: tuple[str, ...] = get_args(Bound)
#: lambda must exceed √(8/3) for the Vysochanskij-Petunin bound to hold.
VP_MIN_LAMBDA = math.sqrt(8.0 / 3.0)


def validate_bound(alpha: float, bound: str) -> None:
    """Refuse an unknown bound or an alpha it cannot give."""
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {', '.join(BOUNDS)}, got {bound!r}")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"stage-2 alpha must be within (0, 0.5), got {alpha}")
    if bound == "vp" and alpha >= 1.0 / 6.0:
        raise ValueError(
            f"the Vysochanskij-Petunin bound needs lambda > sqrt(8/3), i.e. alpha < 1/6, "
            f"got {alpha}"
        )


def multiplier(alpha: float, bound: Bound) -> float:
    """lambda with ``P{Z - mu ≥ lambda·sigma} ≤ alpha`` under ``bound``.

    >>> round(multiplier(4 / 81, "vp"), 6), round(multiplier(1 / 9, "chebyshev"), 6)
    (3.0, 3.0)
    """
    validate_bound(alpha, bound)
    if bound == "normal":
        return NormalDist().inv_cdf(1.0 - alpha)
    if bound == "chebyshev":
        return 1.0 / math.sqrt(alpha)
    return math.sqrt(4.0 / (9.0 * alpha))


def tail_bound(lam: float, bound: Bound) -> float:
    """The false-alarm probability that ``bound`` guarantees at ``lambda`` (inverse of above).

    >>> round(tail_bound(2.0, "chebyshev"), 4), round(tail_bound(1.6449, "normal"), 4)
    (0.25, 0.05)
    """
    if lam <= 0:
        raise ValueError(f"lambda must be positive, got {lam}")
    if bound == "normal":
        return 1.0 - NormalDist().cdf(lam)
    if bound == "chebyshev":
        return min(1.0, 1.0 / (lam * lam))
    if bound == "vp":
        if lam <= VP_MIN_LAMBDA:
            raise ValueError(f"the Vysochanskij-Petunin bound needs lambda > {VP_MIN_LAMBDA:.5f}")
        return 4.0 / (9.0 * lam * lam)
    raise ValueError(f"bound must be one of {', '.join(BOUNDS)}, got {bound!r}")


@dataclass
class TriggerBaseline:
    """Moments of the trigger counts of normal blocks: ``n`` blocks, ``mean``, ``m2``.

    >>> base = TriggerBaseline()
    >>> base.update(np.array([0, 1, 0, 2, 1, 0, 1, 0]))
    >>> round(base.mean, 3), round(base.std, 3), round(base.threshold(0.05, "normal"), 3)
    (0.625, 0.744, 1.849)
    >>> base.exceeds(np.array([1, 2, 3]), 0.05, "normal").tolist()
    [False, True, True]
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1) of the counts; 0 below two blocks."""
        return math.sqrt(max(self.m2, 0.0) / (self.n - 1)) if self.n > 1 else 0.0

    def update(self, counts: npt.ArrayLike) -> None:
        """Fold the counts of more normal blocks in (Chan's parallel update)."""
        z = np.asarray(counts, dtype=np.float64)
        if z.size == 0:
            return
        self.merge_moments(int(z.size), float(z.mean()), float(((z - z.mean()) ** 2).sum()))

    def merge_moments(self, n: int, mean: float, m2: float) -> None:
        """Fold another set of moments in (e.g. another shard's baseline)."""
        total = self.n + n
        if total == 0:
            return
        d = mean - self.mean
        self.mean += d * n / total
        self.m2 += m2 + d * d * self.n * n / total
        self.n = total

    def threshold(self, alpha: float, bound: Bound) -> float:
        """C(2) = mu + lambda·sigma."""
        return self.mean + multiplier(alpha, bound) * self.std

    def exceeds(self, counts: npt.ArrayLike, alpha: float, bound: Bound) -> npt.NDArray[np.bool_]:
        """Counts strictly above C(2)."""
        return np.asarray(np.asarray(counts) > self.threshold(alpha, bound))
