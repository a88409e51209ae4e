"""The embedded store: SQLite in WAL mode, one short-lived connection per operation.

Everything a check produces (detector state, anomalies, the advanced watermark, the
check's report) is written by one :class:`Transaction`, so a check killed at any
point leaves either all of it or none of it. Readers never block the writer (WAL).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from netsentry.detect.base import State
from netsentry.model import KEY_TAGS, Anomaly, Batch
from netsentry.store.migrations import MIGRATIONS, migrate

ERRORS_KEPT = 1000


def to_signed(keys: np.ndarray) -> np.ndarray:
    """SQLite integers are signed 64-bit: store uint64 keys by their bit pattern."""
    return np.asarray(keys, dtype=np.uint64).view(np.int64)


def to_unsigned(keys: np.ndarray) -> np.ndarray:
    return np.asarray(keys, dtype=np.int64).view(np.uint64)


def key_to_sql(key: int) -> int:
    return key - (1 << 64) if key >= (1 << 63) else key


def key_from_sql(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


def encode_state(state: State) -> bytes:
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {name: np.asarray(value) for name, value in state.items()}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def decode_state(blob: bytes) -> State:
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return {
            name: (archive[name].item() if archive[name].ndim == 0 else archive[name])
            for name in archive.files
        }


class Transaction:
    """Writes that commit together (``BEGIN IMMEDIATE`` … ``COMMIT``)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.now = time.time_ns()

    def save_state(self, component: str, measurement: str, state: State) -> None:
        self.db.execute(
            "INSERT INTO state VALUES (?, ?, ?, ?, ?) ON CONFLICT (component, measurement) "
            "DO UPDATE SET fingerprint = excluded.fingerprint, blob = excluded.blob, "
            "updated = excluded.updated",
            (
                component,
                measurement,
                str(state["fingerprint"]),
                encode_state(state),
                self._version(component, measurement),
            ),
        )

    def _version(self, component: str, measurement: str) -> int:
        """A version strictly above the current one, even within one nanosecond."""
        _, current = read_state(self.db, component, measurement)
        return max(self.now, current + 1)

    def expect_versions(self, versions: dict[tuple[str, str], int]) -> None:
        """Refuse to commit over a state that someone else replaced meanwhile."""
        for (component, measurement), version in versions.items():
            _, current = read_state(self.db, component, measurement)
            if current != version:
                raise ConcurrentUpdateError(f"{component} state of {measurement} changed")

    def add_anomalies(self, anomalies: list[Anomaly], check_id: int) -> None:
        self.db.executemany(
            "INSERT INTO anomalies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    a.id,
                    a.time,
                    a.measurement,
                    key_to_sql(a.key),
                    a.value,
                    _finite(a.score),
                    _finite(a.threshold),
                    a.detector,
                    json.dumps(a.explanation, allow_nan=False),
                    a.status,
                    check_id,
                )
                for a in anomalies
            ],
        )

    def set_status(self, anomaly_id: str, status: str) -> None:
        self.db.execute("UPDATE anomalies SET status = ? WHERE id = ?", (status, anomaly_id))
        self.db.execute(
            "INSERT INTO feedback (anomaly_id, status, at) VALUES (?, ?, ?)",
            (anomaly_id, status, self.now),
        )

    def advance(self, source: str, watermark: int) -> None:
        self.db.execute(
            "INSERT INTO checkpoints VALUES (?, ?, ?) ON CONFLICT (source) DO UPDATE SET "
            "watermark = excluded.watermark, updated = excluded.updated",
            (source, watermark, self.now),
        )

    def add_check(
        self,
        started: int,
        records: int,
        anomalies: int,
        watermarks: tuple[int, int],
        report: dict[str, Any],
    ) -> int:
        cursor = self.db.execute(
            "INSERT INTO checks (started, finished, records, anomalies, watermark_from, "
            "watermark_to, report) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (started, time.time_ns(), records, anomalies, *watermarks, json.dumps(report)),
        )
        check_id = cursor.lastrowid
        assert check_id is not None
        report = {**report, "check_id": check_id}
        self.db.execute("UPDATE checks SET report = ? WHERE id = ?", (json.dumps(report), check_id))
        return check_id

    def bump(self, counters: dict[str, float]) -> None:
        self.db.executemany(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
            "value = value + excluded.value",
            list(counters.items()),
        )

    def prune_inbox(self, upto_id: int, before_time: int) -> None:
        self.db.execute("DELETE FROM inbox WHERE id <= ? AND time < ?", (upto_id, before_time))


def read_state(
    db: sqlite3.Connection, component: str, measurement: str
) -> tuple[State | None, int]:
    row = db.execute(
        "SELECT blob, updated FROM state WHERE component = ? AND measurement = ?",
        (component, measurement),
    ).fetchone()
    return (decode_state(row[0]), int(row[1])) if row else (None, 0)


class ConcurrentUpdateError(RuntimeError):
    """A state changed between the moment it was read and the commit that replaces it."""


def _finite(value: float) -> float | None:
    """SQLite would store inf; JSON cannot carry it. NULL means 'infinite' here."""
    return value if np.isfinite(value) else None


