"""Every route, with bad input and missing auth, against the real app."""

from __future__ import annotations

import gzip

import pytest

from helpers import HOUR
from netsentry.config import DetectionSettings
from netsentry.service.check import run_check
from netsentry.service.runtime import effective
from netsentry.store.sqlite import Store

LINES = "\n".join(
    f"tdmp_bytes_total,src=10.0.0.{i % 3},dst=10.0.0.9,service=http value={v} {t * HOUR}"
    for t, (i, v) in enumerate([(0, 100), (1, 50), (2, 10)] * 1)
)


def write(client, body, auth, **params):
    params.setdefault("db", "telegraf")
    return client.post("/write", params=params, content=body, headers=auth)


def feed_and_check(client, settings, hours=12, spike=None):
    """Counter series for three entities; optional (hour, increase) spike for 10.0.0.0."""
    lines, totals = [], [0.0, 0.0, 0.0]
    for h in range(hours):
        for i in range(3):
            totals[i] += 100 + (h % 3) + (5000 if spike == (h, i) else 0)
            lines.append(
                f"tdmp_bytes_total,src=10.0.0.{i},dst=10.0.0.9,service=http "
                f"value={totals[i]} {h * HOUR}"
            )
    store = client.app.state.store
    token = {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}
    reports = []
    for h in range(hours):  # one check per hour, as the service would run them
        response = client.post(
            "/write", params={"db": "x"}, headers=token, content="\n".join(lines[3 * h : 3 * h + 3])
        )
        assert response.status_code == 204, response.text
        reports.append(run_check(store, effective(settings, store)))
    return reports


def test_write_accepts_line_protocol_and_gzip(client, auth):
    assert write(client, LINES, auth).status_code == 204
    body = gzip.compress(LINES.replace("value=", "value=1").encode())
    r = client.post(
        "/write",
        params={"db": "t", "precision": "ns"},
        content=body,
        headers={**auth, "Content-Encoding": "gzip"},
    )
    assert r.status_code == 204
    status = client.get("/status").json()
    assert status["counters"]["records_ingested"] == 6
    assert status["inbox"]["pending"] == 6


@pytest.mark.parametrize(
    "precision,factor",
    [("s", 10**9), ("ms", 10**6), ("u", 10**3), ("n", 1), ("m", 60 * 10**9), ("h", 3600 * 10**9)],
)
def test_write_precisions(client, auth, precision, factor):
    assert write(client, "cpu,src=a value=1 7", auth, precision=precision).status_code == 204
    store: Store = client.app.state.store
    assert store.read_inbox(0, store.inbox_head()).frame["time"].to_list() == [7 * factor]


def test_partial_write_keeps_good_lines_and_names_the_bad_one(client, auth):
    body = "cpu,src=a value=1 1\ncpu,src=a value=oops 2\ncpu,src=b value=3 3\n"
    r = write(client, body, auth)
    assert r.status_code == 400
    error = r.json()
    assert error["line"] == 2 and "oops" in error["reason"]
    assert error["accepted"] == 2 and error["rejected"] == 1
    assert error["errors"][0]["text"] == "cpu,src=a value=oops 2"
    status = client.get("/status").json()
    assert status["counters"]["errors_ingest"] == 1
    assert (
        "line 2" in status["recent_errors"][0]["message"]
        or ":2:" in status["recent_errors"][0]["message"]
    )


