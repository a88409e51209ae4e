"""Suricata EVE JSON (one event per line) → :class:`~netsentry.flows.schema.Flows`.

``flow`` events are bidirectional flow records: ``src_ip``/``src_port`` is the
originator, ``flow.bytes_toserver``/``pkts_toserver`` become ``bytes_out``/
``packets_out`` and the ``toclient`` counters ``*_in``; ``flow.start``/``flow.end``
(not the event's ``timestamp``, which is when it was logged) give the flow's times;
``flow.state`` (new, established, closed, bypassed) is the state; ``app_proto`` is the
service (``""`` when absent or ``failed``).

``netflow`` events are unidirectional: Suricata logs each flow as a to-server record
(from the originator) and, when the responder answered, a to-client record right after
it with the same ``flow_id`` and the addresses and ports swapped. A to-server record
becomes a row with its counts as ``*_out`` and zeros as ``*_in``; the matching
to-client record (same ``flow_id``, reversed tuple, in the same chunk) is folded into
that row as ``*_in`` and counted in :attr:`FlowReport.merged`. A to-client record whose
partner was not seen (or fell into the previous chunk) stays a row of its own, with its
``src`` taken as the originator. ``state`` is ``""`` (netflow records carry none).

Every other event type (alert, dns, http, ...) is skipped and counted by type. Times are
exact to the nanosecond: ``2021-06-06T16:38:55.855844+0200`` is parsed with its UTC
offset (``+0000``, ``Z`` and ``+02:00`` too); a timestamp without an offset is rejected,
since its zone is unknown. ``source`` is the event's ``host`` (the sensor name) when it
has one, else the file name. ``proto`` is lower-cased (``tcp``, ``udp``, ``icmp``,
``ipv6-icmp``); ICMP records have no ports (null).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Annotated, Any, BinaryIO

import msgspec
import polars as pl

from netsentry.flows.schema import (
    ADDRESS_PATTERN,
    FLOW_SCHEMA,
    ISO_TIMESTAMP_FORMAT,
    FlowReport,
    Flows,
    keep_good,
    open_lines,
)

__all__ = ["read_eve"]

_Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
#: Fields a flow event needs: EVE name → column.
_FLOW_FIELDS = {"start": "start", "end": "end", "pkts_toserver": "packets_out"}
_FLOW_FIELDS |= {"pkts_toclient": "packets_in", "bytes_toserver": "bytes_out"}
_FLOW_FIELDS |= {"bytes_toclient": "bytes_in"}
_NETFLOW_FIELDS = ("start", "end", "pkts", "bytes")


class _Counters(msgspec.Struct, gc=False):
    """The ``flow`` or ``netflow`` object of an event (only the fields used)."""

    start: str | None = None
    end: str | None = None
    pkts_toserver: _Count | None = None
    pkts_toclient: _Count | None = None
    bytes_toserver: _Count | None = None
    bytes_toclient: _Count | None = None
    pkts: _Count | None = None
    bytes: _Count | None = None
    state: str | None = None


class _Event(msgspec.Struct, gc=False):
    event_type: str
    flow_id: int | None = None
    src_ip: str | None = None
    src_port: _Port | None = None
    dest_ip: str | None = None
    dest_port: _Port | None = None
    proto: str | None = None
    app_proto: str | None = None
    host: str | None = None
    flow: _Counters | None = None
    netflow: _Counters | None = None


class _EventType(msgspec.Struct, gc=False):
    event_type: str


class _RejectError(Exception):
    """The record is malformed; the message is the reason."""


_EMPTY = _Counters()
#: Columns of a chunk's rows, in the order they are built.
_COLUMNS: tuple[str, ...] = ("start", "end", "src", "dst", "srcp", "dstp", "proto")
_COLUMNS += ("service", "bytes_out", "bytes_in", "packets_out", "packets_in", "state", "source")
_TYPES = {**FLOW_SCHEMA, "start": pl.String, "end": pl.String, "line_no": pl.Int64}
_TYPES["no_flow"] = pl.Boolean


class _Chunk:
    """The records of one chunk: flow events as decoded, netflow rows as columns."""

    def __init__(self) -> None:
        self.size = 0
        self.flow_events: list[_Event] = []
        self.flow_lines: list[int] = []
        self.raw: dict[int, bytes] = {}
        self.netflow: dict[str, list[Any]] = {c: [] for c in ("line_no", *_COLUMNS)}
        self.pending: dict[int, int] = {}  # flow_id → row of an unpaired to-server half

    def add_netflow(self, line_no: int, raw: bytes, ev: _Event, source: str) -> bool:
        """Add a netflow record; False when it was folded into its to-server half."""
        c = _counters(ev)
        assert c.bytes is not None and c.pkts is not None
        cols = self.netflow
        row = self.pending.pop(ev.flow_id, None) if ev.flow_id is not None else None
        if row is not None and (
            cols["src"][row],
            cols["srcp"][row],
            cols["dst"][row],
            cols["dstp"][row],
        ) == (ev.dest_ip, ev.dest_port, ev.src_ip, ev.src_port):
            cols["bytes_in"][row] += c.bytes
            cols["packets_in"][row] += c.pkts
            return False
        if ev.flow_id is not None:
            self.pending[ev.flow_id] = len(cols["line_no"])
        assert ev.proto is not None
        values = (line_no, c.start, c.end, ev.src_ip, ev.dest_ip, ev.src_port, ev.dest_port)
        more = (ev.proto.lower(), _service(ev.app_proto), c.bytes, 0, c.pkts, 0, "")
        for column, value in zip(cols.values(), (*values, *more, ev.host or source), strict=True):
            column.append(value)
        self.raw[line_no] = raw
        self.size += 1
        return True

    def _flow_frame(self, source: str) -> pl.DataFrame:
        """The flow events as columns (one C-speed pass per column), with reasons."""
        evs = self.flow_events
        cs = [e.flow or _EMPTY for e in evs]
        frame = pl.DataFrame(
            {
                "line_no": self.flow_lines,
                "start": [c.start for c in cs],
                "end": [c.end for c in cs],
                "src": [e.src_ip for e in evs],
                "dst": [e.dest_ip for e in evs],
                "srcp": [e.src_port for e in evs],
                "dstp": [e.dest_port for e in evs],
                "proto": [e.proto for e in evs],
                "service": [e.app_proto for e in evs],
                "bytes_out": [c.bytes_toserver for c in cs],
                "bytes_in": [c.bytes_toclient for c in cs],
                "packets_out": [c.pkts_toserver for c in cs],
                "packets_in": [c.pkts_toclient for c in cs],
                "state": [c.state for c in cs],
                "source": [e.host for e in evs],
                "no_flow": [e.flow is None for e in evs],
            },
            schema_overrides=_TYPES,
        )
        missing = [
            pl.when(pl.col("no_flow")).then(pl.lit("flow event without a 'flow' object")),
            *(
                pl.when(pl.col(column).is_null()).then(pl.lit(f"flow event without flow.{name}"))
                for name, column in _FLOW_FIELDS.items()
            ),
            *(
                pl.when(pl.col(column).is_null()).then(pl.lit(f"flow event without {name}"))
                for name, column in (("src_ip", "src"), ("dest_ip", "dst"), ("proto", "proto"))
            ),
        ]
        return frame.with_columns(
            pl.coalesce(missing).alias("missing"),
            pl.col("proto").str.to_lowercase(),
            pl.col("service").replace("failed", None).fill_null(""),
            pl.col("state").fill_null(""),
            pl.col("source").fill_null(source),
        ).drop("no_flow")

    def flows(self, report: FlowReport, source: str) -> Flows:
        """The chunk as Flows; malformed rows become errors, the rest is kept."""
        types = {c: _TYPES[c] for c in self.netflow}
        netflow = pl.DataFrame(self.netflow, schema=types).with_columns(
            pl.lit(None, pl.String).alias("missing")
        )
        frame = pl.concat(
            [self._flow_frame(source), netflow.select(["line_no", *_COLUMNS, "missing"])]
        )
        frame = frame.with_columns(
            pl.col(t)
            .str.to_datetime(ISO_TIMESTAMP_FORMAT, time_unit="ns", strict=False)
            .cast(pl.Int64)
            .alias(f"{t}_ns")
            for t in ("start", "end")
        )
        reason = pl.coalesce(
            pl.col("missing"),
            pl.when(pl.col("start_ns").is_null()).then(
                pl.format("invalid flow start {}", pl.col("start"))
            ),
            pl.when(pl.col("end_ns").is_null()).then(
                pl.format("invalid flow end {}", pl.col("end"))
            ),
            pl.when(~pl.col("src").str.contains(ADDRESS_PATTERN)).then(
                pl.format("invalid src_ip {}", pl.col("src"))
            ),
            pl.when(~pl.col("dst").str.contains(ADDRESS_PATTERN)).then(
                pl.format("invalid dest_ip {}", pl.col("dst"))
            ),
        )
        frame = frame.with_columns(
            reason.alias("reason"), start=pl.col("start_ns"), end=pl.col("end_ns")
        )
        return keep_good(frame, self.raw, report, list(FLOW_SCHEMA))


def _service(app_proto: str | None) -> str:
    return "" if app_proto is None or app_proto == "failed" else app_proto


_decode_event = msgspec.json.Decoder(_Event).decode
_decode_type = msgspec.json.Decoder(_EventType).decode


def _counters(ev: _Event) -> _Counters:
    """The counters of a netflow event; raises when a needed field is missing."""
    c = ev.netflow
    if c is None:
        raise _RejectError("netflow event without a 'netflow' object")
    for name in _NETFLOW_FIELDS:
        if getattr(c, name) is None:
            raise _RejectError(f"netflow event without netflow.{name}")
    for name in ("src_ip", "dest_ip", "proto"):
        if getattr(ev, name) is None:
            raise _RejectError(f"netflow event without {name}")
    return c


def _not_a_flow(raw: bytes, exc: msgspec.DecodeError) -> str:
    """The type of a record that did not decode as an event; raises if it is a flow."""
    if not isinstance(exc, msgspec.ValidationError):
        raise _RejectError(f"invalid JSON: {exc}")
    try:
        kind = _decode_type(raw).event_type
    except msgspec.DecodeError:
        raise _RejectError(f"invalid EVE record: {exc}") from None
    if kind in ("flow", "netflow"):
        raise _RejectError(f"invalid {kind} event: {exc}")
    return kind


def read_eve(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    chunk_flows: int = 65_536,
    report: FlowReport | None = None,
    name: str | None = None,
) -> Iterator[Flows]:
    """Stream the flows of an EVE JSON file in chunks of at most ``chunk_flows`` rows.

    Parameters
    ----------
    source : path or binary stream
        An EVE file (``.gz`` too) or an open binary stream of EVE lines.
    chunk_flows : int
        Largest number of rows per yielded chunk.
    report : FlowReport, optional
        Filled as the input is read: lines, flows, skipped event types, errors.
    name : str, optional
        Name of the input in errors (default: the path, or the stream's name).

    Yields
    ------
    Flows
        The flows of the next chunk of lines, never empty.
    """
    if chunk_flows < 1:
        raise ValueError("chunk_flows must be positive")
    report = FlowReport() if report is None else report
    with open_lines(source, name) as (label, lines):
        report.source = label
        chunk = _Chunk()
        mark = len(report.errors)
        skipped = report.skipped
        for line_no, raw in enumerate(lines, 1):
            if raw.isspace() or not raw:
                continue
            report.lines += 1
            try:
                try:
                    ev = _decode_event(raw)
                except msgspec.DecodeError as exc:
                    skipped_kind = _not_a_flow(raw, exc)
                    skipped[skipped_kind] = skipped.get(skipped_kind, 0) + 1
                    continue
                kind = ev.event_type
                if kind == "flow":
                    chunk.flow_events.append(ev)  # the checks come per chunk, in columns
                    chunk.flow_lines.append(line_no)
                    chunk.raw[line_no] = raw
                    chunk.size += 1
                elif kind == "netflow":
                    if not chunk.add_netflow(line_no, raw, ev, label):
                        report.merged += 1
                        continue
                else:
                    skipped[kind] = skipped.get(kind, 0) + 1
                    continue
            except _RejectError as exc:
                report.error(line_no, str(exc), raw)
                continue
            if chunk.size >= chunk_flows:
                flows = chunk.flows(report, label)
                report.reorder(mark)
                mark = len(report.errors)
                chunk = _Chunk()
                if len(flows):
                    yield flows
        if chunk.size:
            flows = chunk.flows(report, label)
            report.reorder(mark)
            if len(flows):
                yield flows
