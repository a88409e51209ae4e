"""Features of a Batch for detectors that need a vector per observation.

``value_hour``: the two documented features the streaming detectors use on metrics,
both scaled to [0, 1] as Half-Space Trees expect:

* ``log1p(|value|) / LOG_SPAN``, clipped (values up to e^25 ≈ 7e10 are distinct:
  counters' byte increases and gauges alike; the sign is dropped);
* the hour of day in UTC over 24 (traffic has a daily rhythm).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from netsentry.model import Batch

LOG_SPAN = 25.0
HOUR_NS = 3_600_000_000_000


def value_hour(batch: Batch) -> npt.NDArray[np.float64]:
    """(rows, 2) matrix: scaled log magnitude and hour of day, in [0, 1]."""
    value = batch.frame["value"].to_numpy()
    hour = (batch.frame["time"].to_numpy() // HOUR_NS) % 24
    log_value = np.clip(np.log1p(np.abs(value)) / LOG_SPAN, 0.0, 1.0)
    return np.column_stack([log_value, hour / 24.0])


class OnBatches:
    """The detector contract for streaming detectors that work on feature matrices.

    A subclass provides ``score_many(x)`` (pure) and ``learn_many(x)``; this adds
    ``score(batch)`` and ``learn(batch, mask)`` on :func:`value_hour` features, learning
    the masked rows in time order (a stream must see its points in order).
    """

    def score_many(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        raise TypeError(f"{type(self).__name__} must define score_many")

    def learn_many(self, x: npt.NDArray[np.float64]) -> None:
        raise TypeError(f"{type(self).__name__} must define learn_many")

    def score(self, batch: Batch) -> npt.NDArray[np.float64]:
        """Anomaly scores of the rows of ``batch`` (0 during warm-up; pure)."""
        return self.score_many(value_hour(batch))

    def learn(self, batch: Batch, mask: npt.NDArray[np.bool_]) -> None:
        """Learn the rows where ``mask`` is True, in time order."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(batch),):
            raise ValueError(f"mask has shape {mask.shape}, batch has {len(batch)} rows")
        order = np.argsort(batch.frame["time"].to_numpy(), kind="stable")
        self.learn_many(value_hour(batch)[order][mask[order]])
