"""Isolation Forest, LOF and One-Class SVM per (measurement, service) segment.

Each segment (:mod:`netsentry.detect.segment_features`) keeps a bounded, seeded
*reservoir* of the rows it learned (Vitter's Algorithm R: a uniform sample of at most
``capacity`` rows of everything it saw) and a model fitted on it. ``learn`` feeds the
reservoirs and refits a segment's model when it is due: once it holds ``min_count``
rows, and then every ``refit_every`` checks (``learn`` calls) in which it learned
anything. Fitting on the reservoir bounds both memory and fit time, whatever the
traffic.

Scores (higher = more anomalous; each is the raw score of its paper):

* Isolation Forest (Liu, Ting and Zhou, 2008): ``s(x) = 2^(-E[h(x)] / c(ψ))`` in (0, 1];
* LOF (Breunig et al., 2000), novelty mode: the local outlier factor, about 1 inside;
* One-Class SVM (Schölkopf et al., 2001): ``1 - f(x) / sum(alpha)`` in [0, 1], where
  ``f(x) = sum_i alpha_i k(sv_i, x)`` is the kernel expansion (RBF) over the support vectors;
  the SVM's own boundary ``f = rho`` sits at ``1 - rho / sum(alpha)``.

Warm-up: a segment without a model yet (fewer than ``min_count`` rows learned) and a
segment never seen score 0, below any fitted score, so no threshold flags them
(:meth:`SegmentDetector.judged` tells which rows were judged).

Persistence, without pickle. The One-Class SVM is stored as its parameters (support
vectors, dual coefficients, rho, gamma, the standardisation) and scored from them. Isolation
Forest and LOF are stored as the sample they were fitted on, and refitted from it on
load with the same derived seed: scikit-learn's fit is deterministic given its
``random_state``, so the model is the same one (with the same scikit-learn version).

Seeds: the reservoir draws of a ``learn`` call and the ``random_state`` of a fit are
derived from ``(seed, segment, rows seen / fits so far)``, so no generator state needs
storing and the same data learned in the same checks gives the same models.

``merge`` joins detectors whose segments are disjoint (sharding by segment is exact);
a segment learned on both sides raises :class:`NotMergeableError`.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import polars as pl
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM

from netsentry.detect.base import NotMergeableError, State, StateMismatchError, fingerprint
from netsentry.detect.segment_features import (
    Arrays,
    Baseline,
    Matrix,
    Segment,
    SegmentState,
    feature_names,
    pack_segments,
    reservoir_update,
    segment_features,
    segment_label,
    segments,
    standardise,
    unpack_segments,
)
from netsentry.model import Batch


class SegmentDetector:
    """Base: one reservoir and one scikit-learn model per segment (see module doc).

    Parameters
    ----------
    capacity : reservoir rows per segment (the most a model is fitted on).
    min_count : rows a segment must have learned before its first fit (warm-up).
    refit_every : checks between refits of a segment that learned new rows.
    baseline : per-entity z-scores for the ``z`` feature (e.g. a fitted ZScore); it is
        read, never changed, and not part of this detector's state.
    seed : seeds every reservoir draw and fit (the detector owns its randomness).
    """

    name: ClassVar[str]
    mergeable: ClassVar[bool] = False
    model_arrays: ClassVar[dict[str, int]]  # name -> ndim of each stored model array

    def __init__(
        self,
        *,
        capacity: int = 2048,
        min_count: int = 32,
        refit_every: int = 1,
        baseline: Baseline | None = None,
        seed: int = 0,
    ) -> None:
        if not 2 <= min_count <= capacity:
            raise ValueError(f"need 2 <= min_count <= capacity, got {min_count}, {capacity}")
        if refit_every < 1:
            raise ValueError(f"refit_every must be at least 1, got {refit_every}")
        self.capacity, self.min_count, self.refit_every = capacity, min_count, refit_every
        self.baseline, self.seed = baseline, seed
        self.features = feature_names(baseline is not None)
        self._segments: dict[Segment, SegmentState] = {}

    # -- one algorithm: fit, restore, score (overridden) ------------------------------

    def params(self) -> dict[str, Any]:
        return {}

    def _fit(self, x: Matrix, random_state: int) -> tuple[Arrays, Any]:
        """Default: the model is its training sample, rebuilt by ``_restore``."""
        return {"train": x}, self._restore({"train": x}, random_state)

    def _restore(self, model: Arrays, random_state: int) -> Any:
        return None

    def _score(self, model: Arrays, cache: Any, x: Matrix) -> Matrix:
        raise TypeError(f"{type(self).__name__} must define _score (each algorithm does)")

    def fit_scorer(self, x: Matrix, random_state: int = 0) -> Callable[[Matrix], Matrix]:
        """Fit one model on a plain matrix; returns ``score(matrix) -> scores``."""
        model, cache = self._fit(np.asarray(x, dtype=np.float64), random_state)
        return lambda z: self._score(model, cache, np.asarray(z, dtype=np.float64))

    # -- the detector contract --------------------------------------------------------

    def _random_state(self, segment: Segment, *counts: int) -> int:
        words = [zlib.crc32(part.encode()) for part in segment]
        return int(np.random.SeedSequence([self.seed, *words, *counts]).generate_state(1)[0])

    def score(self, batch: Batch) -> Matrix:
        """Anomaly scores (pure); 0 for rows of segments without a model yet."""
        out = np.zeros(len(batch))
        fitted = {s for s, state in self._segments.items() if state.model}
        if not fitted:
            return out
        x = segment_features(batch, self.baseline)
        for segment, rows in segments(batch).items():
            if segment in fitted:
                state = self._segments[segment]
                out[rows] = self._score(state.model, state.cache, x[rows])
        return out

    def judged(self, batch: Batch) -> npt.NDArray[np.bool_]:
        """Rows whose segment has a fitted model (the others score 0)."""
        out = np.zeros(len(batch), dtype=bool)
        for segment, rows in segments(batch).items():
            state = self._segments.get(segment)
            out[rows] = state is not None and bool(state.model)
        return out

    def learn(self, batch: Batch, mask: npt.NDArray[np.bool_]) -> None:
        """Add the masked rows to their segments' reservoirs; refit the segments due."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(batch),):
            raise ValueError(f"mask has shape {mask.shape}, batch has {len(batch)} rows")
        if mask.any():
            x = segment_features(batch, self.baseline)
            time = batch.frame["time"].to_numpy()
            for segment, rows in segments(batch).items():
                rows = rows[mask[rows]]
                if len(rows) == 0:
                    continue
                rows = rows[np.argsort(time[rows], kind="stable")]
                state = self._segments.setdefault(
                    segment, SegmentState(np.zeros((0, len(self.features))))
                )
                rng = np.random.default_rng(self._random_state(segment, state.seen))
                state.sample = reservoir_update(
                    state.sample, state.seen, x[rows], self.capacity, rng
                )
                state.seen += len(rows)
                state.fresh += len(rows)
        for segment, state in self._segments.items():
            state.checks += 1
            due = not state.model or state.checks >= self.refit_every
            if due and state.fresh > 0 and len(state.sample) >= self.min_count:
                state.model, state.cache = self._fit(
                    state.sample, self._random_state(segment, state.fits)
                )
                state.fits += 1
                state.fresh = state.checks = 0

    def reference_scores(self) -> tuple[Matrix, npt.NDArray[np.str_]]:
        """Each fitted segment's reservoir scored by its model, with segment labels.

        What a :class:`~netsentry.detect.quantile.QuantileThreshold` is fitted on.
        """
        scores, labels = [], []
        for segment, state in self._segments.items():
            if state.model:
                scores.append(self._score(state.model, state.cache, state.sample))
                labels.append(np.full(len(state.sample), segment_label(segment)))
        if not scores:
            return np.zeros(0), np.zeros(0, dtype=np.str_)
        return np.concatenate(scores), np.concatenate(labels)

    def explain(self, batch: Batch) -> pl.DataFrame:
        """Per row: the feature farthest from its segment's reservoir (in its std units)."""
        x = segment_features(batch, self.baseline)
        deviation = np.zeros(x.shape)
        for segment, rows in segments(batch).items():
            state = self._segments.get(segment)
            if state is not None and len(state.sample):
                center, scale = standardise(state.sample)
                deviation[rows] = (x[rows] - center) / scale
        top = np.abs(deviation).argmax(axis=1) if len(x) else np.zeros(0, dtype=np.int64)
        names = np.array(self.features)[top] if len(x) else np.zeros(0, dtype=np.str_)
        return pl.DataFrame(
            {"feature": names.tolist(), "deviation": deviation[np.arange(len(x)), top]},
            schema={"feature": pl.String, "deviation": pl.Float64},
        )

    # -- persistence and merging ------------------------------------------------------

    def fingerprint(self) -> str:
        return fingerprint(
            {
                "detector": self.name,
                "version": 1,
                "features": list(self.features),
                "capacity": self.capacity,
                "min_count": self.min_count,
                "refit_every": self.refit_every,
                "seed": self.seed,
                "params": self.params(),
                "model": self.model_arrays,
            }
        )

    def state_dict(self) -> State:
        state = pack_segments(self._segments, self.model_arrays, len(self.features))
        return {"fingerprint": self.fingerprint(), **state}

    def load_state(self, state: State) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise StateMismatchError(
                f"{self.name} state has fingerprint {state.get('fingerprint')!r}, "
                f"expected {self.fingerprint()!r}"
            )
        self._segments = unpack_segments(state, self.model_arrays)
        for segment, seg in self._segments.items():
            if seg.model:
                seg.cache = self._restore(seg.model, self._random_state(segment, seg.fits - 1))

    def merge(self, other: SegmentDetector) -> SegmentDetector:
        """Join detectors that learned disjoint segments (e.g. sharded by segment)."""
        if type(other) is not type(self) or other.fingerprint() != self.fingerprint():
            raise NotMergeableError(f"{self.name}: cannot merge detectors of another configuration")
        shared = sorted(set(self._segments) & set(other._segments))
        if shared:
            raise NotMergeableError(
                f"{self.name}: segment {shared[0]} learned on both sides; a model refitted "
                "on a merged sample is not the model one pass would fit: shard by segment"
            )
        merged = copy.copy(self)
        merged._segments = copy.deepcopy({**self._segments, **other._segments})
        return merged

    def __len__(self) -> int:
        return len(self._segments)


