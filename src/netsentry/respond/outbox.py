"""The persistent outbox: anomaly notifications that survive restarts and outages.

A check puts its anomalies here with :func:`enqueue`, inside its own transaction, so
an anomaly is stored if and only if its notification is queued. :func:`deliver` then
sends what is due, oldest first, and records every outcome. Nothing is deleted: a
delivered row keeps its delivery time, an undelivered one waits as long as it takes.

Delivery rules:

* **order**: rows go out by ``id``. A row that failed and waits for its
  ``next_attempt`` holds back every later row of its destination (head-of-line), so
  order is kept and a server that is down is not asked again before the backoff
  ends. Only a row the server *rejected* (400, 413, 415, 422: this event, not the
  server) steps aside and lets the others pass;
* **a round stops** at the first failure other than such a rejection: when the server
  is down, or our credentials or paths are wrong, the next rows would fail the same way;
* **backoff** after the n-th failed attempt: a delay drawn uniformly ("full jitter",
  :class:`secrets.SystemRandom` unless a ``rng`` is given) from
  ``[0, min(1 h, 2 s * 2**(n-1))]``; failures that need a person (401, 403, 404, 400)
  wait at least :data:`PERMANENT_MIN_S`, so fixing them lets delivery resume within
  minutes (or at once with :func:`retry_now`) without hammering the server meanwhile;
* **at least once**: each row is marked in its own transaction right after its answer;
  a process killed between the answer and the mark sends that one row again. Events
  carry the anomaly id, so the receiver can drop the duplicate. Run one deliverer per
  destination (the scheduler's), not several at once.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from netsentry.model import Anomaly
from netsentry.respond.riot import DESTINATION, RiotClient, RiotError, event_payload
from netsentry.store.sqlite import Store

log = logging.getLogger(__name__)

BASE_S = 2.0
FACTOR = 2.0
CAP_S = 3600.0
#: Least wait after a failure that needs a person (credentials, path, payload).
PERMANENT_MIN_S = 60.0
#: Answers that reject one event, not the server or our configuration.
REJECTED_STATUSES = frozenset({400, 413, 415, 422})
ERROR_MAX_CHARS = 1000
_SYSTEM_RANDOM = secrets.SystemRandom()
_COLUMNS = (
    "id, destination, anomaly_id, payload, created, attempts, next_attempt, last_error, last_status"
)

# built from constants only; every value is bound
_DUE_SQL = (
    f"SELECT {_COLUMNS} FROM outbox "  # noqa: S608
    "WHERE destination = ? AND delivered IS NULL AND next_attempt <= ? AND id < "
    "(SELECT COALESCE(MIN(id), 9223372036854775807) FROM outbox "
    " WHERE destination = ? AND delivered IS NULL AND next_attempt > ? AND attempts > 0 "
    f" AND COALESCE(last_status, 0) NOT IN ({', '.join(map(str, sorted(REJECTED_STATUSES)))})) "
    "ORDER BY id LIMIT ?"
)


@dataclass(frozen=True)
class OutboxItem:
    """One pending notification."""

    id: int
    destination: str
    anomaly_id: str
    payload: str
    created: int
    attempts: int
    next_attempt: int
    last_error: str | None
    last_status: int | None

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.payload)
        return data


@dataclass
class DeliveryReport:
    """What one :func:`deliver` round did."""

    attempted: int = 0
    delivered: int = 0
    failed: int = 0
    stopped: bool = False
    last_error: str | None = None
    last_status: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def enqueue(
    db: sqlite3.Connection,
    destination: str,
    anomalies: list[Anomaly],
    now_ns: int,
    payload: Callable[[Anomaly], dict[str, Any]] = event_payload,
) -> int:
    """Queue one notification per anomaly on the caller's connection (its transaction).

    An anomaly already queued for ``destination`` is left as it is, so running the
    same check twice cannot notify twice. Returns how many rows were added.
    """
    before = db.total_changes
    db.executemany(
        "INSERT OR IGNORE INTO outbox (destination, anomaly_id, payload, created, "
        "next_attempt) VALUES (?, ?, ?, ?, ?)",
        [
            (
                destination,
                a.id,
                json.dumps(payload(a), allow_nan=False, separators=(",", ":")),
                now_ns,
                now_ns,
            )
            for a in anomalies
        ],
    )
    return db.total_changes - before


def due(store: Store, destination: str, now_ns: int, limit: int = 100) -> list[OutboxItem]:
    """Pending rows of ``destination`` that may be sent at ``now_ns``, oldest first.

    Stops before the first row that failed and still waits (unless it was rejected),
    so that later rows never overtake it.
    """
    with store.read() as db:
        rows = db.execute(
            _DUE_SQL,
            (destination, now_ns, destination, now_ns, limit),
        ).fetchall()
    return [OutboxItem(*row) for row in rows]


def mark_delivered(store: Store, item_id: int, now_ns: int) -> None:
    """Record that the row was accepted by its destination."""
    with store.transaction() as tx:
        tx.db.execute(
            "UPDATE outbox SET delivered = ?, attempts = attempts + 1 "
            "WHERE id = ? AND delivered IS NULL",
            (now_ns, item_id),
        )


def backoff_s(attempts: int, retryable: bool, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``attempts``-th failure (full jitter, see the module)."""
    ceiling = min(CAP_S, BASE_S * FACTOR ** min(max(attempts - 1, 0), 64))
    delay = (rng or _SYSTEM_RANDOM).uniform(0.0, ceiling)
    return delay if retryable else max(delay, PERMANENT_MIN_S)


