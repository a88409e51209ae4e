"""Packet captures → bidirectional :class:`~netsentry.flows.schema.Flows`.

Input: classic pcap (micro- or nanosecond timestamps, either byte order), read record by
record, and pcapng through dpkt's reader (timestamps exact to the microsecond; dpkt
gives float seconds); ``.gz`` and ``.xz`` files are decompressed as they are read. Link
types: Ethernet (802.1Q tags too), Linux cooked (SLL, SLL2), raw IP and BSD loopback.
Packets are decoded with dpkt (the common case, Ethernet / IPv4 / TCP or UDP without
IP options or fragments, is read with one ``struct`` call, to the same result, tested)
and assembled into flows by a
:class:`~netsentry.flows.flowmeter.FlowMeter` (5-tuple, originator, IP-level bytes,
idle / active / TCP close expiry: see there). Nothing holds more than one packet: only
the open flows are kept, and flows are yielded in chunks as they end.

Non-first IPv4 fragments count in the flow of their first fragment when it was seen
(else they are skipped as ``ip-fragment``). Frames that are not IP (ARP, LLDP, 802.3
LLC...) are counted by kind in :attr:`PcapReport.skipped`; malformed packets (cut
headers, a bad IP header length, a record cut by the end of the file) are
:class:`PacketError` s with their 1-based index and the byte offset of their record in
the decompressed capture (for pcapng: where the previous packet's block ended), and
the rest is kept. A record cut by the end of the file ends the reading.
"""

from __future__ import annotations

import gzip
import lzma
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import dpkt
from tqdm import tqdm

from netsentry.flows.flowmeter import NS, FlowMeter
from netsentry.flows.schema import STREAM_NAME, Flows

__all__ = [
    "UNDECODABLE",
    "PacketError",
    "PcapReport",
    "TruncatedError",
    "capture",
    "network",
    "open_capture",
    "read_pcap",
]

_PORTED = {6: "TCP", 17: "UDP", 132: "SCTP"}
_ETHER_NAMES = {0x0806: "arp", 0x88CC: "lldp", 0x888E: "eapol", 0x8035: "rarp", 0x9000: "loop"}
_IP_TYPES = {0x0800: "IPv4", 0x86DD: "IPv6"}
_PCAP_US_LE, _PCAP_US_BE = b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"
_PCAP_NS_LE, _PCAP_NS_BE = b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"
_PCAPNG = b"\x0a\x0d\x0d\x0a"
#: Ethernet, BSD loopback (null, loop), raw IP (12, 14, 101, 228, 229), Linux SLL, SLL2.
_LINK_TYPES = {1, 0, 108, 12, 14, 101, 228, 229, 113, 276}
#: Ethernet type, IPv4 version and header length, total length, flags and fragment
#: offset, protocol, addresses, ports (TCP and UDP).
_FAST = struct.Struct("!12xHBxH2xHxB2x4s4sHH")
_ISL = (b"\x01\x00\x0c\x00\x00", b"\x03\x00\x0c\x00\x00")  # Cisco ISL, as dpkt
_MAX_FRAGMENTS = 65_536  # first fragments remembered (cleared when full)
_MAX_RECORD = 1 << 28


@dataclass(frozen=True)
class PacketError:
    """One malformed packet: where it is in the capture and what is wrong with it."""

    source: str
    packet: int
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: packet {self.packet} at byte {self.offset}: {self.reason}"


@dataclass
class PcapReport:
    """Accounting of one capture: ``packets = in_flows + sum(skipped) + error_count``."""

    source: str = STREAM_NAME
    link_type: int = -1
    packets: int = 0
    in_flows: int = 0
    flows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    error_count: int = 0
    errors: list[PacketError] = field(default_factory=list)
    max_errors: int = 1000

    def error(self, packet: int, offset: int, reason: str) -> None:
        """Count one malformed packet and keep it while fewer than ``max_errors``."""
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(PacketError(self.source, packet, offset, reason))


