"""A source outage in the middle of a run: stop the real influxd, start it again, and
the final state equals that of a run with no outage (issue: "no data lost")."""

from __future__ import annotations

import pytest

from influx_server import create_database, influxd, line_protocol, write
from netsentry.config import DetectionSettings
from netsentry.service.check import run_check
from netsentry.service.pull import HOUR_NS, catch_up
from netsentry.service.replay import riot_export
from netsentry.sources.base import SourceError
from netsentry.sources.influxdb import InfluxQLSource
from netsentry.store.sqlite import Store
from test_check import dump

SETTINGS = DetectionSettings(frequency=1)
LATENESS = 60_000_000_000


@pytest.fixture(scope="module")
def riot_in_influxd(tmp_path_factory):
    server, url = influxd(tmp_path_factory.mktemp("influxd"))
    server.start()
    batch = riot_export()
    create_database(url, "riot")
    write(url, "riot", line_protocol(batch))
    first_hour = int(batch.frame["time"].min()) // HOUR_NS * HOUR_NS  # type: ignore[operator]
    yield server, url, first_hour
    server.stop()


def run(
    store: Store, source: InfluxQLSource, first_hour: int, hours: range, down: range, server
) -> tuple[int, int]:
    """Wake up once an hour; return (checks run, wake-ups that found the source down)."""
    checks = failures = 0
    for hour in hours:
        if hour == down.start:
            server.stop()
        if hour == down.stop:
            server.start()
        now = first_hour + hour * HOUR_NS + LATENESS + 1
        try:
            checks += len(
                catch_up(
                    store,
                    [source],
                    HOUR_NS,
                    lambda: run_check(store, SETTINGS),
                    now_ns=now,
                    initial_lookback_ns=HOUR_NS,
                )
            )
        except SourceError:
            failures += 1
    return checks, failures


def comparable(store: Store) -> dict:
    state = dump(store)
    state["counters"] = {k: v for k, v in state["counters"].items() if not k.startswith("errors_")}
    return state


def test_outage_mid_run_ends_in_the_same_state(riot_in_influxd, tmp_path):
    server, url, first_hour = riot_in_influxd
    hours = range(1, 40)
    clean = Store(tmp_path / "clean.sqlite")
    checks, failures = run(
        clean, InfluxQLSource(url, "riot", timeout_s=5), first_hour, hours, range(0), server
    )
    assert (checks, failures) == (39, 0)

    outage = Store(tmp_path / "outage.sqlite")
    source = InfluxQLSource(url, "riot", timeout_s=5)
    checks, failures = run(outage, source, first_hour, hours, range(15, 22), server)
    assert failures == 7 and checks == 39  # the 7 missed hours were caught up on return
    assert outage.counters()["errors_source"] == 7
    assert comparable(outage) == comparable(clean)
    assert clean.counters()["anomalies"] > 0  # the comparison covers real verdicts
