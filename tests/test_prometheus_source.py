"""The Prometheus source against a real Prometheus scraping a real exporter."""

from __future__ import annotations

import itertools
import threading
import time

import httpx
import polars as pl
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from netsentry.config import DetectionSettings
from netsentry.keys import entity_key
from netsentry.service.check import run_check
from netsentry.sources.base import SourceError
from netsentry.sources.prometheus import PrometheusSource
from netsentry.store.sqlite import Store
from prometheus_server import prometheus
from servers import free_port

LABELS = ["src", "dst", "srcp", "dstp", "proto", "service", "url"]
FLOW = {
    "src": "10.0.0.7",
    "dst": "10.0.0.1",
    "srcp": "5555",
    "dstp": "mqtt",
    "proto": "tcp",
    "service": "mqtt",
    "url": "",
}


@pytest.fixture(scope="module")
def exporter():
    """A test exporter with the seed's counter families, bumped from a thread."""
    registry = CollectorRegistry()
    bytes_ = Counter("tdmp_bytes", "bytes per flow", LABELS, registry=registry)
    temperature = Gauge("device_temperature", "a gauge", ["src"], registry=registry)
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            bytes_.labels(**FLOW).inc(100)
            temperature.labels(src="10.0.0.7").set(21.5)
            stop.wait(0.25)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    yield f"127.0.0.1:{port}"
    stop.set()
    server.shutdown()


@pytest.fixture(scope="module")
def prom(tmp_path_factory, exporter):
    server, url = prometheus(tmp_path_factory.mktemp("prom"), [exporter], scrape_ms=1000)
    server.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until a few scrapes have landed
        r = httpx.get(
            f"{url}/api/v1/query", params={"query": "count_over_time(tdmp_bytes_total[1m])"}
        )
        result = r.json()["data"]["result"]
        if result and float(result[0]["value"][1]) >= 8:
            break
        time.sleep(0.5)
    yield url
    server.stop()


def test_grid_windows_partition_time():
    source = PrometheusSource("http://x", ["m"], step_s=1.0)
    spans = source.grid(1_000_000_000, 5_500_000_000)
    assert spans == [(2000, 5000)]
    assert source.grid(5_500_000_000, 6_000_000_000) == [(6000, 6000)]
    assert source.grid(5_000_000_000, 5_999_000_000) == []
    long = source.grid(0, 30_000 * 1_000_000_000)
    assert long[0] == (1000, 11_000_000) and long[-1][1] == 30_000_000
    assert all(b[0] == a[1] + 1000 for a, b in itertools.pairwise(long))


def test_reads_counters_created_and_gauges_with_entity_tags(prom):
    now = time.time_ns()
    source = PrometheusSource(prom, ['{__name__=~"tdmp_bytes_.*|device_temperature"}'], step_s=1.0)
    batch = source.pull(now - 6_000_000_000, now)
    frame = batch.frame
    assert set(frame["measurement"].unique()) == {
        "tdmp_bytes_total",
        "tdmp_bytes_created",
        "device_temperature",
    }
    counter = frame.filter(pl.col("measurement") == "tdmp_bytes_total").sort("time")
    assert counter.height >= 4
    assert counter["key"].unique().to_list() == [entity_key(FLOW)]
    assert counter.row(0, named=True)["service"] == "mqtt"
    values = counter["value"].to_list()
    assert values == sorted(values) and all(v % 100 == 0 for v in values)
    assert (counter["time"] % 1_000_000_000 == 0).all()  # on the 1 s grid
    created = frame.filter(pl.col("measurement") == "tdmp_bytes_created")
    assert created["value"].n_unique() == 1 and created["value"][0] > 1.6e9


def test_consecutive_windows_neither_overlap_nor_gap(prom):
    now = time.time_ns() // 1_000_000_000 * 1_000_000_000
    source = PrometheusSource(prom, ["tdmp_bytes_total"], step_s=1.0)
    whole = source.pull(now - 6_000_000_000, now).frame.sort("time")
    cuts = [now - 6_000_000_000, now - 4_300_000_000, now - 4_000_000_000, now - 1_700_000_000, now]
    parts = pl.concat([source.pull(a, b).frame for a, b in itertools.pairwise(cuts)])
    assert parts.sort("time").equals(whole)


def test_counters_become_increases_in_a_check(prom, tmp_path):
    now = time.time_ns()
    source = PrometheusSource(prom, ["tdmp_bytes_total", "tdmp_bytes_created"], step_s=1.0)
    store = Store(tmp_path / "s.sqlite")
    store.append(source.pull(now - 6_000_000_000, now), checkpoint=(source.name, now))
    report = run_check(store, DetectionSettings(counter_interval_s=1.0))
    assert report.records > 0 and report.late == 0
    state, _ = store.load_state("zscore", "tdmp_bytes_total")
    # ~4 increments of 100 per second, read once a second
    assert 250 <= state["mean"][0] <= 550
    assert store.watermark(source.name) == now


def test_failures_say_what_and_where(prom):
    now = time.time_ns()
    closed = PrometheusSource(f"http://127.0.0.1:{free_port()}", ["up"], step_s=1.0)
    with pytest.raises(SourceError, match="ConnectError"):
        closed.pull(now - 5_000_000_000, now)
    bad = PrometheusSource(prom, ["rate(tdmp_bytes_total["], step_s=1.0)
    with pytest.raises(SourceError, match=r"HTTP 400.*parse error"):
        bad.pull(now - 5_000_000_000, now)
    scalar = PrometheusSource(prom, ["1 + 1"], step_s=1.0)
    with pytest.raises(SourceError, match="series without metric name"):
        scalar.pull(now - 5_000_000_000, now)