class _MalformedError(Exception):
    """The packet cannot be decoded; the message is the reason."""


def network(frame: bytes, link: int) -> Any:
    """The IP packet (dpkt) of a frame of link type ``link``, or the name of the protocol
    of a frame that is not IP; a malformed frame raises one of :data:`UNDECODABLE`."""
    if link == 1:
        layer: Any = dpkt.ethernet.Ethernet(frame)
        tags = getattr(layer, "vlan_tags", None)
        kind = tags[-1].type if tags else layer.type
    elif link in (113, 276):
        layer = (dpkt.sll.SLL if link == 113 else dpkt.sll2.SLL2)(frame)
        kind = layer.ethtype
    elif link in (0, 108):
        layer = dpkt.loopback.Loopback(frame)
        kind = {2: 0x0800, 24: 0x86DD, 28: 0x86DD, 30: 0x86DD}.get(layer.family, -1)
    else:  # raw IP
        version = frame[0] >> 4 if frame else 0
        if version not in (4, 6):
            raise _MalformedError(f"raw IP packet of version {version}")
        return dpkt.ip.IP(frame) if version == 4 else dpkt.ip6.IP6(frame)
    net = layer.data
    if isinstance(net, dpkt.ip.IP | dpkt.ip6.IP6):
        return net
    if kind in _IP_TYPES:  # dpkt kept the bytes: decode again for its reason
        try:
            (dpkt.ip.IP if kind == 0x0800 else dpkt.ip6.IP6)(net)
        except dpkt.UnpackError as exc:
            raise _MalformedError(f"malformed {_IP_TYPES[kind]} header: {exc}") from None
        raise _MalformedError(f"malformed {_IP_TYPES[kind]} header")
    if 0 <= kind <= 1500:  # an 802.3 length, not a type: LLC (spanning tree...)
        return "llc"
    return _ETHER_NAMES.get(kind, f"ethertype 0x{kind:04x}")


def _fast(frame: bytes) -> tuple[int, bytes, int, bytes, int, int, int] | None:
    """The common case without dpkt objects: Ethernet II, IPv4 without options or
    fragments, TCP or UDP, headers whole; None for anything else (dpkt decodes it)."""
    if len(frame) < 42 or frame[:5] in _ISL:
        return None
    kind, version_ihl, total, fragment, p, src, dst, sp, dp = _FAST.unpack_from(frame)
    if kind != 0x0800 or version_ihl != 0x45 or fragment & 0x3FFF:
        return None
    if p == 17 and total >= 28:
        return (17, src, sp, dst, dp, total, 0)
    if p == 6 and total >= 40 and len(frame) >= 54 and frame[46] >= 0x50:
        return (6, src, sp, dst, dp, total, frame[47])
    return None


class _Decoder:
    """Packets → the arguments of :meth:`FlowMeter.add`; remembers first fragments."""

    def __init__(self, link: int, fast: bool = True) -> None:
        self.link = link
        self.fast = fast and link == 1
        self.fragments: dict[tuple[bytes, bytes, int, int], tuple[int, int]] = {}

    def decode(self, frame: bytes) -> tuple[int, bytes, int, bytes, int, int, int] | str:
        if self.fast and (packet := _fast(frame)) is not None:
            return packet
        ip = network(frame, self.link)
        if isinstance(ip, str):
            return ip
        p, data, fl = ip.p, ip.data, 0
        if isinstance(ip, dpkt.ip.IP):
            size, offset, more, ident = ip.len or len(ip), ip.offset, ip.mf, ip.id
        else:
            size, more, ident = (ip.plen + 40 if ip.plen else len(ip)), 0, 0
            frag = ip.extension_hdrs.get(44)
            offset = frag.frag_off if frag is not None else 0
            if offset:
                return "ipv6-fragment"
        if offset:  # a later IPv4 fragment: no transport header
            ports = self.fragments.get((ip.src, ip.dst, p, ident))
            if ports is None:
                return "ip-fragment"
            return (p, ip.src, ports[0], ip.dst, ports[1], size, 0)
        if p in _PORTED:
            if isinstance(data, bytes):
                raise _MalformedError(f"malformed {_PORTED[p]} header")
            sp, dp = data.sport, data.dport
            if p == 6:
                fl = data.flags
            if more:
                if len(self.fragments) >= _MAX_FRAGMENTS:
                    self.fragments.clear()
                self.fragments[(ip.src, ip.dst, p, ident)] = (sp, dp)
        else:
            sp = dp = -1
        return (p, ip.src, sp, ip.dst, dp, size, fl)