class IsolationForestDetector(SegmentDetector):
    """Isolation Forest per segment (``n_estimators`` trees on ``max_samples`` rows each).

    >>> from netsentry.model import Batch
    >>> rng = np.random.default_rng(0)
    >>> values = np.r_[rng.normal(100, 5, 300), 5000.0]
    >>> b = Batch.from_columns(np.arange(301) * 3_600_000_000_000, ["m"] * 301, values, {})
    >>> det = IsolationForestDetector(seed=1)
    >>> det.learn(b, np.ones(301, dtype=bool))
    >>> scores = det.score(b)
    >>> bool(scores[-1] == scores.max())
    True
    """

    name = "iforest"
    model_arrays: ClassVar[dict[str, int]] = {"train": 2}

    def __init__(self, *, n_estimators: int = 100, max_samples: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_estimators, self.max_samples = n_estimators, max_samples

    def params(self) -> dict[str, Any]:
        return {"n_estimators": self.n_estimators, "max_samples": self.max_samples}

    def _restore(self, model: Arrays, random_state: int) -> Any:
        x = model["train"]
        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(x)),
            random_state=random_state,
        )
        return forest.fit(x)

    def _score(self, model: Arrays, cache: Any, x: Matrix) -> Matrix:
        return np.asarray(-cache.score_samples(x), dtype=np.float64)


