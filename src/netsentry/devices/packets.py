"""Columnar records of received RTP packets: from a capture or from the live receiver.

One row per packet, one numpy array per column (no Python object per packet)::

    arrival_ns     int64    when the packet arrived (ns; epoch for captures and live)
    size           int32    bytes of the RTP packet (headers, payload and padding)
    payload_type   int16    RTP payload type
    ssrc           uint32   RTP synchronisation source
    rtp_timestamp  uint32   RTP media timestamp (wraps at 2**32)
    marker         bool     RTP marker bit (video: last packet of a frame)
    sequence       uint16   RTP sequence number (wraps at 2**16)

``size`` is the RTP packet, not the datagram around it, so a capture of plain RTP and
the receiver of encrypted frames (:mod:`netsentry.devices.frames`) measure the same
thing.

:func:`read_pcap` reads the UDP packets of a capture that match a destination port
and/or a source address and parses them as RTP. It reuses the capture reader of
:mod:`netsentry.flows.pcap` (pcap, pcapng, ``.gz``/``.xz``, the same link types); a
packet that is not well-formed RTP is reported with its index and offset
(:class:`~netsentry.flows.pcap.PacketError`), never raised.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import dpkt
import numpy as np
import numpy.typing as npt
import polars as pl

from netsentry.devices.rtp import RTPError, RTPHeader, parse
from netsentry.flows.pcap import (
    UNDECODABLE,
    PacketError,
    TruncatedError,
    capture,
    network,
    open_capture,
)

__all__ = ["COLUMNS", "PacketLog", "PacketRecords", "PcapPackets", "read_pcap"]

COLUMNS: dict[str, Any] = {
    "arrival_ns": np.int64,
    "size": np.int32,
    "payload_type": np.int16,
    "ssrc": np.uint32,
    "rtp_timestamp": np.uint32,
    "marker": np.bool_,
    "sequence": np.uint16,
}


@dataclass(frozen=True, eq=False)
class PacketRecords:
    """RTP packets as columns (see the module documentation for the schema)."""

    arrival_ns: npt.NDArray[np.int64]
    size: npt.NDArray[np.int32]
    payload_type: npt.NDArray[np.int16]
    ssrc: npt.NDArray[np.uint32]
    rtp_timestamp: npt.NDArray[np.uint32]
    marker: npt.NDArray[np.bool_]
    sequence: npt.NDArray[np.uint16]

    def __post_init__(self) -> None:
        lengths = set()
        for name, dtype in COLUMNS.items():
            column = np.asarray(getattr(self, name))
            if column.ndim != 1:
                raise ValueError(f"PacketRecords.{name} must be one-dimensional")
            object.__setattr__(self, name, column.astype(dtype, copy=False))
            lengths.add(len(column))
        if len(lengths) > 1:
            raise ValueError(f"PacketRecords columns differ in length: {sorted(lengths)}")

    @classmethod
    def empty(cls) -> PacketRecords:
        return cls(**{name: np.zeros(0, dtype) for name, dtype in COLUMNS.items()})

    @classmethod
    def from_headers(cls, arrival_ns: Sequence[int], headers: Sequence[RTPHeader]) -> PacketRecords:
        """Records of parsed packets that arrived at ``arrival_ns``."""
        return cls(
            arrival_ns=np.asarray(arrival_ns, dtype=np.int64),
            size=np.array([h.size for h in headers], dtype=np.int32),
            payload_type=np.array([h.payload_type for h in headers], dtype=np.int16),
            ssrc=np.array([h.ssrc for h in headers], dtype=np.uint32),
            rtp_timestamp=np.array([h.timestamp for h in headers], dtype=np.uint32),
            marker=np.array([h.marker for h in headers], dtype=np.bool_),
            sequence=np.array([h.sequence for h in headers], dtype=np.uint16),
        )

    @classmethod
    def concat(cls, parts: Sequence[PacketRecords]) -> PacketRecords:
        if not parts:
            return cls.empty()
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in COLUMNS})

    def __len__(self) -> int:
        return len(self.arrival_ns)

    def take(self, rows: slice | npt.NDArray[Any]) -> PacketRecords:
        """The rows selected by a slice, a boolean mask or indices."""
        return PacketRecords(**{name: getattr(self, name)[rows] for name in COLUMNS})

    def to_frame(self) -> pl.DataFrame:
        return pl.DataFrame({name: getattr(self, name) for name in COLUMNS})

    def equals(self, other: PacketRecords) -> bool:
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in COLUMNS)


class PacketLog:
    """A growing log of records for the live receiver: appended from its thread, read
    from any other (a lock), keeping at most the ``capacity`` most recent records."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.dropped = 0
        self._parts: list[PacketRecords] = []
        self._size = 0
        self._lock = threading.Lock()

    def append(self, records: PacketRecords) -> None:
        if not len(records):
            return
        with self._lock:
            self._parts.append(records)
            self._size += len(records)
            if self._size > self.capacity:
                whole = PacketRecords.concat(self._parts)
                self.dropped += self._size - self.capacity
                self._parts = [whole.take(slice(self._size - self.capacity, None))]
                self._size = self.capacity

    def records(self) -> PacketRecords:
        """A snapshot of the records kept, oldest first."""
        with self._lock:
            whole = PacketRecords.concat(self._parts)
            self._parts = [whole] if len(whole) else []
            return whole

    def __len__(self) -> int:
        with self._lock:
            return self._size


