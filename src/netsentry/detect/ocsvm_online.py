"""Online One-Class SVM: random Fourier features and mini-batch SGD on the nu-SVM primal.

The RBF kernel ``k(x, y) = exp(-gamma |x - y|^2)`` is approximated by ``<z(x), z(y)>``
with ``z(x) = sqrt(2 / D) cos(W x + b)``, ``W ~ N(0, 2 gamma)``, ``b ~ U(0, 2 pi)``
(Rahimi and Recht, 2007), so the one-class SVM of Schölkopf et al. (2001) becomes linear
in ``D`` dimensions and can learn by stochastic gradient, one mini-batch at a time, with
memory that does not grow with the stream::

    min_{w, rho}  1/2 |w|^2 - rho + 1/nu E[max(0, rho - <w, z(x)>)]

Per mini-batch of ``batch_size`` points, with step ``eta``:

* ``rho`` moves towards the batch's exact minimiser for the current ``w``, the
  ``nu``-quantile of ``f(x) = <w, z(x)>`` (where the subgradient in ``rho`` vanishes);
* ``w <- (1 - eta) w + eta / nu * mean(z(x) [f(x) < rho])`` (the subgradient step);
* ``mass`` follows the same recursion with 1 in place of ``z(x)``, so ``w`` stays a
  combination of feature vectors whose weights sum to ``mass`` and ``f(x) / mass``
  approximates a kernel average in [0, 1].

``eta = batch_size / window``: an exponential memory of about ``window`` points, which
is how the model follows a drift. It starts from the warm-up's kernel mean (a Parzen
window, the ``nu = 1`` solution), already a fair detector, rather than from ``w = 0``
with decreasing steps, whose first large steps rest on a few dozen points.
The score is ``1 - f(x) / mass`` (about [0, 1], higher = more anomalous), the same
normalisation as :class:`~netsentry.detect.batch.OneClassSVMDetector`.

Warm-up: the first ``warm_up`` points learned are kept (bounded) and every score is 0
until then. With the last of them, ``gamma`` is set (if not given) to scikit-learn's
``"scale"``, ``1 / (d var(x))``, the features are drawn and ``epochs`` passes of SGD over
the kept points start the model; then the points are dropped.

>>> rng = np.random.default_rng(0)
>>> svm = OnlineOneClassSVM(warm_up=200, seed=1)
>>> scores = svm.score_learn(rng.normal(0.5, 0.05, size=(1000, 2)))
>>> bool((scores[:200] == 0).all())  # warm-up
True
>>> far, usual = svm.score_many(np.array([[0.9, 0.1], [0.5, 0.5]]))
>>> bool(far > 0.95 > 0.8 > usual)
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from netsentry.detect.base import NotMergeableError, State, StateMismatchError, fingerprint
from netsentry.detect.features import OnBatches

Matrix = npt.NDArray[np.float64]
BLOCK_ROWS = 4096  # rows whose random features are computed in one go


class OnlineOneClassSVM(OnBatches):
    """Streaming nu-One-Class SVM over feature matrices (rows = points).

    Parameters
    ----------
    nu : share of points outside the boundary (0 < nu <= 1).
    n_components : random Fourier features ``D``.
    gamma : RBF width; None: ``1 / (d var)`` of the warm-up points.
    warm_up : points kept before the model starts (scores are 0 until then).
    batch_size : points per SGD step (and the granularity of ``score_learn``).
    window : points of memory: each step weighs its points ``len / window``.
    epochs : SGD passes over the warm-up points.
    seed : seeds the random features and the warm-up shuffles.
    """

    name = "ocsvm_online"
    mergeable = False

    def __init__(
        self,
        *,
        nu: float = 0.1,
        n_components: int = 128,
        gamma: float | None = None,
        warm_up: int = 256,
        batch_size: int = 256,
        window: int = 10_000,
        epochs: int = 5,
        seed: int = 0,
    ) -> None:
        if not 0 < nu <= 1 or n_components < 1 or warm_up < 2 or batch_size < 1:
            raise ValueError(
                "need 0 < nu <= 1, n_components >= 1, warm_up >= 2, batch_size >= 1; got "
                f"{nu}, {n_components}, {warm_up}, {batch_size}"
            )
        if window < batch_size or epochs < 1 or (gamma is not None and gamma <= 0):
            raise ValueError("need window >= batch_size, epochs >= 1, gamma > 0 or None")
        self.nu, self.n_components, self.gamma = nu, n_components, gamma
        self.warm_up, self.batch_size, self.window = warm_up, batch_size, window
        self.epochs, self.seed = epochs, seed
        self.weights_: Matrix | None = None  # (d, D) frequencies W
        self.phases_ = np.zeros(0)  # (D,) phases b
        self.w_ = np.zeros(0)
        self.rho_, self.mass_, self.steps_, self.seen_ = 0.0, 0.0, 0, 0
        self.gamma_ = 0.0
        self._kept = np.zeros((0, 0))

    @property
    def warm_(self) -> bool:
        """Whether the model exists (before that, every score is 0)."""
        return self.weights_ is not None

    def _z(self, x: Matrix) -> npt.NDArray[np.float32]:
        """Random Fourier features, in float32 (SIMD cosines, ten times faster here)."""
        assert self.weights_ is not None
        angle = x.astype(np.float32) @ self.weights_.astype(np.float32)
        angle += self.phases_.astype(np.float32)
        return np.float32(np.sqrt(2.0 / self.n_components)) * np.cos(angle)

    def _f(self, z: npt.NDArray[np.float32]) -> Matrix:
        """``f = <w, z>`` for each row."""
        return np.asarray(z @ self.w_.astype(np.float32), dtype=np.float64)

    def _step(self, z: npt.NDArray[np.float32]) -> None:
        self.steps_ += 1
        eta = len(z) / self.window  # a short last mini-batch weighs less
        f = self._f(z)
        k = int(self.nu * (len(f) - 1))
        self.rho_ = (1 - eta) * self.rho_ + eta * float(np.partition(f, k)[k])
        outside = (f < self.rho_).astype(np.float32)
        pull = (outside @ z).astype(np.float64) / len(z)
        self.w_ = (1 - eta) * self.w_ + (eta / self.nu) * pull
        self.mass_ = (1 - eta) * self.mass_ + (eta / self.nu) * float(outside.mean())

    def _start(self, x: Matrix) -> None:
        """End of warm-up: gamma, the random features, a start, then SGD passes over ``x``.

        The start is the kernel mean of the warm-up points (the ``nu = 1`` solution, a
        Parzen window) with ``rho`` its ``nu``-quantile and ``mass`` 1.
        """
        rng = np.random.default_rng(self.seed)
        dims = x.shape[1]
        spread = float(x.var()) * dims
        self.gamma_ = self.gamma if self.gamma is not None else 1.0 / (spread or 1.0)
        self.weights_ = rng.normal(0.0, np.sqrt(2 * self.gamma_), (dims, self.n_components))
        self.phases_ = rng.uniform(0.0, 2 * np.pi, self.n_components)
        z = self._z(x)
        self.w_ = z.astype(np.float64).mean(axis=0)
        self.rho_, self.mass_ = float(np.quantile(self._f(z), self.nu)), 1.0
        for _ in range(self.epochs):
            order = rng.permutation(len(x))
            for start in range(0, len(x), self.batch_size):
                self._step(z[order[start : start + self.batch_size]])
        self._kept = np.zeros((0, dims))

    def _check(self, x: Matrix) -> Matrix:
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"expected a (points, features) matrix, got shape {x.shape}")
        dims = self.weights_.shape[0] if self.weights_ is not None else self._kept.shape[1]
        if len(x) and self.seen_ and x.shape[1] != dims:
            raise ValueError(f"model has {dims} features, got {x.shape[1]}")
        return x

    def _run(self, x: Matrix, *, score: bool, learn: bool) -> Matrix:
        """Score and/or learn ``x`` in order; features are computed once per block."""
        x = self._check(x)
        out = np.zeros(len(x))
        start = 0
        if learn and not self.warm_ and len(x):
            kept = self._kept if len(self._kept) else np.zeros((0, x.shape[1]))
            start = min(len(x), self.warm_up - len(kept))
            self._kept = np.concatenate([kept, x[:start]])
            self.seen_ += start
            if len(self._kept) == self.warm_up:
                self._start(self._kept)
        if not self.warm_:
            return out
        size = self.batch_size
        block = size * max(1, BLOCK_ROWS // size)
        for first in range(start, len(x), block):
            z = self._z(x[first : first + block])
            if not learn:
                out[first : first + len(z)] = 1.0 - self._f(z) / self.mass_
                continue
            for at in range(0, len(z), size):
                part = z[at : at + size]
                if score:
                    out[first + at : first + at + len(part)] = 1.0 - self._f(part) / self.mass_
                self._step(part)
        if learn:
            self.seen_ += len(x) - start
        return out

    def score_many(self, x: Matrix) -> Matrix:
        """Anomaly scores ``1 - f(x) / mass`` (0 during warm-up; pure)."""
        return self._run(x, score=True, learn=False)

    def learn_many(self, x: Matrix) -> None:
        """Learn the points in order, ``batch_size`` at a time."""
        self._run(x, score=False, learn=True)

    def score_learn(self, x: Matrix) -> Matrix:
        """Prequential at ``batch_size`` granularity: each mini-batch scored, then learned.

        Points of the warm-up score 0, as they would one by one.
        """
        return self._run(x, score=True, learn=True)

    # -- the detector contract, on Batches (features: detect/features.py) -----------

    def merge(self, other: OnlineOneClassSVM) -> OnlineOneClassSVM:
        """Refused: SGD iterates depend on the order of their streams.

        Averaging two shards' ``w`` is a heuristic (parameter mixing), not the model of
        the union; shard by entity key and keep one model per shard instead.
        """
        raise NotMergeableError("online OCSVM iterates follow one stream: shard by key")

    # -- persistence ----------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        names = ("nu", "n_components", "gamma", "warm_up", "batch_size", "window", "epochs")
        return {name: getattr(self, name) for name in (*names, "seed")}

    def fingerprint(self) -> str:
        return fingerprint({"detector": self.name, "version": 1, **self.params()})

    def state_dict(self) -> State:
        weights = self.weights_ if self.weights_ is not None else np.zeros((0, 0))
        return {
            "fingerprint": self.fingerprint(),
            "weights": weights.copy(),
            "phases": self.phases_.copy(),
            "w": self.w_.copy(),
            "scalars": np.array([self.rho_, self.mass_, self.gamma_]),
            "counts": np.array([self.steps_, self.seen_], dtype=np.int64),
            "kept": self._kept.copy(),
        }

    def load_state(self, state: State) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise StateMismatchError(
                f"{self.name} state has fingerprint {state.get('fingerprint')!r}, "
                f"expected {self.fingerprint()!r}"
            )
        weights = np.array(state["weights"], dtype=np.float64)
        self.weights_ = weights if weights.size else None
        self.phases_ = np.array(state["phases"], dtype=np.float64)
        self.w_ = np.array(state["w"], dtype=np.float64)
        self.rho_, self.mass_, self.gamma_ = (float(v) for v in state["scalars"])
        self.steps_, self.seen_ = (int(v) for v in state["counts"])
        self._kept = np.array(state["kept"], dtype=np.float64)
