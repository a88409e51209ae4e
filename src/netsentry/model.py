"""Core types that flow through netsentry: the columnar Batch and the Anomaly.

A :class:`Batch` is one polars DataFrame with a fixed schema, one row per
observation::

    time         Int64    nanoseconds since the epoch, UTC
    measurement  String   e.g. ``tdmp_bytes_total``
    value        Float64  finite, always (ingest rejects NaN and inf)
    key          UInt64   entity key of the row's tags (see :mod:`netsentry.keys`)
    src … url    String   the entity tags, ``""`` where a tag is missing

Hot paths take whole columns out of it (``batch.frame["value"].to_numpy()``);
nothing creates a Python object per record.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import polars as pl

#: Tags that identify a traffic entity (DESIGN.md), in canonical (sorted) order.
KEY_TAGS: tuple[str, ...] = ("dst", "dstp", "proto", "service", "src", "srcp", "url")

SCHEMA: dict[str, Any] = {
    "time": pl.Int64,
    "measurement": pl.String,
    "value": pl.Float64,
    "key": pl.UInt64,
    **{tag: pl.String for tag in KEY_TAGS},
}


@dataclass(frozen=True)
class Batch:
    """Columnar observations with the schema of :data:`SCHEMA`."""

    frame: pl.DataFrame

    def __post_init__(self) -> None:
        if dict(self.frame.schema) != SCHEMA:
            raise ValueError(
                f"Batch schema mismatch: got {dict(self.frame.schema)}, expected {SCHEMA}"
            )

    @classmethod
    def empty(cls) -> Batch:
        return cls(pl.DataFrame(schema=SCHEMA))

    @classmethod
    def from_columns(
        cls,
        time: Any,
        measurement: Any,
        value: Any,
        tags: dict[str, Any],
    ) -> Batch:
        """Build a Batch from plain columns, computing the entity keys.

        ``tags`` maps tag names to columns; key tags that are absent become ``""``
        and tags outside :data:`KEY_TAGS` are dropped.
        """
        from netsentry.keys import with_entity_keys  # keys depends on model

        n = len(value)
        frame = pl.DataFrame(
            {
                "time": pl.Series(time, dtype=pl.Int64),
                "measurement": pl.Series(measurement, dtype=pl.String),
                "value": pl.Series(value, dtype=pl.Float64),
                **{
                    tag: pl.Series(tags[tag], dtype=pl.String)
                    if tag in tags
                    else pl.repeat("", n, dtype=pl.String, eager=True)
                    for tag in KEY_TAGS
                },
            }
        )
        return cls(with_entity_keys(frame).select(list(SCHEMA)))

    @classmethod
    def concat(cls, batches: list[Batch]) -> Batch:
        if not batches:
            return cls.empty()
        return cls(pl.concat([b.frame for b in batches], how="vertical"))

    def __len__(self) -> int:
        return self.frame.height

    def measurements(self) -> list[str]:
        return sorted(self.frame["measurement"].unique().to_list())

    def only(self, measurement: str) -> Batch:
        return Batch(self.frame.filter(pl.col("measurement") == measurement))

    def where(self, mask: Any) -> Batch:
        """The rows where the boolean ``mask`` is True."""
        return Batch(self.frame.filter(pl.Series(mask, dtype=pl.Boolean)))


@dataclass
class Anomaly:
    """One flagged observation with everything needed to explain it."""

    time: int
    measurement: str
    key: int
    value: float
    score: float
    threshold: float
    detector: str
    explanation: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "open"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    STATUSES = ("open", "confirmed", "false_positive")