class LocalOutlierFactorDetector(SegmentDetector):
    """LOF per segment, in novelty mode, on standardised features."""

    name = "lof"
    model_arrays: ClassVar[dict[str, int]] = {"train": 2}

    def __init__(self, *, n_neighbors: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_neighbors = n_neighbors

    def params(self) -> dict[str, Any]:
        return {"n_neighbors": self.n_neighbors}

    def _restore(self, model: Arrays, random_state: int) -> Any:
        x = model["train"]
        center, scale = standardise(x)
        lof = LocalOutlierFactor(n_neighbors=min(self.n_neighbors, len(x) - 1), novelty=True)
        return center, scale, lof.fit((x - center) / scale)

    def _score(self, model: Arrays, cache: Any, x: Matrix) -> Matrix:
        center, scale, lof = cache
        return np.asarray(-lof.score_samples((x - center) / scale), dtype=np.float64)


def kernel_mass(support: Matrix, dual_coef: Matrix, gamma: float, x: Matrix) -> Matrix:
    """``f(x) = sum_i alpha_i exp(-gamma |x - sv_i|^2)``, in chunks of rows that fit in memory."""
    out = np.empty(len(x))
    sv_sq = (support**2).sum(axis=1)
    step = max(1, 2**22 // max(1, len(support)))
    for start in range(0, len(x), step):
        part = x[start : start + step]
        d2 = (part**2).sum(axis=1)[:, None] + sv_sq[None, :] - 2.0 * part @ support.T
        out[start : start + step] = np.exp(-gamma * np.maximum(d2, 0.0)) @ dual_coef
    return out


class OneClassSVMDetector(SegmentDetector):
    """nu-One-Class SVM (RBF kernel) per segment, on standardised features.

    Stored as its parameters and scored from them (``kernel_mass``), no refit on load.
    """

    name = "ocsvm"
    model_arrays: ClassVar[dict[str, int]] = {
        "center": 1,
        "scale": 1,
        "support": 2,
        "dual_coef": 1,
        "rho": 1,
        "gamma": 1,
    }

    def __init__(self, *, nu: float = 0.1, gamma: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 < nu <= 1:
            raise ValueError(f"nu must be in (0, 1], got {nu}")
        self.nu, self.gamma = nu, gamma

    def params(self) -> dict[str, Any]:
        return {"nu": self.nu, "gamma": self.gamma}

    def _fit(self, x: Matrix, random_state: int) -> tuple[Arrays, Any]:
        center, scale = standardise(x)
        svm = OneClassSVM(nu=self.nu, gamma="scale" if self.gamma is None else self.gamma)
        svm.fit((x - center) / scale)
        model = {
            "center": center,
            "scale": scale,
            "support": np.asarray(svm.support_vectors_, dtype=np.float64),
            "dual_coef": np.asarray(svm.dual_coef_[0], dtype=np.float64),
            "rho": -np.asarray(svm.intercept_, dtype=np.float64),
            "gamma": np.array([svm._gamma], dtype=np.float64),
        }
        return model, None

    def _score(self, model: Arrays, cache: Any, x: Matrix) -> Matrix:
        z = (x - model["center"]) / model["scale"]
        mass = kernel_mass(model["support"], model["dual_coef"], float(model["gamma"][0]), z)
        return np.asarray(1.0 - mass / model["dual_coef"].sum(), dtype=np.float64)
