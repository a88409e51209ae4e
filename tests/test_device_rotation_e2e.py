"""The loop closed for real: a camera streams over loopback UDP, misbehaves, netsentry
detects it, rotates its key over a real Mosquitto, and the receiver switches keys
without losing or failing to decrypt a single frame."""

from __future__ import annotations

import json

import pytest

from netsentry.devices.loopback import Loopback
from netsentry.devices.video import Burst, Jitter, NewPayloadType, SizeChange, VideoSource

LEARN_WINDOWS = 30  # 15 s of normal streaming to learn the profile
LEARN_S = LEARN_WINDOWS * 0.5 + 1.5


@pytest.mark.parametrize(
    ("misbehaviour", "feature"),
    [
        (NewPayloadType(start_s=LEARN_S + 3.0, duration_s=2.0), "new_payload_type"),
        (Burst(start_s=LEARN_S + 3.0, duration_s=1.0, rate_pps=1000.0), "rate"),
    ],
    ids=["new-payload-type", "burst"],
)
def test_misbehaviour_rotates_the_key_and_no_frame_is_lost(tmp_path, broker, misbehaviour, feature):
    source = VideoSource(seed=11)
    source.inject(misbehaviour)
    with Loopback(tmp_path / "s.sqlite", broker, source, learn_windows=LEARN_WINDOWS) as loop:
        assert [s.key_id for s in loop.switches] == []  # provisioned, nothing sent yet
        loop.sender.run(LEARN_S + 3.0)  # learning, then normal streaming
        assert loop.monitor.state == "judging"
        assert loop.trigger is not None and loop.trigger.stats.requested == 0, "a false alarm"
        loop.sender.run(misbehaviour.duration_s + 3.0)
        switch = loop.wait_for_switch(2, timeout_s=10.0)
        assert switch is not None, f"no rotation: {loop.trigger.stats}"
        assert loop.sender.first_anomalous_at is not None
        latency_ms = (switch.at - loop.sender.first_anomalous_at) * 1e3
        assert 0 < latency_ms < 2000
        loop.sender.run(1.0)  # the device streams on under the new key
        assert loop.receiver.wait_for(loop.sender.sent, timeout=10.0)
        stats = loop.receiver.stats()
        rotations = loop.registry.rotations("cam-1")
    assert stats.opened == loop.sender.sent and loop.sender.unsent == 0
    assert stats.undecryptable == stats.stale == stats.replayed == stats.malformed == 0
    assert [s.key_id for s in loop.switches][:2] == [1, 2]
    by_key = {r.key_id: r for r in rotations}
    assert by_key[1].reason == "operator" and by_key[2].reason == "anomaly"
    assert by_key[2].status == "completed" and by_key[2].latency_ms is not None
    why = json.loads(by_key[2].detail)
    assert why["feature"] == feature or feature in json.dumps(why["explanation"])
    # one episode, one rotation (the cooldown holds the rest of the episode)
    assert sum(r.reason == "anomaly" for r in rotations) == 1
    with loop.store.read() as db:
        flagged = db.execute(
            "SELECT COUNT(*) FROM device_detections WHERE device = 'cam-1' AND flagged = 1"
        ).fetchone()[0]
    assert flagged >= 1


@pytest.mark.parametrize(
    "misbehaviour",
    [
        SizeChange(start_s=LEARN_S + 3.0, duration_s=3.0),
        Jitter(start_s=LEARN_S + 3.0, duration_s=3.0),
    ],
    ids=["size-change", "jitter"],
)
def test_slower_signs_rotate_within_a_few_windows(tmp_path, broker, misbehaviour):
    source = VideoSource(seed=12)
    source.inject(misbehaviour)
    with Loopback(tmp_path / "s.sqlite", broker, source, learn_windows=LEARN_WINDOWS) as loop:
        loop.sender.run(LEARN_S + 3.0 + misbehaviour.duration_s + 1.0)
        switch = loop.wait_for_switch(2, timeout_s=10.0)
        assert switch is not None
        assert loop.sender.first_anomalous_at is not None
        assert (switch.at - loop.sender.first_anomalous_at) < 3.0  # a few 0.5 s hops
        assert loop.receiver.wait_for(loop.sender.sent, timeout=10.0)
        stats = loop.receiver.stats()
    assert stats.opened == loop.sender.sent
    assert stats.undecryptable == stats.stale == 0
