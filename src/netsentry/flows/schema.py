"""The flow record: one row per bidirectional flow, as sensors report them.

A :class:`Flows` is one polars DataFrame with the columns of :data:`FLOW_SCHEMA`::

    start, end              Int64   nanoseconds since the epoch, UTC
    src, dst                String  originator and responder addresses, as written
    srcp, dstp              Int32   their ports; null where the protocol has none (ICMP...)
    proto                   String  lower case: tcp, udp, icmp, ipv6-icmp, ...
    service                 String  application protocol, "" when the sensor did not know
    bytes_out, bytes_in     Int64   bytes originator → responder and back (null: unknown)
    packets_out, packets_in Int64   packets the same way (null: unknown)
    state                   String  the sensor's connection state (Zeek conn_state...)
    source                  String  the sensor or file the row came from

followed, when the input is labelled, by ``label`` and ``detailed_label`` (String, see
:data:`LABEL_SCHEMA`). *Out* is always originator → responder: the originator is the
host that opened the flow (Zeek's ``orig``, Suricata's ``src`` of a flow event), the
responder is the server.

Parsers stream: they yield ``Flows`` chunks and account for every input line in a
:class:`FlowReport`, where each malformed record is a
:class:`~netsentry.ingest.errors.LineError` naming the file and line.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
import polars as pl

from netsentry.ingest.errors import LineError

__all__ = [
    "ADDRESS_PATTERN",
    "FLOW_SCHEMA",
    "ISO_TIMESTAMP_FORMAT",
    "LABEL_SCHEMA",
    "FlowReport",
    "Flows",
    "frame_from_state",
    "frame_to_state",
    "keep_good",
    "open_lines",
]

FLOW_SCHEMA: dict[str, Any] = {
    "start": pl.Int64,
    "end": pl.Int64,
    "src": pl.String,
    "dst": pl.String,
    "srcp": pl.Int32,
    "dstp": pl.Int32,
    "proto": pl.String,
    "service": pl.String,
    "bytes_out": pl.Int64,
    "bytes_in": pl.Int64,
    "packets_out": pl.Int64,
    "packets_in": pl.Int64,
    "state": pl.String,
    "source": pl.String,
}

#: Optional ground-truth columns of labelled data sets (Stratosphere, IoT-23).
LABEL_SCHEMA: dict[str, Any] = {"label": pl.String, "detailed_label": pl.String}

_LABELLED_SCHEMA: dict[str, Any] = {**FLOW_SCHEMA, **LABEL_SCHEMA}

#: Loose check of an address as written: a dotted quad, or hex groups with colons
#: (IPv6, maybe with a ``%zone``). It catches garbage, not every impossible address.
ADDRESS_PATTERN = (
    r"^(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(?:%[A-Za-z0-9_.-]+)?)$"
)

#: chrono format of ISO 8601 times with a UTC offset; ``%#z`` takes ``+0200``,
#: ``+02:00`` and ``Z``. Up to nine fraction digits, kept exactly.
ISO_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%#z"

#: Source of a path-less stream in errors and in the ``source`` column.
STREAM_NAME = "stream"


@dataclass(frozen=True)
class Flows:
    """Flow records with the schema of :data:`FLOW_SCHEMA` (and maybe the labels)."""

    frame: pl.DataFrame

    def __post_init__(self) -> None:
        schema = dict(self.frame.schema)
        if schema not in (FLOW_SCHEMA, _LABELLED_SCHEMA):
            raise ValueError(f"Flows schema mismatch: got {schema}, expected {FLOW_SCHEMA}")

    @classmethod
    def empty(cls, labels: bool = False) -> Flows:
        return cls(pl.DataFrame(schema=_LABELLED_SCHEMA if labels else FLOW_SCHEMA))

    @classmethod
    def concat(cls, parts: list[Flows]) -> Flows:
        """All rows of ``parts``; labels are kept (null where a part had none)."""
        if not parts:
            return cls.empty()
        if any(p.has_labels for p in parts):
            frames = [
                p.frame
                if p.has_labels
                else p.frame.with_columns(
                    pl.lit(None, pl.String).alias(name) for name in LABEL_SCHEMA
                )
                for p in parts
            ]
            return cls(pl.concat(frames, how="vertical"))
        return cls(pl.concat([p.frame for p in parts], how="vertical"))

    @property
    def has_labels(self) -> bool:
        return "label" in self.frame.columns

    def __len__(self) -> int:
        return self.frame.height


@dataclass
class FlowReport:
    """Accounting of one input: every data line is a flow, skipped, merged or an error.

    Attributes
    ----------
    source : str
        The file (or stream) name.
    lines : int
        Records read: data lines and rejected header lines (blank lines and valid Zeek
        ``#`` headers are not counted), so ``lines = flows + merged + skipped +
        error_count``.
    flows : int
        Flow rows produced.
    skipped : dict of str to int
        Well-formed records that are not flows, by type (Suricata ``alert``, ``dns``...).
    merged : int
        Records folded into another row (the to-client half of a Suricata ``netflow``
        pair).
    error_count : int
        Malformed records; each was dropped and the rest kept.
    errors : list of LineError
        The first ``max_errors`` of them, in input order.
    max_errors : int
        How many errors are kept with their text.
    """

    source: str = STREAM_NAME
    lines: int = 0
    flows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    merged: int = 0
    error_count: int = 0
    errors: list[LineError] = field(default_factory=list)
    max_errors: int = 1000

    def error(self, line_no: int, reason: str, line: bytes | str) -> None:
        """Count one malformed record and keep it while fewer than ``max_errors``."""
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
            self.errors.append(LineError.make(self.source, line_no, reason, text.rstrip("\r\n")))

    def reorder(self, since: int) -> None:
        """Put the errors kept from index ``since`` on in line order.

        Parsers find some errors line by line and others per chunk, in columns; they
        call this when a chunk is done.
        """
        self.errors[since:] = sorted(self.errors[since:], key=lambda e: e.line_no)


def keep_good(
    frame: pl.DataFrame, raw: Mapping[int, bytes | str], report: FlowReport, columns: list[str]
) -> Flows:
    """Report the rows of ``frame`` that have a ``reason``; the others, as Flows.

    ``frame`` holds ``line_no``, ``reason`` (null for a good row) and ``columns``;
    ``raw`` gives the text of each line for the errors.
    """
    frame = frame.sort("line_no")
    bad = frame.filter(pl.col("reason").is_not_null()).select("line_no", "reason")
    for line_no, reason in bad.iter_rows():
        report.error(line_no, reason, raw[line_no])
    good = frame.filter(pl.col("reason").is_null()).select(columns)
    report.flows += good.height
    return Flows(good)


@contextmanager
def open_lines(
    source: str | os.PathLike[str] | BinaryIO, name: str | None = None
) -> Iterator[tuple[str, Iterator[bytes]]]:
    """The name and the raw lines of a file (``.gz`` too) or binary stream, streamed.

    Lines are bytes with their line end; nothing reads the whole input at once.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            yield name or str(path), iter(handle)
    else:
        stream: IO[bytes] = source
        yield name or getattr(stream, "name", None) or STREAM_NAME, iter(stream)


def frame_to_state(frame: pl.DataFrame, prefix: str) -> dict[str, Any]:
    """Columns of a frame without nulls as plain numpy arrays, for ``state_dict``.

    Strings become unicode arrays (not objects), so the state saves without pickle
    (:func:`numpy.savez`, as the store does).
    """
    if frame.null_count().sum_horizontal().item():
        raise ValueError("state frames hold no nulls")
    return {
        f"{prefix}.{name}": np.array(frame[name].to_list(), dtype=np.str_)
        if dtype == pl.String
        else frame[name].to_numpy().copy()
        for name, dtype in frame.schema.items()
    }


def frame_from_state(state: dict[str, Any], prefix: str, schema: dict[str, Any]) -> pl.DataFrame:
    """Inverse of :func:`frame_to_state` for a frame of ``schema``."""
    return pl.DataFrame(
        {name: np.asarray(state[f"{prefix}.{name}"]).tolist() for name in schema}, schema=schema
    )
