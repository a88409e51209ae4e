"""The RIoT client against the stand-in: parameters and event reports."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from netsentry.respond.riot import (
    MESSAGE_MAX_CHARS,
    RiotClient,
    RiotError,
    header_safe,
)
from netsentry.service.check import describe
from riot_standin import HA1, USER, WRONG_HA1, last_auth, make_anomaly, riot_settings, seed_check

# -- get_params ----------------------------------------------------------------------


def test_get_params_reads_and_authenticates(riot, riot_client):
    assert riot_client.get_params() == (4.0, 12)
    tolerance, frequency = riot_client.get_params()
    assert type(tolerance) is float and type(frequency) is int
    first, second = riot.requests
    assert (first["url"].path, first["url"].query) == ("/global", "expand")
    headers = first["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-cache"
    # decision: the authority hashes "GET:/global", without "?expand", as the seed does
    assert seed_check(headers["Authorization"], "GET", "/global", {USER: HA1}) is None
    assert headers["Authorization"] != second["headers"]["Authorization"]  # fresh each call
    assert riot.refused == []


@pytest.mark.parametrize(("tolerance", "frequency"), [(2, 1), (6, 168), (4.5, 12.0), (2.0, 168.0)])
def test_get_params_accepts_the_whole_ranges(riot, riot_client, tolerance, frequency):
    riot.params = {"keys": {"net_anomaly": {"tolerance": tolerance, "frequency": frequency}}}
    assert riot_client.get_params() == (float(tolerance), int(frequency))


def _net(**values: Any) -> dict[str, Any]:
    return {"keys": {"net_anomaly": values}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"[1, 2]", "missing keys"),
        (json.dumps({}).encode(), "missing keys$"),
        (json.dumps({"keys": {}}).encode(), "missing keys.net_anomaly$"),
        (json.dumps({"keys": 3}).encode(), "missing keys.net_anomaly$"),
        (json.dumps({"keys": {"net_anomaly": 5}}).encode(), "net_anomaly is not an object"),
        (json.dumps(_net(frequency=12)).encode(), "missing keys.net_anomaly.tolerance"),
        (json.dumps(_net(tolerance=4)).encode(), "missing keys.net_anomaly.frequency"),
        (json.dumps(_net(tolerance="4", frequency=12)).encode(), "tolerance must be a number"),
        (json.dumps(_net(tolerance=True, frequency=12)).encode(), "got bool"),
        (json.dumps(_net(tolerance=None, frequency=12)).encode(), "got null"),
        (json.dumps(_net(tolerance=4, frequency="12")).encode(), "frequency must be a number"),
        (json.dumps(_net(tolerance=1.99, frequency=12)).encode(), r"tolerance = 1.99 is outside"),
        (json.dumps(_net(tolerance=6.01, frequency=12)).encode(), r"outside \[2, 6\]"),
        (json.dumps(_net(tolerance=4, frequency=0)).encode(), r"frequency = 0 is outside"),
        (json.dumps(_net(tolerance=4, frequency=169)).encode(), r"outside \[1, 168\]"),
        (json.dumps(_net(tolerance=4, frequency=12.5)).encode(), "not a whole number of hours"),
        (json.dumps(_net(tolerance=4, frequency=10**400)).encode(), "frequency = 1000"),
        (b'{"keys": {"net_anomaly": {"tolerance": NaN, "frequency": 12}}}', "outside"),
        (b'{"keys": {"net_anomaly": {"tolerance": 4, "frequency": Infinity}}}', "outside"),
    ],
)
def test_get_params_refuses_bad_bodies(riot, riot_client, body, message):
    riot.raw_params = body
    with pytest.raises(RiotError, match=message) as caught:
        riot_client.get_params()
    assert caught.value.status == 200 and not caught.value.retryable
    assert "GET /global?expand" in caught.value.message


@pytest.mark.parametrize(
    ("mode", "status", "retryable", "message"),
    [
        (401, 401, False, "unauthorized"),
        (404, 404, False, "not found"),
        (403, 403, False, "unexpected 403"),
        (500, 500, True, "unexpected 500"),
        (503, 503, True, "unexpected 503"),
        (429, 429, True, "unexpected 429"),
        ("drop", None, True, "RemoteProtocolError"),
    ],
)
def test_get_params_status_errors(riot, riot_client, mode, status, retryable, message):
    riot.mode = mode
    with pytest.raises(RiotError, match=message) as caught:
        riot_client.get_params()
    assert (caught.value.status, caught.value.retryable) == (status, retryable)


def test_get_params_real_refusals(riot):
    with (
        RiotClient(riot_settings(riot, ha1=SecretStr(WRONG_HA1))) as client,
        pytest.raises(RiotError, match="unauthorized") as caught,
    ):
        client.get_params()
    assert caught.value.status == 401 and riot.refused == ["wrong authority"]
    assert HA1 not in str(caught.value) and WRONG_HA1 not in str(caught.value)
    with (
        RiotClient(riot_settings(riot, uri="/nowhere")) as client,
        pytest.raises(RiotError, match="not found") as caught,
    ):
        client.get_params()
    assert caught.value.status == 404


def test_replayed_and_stale_nonces_are_refused(riot, riot_client):
    riot_client.get_params()
    replay = httpx.get(
        f"{riot.base}/global?expand", headers={"Authorization": last_auth(riot)}, timeout=2
    )
    assert replay.status_code == 401 and riot.refused == ["replayed nonce"]
    for skew, reason in ((-301, "stale nonce"), (+31, "nonce from the future")):
        with (
            RiotClient(riot_settings(riot), clock=lambda s=skew: time.time() + s) as client,
            pytest.raises(RiotError) as caught,
        ):
            client.get_params()
        assert caught.value.status == 401 and riot.refused[-1] == reason
    riot.clock = lambda: time.time() + 400  # the server's clock moved on
    with pytest.raises(RiotError):
        riot_client.get_params()
    assert riot.refused[-1] == "stale nonce"


def test_unreachable_and_hanging_servers_are_retryable(riot):
    with RiotClient(riot_settings(riot, timeout_s=0.2)) as client:
        riot.mode = "hang"
        started = time.monotonic()
        with pytest.raises(RiotError, match=r"no answer within 0\.2 s") as caught:
            client.get_params()
        assert time.monotonic() - started < 2
        assert caught.value.status is None and caught.value.retryable
        riot.stop()
        with pytest.raises(RiotError, match="ConnectError") as caught:
            client.get_params()
        assert caught.value.status is None and caught.value.retryable


# -- report --------------------------------------------------------------------------


def test_report_sends_headers_and_body(riot, riot_client):
    anomaly = make_anomaly(1, score=4.0)
    riot_client.report(anomaly)
    (event,) = riot.events
    headers, body = event["headers"], event["body"]
    assert headers["Service"] == "netsentry-test"
    assert headers["Level"] == "warning"
    assert headers["Message"] == describe(anomaly).replace("±", "\\xb1")
    assert headers["Content-Type"] == "application/json"
    assert seed_check(headers["Authorization"], "PUT", "/events", {USER: HA1}) is None
    assert body["id"] == anomaly.id and body["time"] == anomaly.time
    assert body["time_iso"] == "2023-11-14T23:13:20Z"
    assert body["key"] == f"{anomaly.key:016x}" and body["measurement"] == "tdmp_bytes_total"
    assert body["tags"] == anomaly.tags and body["explanation"] == anomaly.explanation
    assert (body["value"], body["score"], body["threshold"]) == (1001.0, 4.0, 3.0)
    assert (body["detector"], body["level"]) == ("zscore", "warning")


@pytest.mark.parametrize(
    ("anomaly", "level"),
    [
        (make_anomaly(1, score=5.99), "warning"),
        (make_anomaly(1, score=6.0), "critical"),
        (make_anomaly(1, score=float("inf")), "critical"),
        (
            make_anomaly(
                1,
                score=float("nan"),
                threshold=float("nan"),
                detector="new_entity",
                explanation={"rule": "entity never seen before", "value": 1.0},
            ),
            "warning",
        ),
    ],
)
def test_report_levels_and_non_finite_scores(riot, riot_client, anomaly, level):
    riot_client.report(anomaly)
    (event,) = riot.events
    assert event["headers"]["Level"] == level == event["body"]["level"]
    if level == "critical" and anomaly.score == float("inf"):
        assert event["body"]["score"] is None
    if anomaly.detector == "new_entity":
        assert event["body"]["score"] is None and "new entity" in event["headers"]["Message"]


def test_message_is_header_safe(riot, riot_client):
    tags = {"src": "evil\r\nX-Injected: 1", "dst": "ünïcödé\x00", "dstp": "1" * 1000}
    anomaly = make_anomaly(2, tags=tags)
    riot_client.report(anomaly)
    message = riot.events[0]["headers"]["Message"]
    assert "X-Injected" not in riot.events[0]["headers"]
    assert message.isascii() and message.isprintable() and len(message) <= MESSAGE_MAX_CHARS
    assert message.startswith("tdmp_bytes_total") and message.endswith("...")
    assert "evil\\x0d\\x0aX-Injected: 1" in message and "\\xfcn\\xefc\\xf6d\\xe9\\x00" in message
    assert riot.events[0]["body"]["tags"] == tags  # the body keeps them as they are
    assert header_safe("plain") == "plain"


@pytest.mark.parametrize(
    ("mode", "status", "retryable"),
    [(500, 500, True), (503, 503, True), (429, 429, True), (400, 400, False), (403, 403, False)],
)
def test_report_failures(riot, riot_client, mode, status, retryable):
    riot.mode = mode
    with pytest.raises(RiotError) as caught:
        riot_client.report(make_anomaly(1))
    assert (caught.value.status, caught.value.retryable) == (status, retryable)
    assert riot.events == []


def test_report_real_refusals(riot):
    with (
        RiotClient(riot_settings(riot, events_uri="/nope")) as client,
        pytest.raises(RiotError, match="PUT /nope: 404") as caught,
    ):
        client.report(make_anomaly(1))
    assert not caught.value.retryable
    with (
        RiotClient(riot_settings(riot, ha1=SecretStr(WRONG_HA1))) as client,
        pytest.raises(RiotError, match="PUT /events: 401") as caught,
    ):
        client.report(make_anomaly(1))
    assert not caught.value.retryable and riot.events == []
