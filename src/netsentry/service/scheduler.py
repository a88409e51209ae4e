"""Runs a check every ``frequency`` hours, off the event loop, reading the settings each time.

A change of ``frequency`` made through the API moves the next check at once (the wait
is re-evaluated every few seconds); a change of ``tolerance`` applies to the next check.
Before each check every configured source is pulled into the inbox
(:mod:`netsentry.service.pull`). A pull or check that fails is logged, counted, shown
in ``/status`` and retried with backoff (2 s doubling to 5 min); the watermarks stay
where they were and the service keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from netsentry.config import Settings
from netsentry.service.check import CheckReport, run_check
from netsentry.service.control import ControlPlane
from netsentry.service.pull import HOUR_NS, catch_up
from netsentry.service.runtime import effective
from netsentry.sources.configured import configured_sources
from netsentry.store.sqlite import Store

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        poll_s: float = 5.0,
        control: ControlPlane | None = None,
        params_every_s: float = 300.0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.poll_s = poll_s
        self.control = control
        self.params_every_s = params_every_s
        self.last_run = time.monotonic()
        self.last_params = float("-inf")
        self.failures = 0
        self.sources = configured_sources(settings)
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def due_in(self) -> float:
        hours = effective(self.settings, self.store).frequency
        backoff = min(2**self.failures, 300) if self.failures else None
        period = backoff if backoff is not None else hours * 3600.0
        return self.last_run + period - time.monotonic()

    def _pull_and_check(self) -> CheckReport:
        """Parameters from RIoT, then one check per ended period, then delivery.

        A source that fails stops the catch-up (the rest waits for the next attempt);
        RIoT being down does not.
        """
        if self.control is not None:
            self._refresh_params()
        outbox = self.control.destination if self.control is not None else None
        detection = effective(self.settings, self.store)
        try:
            reports = catch_up(
                self.store,
                self.sources,
                detection.frequency * HOUR_NS,
                lambda: run_check(self.store, effective(self.settings, self.store), outbox=outbox),
                initial_lookback_ns=int(self.settings.initial_lookback_h * HOUR_NS),
            )
        finally:
            self._deliver()
        return reports[-1] if reports else CheckReport()

    def _refresh_params(self) -> None:
        assert self.control is not None
        self.control.refresh(self.store, self.settings)
        self.last_params = time.monotonic()

    def _deliver(self) -> None:
        if self.control is None:
            return
        try:
            self.control.deliver(self.store)
        except Exception as err:  # delivery problems are the outbox's to retry
            log.exception("outbox delivery failed")
            self.store.record_errors("riot", "outbox", [f"delivery failed: {err}"])

    def _housekeeping(self) -> None:
        """Between checks: deliver what is due, poll the parameters now and then."""
        if self.control is None:
            return
        if time.monotonic() - self.last_params >= self.params_every_s:
            self._refresh_params()
        self._deliver()

    async def check_now(self) -> CheckReport | None:
        try:
            report = await asyncio.to_thread(self._pull_and_check)
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
            await asyncio.to_thread(self._housekeeping)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=min(wait, self.poll_s))
