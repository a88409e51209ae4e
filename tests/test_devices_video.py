"""The simulated video source: GOP pattern, rate, RTP fields and injected misbehaviour."""

from __future__ import annotations

import numpy as np
import pytest

from netsentry.devices.rtp import parse
from netsentry.devices.video import (
    Burst,
    Jitter,
    NewPayloadType,
    Schedule,
    SizeChange,
    VideoSource,
)


def frames_of(s: Schedule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame numbers, their byte sizes (payload) and whether each is an I-frame."""
    numbers = np.unique(s.frame[s.frame >= 0])
    sizes = np.array([(s.size[s.frame == k] - 12).sum() for k in numbers])
    key = np.array([s.keyframe[s.frame == k][0] for k in numbers])
    return numbers, sizes, key


def test_gop_pattern_and_frame_rate():
    source = VideoSource(frame_rate=25, gop=12, i_frame_bytes=20_000, p_frame_bytes=2_000, seed=4)
    s = source.schedule(48.0)
    numbers, sizes, key = frames_of(s)
    assert len(numbers) == 48 * 25 and source.elapsed_s == pytest.approx(48.0)
    assert np.array_equal(np.flatnonzero(key), np.arange(0, 1200, 12))  # every 12th frame
    assert sizes[key].mean() == pytest.approx(20_000, rel=0.05)
    assert sizes[~key].mean() == pytest.approx(2_000, rel=0.02)
    assert sizes[~key].std() / sizes[~key].mean() == pytest.approx(0.1, rel=0.15)
    assert sizes[key].min() > 3 * sizes[~key].max()  # I-frames stand out
    # the bit rate follows: (I + (GOP - 1) P) per GOP, plus 12 header bytes per packet
    seconds = s.send_s[-1] - s.send_s[0]
    expected = (20_000 + 11 * 2_000) * 25 / 12
    assert (s.size.sum() - 12 * len(s)) / seconds == pytest.approx(expected, rel=0.05)


def test_rtp_fields_follow_rfc_3550():
    source = VideoSource(frame_rate=30, clock_rate=90_000, mtu=1200, seed=2)
    s = source.schedule(4.0)
    assert s.size.max() <= 1200 and s.size.min() > 12
    assert np.all(np.diff(s.sequence) % 2**16 == 1)  # consecutive, wrapping
    assert np.all(np.diff(s.send_s) >= 0)
    ends = np.flatnonzero(s.marker)
    assert len(ends) == 120 and ends[-1] == len(s) - 1  # the last packet of each frame
    per_frame = s.timestamp[ends]
    assert set(np.diff(per_frame) % 2**32) == {3000}  # 90 kHz / 30 fps
    assert len(set(s.ssrc.tolist())) == 1 and set(s.payload_type.tolist()) == {96}


def test_the_same_seed_gives_the_same_stream_and_packets_parse():
    a, b = VideoSource(seed=9), VideoSource(seed=9)
    sa, sb = a.schedule(1.0), b.schedule(1.0)
    assert np.array_equal(sa.send_s, sb.send_s) and np.array_equal(sa.size, sb.size)
    assert not np.array_equal(VideoSource(seed=10).schedule(1.0).size, sa.size)
    packets = list(VideoSource(seed=9).packets(1.0))
    assert [len(p.data) for p in packets] == sa.size.tolist()
    assert not any(p.anomalous for p in packets)
    headers = [parse(p.data) for p in packets]
    assert [h.sequence for h in headers] == sa.sequence.tolist()
    assert [h.marker for h in headers] == sa.marker.tolist()


@pytest.mark.parametrize(
    "misbehaviour", [None, Burst(0.35, 0.5, 700), NewPayloadType(0.2, 0.6, 99, 0.5)]
)
def test_cutting_the_stream_into_calls_changes_nothing(misbehaviour):
    whole, cut = VideoSource(seed=12), VideoSource(seed=12)
    if misbehaviour is not None:
        whole.inject(misbehaviour)
        cut.inject(misbehaviour)
    one = whole.schedule(1.5)
    parts = [cut.schedule(step) for step in (0.1, 0.3, 0.5, 0.6)]  # whole frames
    for name in ("send_s", "size", "payload_type", "timestamp", "sequence", "marker"):
        joined = np.concatenate([getattr(p, name) for p in parts])
        np.testing.assert_array_equal(joined, getattr(one, name), err_msg=name)


def test_a_stream_continues_across_calls():
    source = VideoSource(seed=3)
    first, second = source.schedule(1.0), source.schedule(1.0)
    assert first.frame[-1] + 1 == second.frame[0]
    assert (first.sequence[-1] + 1) % 2**16 == second.sequence[0]
    assert second.send_s[0] >= 1.0


def test_a_burst_adds_packets_at_its_rate_within_its_span():
    calm = VideoSource(seed=5).schedule(3.0)
    source = VideoSource(seed=5)
    source.inject(Burst(start_s=1.0, duration_s=0.5, rate_pps=1000, size=900))
    s = source.schedule(3.0)
    extra = s.frame == -1
    assert extra.sum() == 500
    assert s.send_s[extra].min() >= 1.0 and s.send_s[extra].max() < 1.5
    assert set(s.size[extra].tolist()) == {900}
    assert len(s) == len(calm) + 500
    assert np.array_equal(s.anomalous, extra)


def test_a_size_change_scales_packets_in_its_span_only():
    source = VideoSource(seed=6)
    source.inject(SizeChange(start_s=1.0, duration_s=1.0, factor=0.5))
    s = source.schedule(3.0)
    calm = VideoSource(seed=6).schedule(3.0)
    inside = (calm.send_s >= 1.0) & (calm.send_s < 2.0)
    np.testing.assert_array_equal(s.size[~inside], calm.size[~inside])
    payload = (calm.size[inside] - 12) * 0.5
    np.testing.assert_allclose(s.size[inside] - 12, np.maximum(1, np.round(payload)))


def test_jitter_delays_packets_and_spreads_inter_arrival_times():
    source = VideoSource(seed=7)
    source.inject(Jitter(start_s=0.0, duration_s=10.0, mean_s=0.01))
    s = source.schedule(10.0)
    calm = VideoSource(seed=7).schedule(10.0)
    assert np.all(np.diff(s.send_s) >= 0)  # send order
    assert np.any(np.diff(s.sequence.astype(np.int64)) % 2**16 != 1)  # reordered
    assert s.send_s.mean() - calm.send_s.mean() == pytest.approx(0.01, rel=0.1)


def test_a_new_payload_type_for_a_fraction_of_packets():
    source = VideoSource(seed=8)
    source.inject(NewPayloadType(start_s=1.0, duration_s=2.0, payload_type=100, fraction=0.25))
    s = source.schedule(4.0)
    inside = (s.send_s >= 1.0) & (s.send_s < 3.0)
    assert np.all(s.payload_type[~inside] == 96)
    assert np.array_equal(s.anomalous, s.payload_type == 100)
    assert np.mean(s.payload_type[inside] == 100) == pytest.approx(0.25, abs=0.06)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="mtu"):
        VideoSource(mtu=12)
    with pytest.raises(ValueError, match="payload type"):
        VideoSource(payload_type=72)
    with pytest.raises(ValueError, match="duration_s"):
        VideoSource().inject(Burst(start_s=0, duration_s=0))
    with pytest.raises(ValueError, match="I-frame must fit"):
        VideoSource(packet_gap_s=0.01)


def test_records_are_the_schedule_as_received():
    source = VideoSource(seed=1)
    rec = source.records(2.0, t0_ns=10**18)
    s = VideoSource(seed=1).schedule(2.0)
    assert rec.arrival_ns[0] == 10**18 + round(s.send_s[0] * 1e9)
    assert rec.size.tolist() == s.size.tolist()
