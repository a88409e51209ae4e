"""NAB's scoring rules (Numenta Anomaly Benchmark, Lavin and Ahmad 2015), reimplemented.

The rules, as NAB's sweeper and optimizer apply them (numenta/NAB @ ea702d7):

* The first ``min(⌊0.15·n⌋, 0.15·5000)`` rows of a file are probationary: not scored.
* A row inside a labelled window ``[left, right]`` (width ``w`` rows) detected at
  position ``i`` weighs ``tp · S(-(right - i + 1)/w) / S(-1)``, with the scaled sigmoid
  ``S(y) = 2/(1 + e^{5y}) - 1`` (``S(y) = -1`` for ``y ≥ 3``); only the window's
  *earliest* detection counts. A window without detection costs ``-fn``.
* A detected row outside every window weighs ``fp · S((i - right)/(w - 1))`` after a
  window (the last one before it), ``-fp`` before the first window; each counts.
* A detector's anomaly scores are turned into detections with one threshold for the
  whole corpus, the one that maximises the corpus total (NAB's optimisation step).
* The corpus total is normalised: ``100 · (raw - null) / (perfect - null)`` where
  ``null = -fn · windows`` (nothing detected) and ``perfect = tp · windows``.

Profiles (cost matrices) are read from NAB's ``config/profiles.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

PROBATION_PERCENT = 0.15


@dataclass(frozen=True)
class Profile:
    """NAB's cost matrix (only tp, fp and fn enter the score)."""

    tp: float = 1.0
    fp: float = 0.11
    fn: float = 1.0

    @classmethod
    def load(cls, path: Path, name: str = "standard") -> Profile:
        matrix = json.loads(path.read_text())[name]["CostMatrix"]
        return cls(matrix["tpWeight"], matrix["fpWeight"], matrix["fnWeight"])


def scaled_sigmoid(position: float) -> float:
    """NAB's ``S(y) = 2·sigmoid(-5y) - 1``, and -1 from y = 3 on."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probation_length(rows: int) -> int:
    return int(min(math.floor(PROBATION_PERCENT * rows), PROBATION_PERCENT * 5000))


@dataclass(frozen=True)
class ScoredFile:
    """One file, ready for scoring: per row its weight if detected and its window.

    ``window[i]`` is the index of the window holding row ``i`` (-1 outside windows,
    -2 in the probationary period).
    """

    scores: npt.NDArray[np.float64]
    weight: npt.NDArray[np.float64]
    window: npt.NDArray[np.int64]
    windows: int

    @classmethod
    def build(
        cls, scores: npt.ArrayLike, windows: list[tuple[int, int]], profile: Profile
    ) -> ScoredFile:
        """``windows``: (first row, last row) of each labelled window, in order."""
        values = np.asarray(scores, dtype=np.float64)
        rows = len(values)
        weight = np.empty(rows)
        window = np.full(rows, -1, dtype=np.int64)
        max_tp = scaled_sigmoid(-1.0)
        previous: tuple[int, int] | None = None
        k = 0
        for i in range(rows):
            while k < len(windows) and i > windows[k][1]:
                previous = windows[k]
                k += 1
            if k < len(windows) and windows[k][0] <= i <= windows[k][1]:
                left, right = windows[k]
                width = right - left + 1
                weight[i] = profile.tp * scaled_sigmoid(-(right - i + 1) / width) / max_tp
                window[i] = k
            elif previous is None:
                weight[i] = -profile.fp
            else:
                left, right = previous
                width = right - left + 1
                weight[i] = profile.fp * scaled_sigmoid(abs(i - right) / (width - 1))
        window[: probation_length(rows)] = -2
        return cls(values, weight, window, len(windows))


def raw_score(files: list[ScoredFile], threshold: float, profile: Profile) -> float:
    """Corpus total at one threshold (rows with score ≥ threshold are detections)."""
    total = 0.0
    for f in files:
        detected = f.scores >= threshold
        total += float(f.weight[detected & (f.window == -1)].sum())
        for k in range(f.windows):
            hits = detected & (f.window == k)
            total += float(f.weight[hits].max()) if hits.any() else -profile.fn
    return total


def optimize(files: list[ScoredFile], profile: Profile) -> tuple[float, float]:
    """(threshold, raw corpus total) maximising the total; nothing detected included.

    One sweep from the highest score down, as NAB's optimizer: every distinct score is
    a candidate threshold and the total is updated incrementally.
    """
    scores = np.concatenate([f.scores for f in files])
    weight = np.concatenate([f.weight for f in files])
    window = np.concatenate([f.window for f in files])
    file_of = np.concatenate([np.full(len(f.scores), i) for i, f in enumerate(files)])
    order = np.argsort(-scores, kind="stable")
    total = -profile.fn * sum(f.windows for f in files)
    best, best_threshold = total, math.inf
    credited: dict[tuple[int, int], float] = {}
    for pos, i in enumerate(order):
        if window[i] == -1:
            total += weight[i]
        elif window[i] >= 0:
            key = (int(file_of[i]), int(window[i]))
            old = credited.get(key, -profile.fn)
            if weight[i] > old:
                total += weight[i] - old
                credited[key] = float(weight[i])
        last_of_tie = pos + 1 == len(order) or scores[order[pos + 1]] != scores[i]
        if last_of_tie and total > best:
            best, best_threshold = total, float(scores[i])
    return best_threshold, float(best)


def normalized(raw: float, windows: int, profile: Profile) -> float:
    """NAB's final score: 0 for the null detector, 100 for the perfect one."""
    null, perfect = -profile.fn * windows, profile.tp * windows
    return 100.0 * (raw - null) / (perfect - null)


def window_rows(
    timestamps: npt.NDArray[np.datetime64], windows: list[list[str]]
) -> list[tuple[int, int]]:
    """Row ranges of NAB's ``combined_windows.json`` entries (timestamps are exact rows)."""
    out = []
    for left, right in windows:
        lo = int(np.searchsorted(timestamps, np.datetime64(left.replace(" ", "T"))))
        hi = int(np.searchsorted(timestamps, np.datetime64(right.replace(" ", "T")), "right"))
        out.append((lo, hi - 1))
    return out
