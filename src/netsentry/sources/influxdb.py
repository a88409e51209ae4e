"""InfluxDB 1.x source: InfluxQL over HTTP.

:class:`InfluxQLSource` asks ``/query`` (``epoch=ns``, ``chunked=true``), once per
measurement, ``SELECT * FROM "<rp>"."<m>" WHERE time > <since> AND time <= <until>
GROUP BY *`` and reads the answer one JSON chunk at a time. ``GROUP BY *`` puts each
series' tags in its ``tags`` object and leaves only fields as columns (without it a
string field and a tag look alike, and a tag named like a field is renamed ``x_1``).
Integer times in InfluxQL are nanoseconds, so a window is exactly ``since < t <= until``.

As for line protocol, numeric field ``f`` of ``m`` becomes the measurement
:func:`~netsentry.ingest.lineprotocol.field_measurement` ``(m, f)``; string and boolean
values are skipped and counted (``ignored_fields``), so are NaN and ±inf
(``non_finite``); tags named like :data:`~netsentry.model.KEY_TAGS` are the entity.
InfluxDB 2.x is read by :mod:`netsentry.sources.influxdb2` (Flux).

A server that is down, slow (``timeout_s`` per connect or read) or answers an error or
garbage raises :class:`SourceError`: a window is returned whole or not at all.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, cast

import httpx
import numpy as np
import numpy.typing as npt
import polars as pl

from netsentry.ingest.lineprotocol import field_measurement
from netsentry.model import KEY_TAGS, Batch
from netsentry.sources.base import SourceError

__all__ = ["InfluxQLSource", "influxql_identifier"]

log = logging.getLogger(__name__)

_NUMBERS = (int, float)  # JSON numbers; bool is its own type(), so it is not one of them
_SKIPPED = frozenset({str, bool})
_KNOWN = frozenset({int, float, str, bool, type(None)})
_EPOCH = datetime(1970, 1, 1)


def influxql_identifier(name: str) -> str:
    r"""Double-quoted InfluxQL identifier (``\`` and ``"`` escaped).

    >>> print(influxql_identifier('we"ird\\x'))
    "we\"ird\\x"
    """
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class _Columns:
    """Points of one pull: numpy chunks per series, tags stored once per series."""

    def __init__(self) -> None:
        self.times: list[npt.NDArray[np.int64]] = []
        self.values: list[npt.NDArray[np.float64]] = []
        self.sids: list[npt.NDArray[np.uint32]] = []
        self.series: dict[tuple[str, tuple[str, ...]], int] = {}
        self.ignored_fields = 0
        self.non_finite = 0

    def add(self, measurement: str, series: dict[str, Any]) -> None:
        """Add one series object of an InfluxQL result; raises ValueError if malformed."""
        columns, rows = series["columns"], series.get("values") or []
        tags = series.get("tags") or {}
        if not isinstance(columns, list) or not columns or columns[0] != "time":
            raise ValueError(f"columns {str(columns)[:100]} do not start with time")
        if not isinstance(rows, list) or not isinstance(tags, dict):
            raise ValueError("values or tags of the wrong type")
        if not rows:
            return
        if set(map(type, rows)) != {list} or set(map(len, rows)) != {len(columns)}:
            raise ValueError(f"rows that are not lists of {len(columns)} cells")
        key = tuple(tags.get(t) or "" for t in KEY_TAGS)
        if not all(isinstance(v, str) for v in key):
            raise ValueError(f"non-string tag values in {str(tags)[:100]}")
        cells = list(zip(*rows, strict=True))
        if set(map(type, cells[0])) != {int}:
            raise ValueError("times that are not integers (epoch=ns)")
        times = np.array(cells[0], dtype=np.int64)
        for field_key, column in zip(columns[1:], cells[1:], strict=True):
            values, numeric = self._numbers(column)
            if values is None:
                continue
            keep = np.isfinite(values)
            if numeric is not None:
                keep &= numeric
            kept = int(np.count_nonzero(keep))
            self.non_finite += (keep.size if numeric is None else int(numeric.sum())) - kept
            name = field_measurement(measurement, str(field_key))
            sid = self.series.setdefault((name, key), len(self.series))
            whole = kept == keep.size
            self.times.append(times if whole else times[keep])
            self.values.append(values if whole else values[keep])
            self.sids.append(np.full(kept, sid, dtype=np.uint32))

    def _numbers(
        self, column: tuple[Any, ...]
    ) -> tuple[npt.NDArray[np.float64] | None, npt.NDArray[np.bool_] | None]:
        """Float values of a field column and which cells are numbers (None: all)."""
        kinds = set(map(type, column))
        if kinds <= {int, float}:
            return np.array(column, dtype=np.float64), None
        if not kinds <= _KNOWN:
            raise ValueError(f"field values of type {sorted(k.__name__ for k in kinds)}")
        self.ignored_fields += sum(type(v) in _SKIPPED for v in column)
        if kinds <= {str, bool, type(None)}:
            return None, None
        keep = np.fromiter((type(v) in _NUMBERS for v in column), bool, len(column))
        values = [v if k else 0.0 for v, k in zip(column, keep, strict=True)]
        return np.array(values, dtype=np.float64), keep

    def batch(self) -> Batch:
        if not self.times:
            return Batch.empty()
        sid = pl.Series(np.concatenate(self.sids))
        names = pl.Series([name for name, _ in self.series], dtype=pl.String)
        columns = list(zip(*(key for _, key in self.series), strict=True))
        tags = {
            t: pl.Series(col, dtype=pl.String).gather(sid)
            for t, col in zip(KEY_TAGS, columns, strict=True)
        }
        return Batch.from_columns(
            np.concatenate(self.times), names.gather(sid), np.concatenate(self.values), tags
        )


def _json_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Newline-separated JSON documents of a chunked body, as they arrive."""
    pending: list[bytes] = []
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            pending.append(chunk[start:end])
            line = b"".join(pending)
            pending.clear()
            start = end + 1
            if line.strip():
                yield line
        if start < len(chunk):
            pending.append(chunk[start:])
    tail = b"".join(pending)
    if tail.strip():
        yield tail


class InfluxQLSource:
    """Reads an InfluxDB 1.x database through InfluxQL over HTTP.

    Parameters
    ----------
    url, database : str
        Base URL of the server (``http://127.0.0.1:8086``) and the database.
    measurements : list of str, optional
        Measurements to read; all of the database's (``SHOW MEASUREMENTS``) if None.
    username, password : str, optional
        HTTP Basic credentials, from the configuration.
    retention_policy : str, optional
        Read this retention policy instead of the database's default one.
    lateness_ns, timeout_s, chunk_size
        Lag behind the wall clock; limit per connect or read; points per chunk.
    name : str, optional
        Source (checkpoint) name, ``influxdb:<database>`` by default.
    """

    def __init__(
        self,
        url: str,
        database: str,
        measurements: list[str] | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        retention_policy: str | None = None,
        lateness_ns: int = 60_000_000_000,
        timeout_s: float = 30.0,
        chunk_size: int = 10_000,
        name: str | None = None,
    ) -> None:
        if measurements is not None and not measurements:
            raise ValueError("measurements must be None (all) or a non-empty list")
        if chunk_size < 1 or timeout_s <= 0:
            raise ValueError("chunk_size and timeout_s must be positive")
        self.url = url.rstrip("/")
        self.database = database
        self.measurements = list(measurements) if measurements is not None else None
        self.retention_policy = retention_policy
        self.lateness_ns = int(lateness_ns)
        self.timeout_s = timeout_s
        self.chunk_size = chunk_size
        self.name = name or f"influxdb:{database}"
        self._auth = (username, password or "") if username is not None else None
        #: string and boolean field values skipped so far
        self.ignored_fields = 0
        #: NaN and ±inf values skipped so far
        self.non_finite = 0

    def window_query(self, measurement: str, since_ns: int, until_ns: int) -> str:
        """The InfluxQL statement that reads ``measurement`` for ``since < t <= until``."""
        source = influxql_identifier(measurement)
        if self.retention_policy is not None:
            source = f"{influxql_identifier(self.retention_policy)}.{source}"
        bounds = f"time > {int(since_ns)} AND time <= {int(until_ns)}"
        return f"SELECT * FROM {source} WHERE {bounds} GROUP BY *"  # noqa: S608 (quoted, ints)

    def pull(self, since_ns: int, until_ns: int) -> Batch:
        """Every point with ``since_ns < time <= until_ns``; raises SourceError."""
        if until_ns <= since_ns:
            return Batch.empty()
        columns = _Columns()
        with httpx.Client(timeout=self.timeout_s, auth=self._auth) as client:
            names = self.measurements or self._show_measurements(client)
            for measurement in names:
                query = self.window_query(measurement, since_ns, until_ns)
                where = f"measurement {measurement!r}"
                for series in self._series(client, query, where):
                    try:
                        columns.add(measurement, series)
                    except (ValueError, TypeError, KeyError, OverflowError) as err:
                        raise self._error(where, f"unexpected series: {err}") from err
        self.ignored_fields += columns.ignored_fields
        self.non_finite += columns.non_finite
        return columns.batch()

    def _show_measurements(self, client: httpx.Client) -> list[str]:
        names: list[str] = []
        for series in self._series(client, "SHOW MEASUREMENTS", "SHOW MEASUREMENTS"):
            rows = series.get("values") or []
            if not all(isinstance(r, list) and r and isinstance(r[0], str) for r in rows):
                raise self._error("SHOW MEASUREMENTS", f"unexpected rows {str(rows)[:200]}")
            names.extend(r[0] for r in rows)
        if not names:  # influxd lists nothing for a missing database: ask in a way that fails
            policies = self._series(client, "SHOW RETENTION POLICIES", "SHOW RETENTION POLICIES")
            collections.deque(policies, maxlen=0)  # drain it: an error raises SourceError
        return names

    def _error(self, where: str, what: str) -> SourceError:
        return SourceError(f"{self.url}/query (db {self.database!r}, {where}): {what}")

    def _series(self, client: httpx.Client, query: str, where: str) -> Iterator[dict[str, Any]]:
        """Series objects of a chunked answer, checked for errors chunk by chunk."""
        params = {"db": self.database, "q": query, "epoch": "ns", "chunked": "true",
                  "chunk_size": str(self.chunk_size)}  # fmt: skip
        try:
            with client.stream("GET", f"{self.url}/query", params=params) as response:
                if response.status_code != 200:
                    body = response.read().decode("utf-8", "replace")
                    try:
                        body = json.loads(body)["error"]
                    except (ValueError, KeyError, TypeError):
                        body = body[:200]
                    raise self._error(where, f"HTTP {response.status_code}: {body}")
                partial: bool | None = None
                for line in _json_lines(response.iter_bytes()):
                    for result in self._results(line, where):
                        partial = bool(result.get("partial"))
                        yield from result.get("series") or ()
                if partial is None:
                    raise self._error(where, "empty response")
                if partial:
                    raise self._error(where, "response ended in the middle of a result")
        except httpx.TimeoutException as err:
            raise self._error(where, f"timed out ({self.timeout_s} s): {err!r}") from err
        except httpx.HTTPError as err:
            raise self._error(where, f"{type(err).__name__}: {err}") from err

    def _results(self, line: bytes, where: str) -> list[dict[str, Any]]:
        try:
            chunk = json.loads(line)
        except ValueError as err:
            raise self._error(where, f"malformed JSON ({err}): {line[:200]!r}") from err
        if isinstance(chunk, dict) and "error" in chunk:
            raise self._error(where, f"error: {chunk['error']}")
        results = chunk.get("results") if isinstance(chunk, dict) else None
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise self._error(where, f"unexpected JSON: {line[:200]!r}")
        for result in results:
            if "error" in result:
                raise self._error(where, f"error: {result['error']}")
            if not isinstance(result.get("series") or [], list):
                raise self._error(where, f"unexpected JSON: {line[:200]!r}")
        return cast(list[dict[str, Any]], results)
