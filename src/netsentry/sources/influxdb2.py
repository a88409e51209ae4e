"""InfluxDB 2.x source: Flux through the official ``influxdb-client``.

:class:`FluxSource` runs :func:`flux_window_query` with ``influxdb-client`` and reads
the annotated CSV with :func:`~netsentry.ingest.influx_csv.read_influx_csv`: bad rows
are kept in ``errors``, Flux's in-band error table is a :class:`SourceError`.
:func:`flux_tag_values` is the seed's ``schema.tagValues`` query.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TextIO, cast

from netsentry.ingest.errors import LineError, ParseResult
from netsentry.ingest.influx_csv import read_influx_csv
from netsentry.model import Batch
from netsentry.sources.base import SourceError

__all__ = ["FluxSource", "flux_tag_values", "flux_window_query", "parse_flux_csv"]

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1)


def flux_string(text: str) -> str:
    r"""Flux string literal: ``\``, ``"`` and the ``${`` of interpolation escaped.

    >>> print(flux_string('a "b" \\ ${c}'))
    "a \"b\" \\ \${c}"
    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def rfc3339_ns(ns: int) -> str:
    """RFC 3339 UTC time with 9 fractional digits of ``ns`` since the epoch.

    >>> rfc3339_ns(1_639_008_000_000_000_001)
    '2021-12-09T00:00:00.000000001Z'
    """
    seconds, fraction = divmod(int(ns), 1_000_000_000)
    return f"{(_EPOCH + timedelta(seconds=seconds)).isoformat()}.{fraction:09d}Z"


def flux_window_query(bucket: str, measurement: str | None, since_ns: int, until_ns: int) -> str:
    """Flux reading ``measurement`` (all if None) for ``since < t <= until``.

    ``range`` includes its start and excludes its stop, hence both bounds + 1 ns.
    """
    start, stop = rfc3339_ns(since_ns + 1), rfc3339_ns(until_ns + 1)
    query = (
        f"from(bucket: {flux_string(bucket)})\n"
        f"    |> range(start: time(v: {flux_string(start)}), stop: time(v: {flux_string(stop)}))"
    )
    if measurement is not None:
        query += f"\n    |> filter(fn: (r) => r._measurement == {flux_string(measurement)})"
    return query


def flux_tag_values(bucket: str, tag: str, hours: int) -> str:
    """The seed's query: values of ``tag`` in ``bucket`` over the last ``hours``."""
    if int(hours) < 1:
        raise ValueError(f"hours must be at least 1, got {hours}")
    return (
        'import "influxdata/influxdb/schema"\n\n'
        f"schema.tagValues(bucket: {flux_string(bucket)}, tag: {flux_string(tag)}, "
        f"start: -{int(hours)}h)"
    )


class _ErrorTable:
    """Lines of an annotated CSV answer, catching Flux's in-band error table."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self._header = False
        self.error: str | None = None

    def __iter__(self) -> _ErrorTable:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        if self._header and self.error is None and line.strip():
            row = next(csv.reader([line]), [])
            self.error = row[1] if len(row) > 1 and row[1] else line.strip()
        elif line.rstrip("\r\n") == ",error,reference":
            self._header = True
        return line


def parse_flux_csv(lines: Iterable[str], source: str) -> ParseResult:
    """Read a Flux query's annotated CSV answer; raises SourceError on an error table."""
    watch = _ErrorTable(lines)
    try:
        result = read_influx_csv(cast(TextIO, watch), source_name=source)
    except ValueError as err:  # includes UnicodeDecodeError
        raise SourceError(f"{source}: {err}") from err
    if watch.error is not None:
        raise SourceError(f"{source}: query failed: {watch.error}")
    return result


class FluxSource:
    """Reads an InfluxDB 2.x bucket through Flux (``influxdb-client``).

    Parameters
    ----------
    url, token, org, bucket : str
        Server, API token (from the configuration), organization and bucket.
    measurements : list of str, optional
        Measurements to read; the whole bucket in one query if None.
    lateness_ns, timeout_s, name
        As for :class:`InfluxQLSource`; ``name`` defaults to ``influxdb2:<org>/<bucket>``.
    """

    def __init__(
        self,
        url: str,
        token: str,
        org: str,
        bucket: str,
        measurements: list[str] | None = None,
        *,
        lateness_ns: int = 60_000_000_000,
        timeout_s: float = 30.0,
        name: str | None = None,
    ) -> None:
        if measurements is not None and not measurements:
            raise ValueError("measurements must be None (all) or a non-empty list")
        self.url, self.org, self.bucket = url.rstrip("/"), org, bucket
        self._token = token
        self.measurements = list(measurements) if measurements is not None else None
        self.lateness_ns = int(lateness_ns)
        self.timeout_s = timeout_s
        self.name = name or f"influxdb2:{org}/{bucket}"
        #: rows of the last pull that could not be read (bad time or value...)
        self.errors: list[LineError] = []
        #: unreadable rows so far, and string or boolean values skipped so far
        self.rejected = 0
        self.ignored_fields = 0

    def pull(self, since_ns: int, until_ns: int) -> Batch:
        """Every point with ``since_ns < time <= until_ns``; raises SourceError."""
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from urllib3.exceptions import HTTPError

        if until_ns <= since_ns:
            return Batch.empty()
        results: list[ParseResult] = []
        measurements: list[str | None] = [*self.measurements] if self.measurements else [None]
        timeout_ms = round(self.timeout_s * 1000)
        with InfluxDBClient(url=self.url, token=self._token, org=self.org, timeout=timeout_ms) as c:
            api = c.query_api()
            for measurement in measurements:
                where = f"{self.url}/api/v2/query ({self.org}/{self.bucket}, {measurement!r})"
                query = flux_window_query(self.bucket, measurement, since_ns, until_ns)
                try:
                    response = api.query_raw(query, org=self.org)
                    response.auto_close = False  # else it closes at EOF, under TextIOWrapper
                    with io.TextIOWrapper(response, encoding="utf-8", newline="") as text:
                        results.append(parse_flux_csv(text, where))
                except InfluxDBError as err:
                    status = getattr(err.response, "status", "?")
                    raise SourceError(f"{where}: HTTP {status}: {err.message}") from err
                except (HTTPError, OSError) as err:
                    raise SourceError(f"{where}: {type(err).__name__}: {err}") from err
        self.errors = [e for r in results for e in r.errors]
        self.rejected += len(self.errors)
        self.ignored_fields += sum(r.ignored_fields for r in results)
        if self.errors:
            log.warning("%s: %d rows rejected, first: %s", self.name, len(self.errors),
                        self.errors[0])  # fmt: skip
        return Batch.concat([r.batch for r in results])
