"""Rolling windows against a naive reference, pushed in chunks of any size."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsentry.devices.packets import PacketRecords
from netsentry.devices.video import VideoSource
from netsentry.devices.windows import (
    FEATURES,
    MONOTONE_FEATURES,
    RollingWindows,
    WindowSpec,
    WindowStats,
)

EPOCH = 1_700_000_000_000_000_000  # arrivals are epoch nanoseconds in practice


def records(arrival, size, payload_type=None, ssrc=None) -> PacketRecords:
    n = len(arrival)
    return PacketRecords(
        arrival_ns=np.asarray(arrival, dtype=np.int64),
        size=np.asarray(size),
        payload_type=np.full(n, 96) if payload_type is None else np.asarray(payload_type),
        ssrc=np.full(n, 7) if ssrc is None else np.asarray(ssrc),
        rtp_timestamp=np.zeros(n),
        marker=np.zeros(n, dtype=bool),
        sequence=np.arange(n) % 2**16,
    )


def naive(rec: PacketRecords, spec: WindowSpec, known_pt=None, known_ssrc=None) -> dict:
    """Window by window, packet by packet, with numpy's mean and std."""
    t = np.maximum.accumulate(rec.arrival_ns)
    origin, w, bucket = int(t[0]), spec.window_buckets, spec.bucket_ns
    open_bucket = (int(t[-1]) - origin) // bucket
    out: dict[str, list] = {name: [] for name in ("end_ns", "packets", "bytes", *FEATURES)}
    seconds = spec.window_ns / 1e9
    for b in range(w - 1, open_bucket):
        if (b + 1) % spec.hop_buckets:
            continue
        lo, hi = origin + (b - w + 1) * bucket, origin + (b + 1) * bucket
        idx = [i for i in range(len(t)) if lo <= t[i] < hi]
        sizes = np.array([float(rec.size[i]) for i in idx])
        iats = np.array([(int(t[i]) - int(t[i - 1])) / 1e9 for i in idx if i > 0])
        peak = max(
            sum(int(rec.size[i]) for i in idx if lo + k * bucket <= t[i] < lo + (k + 1) * bucket)
            for k in range(w)
        )
        new_pt = sum(1 for i in idx if known_pt is not None and rec.payload_type[i] not in known_pt)
        new_ssrc = sum(1 for i in idx if known_ssrc is not None and rec.ssrc[i] not in known_ssrc)
        out["end_ns"].append(hi)
        out["packets"].append(len(idx))
        out["bytes"].append(int(sizes.sum()))
        out["packet_rate"].append(len(idx) / seconds)
        out["rate"].append(sizes.sum() * 8 / seconds)
        out["peak_rate"].append(peak * 8 / (bucket / 1e9))
        out["iat_mean"].append(iats.mean() if len(iats) else seconds)
        out["iat_std"].append(iats.std() if len(iats) else 0.0)
        out["size_mean"].append(sizes.mean() if len(sizes) else 0.0)
        out["size_std"].append(sizes.std() if len(sizes) else 0.0)
        out["new_payload_type"].append(float(new_pt))
        out["new_ssrc"].append(float(new_ssrc))
    return out


def assert_matches(stats: WindowStats, reference: dict) -> None:
    assert stats.frame["end_ns"].to_list() == reference["end_ns"]
    assert stats.frame["packets"].to_list() == reference["packets"]
    assert stats.frame["bytes"].to_list() == reference["bytes"]
    for name in FEATURES:
        np.testing.assert_allclose(
            stats.frame[name].to_numpy(), reference[name], rtol=1e-9, atol=1e-12, err_msg=name
        )


def push_in_chunks(stream: RollingWindows, rec: PacketRecords, cuts: list[int]) -> WindowStats:
    bounds = [0, *sorted({c % (len(rec) + 1) for c in cuts}), len(rec)]
    closed = [stream.push(rec.take(slice(a, b)))[0] for a, b in itertools.pairwise(bounds)]
    return WindowStats.concat(closed)


@st.composite
def specs(draw):
    window = draw(st.integers(1, 6))
    return WindowSpec(
        bucket_ns=draw(st.sampled_from([1_000_000, 100_000_000])),
        window_buckets=window,
        hop_buckets=draw(st.integers(1, window)),
    )


@st.composite
def streams(draw):
    spec = draw(specs())
    n = draw(st.integers(1, 120))
    gaps = draw(st.lists(st.integers(0, 3 * spec.bucket_ns), min_size=n, max_size=n))
    # a few arrivals step back in time: they count as simultaneous
    back = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n))
    arrival = EPOCH + np.cumsum(gaps) - np.where(np.arange(n) % 17 == 5, back, 0)
    size = draw(st.lists(st.integers(12, 1500), min_size=n, max_size=n))
    pt = draw(st.lists(st.sampled_from([96, 97, 100]), min_size=n, max_size=n))
    ssrc = draw(st.lists(st.sampled_from([7, 8]), min_size=n, max_size=n))
    cuts = draw(st.lists(st.integers(0, n), max_size=6))
    return spec, records(arrival, size, pt, ssrc), cuts


