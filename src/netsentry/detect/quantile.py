"""A quantile threshold: flag scores above the q-quantile of reference scores, per group.

Scores of different models are not on one scale (an Isolation Forest score of 0.6 and a
LOF of 1.6 say different things, and so do two segments' forests), so the threshold is
fitted per group (a segment label) on *reference* scores, e.g. each segment's training
sample scored by its own model (``SegmentDetector.reference_scores``). Rows of a group
never fitted fall back to the quantile over all groups.

Like :class:`~netsentry.detect.threshold.Tolerance` it holds nothing of the detector:
changing ``q`` means refitting this object on the same scores, never the model.

>>> thr = QuantileThreshold(q=0.9).fit(np.arange(100.0), np.repeat(["a", "b"], 50))
>>> thr.thresholds_
{'a': 44.1, 'b': 94.1}
>>> thr.flags(np.array([45.0, 45.0, 95.0]), np.array(["a", "b", "c"])).tolist()
[True, False, True]
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import numpy.typing as npt

from netsentry.detect.base import State, StateMismatchError, fingerprint

Floats = npt.NDArray[np.float64]


class QuantileThreshold:
    """Flag scores strictly above the ``q``-quantile of the reference scores of their group.

    Parameters
    ----------
    q : quantile in (0, 1); ``1 - q`` is the share of reference scores flagged.
    """

    def __init__(self, q: float = 0.99) -> None:
        if not 0.0 < q < 1.0:
            raise ValueError(f"q must be within (0, 1), got {q}")
        self.q = q
        self.thresholds_: dict[str, float] = {}
        self.overall_ = np.inf

    def fit(self, scores: Floats, groups: npt.ArrayLike | None = None) -> Self:
        """Per-group quantiles of the finite ``scores`` (one group when ``groups`` is None)."""
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.full(len(scores), "") if groups is None else np.asarray(groups, dtype=np.str_)
        if labels.shape != scores.shape:
            raise ValueError(f"groups has shape {labels.shape}, scores {scores.shape}")
        finite = np.isfinite(scores)
        scores, labels = scores[finite], labels[finite]
        self.overall_ = float(np.quantile(scores, self.q)) if len(scores) else np.inf
        names, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        parts = np.split(scores[order], np.cumsum(np.bincount(inverse, minlength=len(names)))[:-1])
        self.thresholds_ = {
            str(name): float(np.quantile(part, self.q))
            for name, part in zip(names, parts, strict=True)
        }
        return self

    def threshold(self, groups: npt.ArrayLike | None, n: int | None = None) -> Floats:
        """The threshold of each row (``n`` rows of one group when ``groups`` is None)."""
        if groups is None:
            return np.full(n or 0, self.thresholds_.get("", self.overall_))
        labels = np.asarray(groups, dtype=np.str_)
        names, inverse = np.unique(labels, return_inverse=True)
        per_name = np.array([self.thresholds_.get(str(g), self.overall_) for g in names])
        return per_name[inverse] if len(labels) else np.zeros(0)

    def flags(self, scores: Floats, groups: npt.ArrayLike | None = None) -> npt.NDArray[np.bool_]:
        """True where a score is strictly above its group's threshold (never before fit)."""
        scores = np.asarray(scores, dtype=np.float64)
        return np.asarray(scores > self.threshold(groups, len(scores)))

    # -- persistence (feedback may tune q; the fitted quantiles travel with the state) ----

    def fingerprint(self) -> str:
        return fingerprint({"threshold": "quantile", "version": 1, "q": self.q})

    def state_dict(self) -> State:
        return {
            "fingerprint": self.fingerprint(),
            "group": np.array(list(self.thresholds_), dtype=np.str_),
            "threshold": np.array(list(self.thresholds_.values()), dtype=np.float64),
            "overall": self.overall_,
        }

    def load_state(self, state: State) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise StateMismatchError(
                f"quantile threshold state {state.get('fingerprint')!r} is not for q={self.q}"
            )
        groups: Any = state["group"]
        self.thresholds_ = {
            str(g): float(t) for g, t in zip(groups, state["threshold"], strict=True)
        }
        self.overall_ = float(state["overall"])
