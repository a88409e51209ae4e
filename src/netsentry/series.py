"""Measurement kinds, from OpenMetrics naming, and what the detector sees of each.

``gauge``
    Any measurement not named below: used as it is.
``counter`` (``*_total``)
    A monotonically increasing count. The detector sees its *increase per interval*:
    ``(v - v_prev) * interval / (t - t_prev)`` between consecutive samples of the same
    entity (never across entities, the reference implementation's bug). A counter
    reset, seen as ``v < v_prev`` or as a change of the family's ``*_created``
    timestamp at the same time, means the counter restarted from zero: the increase
    is ``v`` itself. An entity's first sample only sets the starting point.
``created`` (``*_created``)
    The creation time of the family's counter (a Unix timestamp), not traffic: it is
    never z-scored. A change of it for an entity marks a reset or a new flow entry;
    the resets are counted and passed to the matching ``*_total`` counter.

Samples of an entity at or before its last processed time are late: they are dropped
and counted, never folded in out of order. Two samples with the same entity and time
keep the last one, as InfluxDB overwrites a point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from netsentry.detect.base import State, StateMismatchError, fingerprint
from netsentry.model import Batch

Kind = Literal["gauge", "counter", "created"]


def kind_of(measurement: str) -> Kind:
    if measurement.endswith("_total"):
        return "counter"
    if measurement.endswith("_created"):
        return "created"
    return "gauge"


def family(measurement: str) -> str:
    """``tdmp_bytes_total`` and ``tdmp_bytes_created`` both belong to ``tdmp_bytes``."""
    for suffix in ("_total", "_created"):
        if measurement.endswith(suffix):
            return measurement[: -len(suffix)]
    return measurement


def latest_per_key(frame: pl.DataFrame) -> pl.DataFrame:
    """Drop repeated (key, time) samples, keeping the last, sorted by key and time."""
    return frame.unique(subset=["key", "time"], keep="last", maintain_order=True).sort(
        ["key", "time"]
    )


@dataclass
class Progress:
    """What a transform did to one batch, for the check report."""

    late: int = 0
    resets: int = 0


class _LastSample:
    """State shared by the transforms: the last processed sample of each entity."""

    kind: Kind

    def __init__(self) -> None:
        self.state_ = pl.DataFrame(schema=self._schema())

    def _schema(self) -> dict[str, Any]:
        return {
            "key": pl.UInt64,
            "last_time": pl.Int64,
            "last_value": pl.Float64,
            "resets": pl.Int64,
        }

    def _with_previous(self, batch: Batch) -> tuple[pl.DataFrame, int]:
        rows = latest_per_key(batch.frame).join(self.state_, on="key", how="left")
        on_time = pl.col("last_time").is_null() | (pl.col("time") > pl.col("last_time"))
        late = rows.height - rows.filter(on_time).height
        rows = rows.filter(on_time).with_columns(
            prev_value=pl.col("value").shift(1).over("key").fill_null(pl.col("last_value")),
            prev_time=pl.col("time").shift(1).over("key").fill_null(pl.col("last_time")),
        )
        return rows, late

    def _advance(self, rows: pl.DataFrame, resets: pl.DataFrame) -> None:
        counts = resets.group_by("key").agg(pl.len().cast(pl.Int64).alias("new_resets"))
        last = (
            rows.group_by("key")
            .agg(
                pl.col("time").last().alias("last_time"), pl.col("value").last().alias("last_value")
            )
            .join(self.state_.select("key", "resets"), on="key", how="left")
            .join(counts, on="key", how="left")
            .with_columns(resets=pl.col("resets").fill_null(0) + pl.col("new_resets").fill_null(0))
            .select(list(self._schema()))
        )
        self.state_ = pl.concat(
            [self.state_.join(last.select("key"), on="key", how="anti"), last]
        ).sort("key")

    def fingerprint(self) -> str:
        return fingerprint({"transform": self.kind, "layout": list(self._schema()), "version": 1})

    def state_dict(self) -> State:
        return {
            "fingerprint": self.fingerprint(),
            **{c: self.state_[c].to_numpy().copy() for c in self._schema()},
        }

    def load_state(self, state: State) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise StateMismatchError(f"{self.kind} state fingerprint does not match")
        self.state_ = pl.DataFrame(
            {c: pl.Series(c, state[c], dtype=t) for c, t in self._schema().items()}
        )


class CreatedTracker(_LastSample):
    """Finds the resets in a ``*_created`` series."""

    kind: Kind = "created"

    def resets(self, batch: Batch) -> tuple[pl.DataFrame, Progress]:
        """Return the (key, time) of every reset and advance the state."""
        rows, late = self._with_previous(batch)
        changed = rows.filter(
            pl.col("prev_value").is_not_null() & (pl.col("value") != pl.col("prev_value"))
        ).select("key", "time")
        self._advance(rows, changed)
        return changed, Progress(late=late, resets=changed.height)


class CounterIncrease(_LastSample):
    """Turns a ``*_total`` counter into its increase per ``interval_ns``."""

    kind: Kind = "counter"

    def __init__(self, interval_ns: int = 3_600_000_000_000) -> None:
        super().__init__()
        self.interval_ns = interval_ns

    def increases(self, batch: Batch, resets: pl.DataFrame | None = None) -> tuple[Batch, Progress]:
        """The increase per interval of every sample that has a predecessor."""
        rows, late = self._with_previous(batch)
        marked = pl.lit(False)
        if resets is not None and resets.height:
            rows = rows.join(
                resets.with_columns(marked=pl.lit(True)), on=["key", "time"], how="left"
            )
            marked = pl.col("marked").fill_null(False)
        rows = rows.with_columns(
            is_reset=pl.col("prev_value").is_not_null()
            & ((pl.col("value") < pl.col("prev_value")) | marked)
        )
        reset_rows = rows.filter(pl.col("is_reset")).select("key", "time")
        self._advance(rows, reset_rows)
        increase = (
            pl.when(pl.col("is_reset"))
            .then(pl.col("value"))
            .otherwise(pl.col("value") - pl.col("prev_value"))
        )
        scale = self.interval_ns / (pl.col("time") - pl.col("prev_time")).cast(pl.Float64)
        out = (
            rows.filter(pl.col("prev_value").is_not_null())
            .with_columns(value=increase * scale)
            .select(list(Batch.empty().frame.schema))
        )
        return Batch(out), Progress(late=late, resets=reset_rows.height)


class GaugePassThrough(_LastSample):
    """Gauges are used as they are; the state only guards against late samples."""

    kind: Kind = "gauge"

    def values(self, batch: Batch) -> tuple[Batch, Progress]:
        rows, late = self._with_previous(batch)
        self._advance(rows, rows.clear().select("key", "time"))
        return Batch(rows.select(list(Batch.empty().frame.schema))), Progress(late=late)
