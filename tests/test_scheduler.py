"""The periodic check: timing from the run-time settings, and failures that do not stop it."""

from __future__ import annotations

import asyncio
import time

from helpers import series
from netsentry.service.scheduler import Scheduler
from netsentry.store.sqlite import Store


def test_frequency_change_moves_the_next_check(settings):
    store = Store(settings.db)
    scheduler = Scheduler(store, settings)
    assert 23.9 * 3600 < scheduler.due_in() <= 24 * 3600
    store.set_settings({"frequency": 1}, actor="test")
    assert 0.9 * 3600 < scheduler.due_in() <= 3600
    scheduler.last_run = time.monotonic() - 3601
    assert scheduler.due_in() < 0


def test_a_failing_check_is_reported_retried_and_the_loop_goes_on(settings):
    store = Store(settings.db)
    store.append(series([1.0, 2.0, 3.0]))
    with store.transaction() as tx:  # a damaged state blob makes the check fail
        tx.db.execute("INSERT INTO state VALUES ('zscore', 'm', 'x', x'00', 1)")
    scheduler = Scheduler(store, settings, poll_s=0.05)

    async def scenario():
        assert await scheduler.check_now() is None
        assert scheduler.failures == 1 and 0 < scheduler.due_in() <= 2  # backoff, not 24 h
        with store.transaction() as tx:
            tx.db.execute("DELETE FROM state")
        scheduler.last_run -= 5
        task = asyncio.create_task(scheduler.run())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if store.counters().get("checks"):
                break
        scheduler.stop()
        await task

    asyncio.run(scenario())
    assert scheduler.failures == 0
    assert store.counters()["checks"] == 1 and store.counters()["errors_check"] == 1
    with store.read() as db:
        (message,) = db.execute("SELECT message FROM errors WHERE kind = 'check'").fetchone()
    assert message.startswith("check failed:")
    assert store.watermark("inbox") == store.inbox_head()
