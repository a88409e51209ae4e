"""CSV exported from InfluxDB queries → :class:`~netsentry.model.Batch`.

Two forms are read, also mixed in one file:

* plain CSV with a header row such as ``_time,_value,dst,dstp,...`` (the RIoT export);
  other columns are ignored;
* InfluxDB 2.x annotated CSV: ``#datatype``, ``#group`` and ``#default`` rows, a
  leading annotation column, ``result,table`` columns, and possibly several tables
  separated by blank lines, each with its own annotations and header.

``_time`` is RFC 3339 (``2021-12-13T08:13:43.895385838Z``, up to 9 fractional
digits, ``Z`` or a ``±hh:mm`` offset) and is converted to integer nanoseconds
exactly. The measurement comes from a ``_measurement`` column when there is one,
else from the ``measurement`` argument; with a ``_field`` column the field is mapped
to a measurement name as for line protocol
(:func:`~netsentry.ingest.lineprotocol.field_measurement`). Columns named like
:data:`~netsentry.model.KEY_TAGS` are the tags.

Each bad row (bad time, missing or non-numeric or non-finite ``_value``, wrong
number of cells) becomes a :class:`~netsentry.ingest.errors.LineError` carrying its
1-based line number in the file; the other rows are kept. Values of ``string`` or
``boolean`` typed ``_value`` columns (per ``#datatype``) are skipped and counted in
``ignored_fields`` instead.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

from netsentry.ingest.errors import LineError, ParseResult
from netsentry.ingest.lineprotocol import INT64_MAX, INT64_MIN, field_measurement
from netsentry.model import KEY_TAGS, Batch

__all__ = ["parse_rfc3339_ns", "read_influx_csv"]

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
).fullmatch
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?").fullmatch
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE).fullmatch
_UNIX_EPOCH_ORDINAL = 719_163  # datetime(1970, 1, 1).toordinal()
_NON_NUMERIC_TYPES = frozenset({"string", "boolean"})


def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time, exactly.

    Raises
    ------
    ValueError
        If ``text`` is not an RFC 3339 time or is outside int64 nanoseconds.
    """
    m = _RFC3339(text)
    if m is None:
        raise ValueError(f"invalid time {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    try:
        days = datetime(year, month, day, hour, minute, second).toordinal()
    except ValueError:
        raise ValueError(f"invalid time {text!r}") from None
    seconds = (days - _UNIX_EPOCH_ORDINAL) * 86_400 + hour * 3_600 + minute * 60 + second
    if m.group(9):
        offset = int(m.group(10)) * 3_600 + int(m.group(11)) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    ns = seconds * 1_000_000_000 + int((m.group(7) or "").ljust(9, "0"))
    if not INT64_MIN <= ns <= INT64_MAX:
        raise ValueError(f"time {text!r} out of range (int64 nanoseconds)")
    return ns


@dataclass
class _Table:
    """Column positions and defaults of the table whose header was read last."""

    width: int
    time: int
    value: int
    measurement: int | None
    field: int | None
    tags: dict[str, int]
    defaults: list[str]
    numeric: bool


def _table(header: list[str], annotations: dict[str, list[str]]) -> _Table | str:
    """The layout of a table from its header row, or why it cannot be read."""
    index = {name: i for i, name in reversed(list(enumerate(header)))}
    missing = [c for c in ("_time", "_value") if c not in index]
    if missing:
        return f"header without {' and '.join(missing)} column"
    defaults = annotations.get("#default", [])[1:]  # [0] is the annotation name
    defaults = ([""] + defaults + [""] * len(header))[: len(header)]
    datatypes = annotations.get("#datatype", [])
    value_type = datatypes[index["_value"]] if index["_value"] < len(datatypes) else ""
    return _Table(
        width=len(header),
        time=index["_time"],
        value=index["_value"],
        measurement=index.get("_measurement"),
        field=index.get("_field"),
        tags={t: index[t] for t in KEY_TAGS if t in index},
        defaults=defaults,
        numeric=value_type not in _NON_NUMERIC_TYPES,
    )


def _value(text: str) -> float:
    if _NUMBER(text):
        value = float(text)
        if value not in (float("inf"), float("-inf")):
            return value
    elif not text:
        raise ValueError("missing _value")
    elif not _NON_FINITE(text):
        raise ValueError(f"non-numeric _value {text!r}")
    raise ValueError(f"non-finite _value {text}")


def _rows(stream: TextIO) -> Iterator[tuple[int, list[str] | str]]:
    """CSV rows (or why a row cannot be read) with the line number of their first line."""
    reader = csv.reader(stream)
    end = 0
    while True:
        try:
            row: list[str] | str = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row = f"unreadable CSV row: {exc}"
        start, end = end + 1, reader.line_num
        yield start, row


def read_influx_csv(
    source: str | os.PathLike[str] | TextIO,
    *,
    measurement: str | None = None,
    source_name: str | None = None,
) -> ParseResult:
    """Read an InfluxDB CSV export (plain or annotated), keeping good rows.

    Parameters
    ----------
    source : path or text stream
        The CSV file; a path is opened as UTF-8 (a BOM is allowed).
    measurement : str, optional
        Measurement of tables without a ``_measurement`` column.
    source_name : str, optional
        Name used in errors; defaults to the path, or the stream's ``name``.

    Returns
    -------
    ParseResult

    Raises
    ------
    ValueError
        If a table has no ``_measurement`` column and ``measurement`` is not given.
    """
    if isinstance(source, (str, os.PathLike)):
        name = source_name if source_name is not None else os.fspath(source)
        with open(source, encoding="utf-8-sig", newline="") as stream:
            return _read(stream, measurement, name)
    name = source_name if source_name is not None else str(getattr(source, "name", "input"))
    return _read(source, measurement, name)


def _read(stream: TextIO, measurement: str | None, source: str) -> ParseResult:
    times: list[int] = []
    values: list[float] = []
    names: list[str] = []
    tags: dict[str, list[str]] = {t: [] for t in KEY_TAGS}
    errors: list[LineError] = []
    seen = ignored = 0
    annotations: dict[str, list[str]] = {}
    table: _Table | str | None = None  # str: a table that cannot be read, skipped
    time_cache: dict[str, int] = {}
    after_annotation = False
    for line_no, row in _rows(stream):
        if isinstance(row, str):
            seen += 1
            errors.append(LineError.make(source, line_no, row, ""))
            continue
        if not any(row):
            annotations, table = {}, None  # a blank line ends a table
            after_annotation = False
            continue
        if row[0].startswith("#"):
            if not after_annotation:
                annotations, table = {}, None  # annotations start a new table
            annotations[row[0]] = row
            after_annotation = True
            continue
        after_annotation = False
        if table is None:
            table = _table(row, annotations)
            if isinstance(table, str):
                errors.append(LineError.make(source, line_no, table, ",".join(row)))
            elif table.measurement is None and measurement is None:
                raise ValueError(f"{source}:{line_no}: no _measurement column; pass measurement=")
            continue
        if isinstance(table, str):
            continue
        seen += 1
        try:
            if len(row) != table.width:
                raise ValueError(f"expected {table.width} cells, got {len(row)}")
            cells = [c or d for c, d in zip(row, table.defaults, strict=True)]
            name = measurement if table.measurement is None else cells[table.measurement]
            if not name:
                raise ValueError("empty _measurement")
            if not table.numeric:
                ignored += 1
                continue
            value = _value(cells[table.value])
            text = cells[table.time]
            ts = time_cache.get(text)
            if ts is None:
                if len(time_cache) > 100_000:
                    time_cache.clear()
                ts = time_cache[text] = parse_rfc3339_ns(text)
        except ValueError as exc:
            errors.append(LineError.make(source, line_no, str(exc), ",".join(row)))
            continue
        if table.field is not None:
            name = field_measurement(name, cells[table.field])
        times.append(ts)
        values.append(value)
        names.append(name)
        for tag, col in tags.items():
            i = table.tags.get(tag)
            col.append("" if i is None else cells[i])
    if not values:
        return ParseResult(Batch.empty(), errors, seen, ignored)
    return ParseResult(Batch.from_columns(times, names, values, tags), errors, seen, ignored)
