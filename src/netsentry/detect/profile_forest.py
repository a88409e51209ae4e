"""Isolation Forest per device over whole window vectors (:class:`DeviceForest`).

The rows of one window (same key and time, see :mod:`netsentry.detect.profile` for the
row layout) form one vector in the order of ``features``; a feature missing from a
window takes the mean of the device's sample. Every row of a window gets the window's
score ``2^(-E[h(x)] / c(psi))`` in (0, 1] (about 0.5 inside the data, towards 1 for
windows that isolate quickly). Each device keeps a seeded reservoir of the vectors it
learned (Algorithm R, :func:`~netsentry.detect.segment_features.reservoir_update`) and
its forest (scikit-learn, seeded) is refitted from it when it learned something; the
state is the reservoir, the forest is refitted from it on load with the same derived
seed. Not mergeable: a forest fitted on a merged sample is not the forest one pass
fits.

A fitted forest is scored through :class:`_PackedForest`, its trees flattened into
arrays and walked a level at a time for all trees at once (the same scores as
scikit-learn's ``score_samples``, tested to 1e-12, without its per-tree overhead).
:meth:`DeviceForest.explain` names the feature of the window farthest from the device's
sample, in standard deviations of that sample.
"""

from __future__ import annotations

from typing import ClassVar, Self

import numpy as np
import numpy.typing as npt
import polars as pl
from sklearn.ensemble import IsolationForest

from netsentry.detect.base import NotMergeableError, State, StateMismatchError, fingerprint
from netsentry.detect.segment_features import reservoir_update, standardise
from netsentry.devices.windows import FEATURES
from netsentry.model import Batch

__all__ = ["DeviceForest"]

Matrix = npt.NDArray[np.float64]


def _average_path_length(n: npt.NDArray[np.int64]) -> Matrix:
    """c(n) of Liu et al.: the mean path length of an unsuccessful BST search in n."""
    n = np.asarray(n, dtype=np.float64)
    harmonic = np.log(np.maximum(n - 1.0, 1.0)) + np.euler_gamma
    c = 2.0 * harmonic - 2.0 * (n - 1.0) / np.maximum(n, 1.0)
    return np.where(n > 2, c, np.where(n == 2, 1.0, 0.0))


class _PackedForest:
    """A fitted IsolationForest's trees as flat arrays, scored for all trees at once.

    scikit-learn's ``score_samples`` walks the trees one by one through joblib (about
    30 ms for a handful of windows); this walks every tree a level at a time with numpy
    and returns the same scores (tested to 1e-12). Thresholds compare against float32
    features, as scikit-learn's trees do.
    """

    def __init__(self, forest: IsolationForest) -> None:
        left, right, feature, threshold, leaf, roots = [], [], [], [], [], []
        offset, depth_limit = 0, 0
        for tree, columns in zip(forest.estimators_, forest.estimators_features_, strict=True):
            t = tree.tree_
            internal = t.children_left >= 0
            depth = np.zeros(t.node_count, np.int64)
            for node in range(t.node_count):  # parents come before children
                if internal[node]:
                    depth[t.children_left[node]] = depth[t.children_right[node]] = depth[node] + 1
            roots.append(offset)
            left.append(np.where(internal, t.children_left + offset, -1))
            right.append(np.where(internal, t.children_right + offset, -1))
            feature.append(np.where(internal, np.asarray(columns)[np.maximum(t.feature, 0)], 0))
            threshold.append(t.threshold)
            leaf.append(depth + _average_path_length(t.n_node_samples))
            offset += t.node_count
            depth_limit = max(depth_limit, int(depth.max()))
        self.left, self.right = np.concatenate(left), np.concatenate(right)
        self.feature, self.threshold = np.concatenate(feature), np.concatenate(threshold)
        self.leaf, self.roots, self.levels = np.concatenate(leaf), np.array(roots), depth_limit
        self.denominator = len(roots) * float(
            _average_path_length(np.array([forest.max_samples_]))[0]
        )

    def score(self, x: Matrix) -> Matrix:
        x = np.asarray(x, dtype=np.float32).astype(np.float64)
        node = np.tile(self.roots, (len(x), 1))
        rows = np.arange(len(x))[:, None]
        for _ in range(self.levels):
            internal = self.left[node] >= 0
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(internal, np.where(go_left, self.left[node], self.right[node]), node)
        depths = self.leaf[node].sum(axis=1)
        if self.denominator == 0:
            return np.ones(len(x))
        return np.asarray(2.0 ** (-depths / self.denominator), dtype=np.float64)


