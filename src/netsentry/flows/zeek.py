r"""Zeek ``conn.log`` → :class:`~netsentry.flows.schema.Flows`, TSV or JSON.

TSV logs start with their headers: ``#separator \x09`` (escaped), then, split by that
separator, ``#fields`` (the column names), ``#types``, ``#unset_field`` (``-``) and
``#empty_field`` (``(empty)``); ``#set_separator``, ``#path``, ``#open`` and
``#close`` are read past. A new ``#separator`` starts a new log (concatenated logs
work). The IoT-23 variant, whose last fields (``tunnel_parents``, ``label``,
``detailed-label``) are separated by three spaces instead of the separator, is
recognised from its ``#fields`` line. Lines starting with ``{`` are Zeek's JSON
logging (``LogAscii::use_json``), with epoch or ISO 8601 ``ts``; each is read as the
TSV line Zeek would have written (tabs in values become spaces).

Mapping: ``ts`` is the start and ``ts + duration`` the end (``duration`` unset: the
end is the start); ``id.orig_h``/``id.orig_p`` → ``src``/``srcp``, ``id.resp_h``/
``id.resp_p`` → ``dst``/``dstp`` (null for ``icmp``, where Zeek puts the ICMP type and
code in the ports); ``orig_bytes``/``resp_bytes`` → ``bytes_out``/``bytes_in``,
``orig_pkts``/``resp_pkts`` → ``packets_out``/``packets_in`` (unset ``-``: null);
``conn_state`` → ``state``; ``service`` → ``service`` (unset: ``""``); ``label`` and
``detailed-label`` (or ``detailedlabel``) → ``label``/``detailed_label`` (unset:
null). TSV times are decimal strings and are kept exactly; JSON times are doubles and
are rounded to the microsecond, as Zeek writes them in TSV. Splitting and checking the
fields happens per chunk, in columns; the IoT-23 three-space separator is then taken as
a separator wherever it occurs in a line of such a log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, BinaryIO

import msgspec
import polars as pl

from netsentry.flows.schema import (
    ADDRESS_PATTERN,
    FLOW_SCHEMA,
    LABEL_SCHEMA,
    FlowReport,
    Flows,
    keep_good,
    open_lines,
)

__all__ = ["read_zeek"]

#: conn.log fields used, in the order of the raw columns.
# fmt: off
FIELDS: tuple[str, ...] = (
    "ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service", "duration",
    "orig_bytes", "resp_bytes", "conn_state", "orig_pkts", "resp_pkts", "label", "detailed-label",
)
# fmt: on
REQUIRED = FIELDS[:6]
_ALIASES = {"detailedlabel": "detailed-label", "detailed_label": "detailed-label"}
_COUNTS = ("orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts")
_IOT23_SEPARATOR = "   "
_PROTO = r"^[A-Za-z0-9_-]+$"
_SECONDS = r"^[0-9]{1,10}(?:\.[0-9]{1,9})?$"
_MAX_SECONDS = 9_223_372_035  # the largest whole second that fits int64 nanoseconds
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
_Seconds = Annotated[float, msgspec.Meta(ge=0, lt=_MAX_SECONDS)]


class _JsonConn(msgspec.Struct, kw_only=True, gc=False):
    ts: _Seconds | str
    orig_h: str = msgspec.field(name="id.orig_h")
    orig_p: _Port = msgspec.field(name="id.orig_p")
    resp_h: str = msgspec.field(name="id.resp_h")
    resp_p: _Port = msgspec.field(name="id.resp_p")
    proto: str
    service: str | None = None
    duration: _Seconds | None = None
    orig_bytes: _Count | None = None
    resp_bytes: _Count | None = None
    conn_state: str | None = None
    orig_pkts: _Count | None = None
    resp_pkts: _Count | None = None
    label: str | None = None
    detailed_label: str | None = msgspec.field(default=None, name="detailed-label")
    detailedlabel: str | None = None


_decode_json = msgspec.json.Decoder(_JsonConn).decode
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _seconds(value: float | str | None) -> str:
    """A JSON time as Zeek writes it in TSV: decimal seconds to the microsecond."""
    if value is None:
        return "-"
    if isinstance(value, str):  # ISO 8601 (JSON::TS_ISO8601)
        try:
            micros = (datetime.fromisoformat(value) - _EPOCH) // timedelta(microseconds=1)
        except (ValueError, TypeError):  # no date, or no UTC offset
            return value.replace("\t", " ")  # rejected as an invalid ts
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"
    return f"{value:.6f}"


def _json_line(r: _JsonConn) -> str:
    """A JSON record (already type-checked) as the TSV line of the _JSON layout."""
    values: list[object] = [r.orig_h, r.orig_p, r.resp_h, r.resp_p, r.proto, r.service]
    values += [r.orig_bytes, r.resp_bytes, r.conn_state, r.orig_pkts, r.resp_pkts, r.label]
    values.append(r.detailed_label or r.detailedlabel)
    texts = ["-" if v is None else str(v).replace("\t", " ") for v in values]
    return "\t".join([_seconds(r.ts), *texts[:6], _seconds(r.duration), *texts[6:]])


@dataclass(frozen=True)
class _Layout:
    """How to read the data lines of one TSV header."""

    separator: str = "\t"
    width: int = 0  # number of fields; 0: no #fields header yet
    index: tuple[int, ...] = ()  # position of each of FIELDS, -1 when the log lacks it
    iot23: bool = False
    unset: str = "-"
    empty: str = "(empty)"
    labelled: bool = False  # the log has a label column


#: JSON records are read as TSV lines of all FIELDS, in order (labelled if one has one).
_JSON = _Layout(width=len(FIELDS), index=tuple(range(len(FIELDS))))


class _Header:
    """The TSV header in force, as a :class:`_Layout` replaced whenever it changes."""

    def __init__(self) -> None:
        self.layout = _Layout()

    def _relayout(self, **changes: Any) -> None:
        """A new layout object only when it changes: readers compare identities."""
        layout = replace(self.layout, **changes)
        if layout != self.layout:
            self.layout = layout

    def read(self, text: str) -> str | None:
        """Apply a header line; returns the reason when it is malformed."""
        if text.startswith("#separator"):
            value = text[len("#separator") :].strip(" ")
            separator = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m[1], 16)), value)
            if not separator:
                return "empty #separator"
            self._relayout(**{**_Layout().__dict__, "separator": separator})  # a new log
            return None
        sep = self.layout.separator
        key, _, rest = text.partition(sep)
        values = rest.split(sep)
        if key == "#fields":
            names = [_ALIASES.get(n, n) for v in values for n in v.split(_IOT23_SEPARATOR)]
            missing = [f for f in REQUIRED if f not in names]
            if missing:
                return f"#fields without {', '.join(missing)}"
            self._relayout(
                width=len(names),
                index=tuple(names.index(f) if f in names else -1 for f in FIELDS),
                iot23=any(_IOT23_SEPARATOR in v for v in values),
                labelled="label" in names,
            )
        elif key == "#unset_field":
            self._relayout(unset=values[0])
        elif key == "#empty_field":
            self._relayout(empty=values[0])
        return None


def _decimal_ns(name: str) -> tuple[pl.Expr, pl.Expr]:
    """(valid, nanoseconds) of a column of decimal seconds written as text."""
    parts = pl.col(name).str.split_exact(".", 1)
    whole = parts.struct.field("field_0").cast(pl.Int64, strict=False)
    frac = parts.struct.field("field_1").fill_null("").str.pad_end(9, "0")
    valid = pl.col(name).str.contains(_SECONDS) & (whole <= _MAX_SECONDS)
    return valid, whole * 1_000_000_000 + frac.cast(pl.Int64, strict=False)


def _split(texts: list[str], lines: list[int], h: _Layout) -> pl.DataFrame:
    """The TSV lines of one header as text columns of FIELDS, split in columns.

    The IoT-23 three-space separator is read as the separator wherever it occurs.
    """
    text = pl.Series("text", texts, dtype=pl.String)
    if h.iot23:
        text = text.str.replace_all(_IOT23_SEPARATOR, h.separator, literal=True)
    parts = pl.col("text").str.split_exact(h.separator, h.width - 1)
    return pl.DataFrame({"line_no": pl.Series(lines, dtype=pl.Int64), "text": text}).select(
        "line_no",
        pl.col("text").str.count_matches(h.separator, literal=True).add(1).alias("width"),
        *(
            (parts.struct.field(f"field_{i}") if i >= 0 else pl.lit(h.unset)).alias(f)
            for f, i in zip(FIELDS, h.index, strict=True)
        ),
    )


def _typed(frame: pl.DataFrame, h: _Layout) -> pl.DataFrame:
    """Typed flow columns and a ``reason`` (null when fine) from text columns of FIELDS."""
    unset = {f: pl.col(f) == h.unset for f in FIELDS}
    ts_ok, ts_ns = _decimal_ns("ts")
    dur_ok, dur_ns = _decimal_ns("duration")
    checks = {
        "ts": ~ts_ok,
        "duration": ~unset["duration"] & ~dur_ok,
        "id.orig_h": ~pl.col("id.orig_h").str.contains(ADDRESS_PATTERN),
        "id.resp_h": ~pl.col("id.resp_h").str.contains(ADDRESS_PATTERN),
        "proto": ~pl.col("proto").str.contains(_PROTO),
        **{
            f: ~unset[f]
            & ~(
                pl.col(f).str.contains(r"^[0-9]{1,5}$")
                & (pl.col(f).cast(pl.Int64, strict=False) < 65536)
            )
            for f in ("id.orig_p", "id.resp_p")
        },
        **{f: ~unset[f] & ~pl.col(f).str.contains(r"^[0-9]{1,18}$") for f in _COUNTS},
    }
    reason = pl.coalesce(  # the first failing check names the field
        pl.when(pl.col("width") != h.width).then(
            pl.format(f"expected {h.width} fields, got {{}}", pl.col("width"))
        ),
        *(
            pl.when(bad.fill_null(True)).then(pl.format(f"invalid {f} {{}}", pl.col(f)))
            for f, bad in checks.items()
        ),
    )

    def text(f: str, when_unset: str | None) -> pl.Expr:
        value = pl.when(pl.col(f) == h.empty).then(pl.lit("")).otherwise(pl.col(f))
        return pl.when(unset[f]).then(pl.lit(when_unset, pl.String)).otherwise(value)

    icmp = pl.col("proto").str.to_lowercase() == "icmp"  # ICMP type and code as ports
    start = ts_ns.alias("start")
    return frame.select(
        "line_no",
        reason.alias("reason"),
        start,
        (ts_ns + pl.when(unset["duration"]).then(0).otherwise(dur_ns)).alias("end"),
        pl.col("id.orig_h").alias("src"),
        pl.col("id.resp_h").alias("dst"),
        *(
            pl.when(unset[f] | icmp)
            .then(None)
            .otherwise(pl.col(f))
            .cast(pl.Int32, strict=False)
            .alias(p)
            for f, p in (("id.orig_p", "srcp"), ("id.resp_p", "dstp"))
        ),
        pl.col("proto").str.to_lowercase(),
        text("service", "").alias("service"),
        *(
            pl.col(f).cast(pl.Int64, strict=False).alias(c)
            for f, c in zip(
                _COUNTS, ("bytes_out", "bytes_in", "packets_out", "packets_in"), strict=True
            )
        ),
        text("conn_state", "").alias("state"),
        text("label", None).alias("label"),
        text("detailed-label", None).alias("detailed_label"),
    )


class _Chunk:
    """Lines of one chunk: TSV lines (text) and JSON records, converted together."""

    def __init__(self, layout: _Layout) -> None:
        self.size = 0
        self.frames: list[pl.DataFrame] = []
        self.raw: dict[int, bytes | str] = {}  # the lines, for errors
        self.layout = layout  # the header layout of ``texts``
        self.texts: list[str] = []
        self.text_lines: list[int] = []
        self.labelled = layout.labelled

    def close_texts(self, layout: _Layout) -> None:
        """Convert the TSV lines read so far; the next ones are read under ``layout``."""
        if self.texts:
            self.frames.append(
                _typed(_split(self.texts, self.text_lines, self.layout), self.layout)
            )
            self.raw.update(zip(self.text_lines, self.texts, strict=True))
            self.texts, self.text_lines = [], []
        self.layout = layout
        self.labelled |= layout.labelled

    def flows(self, report: FlowReport, source: str) -> Flows:
        self.close_texts(self.layout)
        frame = pl.concat(self.frames).with_columns(
            pl.repeat(source, pl.len(), dtype=pl.String).alias("source")
        )
        labels = LABEL_SCHEMA if self.labelled else {}
        return keep_good(frame, self.raw, report, [*FLOW_SCHEMA, *labels])


def read_zeek(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    chunk_flows: int = 65_536,
    report: FlowReport | None = None,
    name: str | None = None,
) -> Iterator[Flows]:
    """Stream the flows of a Zeek ``conn.log`` in chunks of at most ``chunk_flows`` rows.

    Parameters
    ----------
    source : path or binary stream
        A conn.log (``.gz`` too), TSV with its headers or JSON lines.
    chunk_flows : int
        Largest number of rows per yielded chunk.
    report : FlowReport, optional
        Filled as the input is read: data lines, flows, errors (file and line each).
    name : str, optional
        Name of the input in errors and in the ``source`` column (default: the path).

    Yields
    ------
    Flows
        The flows of the next chunk of lines (labelled when the log is), never empty.
    """
    if chunk_flows < 1:
        raise ValueError("chunk_flows must be positive")
    report = FlowReport() if report is None else report
    header = _Header()
    with open_lines(source, name) as (label, lines):
        report.source = label
        chunk = _Chunk(header.layout)
        mark = len(report.errors)
        for line_no, raw in enumerate(lines, 1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                report.lines += 1
                report.error(line_no, "invalid UTF-8", raw)
                continue
            if not text or text.isspace():
                continue
            first = text[0]
            if first == "#":
                reason = header.read(text)
                if reason is not None:
                    report.lines += 1
                    report.error(line_no, reason, raw)
                continue
            report.lines += 1
            if first == "{":
                try:
                    record = _decode_json(raw)
                except msgspec.DecodeError as exc:  # ValidationError is one too
                    report.error(line_no, f"invalid conn record: {exc}", raw)
                    continue
                if chunk.layout is not _JSON:
                    chunk.close_texts(_JSON)
                chunk.labelled |= record.label is not None
                chunk.texts.append(_json_line(record))
                chunk.text_lines.append(line_no)
            elif not header.layout.width:
                report.error(line_no, "data before a #fields header", raw)
                continue
            else:
                if header.layout is not chunk.layout:
                    chunk.close_texts(header.layout)
                chunk.texts.append(text)  # split later, in columns
                chunk.text_lines.append(line_no)
            chunk.size += 1
            if chunk.size >= chunk_flows:
                flows = chunk.flows(report, label)
                report.reorder(mark)
                mark = len(report.errors)
                chunk = _Chunk(header.layout)
                if len(flows):
                    yield flows
        if chunk.size:
            flows = chunk.flows(report, label)
            report.reorder(mark)
            if len(flows):
                yield flows