class Store:
    """The SQLite store at ``path`` (created, and migrated, on first use).

    A new store file is created readable by its owner only (0600; SQLite gives its WAL
    and shared-memory files the same mode): it holds sealed keys, device profiles and
    what the anomalies say about the network.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with self._connect() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this netsentry "
                    f"({len(MIGRATIONS)}): upgrade netsentry"
                )
            db.execute("PRAGMA journal_mode = WAL")
            migrate(db)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        return db

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # -- ingest ---------------------------------------------------------------------

    def append(self, batch: Batch, checkpoint: tuple[str, int] | None = None) -> int:
        """Put a batch in the inbox (and its entities in the entity table), atomically.

        With ``checkpoint=(source, watermark)`` the source's watermark advances in the
        same transaction, so a pulled window is either landed and marked, or neither.
        """
        if len(batch) == 0:
            if checkpoint is not None:
                with self.transaction() as tx:
                    tx.advance(*checkpoint)
            return 0
        frame = batch.frame
        entities = frame.unique(subset=["key"], keep="first", maintain_order=True)
        now = time.time_ns()
        with self.transaction() as tx:
            tx.db.executemany(
                f"INSERT OR IGNORE INTO entities VALUES (?, {', '.join('?' * len(KEY_TAGS))}, ?)",
                zip(
                    to_signed(entities["key"].to_numpy()).tolist(),
                    *(entities[tag].to_list() for tag in KEY_TAGS),
                    [now] * entities.height,
                    strict=True,
                ),
            )
            tx.db.executemany(
                "INSERT INTO inbox (time, measurement, key, value) VALUES (?, ?, ?, ?)",
                zip(
                    frame["time"].to_list(),
                    frame["measurement"].to_list(),
                    to_signed(frame["key"].to_numpy()).tolist(),
                    frame["value"].to_list(),
                    strict=True,
                ),
            )
            tx.bump({"records_ingested": float(len(batch))})
            if checkpoint is not None:
                tx.advance(*checkpoint)
        return len(batch)

    def record_errors(self, kind: str, source: str, messages: list[str]) -> None:
        """Keep the most recent errors for ``/status`` and count them all."""
        if not messages:
            return
        now = time.time_ns()
        with self.transaction() as tx:
            tx.db.executemany(
                "INSERT INTO errors (at, kind, source, message) VALUES (?, ?, ?, ?)",
                [(now, kind, source, m) for m in messages[-ERRORS_KEPT:]],
            )
            tx.db.execute(
                "DELETE FROM errors WHERE id <= (SELECT MAX(id) FROM errors) - ?", (ERRORS_KEPT,)
            )
            tx.bump({f"errors_{kind}": float(len(messages))})

    # -- check ----------------------------------------------------------------------

    def watermark(self, source: str, db: sqlite3.Connection | None = None) -> int:
        """The checkpoint of ``source``; inside a transaction, pass its connection."""
        if db is None:
            with self.read() as own:
                return self.watermark(source, own)
        row = db.execute("SELECT watermark FROM checkpoints WHERE source = ?", (source,)).fetchone()
        return int(row[0]) if row else 0

    def inbox_head(self) -> int:
        with self.read() as db:
            (head,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM inbox").fetchone()
        return int(head)

    def read_inbox(self, after: int, upto: int) -> Batch:
        """Inbox rows with ``after < id <= upto``, with their entities' tags."""
        with self.read() as db:
            rows = db.execute(
                "SELECT i.time, i.measurement, i.value, i.key, "
                f"{', '.join('e.' + t for t in KEY_TAGS)} FROM inbox i "
                "JOIN entities e ON e.key = i.key WHERE i.id > ? AND i.id <= ? ORDER BY i.id",
                (after, upto),
            ).fetchall()
        schema = Batch.empty().frame.schema
        frame = pl.DataFrame(
            rows,
            schema=[(c, pl.Int64 if c == "key" else t) for c, t in schema.items()],
            orient="row",
        )
        frame = frame.with_columns(
            pl.Series("key", to_unsigned(frame["key"].to_numpy()), dtype=pl.UInt64)
        )
        return Batch(frame)

    def load_state(self, component: str, measurement: str) -> tuple[State | None, int]:
        """The saved state and its version (0 when there is none)."""
        with self.read() as db:
            return read_state(db, component, measurement)

    def state_sizes(self) -> list[tuple[str, str, int]]:
        with self.read() as db:
            return db.execute(
                "SELECT component, measurement, length(blob) FROM state ORDER BY 1, 2"
            ).fetchall()

    # -- settings and counters ------------------------------------------------------

    def settings(self) -> dict[str, str]:
        with self.read() as db:
            return dict(db.execute("SELECT name, value FROM settings").fetchall())

    def set_settings(self, values: dict[str, Any], actor: str) -> None:
        with self.transaction() as tx:
            for name, value in values.items():
                text = json.dumps(value)
                tx.db.execute(
                    "INSERT INTO settings VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "value = excluded.value, updated = excluded.updated",
                    (name, text, tx.now),
                )
                tx.db.execute(
                    "INSERT INTO settings_history (name, value, at, actor) VALUES (?, ?, ?, ?)",
                    (name, text, tx.now, actor),
                )

    def counters(self) -> dict[str, float]:
        with self.read() as db:
            return dict(db.execute("SELECT name, value FROM counters").fetchall())

    def bump(self, counters: dict[str, float]) -> None:
        with self.transaction() as tx:
            tx.bump(counters)