class DeviceForest:
    """Isolation Forest per device over window feature vectors (see the module docs).

    Parameters
    ----------
    features : the measurements that make a window's vector, in order.
    capacity : reservoir vectors per device (the most a forest is fitted on).
    min_count : vectors a device must have learned before its first fit (score 0 before).
    n_estimators, max_samples : of the forest.
    seed : seeds every reservoir draw and fit.
    """

    name = "device_iforest"
    mergeable: ClassVar[bool] = False

    def __init__(
        self,
        *,
        features: tuple[str, ...] = FEATURES,
        capacity: int = 1024,
        min_count: int = 32,
        n_estimators: int = 100,
        max_samples: int = 256,
        seed: int = 0,
    ) -> None:
        if not features or len(set(features)) != len(features):
            raise ValueError(f"features must be distinct and not empty, got {features}")
        if not 2 <= min_count <= capacity:
            raise ValueError(f"need 2 <= min_count <= capacity, got {min_count}, {capacity}")
        self.features = tuple(features)
        self.capacity, self.min_count = capacity, min_count
        self.n_estimators, self.max_samples, self.seed = n_estimators, max_samples, seed
        self._samples: dict[int, Matrix] = {}
        self._seen: dict[int, int] = {}
        self._fits: dict[int, int] = {}
        self._forests: dict[int, _PackedForest] = {}

    # -- window vectors ---------------------------------------------------------------

    def _vectors(
        self, batch: Batch
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint64], Matrix]:
        """(rows used, each one's vector index, the vectors' keys, the vectors with NaN
        where a feature is missing); vectors are ordered by key, then time."""
        measurement = batch.frame["measurement"].to_numpy()
        column = np.full(len(batch), -1)
        for j, feature in enumerate(self.features):
            column[measurement == feature] = j
        rows = np.flatnonzero(column >= 0)
        keys = batch.frame["key"].to_numpy()[rows]
        times = batch.frame["time"].to_numpy()[rows]
        pairs = np.empty(len(rows), dtype=[("key", np.uint64), ("time", np.int64)])
        pairs["key"], pairs["time"] = keys, times
        unique, which = np.unique(pairs, return_inverse=True)
        x: Matrix = np.full((len(unique), len(self.features)), np.nan)
        x[which, column[rows]] = batch.frame["value"].to_numpy()[rows]
        vector: npt.NDArray[np.int64] = which.reshape(-1).astype(np.int64)
        return rows.astype(np.int64), vector, unique["key"].astype(np.uint64), x

    def _filled(self, key: int, x: Matrix) -> Matrix:
        """Missing features take the mean of the device's sample (or of ``x``)."""
        reference = self._samples.get(key)
        with np.errstate(all="ignore"):
            fill = reference.mean(axis=0) if reference is not None else np.nanmean(x, axis=0)
        fill = np.nan_to_num(fill, nan=0.0)
        return np.where(np.isnan(x), fill, x)

    # -- the detector contract ----------------------------------------------------------

    def score_vectors(self, key: int, x: Matrix) -> Matrix:
        """Forest scores of window vectors of device ``key`` (0 if it is not fitted)."""
        forest = self._forests.get(int(key))
        if forest is None or not len(x):
            return np.zeros(len(x))
        return forest.score(self._filled(int(key), x))

    def explain_vectors(self, key: int, x: Matrix) -> tuple[list[str], Matrix]:
        """Per vector: the feature farthest from the device's sample, and by how many of
        its standard deviations (signed); ``""`` and 0 without a sample."""
        sample = self._samples.get(int(key))
        if sample is None or not len(sample) or not len(x):
            return [""] * len(x), np.zeros(len(x))
        center, scale = standardise(sample)
        d = (self._filled(int(key), x) - center) / scale
        j = np.abs(d).argmax(axis=1)
        return [self.features[k] for k in j], d[np.arange(len(x)), j]

    def score(self, batch: Batch) -> Matrix:
        """Each row gets its window's forest score (pure); 0 before a device is fitted."""
        out = np.zeros(len(batch))
        if not self._forests or not len(batch):
            return out
        rows, which, keys, x = self._vectors(batch)
        scores = np.zeros(len(x))
        for key in np.unique(keys):
            at = keys == key
            scores[at] = self.score_vectors(int(key), x[at])
        out[rows] = scores[which]
        return out

    def explain(self, batch: Batch) -> pl.DataFrame:
        """Per row: its window's ``feature`` farthest from the device's sample and that
        ``deviation`` in the sample's standard deviations ("" and 0 if not fitted)."""
        feature = np.full(len(batch), "", dtype=object)
        deviation = np.zeros(len(batch))
        if len(batch):
            rows, which, keys, x = self._vectors(batch)
            top_feature = np.full(len(x), "", dtype=object)
            top = np.zeros(len(x))
            for key in np.unique(keys):
                at = np.flatnonzero(keys == key)
                names, top[at] = self.explain_vectors(int(key), x[at])
                top_feature[at] = names
            feature[rows], deviation[rows] = top_feature[which], top[which]
        return pl.DataFrame(
            {"feature": feature.tolist(), "deviation": deviation},
            schema={"feature": pl.String, "deviation": pl.Float64},
        )

    def _random_state(self, key: int, *counts: int) -> int:
        words = [key & 0xFFFFFFFF, key >> 32, *counts]
        return int(np.random.SeedSequence([self.seed, *words]).generate_state(1)[0])

    def _fit(self, key: int) -> None:
        sample = self._samples[key]
        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(sample)),
            random_state=self._random_state(key, self._fits[key] - 1),
        )
        self._forests[key] = _PackedForest(forest.fit(sample))

    def learn(self, batch: Batch, mask: npt.NDArray[np.bool_]) -> None:
        """Add the masked rows' windows to their devices' reservoirs; refit those."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(batch),):
            raise ValueError(f"mask has shape {mask.shape}, batch has {len(batch)} rows")
        if not mask.any():
            return
        _, _, keys, x = self._vectors(Batch(batch.frame.filter(mask)))
        for key in (int(k) for k in np.unique(keys)):
            vectors = self._filled(key, x[keys == key])
            seen = self._seen.get(key, 0)
            rng = np.random.default_rng(self._random_state(key, seen, 1))
            old = self._samples.get(key, np.zeros((0, len(self.features))))
            self._samples[key] = reservoir_update(old, seen, vectors, self.capacity, rng)
            self._seen[key] = seen + len(vectors)
            if len(self._samples[key]) >= self.min_count:
                self._fits[key] = self._fits.get(key, 0) + 1
                self._fit(key)

    # -- persistence ----------------------------------------------------------------------

    def fingerprint(self) -> str:
        return fingerprint(
            {
                "detector": self.name,
                "version": 1,
                "features": list(self.features),
                "capacity": self.capacity,
                "min_count": self.min_count,
                "n_estimators": self.n_estimators,
                "max_samples": self.max_samples,
                "seed": self.seed,
            }
        )

    def state_dict(self) -> State:
        keys = sorted(self._samples)
        return {
            "fingerprint": self.fingerprint(),
            "key": np.array(keys, dtype=np.uint64),
            "seen": np.array([self._seen[k] for k in keys], dtype=np.int64),
            "fits": np.array([self._fits.get(k, 0) for k in keys], dtype=np.int64),
            "sample_rows": np.array([len(self._samples[k]) for k in keys], dtype=np.int64),
            "sample": np.concatenate(
                [self._samples[k] for k in keys] or [np.zeros((0, len(self.features)))]
            ),
        }

    def load_state(self, state: State) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise StateMismatchError(
                f"{self.name} state has fingerprint {state.get('fingerprint')!r}, "
                f"expected {self.fingerprint()!r} (features {list(self.features)})"
            )
        keys = [int(k) for k in np.asarray(state["key"], dtype=np.uint64)]
        samples = np.split(np.asarray(state["sample"]), np.cumsum(state["sample_rows"])[:-1])
        self._samples = {k: s.astype(np.float64) for k, s in zip(keys, samples, strict=True)}
        self._seen = {k: int(n) for k, n in zip(keys, state["seen"], strict=True)}
        self._fits = {k: int(n) for k, n in zip(keys, state["fits"], strict=True) if n}
        self._forests = {}
        for key in self._fits:
            self._fit(key)

    def merge(self, other: Self) -> Self:
        raise NotMergeableError(
            f"{self.name}: a forest refitted on a merged sample is not the forest one pass "
            "would fit: shard by device"
        )

    def __len__(self) -> int:
        return len(self._samples)

    def fitted(self, key: int) -> bool:
        return key in self._forests
