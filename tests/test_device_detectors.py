"""Device detectors and the monitor: references, false alarms, injected misbehaviour."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import IsolationForest

from netsentry.detect.profile import (
    FOREST,
    MEASURED_THRESHOLDS,
    DeviceForest,
    DeviceZScore,
    device_key,
    window_batch,
)
from netsentry.detect.profile_forest import _PackedForest
from netsentry.devices.feedback_store import UnknownDeviceError
from netsentry.devices.monitor import MAX_SCORE, Detection, DeviceMonitor
from netsentry.devices.packets import read_pcap
from netsentry.devices.video import Burst, Jitter, NewPayloadType, SizeChange, VideoSource
from netsentry.devices.windows import FEATURES, RollingWindows, WindowSpec
from netsentry.model import Batch
from netsentry.rotation.vault import IntegrityError, Vault
from netsentry.store.sqlite import Store
from test_devices_packets import CAMERA, DATA

HOUR_S = 3600.0


def windows_of(seed: int, seconds: float):
    closed, _ = RollingWindows(WindowSpec()).push(VideoSource(seed=seed).records(seconds))
    return closed


# -- the detectors against references ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    learned=st.lists(
        st.tuples(st.floats(-1e3, 1e3), st.sampled_from([0.0, 5.0])), min_size=1, max_size=30
    ),
    probe=st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=10),
)
def test_frozen_baseline_scores_as_the_zscore_does(learned, probe):
    """Two features: one that varies, one constant (zero variance); cold start too."""
    features = ("varies", "constant")
    det = DeviceZScore(features=features, min_count=5)
    n = len(learned)
    values = np.array(learned, dtype=np.float64)
    batch = Batch.from_columns(
        np.repeat(np.arange(n), 2), list(features) * n, values.reshape(-1), {"src": ["d"] * 2 * n}
    )
    det.learn(batch, np.ones(2 * n, dtype=bool))
    key = int(batch.frame["key"][0])
    x = np.column_stack([probe, [5.0 if i % 2 else p for i, p in enumerate(probe)]])
    m = len(probe)
    probe_batch = Batch.from_columns(
        np.repeat(np.arange(m) + n, 2), list(features) * m, x.reshape(-1), {"src": ["d"] * 2 * m}
    )
    reference = det.explain(probe_batch)["z"].to_numpy().reshape(m, 2)
    np.testing.assert_allclose(det.frozen(key).z(x), reference, rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.abs(reference), det.score(probe_batch).reshape(m, 2))


@pytest.mark.parametrize(
    ("rows", "dims", "max_features"), [(120, 9, 1.0), (400, 4, 0.5), (7, 2, 1.0)]
)
def test_packed_forest_scores_as_scikit_learn(rows, dims, max_features):
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, dims)) * rng.uniform(1e-3, 1e6, dims)
    forest = IsolationForest(max_samples=min(256, rows), max_features=max_features, random_state=1)
    forest.fit(x)
    probe = np.r_[x[:40], rng.normal(size=(40, dims)) * 1e6, np.zeros((1, dims))]
    np.testing.assert_allclose(
        _PackedForest(forest).score(probe), -forest.score_samples(probe), rtol=1e-12
    )


def test_zscore_merge_equals_one_pass():
    a, b = windows_of(1, 30.0), windows_of(2, 30.0)
    union = Batch.concat([window_batch("cam", a), window_batch("cam", b)])
    whole, left, right = DeviceZScore(), DeviceZScore(), DeviceZScore()
    whole.learn(union, np.ones(len(union), dtype=bool))
    left.learn(window_batch("cam", a), np.ones(len(a) * len(FEATURES), dtype=bool))
    right.learn(window_batch("cam", b), np.ones(len(b) * len(FEATURES), dtype=bool))
    probe = window_batch("cam", windows_of(3, 10.0))
    np.testing.assert_allclose(left.merge(right).score(probe), whole.score(probe), rtol=1e-9)


def test_forest_is_seeded_round_trips_and_explains():
    train, probe = window_batch("cam", windows_of(1, 60.0)), window_batch("cam", windows_of(2, 5))
    every = np.ones(len(train), dtype=bool)
    first, again, other = DeviceForest(seed=3), DeviceForest(seed=3), DeviceForest(seed=4)
    for det in (first, again, other):
        det.learn(train, every)
    np.testing.assert_array_equal(first.score(probe), again.score(probe))
    assert not np.array_equal(first.score(probe), other.score(probe))
    restored = DeviceForest(seed=3)
    restored.load_state(first.state_dict())
    np.testing.assert_array_equal(restored.score(probe), first.score(probe))
    # a window whose size_mean is far off is explained by size_mean
    x = train.frame.filter(train.frame["time"] == train.frame["time"][0])
    odd = x.with_columns(
        value=np.where(x["measurement"].to_numpy() == "size_mean", 5000.0, x["value"].to_numpy())
    )
    why = first.explain(Batch(odd))
    assert set(why["feature"].to_list()) == {"size_mean"} and why["deviation"][0] > 10
    assert first.score(Batch(odd))[0] > first.score(Batch(x))[0]


def test_windows_of_other_measurements_or_devices_score_zero():
    det = DeviceForest(seed=1)
    train = window_batch("cam", windows_of(1, 30.0))
    det.learn(train, np.ones(len(train), dtype=bool))
    assert det.fitted(device_key("cam")) and not det.fitted(device_key("other"))
    assert np.all(det.score(window_batch("other", windows_of(2, 5.0))) == 0)


# -- the monitor, fed directly (no sockets) -------------------------------------------------


def monitor(seed: int = 0, **kwargs) -> DeviceMonitor:
    kwargs.setdefault("thresholds", MEASURED_THRESHOLDS)
    return DeviceMonitor(f"cam-{seed}", seed=seed, **kwargs)


def test_long_normal_streaming_raises_no_alarm():
    """Three simulated hours after a 60 s learning phase, at the measured thresholds."""
    alarms: list[Detection] = []
    mon = monitor(on_anomaly=lambda device, d: alarms.append(d))
    source = VideoSource(seed=31)
    mon.observe(source.records(61.0))
    assert mon.state == "judging"
    started, top = time.monotonic(), {name: 0.0 for name in MEASURED_THRESHOLDS}
    while source.elapsed_s < 61.0 + 3 * HOUR_S:
        for d in mon.observe(source.records(120.0)):
            for name, score in d.scores.items():
                top[name] = max(top[name], score)
    hours = (source.elapsed_s - 61.0) / HOUR_S
    print(
        f"\n{hours:.1f} h, {mon.windows_judged} windows in {time.monotonic() - started:.1f} s; "
        f"flagged {mon.windows_flagged}, episodes {mon.episodes}; largest scores "
        + ", ".join(f"{k} {v:.2f}" for k, v in top.items())
    )
    assert mon.windows_judged == pytest.approx(hours * 7200, abs=2)
    assert mon.windows_flagged == 0 and mon.episodes == 0 and not alarms
    assert all(top[name] < MEASURED_THRESHOLDS[name] for name in top)


RATES = {"packet_rate", "rate", "peak_rate"}
#: misbehaviour -> (its injection, what the alarm must name, what a flagged window may name)
MISBEHAVIOUR = {
    # extra packets: the rates first (early); windows may name the IATs they crowd
    "burst": (lambda t: Burst(t, 0.3, rate_pps=500), RATES, RATES | {"iat_mean", "iat_std"}),
    "size change": (lambda t: SizeChange(t, 3.0, factor=0.7), {"size_mean"}, {"size_mean"}),
    "jitter": (lambda t: Jitter(t, 3.0, mean_s=0.005), {"iat_std"}, {"iat_std"}),
    "new payload type": (
        lambda t: NewPayloadType(t, 3.0, fraction=0.05),
        {"new_payload_type"},
        {"new_payload_type"},
    ),
}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("kind", sorted(MISBEHAVIOUR))
def test_injected_misbehaviour_is_detected_within_a_few_windows(kind, seed):
    alarms: list[Detection] = []
    mon = monitor(seed, on_anomaly=lambda device, d: alarms.append(d))
    source = VideoSource(seed=seed)
    mon.observe(source.records(61.0))
    calm = [d for _ in range(60) for d in mon.observe(source.records(1.0))]
    assert not any(d.flagged for d in calm)
    start = source.elapsed_s + 0.25
    make, features, window_features = MISBEHAVIOUR[kind]
    source.inject(make(start))
    seen = [d for _ in range(40) for d in mon.observe(source.records(0.1))]
    flagged = [d for d in seen if d.flagged]
    assert alarms and alarms[0] is next(d for d in seen if d.flagged)
    first = alarms[0]
    delay = first.time_ns / 1e9 - start
    print(
        f"\n{kind} (seed {seed}): {'early' if first.early else 'window'} detection "
        f"{delay * 1e3:.0f} ms after the start, {first.feature} = {first.scores[first.feature]:.1f}"
    )
    assert first.feature in features and first.detector == "zscore"
    why = first.explanation["features"][first.feature]
    assert abs(why["z"]) == pytest.approx(first.scores[first.feature])
    assert why["std"] >= 0 and (why["value"] - why["mean"]) * why["z"] >= 0
    assert delay <= 3 * WindowSpec().hop_ns / 1e9  # within three hops of the start
    closed = [d for d in flagged if not d.early]
    assert closed and all(d.feature in window_features for d in closed)
    assert len(alarms) == 1  # one episode, one call


# -- the monitor with a store ---------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "devices.sqlite")
    with store.transaction() as tx:
        tx.db.execute(
            "INSERT INTO devices (id, role, public_key, registered) VALUES (?, 'device', ?, 0)",
            ("cam-1", bytes(32)),
        )
    return store


def test_profile_detections_and_thresholds_in_the_store(store):
    vault = Vault(os.urandom(32))
    profiles = []
    mon = DeviceMonitor("cam-1", store=store, vault=vault, on_profile=profiles.append)
    source = VideoSource(seed=5)
    mon.observe(source.records(61.0))
    assert len(profiles) == 1
    with store.read() as db:
        (stored,) = db.execute("SELECT count(*) FROM device_profiles").fetchone()
    assert stored == 1
    # a tighter threshold stored for this device is what the monitor uses
    with store.transaction() as tx:
        tx.db.execute(
            "INSERT INTO device_thresholds (device, thresholds, updated) VALUES (?, ?, 0)",
            ("cam-1", json.dumps({**MEASURED_THRESHOLDS, "new_payload_type": 0.5})),
        )
    mon.reload_thresholds()
    assert mon.thresholds()["new_payload_type"] == 0.5
    source.inject(NewPayloadType(source.elapsed_s, 1.0, payload_type=34, fraction=0.1))
    detections = mon.observe(source.records(3.0))
    with store.read() as db:
        rows = db.execute(
            "SELECT id, time, scores, flagged FROM device_detections ORDER BY id"
        ).fetchall()
    closed = [d for d in detections if not d.early]
    assert len(rows) == len(detections) and [r[0] for r in rows] == [d.id for d in detections]
    assert [bool(r[3]) for r in rows] == [d.flagged for d in detections]
    scores = json.loads(rows[-1][2])
    assert set(scores) == {*FEATURES, FOREST}
    assert any(json.loads(r[2])["new_payload_type"] == MAX_SCORE for r in rows)  # inf, capped
    assert any(d.flagged for d in closed)
    # a new monitor starts from the stored, verified profile
    again = DeviceMonitor("cam-1", store=store, vault=vault)
    assert again.state == "judging" and again.profile == profiles[0]
    # ...and refuses to start from a tampered one
    with store.transaction() as tx:
        tx.db.execute("UPDATE device_profiles SET profile = replace(profile, '96', '97')")
    with pytest.raises(IntegrityError):
        DeviceMonitor("cam-1", store=store, vault=vault)


def test_monitor_arguments_are_checked(store):
    with pytest.raises(ValueError, match="vault"):
        DeviceMonitor("cam-1", store=store)
    with pytest.raises(UnknownDeviceError):
        DeviceMonitor("cam-9", store=store, vault=Vault(os.urandom(32)))
    with pytest.raises(ValueError, match="device id"):
        DeviceMonitor("no such/device")
    with pytest.raises(ValueError, match="learn_windows"):
        DeviceMonitor("cam-1", learn_windows=1)
    with pytest.raises(ValueError, match="record"):
        DeviceMonitor("cam-1", record="some")  # type: ignore[arg-type]


def test_a_monitor_fed_from_a_capture():
    """The device side also reads captures: learn on the camera's first second, then judge."""
    records = read_pcap(DATA, dst_port=5004, src=CAMERA).records
    spec = WindowSpec(bucket_ns=50_000_000, window_buckets=4, hop_buckets=2)
    mon = DeviceMonitor("cam-1", spec=spec, learn_windows=8, thresholds=MEASURED_THRESHOLDS)
    detections = mon.observe(records)
    assert mon.state == "judging" and detections
    assert mon.profile is not None and mon.profile.encoding.gop_length == 15
    assert mon.profile.encoding.nominal_clock_rate_hz == 90_000
    assert not any(d.flagged for d in detections)


def test_a_device_silent_while_learning_learns_again():
    mon = DeviceMonitor("cam-8", spec=WindowSpec(), learn_windows=4)
    mon.observe(VideoSource(seed=8).records(0.05).take(slice(0, 1)))  # one packet, then nothing
    assert mon.flush(10_000_000_000) == [] and mon.state == "learning"
    mon.observe(VideoSource(seed=8).records(5.0, t0_ns=20_000_000_000))
    assert mon.state == "judging"


def test_a_silent_device_is_flagged_when_flushed():
    mon = monitor(7)
    source = VideoSource(seed=7)
    mon.observe(source.records(61.0))
    last = int(source.elapsed_s * 1e9)
    detections = mon.flush(last + 3_000_000_000)
    assert detections and detections[-1].flagged
    assert detections[-1].feature in {"packet_rate", "rate", "peak_rate", "iat_mean"}