def test_write_refusals(client, auth):
    assert write(client, LINES, {}).status_code == 401
    assert (
        write(client, LINES, {"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    )
    assert client.post("/write", content=LINES, headers=auth).json() == {
        "error": "database is required"
    }
    r = write(client, LINES, auth, precision="us")
    assert r.status_code == 400 and "precision" in r.json()["error"]
    r = client.post(
        "/write",
        params={"db": "x"},
        content=b"not gzip",
        headers={**auth, "Content-Encoding": "gzip"},
    )
    assert r.status_code == 400 and "gzip" in r.json()["error"]


def test_write_body_limit_also_after_decompression(tmp_path, auth):
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from helpers import TOKEN
    from netsentry.api.app import create_app
    from netsentry.config import Settings

    small = Settings(
        db=tmp_path / "s.sqlite", api_token=SecretStr(TOKEN), max_body_bytes=1000, _env_file=None
    )
    with TestClient(create_app(small)) as c:
        bomb = gzip.compress(b"cpu value=1\n" * 10_000)
        assert len(bomb) < 1000
        r = c.post(
            "/write", params={"db": "x"}, content=bomb, headers={**auth, "Content-Encoding": "gzip"}
        )
        assert r.status_code == 413
        assert write(c, "x" * 2000, auth).status_code == 413


def test_influx_style_credentials(client):
    import base64

    from helpers import TOKEN

    basic = base64.b64encode(f"telegraf:{TOKEN}".encode()).decode()
    assert write(client, LINES, {"Authorization": f"Basic {basic}"}).status_code == 204
    assert write(client, LINES, {"Authorization": f"Token {TOKEN}"}).status_code == 204
    assert write(client, LINES, {}, p=TOKEN).status_code == 204
    assert write(client, LINES, {"Authorization": "Basic !!!"}).status_code == 401


def test_no_token_configured_refuses_mutations(tmp_path):
    from fastapi.testclient import TestClient

    from netsentry.api.app import create_app
    from netsentry.config import Settings

    with TestClient(create_app(Settings(db=tmp_path / "s.sqlite", _env_file=None))) as c:
        r = c.put("/config", json={"tolerance": 4}, headers={"Authorization": "Bearer x"})
        assert r.status_code == 401 and "NETSENTRY_API_TOKEN" in r.json()["error"]
        assert c.get("/config").status_code == 200


def test_stats_routes(client, settings):
    feed_and_check(client, settings)
    stats = client.get("/tdmp_bytes_total/stats").json()
    assert len(stats) == 3
    row = next(s for s in stats if s["src"] == "10.0.0.1")
    assert row["n"] == 11 and row["dst"] == "10.0.0.9" and row["service"] == "http"
    assert row["sum"] == pytest.approx(row["mean"] * row["n"])
    one = client.get(f"/tdmp_bytes_total/stats/{row['key']}").json()
    assert one["mean"] == row["mean"] and one["sum_of_squares"] == pytest.approx(
        row["std"] ** 2 * (row["n"] - 1) + row["n"] * row["mean"] ** 2
    )
    assert client.get(f"/tdmp_bytes_total/stats/{row['key'].upper()}").status_code == 200
    assert client.get("/tdmp_bytes_total/stats/xyz").status_code == 400
    assert client.get("/tdmp_bytes_total/stats/0000000000000000").status_code == 404
    r = client.get("/nope/stats")
    assert r.status_code == 404 and "unknown measurement" in r.json()["error"]
    assert client.get("/measurements").json() == ["tdmp_bytes_total"]


def test_entity_type_routes(client, settings):
    feed_and_check(client, settings)
    assert client.get("/src").json() == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert client.get("/service").json() == ["http"]
    assert client.get("/url").json() == [""]
    r = client.get("/host")
    assert r.status_code == 404 and "entity types are" in r.json()["error"]


def test_anomalies_and_feedback(client, settings, auth):
    reports = feed_and_check(client, settings, hours=14, spike=(12, 0))
    assert reports[12].anomalies == 1 and sum(r.anomalies for r in reports) == 1
    listed = client.get("/tdmp_bytes_total/anomalies").json()
    spike = next(a for a in listed if a["detector"] == "zscore" and a["tags"]["src"] == "10.0.0.0")
    assert spike["explanation"]["tolerance"] == 3.0 and spike["score"] > 3
    assert client.get(f"/anomalies/{spike['id']}").json()["id"] == spike["id"]
    key = spike["key"]
    before = client.get(f"/tdmp_bytes_total/stats/{key}").json()

    url = f"/anomalies/{spike['id']}/feedback"
    assert client.post(url, json={"status": "false_positive"}).status_code == 401
    assert client.post(url, json={"status": "bogus"}, headers=auth).status_code == 422
    r = client.post(url, json={"status": "false_positive"}, headers=auth)
    assert r.status_code == 200 and r.json()["folded_into_baseline"] is True
    after = client.get(f"/tdmp_bytes_total/stats/{key}").json()
    assert after["n"] == before["n"] + 1 and after["mean"] > before["mean"]
    assert spike["id"] not in [a["id"] for a in client.get("/tdmp_bytes_total/anomalies").json()]
    every = client.get("/tdmp_bytes_total/anomalies", params={"status": "all"}).json()
    assert spike["id"] in [a["id"] for a in every]
    # a second false_positive does not fold twice
    client.post(url, json={"status": "false_positive"}, headers=auth)
    assert client.get(f"/tdmp_bytes_total/stats/{key}").json()["n"] == after["n"]
    assert (
        client.post(
            "/anomalies/nope/feedback", json={"status": "confirmed"}, headers=auth
        ).status_code
        == 404
    )
    assert client.get("/anomalies/nope").status_code == 404
    assert client.get("/nope/anomalies").status_code == 404
    assert client.get("/tdmp_bytes_total/anomalies", params={"limit": 0}).status_code == 422


def test_html_for_browsers(client, settings):
    feed_and_check(client, settings)
    r = client.get("/tdmp_bytes_total/stats", headers={"Accept": "text/html,*/*"})
    assert r.headers["content-type"].startswith("text/html")
    assert "<table>" in r.text and "10.0.0.1" in r.text
    evil = client.get("/%3Cscript%3E", headers={"Accept": "text/html"})
    assert evil.status_code == 404  # errors are JSON, never HTML a browser would run
    assert evil.headers["content-type"] == "application/json"


def test_config_routes(client, auth):
    assert client.get("/config").json()["tolerance"] == 3.0
    assert client.put("/config", json={"tolerance": 4.5}).status_code == 401
    r = client.put("/config", json={"tolerance": 4.5, "frequency": 6}, headers=auth)
    assert r.status_code == 200 and r.json()["tolerance"] == 4.5 and r.json()["frequency"] == 6
    for bad in (
        {"tolerance": 1.9},
        {"tolerance": 6.1},
        {"frequency": 0},
        {"frequency": 169},
        {"color": "red"},
    ):
        r = client.put("/config", json=bad, headers=auth)
        assert r.status_code == 422, bad
        assert r.json()["error"]
    store = client.app.state.store
    assert effective(DetectionSettings(), store).tolerance == 4.5


def test_index_status_metrics_openapi(client, settings):
    feed_and_check(client, settings)
    paths = [r["path"] for r in client.get("/").json()["routes"]]
    assert paths[-1] == "/{entity_type}" or "/{entity_type}" in paths
    for p in (
        "/write",
        "/status",
        "/{measurement}/stats",
        "/{measurement}/stats/{key}",
        "/{entity_type}",
        "/{measurement}/anomalies",
        "/anomalies/{anomaly_id}/feedback",
        "/config",
        "/metrics",
    ):
        assert p in paths
    status = client.get("/status").json()
    assert status["last_check"]["records"] == 3 and status["entities"] == 3
    metrics = client.get("/metrics").text
    assert "netsentry_checks_total 12.0" in metrics
    assert "netsentry_records_checked_total 36.0" in metrics
    assert "netsentry_inbox_pending 0.0" in metrics
    assert client.get("/openapi.json").json()["info"]["title"] == "netsentry"


def test_official_influxdb_client_writes_through_a_real_server(live_server, settings):
    """The official client's Point API and WriteApi, over HTTP, to /api/v2/write."""
    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    from helpers import TOKEN

    points = [
        Point("tdmp_bytes_total")
        .tag("src", "dev one")
        .tag("dst", "a,b=c")
        .tag("service", "mqtt")
        .field("value", 42.5)
        .time(1_639_069_200, WritePrecision.S),
        Point("cpu")
        .tag("src", "h")
        .field("usage_idle", 97.0)
        .field("usage_user", 2)
        .field("note", "text is ignored")
        .time(1_639_069_200_000, WritePrecision.MS),
    ]
    with InfluxDBClient(url=live_server, token=TOKEN, org="netsentry") as influx:
        write_api = influx.write_api(write_options=SYNCHRONOUS)
        write_api.write(bucket="net", record=points[0], write_precision=WritePrecision.S)
        write_api.write(bucket="net", record=points[1], write_precision=WritePrecision.MS)
    store = Store(settings.db)
    frame = store.read_inbox(0, store.inbox_head()).frame.sort("measurement")
    assert frame["measurement"].to_list() == [
        "cpu_usage_idle",
        "cpu_usage_user",
        "tdmp_bytes_total",
    ]
    row = frame.row(2, named=True)
    assert (row["src"], row["dst"], row["service"], row["value"], row["time"]) == (
        "dev one",
        "a,b=c",
        "mqtt",
        42.5,
        1_639_069_200 * 10**9,
    )
    assert frame["time"][0] == 1_639_069_200 * 10**9


def test_point_api_lines_posted_to_v1_write_on_a_real_server(live_server, settings):
    """Line protocol from the official client's Point API, sent as Telegraf would (gzip)."""
    import httpx
    from influxdb_client import Point, WritePrecision

    from helpers import TOKEN

    lines = "\n".join(
        Point("tdmp_packets_total")
        .tag("src", f"10.0.0.{i}")
        .tag("url", "http://x/a b")
        .field("value", float(i))
        .time(1_639_069_200_000_000 + i, WritePrecision.US)
        .to_line_protocol()
        for i in range(5)
    )
    response = httpx.post(
        f"{live_server}/write",
        params={"db": "telegraf", "precision": "u"},
        content=gzip.compress(lines.encode()),
        headers={"Content-Encoding": "gzip", "Authorization": f"Token {TOKEN}"},
    )
    assert response.status_code == 204, response.text
    store = Store(settings.db)
    frame = store.read_inbox(0, store.inbox_head()).frame
    assert frame["time"].to_list() == [(1_639_069_200_000_000 + i) * 1000 for i in range(5)]
    assert set(frame["url"].to_list()) == {"http://x/a b"}


def test_v2_write_refusals(client, auth):
    assert client.post("/api/v2/write", content=LINES, headers=auth).json() == {
        "error": "bucket is required"
    }
    r = client.post(
        "/api/v2/write", params={"bucket": "b", "precision": "u"}, content=LINES, headers=auth
    )
    assert r.status_code == 400 and "precision" in r.json()["error"]
    r = client.post(
        "/api/v2/write",
        params={"bucket": "b", "precision": "us"},
        content="cpu,src=a value=1 5",
        headers=auth,
    )
    assert r.status_code == 204
    assert client.post("/api/v2/write", params={"bucket": "b"}, content=LINES).status_code == 401
