"""Packet records: columns, the receiver's log, and RTP read from a capture."""

from __future__ import annotations

import lzma
import socket
import threading
from pathlib import Path

import dpkt
import numpy as np
import pytest

from netsentry.devices.packets import PacketLog, PacketRecords, read_pcap
from netsentry.devices.rtp import parse
from netsentry.devices.video import VideoSource

DATA = Path(__file__).parent / "data" / "rtp_simulated.pcap.xz"
T0 = 1_700_000_000.0
CAMERA, OTHER, STRANGER, SINK = "10.0.0.2", "10.0.0.3", "10.0.0.9", "10.0.0.1"


def _frame(src: str, dst: str, sport: int, dport: int, payload: bytes, proto: int = 17) -> bytes:
    transport: dpkt.Packet
    if proto == 17:
        transport = dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(payload), data=payload)
    else:
        transport = dpkt.tcp.TCP(sport=sport, dport=dport, flags=dpkt.tcp.TH_SYN, data=payload)
    ip = dpkt.ip.IP(
        src=socket.inet_aton(src),
        dst=socket.inet_aton(dst),
        p=proto,
        ttl=64,
        data=transport,
    )
    ip.len = 20 + len(bytes(transport))
    eth = dpkt.ethernet.Ethernet(
        src=b"\x02\x00\x00\x00\x00\x02", dst=b"\x02\x00\x00\x00\x00\x01", data=ip
    )
    return bytes(eth)


def _stream(source: VideoSource, seconds: float) -> list[tuple[float, bytes]]:
    """The source's packets with zero payload bytes (so the capture compresses)."""
    return [(p.send_s, p.data) for p in source.packets(seconds, zero_payload=True)]


def capture_frames() -> list[tuple[float, bytes]]:
    """What tests/data/rtp_simulated.pcap.xz holds (see tests/data/README.md)."""
    small = {"gop": 15, "i_frame_bytes": 3000, "p_frame_bytes": 500, "mtu": 600}
    camera = VideoSource(seed=11, payload_type=96, **small)
    other = VideoSource(seed=12, payload_type=97, **small)
    frames = [(t, _frame(CAMERA, SINK, 40000, 5004, p)) for t, p in _stream(camera, 2.0)]
    frames += [(t, _frame(OTHER, SINK, 40002, 5006, p)) for t, p in _stream(other, 1.0)]
    frames += [
        (0.5, _frame(STRANGER, SINK, 53, 5004, b"hello")),  # too short for RTP
        (0.7, _frame(STRANGER, SINK, 53, 5004, b"\x40" + bytes(15))),  # RTP version 1
        (0.9, _frame(STRANGER, SINK, 40000, 5004, b"", proto=6)),  # TCP
    ]
    arp = dpkt.ethernet.Ethernet(
        src=b"\x02\x00\x00\x00\x00\x09", dst=b"\xff" * 6, type=0x0806, data=bytes(28)
    )
    frames.append((1.1, bytes(arp)))
    return sorted(frames, key=lambda f: f[0])


def write_capture(path: Path) -> None:
    with open(path, "wb") as out:
        writer = dpkt.pcap.Writer(out)
        for t, frame in capture_frames():
            writer.writepkt(frame, ts=T0 + t)


def test_the_stored_capture_is_what_the_generator_writes(tmp_path):
    write_capture(tmp_path / "again.pcap")
    assert (tmp_path / "again.pcap").read_bytes() == lzma.decompress(DATA.read_bytes())


def test_rtp_of_one_camera_from_a_capture():
    found = read_pcap(DATA, dst_port=5004, src=CAMERA)
    expected = [
        parse(p)
        for _, p in _stream(
            VideoSource(seed=11, gop=15, i_frame_bytes=3000, p_frame_bytes=500, mtu=600), 2.0
        )
    ]
    rec = found.records
    assert found.matched == len(expected) and found.error_count == 0
    assert rec.size.tolist() == [h.size for h in expected]
    assert rec.sequence.tolist() == [h.sequence for h in expected]
    assert rec.rtp_timestamp.tolist() == [h.timestamp for h in expected]
    assert rec.marker.tolist() == [h.marker for h in expected]
    assert set(rec.payload_type.tolist()) == {96}
    assert len(set(rec.ssrc.tolist())) == 1
    assert np.all(np.diff(rec.arrival_ns) >= 0)
    assert rec.arrival_ns[0] // 1_000_000_000 == int(T0)
    assert found.packets == found.matched + found.not_matching + sum(found.skipped.values())


def test_a_port_filter_reports_what_is_not_rtp_with_index_and_offset():
    found = read_pcap(DATA, dst_port=5004)
    assert found.error_count == 2
    reasons = [e.reason for e in found.errors]
    assert "shorter than the 12-byte fixed header" in reasons[0]
    assert "version" in reasons[1] and "is 1" in reasons[1]
    assert all(e.packet > 0 and e.offset >= 24 for e in found.errors)
    assert found.skipped == {"arp": 1}
    total = found.matched + found.not_matching + sum(found.skipped.values()) + found.error_count
    assert total == found.packets


def test_filters_select_streams():
    every = read_pcap(DATA)
    assert set(every.records.payload_type.tolist()) == {96, 97}
    other = read_pcap(DATA, src=OTHER)
    assert set(other.records.payload_type.tolist()) == {97} and other.error_count == 0
    assert read_pcap(DATA, dst_port=9).matched == 0
    with pytest.raises(ValueError, match="dst_port"):
        read_pcap(DATA, dst_port=70000)
    with pytest.raises(ValueError):
        read_pcap(DATA, src="not an address")


def test_a_file_that_is_not_a_capture_is_refused(tmp_path):
    bogus = tmp_path / "bogus.pcap"
    bogus.write_bytes(b"this is not a capture at all....")
    with pytest.raises(ValueError, match="not a pcap"):
        read_pcap(bogus)


def test_a_capture_cut_short_keeps_what_came_before(tmp_path):
    whole = lzma.decompress(DATA.read_bytes())
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[: len(whole) // 2])
    found = read_pcap(cut, dst_port=5004, src=CAMERA)
    assert 0 < found.matched < read_pcap(DATA, dst_port=5004, src=CAMERA).matched
    assert "cut" in found.errors[-1].reason


def test_records_columns_are_checked_and_typed():
    rec = PacketRecords(
        arrival_ns=[1, 2],
        size=[100, 200],
        payload_type=[96, 96],
        ssrc=[1, 1],
        rtp_timestamp=[0, 0],
        marker=[False, True],
        sequence=[65535, 0],
    )
    assert rec.size.dtype == np.int32 and rec.sequence.dtype == np.uint16
    with pytest.raises(ValueError, match="differ in length"):
        PacketRecords(
            arrival_ns=[1],
            size=[100, 200],
            payload_type=[96],
            ssrc=[1],
            rtp_timestamp=[0],
            marker=[False],
            sequence=[0],
        )
    both = PacketRecords.concat([rec, rec.take(slice(1, None))])
    assert both.size.tolist() == [100, 200, 200]
    assert PacketRecords.concat([]).equals(PacketRecords.empty())
    assert rec.to_frame().columns[0] == "arrival_ns"


def test_the_log_keeps_the_most_recent_records_across_threads():
    log = PacketLog(capacity=1000)
    one = VideoSource(seed=1).records(1.0).take(slice(0, 100))

    def feed() -> None:
        for _ in range(20):
            log.append(one)

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log) == 1000 and log.dropped == 8000 - 1000
    assert len(log.records()) == 1000
    with pytest.raises(ValueError):
        PacketLog(capacity=0)
