"""Change-point detection: the two-stage "disorder" criterion (Brodsky-Darkhovsky).

* :mod:`.kolmogorov`: the threshold C(1) from alpha (Kolmogorov tail) and sigma*;
* :mod:`.statistic`: ``Y_N(n, delta)`` with prefix sums and the single-split test;
* :mod:`.distribution`: changes of distribution through indicator sequences;
* :mod:`.segment`: offline binary segmentation of a whole series;
* :mod:`.stage2`: is the number of triggers abnormal (normal, Chebyshev, VP bounds);
* :mod:`.detector`: :class:`ChangePoint`, the streaming detector under the contract,
  with its per-entity ring buffers (:mod:`.windows`), its numba loop (:mod:`._stream`)
  and its alarm records (:mod:`.alarms`).
"""

from netsentry.detect.base import NotMergeableError
from netsentry.detect.changepoint.alarms import ALARM_SCHEMA
from netsentry.detect.changepoint.detector import ChangePoint
from netsentry.detect.changepoint.distribution import distribution_test, indicator_sequences
from netsentry.detect.changepoint.kolmogorov import (
    critical_value,
    kolmogorov_sf,
    long_run_std,
    threshold,
)
from netsentry.detect.changepoint.segment import Change, segment
from netsentry.detect.changepoint.stage2 import TriggerBaseline, multiplier, tail_bound
from netsentry.detect.changepoint.statistic import brodsky_darkhovsky, max_statistic

__all__ = [
    "ALARM_SCHEMA",
    "Change",
    "ChangePoint",
    "NotMergeableError",
    "TriggerBaseline",
    "brodsky_darkhovsky",
    "critical_value",
    "distribution_test",
    "indicator_sequences",
    "kolmogorov_sf",
    "long_run_std",
    "max_statistic",
    "multiplier",
    "segment",
    "tail_bound",
    "threshold",
]
