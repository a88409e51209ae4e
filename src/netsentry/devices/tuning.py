"""Per-device detection thresholds, tuned from analyst feedback.

A device's detector flags a window when any of its scores exceeds that device's
threshold for the score's name (higher score = more anomalous; a name without a
threshold uses :data:`DEFAULT_THRESHOLD`). Analysts label windows ``false_positive``
(flagged, should not have been), ``confirmed`` (should be flagged) or ``missed``
(should have been flagged and was not). :func:`tune` moves the thresholds ``t`` so that
fewer labelled windows come out wrong::

    cost(t) = w_fp * FP(t) + w_missed * FN(t) + anchor * sum_i |t_i - t0_i| / (high_i - low_i)

``FP(t)``: false positives that ``t`` still flags; ``FN(t)``: confirmed or missed
windows that ``t`` does not flag; ``t0``: the current thresholds, clipped into
:data:`BOUNDS`. The last term, the anchor, pulls toward the current thresholds: moving
one threshold across its whole range costs as much as ``anchor`` false positives, so
with the defaults one false positive moves a threshold by at most a quarter of its
range and one missed anomaly by at most half of it; a tiny history cannot swing them far.

**Direction** (the seed had it inverted): false positives make the detector less
sensitive, missed anomalies more. Which way each threshold may move is decided, before
the search, by the feedback given since the last tune (``new`` windows), against the
current thresholds: a threshold that fired on a new false positive may rise; one that
could, within its bounds, catch a new missed (or unflagged confirmed) window may fall;
both: either way; neither: it stays. The search runs inside that box, so a round of
feedback made only of false positives never lowers a threshold and one made only of
missed reports never raises one, whatever the optimiser does. How far each moves is
decided by the whole labelled history. (A guarantee over whole histories, "one more
false positive anywhere never lowers any threshold", would contradict the cost: when a
false positive forces feature A up, a confirmed anomaly that A used to catch can only
be kept by lowering feature B.)

**Search**: TPE (optuna, seeded, :data:`TRIALS` trials, its logging silenced) over
the box, the current thresholds as the first trial; then an exact polish, one threshold
at a time: with the others fixed the cost of one threshold is a step function that
changes only at labelled scores, so its minimum over the box is found among a few
candidates. The polish alone stalls where two thresholds must move together (one up,
one down); TPE finds such trades. The result is deterministic for a seed, within
bounds, and never costs more than the current thresholds on the labelled history.

>>> history = History.from_rows([({"rate": 5.0}, "false_positive", True)] * 3)
>>> result = tune(history, {"rate": 4.0}, trials=16)
>>> result.thresholds["rate"], result.directions["rate"], result.cost_after.false_positives
(5.0, 'raise', 0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from netsentry.detect.profile import MEASURED_THRESHOLDS
from netsentry.devices.windows import FEATURES

Label = Literal["false_positive", "confirmed", "missed"]
LABELS: tuple[str, ...] = get_args(Label)
Direction = Literal["raise", "lower", "free", "hold"]

#: Starting thresholds of every device: |z| of each window feature against the
#: device's profile, and "forest" (the Isolation Forest anomaly score of Liu et al., in
#: (0, 1], about 0.5 for ordinary windows), as measured on normal streaming
#: (:data:`netsentry.detect.profile.MEASURED_THRESHOLDS` says how).
DEFAULT_THRESHOLDS: dict[str, float] = dict(MEASURED_THRESHOLDS)
#: Threshold of any other z-score name.
DEFAULT_THRESHOLD = MEASURED_THRESHOLDS[FEATURES[0]]
#: Bounds of a z-score threshold; also used for any name not in :data:`BOUNDS`.
DEFAULT_BOUNDS: tuple[float, float] = (2.0, 20.0)
Z_FEATURES = FEATURES

#: The range a tuned threshold stays in, per name.
BOUNDS: dict[str, tuple[float, float]] = {name: DEFAULT_BOUNDS for name in Z_FEATURES} | {
    "forest": (0.5, 0.95)
}
TRIALS = 96
POLISH_SWEEPS = 4

Matrix = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


def bounds_of(name: str) -> tuple[float, float]:
    return BOUNDS.get(name, DEFAULT_BOUNDS)


def effective(stored: Mapping[str, float] | None) -> dict[str, float]:
    """A device's thresholds: the defaults, overridden by what is stored for it."""
    return {**DEFAULT_THRESHOLDS, **(stored or {})}


def flags(scores: Mapping[str, float], thresholds: Mapping[str, float]) -> bool:
    """The verdict on one window: any score strictly above its name's threshold."""
    return any(
        score > thresholds.get(name, DEFAULT_THRESHOLDS.get(name, DEFAULT_THRESHOLD))
        for name, score in scores.items()
    )


