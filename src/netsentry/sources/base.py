"""Pull sources: systems of record that netsentry reads (InfluxDB, Prometheus, ...).

A source only yields Batches. ``pull(since_ns, until_ns)`` returns every point with
``since_ns < time <= until_ns``; the caller lands them in the inbox and advances the
source's watermark to ``until_ns`` in one transaction (``Store.append``), so a failed
or interrupted pull leaves the watermark where it was and nothing is lost or counted
twice. ``until_ns`` lags the wall clock by the source's allowed lateness, so points
written a little late still fall in a later window.

A source that is down, slow or answers garbage raises :class:`SourceError` with a
message that says what and where; it must never return a partial window as complete.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from netsentry.model import Batch


class SourceError(RuntimeError):
    """A source could not deliver a window of points (the message says why)."""


@runtime_checkable
class Source(Protocol):
    #: unique name, also the checkpoint name in the store (e.g. ``influxdb:riot``)
    name: str
    #: how far behind the wall clock a window must end (ns)
    lateness_ns: int

    def pull(self, since_ns: int, until_ns: int) -> Batch: ...
