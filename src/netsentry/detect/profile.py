"""Per-device detectors over rolling window statistics (:mod:`netsentry.devices.windows`).

A device's windows reach the detectors as :class:`~netsentry.model.Batch` rows: one
row per (window, feature), ``time`` = the window's end, ``measurement`` = the feature
name (``packet_rate``, ``iat_std``...), ``value`` = its value and ``key`` = the
device's entity key (:func:`device_key`: tags ``service="device"``, ``src=<device
id>``). Rows of measurements outside ``features`` score 0 and are not learned.

:class:`DeviceZScore`
    One :class:`~netsentry.detect.zscore.ZScore` per feature (a ZScore keys its
    statistics by entity only, so each feature needs its own), with its rules for cold
    start, zero variance and new normals. Score: ``|z|`` of the row against the
    device's baseline of that feature. A feature that never varied in the learning
    phase (no new payload type was ever seen) scores ``inf`` as soon as it changes.
    Mergeable, as ZScore is.

:class:`DeviceForest`
    An Isolation Forest (scikit-learn, seeded) per device over whole window vectors:
    the rows of one window (same key and time) form one vector in the order of
    ``features``; a feature missing from a window takes the mean of the device's
    sample. Every row of a window gets the window's score
    ``2^(-E[h(x)] / c(psi))`` in (0, 1] (about 0.5 inside the data, towards 1 for
    windows that isolate quickly). Each device keeps a seeded reservoir of the vectors
    it learned (Algorithm R, :func:`~netsentry.detect.segment_features.reservoir_update`)
    and its forest is refitted from it when it learned something; the state is the
    reservoir, the forest is refitted from it on load with the same derived seed.
    Not mergeable: a forest fitted on a merged sample is not the forest one pass fits.

Both explain a row with the feature that stood out: :meth:`DeviceZScore.explain` gives
each row's baseline and ``z``; :meth:`DeviceForest.explain` the feature of the window
farthest from the device's sample, in standard deviations of that sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
import numpy.typing as npt
import polars as pl
from sklearn.ensemble import IsolationForest

from netsentry.detect import moments
from netsentry.detect.base import NotMergeableError, State, StateMismatchError, fingerprint
from netsentry.detect.segment_features import reservoir_update, standardise
from netsentry.detect.zscore import ZScore
from netsentry.devices.windows import FEATURES, WindowStats
from netsentry.keys import entity_key
from netsentry.model import Batch

__all__ = [
    "FOREST",
    "MEASURED_THRESHOLDS",
    "DeviceForest",
    "DeviceZScore",
    "device_key",
    "window_batch",
]

Matrix = npt.NDArray[np.float64]
#: The score name of the forest in a detection's scores (the z-scores use feature names).
FOREST = "forest"
#: Thresholds measured on the simulated video source (30 fps, GOP 30, about 1.2 Mbit/s;
#: 1 s windows every 0.5 s, profile learned over 120 windows) through DeviceMonitor:
#: 120 simulated hours (20 learning phases of 6 h, 864,000 windows), largest normal
#: |z| of any feature 5.93 (windows above 4: 8.4 per hour, above 5: 0.51, above 6:
#: none), largest forest score 0.749 (above 0.70: 4.7 per hour, 0.72: 0.65, 0.74:
#: 0.1, 0.76: none). At these thresholds: no flagged window, no early alarm, no
#: episode in the 120 h (95 % upper bound 0.025 per hour). The injected misbehaviour
#: of ``tests/test_device_detectors.py`` scores |z| 12 to 23, or inf.
MEASURED_THRESHOLDS: dict[str, float] = {name: 8.0 for name in FEATURES} | {FOREST: 0.78}


def device_key(device_id: str) -> int:
    """The entity key of a device: tags ``service="device"``, ``src=device_id``."""
    return entity_key({"service": "device", "src": device_id})


def window_batch(
    device_id: str, windows: WindowStats, features: tuple[str, ...] = FEATURES
) -> Batch:
    """One row per (window, feature), as the detectors read them."""
    n = len(windows)
    values = windows.matrix(features)  # (n, features)
    return Batch.from_columns(
        np.repeat(windows.frame["end_ns"].to_numpy(), len(features)),
        list(features) * n,
        values.reshape(-1),
        {"service": ["device"] * (n * len(features)), "src": [device_id] * (n * len(features))},
    )


def _rows_of(batch: Batch, feature: str) -> npt.NDArray[np.bool_]:
    return np.asarray(batch.frame["measurement"].to_numpy() == feature, dtype=bool)


@dataclass(frozen=True)
class FrozenBaseline:
    """One device's per-feature baseline as arrays, for scoring window matrices fast.

    :meth:`z` applies the rules of :class:`~netsentry.detect.zscore.ZScore` (0 while
    fewer than ``min_count`` values were learned; zero variance: 0 at the mean, else
    ``±inf``); ``tests/test_device_detectors.py`` checks it against
    :meth:`DeviceZScore.explain` value for value.
    """

    features: tuple[str, ...]
    n: npt.NDArray[np.int64]
    mean: Matrix
    std: Matrix
    min_count: int

    def z(self, x: Matrix, features: tuple[str, ...] | None = None) -> Matrix:
        """Signed z of each row of ``x`` (columns: ``features``, default all)."""
        cols = [self.features.index(f) for f in (features or self.features)]
        n, mean, std = self.n[cols], self.mean[cols], self.std[cols]
        dev = np.asarray(x, dtype=np.float64) - mean
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(std > 0, dev / np.where(std > 0, std, 1.0), np.sign(dev) * np.inf)
        z = np.where((std > 0) | (dev != 0), z, 0.0)
        return np.where(n >= self.min_count, z, 0.0)


class DeviceZScore:
    """Per-device, per-feature z-score of window statistics (see the module docs).

    Parameters
    ----------
    features : the measurements (window features) it watches.
    min_count : windows a device must have learned before it is judged (score 0 before).
    adapt_after : passed to each :class:`ZScore` (its rule for accepting a new normal).
    """

    name = "device_zscore"
    mergeable: ClassVar[bool] = True

    def __init__(
        self, *, features: tuple[str, ...] = FEATURES, min_count: int = 8, adapt_after: int = 3
    ) -> None:
        if not features or len(set(features)) != len(features):
            raise ValueError(f"features must be distinct and not empty, got {features}")
        self.features = tuple(features)
        self.min_count, self.adapt_after = min_count, adapt_after
        self._zscores = {
            f: ZScore(min_count=min_count, adapt_after=adapt_after) for f in self.features
        }

    def _parts(self, batch: Batch) -> list[tuple[ZScore, npt.NDArray[np.bool_], Batch]]:
        parts = []
        for feature, zscore in self._zscores.items():
            rows = _rows_of(batch, feature)
            if rows.any():
                parts.append((zscore, rows, Batch(batch.frame.filter(rows))))
        return parts

    def score(self, batch: Batch) -> Matrix:
        """``|z|`` of each row against its device's baseline of its feature (pure)."""
        out = np.zeros(len(batch))
        for zscore, rows, part in self._parts(batch):
            out[rows] = zscore.score(part)
        return out

    def explain(self, batch: Batch) -> pl.DataFrame:
        """Per row: ``feature``, baseline ``n``, ``mean``, ``std`` and signed ``z``."""
        n = np.zeros(len(batch), np.int64)
        mean, std, z = (np.full(len(batch), np.nan) for _ in range(3))
        for zscore, rows, part in self._parts(batch):
            base = zscore.baseline(part)
            n[rows], mean[rows] = base["n"].to_numpy(), base["mean"].to_numpy()
            std[rows], z[rows] = base["std"].to_numpy(), base["z"].to_numpy()
        return pl.DataFrame(
            {"feature": batch.frame["measurement"], "n": n, "mean": mean, "std": std, "z": z}
        )

    def learn(self, batch: Batch, mask: npt.NDArray[np.bool_]) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(batch),):
            raise ValueError(f"mask has shape {mask.shape}, batch has {len(batch)} rows")
        for zscore, rows, part in self._parts(batch):
            zscore.learn(part, mask[rows])

    def frozen(self, key: int) -> FrozenBaseline:
        """The baseline of entity ``key`` as it is now (n = 0 for a feature never seen)."""
        n = np.zeros(len(self.features), np.int64)
        mean, m2 = np.zeros(len(self.features)), np.zeros(len(self.features))
        for j, zscore in enumerate(self._zscores.values()):
            state = zscore.state_dict()
            at = np.flatnonzero(state["key"] == np.uint64(key))
            if len(at):
                n[j], mean[j], m2[j] = state["n"][at[0]], state["mean"][at[0]], state["m2"][at[0]]
        std = moments.std(n, m2)
        return FrozenBaseline(self.features, n, mean, np.nan_to_num(std, nan=0.0), self.min_count)

    def fingerprint(self) -> str:
        return fingerprint(
            {
                "detector": self.name,
                "version": 1,
                "features": list(self.features),
                "min_count": self.min_count,
                "adapt_after": self.adapt_after,
            }
        )

    def state_dict(self) -> State:
        state: State = {"fingerprint": self.fingerprint()}
        for feature, zscore in self._zscores.items():
            for name, value in zscore.state_dict().items():
                if name != "fingerprint":
                    state[f"{feature}/{name}"] = value
        return state

    def load_state(self, state: State) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise StateMismatchError(
                f"{self.name} state has fingerprint {state.get('fingerprint')!r}, "
                f"expected {self.fingerprint()!r} (features {list(self.features)})"
            )
        for feature, zscore in self._zscores.items():
            prefix = f"{feature}/"
            part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            zscore.load_state({"fingerprint": zscore.fingerprint(), **part})

    def merge(self, other: Self) -> Self:
        """Per feature, :meth:`ZScore.merge` (exact: moments merge)."""
        if other.fingerprint() != self.fingerprint():
            raise NotMergeableError(f"{self.name}: cannot merge detectors of another configuration")
        merged = type(self)(
            features=self.features, min_count=self.min_count, adapt_after=self.adapt_after
        )
        merged._zscores = {f: z.merge(other._zscores[f]) for f, z in self._zscores.items()}
        return merged


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
