"""The reference stream over real UDP sockets on loopback: keys, switches, monitoring."""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest

from netsentry.detect.profile import MEASURED_THRESHOLDS
from netsentry.devices.frames import FrameSealer
from netsentry.devices.monitor import Detection, DeviceMonitor
from netsentry.devices.rtp import build
from netsentry.devices.stream import TransportReceiver, VideoSender
from netsentry.devices.video import Burst, NewPayloadType, VideoSource
from netsentry.devices.windows import WindowSpec
from netsentry.rotation.keyring import KeyRing


def rings(grace_s: float = 5.0) -> tuple[KeyRing, KeyRing, bytes]:
    key = os.urandom(32)
    device, transport = KeyRing(grace_s=grace_s), KeyRing(grace_s=grace_s)
    device.install(1, key)
    transport.install(1, key)
    return device, transport, key


def settle(receiver: TransportReceiver, sender: VideoSender, timeout: float = 5.0) -> None:
    """Wait until every frame sent was received (loopback: none is lost)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and receiver.stats().received < sender.sent:
        time.sleep(0.01)


def test_normal_streaming_opens_every_frame():
    device, transport, _ = rings()
    source = VideoSource(seed=21)
    expected = VideoSource(seed=21).schedule(2.0)
    with (
        TransportReceiver(transport) as receiver,
        VideoSender(device, receiver.address, source) as sender,
    ):
        started = time.monotonic()
        sender.run(2.0)
        took = time.monotonic() - started
        settle(receiver, sender)
        stats = receiver.stats()
    assert sender.sent == len(expected) and sender.unsent == 0
    assert stats.received == stats.opened == sender.sent
    assert (stats.undecryptable, stats.stale, stats.replayed, stats.malformed) == (0, 0, 0, 0)
    records = receiver.records()
    assert records.size.tolist() == expected.size.tolist()  # loopback keeps the order
    assert records.sequence.tolist() == expected.sequence.tolist()
    assert 1.9 < took < 2.5  # paced in real time
    span = (records.arrival_ns[-1] - records.arrival_ns[0]) / 1e9
    assert span == pytest.approx(expected.send_s[-1] - expected.send_s[0], abs=0.1)


def test_a_key_switch_mid_stream_loses_nothing():
    device, transport, _ = rings(grace_s=0.5)
    switched: list[int] = []
    transport.on_switch = switched.append
    with (
        TransportReceiver(transport) as receiver,
        VideoSender(device, receiver.address, VideoSource(seed=22)) as sender,
    ):
        sender.start(3.0)
        time.sleep(1.0)
        new = os.urandom(32)
        transport.install(2, new)  # the transport learns the key first,
        device.install(2, new)  # then the device switches at its next packet
        time.sleep(2.5)
        sender.stop()
        settle(receiver, sender)
        stats = receiver.stats()
        key_ids = {int(k) for k in (receiver.opener._highest)}
    assert stats.opened == stats.received == sender.sent > 300
    assert (stats.undecryptable, stats.stale, stats.replayed, stats.malformed) == (0, 0, 0, 0)
    assert switched == [1, 2] and key_ids == {1, 2}
    assert transport.key_ids == [2]  # the old key retired after the grace period


def test_frames_under_a_retired_key_are_refused_and_counted():
    device, transport, old = rings(grace_s=0.2)
    with (
        TransportReceiver(transport) as receiver,
        VideoSender(device, receiver.address, VideoSource(seed=23)) as sender,
    ):
        sender.run(0.5)
        new = os.urandom(32)
        transport.install(2, new)
        device.install(2, new)
        sender.run(0.5)
        time.sleep(0.3)  # past the grace period after the first frame under key 2
        sender.run(0.3)  # retires key 1 on the next lookup
        settle(receiver, sender)
        before = receiver.stats()
        stale_ring = KeyRing()
        stale_ring.install(1, old)
        sealer = FrameSealer(stale_ring, sequence=10**12)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(25):
                packet = build(payload_type=96, sequence=i, timestamp=0, ssrc=1, payload=b"x")
                s.sendto(sealer.seal(packet), receiver.address)
        deadline = time.monotonic() + 5
        while receiver.stats().received < before.received + 25 and time.monotonic() < deadline:
            time.sleep(0.01)
        after = receiver.stats()
    assert before.stale == 0 and before.opened == sender.sent
    assert after.stale == 25 and after.opened == before.opened and after.undecryptable == 0


def test_garbage_and_forgeries_are_counted_and_the_receiver_carries_on():
    device, transport, _ = rings()
    with (
        TransportReceiver(transport) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
    ):
        s.sendto(b"", receiver.address)
        s.sendto(b"\x07" + bytes(40), receiver.address)  # unknown version
        sealer = FrameSealer(device, sequence=1)
        s.sendto(sealer.seal(b"not even rtp"), receiver.address)  # opens, but is not RTP
        forged = bytearray(sealer.seal(b"x" * 20))
        forged[-1] ^= 1
        s.sendto(bytes(forged), receiver.address)  # tag does not verify
        other = KeyRing()
        other.install(5, os.urandom(32))
        s.sendto(FrameSealer(other).seal(b"x" * 20), receiver.address)  # unknown key id
        good = FrameSealer(device, sequence=100)
        frame = good.seal(build(payload_type=96, sequence=1, timestamp=0, ssrc=1))
        s.sendto(frame, receiver.address)
        s.sendto(frame, receiver.address)  # replayed
        deadline = time.monotonic() + 5
        while receiver.stats().received < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = receiver.stats()
    assert stats.received == 7 and stats.opened == 1
    assert stats.malformed == 3 and stats.undecryptable == 2 and stats.replayed == 1


class Broken:
    def observe(self, records):
        raise RuntimeError("monitor bug")

    def flush(self, now_ns):
        return []


def test_a_faulty_monitor_never_stops_the_receiver():
    device, transport, _ = rings()
    with (
        TransportReceiver(transport, monitor=Broken()) as receiver,
        VideoSender(device, receiver.address, VideoSource(seed=24)) as sender,
    ):
        sender.run(0.5)
        settle(receiver, sender)
        deadline = time.monotonic() + 5
        while receiver.stats().monitor_errors == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        sender.run(0.3)  # still receiving
        settle(receiver, sender)
        stats = receiver.stats()
    assert stats.opened == sender.sent and stats.monitor_errors > 1


@pytest.mark.parametrize(
    ("misbehaviour", "features"),
    [
        (NewPayloadType(start_s=0, duration_s=2.0, fraction=0.2), {"new_payload_type"}),
        (Burst(start_s=0, duration_s=0.5, rate_pps=1000), {"packet_rate", "rate", "peak_rate"}),
    ],
    ids=["new-payload-type", "burst"],
)
def test_live_detection_from_the_first_anomalous_packet(misbehaviour, features):
    """Learn over loopback for 14 windows, then misbehave: how soon does on_anomaly fire?"""
    device, transport, _ = rings()
    fired: list[tuple[float, Detection]] = []
    event = threading.Event()

    def on_anomaly(device_id: str, detection: Detection) -> None:
        fired.append((time.monotonic(), detection))
        event.set()

    monitor = DeviceMonitor(
        "cam-7",
        spec=WindowSpec(bucket_ns=100_000_000, window_buckets=10, hop_buckets=5),
        learn_windows=14,
        thresholds=MEASURED_THRESHOLDS,
        on_anomaly=on_anomaly,
    )
    source = VideoSource(seed=25)
    with (
        TransportReceiver(transport, monitor=monitor) as receiver,
        VideoSender(device, receiver.address, source) as sender,
    ):
        sender.run(8.0)  # the 14th window closes 7.5 s after the first packet
        assert monitor.state == "judging"
        sender.run(1.0)
        assert not fired, f"false alarm: {fired}"
        start = source.elapsed_s + 0.2
        schedule_start = type(misbehaviour)(**{**misbehaviour.__dict__, "start_s": start})
        source.inject(schedule_start)
        sender.run(1.5)
        event.wait(2.0)
        first_bad = sender.first_anomalous_at
    assert fired, "the misbehaviour was not detected"
    assert first_bad is not None
    at, detection = fired[0]
    latency = at - first_bad
    assert detection.flagged and detection.feature in features
    assert 0 < latency < 0.1, latency  # the early check: no waiting for a window to close
    name = type(misbehaviour).__name__
    print(f"\n{name}: on_anomaly {latency * 1e3:.1f} ms after the first anomalous packet")
    assert np.isfinite(detection.scores[detection.feature])
