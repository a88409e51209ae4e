"""NetFlow v5, v9 and IPFIX export datagrams → unidirectional :class:`Flows`.

:class:`NetFlowCollector` listens on a UDP address (loopback by default) and decodes
each datagram with the ``netflow`` package (bitkeks/python-netflow-v9-softflowd).
Every data record is one flow *direction*, mapped as Suricata's ``netflow`` events
are (:mod:`netsentry.flows.suricata`): ``src``/``srcp`` → ``dst``/``dstp`` with the
record's octets and packets as ``bytes_out``/``packets_out`` (IP-level, like the pcap
:class:`~netsentry.flows.flowmeter.FlowMeter`), zeros as ``*_in``, ``state`` and
``service`` ``""``, ``source`` the exporter's address. Ports are null unless the
protocol is TCP, UDP or SCTP (v5 and v9 put ICMP type and code in the port fields).

Times: absolute IPFIX / v9 fields when the record has them (``flowStart``/``End`` in
seconds, milliseconds, micro- or nanoseconds, or ``DeltaMicroseconds`` before the
export time; ``SysUpTime`` with the exporter's ``systemInitTimeMilliseconds`` option),
else v5 / v9 ``FIRST_SWITCHED``/``LAST_SWITCHED``: milliseconds of exporter uptime,
placed with the header's clock and uptime (modulo 2³² ms). A replaying exporter
(softflowd ``-r``) stamps that header with the wall clock, so such v5 times are wrong:
use v9 or IPFIX with absolute times (softflowd ``-A milli``). The ``netflow`` package
names v9 fields from Cisco's list, which lacks IANA 150, 151 and 153-157 (the absolute
flow times, softflowd's ``-A``): they are added to its table at import, under their
IANA names, only where absent.

Templates (v9, IPFIX) are kept per *template scope*: exporter address and port,
version and observation domain (v9 source id), as RFC 7011 scopes them. A datagram
with a data set whose template is not known yet is kept, whole, in a bounded queue
(``max_pending`` datagrams over all exporters, oldest dropped first and counted in
:attr:`NetFlowReport.dropped`) and decoded again whenever its scope learns a new
template. Malformed datagrams and records (bad header, unknown version, cut sets,
records without addresses or times) are counted as :class:`DatagramError` with the
exporter's address; nothing a datagram holds can stop the collector.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from netflow.ipfix import IPFIXExportPacket, IPFIXTemplateNotRecognized
from netflow.v5 import V5ExportPacket
from netflow.v9 import V9_FIELD_TYPES, V9ExportPacket, V9TemplateNotRecognized

from netsentry.flows.flowmeter import NS, PROTO_NAMES
from netsentry.flows.schema import FLOW_SCHEMA, Flows

__all__ = ["DatagramError", "NetFlowCollector", "NetFlowDecoder", "NetFlowReport"]

_IANA_TIMES = {150: "flowStartSeconds", 151: "flowEndSeconds", 153: "flowEndMilliseconds"}
_IANA_TIMES |= {154: "flowStartMicroseconds", 155: "flowEndMicroseconds"}
_IANA_TIMES |= {156: "flowStartNanoseconds", 157: "flowEndNanoseconds"}
for _number, _name in _IANA_TIMES.items():
    V9_FIELD_TYPES.setdefault(_number, _name)

_FIELDS = {
    "src": ("sourceIPv4Address", "sourceIPv6Address", "IPV4_SRC_ADDR", "IPV6_SRC_ADDR"),
    "dst": ("destinationIPv4Address", "destinationIPv6Address", "IPV4_DST_ADDR", "IPV6_DST_ADDR"),
    "srcp": ("sourceTransportPort", "L4_SRC_PORT", "SRC_PORT"),
    "dstp": ("destinationTransportPort", "L4_DST_PORT", "DST_PORT"),
    "proto": ("protocolIdentifier", "PROTOCOL", "PROTO"),
    "bytes": ("octetDeltaCount", "octetTotalCount", "IN_BYTES", "IN_OCTETS"),
    "packets": ("packetDeltaCount", "packetTotalCount", "IN_PKTS", "IN_PACKETS"),
}
_NTP_EPOCH = 2_208_988_800  # seconds from 1900 (NTP) to 1970
_Scope = tuple[str, int, int, int]  # exporter address, port, version, domain


def _ntp(value: Any) -> int:
    """An NTP timestamp ((seconds, fraction) or a 64-bit integer) as Unix ns."""
    seconds, fraction = value if isinstance(value, tuple) else (value >> 32, value & 0xFFFFFFFF)
    return int((seconds - _NTP_EPOCH) * NS + (fraction * NS >> 32))


#: (start field, end field, to Unix ns); the first pair a record has is used.
_TIMES = (
    ("flowStartNanoseconds", "flowEndNanoseconds", _ntp),
    ("flowStartMicroseconds", "flowEndMicroseconds", _ntp),
    ("flowStartMilliseconds", "flowEndMilliseconds", lambda v: int(v) * 1_000_000),
    ("NF_F_FLOW_CREATE_TIME_MSEC", "flowEndMilliseconds", lambda v: int(v) * 1_000_000),
    ("flowStartSeconds", "flowEndSeconds", lambda v: int(v) * NS),
)


@dataclass(frozen=True)
class DatagramError:
    """A malformed datagram or record, with the exporter that sent it."""

    exporter: str
    reason: str
    size: int

    def __str__(self) -> str:
        return f"{self.exporter}: {self.reason} ({self.size} bytes)"


@dataclass
class NetFlowReport:
    """Accounting of a collector: datagrams, records, flows, pending and dropped."""

    source: str = "netflow"
    datagrams: int = 0
    versions: dict[int, int] = field(default_factory=dict)
    records: int = 0
    flows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    dropped: int = 0
    error_count: int = 0
    errors: list[DatagramError] = field(default_factory=list)
    max_errors: int = 1000

    def error(self, exporter: str, reason: str, size: int) -> None:
        """Count one malformed datagram or record; keep it while fewer than ``max_errors``."""
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(DatagramError(exporter, reason, size))


def _first(data: dict[str, Any], names: tuple[str, ...]) -> tuple[str, Any] | None:
    """(name, value) of the first of ``names`` that ``data`` has."""
    return next(((name, data[name]) for name in names if name in data), None)


def _address(name: str, value: Any) -> str:
    """An address as text; IPFIX gives integers, v5 IPv4 integers, v9 text."""
    if isinstance(value, int):
        v6 = "IPv6" in name or "IPV6" in name
        return (ipaddress.IPv6Address(value) if v6 else ipaddress.IPv4Address(value)).compressed
    return ipaddress.ip_address(value).compressed


class NetFlowDecoder:
    """Export datagrams → flow rows, with templates and pending datagrams per scope.

    Parameters
    ----------
    report : NetFlowReport, optional
        Filled as datagrams are decoded.
    max_pending : int
        Most datagrams kept while waiting for their template, over all exporters.
    """

    def __init__(self, report: NetFlowReport | None = None, max_pending: int = 256) -> None:
        self.report = NetFlowReport() if report is None else report
        self.max_pending = max_pending
        self.templates: dict[_Scope, dict[int, Any]] = {}
        self.init_ns: dict[_Scope, int] = {}  # systemInitTimeMilliseconds per scope
        self.pending: deque[tuple[_Scope, bytes]] = deque()
        self.rows: list[tuple[Any, ...]] = []

    def decode(self, datagram: bytes, exporter: tuple[str, int]) -> None:
        """Decode one datagram from ``exporter`` (address, port) into :attr:`rows`."""
        report, size = self.report, len(datagram)
        report.datagrams += 1
        if size < 4:
            report.error(exporter[0], "datagram shorter than a header", size)
            return
        version = struct.unpack_from("!H", datagram)[0]
        if version not in (5, 9, 10):
            report.error(exporter[0], f"unknown NetFlow version {version}", size)
            return
        report.versions[version] = report.versions.get(version, 0) + 1
        at = {9: 16, 10: 12}.get(version)
        domain = struct.unpack_from("!I", datagram, at)[0] if at and size >= at + 4 else 0
        scope = (exporter[0], exporter[1], version, domain)
        known = len(self.templates.setdefault(scope, {}))
        if not self._parse(scope, datagram):
            if len(self.pending) >= self.max_pending:
                self.pending.popleft()
                report.dropped += 1
            self.pending.append((scope, datagram))
        if len(self.templates[scope]) > known:  # a new template: retry what waits for one
            waiting = [item for item in self.pending if item[0] == scope]
            for item in waiting:
                if self._parse(*item):
                    self.pending.remove(item)
        report.pending = len(self.pending)

    def _parse(self, scope: _Scope, datagram: bytes) -> bool:
        """Decode into rows; False when a template is missing (nothing was taken)."""
        exporter, version = scope[0], scope[2]
        try:
            if version == 5:
                packet: Any = V5ExportPacket(datagram)
            elif version == 9:
                packet = V9ExportPacket(datagram, self.templates[scope])
            else:
                packet = IPFIXExportPacket(datagram, self.templates[scope])
        except (V9TemplateNotRecognized, IPFIXTemplateNotRecognized):
            return False
        except Exception as exc:  # untrusted input in a third-party parser: never crash
            self.report.error(exporter, f"malformed v{version} datagram: {exc!r}", len(datagram))
            return True
        header = packet.header
        if version == 10:
            export_ns = header.export_uptime * NS  # the IPFIX export time, in seconds
            uptime_ms = None
        else:
            export_ns = header.timestamp * NS + getattr(header, "timestamp_nano", 0)
            uptime_ms = header.uptime
        for record in packet.flows:
            try:
                self._record(scope, record.data, export_ns, uptime_ms, len(datagram))
            except (ValueError, TypeError, OverflowError) as exc:  # a value of a bad type
                self.report.error(exporter, f"bad v{version} record: {exc!r}", len(datagram))
        return True

    def _record(
        self, scope: _Scope, data: dict[str, Any], export_ns: int, uptime: int | None, size: int
    ) -> None:
        report, exporter = self.report, scope[0]
        report.records += 1
        if "systemInitTimeMilliseconds" in data:
            self.init_ns[scope] = int(data["systemInitTimeMilliseconds"]) * 1_000_000
        found = {key: _first(data, names) for key, names in _FIELDS.items()}
        src, dst, proto = found["src"], found["dst"], found["proto"]
        if src is None or dst is None:
            report.skipped["options"] = report.skipped.get("options", 0) + 1
            return
        times = self._times(scope, data, export_ns, uptime)
        missing = [k for k in ("proto", "bytes", "packets") if found[k] is None]
        if times is None or missing or proto is None:
            what = ", ".join(missing) if missing else "flow times"
            report.error(exporter, f"v{scope[2]} record without {what}", size)
            return
        addresses = _address(*src), _address(*dst)
        number = int(proto[1])
        ports = [
            int(port[1]) if port is not None and number in (6, 17, 132) else None
            for port in (found["srcp"], found["dstp"])
        ]
        counts = [int(v[1]) if v is not None else 0 for v in (found["bytes"], found["packets"])]
        name = PROTO_NAMES.get(number, str(number))
        self.rows.append(
            (*times, *addresses, *ports, name, "", counts[0], 0, counts[1], 0, "", exporter)
        )
        report.flows += 1

    def _times(
        self, scope: _Scope, data: dict[str, Any], export_ns: int, uptime: int | None
    ) -> tuple[int, int] | None:
        for start, end, convert in _TIMES:
            if start in data and end in data:
                return convert(data[start]), convert(data[end])
        if "flowStartDeltaMicroseconds" in data and "flowEndDeltaMicroseconds" in data:
            return tuple(  # type: ignore[return-value]
                export_ns - int(data[f"flow{e}DeltaMicroseconds"]) * 1000 for e in ("Start", "End")
            )
        init = self.init_ns.get(scope)
        if init is not None and "flowStartSysUpTime" in data and "flowEndSysUpTime" in data:
            return tuple(  # type: ignore[return-value]
                init + int(data[f"flow{e}SysUpTime"]) * 1_000_000 for e in ("Start", "End")
            )
        if uptime is not None and "FIRST_SWITCHED" in data and "LAST_SWITCHED" in data:
            return tuple(  # type: ignore[return-value]
                export_ns - ((uptime - int(data[f]) + (1 << 32)) % (1 << 32)) * 1_000_000
                for f in ("FIRST_SWITCHED", "LAST_SWITCHED")
            )
        return None

    def take(self, limit: int | None = None) -> Flows:
        """The first ``limit`` (default: all) decoded rows not taken yet, as Flows."""
        rows = self.rows[:limit]
        self.rows = self.rows[len(rows) :]
        return Flows(pl.DataFrame(rows, schema=FLOW_SCHEMA, orient="row"))


class NetFlowCollector:
    """A UDP NetFlow / IPFIX collector: datagrams in, :class:`Flows` chunks out.

    Parameters
    ----------
    host, port : str, int
        Where to listen (port 0: a free port, see :attr:`address`).
    max_pending : int
        See :class:`NetFlowDecoder`.
    chunk_flows : int
        Largest number of rows per chunk yielded by :meth:`stream`.
    receive_buffer : int
        Socket receive buffer (bytes) asked of the kernel, so bursts are not lost.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2055,
        *,
        max_pending: int = 256,
        chunk_flows: int = 65_536,
        receive_buffer: int = 4 << 20,
    ) -> None:
        if chunk_flows < 1:
            raise ValueError("chunk_flows must be positive")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.socket.bind((host, port))
        self.address: tuple[str, int] = self.socket.getsockname()[:2]
        self.report = NetFlowReport(source=f"{self.address[0]}:{self.address[1]}")
        self.decoder = NetFlowDecoder(self.report, max_pending)
        self.chunk_flows = chunk_flows

    def poll(self, timeout_s: float) -> int:
        """Decode the datagrams waiting, after waiting up to ``timeout_s`` for the first."""
        count = 0
        self.socket.settimeout(timeout_s)
        try:
            while True:
                datagram, exporter = self.socket.recvfrom(65_535)
                self.decoder.decode(datagram, exporter[:2])
                count += 1
                self.socket.settimeout(0.0)
        except (TimeoutError, BlockingIOError):
            return count

    def stream(
        self, idle_timeout_s: float | None = None, poll_s: float = 0.2, flush_s: float = 1.0
    ) -> Iterator[Flows]:
        """Yield the flows as they come; stop after ``idle_timeout_s`` without a datagram.

        A chunk is yielded when ``chunk_flows`` rows are ready, when no datagram came
        for ``poll_s``, or ``flush_s`` after the previous chunk. ``idle_timeout_s``
        ``None`` runs until the caller stops iterating.
        """
        idle, flushed = 0.0, time.monotonic()
        while idle_timeout_s is None or idle < idle_timeout_s:
            idle = 0.0 if self.poll(poll_s) else idle + poll_s
            rows = self.decoder.rows
            due = idle or time.monotonic() - flushed >= flush_s
            while len(rows) >= self.chunk_flows or (rows and due):
                yield self.decoder.take(self.chunk_flows)
                rows, flushed = self.decoder.rows, time.monotonic()

    def take(self) -> Flows:
        """Every row decoded and not yet taken."""
        return self.decoder.take()

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> NetFlowCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
