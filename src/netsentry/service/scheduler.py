"""Runs a check every ``frequency`` hours, off the event loop, reading the settings each time.

A change of ``frequency`` made through the API moves the next check at once (the wait
is re-evaluated every few seconds); a change of ``tolerance`` applies to the next check.
A check that fails is logged, counted, shown in ``/status`` and retried with backoff;
the service keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from netsentry.config import Settings
from netsentry.service.check import CheckReport, run_check
from netsentry.service.runtime import effective
from netsentry.store.sqlite import Store

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, store: Store, settings: Settings, *, poll_s: float = 5.0) -> None:
        self.store = store
        self.settings = settings
        self.poll_s = poll_s
        self.last_run = time.monotonic()
        self.failures = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def due_in(self) -> float:
        hours = effective(self.settings, self.store).frequency
        backoff = min(2**self.failures, 300) if self.failures else None
        period = backoff if backoff is not None else hours * 3600.0
        return self.last_run + period - time.monotonic()

    async def check_now(self) -> CheckReport | None:
        try:
            report = await asyncio.to_thread(
                run_check, self.store, effective(self.settings, self.store)
            )
        except Exception as err:  # the service must keep serving
            self.failures += 1
            log.exception("check failed")
            await asyncio.to_thread(
                self.store.record_errors,
                "check",
                "scheduler",
                [f"check failed: {type(err).__name__}: {err}"],
            )
            return None
        finally:
            self.last_run = time.monotonic()
        self.failures = 0
        log.info(
            "check %d: %d records, %d anomalies", report.check_id, report.records, report.anomalies
        )
        return report

    async def run(self) -> None:
        while not self._stop.is_set():
            wait = self.due_in()
            if wait <= 0:
                await self.check_now()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=min(wait, self.poll_s))