#: What decoding a malformed frame raises (dpkt's own errors, and a few it lets through):
#: catch these around :func:`network` and count the packet as an error.
UNDECODABLE = (dpkt.UnpackError, _MalformedError, struct.error, IndexError, ValueError)


class TruncatedError(Exception):
    """The capture ends inside a record, or a record header is corrupt: reading stops.

    Raised by the records of :func:`capture`; ``offset`` is the byte offset of the record.
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset


def _pcap_records(head: bytes, stream: BinaryIO) -> Iterator[tuple[int, int, bytes]]:
    """(timestamp ns, record offset, frame) of a classic pcap after its 24-byte header."""
    order = "<" if head[:4] in (_PCAP_US_LE, _PCAP_NS_LE) else ">"
    scale = 1 if head[:4] in (_PCAP_NS_LE, _PCAP_NS_BE) else 1000
    unpack, read, offset = struct.Struct(order + "IIII").unpack, stream.read, 24
    while record := read(16):
        if len(record) < 16:
            raise TruncatedError(offset, f"record header cut at {len(record)} of 16 bytes")
        sec, frac, caplen, _ = unpack(record)
        if caplen > _MAX_RECORD:
            raise TruncatedError(offset, f"record length {caplen} is not believable")
        frame = read(caplen)
        if len(frame) < caplen:
            raise TruncatedError(offset, f"record cut at {len(frame)} of {caplen} bytes")
        yield sec * NS + frac * scale, offset, frame
        offset += 16 + caplen


class _Prefixed:
    """A stream with ``head`` (already read from it) put back in front."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream, self.pos = head, stream, 0

    def read(self, n: int) -> bytes:
        part, self.head = self.head[:n], self.head[n:]
        data = part + self.stream.read(n - len(part)) if n > len(part) else part
        self.pos += len(data)
        return data


def _pcapng_records(reader: Any, wrapped: _Prefixed) -> Iterator[tuple[int, int, bytes]]:
    micro = getattr(reader, "_divisor", 1e6) <= 1e6  # dpkt gives float seconds
    offset = wrapped.pos
    for ts, frame in reader:
        yield (round(ts * 1e6) * 1000 if micro else round(ts * 1e9)), offset, frame
        offset = wrapped.pos


def capture(stream: BinaryIO, source: str) -> tuple[int, Iterator[tuple[int, int, bytes]]]:
    """The link type and the records of a pcap or pcapng stream (headers read now).

    The records are ``(timestamp ns, record offset, frame)``; iterating them may raise
    :class:`TruncatedError`. A stream that is not a capture, or of a link type not
    supported, is a ``ValueError`` naming ``source``.
    """
    head = stream.read(24)
    if head[:4] == _PCAPNG:
        wrapped = _Prefixed(head, stream)
        try:
            reader = dpkt.pcapng.Reader(wrapped)
        except (ValueError, dpkt.UnpackError) as exc:
            raise ValueError(f"{source}: invalid pcapng header: {exc}") from None
        link, records = reader.datalink(), _pcapng_records(reader, wrapped)
    elif len(head) == 24 and head[:4] in (_PCAP_US_LE, _PCAP_NS_LE, _PCAP_US_BE, _PCAP_NS_BE):
        order = "<" if head[:4] in (_PCAP_US_LE, _PCAP_NS_LE) else ">"
        link, records = (
            struct.unpack(order + "I", head[20:])[0] & 0xFFFF,
            _pcap_records(head, stream),
        )
    else:
        raise ValueError(f"{source}: not a pcap or pcapng capture")
    if link not in _LINK_TYPES:
        raise ValueError(f"{source}: unsupported link type {link}")
    return link, records


