"""Thresholds turn scores into verdicts; they hold no learned state of the detector.

Keeping them apart (as scikit-learn keeps ``score_samples`` apart from ``predict``)
means a tolerance changed at run time takes effect at the next check without refitting
anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from netsentry.config import TOLERANCE_RANGE


@dataclass(frozen=True)
class Tolerance:
    """Flag scores strictly above ``tolerance`` (the seed's z-score threshold)."""

    tolerance: float = 3.0

    def __post_init__(self) -> None:
        low, high = TOLERANCE_RANGE
        if not low <= self.tolerance <= high:
            raise ValueError(f"tolerance must be within {low}..{high}, got {self.tolerance}")

    def flags(self, scores: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        return np.asarray(scores > self.tolerance)
