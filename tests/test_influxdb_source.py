"""InfluxDB sources: InfluxQL against a real influxd 1.6; Flux queries and answers."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from influx_server import create_database, line_protocol, query, write
from influx_server import influxd as make_influxd
from netsentry.keys import entity_key
from netsentry.model import KEY_TAGS, Batch
from netsentry.service.replay import RIOT_MEASUREMENTS, riot_export
from netsentry.sources.base import Source, SourceError
from netsentry.sources.influxdb import InfluxQLSource
from netsentry.sources.influxdb2 import (
    FluxSource,
    flux_tag_values,
    flux_window_query,
    parse_flux_csv,
)
from servers import ServerProcess, free_port

ORDER = ["measurement", "key", "time"]


@dataclass
class Influxd:
    """A running influxd: its URL, and ``stop``/``start`` keeping port and data."""

    server: ServerProcess
    url: str

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def influxd(tmp_path_factory):
    server, url = make_influxd(tmp_path_factory.mktemp("influxd"))
    server.start()
    try:
        create_database(url, "netsentry")
        yield Influxd(server, url)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def riot(influxd):
    """The whole RIoT export written into database ``riot``."""
    batch = riot_export()
    create_database(influxd.url, "riot")
    write(influxd.url, "riot", line_protocol(batch))
    return batch


def ordered(batch: Batch) -> pl.DataFrame:
    return batch.frame.sort(ORDER)


def window(batch: Batch, since: int, until: int) -> pl.DataFrame:
    t = pl.col("time")
    return ordered(Batch(batch.frame.filter((t > since) & (t <= until))))


# --- InfluxQL against influxd ------------------------------------------------------------


def test_whole_export_comes_back_exactly(influxd, riot):
    source = InfluxQLSource(influxd.url, "riot", list(RIOT_MEASUREMENTS))
    assert isinstance(source, Source)
    assert source.name == "influxdb:riot"
    assert source.lateness_ns == 60_000_000_000
    got = source.pull(riot.frame["time"].min() - 1, riot.frame["time"].max())
    assert len(got) == len(riot) == 19_888
    assert_frame_equal(ordered(got), ordered(riot))  # time, value, every tag, entity key
    assert source.ignored_fields == source.non_finite == 0


def test_consecutive_windows_partition_the_export(influxd, riot):
    times = np.unique(riot.frame["time"].to_numpy())
    rng = np.random.default_rng(7)
    cuts = set(rng.choice(times, 12, replace=False).tolist())  # on points: `<= until` matters
    cuts |= {int(t) + d for t in rng.choice(times, 6, replace=False) for d in (-1, 1)}
    cuts |= {int(times[0]) - 1, int(times[-1])}
    bounds = sorted(cuts)
    source = InfluxQLSource(influxd.url, "riot", chunk_size=997)  # measurements listed
    parts = []
    for since, until in itertools.pairwise(bounds):
        part = source.pull(since, until)
        assert_frame_equal(ordered(part), window(riot, since, until))
        parts.append(part)
    union = Batch.concat(parts).frame
    assert union.select(ORDER).is_duplicated().sum() == 0
    assert_frame_equal(union.sort(ORDER), ordered(riot))


def test_boundaries_are_since_exclusive_until_inclusive(influxd, riot):
    t = int(riot.frame["time"].min())
    source = InfluxQLSource(influxd.url, "riot", ["tdmp_bytes_total"])
    at_t = riot.frame.filter((pl.col("time") == t) & (pl.col("measurement") == "tdmp_bytes_total"))
    assert len(at_t) > 0
    assert len(source.pull(t - 1, t)) == len(at_t)
    assert len(source.pull(t, t + 1)) == 0
    assert len(source.pull(t - 1, t - 1)) == 0  # an empty window asks nothing


def test_field_types_names_and_tags(influxd):
    create_database(influxd.url, "types")
    tags = "src=a\\ b\\,c\\=d,dst=10.0.0.1,host=not-a-key"
    write(
        influxd.url,
        "types",
        [
            f'flows,{tags} value=1.5,bytes=42i,note="text",up=true 1000',
            f"flows,{tags} bytes=43i 2000",
            "odd\\ name\\,x,src=s\\ 1 value=-2e-3 3000",
            'we"ird\\x,src=q"u\\=o\\,te value=7 4000',
            "prometheus,src=p tdmp_bytes_total=9,counter=10 5000",
        ],
    )
    source = InfluxQLSource(influxd.url, "types", chunk_size=1)
    got = source.pull(0, 10_000).frame.sort("time", "measurement")
    assert got.select("time", "measurement", "value").rows() == [
        (1000, "flows", 1.5),
        (1000, "flows_bytes", 42.0),
        (2000, "flows_bytes", 43.0),
        (3000, "odd name,x", -0.002),
        (4000, 'we"ird\\x', 7.0),
        (5000, "prometheus", 10.0),  # field "counter" keeps the measurement's name
        (5000, "tdmp_bytes_total", 9.0),
    ]
    assert got["src"].to_list() == ["a b,c=d"] * 3 + ["s 1", 'q"u=o,te', "p", "p"]
    assert got["dst"].to_list() == ["10.0.0.1"] * 3 + [""] * 4
    expected = {**dict.fromkeys(KEY_TAGS, ""), "src": "a b,c=d", "dst": "10.0.0.1"}
    assert got["key"][0] == entity_key(expected)  # host is not part of the entity
    assert source.ignored_fields == 2  # the string and the boolean
    assert source.non_finite == 0
    only = InfluxQLSource(influxd.url, "types", ["odd name,x"]).pull(0, 10_000)
    assert only.frame["measurement"].to_list() == ["odd name,x"]


def test_retention_policy(influxd):
    create_database(influxd.url, "rps")
    query(influxd.url, 'CREATE RETENTION POLICY "a week" ON "rps" DURATION 1w REPLICATION 1')
    now = time.time_ns()
    write(influxd.url, "rps", ["m,src=x value=1"], rp="a week", precision="n")
    write(influxd.url, "rps", ["m,src=y value=2"], precision="n")
    week = InfluxQLSource(influxd.url, "rps", ["m"], retention_policy="a week")
    assert week.pull(now - 60 * 10**9, now + 60 * 10**9).frame["src"].to_list() == ["x"]
    default = InfluxQLSource(influxd.url, "rps", ["m"])
    assert default.pull(now - 60 * 10**9, now + 60 * 10**9).frame["src"].to_list() == ["y"]


def test_missing_database_is_reported_with_influx_text(influxd):
    source = InfluxQLSource(influxd.url, "nope", ["m"])
    with pytest.raises(SourceError, match="database not found: nope") as err:
        source.pull(0, 10)
    assert influxd.url in str(err.value) and "'m'" in str(err.value)
    with pytest.raises(SourceError, match="database not found: nope"):
        InfluxQLSource(influxd.url, "nope").pull(0, 10)  # SHOW MEASUREMENTS


def test_outage_then_recovery(influxd, riot):
    source = InfluxQLSource(influxd.url, "riot", timeout_s=5.0)
    since, until = int(riot.frame["time"].min()) - 1, int(riot.frame["time"].max())
    influxd.stop()
    try:
        with pytest.raises(SourceError, match="ConnectError") as err:
            source.pull(since, until)
        assert influxd.url in str(err.value)
    finally:
        influxd.start()
    assert_frame_equal(ordered(source.pull(since, until)), ordered(riot))


# --- InfluxQL against stand-ins that misbehave -------------------------------------------


@contextmanager
def stand_in(
    body: bytes, status: int = 200, delay: float = 0.0, content_type: str = "application/json"
) -> Iterator[tuple[str, list[dict]]]:
    """An HTTP server answering every request with ``body`` after ``delay`` seconds."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            requests.append(
                {"path": self.path, "headers": dict(self.headers), "body": self.rfile.read(size)}
            )
            time.sleep(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up (timeout tests)

        def do_GET(self) -> None:
            self.answer()

        def do_POST(self) -> None:
            self.answer()

        def log_message(self, *args: object) -> None:
            """Quiet: the test asserts on answers, not on the server's log."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", requests
    finally:
        server.shutdown()
        server.server_close()


GOOD = {
    "statement_id": 0,
    "series": [
        {"name": "m", "tags": {"src": "a"}, "columns": ["time", "value"], "values": [[1, 2.5]]}
    ],
}


def chunks(*results: dict) -> bytes:
    return b"".join(json.dumps({"results": [r]}).encode() + b"\n" for r in results)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"results": [{"statement_id": 0, "ser', 200, "malformed JSON"),
        (b"<html>oops</html>", 500, "HTTP 500: <html>oops</html>"),
        (b'{"error": "authorization failed"}', 401, "HTTP 401: authorization failed"),
        (chunks({**GOOD, "partial": True}), 200, "ended in the middle of a result"),
        (
            chunks({**GOOD, "partial": True}, {"statement_id": 0, "error": "max-select-point"}),
            200,
            "error: max-select-point",
        ),
        (b"", 200, "empty response"),
        (b'["not", "influx"]\n', 200, "unexpected JSON"),
        (
            chunks(
                {
                    "statement_id": 0,
                    "series": [{"name": "m", "columns": ["time", "v"], "values": [[1, 2], [3]]}],
                }
            ),
            200,
            "unexpected series: rows that are not lists of 2 cells",
        ),
    ],
)
def test_garbage_is_a_source_error(body, status, message):
    with stand_in(body, status) as (url, _):
        source = InfluxQLSource(url, "db", ["m"])
        with pytest.raises(SourceError, match=message) as err:
            source.pull(0, 10)
        assert url in str(err.value) and "'m'" in str(err.value)


def test_slow_server_times_out():
    with stand_in(chunks(GOOD), delay=3.0) as (url, _):
        started = time.monotonic()
        with pytest.raises(SourceError, match="timed out"):
            InfluxQLSource(url, "db", ["m"], timeout_s=0.3).pull(0, 10)
        assert time.monotonic() - started < 2.5


def test_request_and_non_finite_values():
    body = chunks(
        {
            "statement_id": 0,
            "series": [
                {
                    "name": "m",
                    "columns": ["time", "value", "n"],
                    "values": [[1, 2.5, None], [2, float("nan"), 3], [3, float("inf"), "x"]],
                }
            ],
        }
    )
    with stand_in(body) as (url, requests):
        source = InfluxQLSource(
            url, 'd"b', ["m"], username="reader", password="pw", retention_policy="r", chunk_size=5
        )
        got = source.pull(0, 10)
    assert got.frame.select("time", "measurement", "value").rows() == [
        (1, "m", 2.5),
        (2, "m_n", 3.0),
    ]
    assert (source.non_finite, source.ignored_fields) == (2, 1)
    request = requests[0]
    assert request["headers"]["Authorization"] == "Basic cmVhZGVyOnB3"
    assert "db=d%22b" in request["path"] and "chunk_size=5" in request["path"]
    assert "epoch=ns" in request["path"] and "chunked=true" in request["path"]
    assert source.window_query("m", 0, 10) == (
        'SELECT * FROM "r"."m" WHERE time > 0 AND time <= 10 GROUP BY *'
    )


# --- Flux ----------------------------------------------------------------------------------


def test_flux_window_query_exactly():
    since, until = 1_639_069_200_000_000_000, 1_639_072_800_000_000_000
    assert flux_window_query("riot", "tdmp_bytes_total", since, until) == (
        'from(bucket: "riot")\n'
        '    |> range(start: time(v: "2021-12-09T17:00:00.000000001Z"), '
        'stop: time(v: "2021-12-09T18:00:00.000000001Z"))\n'
        '    |> filter(fn: (r) => r._measurement == "tdmp_bytes_total")'
    )
    assert flux_window_query('b"\\', 'm "x" \\ ${y}', -1, 0) == (
        'from(bucket: "b\\"\\\\")\n'
        '    |> range(start: time(v: "1970-01-01T00:00:00.000000000Z"), '
        'stop: time(v: "1970-01-01T00:00:00.000000001Z"))\n'
        '    |> filter(fn: (r) => r._measurement == "m \\"x\\" \\\\ \\${y}")'
    )
    assert flux_window_query("b", None, 0, 1).count("filter") == 0


def test_flux_tag_values_exactly():
    assert flux_tag_values("riot", "src", 24) == (
        'import "influxdata/influxdb/schema"\n\n'
        'schema.tagValues(bucket: "riot", tag: "src", start: -24h)'
    )
    assert 'bucket: "a\\"b"' in flux_tag_values('a"b', "dst", 1)
    with pytest.raises(ValueError, match="at least 1"):
        flux_tag_values("riot", "src", 0)


# An InfluxDB 2.x answer to flux_window_query("riot", "tdmp_bytes_total", ...), in the
# format of docs.influxdata.com/influxdb/v2/reference/syntax/annotated-csv (CRLF lines,
# tables of one schema under one header, a blank line and new annotations when the
# schema changes; string fields in their own table). Lines 7 and 8 have bad values.
START, STOP = "2021-12-09T17:00:00.000000001Z", "2021-12-09T19:00:00.000000001Z"
A = "ownit.se,daap,tcp,munin,10.0.0.7,zebra,http://demo.riotsecure.io:7888/metrics"
B = "telenor.se,sieve,tcp,xmms2,10.0.0.8,daap,http://demo.riotsecure.io:7888/metrics"
ANSWER = "\r\n".join(
    [
        "#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,double,string,"
        "string,string,string,string,string,string,string,string",
        "#group,false,false,true,true,false,false,true,true,true,true,true,true,true,true,true",
        "#default,_result,,,,,,,,,,,,,,",
        ",result,table,_start,_stop,_time,_value,_field,_measurement,dst,dstp,proto,service,src,"
        "srcp,url",
        f",,0,{START},{STOP},2021-12-09T18:00:00Z,1520,value,tdmp_bytes_total,{A}",
        f",,0,{START},{STOP},2021-12-09T19:00:00Z,2048.5,value,tdmp_bytes_total,{A}",
        f",,1,{START},{STOP},2021-12-09T18:00:00Z,,value,tdmp_bytes_total,{B}",
        f",,1,{START},{STOP},2021-12-09T18:30:00.123456789Z,NaN,value,tdmp_bytes_total,{B}",
        f",,1,{START},{STOP},2021-12-09T19:00:00Z,3e3,value,tdmp_bytes_total,{B}",
        "",
        "#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,long,string,"
        "string,string",
        "#group,false,false,true,true,false,false,true,true,true",
        "#default,_result,,,,,,,,",
        ",result,table,_start,_stop,_time,_value,_field,_measurement,src",
        f",,2,{START},{STOP},2021-12-09T18:00:00.000000001Z,7,flows,tdmp_bytes_total,10.0.0.9",
        "",
        "#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,string,string,"
        "string,string",
        "#group,false,false,true,true,false,false,true,true,true",
        "#default,_result,,,,,,,,",
        ",result,table,_start,_stop,_time,_value,_field,_measurement,src",
        f",,3,{START},{STOP},2021-12-09T18:00:00Z,hello,note,tdmp_bytes_total,10.0.0.9",
        "",
        "",
    ]
)
# Flux's in-band error (same format as influxdb-client-python's own parser tests).
ERROR = "\r\n".join(
    [
        "#datatype,string,string",
        "#group,true,true",
        "#default,,",
        ",error,reference",
        ',"runtime error: schema collision: cannot group float and string types together",',
        "",
        "",
    ]
)
H = 3_600_000_000_000


def check_answer(batch: Batch) -> None:
    t0 = 1_639_072_800_000_000_000  # 2021-12-09T18:00:00Z
    frame = batch.frame
    assert frame.select("time", "measurement", "value", "src").rows() == [
        (t0, "tdmp_bytes_total", 1520.0, "10.0.0.7"),
        (t0 + H, "tdmp_bytes_total", 2048.5, "10.0.0.7"),
        (t0 + H, "tdmp_bytes_total", 3000.0, "10.0.0.8"),
        (t0 + 1, "tdmp_bytes_total_flows", 7.0, "10.0.0.9"),
    ]
    tags = dict(
        zip(["dst", "dstp", "proto", "service", "src", "srcp", "url"], A.split(","), strict=True)
    )
    assert frame.row(0, named=True) == {
        "time": t0,
        "measurement": "tdmp_bytes_total",
        "value": 1520.0,
        "key": entity_key(tags),
        **tags,
    }
    assert frame["key"][3] == entity_key({**dict.fromkeys(KEY_TAGS, ""), "src": "10.0.0.9"})


def test_annotated_csv_answer_is_parsed():
    result = parse_flux_csv(ANSWER.splitlines(keepends=True), "answer")
    check_answer(result.batch)
    assert [(e.line_no, e.reason) for e in result.errors] == [
        (7, "missing _value"),
        (8, "non-finite _value NaN"),
    ]
    assert result.ignored_fields == 1


def test_error_table_is_a_source_error():
    lines = (ANSWER + ERROR).splitlines(keepends=True)  # good tables, then the error
    with pytest.raises(SourceError, match="query failed: runtime error: schema collision"):
        parse_flux_csv(lines, "answer")


def test_flux_source_through_the_official_client():
    since, until = 1_639_069_200_000_000_000, 1_639_076_400_000_000_000
    with stand_in(ANSWER.encode(), content_type="text/csv; charset=utf-8") as (url, requests):
        source = FluxSource(url, "a-token", "riot-org", "riot", ["tdmp_bytes_total"])
        assert isinstance(source, Source) and source.name == "influxdb2:riot-org/riot"
        check_answer(source.pull(since, until))
    assert [e.line_no for e in source.errors] == [7, 8]
    assert (source.rejected, source.ignored_fields) == (2, 1)
    request = requests[0]
    assert request["path"].startswith("/api/v2/query?org=riot-org")
    assert request["headers"]["Authorization"] == "Token a-token"
    sent = json.loads(request["body"])
    assert sent["query"] == flux_window_query("riot", "tdmp_bytes_total", since, until)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (ERROR.encode(), 200, "query failed: runtime error"),
        (
            b'{"code":"not found","message":"failed to initialize execute state: could not '
            b'find bucket \\"riot\\""}',
            404,
            'HTTP 404: failed .* bucket "riot"',
        ),
        (b"internal error", 500, "HTTP 500"),
    ],
)
def test_flux_source_errors(body, status, message):
    with stand_in(body, status, content_type="text/csv") as (url, _):
        source = FluxSource(url, "t", "o", "riot", ["m"])
        with pytest.raises(SourceError, match=message) as err:
            source.pull(0, 10)
        assert url in str(err.value)


def test_flux_source_unreachable():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SourceError, match=r"Connect|refused") as err:
        FluxSource(url, "t", "o", "riot", ["m"], timeout_s=2.0).pull(0, 10)
    assert url in str(err.value)
