"""The persistent outbox: nothing lost, in order, backoff honoured, exactly once."""

from __future__ import annotations

import random
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from netsentry.model import Anomaly
from netsentry.respond import outbox
from netsentry.respond.outbox import deliver, due, enqueue, pending_summary, retry_now
from netsentry.respond.riot import (
    DESTINATION,
    RiotClient,
    event_payload,
)
from netsentry.store.migrations import MIGRATIONS
from netsentry.store.sqlite import Store
from riot_standin import HA1, WRONG_HA1, StandIn, make_anomaly, riot_settings

# -- the outbox ----------------------------------------------------------------------

T0 = 1_800_000_000_000_000_000
SECOND = 1_000_000_000


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "outbox.sqlite")


def queue(store: Store, anomalies: list[Anomaly], now: int = T0) -> int:
    with store.transaction() as tx:
        return enqueue(tx.db, DESTINATION, anomalies, now)


def delivered_ids(stand: StandIn) -> list[str]:
    return [e["body"]["id"] for e in stand.events]


def test_migration_adds_the_outbox(store):
    with store.read() as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        assert version == len(MIGRATIONS) >= 2
        columns = [row[1] for row in db.execute("PRAGMA table_info(outbox)")]
    assert columns == [
        "id", "destination", "anomaly_id", "payload", "created", "attempts",
        "next_attempt", "last_error", "last_status", "delivered",
    ]  # fmt: skip


def test_enqueue_is_idempotent_and_transactional(store):
    anomalies = [make_anomaly(i) for i in range(3)]
    assert queue(store, anomalies) == 3
    assert queue(store, [*anomalies, make_anomaly(3)]) == 1
    with pytest.raises(RuntimeError), store.transaction() as tx:
        enqueue(tx.db, DESTINATION, [make_anomaly(9)], T0)
        raise RuntimeError("the check dies before its commit")
    assert queue(store, [make_anomaly(0)]) == 0
    assert pending_summary(store, DESTINATION, T0 + 5 * SECOND) == {
        "destination": DESTINATION,
        "pending": 4,
        "delivered": 0,
        "oldest_pending_age_s": 5.0,
        "next_attempt": T0,
        "attempts": 0,
        "last_error": None,
        "last_status": None,
    }
    item = due(store, DESTINATION, T0)[0]
    assert item.body() == event_payload(make_anomaly(0))
    # the table refuses duplicates by itself
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
        tx.db.execute(
            "INSERT INTO outbox (destination, anomaly_id, payload, created, next_attempt) "
            "VALUES (?, ?, '{}', 0, 0)",
            (DESTINATION, item.anomaly_id),
        )


def test_delivery_in_order(riot, riot_client, store):
    anomalies = [make_anomaly(i) for i in range(5)]
    queue(store, anomalies)
    report = deliver(store, riot_client, T0)
    assert (report.attempted, report.delivered, report.stopped) == (5, 5, False)
    assert delivered_ids(riot) == [a.id for a in anomalies]
    assert deliver(store, riot_client, T0).attempted == 0
    summary = pending_summary(store, DESTINATION, T0)
    assert (summary["pending"], summary["delivered"]) == (0, 5)
    assert summary["oldest_pending_age_s"] is None
    assert queue(store, anomalies) == 0  # delivered rows stay: a rerun cannot resend


def test_limit_bounds_a_round(riot, riot_client, store):
    queue(store, [make_anomaly(i) for i in range(5)])
    assert deliver(store, riot_client, T0, limit=2).delivered == 2
    assert deliver(store, riot_client, T0, limit=10).delivered == 3
    assert len(set(delivered_ids(riot))) == 5


def test_riot_down_loses_nothing_and_backoff_is_honoured(riot, riot_client, store):
    anomalies = [make_anomaly(i) for i in range(3)]
    queue(store, anomalies)
    riot.stop()
    report = deliver(store, riot_client, T0, rng=random.Random(3))
    assert (report.attempted, report.delivered, report.stopped) == (1, 0, True)
    summary = pending_summary(store, DESTINATION, T0)
    assert summary["pending"] == 3 and summary["last_status"] is None
    assert "ConnectError" in summary["last_error"] and summary["attempts"] == 1
    (head,) = [i for i in _all(store) if i["attempts"] == 1]
    assert T0 < head["next_attempt"] <= T0 + 2 * SECOND
    riot.start()
    early = head["next_attempt"] - 1
    assert deliver(store, riot_client, early).attempted == 0  # nor do the later rows overtake
    assert riot.requests == []
    report = deliver(store, riot_client, head["next_attempt"])
    assert (report.attempted, report.delivered) == (3, 3)
    assert delivered_ids(riot) == [a.id for a in anomalies]


def _all(store: Store) -> list[dict[str, Any]]:
    with store.read() as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM outbox ORDER BY id")]


def test_server_errors_are_retried_with_growing_backoff(riot, riot_client, store):
    queue(store, [make_anomaly(i) for i in range(2)])
    riot.script = [503, 500, 429]
    now = T0
    for attempt in range(1, 4):
        report = deliver(store, riot_client, now, rng=random.Random(attempt))
        assert report.stopped and report.attempted == 1 and report.delivered == 0
        head = _all(store)[0]
        assert head["attempts"] == attempt
        assert now <= head["next_attempt"] <= now + int(2.0 * 2 ** (attempt - 1) * SECOND)
        now = head["next_attempt"]
    assert pending_summary(store, DESTINATION, now)["last_status"] == 429
    assert deliver(store, riot_client, now).delivered == 2
    assert len(riot.events) == 2
    assert all(row["delivered"] == now for row in _all(store))