@settings(max_examples=150, deadline=None)
@given(streams())
def test_windows_match_the_naive_reference_in_any_chunking(case):
    spec, rec, cuts = case
    stream = RollingWindows(spec, known_payload_types=frozenset({96}), known_ssrcs=frozenset({7}))
    closed = push_in_chunks(stream, rec, cuts)
    assert_matches(closed, naive(rec, spec, {96}, {7}))


@settings(max_examples=60, deadline=None)
@given(streams())
def test_trailing_windows_are_lower_bounds_that_meet_the_closed_window(case):
    spec, rec, cuts = case
    stream = RollingWindows(spec)
    bounds = [0, *sorted({c % (len(rec) + 1) for c in cuts}), len(rec)]
    trailing = []
    for a, b in itertools.pairwise(bounds):
        trailing.append(stream.push(rec.take(slice(a, b)))[1])
    every = RollingWindows(WindowSpec(spec.bucket_ns, spec.window_buckets, hop_buckets=1))
    full = every.push(rec)[0].frame
    by_end = {row["end_ns"]: row for row in full.iter_rows(named=True)}
    for part in trailing:
        for row in part.frame.iter_rows(named=True):
            final = by_end.get(row["end_ns"])
            if final is None:  # the window still open at the end
                continue
            for name in MONOTONE_FEATURES:
                assert row[name] <= final[name] + 1e-9, name


def test_spread_near_1e9_with_a_tiny_spread_is_exact():
    """IATs of 1 s +- 1 ns: sum-of-squares formulas would return noise."""
    arrival = EPOCH + np.cumsum(np.r_[0, 1_000_000_000 + np.tile([-1, 1], 50)])
    spec = WindowSpec(bucket_ns=1_000_000_000, window_buckets=20, hop_buckets=20)
    stream = RollingWindows(spec)
    closed = push_in_chunks(stream, records(arrival, np.full(len(arrival), 1000)), [3, 40, 41])
    reference = naive(records(arrival, np.full(len(arrival), 1000)), spec)
    np.testing.assert_allclose(closed.frame["iat_std"].to_numpy(), reference["iat_std"], rtol=1e-6)
    assert 0 < closed.frame["iat_std"][0] < 2e-9


def test_a_silent_stream_closes_empty_windows_on_flush():
    spec = WindowSpec(bucket_ns=100_000_000, window_buckets=10, hop_buckets=5)
    stream = RollingWindows(spec)
    stream.push(records(EPOCH + np.arange(20) * 50_000_000, np.full(20, 500)))
    closed = stream.flush(EPOCH + 5_000_000_000)
    frame = closed.frame
    assert frame["end_ns"].to_list()[-1] == EPOCH + 5_000_000_000
    silent = frame.filter(frame["packets"] == 0)
    assert len(silent) > 0
    assert (silent["rate"] == 0).all() and (silent["iat_mean"] == 1.0).all()
    assert stream.flush(EPOCH + 5_000_000_000).frame.height == 0  # nothing new


def test_a_packet_stamped_before_a_flush_counts_in_the_open_bucket():
    spec = WindowSpec(bucket_ns=100_000_000, window_buckets=2, hop_buckets=1)
    stream = RollingWindows(spec)
    stream.push(records([EPOCH, EPOCH + 10_000_000], [100, 100]))
    stream.flush(EPOCH + 450_000_000)  # buckets 0..3 closed, bucket 4 open
    closed, trailing = stream.push(records([EPOCH + 300_000_000, EPOCH + 520_000_000], [50, 70]))
    assert closed.frame["end_ns"].to_list() == [EPOCH + 500_000_000]
    assert closed.frame["bytes"].to_list() == [50]  # the late packet, in bucket 4
    assert trailing.frame["bytes"].to_list()[-1] == 120


def test_a_jump_of_the_clock_is_refused_with_a_clear_error():
    stream = RollingWindows(WindowSpec(bucket_ns=1_000_000))
    stream.push(records([EPOCH], [100]))
    with pytest.raises(ValueError, match="restart the windows"):
        stream.push(records([EPOCH + 10**15], [100]))
    stream.restart()
    assert stream.push(records([EPOCH + 10**15], [100]))[0].frame.height == 0


def test_spec_is_checked():
    with pytest.raises(ValueError, match="hop_buckets"):
        WindowSpec(window_buckets=4, hop_buckets=5)
    with pytest.raises(ValueError, match="bucket_ns"):
        WindowSpec(bucket_ns=10)


def test_simulated_video_windows_have_the_expected_rate():
    source = VideoSource(frame_rate=30, gop=30, i_frame_bytes=30_000, p_frame_bytes=4_000, seed=5)
    closed, _ = RollingWindows(WindowSpec()).push(source.records(60.0))
    expected_bps = (30_000 + 29 * 4_000) * 8 * (1 + 12 / 1188)  # payload and RTP headers
    assert closed.frame["rate"].mean() == pytest.approx(expected_bps, rel=0.03)
    assert closed.frame["iat_mean"].mean() == pytest.approx(
        1 / closed.frame["packet_rate"].mean(), rel=0.02
    )
