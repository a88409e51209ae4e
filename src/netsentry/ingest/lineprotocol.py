r"""InfluxDB line protocol (1.x) parser producing a :class:`~netsentry.model.Batch`.

A line is ``measurement[,tag=value...] field=value[,field=value...] [timestamp]``:

* measurement: ``\,`` and ``\ `` are escapes; tag keys, tag values and field keys:
  ``\,``, ``\=`` and ``\ ``. Any other backslash is a literal character (``\\`` stays
  two backslashes there), so none of these can end with a backslash;
* field values: float ``1``, ``-1.5``, ``1e3``; integer ``12i`` (int64); unsigned
  ``12u`` (uint64); string ``"..."`` (``\"`` and ``\\`` escaped, may span lines);
  boolean ``t T true True TRUE f F false False FALSE``;
* timestamp: an integer in the unit given by ``precision``; when it is missing the
  line gets ``now_ns`` truncated to that unit, as InfluxDB does;
* blank lines and lines starting with ``#`` are skipped; ``\r\n`` is accepted.

Field → measurement mapping (each numeric field becomes one row):

* a field named ``value``, ``counter``, ``gauge`` or ``untyped`` keeps the measurement
  name (Telegraf prometheus input, ``metric_version = 1``);
* in measurement ``prometheus`` (``metric_version = 2``) the field key is the name;
* otherwise field ``f`` of measurement ``m`` becomes ``m_f``.

String and boolean fields are skipped and counted. Tags other than
:data:`~netsentry.model.KEY_TAGS` are accepted and dropped. A bad line is rejected
whole (none of its fields are kept) and reported as a
:class:`~netsentry.ingest.errors.LineError`: NaN and ±inf, integers out of range,
timestamps that leave int64 nanoseconds, duplicate tags, duplicate fields...
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

import polars as pl

from netsentry.ingest.errors import LineError, ParseResult
from netsentry.model import KEY_TAGS, Batch

__all__ = ["PRECISIONS", "field_measurement", "iter_line_chunks", "parse_lines"]

#: Nanoseconds per unit for each accepted ``precision`` (InfluxDB 1.x names, plus us).
PRECISIONS: dict[str, int] = {"n": 1, "ns": 1, "u": 10**3, "us": 10**3, "ms": 10**6}
PRECISIONS.update({"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9})

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1
#: A string value may span at most this many physical lines.
MAX_STRING_LINES = 64

_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?").fullmatch
_INT = re.compile(r"-?[0-9]+").fullmatch
_UINT = re.compile(r"[0-9]+").fullmatch
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE).fullmatch
_BOOLS = frozenset({"t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"})
_SAME_NAME_FIELDS = frozenset({"value", "counter", "gauge", "untyped"})
_MEASUREMENT_ESC = frozenset(", ")
_KEY_ESC = frozenset(",= ")
_Search = Callable[[str, int], "re.Match[str] | None"]
_MEASUREMENT_SPECIAL: _Search = re.compile(r"[\\, ]").search
_KEY_SPECIAL: _Search = re.compile(r"[\\,= ]").search
_STRING_SPECIAL: _Search = re.compile(r'[\\"]').search
_VALUE_END: _Search = re.compile(r"[, ]").search
_NOT_SPACE: _Search = re.compile(r"[^ ]").search
_KEY_END: Callable[[str], re.Match[str] | None] = re.compile(r"(?<!\\) ").search


def field_measurement(measurement: str, field_key: str) -> str:
    """Measurement name of the rows made from field ``field_key`` (see module doc)."""
    if field_key in _SAME_NAME_FIELDS:
        return measurement
    if measurement == "prometheus":
        return field_key
    return f"{measurement}_{field_key}"


class _RejectError(Exception):
    """A line is malformed; the message is the reason."""


class _UnterminatedError(_RejectError):
    """A string value runs to the end of the line (it may continue on the next)."""


@dataclass
class _Key:
    """A parsed series key (measurement and tags) and the series of its fields."""

    measurement: str
    tags: tuple[str, ...]
    sids: dict[str, int] = field(default_factory=dict)


def _key(measurement: str, tags: Iterable[tuple[str, str]]) -> _Key:
    if not measurement:
        raise _RejectError("empty measurement")
    seen: dict[str, str] = {}
    for k, v in tags:
        if not k:
            raise _RejectError("missing tag key")
        if not v:
            raise _RejectError(f"missing value for tag {k!r}")
        if k in seen:
            raise _RejectError(f"duplicate tag {k!r}")
        seen[k] = v
    return _Key(measurement, tuple(seen.get(t, "") for t in KEY_TAGS))


def _plain_key(section: str) -> _Key:
    """Series key of a key section without backslashes or quotes."""
    measurement, comma, rest = section.partition(",")
    tags: list[tuple[str, str]] = []
    for pair in rest.split(",") if comma else ():
        k, eq, v = pair.partition("=")
        if not eq:
            raise _RejectError(f"missing '=' in tag {k!r}")
        if "=" in v:
            raise _RejectError(f"unescaped '=' in value of tag {k!r}")
        tags.append((k, v))
    return _key(measurement, tags)


def _number(key: str, raw: str) -> float | None:
    """Numeric value of a field; None for booleans; raises on anything invalid."""
    if _FLOAT(raw):
        value = float(raw)
        if value in (float("inf"), float("-inf")):
            raise _RejectError(f"non-finite value {raw} for field {key!r}")
        return value
    if not raw:
        raise _RejectError(f"missing value for field {key!r}")
    suffix, digits = raw[-1], raw[:-1]
    if suffix == "i" and _INT(digits):
        number = int(digits)
        if not INT64_MIN <= number <= INT64_MAX:
            raise _RejectError(f"integer {raw} out of int64 range for field {key!r}")
        return float(number)
    if suffix == "u" and _UINT(digits):
        number = int(digits)
        if number > UINT64_MAX:
            raise _RejectError(f"unsigned integer {raw} out of uint64 range for field {key!r}")
        return float(number)
    if raw in _BOOLS:
        return None
    if _NON_FINITE(raw):
        raise _RejectError(f"non-finite value {raw} for field {key!r}")
    raise _RejectError(f"invalid field value {raw!r} for field {key!r}")


def _timestamp(raw: str, mult: int) -> int:
    if not _INT(raw):
        raise _RejectError(f"invalid timestamp {raw!r}")
    ts = int(raw) * mult
    if not INT64_MIN <= ts <= INT64_MAX:
        raise _RejectError(f"timestamp {raw} out of range (int64 nanoseconds)")
    return ts


def _read(line: str, i: int, special: _Search, escapes: frozenset[str]) -> tuple[str, int]:
    """Unescaped token from ``line[i:]`` up to an unescaped separator."""
    m = special(line, i)
    if m is None or line[m.start()] != "\\":  # no escapes: the common case
        j = len(line) if m is None else m.start()
        return line[i:j], j
    out: list[str] = []
    start = i
    while (m := special(line, i)) is not None:
        j = m.start()
        if line[j] != "\\":
            out.append(line[start:j])
            return "".join(out), j
        if line[j + 1 : j + 2] in escapes:
            out.append(line[start:j])
            start = j + 1
            i = j + 2
        else:
            i = j + 1
    out.append(line[start:])
    return "".join(out), len(line)


def _skip_spaces(line: str, i: int) -> int:
    m = _NOT_SPACE(line, i)
    return len(line) if m is None else m.start()


def _scan_key(line: str) -> tuple[str, list[tuple[str, str]]]:
    """Measurement and tags of a key section (up to the first unescaped space)."""
    n = len(line)
    measurement, i = _read(line, 0, _MEASUREMENT_SPECIAL, _MEASUREMENT_ESC)
    tags: list[tuple[str, str]] = []
    while i < n and line[i] == ",":
        k, i = _read(line, i + 1, _KEY_SPECIAL, _KEY_ESC)
        if i >= n or line[i] != "=":
            raise _RejectError(f"missing '=' in tag {k!r}")
        v, i = _read(line, i + 1, _KEY_SPECIAL, _KEY_ESC)
        if i < n and line[i] == "=":
            raise _RejectError(f"unescaped '=' in value of tag {k!r}")
        tags.append((k, v))
    return measurement, tags


def _scan_fields(line: str, i: int) -> tuple[list[tuple[str, str | None]], str | None]:
    """Fields (raw value, None for strings) and raw timestamp after the key section."""
    n = len(line)
    i = _skip_spaces(line, i)
    if i >= n:
        raise _RejectError("missing field set")
    fields: list[tuple[str, str | None]] = []
    while True:
        k, i = _read(line, i, _KEY_SPECIAL, _KEY_ESC)
        if i >= n or line[i] != "=":
            raise _RejectError(f"missing '=' in field {k!r}")
        i += 1
        if i < n and line[i] == '"':
            m = _STRING_SPECIAL(line, i + 1)
            while m is not None and line[m.start()] == "\\":
                m = _STRING_SPECIAL(line, m.start() + 2)
            if m is None:
                raise _UnterminatedError(f"unterminated string for field {k!r}")
            i = m.start() + 1
            if i < n and line[i] not in ", ":
                raise _RejectError(f"unexpected text after string value of field {k!r}")
            fields.append((k, None))
        else:
            m = _VALUE_END(line, i)
            end = n if m is None else m.start()
            fields.append((k, line[i:end]))
            i = end
        if i < n and line[i] == ",":
            i += 1
            continue
        break
    i = _skip_spaces(line, i)
    if i >= n:
        return fields, None
    end = line.find(" ", i)
    if end >= 0 and _skip_spaces(line, end) < n:
        raise _RejectError("unexpected text after timestamp")
    return fields, line[i : n if end < 0 else end]


def _values(fields: Iterable[tuple[str, str | None]]) -> tuple[list[tuple[str, float]], int]:
    """Numeric fields of a line and the number of ignored ones; raises on bad fields."""
    seen: set[str] = set()
    out: list[tuple[str, float]] = []
    ignored = 0
    for k, raw in fields:
        if not k:
            raise _RejectError("missing field key")
        if k in seen:
            raise _RejectError(f"duplicate field {k!r}")
        seen.add(k)
        value = None if raw is None else _number(k, raw)
        if value is None:
            ignored += 1
        else:
            out.append((k, value))
    return out, ignored


def _plain_fields(section: str) -> list[tuple[str, str | None]]:
    fields: list[tuple[str, str | None]] = []
    for pair in section.split(","):
        k, eq, raw = pair.partition("=")
        if not eq:
            raise _RejectError(f"missing '=' in field {k!r}")
        fields.append((k, raw))
    return fields


class _Builder:
    """Column lists of the rows parsed so far, with series ids instead of tags."""

    def __init__(self) -> None:
        self.times: list[int] = []
        self.values: list[float] = []
        self.sids: list[int] = []
        self.series: dict[tuple[str, tuple[str, ...]], int] = {}
        self.keys: dict[str, _Key | str] = {}

    def key(self, section: str, parse: Callable[[], _Key] | None = None) -> _Key:
        """The series key of a key section, parsed by ``parse`` when not cached."""
        entry = self.keys.get(section)
        if entry is None:
            if len(self.keys) > 100_000:
                self.keys.clear()
            try:
                entry = _plain_key(section) if parse is None else parse()
            except _RejectError as exc:
                entry = str(exc)
            self.keys[section] = entry
        if isinstance(entry, str):
            raise _RejectError(entry)
        return entry

    def sid(self, key: _Key, field_key: str) -> int:
        sid = key.sids.get(field_key)
        if sid is None:
            name = field_measurement(key.measurement, field_key)
            sid = self.series.setdefault((name, key.tags), len(self.series))
            key.sids[field_key] = sid
        return sid

    def add(self, key: _Key, values: list[tuple[str, float]], ts: int) -> None:
        for k, v in values:
            self.times.append(ts)
            self.values.append(v)
            self.sids.append(self.sid(key, k))

    def batch(self) -> Batch:
        if not self.values:
            return Batch.empty()
        index = pl.Series(self.sids, dtype=pl.UInt32)
        names = [name for name, _ in self.series]
        columns = list(zip(*(tags for _, tags in self.series), strict=True))
        tags = {
            t: pl.Series(col, dtype=pl.String).gather(index)
            for t, col in zip(KEY_TAGS, columns, strict=True)
        }
        measurement = pl.Series(names, dtype=pl.String).gather(index)
        return Batch.from_columns(self.times, measurement, self.values, tags)


def _slow_line(b: _Builder, line: str, mult: int, default_ts: int) -> int:
    """Parse a line with escapes or quotes into ``b``; returns ignored fields."""
    # a separator is escaped exactly when a backslash precedes it ("\\" is no escape)
    m = _KEY_END(line)
    end = len(line) if m is None else m.start()
    section = line[:end]
    entry = b.keys.get(section)
    key = entry if type(entry) is _Key else b.key(section, lambda: _key(*_scan_key(section)))
    fields, ts_raw = _scan_fields(line, end)
    values, ignored = _values(fields)
    b.add(key, values, default_ts if ts_raw is None else _timestamp(ts_raw, mult))
    return ignored


def _fast_line(b: _Builder, line: str, mult: int, default_ts: int) -> int:
    """Parse a line without backslashes or quotes into ``b``; returns ignored fields."""
    parts = line.split(" ")
    if "" in parts:
        parts = [p for p in parts if p]
    entry = b.keys.get(parts[0])
    key = entry if type(entry) is _Key else b.key(parts[0])
    n = len(parts)
    if n == 1:
        raise _RejectError("missing field set")
    section = parts[1]
    if "," in section:
        fields = _plain_fields(section)
        if n > 3:
            raise _RejectError("unexpected text after timestamp")
        values, ignored = _values(fields)
        b.add(key, values, _timestamp(parts[2], mult) if n == 3 else default_ts)
        return ignored
    # the common case, one field, inlined
    k, eq, raw = section.partition("=")
    if not eq:
        raise _RejectError(f"missing '=' in field {k!r}")
    if n > 3:
        raise _RejectError("unexpected text after timestamp")
    if not k:
        raise _RejectError("missing field key")
    value = _number(k, raw)
    ts = _timestamp(parts[2], mult) if n == 3 else default_ts
    if value is None:
        return 1
    sid = key.sids.get(k)
    b.times.append(ts)
    b.values.append(value)
    b.sids.append(b.sid(key, k) if sid is None else sid)
    return 0


def _split(data: str | bytes | Sequence[str]) -> tuple[Sequence[str], dict[int, str]]:
    """Lines of ``data`` and the invalid UTF-8 ones (index → printable text)."""
    text: Sequence[str]
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8-sig").split("\n"), {}
        except UnicodeDecodeError:
            data = data.removeprefix(b"\xef\xbb\xbf")
            text = [line.decode("utf-8", "surrogateescape") for line in data.split(b"\n")]
    elif isinstance(data, str):
        text = data.split("\n")
        if data.isascii():
            return text, {}
    else:
        text = data
    bad: dict[int, str] = {}
    for idx, line in enumerate(text):
        if not line.isascii():
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                bad[idx] = line.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text, bad


def parse_lines(
    data: str | bytes | Sequence[str],
    *,
    precision: str = "ns",
    source: str = "input",
    first_line_no: int = 1,
    now_ns: int | None = None,
) -> ParseResult:
    """Parse line protocol; bad lines become errors, good lines rows.

    Parameters
    ----------
    data : str, bytes or sequence of str
        Line protocol text (bytes must be UTF-8), or its lines without newlines.
    precision : str
        Unit of the timestamps: ``n``/``ns``, ``u``/``us``, ``ms``, ``s``, ``m``, ``h``.
    source : str
        Name of the input, for the errors.
    first_line_no : int
        Line number of the first line of ``data``.
    now_ns : int, optional
        Time of lines without a timestamp (default: now).

    Returns
    -------
    ParseResult
    """
    mult = PRECISIONS.get(precision)
    if mult is None:
        raise ValueError(
            f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
        )
    now = time.time_ns() if now_ns is None else now_ns
    default_ts = now - now % mult
    lines, bad_utf8 = _split(data)
    b = _Builder()
    errors: list[LineError] = []
    seen = ignored = 0
    n = len(lines)
    i = 0
    while i < n:
        raw = lines[i]
        idx = i
        i += 1
        line = raw.strip(" \t\r")
        if not line or line[0] == "#":
            continue
        seen += 1
        try:
            if bad_utf8 and idx in bad_utf8:
                raise _RejectError("invalid UTF-8")
            if "\\" in line or '"' in line:
                try:
                    ignored += _slow_line(b, line, mult, default_ts)
                except _UnterminatedError:
                    i, added = _continued(b, lines, bad_utf8, idx, mult, default_ts)
                    ignored += added
            else:
                ignored += _fast_line(b, line, mult, default_ts)
        except _RejectError as exc:
            text = bad_utf8.get(idx, raw.rstrip("\r"))
            errors.append(LineError.make(source, first_line_no + idx, str(exc), text))
    return ParseResult(b.batch(), errors, seen, ignored)


def _continued(
    b: _Builder, lines: Sequence[str], bad: dict[int, str], idx: int, mult: int, default_ts: int
) -> tuple[int, int]:
    """Retry line ``idx`` joined with the next lines, for a string spanning lines.

    Returns the index of the next unused line and the ignored fields.
    """
    text = lines[idx]
    stop = min(len(lines), idx + MAX_STRING_LINES)
    for j in range(idx + 1, stop):
        if j in bad:
            break
        text = f"{text}\n{lines[j]}"
        if '"' not in lines[j]:
            continue
        try:
            return j + 1, _slow_line(b, text.strip(" \t\r"), mult, default_ts)
        except _UnterminatedError:
            continue
        except _RejectError:
            break
    return idx + 1, _slow_line(b, lines[idx].strip(" \t\r"), mult, default_ts)


def iter_line_chunks(
    stream: BinaryIO | TextIO, chunk_lines: int = 100_000
) -> Iterator[tuple[int, list[str]]]:
    """Read ``stream`` in chunks of lines, for :func:`parse_lines` on big inputs.

    Yields ``(first_line_no, lines)`` with the newlines removed. Binary streams are
    decoded as UTF-8 with invalid bytes kept as surrogates, which ``parse_lines``
    reports as invalid lines. Open text streams with ``newline="\\n"`` so that a
    lone ``\\r`` does not split a line. A string value spanning lines across a chunk
    boundary is reported as unterminated.
    """
    if chunk_lines < 1:
        raise ValueError("chunk_lines must be positive")
    first = 1
    chunk: list[str] = []
    for item in stream:
        text = item.decode("utf-8", "surrogateescape") if isinstance(item, bytes) else item
        if first == 1 and not chunk and text.startswith("\ufeff"):
            text = text[1:]
        chunk.append(text[:-1] if text.endswith("\n") else text)
        if len(chunk) >= chunk_lines:
            yield first, chunk
            first += len(chunk)
            chunk = []
    if chunk:
        yield first, chunk
