"""The latest scores a detector gave to new data: the reference of its quantile threshold.

A learned detector's scores have no fixed scale (a Half-Space Trees mass score of 0.6
means different things for different windows and features), so the check flags a score
above the ``q``-quantile of the last ``capacity`` scores the detector gave, per group
(e.g. segment; :class:`~netsentry.detect.quantile.QuantileThreshold`). These are
out-of-sample scores: a model's scores of its own training sample are lower than those
of new data from the same distribution (a One-Class SVM's far lower), so a threshold
fitted on them flags too much. A ring buffer, not a reservoir: models forget old
windows and are refitted, and their reference follows.

Warm-up: below ``min_count`` reference scores there is no threshold and nothing is
flagged (:meth:`ScoreHistory.threshold` is None).

>>> history = ScoreHistory(capacity=4, min_count=3)
>>> history.update(np.array([0.1, 0.2]))
>>> history.threshold(0.5) is None
True
>>> history.update(np.array([0.3, 0.4, 0.5]))
>>> history.scores_.tolist(), history.threshold(0.5).overall_
([0.2, 0.3, 0.4, 0.5], 0.35)
>>> history.update(np.array([9.0, 9.0]), np.array(["b", "b"]))
>>> history.threshold(0.5).thresholds_
{'': 0.45, 'b': 9.0}
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from netsentry.detect.base import State, StateMismatchError, fingerprint
from netsentry.detect.quantile import QuantileThreshold


class ScoreHistory:
    """The last ``capacity`` finite scores and their groups, oldest first."""

    def __init__(self, capacity: int = 4096, min_count: int = 1000) -> None:
        if not 1 <= min_count <= capacity:
            raise ValueError(f"need 1 <= min_count <= capacity, got {min_count}, {capacity}")
        self.capacity, self.min_count = capacity, min_count
        self.scores_: npt.NDArray[np.float64] = np.zeros(0)
        self.groups_: npt.NDArray[np.str_] = np.zeros(0, dtype=np.str_)

    def update(
        self, scores: npt.NDArray[np.float64], groups: npt.NDArray[np.str_] | None = None
    ) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.full(len(scores), "") if groups is None else np.asarray(groups, dtype=np.str_)
        finite = np.isfinite(scores)
        self.scores_ = np.concatenate([self.scores_, scores[finite]])[-self.capacity :]
        self.groups_ = np.concatenate([self.groups_, labels[finite]])[-self.capacity :]

    def threshold(self, q: float) -> QuantileThreshold | None:
        """The ``q``-quantile threshold of the history; None during warm-up."""
        if len(self.scores_) < self.min_count:
            return None
        return QuantileThreshold(q).fit(self.scores_, self.groups_)

    def fingerprint(self) -> str:
        return fingerprint({"component": "score_history", "capacity": self.capacity, "version": 2})

    def state_dict(self) -> State:
        return {
            "fingerprint": self.fingerprint(),
            "scores": self.scores_.copy(),
            "groups": self.groups_.copy(),
        }

    def load_state(self, state: State) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise StateMismatchError(f"score history state is not for capacity {self.capacity}")
        self.scores_ = np.asarray(state["scores"], dtype=np.float64)
        self.groups_ = np.asarray(state["groups"], dtype=np.str_)