def mark_failed(
    store: Store,
    item_id: int,
    now_ns: int,
    error: str,
    status: int | None,
    retryable: bool,
    rng: random.Random | None = None,
) -> int:
    """Record a failed attempt and schedule the next one; returns ``next_attempt`` (ns)."""
    with store.transaction() as tx:
        row = tx.db.execute(
            "SELECT attempts FROM outbox WHERE id = ? AND delivered IS NULL", (item_id,)
        ).fetchone()
        if row is None:
            return now_ns
        attempts = int(row[0]) + 1
        next_attempt = now_ns + int(backoff_s(attempts, retryable, rng) * 1e9)
        tx.db.execute(
            "UPDATE outbox SET attempts = ?, next_attempt = ?, last_error = ?, last_status = ? "
            "WHERE id = ?",
            (attempts, next_attempt, error[:ERROR_MAX_CHARS], status, item_id),
        )
    return next_attempt


def retry_now(store: Store, destination: str, now_ns: int) -> int:
    """Make every pending row of ``destination`` due at ``now_ns`` (after a fix)."""
    with store.transaction() as tx:
        cursor = tx.db.execute(
            "UPDATE outbox SET next_attempt = ? "
            "WHERE destination = ? AND delivered IS NULL AND next_attempt > ?",
            (now_ns, destination, now_ns),
        )
        return cursor.rowcount


def pending_summary(store: Store, destination: str, now_ns: int | None = None) -> dict[str, Any]:
    """The backlog of ``destination`` for ``/status``.

    ``last_error`` and ``last_status`` are those of the oldest pending row that failed
    (the one holding the queue); ``last_status`` is ``None`` when there was no answer.
    """
    now = time.time_ns() if now_ns is None else now_ns
    with store.read() as db:
        pending, oldest, next_attempt = db.execute(
            "SELECT COUNT(*), MIN(created), MIN(next_attempt) FROM outbox "
            "WHERE destination = ? AND delivered IS NULL",
            (destination,),
        ).fetchone()
        (delivered,) = db.execute(
            "SELECT COUNT(*) FROM outbox WHERE destination = ? AND delivered IS NOT NULL",
            (destination,),
        ).fetchone()
        failure = db.execute(
            "SELECT last_error, last_status, attempts FROM outbox "
            "WHERE destination = ? AND delivered IS NULL AND attempts > 0 ORDER BY id LIMIT 1",
            (destination,),
        ).fetchone()
    last_error, last_status, attempts = failure if failure else (None, None, 0)
    return {
        "destination": destination,
        "pending": int(pending),
        "delivered": int(delivered),
        "oldest_pending_age_s": None if oldest is None else max(0.0, (now - oldest) / 1e9),
        "next_attempt": next_attempt,
        "attempts": int(attempts),
        "last_error": last_error,
        "last_status": last_status,
    }


def deliver(
    store: Store,
    client: RiotClient,
    now_ns: int | None = None,
    limit: int = 100,
    destination: str = DESTINATION,
    rng: random.Random | None = None,
) -> DeliveryReport:
    """Send the due rows of ``destination`` in order, at most ``limit`` of them.

    Parameters
    ----------
    store
        The store holding the outbox.
    client
        The RIoT client that sends.
    now_ns
        The time of the round (ns); the current time when ``None``.
    limit
        Most rows sent in this round.
    destination
        Which queue.
    rng
        Jitter source for the backoff; :class:`secrets.SystemRandom` when ``None``.
    """
    clock: Callable[[], int] = time.time_ns if now_ns is None else (lambda: now_ns)
    report = DeliveryReport()
    for item in due(store, destination, clock(), limit):
        report.attempted += 1
        try:
            client.send(item.body())
        except RiotError as exc:
            report.failed += 1
            report.last_error, report.last_status = exc.message, exc.status
            mark_failed(store, item.id, clock(), exc.message, exc.status, exc.retryable, rng)
            if exc.status in REJECTED_STATUSES:
                log.warning("outbox %s: event %s rejected: %s", destination, item.anomaly_id, exc)
                continue
            log.warning("outbox %s: delivery paused: %s", destination, exc)
            report.stopped = True
            break
        mark_delivered(store, item.id, clock())
        report.delivered += 1
    return report
