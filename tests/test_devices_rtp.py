"""RTP header parsing (RFC 3550 5.1): hand-built packets, errors, round trips, garbage."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsentry.devices.rtp import RTPError, RTPHeader, build, parse


def test_a_hand_built_packet_field_by_field():
    # V=2 P=0 X=0 CC=0 | M=1 PT=96 | seq 0xBEEF | ts 0x01020304 | ssrc 0xCAFEBABE | "hi"
    packet = bytes.fromhex("80e0beef01020304cafebabe") + b"hi"
    h = parse(packet)
    assert (h.version, h.padding, h.extension, h.csrc_count) == (2, False, False, 0)
    assert (h.marker, h.payload_type, h.sequence) == (True, 96, 0xBEEF)
    assert (h.timestamp, h.ssrc) == (0x01020304, 0xCAFEBABE)
    assert (h.payload_offset, h.payload_size, h.padding_size, h.size) == (12, 2, 0, 14)
    assert packet[h.payload_offset : h.payload_offset + h.payload_size] == b"hi"


def test_csrcs_extension_and_padding_are_located():
    # V=2 P=1 X=1 CC=2, M=0 PT=8 (PCMA), two CSRCs, a one-word extension, 3 bytes of padding
    packet = (
        bytes([0b1011_0010, 8])
        + struct.pack("!HII", 1, 160, 7)
        + struct.pack("!II", 11, 12)
        + struct.pack("!HH", 0xBEDE, 1)
        + b"\x10\x20\x30\x40"
        + b"payload"
        + b"\x00\x00\x03"
    )
    h = parse(packet)
    assert h.padding and h.extension and h.csrc_count == 2
    assert h.csrcs == (11, 12)
    assert h.extension_profile == 0xBEDE and h.extension_size == 8
    assert h.payload_offset == 12 + 8 + 8
    assert packet[h.payload_offset : h.payload_offset + h.payload_size] == b"payload"
    assert h.padding_size == 3


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (b"", "shorter than the 12-byte fixed header"),
        (bytes.fromhex("80e0beef01020304cafeba"), "shorter than the 12-byte"),
        (bytes.fromhex("40e0beef01020304cafebabe"), r"version \(byte 0, bits 0-1\) is 1"),
        (bytes.fromhex("00e0beef01020304cafebabe"), r"version \(byte 0, bits 0-1\) is 0"),
        (bytes.fromhex("83e0beef01020304cafebabe") + bytes(8), "CSRC list of 3 entries"),
        (bytes.fromhex("90e0beef01020304cafebabe") + b"\xbe\xde", "extension header at byte 12"),
        (
            bytes.fromhex("90e0beef01020304cafebabe") + b"\xbe\xde\x00\x02" + bytes(4),
            "declares 2 words",
        ),
        (bytes.fromhex("a0e0beef01020304cafebabe") + b"ab\x00", "padding count .* is 0"),
        (bytes.fromhex("a0e0beef01020304cafebabe") + b"ab\x04", "padding count .* is 4"),
        (bytes.fromhex("80c8beef01020304cafebabe"), "payload type .* is 72"),  # RTCP SR
        (bytes.fromhex("80ccbeef01020304cafebabe"), "payload type .* is 76"),
    ],
)
def test_malformed_packets_raise_a_clear_error(packet, message):
    with pytest.raises(RTPError, match=message):
        parse(packet)


def test_rtp_error_is_a_value_error():
    assert issubclass(RTPError, ValueError)


def test_padding_may_fill_the_whole_payload():
    packet = bytes.fromhex("a0e0beef01020304cafebabe") + b"\x00\x00\x03"
    h = parse(packet)
    assert h.payload_size == 0 and h.padding_size == 3


def test_build_refuses_what_rtp_cannot_carry():
    for bad in ({"payload_type": 128}, {"payload_type": 73}, {"csrcs": tuple(range(16))}):
        args = {"payload_type": 96, "sequence": 0, "timestamp": 0, "ssrc": 0} | bad
        with pytest.raises(ValueError):
            build(**args)
    with pytest.raises(ValueError, match="32-bit words"):
        build(payload_type=96, sequence=0, timestamp=0, ssrc=0, extension=(1, b"abc"))


@given(
    payload_type=st.integers(0, 127).filter(lambda p: not 72 <= p <= 76),
    sequence=st.integers(0, 2**16 - 1),
    timestamp=st.integers(0, 2**32 - 1),
    ssrc=st.integers(0, 2**32 - 1),
    marker=st.booleans(),
    csrcs=st.lists(st.integers(0, 2**32 - 1), max_size=15).map(tuple),
    extension=st.none() | st.tuples(st.integers(0, 2**16 - 1), st.binary(max_size=12)),
    payload=st.binary(max_size=64),
    padding=st.integers(0, 255),
)
def test_build_then_parse_round_trips(
    payload_type, sequence, timestamp, ssrc, marker, csrcs, extension, payload, padding
):
    if extension is not None:
        extension = (extension[0], extension[1] + bytes(-len(extension[1]) % 4))
    packet = build(
        payload_type=payload_type,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        marker=marker,
        csrcs=csrcs,
        extension=extension,
        payload=payload,
        padding=padding,
    )
    h = parse(packet)
    assert (h.payload_type, h.sequence, h.timestamp, h.ssrc) == (
        payload_type,
        sequence,
        timestamp,
        ssrc,
    )
    assert h.marker == marker and h.csrcs == csrcs and h.size == len(packet)
    assert packet[h.payload_offset : h.payload_offset + h.payload_size] == payload
    assert h.padding_size == padding
    if extension is not None:
        assert h.extension_profile == extension[0]
        assert h.extension_size == 4 + len(extension[1])


@settings(max_examples=2000)
@given(st.binary(max_size=80))
def test_garbage_never_crashes_the_parser(data):
    try:
        h = parse(data)
    except RTPError as exc:
        assert str(exc)
        return
    assert isinstance(h, RTPHeader) and h.version == 2
    assert h.payload_offset + h.payload_size + h.padding_size == len(data)
    assert h.payload_size >= 0 and h.payload_offset >= 12


@given(st.binary(min_size=12, max_size=80))
def test_garbage_with_a_version_2_first_byte(data):
    data = bytes([0x80 | (data[0] & 0x3F)]) + data[1:]
    try:
        h = parse(data)
    except RTPError:
        return
    assert h.payload_offset + h.payload_size + h.padding_size == len(data)
