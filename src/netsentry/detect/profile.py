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

:class:`DeviceForest` (:mod:`netsentry.detect.profile_forest`, re-exported here)
    An Isolation Forest (scikit-learn, seeded) per device over whole window vectors:
    the rows of one window form one vector; every row of a window gets the window's
    score in (0, 1] (about 0.5 inside the data, towards 1 for windows that isolate
    quickly). Refitted from a seeded reservoir of each device's windows. Not mergeable.

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

from netsentry.detect import moments
from netsentry.detect.base import NotMergeableError, State, StateMismatchError, fingerprint
from netsentry.detect.profile_forest import DeviceForest
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