@dataclass
class PcapPackets:
    """What :func:`read_pcap` found: the RTP records and the accounting.

    ``packets = matched + not_matching + sum(skipped.values()) + error_count``, where
    ``matched`` rows are in ``records``.
    """

    records: PacketRecords
    source: str
    packets: int = 0
    not_matching: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    error_count: int = 0
    errors: list[PacketError] = field(default_factory=list)
    max_errors: int = 1000

    @property
    def matched(self) -> int:
        return len(self.records)

    def error(self, packet: int, offset: int, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(PacketError(self.source, packet, offset, reason))


def read_pcap(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    dst_port: int | None = None,
    src: str | None = None,
    name: str | None = None,
) -> PcapPackets:
    """The RTP packets of a capture, sent to UDP port ``dst_port`` and/or from ``src``.

    Parameters
    ----------
    source : path or binary stream of a pcap or pcapng capture (``.gz``, ``.xz`` too).
    dst_port : keep UDP packets to this port (default: any port).
    src : keep packets from this IPv4 or IPv6 address (default: any address).
    name : name of the capture in errors (default: the path).

    UDP packets that match are parsed as RTP; those that are not RTP are errors
    (``errors``, with their index and byte offset). Packets that are not UDP, not IP
    or IP fragments are counted in ``skipped`` by kind.
    """
    if dst_port is not None and not 0 <= dst_port <= 0xFFFF:
        raise ValueError(f"dst_port must be 0..65535, got {dst_port}")
    wanted = ipaddress.ip_address(src).packed if src is not None else None
    stream, raw, _ = open_capture(source)
    label = name or (os.fspath(source) if isinstance(source, str | os.PathLike) else "<stream>")
    report = PcapPackets(PacketRecords.empty(), label)
    arrivals: list[int] = []
    headers: list[RTPHeader] = []
    try:
        link, frames = capture(stream, label)
        try:
            for arrival, offset, frame in frames:
                report.packets += 1
                try:
                    payload = _udp_payload(frame, link, dst_port, wanted)
                    if isinstance(payload, str):
                        report.skipped[payload] = report.skipped.get(payload, 0) + 1
                        continue
                    if payload is None:
                        report.not_matching += 1
                        continue
                    headers.append(parse(payload))
                    arrivals.append(arrival)
                except RTPError as exc:
                    report.error(report.packets, offset, f"not RTP: {exc}")
                except UNDECODABLE as exc:
                    report.error(report.packets, offset, str(exc) or type(exc).__name__)
        except TruncatedError as exc:
            report.packets += 1
            report.error(report.packets, exc.offset, str(exc))
    finally:
        if raw is not source:
            raw.close()
    report.records = PacketRecords.from_headers(arrivals, headers)
    return report


def _udp_payload(
    frame: bytes, link: int, dst_port: int | None, src: bytes | None
) -> bytes | str | None:
    """The UDP payload of a matching packet, None if it does not match, or the kind of a
    packet that is not plain UDP over IP."""
    ip = network(frame, link)
    if isinstance(ip, str):
        return ip
    if ip.p != dpkt.ip.IP_PROTO_UDP:
        return None
    if isinstance(ip, dpkt.ip.IP) and ip.offset:
        return "ip-fragment"
    udp = ip.data
    if not isinstance(udp, dpkt.udp.UDP):
        raise ValueError("malformed UDP header")
    if (dst_port is not None and udp.dport != dst_port) or (src is not None and ip.src != src):
        return None
    return bytes(udp.data)