@dataclass(frozen=True)
class CostWeights:
    """What a wrong window costs, and what moving a threshold across its range costs."""

    false_positive: float = 1.0
    missed: float = 2.0
    anchor: float = 4.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value >= 0 and (value > 0 or name == "anchor")):
                raise ValueError(f"cost weight {name} must be a finite number > 0, got {value}")


@dataclass(frozen=True)
class History:
    """Labelled windows of one device, column by column (unlabelled ones are left out).

    ``scores[w, i]`` is window ``w``'s score for ``names[i]`` (``-inf``: none, or NaN);
    ``new[w]``: labelled since the last tune.
    """

    names: tuple[str, ...]
    scores: Matrix
    false_positive: Mask
    should_fire: Mask
    new: Mask

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[Mapping[str, Any], str | None, bool]]) -> History:
        """From ``(scores, label, new)`` per window; a bad score or label names its row."""
        kept: list[tuple[dict[str, float], str, bool]] = []
        for index, (scores, label, new) in enumerate(rows):
            if label is None:
                continue
            if label not in LABELS:
                raise ValueError(f"window {index}: label must be one of {LABELS}, got {label!r}")
            kept.append((_checked(index, scores), label, bool(new)))
        names = tuple(sorted({name for scores, _, _ in kept for name in scores}))
        column = {name: i for i, name in enumerate(names)}
        matrix = np.full((len(kept), len(names)), -np.inf)
        for w, (scores, _, _) in enumerate(kept):
            for name, score in scores.items():
                matrix[w, column[name]] = score
        labels = np.array([label for _, label, _ in kept], dtype=object)
        return cls(
            names=names,
            scores=matrix,
            false_positive=np.asarray(labels == "false_positive", dtype=np.bool_),
            should_fire=np.asarray((labels == "confirmed") | (labels == "missed"), dtype=np.bool_),
            new=np.array([new for _, _, new in kept], dtype=np.bool_),
        )

    def __len__(self) -> int:
        return len(self.new)

    def columns(self, names: tuple[str, ...]) -> Matrix:
        """The score matrix over ``names`` (a name this history lacks: ``-inf``)."""
        out = np.full((len(self), len(names)), -np.inf)
        own = {name: i for i, name in enumerate(self.names)}
        for i, name in enumerate(names):
            if name in own:
                out[:, i] = self.scores[:, own[name]]
        return out


def _checked(index: int, scores: Mapping[str, Any]) -> dict[str, float]:
    if not isinstance(scores, Mapping):
        raise ValueError(f"window {index}: scores must be a mapping of name to number")
    out: dict[str, float] = {}
    for name, score in scores.items():
        if not isinstance(name, str) or isinstance(score, bool):
            raise ValueError(f"window {index}: score {name!r} = {score!r} is not a number")
        try:
            value = float(score)
        except (TypeError, ValueError):
            raise ValueError(
                f"window {index}: score {name!r} = {score!r} is not a number"
            ) from None
        out[name] = -math.inf if math.isnan(value) else value
    return out


@dataclass(frozen=True)
class Cost:
    """The cost of a set of thresholds on a labelled history (see the module's formula)."""

    false_positives: int
    missed: int
    errors: float
    anchor: float

    @property
    def total(self) -> float:
        return self.errors + self.anchor

    def as_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "total": self.total}


class Problem:
    """One device's labelled history, current thresholds and weights, as arrays."""

    def __init__(
        self, history: History, current: Mapping[str, float], weights: CostWeights
    ) -> None:
        self.names = tuple(sorted(set(DEFAULT_THRESHOLDS) | set(current) | set(history.names)))
        for name, value in current.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"threshold {name!r} = {value!r} is not a number")
            if not math.isfinite(value):
                raise ValueError(f"threshold {name!r} = {value!r} is not finite")
        bounds = np.array([bounds_of(name) for name in self.names], dtype=np.float64)
        self.low, self.high = bounds[:, 0], bounds[:, 1]
        self.span = self.high - self.low
        start = effective(current)
        self.theta0 = np.clip(
            [start.get(name, DEFAULT_THRESHOLD) for name in self.names], self.low, self.high
        )
        self.scores = history.columns(self.names)
        self.false_positive = history.false_positive
        self.should_fire = history.should_fire
        self.new = history.new
        self.weights = weights

    def cost(self, theta: Matrix) -> Cost:
        flagged = (self.scores > theta).any(axis=1)
        false_positives = int(np.count_nonzero(flagged & self.false_positive))
        missed = int(np.count_nonzero(~flagged & self.should_fire))
        w = self.weights
        return Cost(
            false_positives=false_positives,
            missed=missed,
            errors=w.false_positive * false_positives + w.missed * missed,
            anchor=w.anchor * float(np.sum(np.abs(theta - self.theta0) / self.span)),
        )

    def total(self, theta: Matrix) -> float:
        return self.cost(theta).total

    def box(self) -> tuple[list[Direction], Matrix, Matrix]:
        """Which way each threshold may move, from the new feedback, and the search box."""
        fires = self.scores > self.theta0
        raise_: Mask = np.any(fires & (self.false_positive & self.new)[:, None], axis=0)
        uncaught = self.should_fire & self.new & ~fires.any(axis=1)
        lower: Mask = np.any((self.scores > self.low) & uncaught[:, None], axis=0)
        low = np.where(lower, self.low, self.theta0)
        high = np.where(raise_, self.high, self.theta0)
        directions: list[Direction] = [
            "hold" if lo == hi else "free" if up and down else "raise" if up else "lower"
            for up, down, lo, hi in zip(
                raise_.tolist(), lower.tolist(), low.tolist(), high.tolist(), strict=True
            )
        ]
        return directions, low, high


