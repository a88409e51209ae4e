"""Conversations: flows grouped by IP pair and server port into per-interval series.

A conversation is the entity ``(src, dst, dstp, proto, service)`` of a flow: the
originator, the responder, the responder's port (the *server* port: flows of a
conversation come from many ephemeral client ports, so ``srcp`` is left empty), the
transport and the application protocol the sensor saw. A flow whose service the sensor
could not tell (``""``) belongs to another conversation than the identified ones on the
same port, so a port that starts speaking another protocol shows as a new entity.

Per conversation and interval (default 1 h, aligned to the epoch; a flow belongs to
the interval of its start) :class:`ConversationSeries` emits a
:class:`~netsentry.model.Batch` row for each of these measurements:

``conn_bytes_out``, ``conn_bytes_in``, ``conn_packets_out``, ``conn_packets_in``
    Sums over the flows, out = originator → responder (unknown counts add nothing).
``conn_flows``
    Number of flows.
``conn_gap_s``
    Mean time, in seconds, from each flow's start to the start of the conversation's
    previous flow (which may lie in an earlier interval). No row when no flow of the
    interval has a predecessor (the conversation's first flow).

A row's ``time`` is the *end* of its interval (exclusive), as a counter's increase is
stamped when it is read: the value is complete at that time. Intervals without flows
emit nothing. The rows are measurements like any other, so the z-score detector learns
a baseline per conversation.

Flows arrive unordered. Event time with a bounded lateness: the *watermark* is the
latest flow start seen minus ``lateness_s``; an interval is emitted once the watermark
reaches its end. A flow for an interval already emitted is *late*: it is dropped and
counted in :attr:`ConversationSeries.late_` (its interval's values stay as emitted).
Sensors log a flow when it ends, so ``lateness_s`` should cover their flow timeouts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from netsentry.detect.base import State, StateMismatchError, fingerprint
from netsentry.flows.schema import Flows, frame_from_state, frame_to_state
from netsentry.model import Batch

__all__ = [
    "CONVERSATION_TAGS",
    "MEASUREMENTS",
    "ConversationSeries",
    "conversation_rows",
    "conversations",
]

CONVERSATION_TAGS: tuple[str, ...] = ("src", "dst", "dstp", "proto", "service")
_SUMS = ("bytes_out", "bytes_in", "packets_out", "packets_in")
MEASUREMENTS: tuple[str, ...] = (*(f"conn_{s}" for s in _SUMS), "conn_flows", "conn_gap_s")
_TAG_SCHEMA: dict[str, Any] = {t: pl.String for t in CONVERSATION_TAGS}
_PENDING_SCHEMA: dict[str, Any] = {**_TAG_SCHEMA, "start": pl.Int64}
_PENDING_SCHEMA.update({s: pl.Int64 for s in _SUMS})
_LAST_SCHEMA: dict[str, Any] = {**_TAG_SCHEMA, "last_start": pl.Int64}
_NS = 1_000_000_000


def conversation_rows(flows: Flows) -> pl.DataFrame:
    """Conversation tags (``dstp`` as text, ``""`` when none), start and counts."""
    return flows.frame.select(
        "src",
        "dst",
        pl.col("dstp").cast(pl.String).fill_null(""),
        "proto",
        "service",
        "start",
        *_SUMS,
    )


def _nanoseconds(seconds: float, name: str, minimum: float) -> int:
    if not np.isfinite(seconds) or seconds < minimum:
        raise ValueError(f"{name} must be a finite number of seconds >= {minimum}, got {seconds}")
    return round(seconds * _NS)


class ConversationSeries:
    """Per-interval conversation measurements from unordered flows (see module doc).

    Parameters
    ----------
    interval_s : float
        Interval length in seconds (intervals are aligned to the epoch).
    lateness_s : float
        How far behind the latest flow start a flow may arrive and still count.

    Examples
    --------
    >>> import polars as pl
    >>> from netsentry.flows.schema import FLOW_SCHEMA, Flows
    >>> row = dict(src="10.0.0.1", dst="10.0.0.2", srcp=50000, dstp=443, proto="tcp",
    ...            service="ssl", bytes_out=100, bytes_in=900, packets_out=3,
    ...            packets_in=4, state="SF", source="doc")
    >>> flows = Flows(pl.DataFrame([dict(row, start=s * 10**9, end=s * 10**9)
    ...                             for s in (10, 70, 3700)], schema=FLOW_SCHEMA))
    >>> series = ConversationSeries(interval_s=3600, lateness_s=0)
    >>> batch = series.update(flows)  # the watermark (3700 s) closes the first hour
    >>> dict(zip(batch.frame["measurement"], batch.frame["value"]))["conn_gap_s"]
    60.0
    >>> len(series.flush().only("conn_flows"))  # the second hour, at the end of input
    1
    """

    def __init__(self, interval_s: float = 3600.0, lateness_s: float = 600.0) -> None:
        self.interval_s = interval_s
        self.lateness_s = lateness_s
        self._interval = _nanoseconds(interval_s, "interval_s", 1e-9)
        self._lateness = _nanoseconds(lateness_s, "lateness_s", 0.0)
        self.pending_ = pl.DataFrame(schema=_PENDING_SCHEMA)
        self.last_start_ = pl.DataFrame(schema=_LAST_SCHEMA)
        self.max_start_: int | None = None
        self.emitted_until_: int | None = None
        self.late_ = 0

    @property
    def watermark(self) -> int | None:
        """Latest flow start seen minus the lateness (ns), None before any flow."""
        return None if self.max_start_ is None else self.max_start_ - self._lateness

    def update(self, flows: Flows) -> Batch:
        """Take a chunk of flows; return the rows of the intervals it closed."""
        rows = conversation_rows(flows)
        if self.emitted_until_ is not None:
            on_time = pl.col("start") >= self.emitted_until_
            self.late_ += rows.height - rows.filter(on_time).height
            rows = rows.filter(on_time)
        if rows.height:
            latest = int(rows["start"].max())  # type: ignore[arg-type]
            self.max_start_ = latest if self.max_start_ is None else max(self.max_start_, latest)
            self.pending_ = pl.concat([self.pending_, rows], how="vertical")
        if self.watermark is None:
            return Batch.empty()
        return self._emit(self.watermark // self._interval * self._interval)

    def flush(self) -> Batch:
        """Emit every pending interval (end of input); later flows for them are late."""
        if self.max_start_ is None:
            return Batch.empty()
        return self._emit((self.max_start_ // self._interval + 1) * self._interval)

    def _emit(self, until: int) -> Batch:
        if self.emitted_until_ is not None and until <= self.emitted_until_:
            return Batch.empty()
        self.emitted_until_ = until
        ready = self.pending_.filter(pl.col("start") < until)
        if not ready.height:
            return Batch.empty()
        self.pending_ = self.pending_.filter(pl.col("start") >= until)
        batch = _aggregate(ready, self.last_start_, self._interval)
        last = ready.group_by(CONVERSATION_TAGS).agg(pl.col("start").max().alias("last_start"))
        self.last_start_ = (
            pl.concat([self.last_start_, last], how="vertical")
            .group_by(CONVERSATION_TAGS)
            .agg(pl.col("last_start").max())
            .sort(CONVERSATION_TAGS)
        )
        return batch

    def fingerprint(self) -> str:
        params = {"interval_ns": self._interval, "lateness_ns": self._lateness, "version": 1}
        return fingerprint({"component": "conversations", **params})

    def state_dict(self) -> State:
        """Pending flows, last flow start per conversation, watermark and counters."""
        return {
            "fingerprint": self.fingerprint(),
            **frame_to_state(self.pending_, "pending"),
            **frame_to_state(self.last_start_, "last"),
            "max_start": np.array([] if self.max_start_ is None else [self.max_start_]),
            "emitted_until": np.array([] if self.emitted_until_ is None else [self.emitted_until_]),
            "late": self.late_,
        }

    def load_state(self, state: State) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise StateMismatchError("conversation state fingerprint does not match")
        self.pending_ = frame_from_state(state, "pending", _PENDING_SCHEMA)
        self.last_start_ = frame_from_state(state, "last", _LAST_SCHEMA)
        max_start, emitted = np.asarray(state["max_start"]), np.asarray(state["emitted_until"])
        self.max_start_ = int(max_start[0]) if max_start.size else None
        self.emitted_until_ = int(emitted[0]) if emitted.size else None
        self.late_ = int(state["late"])


def _aggregate(ready: pl.DataFrame, last_start: pl.DataFrame, interval: int) -> Batch:
    """Rows of the measurements for flows of closed intervals (see module doc)."""
    tags = list(CONVERSATION_TAGS)
    previous = pl.col("start").shift(1).over(tags).fill_null(pl.col("last_start"))
    per_flow = (
        ready.sort([*tags, "start"])
        .join(last_start, on=tags, how="left", maintain_order="left")
        .with_columns(
            (pl.col("start") - previous).alias("gap_ns"),
            ((pl.col("start") // interval + 1) * interval).alias("time"),
        )
    )
    wide = per_flow.group_by([*tags, "time"]).agg(
        *(pl.col(s).sum().cast(pl.Float64).alias(f"conn_{s}") for s in _SUMS),
        pl.len().cast(pl.Float64).alias("conn_flows"),
        (pl.col("gap_ns").mean() / _NS).alias("conn_gap_s"),
    )
    long = (
        wide.unpivot(
            index=[*tags, "time"],
            on=list(MEASUREMENTS),
            variable_name="measurement",
            value_name="value",
        )
        .drop_nulls("value")
        .sort(["time", "measurement", *tags])
    )
    return Batch.from_columns(
        long["time"], long["measurement"], long["value"], {t: long[t] for t in tags}
    )


def conversations(flows: Flows, interval_s: float = 3600.0) -> Batch:
    """All conversation rows of a complete set of flows (no lateness: nothing is late)."""
    series = ConversationSeries(interval_s=interval_s, lateness_s=0.0)
    return Batch.concat([series.update(flows), series.flush()])
