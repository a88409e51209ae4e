"""Half-Space Trees (Tan, Ting and Liu, 2011): a streaming anomaly detector.

``n_trees`` random trees of ``height`` split the (padded) feature space in halves.
Each node counts the points that reach it in the *latest* window (``l`` mass); every
``window_size`` points the latest profile becomes the *reference* (``r`` mass) and
counting starts again (the paper's window-based drift handling). A point's mass score
sums ``r · 2^depth`` along its path in each tree, stopping below a node whose reference
mass is under ``0.1 · window_size``; few points like it in the last window means a low
mass and so a high anomaly score ``1 - mass / max_mass`` in [0, 1].

The trees, the walk and the score follow river's ``HalfSpaceTrees`` exactly, so the
same trees give the same scores (``tests/test_hst.py`` checks it against river); the
loops are compiled with numba over whole batches, which is what makes this one fast
(``bench/bench_hst.py``).

Warm-up: until the first window is complete there is no reference profile and every
score is 0 (as in river). Features must lie within ``limits`` (default [0, 1]).

>>> rng = np.random.default_rng(0)
>>> hst = HalfSpaceTrees(n_trees=10, height=6, window_size=100, seed=1)
>>> scores = hst.score_learn(rng.uniform(0.4, 0.6, size=(300, 2)))
>>> bool(scores[:100].max() == 0.0)  # warm-up
True
>>> outlier, usual = hst.score_many(np.array([[0.05, 0.95], [0.5, 0.5]]))
>>> bool(outlier > usual)
True
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from netsentry.detect.base import NotMergeableError, State, StateMismatchError, fingerprint
from netsentry.detect.features import OnBatches

Matrix = npt.NDArray[np.float64]


def build_trees(
    limits: Matrix,
    n_trees: int,
    height: int,
    rng: np.random.Generator,
    padding: float = 0.15,
) -> tuple[npt.NDArray[np.int64], Matrix]:
    """Split features and thresholds of complete trees in heap order (children 2i+1, 2i+2).

    As river's ``make_padded_tree``: a feature is drawn with probability proportional
    to the width of its current range, the threshold uniformly in the range less
    ``padding`` at both ends, and each child inherits the narrowed range. Built level by
    level, every node of a level (across all trees) at once.
    """
    internal = 2**height - 1
    feature = np.zeros((n_trees, internal), dtype=np.int64)
    threshold = np.zeros((n_trees, internal))
    boxes = np.broadcast_to(limits, (n_trees, 1, *limits.shape)).copy()  # (trees, nodes, d, 2)
    for depth in range(height):
        first = 2**depth - 1
        width = boxes[..., 1] - boxes[..., 0]
        cumulative = np.cumsum(width, axis=-1)
        draw = rng.uniform(size=cumulative.shape[:2]) * cumulative[..., -1]
        chosen = np.minimum((cumulative < draw[..., None]).sum(axis=-1), limits.shape[0] - 1)
        low = np.take_along_axis(boxes[..., 0], chosen[..., None], axis=-1)[..., 0]
        high = np.take_along_axis(boxes[..., 1], chosen[..., None], axis=-1)[..., 0]
        at = rng.uniform(low + padding * (high - low), high - padding * (high - low))
        feature[:, first : 2 * first + 1] = chosen
        threshold[:, first : 2 * first + 1] = at
        left, right = boxes.copy(), boxes.copy()
        trees, nodes = np.indices(chosen.shape)
        left[trees, nodes, chosen, 1] = at
        right[trees, nodes, chosen, 0] = at
        boxes = np.stack([left, right], axis=2).reshape(n_trees, 2 * nodes.shape[1], *limits.shape)
    return feature, threshold


@numba.njit(cache=True, nogil=True)
def _one_tree(
    x: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    masses: np.ndarray,
    out: np.ndarray,
    counter: int,
    window_id: int,
    window: int,
    height: int,
    score: bool,
    learn: bool,
) -> None:
    """The whole stream through one tree.

    ``masses[parity, node] = (count, window id)``: window ``w`` counts into buffer
    ``w & 1`` and reads its reference from the other one, and a count is only valid
    for the window its stamp names. The pivot is then just ``w += 1`` (O(1), where
    copying and clearing every node costs O(2^height) each window).

    The scoring walk is a prefix of the learning walk (same nodes), so one walk does
    both: it adds ``ref · 2^depth`` until a node's reference mass is under the size
    limit (0.1 · window), and counts the point down to the leaf.
    """
    size_limit = 0.1 * window
    for i in range(x.shape[0]):
        cur = window_id & 1
        prev = 1 - cur
        node = 0
        depth_pow = 1.0
        adding = score and window_id >= 1
        mass = 0.0
        for level in range(height + 1):
            if adding:
                here = masses[prev, node, 0] if masses[prev, node, 1] == window_id - 1 else 0
                mass += here * depth_pow
                depth_pow *= 2.0
                adding = here >= size_limit
            if learn:
                if masses[cur, node, 1] == window_id:
                    masses[cur, node, 0] += 1
                else:
                    masses[cur, node, 0] = 1
                    masses[cur, node, 1] = window_id
            elif not adding:
                break
            if level < height:
                node = 2 * node + 1 + (x[i, feature[node]] >= threshold[node])
        out[i] = mass
        if learn:
            counter += 1
            if counter == window:
                counter = 0
                window_id += 1


@numba.njit(cache=True, nogil=True)
def _trees_serial(
    x: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    masses: np.ndarray,
    out: np.ndarray,
    counter: int,
    window_id: int,
    window: int,
    height: int,
    score: bool,
    learn: bool,
) -> None:
    for t in range(feature.shape[0]):
        _one_tree(
            x,
            feature[t],
            threshold[t],
            masses[t],
            out[t],
            counter,
            window_id,
            window,
            height,
            score,
            learn,
        )


@numba.njit(cache=True, nogil=True, parallel=True)
def _trees_parallel(
    x: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    masses: np.ndarray,
    out: np.ndarray,
    counter: int,
    window_id: int,
    window: int,
    height: int,
    score: bool,
    learn: bool,
) -> None:
    for t in numba.prange(feature.shape[0]):
        _one_tree(
            x,
            feature[t],
            threshold[t],
            masses[t],
            out[t],
            counter,
            window_id,
            window,
            height,
            score,
            learn,
        )


PARALLEL_FROM = 4096  # points; below, starting threads costs more than it saves
NEVER = -2  # a window stamp no window has (ids start at 0, references at -1)


class HalfSpaceTrees(OnBatches):
    """Streaming Half-Space Trees over feature matrices (rows = points).

    Parameters
    ----------
    n_trees, height, window_size : as in the paper (river's defaults: 10, 8, 250; the
        paper's experiments: 25, 15, 250).
    limits : (d, 2) array of each feature's [low, high]; default [0, 1] for each.
    seed : the trees' random generator seed (the detector owns its generator).
    """

    name = "hst"
    mergeable = False

    def __init__(
        self,
        *,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        limits: Matrix | None = None,
        seed: int = 0,
    ) -> None:
        if n_trees < 1 or not 1 <= height <= 20 or window_size < 1:
            raise ValueError(
                f"need n_trees >= 1, 1 <= height <= 20, window_size >= 1; got "
                f"{n_trees}, {height}, {window_size}"
            )
        self.n_trees, self.height, self.window_size, self.seed = n_trees, height, window_size, seed
        self.limits = None if limits is None else np.asarray(limits, dtype=np.float64)
        self.feature_: npt.NDArray[np.int64] | None = None
        self.threshold_: Matrix | None = None
        self._masses = np.zeros((n_trees, 2, 2 ** (height + 1) - 1, 2), dtype=np.int32)
        self._masses[..., 1] = NEVER
        self.counter_, self.window_id_ = 0, 0

    @classmethod
    def with_trees(
        cls, feature: npt.NDArray[np.int64], threshold: Matrix, *, window_size: int = 250
    ) -> HalfSpaceTrees:
        """A detector on given trees (heap order), e.g. another implementation's."""
        n_trees, internal = feature.shape
        hst = cls(
            n_trees=n_trees, height=int(internal + 1).bit_length() - 1, window_size=window_size
        )
        hst.feature_, hst.threshold_ = np.asarray(feature, np.int64), np.asarray(threshold)
        return hst

    @property
    def max_mass(self) -> float:
        return float(self.n_trees * self.window_size * (2 ** (self.height + 1) - 1))

    @property
    def warm_(self) -> bool:
        """Whether a reference window exists (before that, every score is 0)."""
        return self.window_id_ >= 1

    def _ensure_trees(self, dims: int) -> None:
        if self.feature_ is not None:
            if self.feature_.max(initial=0) >= dims:
                raise ValueError(f"trees were built for more than {dims} features")
            return
        limits = self.limits if self.limits is not None else np.tile([0.0, 1.0], (dims, 1))
        if limits.shape != (dims, 2) or not (limits[:, 1] > limits[:, 0]).all():
            raise ValueError(f"limits must be ({dims}, 2) with low < high, got {limits.shape}")
        self.limits = limits
        self.feature_, self.threshold_ = build_trees(
            limits, self.n_trees, self.height, np.random.default_rng(self.seed)
        )

    def _run(self, x: Matrix, *, score: bool, learn: bool) -> Matrix:
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"expected a (points, features) matrix, got shape {x.shape}")
        if len(x) == 0:
            return np.zeros(0)
        self._ensure_trees(x.shape[1])
        assert self.feature_ is not None and self.threshold_ is not None
        per_tree = np.zeros((self.n_trees, len(x)))
        run = _trees_parallel if len(x) >= PARALLEL_FROM else _trees_serial
        run(
            x,
            self.feature_,
            self.threshold_,
            self._masses,
            per_tree,
            self.counter_,
            self.window_id_,
            self.window_size,
            self.height,
            score,
            learn,
        )
        if learn:
            seen = self.counter_ + len(x)
            self.window_id_ += seen // self.window_size
            self.counter_ = seen % self.window_size
        mass = per_tree.sum(axis=0)
        # mass 0 only before the first window is complete (the root always holds one)
        scores: Matrix = np.where(mass > 0, 1.0 - mass / self.max_mass, 0.0) if score else mass
        return scores

    def score_many(self, x: Matrix) -> Matrix:
        """Anomaly scores in [0, 1] against the current reference profile (pure)."""
        return self._run(x, score=True, learn=False)

    def learn_many(self, x: Matrix) -> None:
        self._run(x, score=False, learn=True)

    def score_learn(self, x: Matrix) -> Matrix:
        """Prequential: each point scored, then learned, in order (river's loop)."""
        return self._run(x, score=True, learn=True)

    def _profile(self, window_id: int) -> npt.NDArray[np.int32]:
        """The node masses counted in window ``window_id`` (zeros where none)."""
        buffer = self._masses[:, window_id & 1]
        return np.where(buffer[..., 1] == window_id, buffer[..., 0], 0).astype(np.int32)

    @property
    def r_(self) -> npt.NDArray[np.int32]:
        """Reference masses: the last complete window's."""
        return self._profile(self.window_id_ - 1)

    @property
    def l_(self) -> npt.NDArray[np.int32]:
        """Latest masses: the window being counted."""
        return self._profile(self.window_id_)

    # -- the detector contract, on Batches (features: detect/features.py) -----------

    def merge(self, other: HalfSpaceTrees) -> HalfSpaceTrees:
        """Refused: the window pivots make the masses depend on the order of the stream.

        Two shards' reference profiles describe different windows; adding them would
        be a profile of no window at all. Shard HST by entity key instead.
        """
        raise NotMergeableError(
            "Half-Space Trees windows are sequential: shard by key, do not merge"
        )

    # -- persistence ----------------------------------------------------------------

    def fingerprint(self) -> str:
        return fingerprint(
            {
                "detector": "hst",
                "version": 1,
                "n_trees": self.n_trees,
                "height": self.height,
                "window_size": self.window_size,
                "seed": self.seed,
            }
        )

    def state_dict(self) -> State:
        feature, threshold = self.feature_, self.threshold_
        if feature is None or threshold is None:  # not built yet: no point seen
            feature, threshold = np.zeros((0, 0), np.int64), np.zeros((0, 0))
        limits = self.limits if self.limits is not None else np.zeros((0, 2))
        return {
            "fingerprint": self.fingerprint(),
            "r": self.r_,
            "l": self.l_,
            "counter": self.counter_,
            "warm": self.warm_,
            "feature": feature.copy(),
            "threshold": threshold.copy(),
            "limits": limits.copy(),
        }

    def load_state(self, state: State) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise StateMismatchError(
                f"hst state has fingerprint {state.get('fingerprint')!r}, "
                f"expected {self.fingerprint()!r}"
            )
        self.window_id_ = 1 if bool(state["warm"]) else 0
        self.counter_ = int(state["counter"])
        masses = np.zeros_like(self._masses)
        masses[..., 1] = NEVER
        for window_id, profile in (
            (self.window_id_ - 1, state["r"]),
            (self.window_id_, state["l"]),
        ):
            masses[:, window_id & 1, :, 0] = profile
            masses[:, window_id & 1, :, 1] = window_id
        self._masses = masses
        built = np.asarray(state["feature"]).size > 0
        self.feature_ = np.array(state["feature"]) if built else None
        self.threshold_ = np.array(state["threshold"]) if built else None
        self.limits = np.array(state["limits"]) if np.asarray(state["limits"]).size else None