@dataclass(frozen=True)
class TuneResult:
    previous: dict[str, float]
    thresholds: dict[str, float]
    directions: dict[str, Direction]
    cost_before: Cost
    cost_after: Cost
    trials: int

    @property
    def changed(self) -> bool:
        return self.thresholds != self.previous


def tune(
    history: History,
    current: Mapping[str, float],
    *,
    weights: CostWeights | None = None,
    trials: int = TRIALS,
    seed: int = 0,
) -> TuneResult:
    """New thresholds for one device from its labelled history (module docstring: how)."""
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    problem = Problem(history, current, weights or CostWeights())
    directions, low, high = problem.box()
    active = [i for i, direction in enumerate(directions) if direction != "hold"]
    theta = problem.theta0.copy()
    ran = 0
    if active:
        theta = polish(problem, search(problem, active, low, high, trials, seed), active, low, high)
        ran = trials
    before, after = problem.cost(problem.theta0), problem.cost(theta)
    assert after.total <= before.total, "the search starts at the current thresholds"
    return TuneResult(
        previous=dict(zip(problem.names, problem.theta0.tolist(), strict=True)),
        thresholds=dict(zip(problem.names, theta.tolist(), strict=True)),
        directions=dict(zip(problem.names, directions, strict=True)),
        cost_before=before,
        cost_after=after,
        trials=ran,
    )


def search(
    problem: Problem, active: list[int], low: Matrix, high: Matrix, trials: int, seed: int
) -> Matrix:
    """TPE over the box; the first trials are the current thresholds and their polish."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    for start in (problem.theta0, polish(problem, problem.theta0, active, low, high)):
        study.enqueue_trial({problem.names[i]: float(start[i]) for i in active})

    def objective(trial: optuna.Trial) -> float:
        theta = problem.theta0.copy()
        for i in active:
            theta[i] = trial.suggest_float(problem.names[i], float(low[i]), float(high[i]))
        return problem.total(theta)

    study.optimize(objective, n_trials=trials)
    best = problem.theta0.copy()
    for i in active:
        best[i] = study.best_params[problem.names[i]]
    return best


def polish(problem: Problem, theta: Matrix, active: list[int], low: Matrix, high: Matrix) -> Matrix:
    """Exact minimisation over one threshold at a time, until a sweep changes nothing."""
    theta = theta.copy()
    for _ in range(POLISH_SWEEPS):
        moved = False
        for i in active:
            candidate = theta.copy()
            candidate[i] = _best_single(problem, theta, i, float(low[i]), float(high[i]))
            if candidate[i] != theta[i] and problem.total(candidate) < problem.total(theta):
                theta, moved = candidate, True
        if not moved:
            break
    return theta


def _best_single(problem: Problem, theta: Matrix, i: int, low: float, high: float) -> float:
    """The best value of threshold ``i`` in ``[low, high]``, the others fixed.

    The windows the other thresholds flag do not depend on it; for the rest it is a
    step function changing at their scores (a window with score ``s`` is flagged for
    ``t < s``), so the minimum lies at a bound, at the current value, at a score or
    just below one. Ties go to the value nearest the current one (the anchor).
    """
    others = np.delete(problem.scores > theta, i, axis=1).any(axis=1)
    column = problem.scores[~others, i]
    fp = np.sort(column[problem.false_positive[~others]])
    fn = np.sort(column[problem.should_fire[~others]])
    scores = column[np.isfinite(column)]
    candidates = np.unique(
        np.concatenate(
            [[low, high, problem.theta0[i]], scores, np.nextafter(scores, -np.inf)]
        ).clip(low, high)
    )
    w = problem.weights
    errors = w.false_positive * (len(fp) - np.searchsorted(fp, candidates, side="right"))
    errors = errors + w.missed * np.searchsorted(fn, candidates, side="right")
    distance = np.abs(candidates - problem.theta0[i])
    total = errors + w.anchor * distance / problem.span[i]
    best = np.lexsort((-candidates, distance, total))[0]
    return float(candidates[best])
