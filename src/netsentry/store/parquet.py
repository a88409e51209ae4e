"""Long-term store: flows and Batches as Parquet files partitioned by UTC day.

Layout under ``root``::

    flows/day=2018-10-25/part-<uuid>.parquet      Flows, by the day of their ``start``
    batches/day=2018-10-25/part-<uuid>.parquet    Batches, by the day of their ``time``

Days are UTC: a row at ``00:00:00.000000000`` belongs to the day it begins, one a
nanosecond earlier to the day before. Every write adds new files (sorted by time, zstd)
and never rewrites old ones, so writers need no lock.

A file becomes visible only complete: it is written as ``.part-<uuid>.tmp`` in its day's
folder, flushed to disk (``fsync``), then renamed (``os.replace``, atomic on POSIX) and
the folder synced. A writer killed half-way leaves a hidden ``.tmp`` that readers never
see; :meth:`ParquetStore.remove_stale` deletes such leftovers.

Reads take a time range, ``[start_ns, end_ns)``: polars ``scan_parquet`` with hive
partitioning, filtered on the ``day`` partition first, so the files of other days are
never opened, then on the time column (with the row groups' statistics). Flows come
back with label columns when any flow read has a label (null for the others).
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from netsentry.flows.schema import FLOW_SCHEMA, LABEL_SCHEMA, Flows
from netsentry.model import SCHEMA, Batch

__all__ = ["ParquetStore"]

_NS = 1_000_000_000
#: kind → (folder, time column, schema of the files)
_KINDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "flows": ("flows", "start", {**FLOW_SCHEMA, **LABEL_SCHEMA}),
    "batches": ("batches", "time", SCHEMA),
}


def _day(ns: int) -> date:
    return datetime.fromtimestamp(ns // _NS, tz=UTC).date()


class ParquetStore:
    """Flows and Batches as day-partitioned Parquet under ``root`` (see the module doc).

    Examples
    --------
    >>> import tempfile
    >>> from netsentry.model import Batch
    >>> folder = tempfile.TemporaryDirectory()
    >>> store = ParquetStore(folder.name)
    >>> day = 86_400 * 10**9
    >>> batch = Batch.from_columns([day - 1, day], ["m", "m"], [1.0, 2.0], {"src": ["a", "b"]})
    >>> [p.parent.name for p in store.write_batch(batch)]
    ['day=1970-01-01', 'day=1970-01-02']
    >>> store.batch(day, 2 * day).frame["value"].to_list()
    [2.0]
    >>> folder.cleanup()
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def write_flows(self, flows: Flows) -> list[Path]:
        """Store flows; returns the files written (one per UTC day of their starts)."""
        return self._write("flows", flows.frame)

    def write_batch(self, batch: Batch) -> list[Path]:
        """Store a Batch; returns the files written (one per UTC day of its times)."""
        return self._write("batches", batch.frame)

    def flows(self, start_ns: int | None = None, end_ns: int | None = None) -> Flows:
        """The flows that start in ``[start_ns, end_ns)`` (None: unbounded), by start."""
        frame = self._read("flows", start_ns, end_ns)
        if frame is None:
            return Flows.empty()
        labelled = frame.select(pl.col(*LABEL_SCHEMA).is_not_null().any()).row(0)
        return Flows(frame if any(labelled) else frame.select(*FLOW_SCHEMA))

    def batch(self, start_ns: int | None = None, end_ns: int | None = None) -> Batch:
        """The Batch rows with ``time`` in ``[start_ns, end_ns)``, by time."""
        frame = self._read("batches", start_ns, end_ns)
        return Batch.empty() if frame is None else Batch(frame.select(*SCHEMA))

    def remove_stale(self, older_than_s: float = 3600.0) -> list[Path]:
        """Delete temporary files left by writers that died, older than ``older_than_s``."""
        cutoff = time.time() - older_than_s
        stale = [p for p in self.root.glob("*/day=*/.part-*.tmp") if p.stat().st_mtime <= cutoff]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def _write(self, kind: str, frame: pl.DataFrame) -> list[Path]:
        folder, column, _ = _KINDS[kind]
        if not frame.height:
            return []
        days = frame.with_columns(
            pl.from_epoch(column, time_unit="ns").dt.date().alias("_day")
        ).sort(column, maintain_order=True)
        written = []
        for (day,), part in days.group_by("_day", maintain_order=True):
            directory = self.root / folder / f"day={day}"
            directory.mkdir(parents=True, exist_ok=True)
            name = uuid.uuid4().hex
            temporary, final = directory / f".part-{name}.tmp", directory / f"part-{name}.parquet"
            try:
                part.drop("_day").write_parquet(temporary, compression="zstd", statistics=True)
                _fsync(temporary)
                os.replace(temporary, final)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
            _fsync(directory)
            written.append(final)
        return written

    def _read(self, kind: str, start_ns: int | None, end_ns: int | None) -> pl.DataFrame | None:
        folder, column, schema = _KINDS[kind]
        base = self.root / folder
        if not any(base.glob("day=*/*.parquet")):
            return None
        scan = pl.scan_parquet(
            base / "day=*" / "*.parquet",
            schema=schema,
            hive_partitioning=True,
            hive_schema={"day": pl.Date},
            missing_columns="insert",
        )
        keep: list[Any] = []
        if start_ns is not None:
            keep += [pl.col("day") >= _day(start_ns), pl.col(column) >= start_ns]
        if end_ns is not None:
            keep += [pl.col("day") <= _day(end_ns - 1), pl.col(column) < end_ns]
        if keep:
            scan = scan.filter(*keep)
        return scan.drop("day").collect().sort(column, maintain_order=True)


def _fsync(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
