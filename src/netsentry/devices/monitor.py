"""A device's monitor: learn its profile, then judge every window against it.

:class:`DeviceMonitor` takes packet records as they arrive (from
:class:`~netsentry.devices.stream.TransportReceiver` or a capture) and cuts them into
rolling windows (:class:`~netsentry.devices.windows.RollingWindows`).

Learning phase
    The first ``learn_windows`` closed windows and their packets make the device's
    :class:`~netsentry.devices.profile.DeviceProfile`. It is stored MAC-protected when
    the monitor has a store and a vault, and a monitor that finds a stored profile
    starts judging at once (a tampered profile raises ``IntegrityError``: the monitor
    refuses to start rather than judge against a forged baseline). A learning phase
    with fewer than two packets starts again. The baseline is that of the closed
    windows, also for the early check below, whose windows end at every bucket:
    measured on the simulated camera (its GOP starts with the first packet), the closed
    windows are the most variable alignment, so their baseline is the conservative one;
    a baseline of windows at every alignment gave 60 % more windows above z 4.

Judging
    Every closed window is scored by :class:`~netsentry.detect.profile.DeviceZScore`
    (``|z|`` per feature) and :class:`~netsentry.detect.profile.DeviceForest` (score
    ``"forest"``), fitted on the profile's windows. The window is *flagged* when any
    score exceeds the device's threshold for that name
    (:func:`netsentry.devices.tuning.flags`; thresholds from table
    ``device_thresholds`` over the defaults, re-read every ``thresholds_ttl_s``).
    Each window becomes a :class:`Detection`, written to table ``device_detections``
    (``record="all"``; ``"flagged"``: flagged ones only; ``"none"``).

Acting at once
    Waiting for a window to close costs up to a hop. So, after each chunk of records,
    the *trailing* window of every bucket touched (the window that ends with it, the
    last one still filling) is checked on the features that only grow as a window
    fills (:data:`~netsentry.devices.windows.MONOTONE_FEATURES`: rates, new payload
    types, new SSRCs): their value so far is a lower bound, so a ``z`` already above the
    threshold is an anomaly now. Such an *early* detection carries only those scores.

Callbacks
    ``on_anomaly(device_id, detection)`` is called once per *episode*: at the first
    flagged detection (early or closed) after a closed window that was not flagged. It
    runs in the caller's thread (the receiver's), before the detection is written, so
    the store never delays a key rotation; its ``id`` is therefore None. Scores of
    ``inf`` (a feature that never varied while learning, e.g. a new payload type) are
    reported and stored as :data:`MAX_SCORE`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from netsentry.detect.profile import FOREST, DeviceForest, DeviceZScore, device_key
from netsentry.devices import tuning
from netsentry.devices.feedback_store import (
    check_device_id,
    effective_thresholds,
    require_device,
)
from netsentry.devices.packets import PacketRecords
from netsentry.devices.profile import (
    DeviceProfile,
    ProfileError,
    learn_profile,
    load_profile,
    save_profile,
)
from netsentry.devices.windows import (
    FEATURES,
    MONOTONE_FEATURES,
    RollingWindows,
    WindowSpec,
    WindowStats,
)
from netsentry.model import Batch
from netsentry.rotation.vault import Vault
from netsentry.store.sqlite import Store

__all__ = ["MAX_SCORE", "Detection", "DeviceMonitor"]

log = logging.getLogger(__name__)
MAX_SCORE = 1e9
Record = Literal["all", "flagged", "none"]


@dataclass(frozen=True)
class Detection:
    """One judged window of one device.

    ``scores``: feature -> ``|z|`` and ``"forest"`` -> forest score (early detections:
    the monotone features only, ``z`` clipped below at 0). ``feature`` is the window
    feature that stood out most (relative to its threshold) and ``detector`` the
    score that named it (``"zscore"`` or ``"forest"``); ``explanation`` holds, per
    feature, the window's ``value``, the profile's ``mean`` and ``std`` and ``z``, and
    the forest's ``score``, ``feature`` and ``deviation``.
    """

    device_id: str
    time_ns: int
    scores: dict[str, float]
    thresholds: dict[str, float]
    flagged: bool
    feature: str
    detector: str
    explanation: dict[str, Any] = field(repr=False)
    early: bool = False
    id: int | None = None


def _capped(score: float) -> float:
    return 0.0 if math.isnan(score) else min(float(score), MAX_SCORE)


def _threshold(thresholds: Mapping[str, float], name: str) -> float:
    """The threshold :func:`netsentry.devices.tuning.flags` applies to ``name``."""
    return thresholds.get(name, tuning.DEFAULT_THRESHOLDS.get(name, tuning.DEFAULT_THRESHOLD))


class DeviceMonitor:
    """Learns a device's profile, then turns its windows into detections (module docs).

    Parameters
    ----------
    device_id : the device (``^[A-Za-z0-9_.-]{1,64}$``; registered in ``devices`` when
        a store is given).
    spec : how windows are cut (a stored profile brings its own).
    learn_windows : closed windows in the learning phase.
    store, vault : persist the profile (MAC) and the detections; both or neither.
    profile : start from this profile instead of learning (or loading) one.
    thresholds : fixed thresholds over the defaults (default: read from the store,
        else :data:`netsentry.devices.tuning.DEFAULT_THRESHOLDS`).
    thresholds_ttl_s : how long thresholds read from the store are reused.
    on_anomaly : ``(device_id, detection)``, once per episode (see the module docs).
    on_profile : ``(profile)``, when a learning phase ends.
    record : which detections are written (``"all"``, ``"flagged"``, ``"none"``).
    seed : of the forest.
    """

    def __init__(
        self,
        device_id: str,
        *,
        spec: WindowSpec | None = None,
        learn_windows: int = 120,
        store: Store | None = None,
        vault: Vault | None = None,
        profile: DeviceProfile | None = None,
        thresholds: Mapping[str, float] | None = None,
        thresholds_ttl_s: float = 5.0,
        on_anomaly: Callable[[str, Detection], None] | None = None,
        on_profile: Callable[[DeviceProfile], None] | None = None,
        record: Record = "all",
        seed: int = 0,
    ) -> None:
        check_device_id(device_id)
        if learn_windows < 2:
            raise ValueError(f"learn_windows must be at least 2, got {learn_windows}")
        if (store is None) != (vault is None):
            raise ValueError("a store needs a vault (profiles are MAC-protected), and vice versa")
        if record not in ("all", "flagged", "none"):
            raise ValueError(f"record must be all, flagged or none, got {record!r}")
        self.device_id, self.learn_windows = device_id, learn_windows
        self.store, self.vault, self.record, self.seed = store, vault, record, seed
        self.on_anomaly, self.on_profile = on_anomaly, on_profile
        self._fixed = None if thresholds is None else dict(thresholds)
        self.thresholds_ttl_s = thresholds_ttl_s
        self._thresholds: tuple[float, dict[str, float]] | None = None
        self._lock = threading.RLock()
        self.windows_judged = self.windows_flagged = self.episodes = 0
        self._in_episode = False
        if store is not None:
            with store.read() as db:
                require_device(db, device_id)  # UnknownDeviceError: register it first
        if profile is None and store is not None and vault is not None:
            profile = load_profile(store, vault, device_id)
        self.profile: DeviceProfile | None = None
        self._windows = RollingWindows(spec or WindowSpec())
        self._learning: list[PacketRecords] = []
        self._learned: list[WindowStats] = []
        self._key = device_key(device_id)
        self._zscore = DeviceZScore()
        self._forest = DeviceForest(seed=seed)
        self._baseline = self._zscore.frozen(self._key)
        if profile is not None:
            self._adopt(profile)

    @property
    def state(self) -> str:
        """``"learning"`` or ``"judging"``."""
        return "learning" if self.profile is None else "judging"

    @property
    def spec(self) -> WindowSpec:
        return self._windows.spec

    # -- thresholds -------------------------------------------------------------------

    def thresholds(self) -> dict[str, float]:
        """The device's thresholds now (stored ones are cached ``thresholds_ttl_s``)."""
        if self._fixed is not None:
            return tuning.effective(self._fixed)
        if self.store is None:
            return tuning.effective(None)
        now = time.monotonic()
        if self._thresholds is None or now - self._thresholds[0] > self.thresholds_ttl_s:
            self._thresholds = (now, effective_thresholds(self.store, self.device_id))
        return dict(self._thresholds[1])

    def reload_thresholds(self) -> None:
        """Read the stored thresholds again at the next window."""
        self._thresholds = None

    # -- feeding ------------------------------------------------------------------------

    def observe(self, records: PacketRecords) -> list[Detection]:
        """Take records in arrival order; return the detections they produced."""
        if not len(records):
            return []
        with self._lock:
            if self.profile is None:
                return self._observe_learning(records)
            return self._observe_judging(records)

    def flush(self, now_ns: int) -> list[Detection]:
        """Close the windows that ended by ``now_ns`` (a silent device)."""
        with self._lock:
            closed = self._windows.flush(now_ns)
            if self.profile is None:
                self._learn(closed, PacketRecords.empty())
                return []
            return self._finish(self._judge(closed))

    def relearn(self) -> None:
        """Forget the profile and learn a new one from the next packets."""
        with self._lock:
            self.profile = None
            self._windows = RollingWindows(self._windows.spec)
            self._learning, self._learned = [], []
            self._zscore, self._forest = DeviceZScore(), DeviceForest(seed=self.seed)

    def _push(self, records: PacketRecords) -> tuple[WindowStats, WindowStats]:
        try:
            return self._windows.push(records)
        except ValueError as exc:  # the clock jumped: start the windows (and learning) again
            log.warning("device %s: %s", self.device_id, exc)
            self._windows.restart()
            if self.profile is None:
                self._learning, self._learned = [], []
            return self._windows.push(records)

    def _observe_learning(self, records: PacketRecords) -> list[Detection]:
        spec = self._windows.spec
        first_end = -(-spec.window_buckets // spec.hop_buckets) * spec.hop_buckets
        while len(records) and self.profile is None:
            origin = self._windows.origin_ns
            origin = int(records.arrival_ns[0]) if origin is None else origin
            # where the last learning window ends: what arrives after it is judged
            end = origin + (first_end + (self.learn_windows - 1) * spec.hop_buckets) * (
                spec.bucket_ns
            )
            arrival = np.maximum.accumulate(records.arrival_ns)
            split = int(np.searchsorted(arrival, end, side="left"))
            part, records = records.take(slice(0, split)), records.take(slice(split, None))
            closed, _ = self._push(part)
            if len(records):  # time has reached the end of the learning phase
                closed = WindowStats.concat([closed, self._windows.flush(end)])
            self._learn(closed, part)
        return self._observe_judging(records) if len(records) else []

    def _learn(self, closed: WindowStats, records: PacketRecords) -> None:
        self._learning.append(records)
        self._learned.append(closed)
        windows = WindowStats.concat(self._learned)
        if len(windows) < self.learn_windows:
            return
        learned = PacketRecords.concat(self._learning)
        self._learning, self._learned = [], []
        try:
            profile = learn_profile(
                self.device_id,
                learned,
                WindowStats(windows.frame.head(self.learn_windows)),
                self._windows.spec,
            )
        except ProfileError as exc:  # e.g. a device silent all along: learn again
            log.warning("device %s: %s; learning again", self.device_id, exc)
            self._windows.restart()
            return
        self._adopt(profile)
        if self.store is not None and self.vault is not None:
            save_profile(self.store, self.vault, profile)
        if self.on_profile is not None:
            self.on_profile(profile)

    def _adopt(self, profile: DeviceProfile) -> None:
        """Judge against ``profile`` from now on: fit the detectors on its windows."""
        if profile.device_id != self.device_id:
            raise ValueError(f"profile of {profile.device_id!r} given to {self.device_id!r}")
        if self._windows.spec != profile.spec:
            self._windows = RollingWindows(profile.spec)
        x = profile.matrix()
        features = tuple(profile.features)
        n = len(x)
        batch = Batch.from_columns(
            np.repeat(np.arange(n, dtype=np.int64), len(features)),
            list(features) * n,
            x.reshape(-1),
            {"service": ["device"] * x.size, "src": [self.device_id] * x.size},
        )
        self._zscore = DeviceZScore(features=features, min_count=min(8, n))
        self._forest = DeviceForest(features=features, min_count=min(32, n), seed=self.seed)
        every = np.ones(len(batch), dtype=bool)
        self._zscore.learn(batch, every)
        self._forest.learn(batch, every)
        self._baseline = self._zscore.frozen(self._key)
        self._windows.known_payload_types = profile.known_payload_types
        self._windows.known_ssrcs = profile.known_ssrcs
        self.profile = profile

    # -- judging --------------------------------------------------------------------------

    def _observe_judging(self, records: PacketRecords) -> list[Detection]:
        closed, trailing = self._push(records)
        early = [] if self._in_episode else self._early(trailing)
        return self._finish(early + self._judge(closed))

    def _early(self, trailing: WindowStats) -> list[Detection]:
        if not len(trailing):
            return []
        values = trailing.matrix(MONOTONE_FEATURES)
        z = self._baseline.z(values, MONOTONE_FEATURES)
        thresholds = self.thresholds()
        # a trailing window is judged when its last packet so far has arrived
        last = self._windows.last_arrival_ns or 0
        ends = np.minimum(trailing.frame["end_ns"].to_numpy(), last)
        for i in range(len(trailing)):
            scores = {f: _capped(max(z[i, j], 0.0)) for j, f in enumerate(MONOTONE_FEATURES)}
            if tuning.flags(scores, thresholds):
                feature = max(scores, key=lambda f: scores[f] / _threshold(thresholds, f))
                explanation = {
                    "features": {
                        f: self._explained(f, float(values[i, j]), float(z[i, j]))
                        for j, f in enumerate(MONOTONE_FEATURES)
                    },
                    "early": True,
                }
                return [
                    Detection(
                        self.device_id,
                        int(ends[i]),
                        scores,
                        thresholds,
                        True,
                        feature,
                        "zscore",
                        explanation,
                        early=True,
                    )
                ]
        return []

    def _judge(self, windows: WindowStats) -> list[Detection]:
        n = len(windows)
        if not n:
            return []
        values = windows.matrix(FEATURES)
        z = self._baseline.z(values)
        forest = self._forest.score_vectors(self._key, values)
        why_feature, why_deviation = self._forest.explain_vectors(self._key, values)
        thresholds = self.thresholds()
        ends = windows.frame["end_ns"].to_numpy()
        out = []
        for i in range(n):
            scores = {f: _capped(abs(z[i, j])) for j, f in enumerate(FEATURES)}
            scores[FOREST] = _capped(forest[i])
            flagged = tuning.flags(scores, thresholds)
            named = max(scores, key=lambda f: scores[f] / _threshold(thresholds, f))
            if not flagged:
                named = max(FEATURES, key=lambda f: scores[f])
            feature, detector = (why_feature[i], FOREST) if named == FOREST else (named, "zscore")
            explanation = {
                "features": {
                    f: self._explained(f, float(values[i, j]), float(z[i, j]))
                    for j, f in enumerate(FEATURES)
                },
                FOREST: {
                    "score": scores[FOREST],
                    "feature": why_feature[i],
                    "deviation": float(why_deviation[i]),
                },
            }
            out.append(
                Detection(
                    self.device_id,
                    int(ends[i]),
                    scores,
                    thresholds,
                    flagged,
                    feature,
                    detector,
                    explanation,
                )
            )
        return out

    def _explained(self, feature: str, value: float, z: float) -> dict[str, float]:
        """A feature's value, the profile's mean and std of it, and the signed z."""
        j = self._baseline.features.index(feature)
        signed = _capped(z) if z >= 0 else -_capped(-z)
        mean, std = float(self._baseline.mean[j]), float(self._baseline.std[j])
        return {"value": value, "mean": mean, "std": std, "z": signed}

    def _finish(self, detections: list[Detection]) -> list[Detection]:
        """Count, call back once per episode, then write the rows."""
        for d in detections:
            if not d.early:
                self.windows_judged += 1
                self.windows_flagged += d.flagged
            if d.flagged and not self._in_episode:
                self._in_episode = True
                self.episodes += 1
                if self.on_anomaly is not None:
                    self.on_anomaly(self.device_id, d)
            elif not d.flagged and not d.early:
                self._in_episode = False
        return self._write(detections)

    def _write(self, detections: list[Detection]) -> list[Detection]:
        if self.store is None or self.record == "none":
            return detections
        keep = [d for d in detections if d.flagged or (self.record == "all" and not d.early)]
        if not keep:
            return detections
        ids: dict[int, int] = {}
        with self.store.transaction() as tx:
            for d in keep:
                cursor = tx.db.execute(
                    "INSERT INTO device_detections (device, time, scores, flagged) "
                    "VALUES (?, ?, ?, ?)",
                    (d.device_id, d.time_ns, json.dumps(d.scores, allow_nan=False), int(d.flagged)),
                )
                ids[id(d)] = int(cursor.lastrowid or 0)
        return [dataclasses.replace(d, id=ids[id(d)]) if id(d) in ids else d for d in detections]
