"""Device profiles: statistics against numpy, encoding, JSON, storage and integrity."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsentry.devices.packets import PacketRecords
from netsentry.devices.profile import (
    IAT_EDGES,
    QUANTILES,
    DeviceProfile,
    ProfileError,
    export_profile,
    import_profile,
    learn_profile,
    load_profile,
    save_profile,
)
from netsentry.devices.video import VideoSource
from netsentry.devices.windows import FEATURES, RollingWindows, WindowSpec
from netsentry.rotation.vault import IntegrityError, Vault
from netsentry.store.sqlite import Store

EPOCH = 1_700_000_000_000_000_000


def register(store: Store, *devices: str) -> None:
    with store.transaction() as tx:
        for device in devices:
            tx.db.execute(
                "INSERT INTO devices (id, role, public_key, registered) VALUES (?, ?, ?, ?)",
                (device, "device", bytes(32), 0),
            )


def learned(seed: int = 1, seconds: float = 40.0, device: str = "cam-1") -> DeviceProfile:
    rec = VideoSource(seed=seed).records(seconds, t0_ns=EPOCH)
    spec = WindowSpec()
    closed, _ = RollingWindows(spec).push(rec)
    return learn_profile(device, rec, closed, spec)


@st.composite
def packet_streams(draw):
    n = draw(st.integers(2, 300))
    # inter-arrival times from 0 to 2 s, or near 1 s with a spread of a few ns
    near = draw(st.booleans())
    if near:
        gaps = 1_000_000_000 + np.asarray(
            draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
        )
    else:
        gaps = np.asarray(draw(st.lists(st.integers(0, 2_000_000_000), min_size=n, max_size=n)))
    arrival = EPOCH + np.cumsum(gaps)
    if draw(st.booleans()):  # a few arrivals step back: they count as simultaneous
        arrival[1::7] -= 5_000
    size = draw(st.lists(st.integers(12, 65_535), min_size=n, max_size=n))
    pt = draw(st.lists(st.sampled_from([0, 8, 96, 111]), min_size=n, max_size=n))
    return PacketRecords(
        arrival_ns=arrival,
        size=size,
        payload_type=pt,
        ssrc=np.full(n, 42),
        rtp_timestamp=np.arange(n) * 3000,
        marker=np.ones(n, dtype=bool),
        sequence=np.arange(n) % 2**16,
    )


@settings(max_examples=100, deadline=None)
@given(packet_streams())
def test_packet_statistics_match_numpy(rec):
    spec = WindowSpec(bucket_ns=100_000_000, window_buckets=2, hop_buckets=1)
    closed, _ = RollingWindows(spec).push(rec)
    if len(closed) < 2:
        with pytest.raises(ProfileError, match="at least 2"):
            learn_profile("d", rec, closed, spec)
        return
    profile = learn_profile("d", rec, closed, spec)
    iat = np.diff(np.maximum.accumulate(rec.arrival_ns.astype(np.int64))) / 1e9
    size = rec.size.astype(np.float64)
    assert profile.iat.mean == pytest.approx(np.mean(iat), rel=1e-12, abs=1e-15)
    assert profile.iat.std == pytest.approx(np.std(iat), rel=1e-9, abs=1e-15)
    expected_q = np.quantile(iat, QUANTILES)
    assert [profile.iat.quantiles[f"{q:g}"] for q in QUANTILES] == pytest.approx(expected_q)
    counts, _ = np.histogram(np.clip(iat, IAT_EDGES[0], IAT_EDGES[-1]), bins=IAT_EDGES)
    assert profile.iat.counts == counts.tolist() and sum(profile.iat.counts) == len(rec) - 1
    assert profile.size.mean == pytest.approx(size.mean(), rel=1e-12)
    assert profile.size.std == pytest.approx(size.std(), rel=1e-9, abs=1e-9)
    assert (profile.size.min, profile.size.max) == (size.min(), size.max())
    assert profile.rate.mean_bps == pytest.approx(closed.frame["rate"].mean())
    assert profile.rate.peak_bps == closed.frame["peak_rate"].max()
    pts, counts = np.unique(rec.payload_type, return_counts=True)
    assert profile.encoding.payload_types == dict(zip(pts.tolist(), counts.tolist(), strict=True))
    assert profile.packets == len(rec)
    x = closed.matrix()
    for j, feature in enumerate(FEATURES):
        assert profile.baseline[feature].mean == pytest.approx(x[:, j].mean(), rel=1e-12, abs=1e-12)
        assert profile.baseline[feature].std == pytest.approx(x[:, j].std(), rel=1e-9, abs=1e-12)
    assert DeviceProfile.from_json(profile.to_json()) == profile


def test_iat_spread_of_a_few_ns_around_one_second():
    gaps = 1_000_000_000 + np.tile([-2, 2], 50)
    rec = PacketRecords(
        arrival_ns=EPOCH + np.cumsum(gaps),
        size=np.full(100, 100),
        payload_type=np.full(100, 96),
        ssrc=np.ones(100),
        rtp_timestamp=np.zeros(100),
        marker=np.zeros(100, bool),
        sequence=np.arange(100),
    )
    spec = WindowSpec(bucket_ns=1_000_000_000, window_buckets=1, hop_buckets=1)
    profile = learn_profile("d", rec, RollingWindows(spec).push(rec)[0], spec)
    assert profile.iat.std == pytest.approx(2e-9, rel=1e-3)


def test_encoding_of_the_simulated_camera():
    profile = learned(seed=3, seconds=40.0)
    enc = profile.encoding
    assert enc.payload_types.keys() == {96}
    assert list(enc.ssrcs) == [VideoSource(seed=3).ssrc]
    assert enc.clock_rate_hz == pytest.approx(90_000, rel=0.002)
    assert enc.nominal_clock_rate_hz == 90_000
    assert enc.frame_rate == pytest.approx(30.0, rel=0.01)
    assert enc.frames == 1200
    assert enc.gop_length == 30
    assert enc.iframe_size_ratio == pytest.approx(30_000 / 4_000, rel=0.05)
    assert profile.rate.mean_bps == pytest.approx((30_000 + 29 * 4_000) * 8 * 1188 / 1176, rel=0.05)
    assert profile.duration_s == pytest.approx(40.0, abs=0.1)
    assert profile.spec == WindowSpec()


def test_a_profile_needs_packets_and_windows():
    with pytest.raises(ProfileError, match="at least 2 packets"):
        learn_profile(
            "d",
            PacketRecords.empty(),
            RollingWindows().push(PacketRecords.empty())[0],
            WindowSpec(),
        )


def test_json_errors_name_the_field():
    profile = json.loads(learned(seconds=5.0).to_json())
    profile["size"]["min"] = "small"
    with pytest.raises(ProfileError, match=r"\$\.size\.min"):
        DeviceProfile.from_json(json.dumps(profile))
    profile = json.loads(learned(seconds=5.0).to_json())
    profile["format"] = 2
    with pytest.raises(ProfileError, match="format 2"):
        DeviceProfile.from_json(json.dumps(profile))
    with pytest.raises(ProfileError):
        DeviceProfile.from_json(b"{not json")


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "devices.sqlite")
    register(store, "cam-1", "cam-2")
    return store


@pytest.fixture
def vault():
    return Vault(os.urandom(32))


def test_stored_profiles_round_trip_and_verify(store, vault):
    profile = learned(seconds=10.0)
    assert load_profile(store, vault, "cam-1") is None
    save_profile(store, vault, profile)
    assert load_profile(store, vault, "cam-1") == profile
    save_profile(store, vault, profile)  # replacing is allowed
    with pytest.raises(IntegrityError):
        load_profile(store, Vault(os.urandom(32)), "cam-1")  # another secret


def test_an_edited_profile_is_detected(store, vault):
    save_profile(store, vault, learned(seconds=10.0))
    with store.transaction() as tx:
        tx.db.execute(
            "UPDATE device_profiles SET profile = replace(profile, '\"packets\":', "
            "'\"packets\":1') WHERE device = 'cam-1'"
        )
    with pytest.raises(IntegrityError, match="MAC does not match"):
        load_profile(store, vault, "cam-1")


def test_a_profile_copied_to_another_device_is_detected(store, vault):
    save_profile(store, vault, learned(seconds=10.0))
    with store.transaction() as tx:
        tx.db.execute(
            "INSERT INTO device_profiles (device, profile, mac, learned) "
            "SELECT 'cam-2', profile, mac, learned FROM device_profiles WHERE device = 'cam-1'"
        )
    with pytest.raises(IntegrityError):
        load_profile(store, vault, "cam-2")


def test_exports_are_private_and_verified(tmp_path, vault):
    profile = learned(seconds=10.0)
    path = tmp_path / "cam-1.profile.json"
    path.write_text("old")
    os.chmod(path, 0o644)
    export_profile(path, vault, profile)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert import_profile(path, vault) == profile
    body = json.loads(path.read_text())
    body["profile"]["size"]["max"] = 9000.0
    path.write_text(json.dumps(body))
    with pytest.raises(IntegrityError):
        import_profile(path, vault)
    path.write_text("garbage")
    with pytest.raises(ProfileError, match="not a profile export"):
        import_profile(path, vault)