@pytest.mark.parametrize(
    ("broken", "status"),
    [({"ha1": SecretStr(WRONG_HA1)}, 401), ({"events_uri": "/wrong"}, 404)],
)
def test_auth_and_path_failures_show_and_delivery_resumes_once_fixed(
    riot, store, caplog, broken, status
):
    caplog.set_level("DEBUG")
    anomalies = [make_anomaly(i) for i in range(3)]
    queue(store, anomalies)
    with RiotClient(riot_settings(riot, **broken)) as client:
        report = deliver(store, client, T0)
    assert (report.attempted, report.stopped, report.last_status) == (1, True, status)
    summary = pending_summary(store, DESTINATION, T0)
    assert (summary["pending"], summary["last_status"]) == (3, status)
    assert f"PUT {broken.get('events_uri', '/events')}: {status}" in summary["last_error"]
    assert summary["next_attempt"] == T0  # the rows behind it, held by the head
    head = _all(store)[0]
    assert head["next_attempt"] >= T0 + 60 * SECOND  # needs a person: no hammering
    for secret in (HA1, WRONG_HA1, "authority="):
        assert secret not in caplog.text and secret not in summary["last_error"]
    with RiotClient(riot_settings(riot)) as fixed:
        assert deliver(store, fixed, T0 + SECOND).attempted == 0
        assert deliver(store, fixed, head["next_attempt"]).delivered == 3
    assert delivered_ids(riot) == [a.id for a in anomalies]


def test_retry_now_after_a_fix(riot, store):
    queue(store, [make_anomaly(i) for i in range(2)])
    with RiotClient(riot_settings(riot, ha1=SecretStr(WRONG_HA1))) as client:
        deliver(store, client, T0)
    assert retry_now(store, DESTINATION, T0 + SECOND) == 1
    with RiotClient(riot_settings(riot)) as fixed:
        assert deliver(store, fixed, T0 + SECOND).delivered == 2


def test_a_rejected_event_steps_aside(riot, riot_client, store):
    anomalies = [make_anomaly(i) for i in range(3)]
    queue(store, anomalies)
    riot.script = [400]
    report = deliver(store, riot_client, T0)
    assert (report.attempted, report.delivered, report.failed, report.stopped) == (3, 2, 1, False)
    assert delivered_ids(riot) == [anomalies[1].id, anomalies[2].id]
    summary = pending_summary(store, DESTINATION, T0)
    assert (summary["pending"], summary["last_status"]) == (1, 400)
    assert deliver(store, riot_client, summary["next_attempt"]).delivered == 1
    assert delivered_ids(riot)[-1] == anomalies[0].id


def test_a_hanging_server_pauses_delivery(riot, store):
    queue(store, [make_anomaly(i) for i in range(2)])
    riot.mode = "hang"
    with RiotClient(riot_settings(riot, timeout_s=0.2)) as client:
        report = deliver(store, client, T0)
        assert (report.attempted, report.stopped, report.last_status) == (1, True, None)
        assert "no answer" in (report.last_error or "")
        riot.mode = "ok"
        assert deliver(store, client, T0 + 3600 * SECOND).delivered == 2


def test_backoff_bounds():
    rng = random.Random(0)
    for attempts in range(1, 40):
        ceiling = min(3600.0, 2.0 * 2 ** (attempts - 1))
        for _ in range(20):
            assert 0 <= outbox.backoff_s(attempts, True, rng) <= ceiling
            assert max(60.0, 0) <= outbox.backoff_s(attempts, False, rng) <= max(60.0, ceiling)
    assert outbox.backoff_s(10**6, True, random.Random(1)) <= 3600.0


OUTCOMES = st.sampled_from(["ok", 500, 503, 429, 401, 404, 400, "drop"])
STEPS = st.lists(
    st.tuples(OUTCOMES, st.integers(min_value=0, max_value=3), st.booleans()),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=STEPS)
def test_any_failure_sequence_ends_delivered_exactly_once(shared_riot, steps):
    stand, client = shared_riot
    stand.reset()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "o.sqlite")
        made: list[Anomaly] = []
        now = T0
        rng = random.Random(len(steps))
        for outcome, new, again in steps:
            fresh = [make_anomaly(len(made) + i) for i in range(new)]
            made += fresh
            queue(store, fresh + (made[:2] if again else []), now)
            stand.mode = outcome
            deliver(store, client, now, rng=rng)
            now += 90 * SECOND
        stand.mode = "ok"
        for _ in range(2 * len(made) + 2):
            summary = pending_summary(store, DESTINATION, now)
            if summary["pending"] == 0:
                break
            now = max(now, summary["next_attempt"] or now, *_waits(store))
            deliver(store, client, now, rng=rng)
        ids = delivered_ids(stand)
        assert sorted(ids) == sorted(a.id for a in made)  # each exactly once
        assert pending_summary(store, DESTINATION, now)["pending"] == 0
        if not any(outcome == 400 for outcome, _, _ in steps):
            assert ids == [a.id for a in made]  # and in order
    assert stand.disagreements == []


def _waits(store: Store) -> list[int]:
    return [row["next_attempt"] for row in _all(store) if row["delivered"] is None]
