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