def open_capture(
    source: str | os.PathLike[str] | BinaryIO,
) -> tuple[BinaryIO, BinaryIO, int | None]:
    """(decompressed stream, raw stream, raw size) of a path or an open binary stream.

    For a path (``.gz`` and ``.xz`` decompressed) the caller closes the raw stream; an
    open stream is returned as both, with size None.
    """
    if not isinstance(source, str | os.PathLike):
        return source, source, None
    raw = open(source, "rb")  # noqa: SIM115 - closed by read_pcap
    name = os.fspath(source)
    if name.endswith(".xz"):
        return lzma.open(raw), raw, os.path.getsize(name)  # type: ignore[return-value]
    if name.endswith(".gz"):
        return gzip.open(raw), raw, os.path.getsize(name)  # type: ignore[return-value]
    return raw, raw, os.path.getsize(name)


def read_pcap(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    idle_timeout_s: float = 60.0,
    active_timeout_s: float = 1800.0,
    close_timeout_s: float = 5.0,
    chunk_flows: int = 65_536,
    report: PcapReport | None = None,
    name: str | None = None,
    progress: bool = False,
) -> Iterator[Flows]:
    """Stream the flows of a capture in chunks of at most ``chunk_flows`` rows.

    Parameters
    ----------
    source : path or binary stream
        A pcap or pcapng file (``.gz``, ``.xz`` too) or an open binary stream of one.
    idle_timeout_s, active_timeout_s, close_timeout_s : float
        Flow expiry (see the module documentation).
    chunk_flows : int
        Largest number of rows per chunk; a chunk is yielded once this many flows
        have ended.
    report : PcapReport, optional
        Filled as the capture is read: packets, flows, skipped frames, errors.
    name : str, optional
        Name of the capture in errors and in ``source`` (default: the path).
    progress : bool
        Show a tqdm progress bar over the file's bytes.

    Yields
    ------
    Flows
        Flows that have ended (each chunk by start time), never empty; the last
        chunks hold the flows still open at the end (``state`` ``eof``).
    """
    if chunk_flows < 1:
        raise ValueError("chunk_flows must be positive")
    report = PcapReport() if report is None else report
    stream, raw, size = open_capture(source)
    label = name or (os.fspath(source) if isinstance(source, str | os.PathLike) else None)
    report.source = label or getattr(stream, "name", None) or STREAM_NAME
    meter = FlowMeter(idle_timeout_s, active_timeout_s, close_timeout_s, report.source)
    bar = tqdm(total=size, unit="B", unit_scale=True, disable=not progress, desc=report.source)
    packets = in_flows = 0
    try:
        report.link_type, records = capture(stream, report.source)
        decoder = _Decoder(report.link_type)
        skipped = report.skipped
        try:
            for ts, offset, frame in records:
                packets += 1
                try:
                    packet = decoder.decode(frame)
                except UNDECODABLE as exc:
                    report.error(packets, offset, str(exc) or type(exc).__name__)
                    continue
                if isinstance(packet, str):
                    skipped[packet] = skipped.get(packet, 0) + 1
                    continue
                in_flows += 1
                meter.add(ts, *packet)
                if len(meter.rows) >= chunk_flows:
                    report.flows += chunk_flows
                    yield meter.take(chunk_flows)
                if size and not packets & 0xFFF:
                    bar.update(raw.tell() - bar.n)
        except TruncatedError as exc:
            packets += 1
            report.error(packets, exc.offset, str(exc))
        meter.flush()
        while meter.rows:
            report.flows += min(chunk_flows, len(meter.rows))
            yield meter.take(chunk_flows)
        bar.update((size or 0) - bar.n)
    finally:
        report.packets += packets
        report.in_flows += in_flows
        bar.close()
        if raw is not source:
            raw.close()
