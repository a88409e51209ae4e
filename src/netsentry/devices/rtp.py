"""RTP fixed headers (RFC 3550, section 5.1): parsed, checked and built.

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                           timestamp                           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |           synchronization source (SSRC) identifier            |
    +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
    |       contributing source (CSRC) identifiers, CC of them      |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    | extension (if X): profile-defined (16) | length in words (16) |
    |                  extension data, length * 4 bytes             |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                 payload ...   | padding (if P), last byte = count

A packet that does not hold together (wrong version, a CSRC list or extension cut by
the end of the packet, a padding count of 0 or larger than what follows the headers,
payload types 72-76, which RFC 3550 section 5.1 reserves so RTP and RTCP can be told
apart) raises :class:`RTPError`, a ``ValueError`` whose message names the field and its
byte offset. Parsing never raises anything else, whatever the bytes.

>>> packet = build(payload_type=96, sequence=7, timestamp=3000, ssrc=0x1234, payload=b"abc")
>>> header = parse(packet)
>>> (header.payload_type, header.sequence, header.timestamp, header.ssrc, header.payload_size)
(96, 7, 3000, 4660, 3)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["HEADER_SIZE", "RTPError", "RTPHeader", "build", "parse"]

HEADER_SIZE = 12
VERSION = 2
#: Payload types 72-76 collide with RTCP packet types 200-204 when the marker bit is
#: set (RFC 3550 section 5.1; RFC 5761 section 4): never RTP.
RTCP_CONFLICT = range(72, 77)
_FIXED = struct.Struct("!BBHII")


class RTPError(ValueError):
    """Bytes that are not a well-formed RTP packet; the message says what and where."""


@dataclass(frozen=True, slots=True)
class RTPHeader:
    """The fixed header and the layout of one RTP packet.

    ``payload_offset`` and ``payload_size`` locate the payload in the packet (after the
    CSRC list and the extension, before the padding).
    """

    version: int
    padding: bool
    extension: bool
    csrc_count: int
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    csrcs: tuple[int, ...]
    extension_profile: int | None
    extension_size: int
    payload_offset: int
    payload_size: int
    padding_size: int
    size: int


def parse(packet: bytes) -> RTPHeader:
    """Parse and check the headers of one RTP packet.

    Raises
    ------
    RTPError
        If the packet is not RTP version 2 or its headers do not fit in it.
    """
    size = len(packet)
    if size < HEADER_SIZE:
        raise RTPError(f"RTP packet of {size} bytes is shorter than the 12-byte fixed header")
    first, second, sequence, timestamp, ssrc = _FIXED.unpack_from(packet)
    version = first >> 6
    if version != VERSION:
        raise RTPError(f"RTP version (byte 0, bits 0-1) is {version}, expected 2")
    padding, extension, csrc_count = bool(first & 0x20), bool(first & 0x10), first & 0x0F
    marker, payload_type = bool(second & 0x80), second & 0x7F
    if payload_type in RTCP_CONFLICT:
        raise RTPError(
            f"payload type (byte 1) is {payload_type}: 72-76 are reserved (RTCP conflict)"
        )
    offset = HEADER_SIZE + 4 * csrc_count
    if offset > size:
        raise RTPError(
            f"CSRC list of {csrc_count} entries (byte 12) needs {offset} bytes, packet has {size}"
        )
    csrcs = struct.unpack_from(f"!{csrc_count}I", packet, HEADER_SIZE) if csrc_count else ()
    extension_profile: int | None = None
    extension_size = 0
    if extension:
        if offset + 4 > size:
            raise RTPError(f"extension header at byte {offset} is cut by the end of the packet")
        extension_profile, words = struct.unpack_from("!HH", packet, offset)
        extension_size = 4 + 4 * words
        if offset + extension_size > size:
            raise RTPError(
                f"extension at byte {offset} declares {words} words ({extension_size} bytes "
                f"with its header), only {size - offset} bytes remain"
            )
        offset += extension_size
    padding_size = 0
    if padding:
        padding_size = packet[-1]
        if padding_size == 0:
            raise RTPError(f"padding count (last byte, {size - 1}) is 0 with the P bit set")
        if offset + padding_size > size:
            raise RTPError(
                f"padding count (last byte, {size - 1}) is {padding_size}, "
                f"only {size - offset} bytes follow the headers"
            )
    return RTPHeader(
        version=version,
        padding=padding,
        extension=extension,
        csrc_count=csrc_count,
        marker=marker,
        payload_type=payload_type,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        csrcs=tuple(csrcs),
        extension_profile=extension_profile,
        extension_size=extension_size,
        payload_offset=offset,
        payload_size=size - offset - padding_size,
        padding_size=padding_size,
        size=size,
    )


def build(
    *,
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes = b"",
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    extension: tuple[int, bytes] | None = None,
    padding: int = 0,
) -> bytes:
    """The bytes of one RTP packet (the inverse of :func:`parse`).

    ``extension`` is ``(profile, data)`` with ``len(data)`` a multiple of 4; ``padding``
    is the number of padding bytes (0-255; the last one holds the count).
    """
    if not 0 <= payload_type <= 127 or payload_type in RTCP_CONFLICT:
        raise ValueError(f"payload type must be in 0..127 and not 72..76, got {payload_type}")
    if len(csrcs) > 15:
        raise ValueError(f"at most 15 CSRCs, got {len(csrcs)}")
    if not 0 <= padding <= 255:
        raise ValueError(f"padding must be 0..255 bytes, got {padding}")
    first = VERSION << 6 | (0x20 if padding else 0) | (0x10 if extension else 0) | len(csrcs)
    second = (0x80 if marker else 0) | payload_type
    parts = [
        _FIXED.pack(first, second, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF),
        struct.pack(f"!{len(csrcs)}I", *csrcs),
    ]
    if extension is not None:
        profile, data = extension
        if len(data) % 4:
            raise ValueError(f"extension data must be whole 32-bit words, got {len(data)} bytes")
        parts.append(struct.pack("!HH", profile, len(data) // 4) + data)
    parts.append(payload)
    if padding:
        parts.append(bytes(padding - 1) + bytes([padding]))
    return b"".join(parts)
