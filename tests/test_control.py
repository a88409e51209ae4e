"""The RIoT control plane wired into the service: parameters before every check,
anomalies through the outbox, and a RIoT outage that stops neither."""

from __future__ import annotations

import time

from helpers import HOUR, series
from netsentry.api.routes.status import status_payload
from netsentry.respond.outbox import pending_summary
from netsentry.service.control import ControlPlane
from netsentry.service.runtime import effective
from netsentry.service.scheduler import Scheduler
from netsentry.store.sqlite import Store
from riot_standin import riot_settings

CALM = [100.0, 102.0, 98.0, 101.0, 99.0, 100.0, 103.0, 97.0, 100.0, 101.0]


def feed(store: Store, values: list[float], t0: int) -> None:
    store.append(series(values, measurement="cpu_load", t0=t0))


def test_parameters_checks_and_delivery(riot, settings):
    store = Store(settings.db)
    control = ControlPlane(riot_settings(riot))
    scheduler = Scheduler(store, settings, control=control)
    feed(store, CALM, 0)
    scheduler._pull_and_check()
    current = effective(settings, store)
    assert (current.tolerance, current.frequency) == (4.0, 12)  # from RIoT, before the check
    with store.read() as db:
        actors = {r[0] for r in db.execute("SELECT actor FROM settings_history")}
    assert actors == {"riot"}

    feed(store, [500.0], 20 * HOUR)
    report = scheduler._pull_and_check()
    assert report.anomalies == 1
    with store.read() as db:
        ids = [r[0] for r in db.execute("SELECT id FROM anomalies")]
    assert [e["body"]["id"] for e in riot.events] == ids
    assert riot.events[0]["headers"]["Service"] == "netsentry-test"
    assert pending_summary(store, "riot")["pending"] == 0
    control.close()


def test_riot_outage_stops_neither_detection_nor_loses_reports(riot, settings):
    store = Store(settings.db)
    control = ControlPlane(riot_settings(riot, timeout_s=0.5))
    scheduler = Scheduler(store, settings, control=control, params_every_s=0.0)
    feed(store, CALM, 0)
    scheduler._pull_and_check()
    riot.stop()
    feed(store, [500.0], 20 * HOUR)
    report = scheduler._pull_and_check()  # RIoT down: the check runs all the same
    assert report.anomalies == 1 and effective(settings, store).tolerance == 4.0
    status = status_payload(store, "riot")
    assert status["outbox"]["riot"]["pending"] == 1
    assert status["outbox"]["riot"]["last_status"] is None  # no answer at all
    assert any("RIoT parameters" in e["message"] for e in status["recent_errors"])
    riot.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pending_summary(store, "riot")["pending"]:
        scheduler._housekeeping()  # what the loop does between checks
        time.sleep(0.2)
    assert pending_summary(store, "riot")["pending"] == 0
    assert len(riot.events) == 1
    control.close()


def test_out_of_range_parameters_are_refused_and_the_last_kept(riot, settings):
    store = Store(settings.db)
    control = ControlPlane(riot_settings(riot))
    scheduler = Scheduler(store, settings, control=control)
    scheduler._refresh_params()
    riot.params = {"keys": {"net_anomaly": {"tolerance": 7, "frequency": 12}}}
    scheduler._refresh_params()
    assert effective(settings, store).tolerance == 4.0
    with store.read() as db:
        (message,) = db.execute("SELECT message FROM errors WHERE kind = 'riot'").fetchone()
    assert "tolerance" in message and "7" in message
    control.close()
