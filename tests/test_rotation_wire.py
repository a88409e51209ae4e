"""Protocol messages and their cryptography, without a broker: round trips, versions,
garbage (hypothesis: always a clear ProtocolError), forged and tampered offers."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsentry.rotation.handshake import (
    AuthenticationError,
    StaticKey,
    make_ack,
    open_offer,
    seal_offer,
    verify_ack,
)
from netsentry.rotation.wire import (
    Ack,
    ErrorCode,
    ErrorReply,
    Offer,
    ProtocolError,
    UnsupportedVersionError,
    decode,
)

ISSUER = StaticKey.generate()
HOLDER = StaticKey.generate()
KEY = bytes(range(32))


def offer(**changes: object) -> Offer:
    fields = {"role": "receiver", "recipient_id": "rx-1", "device_id": "cam-1", "key_id": 7}
    fields.update(changes)
    return seal_offer(ISSUER, HOLDER.public, key=KEY, **fields)  # type: ignore[arg-type]


def test_offer_round_trip_and_open():
    sent = offer()
    received = decode(sent.encode())
    assert received == sent
    assert isinstance(received, Offer)
    assert open_offer(received, HOLDER, ISSUER.public) == KEY
    assert KEY not in sent.encode()


def test_device_offer_must_name_the_device_itself():
    assert decode(offer(role="device", recipient_id="cam-1").encode()).role == "device"
    with pytest.raises(ValueError, match="must be the device"):
        offer(role="device", recipient_id="cam-2")


def test_every_offer_is_fresh():
    a, b = offer(), offer()
    assert a.nonce != b.nonce and a.ephemeral_public != b.ephemeral_public
    assert a.wrapped != b.wrapped


def test_ack_round_trip_and_proof():
    sent = offer()
    ack = make_ack(sent, KEY, b"corr")
    received = decode(ack.encode())
    assert received == ack
    assert isinstance(received, Ack)
    verify_ack(received, KEY, b"corr")
    for key, correlation in [(bytes(32), b"corr"), (KEY, b"other")]:
        with pytest.raises(AuthenticationError, match="does not prove possession"):
            verify_ack(received, key, correlation)
    moved = dataclasses.replace(received, key_id=8)
    with pytest.raises(AuthenticationError):
        verify_ack(moved, KEY, b"corr")


def test_error_round_trip():
    reply = ErrorReply(ErrorCode.STALE_KEY, "key id 3 is not newer than 5 ✓")
    assert decode(reply.encode()) == reply
    long = ErrorReply(ErrorCode.MALFORMED, "é" * 2000)
    assert len(decode(long.encode()).text.encode()) <= 1024  # type: ignore[union-attr]


@pytest.mark.parametrize("version", [0, 2, 9, 255])
def test_unknown_version_refused_by_name(version):
    data = bytes([version]) + offer().encode()[1:]
    with pytest.raises(UnsupportedVersionError, match=rf"version {version} is not supported"):
        decode(data)
    with pytest.raises(UnsupportedVersionError, match=r"\(supported: 1\)"):
        decode(bytes([version]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty payload"),
        (b"\x01", "no message type"),
        (b"\x01\x09", "unknown message type 9 at byte 1"),
        (b"\x01\x01\x03", "role at byte 2 is 3"),
        (b"\x01\x01\x02\x05rx", r"recipient id at byte 4 needs 5 bytes, 2 left"),
        (b"\x01\x01\x02\x02r/\x02ab", "recipient id at byte 3 is not"),
        (b"\x01\x01\x02\x00", "recipient id at byte 3 is not"),
        (b"\x01\x01\x01\x01a\x01b", "device message for 'b' addressed to another device 'a'"),
        (b"\x01\x03\x63", "unknown error code 99"),
        (b"\x01\x03\x01\x01\x01" + struct.pack(">H", 2) + b"\xff\xfe", "text at byte 7 is not"),
    ],
)
def test_malformed_messages_name_field_and_offset(data, message):
    with pytest.raises(ProtocolError, match=message):
        decode(data)


def test_truncated_and_extended_offers_refused():
    data = offer().encode()
    for cut in range(len(data)):
        with pytest.raises(ProtocolError):
            decode(data[:cut])
    with pytest.raises(ProtocolError, match="1 unexpected bytes after byte"):
        decode(data + b"\x00")


@given(st.binary(max_size=300))
def test_garbage_is_always_a_protocol_error(data):
    try:
        decode(data)
    except ProtocolError as error:
        assert str(error)
    # anything else propagates and fails the test


VALID = [
    offer().encode(),
    offer(role="device", recipient_id="cam-1").encode(),
    make_ack(offer(), KEY, b"c").encode(),
    ErrorReply(ErrorCode.REPLAYED, "seen before").encode(),
]


@given(st.data())
def test_mutated_messages_parse_canonically_or_fail_clearly(data):
    message = bytearray(data.draw(st.sampled_from(VALID)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(message)))
        edit = data.draw(st.sampled_from(["delete", "insert", "replace"]))
        chunk = data.draw(st.binary(min_size=1, max_size=4))
        if edit == "delete":
            del message[at : at + len(chunk)]
        elif edit == "insert":
            message[at:at] = chunk
        else:
            message[at : at + len(chunk)] = chunk
    try:
        parsed = decode(bytes(message))
    except ProtocolError as error:
        assert str(error)
        return
    assert parsed.encode() == bytes(message)  # whatever parses is canonical


@given(position=st.integers(0, 157), bit=st.integers(0, 7))
def test_any_changed_bit_of_an_offer_is_refused(position, bit):
    data = bytearray(offer().encode())
    data[position] ^= 1 << bit
    try:
        changed = decode(bytes(data))
    except ProtocolError:
        return
    assert isinstance(changed, Offer)
    with pytest.raises(AuthenticationError):
        open_offer(changed, HOLDER, ISSUER.public)


def test_offer_from_another_issuer_key_refused():
    forger = StaticKey.generate()
    forged = seal_offer(
        forger, HOLDER.public, role="receiver", recipient_id="rx-1", device_id="cam-1",
        key_id=7, key=KEY,
    )  # fmt: skip
    with pytest.raises(AuthenticationError, match="not the provisioned"):
        open_offer(forged, HOLDER, ISSUER.public)
    # naming the real issuer's public key without its private key does not open either
    impostor = dataclasses.replace(forged, issuer_public=ISSUER.public)
    with pytest.raises(AuthenticationError, match="does not authenticate"):
        open_offer(impostor, HOLDER, ISSUER.public)


def test_offer_for_another_holder_does_not_open():
    with pytest.raises(AuthenticationError):
        open_offer(offer(), StaticKey.generate(), ISSUER.public)


def test_low_order_ephemeral_refused():
    low = dataclasses.replace(offer(), ephemeral_public=bytes(32))
    with pytest.raises(AuthenticationError, match="low-order"):
        open_offer(low, HOLDER, ISSUER.public)


def test_static_key_repr_and_text():
    text = repr(HOLDER) + str(HOLDER)
    assert HOLDER.private_bytes().hex() not in text
    assert StaticKey.from_text(HOLDER.private_bytes().hex()).public == HOLDER.public
    with pytest.raises(ValueError, match="64 hex digits or base64"):
        StaticKey.from_text("not a key!")
    with pytest.raises(ValueError, match="32 bytes"):
        StaticKey.from_text("AAAA")
