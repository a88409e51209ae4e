"""The device feedback routes against the real app."""

from __future__ import annotations

import json
import os
import time

import pytest
from fastapi.testclient import TestClient

from netsentry.api.app import create_app
from netsentry.devices.tuning import DEFAULT_THRESHOLDS
from netsentry.store.sqlite import Store

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND


@pytest.fixture
def app_client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def store(app_client) -> Store:
    return app_client.app.state.store


def add_device(store: Store, device: str) -> None:
    with store.transaction() as tx:
        tx.db.execute(
            "INSERT INTO devices VALUES (?, 'device', ?, ?)", (device, os.urandom(32), tx.now)
        )


def add_detections(store: Store, device: str, rows: list[tuple[int, dict, bool]]) -> list[int]:
    """Rows of (time, scores, flagged) as the detector writes them; their ids."""
    ids = []
    with store.transaction() as tx:
        for time_ns, scores, flagged in rows:
            cursor = tx.db.execute(
                "INSERT INTO device_detections (device, time, scores, flagged) VALUES (?, ?, ?, ?)",
                (device, time_ns, json.dumps(scores), int(flagged)),
            )
            ids.append(cursor.lastrowid)
    return ids


@pytest.fixture
def camera(store):
    add_device(store, "cam-1")
    return "cam-1"


MUTATING = [
    ("/devices/cam-1/detections/1/label", {"label": "false_positive"}),
    ("/devices/cam-1/missed", {"time": T0, "note": "x"}),
    ("/devices/cam-1/thresholds/tune", {}),
]


@pytest.mark.parametrize("path,body", MUTATING)
def test_mutating_routes_need_the_token(app_client, camera, path, body):
    add_detections(app_client.app.state.store, camera, [(T0, {"rate": 5.0}, True)])
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        response = app_client.post(path, json=body, headers=headers)
        assert response.status_code == 401, response.text
        assert "token" in response.json()["error"]
    with app_client.app.state.store.read() as db:
        assert db.execute("SELECT label FROM device_detections").fetchall() == [(None,)]
        assert db.execute("SELECT count(*) FROM device_thresholds").fetchone() == (0,)


@pytest.mark.parametrize("path,body", MUTATING)
def test_unknown_device_is_404(app_client, auth, path, body):
    response = app_client.post(path.replace("cam-1", "cam-9"), json=body, headers=auth)
    assert response.status_code == 404, response.text
    assert "cam-9" in response.json()["error"]


@pytest.mark.parametrize("path", ["/devices/cam-9/detections", "/devices/cam-9/thresholds"])
def test_unknown_device_is_404_on_reads(app_client, path):
    response = app_client.get(path)
    assert response.status_code == 404 and "no device 'cam-9'" in response.json()["error"]


@pytest.mark.parametrize("device", ["cam 1", "x" * 65, "cam;drop", "ç"])
def test_bad_device_ids_are_422(app_client, auth, device):
    assert app_client.get(f"/devices/{device}/thresholds").status_code == 422
    response = app_client.post(f"/devices/{device}/thresholds/tune", json={}, headers=auth)
    assert response.status_code == 422


@pytest.mark.parametrize(
    "body,field",
    [
        ({"label": "missed"}, "body.label"),  # missed has its own route
        ({"label": "nope"}, "body.label"),
        ({}, "body.label"),
        ({"label": "confirmed", "extra": 1}, "body.extra"),
        ({"label": "confirmed", "note": "x" * 1001}, "body.note"),
    ],
)
def test_bad_labels_are_422(app_client, auth, camera, body, field):
    (detection,) = add_detections(app_client.app.state.store, camera, [(T0, {"rate": 5.0}, True)])
    response = app_client.post(
        f"/devices/{camera}/detections/{detection}/label", json=body, headers=auth
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(field)


def test_label_needs_a_detection_of_that_device(app_client, auth, camera, store):
    add_device(store, "cam-2")
    (other,) = add_detections(store, "cam-2", [(T0, {"rate": 5.0}, True)])
    for detection in (other, 999):
        response = app_client.post(
            f"/devices/{camera}/detections/{detection}/label",
            json={"label": "confirmed"},
            headers=auth,
        )
        assert response.status_code == 404 and f"no detection {detection}" in response.text
    bad = app_client.post(
        f"/devices/{camera}/detections/0/label", json={"label": "confirmed"}, headers=auth
    )
    assert bad.status_code == 422


def test_detections_are_paged_newest_first(app_client, auth, camera, store):
    ids = add_detections(store, camera, [(T0 + i * SECOND, {"rate": i}, i % 2) for i in range(25)])
    seen, before = [], None
    while True:
        params = {"limit": 10} | ({"before": before} if before else {})
        page = app_client.get(f"/devices/{camera}/detections", params=params).json()
        seen += [row["id"] for row in page["detections"]]
        before = page["next"]
        if before is None:
            break
    assert seen == sorted(ids, reverse=True)
    first = app_client.get(f"/devices/{camera}/detections", params={"limit": 1}).json()
    assert first["detections"][0] == {
        "id": ids[-1],
        "time": T0 + 24 * SECOND,
        "scores": {"rate": 24},
        "flagged": False,
        "label": None,
        "labelled": None,
    }
    app_client.post(
        f"/devices/{camera}/detections/{ids[3]}/label", json={"label": "confirmed"}, headers=auth
    )
    labelled = app_client.get(f"/devices/{camera}/detections", params={"label": "confirmed"})
    assert [row["id"] for row in labelled.json()["detections"]] == [ids[3]]
    unlabelled = app_client.get(f"/devices/{camera}/detections", params={"label": "unlabelled"})
    assert len(unlabelled.json()["detections"]) == 24
    for params in ({"limit": 0}, {"limit": 1001}, {"label": "bad"}, {"before": 0}):
        assert app_client.get(f"/devices/{camera}/detections", params=params).status_code == 422


def test_missed_report_labels_the_nearest_window_or_adds_one(app_client, auth, camera, store):
    quiet, loud = add_detections(
        store, camera, [(T0, {"iat_mean": 3.0}, False), (T0 + 60 * SECOND, {"rate": 9.0}, True)]
    )
    url = f"/devices/{camera}/missed"
    near = app_client.post(url, json={"time": T0 + 2 * SECOND, "note": "stall"}, headers=auth)
    assert near.status_code == 200 and near.json()["matched"]
    assert near.json()["detection"]["id"] == quiet
    assert near.json()["detection"]["label"] == "missed"
    fired = app_client.post(url, json={"time": T0 + 59 * SECOND}, headers=auth)
    assert fired.status_code == 409 and "label that detection 'confirmed'" in fired.text
    far = app_client.post(url, json={"time": T0 + 3600 * SECOND, "within_s": 5}, headers=auth)
    assert far.status_code == 201 and not far.json()["usable_for_tuning"]
    assert far.json()["detection"]["scores"] == {}
    for body in ({"time": -1}, {"note": "x"}, {"time": T0, "within_s": 0}):
        assert app_client.post(url, json=body, headers=auth).status_code == 422
    with store.read() as db:
        notes = [
            json.loads(v)["note"]
            for (v,) in db.execute(
                "SELECT value FROM settings_history "
                "WHERE name = 'device_feedback/cam-1' ORDER BY id"
            )
        ]
    assert notes == ["stall", ""]
    assert loud not in (near.json()["detection"]["id"], far.json()["detection"]["id"])


def test_label_then_tune_moves_thresholds_the_right_way(app_client, auth, camera, store):
    fresh = app_client.get(f"/devices/{camera}/thresholds").json()
    assert fresh["source"] == "defaults" and fresh["thresholds"] == DEFAULT_THRESHOLDS
    noisy = [(T0 + i * SECOND, {"size_std": 8.5 + i / 100, "rate": 1.0}, True) for i in range(30)]
    attack = [(T0 + 100 * SECOND, {"size_std": 12.0, "rate": 11.0}, True)]
    quiet = [(T0 + 200 * SECOND, {"iat_mean": 3.2, "size_std": 1.0}, False)]
    ids = add_detections(store, camera, noisy + attack + quiet)
    for detection in ids[:30]:
        response = app_client.post(
            f"/devices/{camera}/detections/{detection}/label",
            json={"label": "false_positive"},
            headers=auth,
        )
        assert response.status_code == 200 and response.json()["label"] == "false_positive"
    app_client.post(
        f"/devices/{camera}/detections/{ids[30]}/label", json={"label": "confirmed"}, headers=auth
    )
    started = time.perf_counter()
    tuned = app_client.post(f"/devices/{camera}/thresholds/tune", json={}, headers=auth).json()
    assert time.perf_counter() - started < 20
    assert tuned["changed"] and tuned["directions"]["size_std"] == "raise"
    highest = max(scores["size_std"] for _, scores, _ in noisy)
    assert tuned["thresholds"]["size_std"] >= highest > tuned["previous"]["size_std"]
    assert tuned["cost_after"]["total"] < tuned["cost_before"]["total"]
    assert tuned["cost_after"]["false_positives"] == 0 and tuned["cost_after"]["missed"] == 0
    assert tuned["labelled"] == 31 and tuned["new_feedback"] == 31
    shown = app_client.get(f"/devices/{camera}/thresholds").json()
    assert shown["source"] == "tuned" and shown["thresholds"] == tuned["thresholds"]
    assert shown["tunes"][0]["previous"] == tuned["previous"]

    again = app_client.post(f"/devices/{camera}/thresholds/tune", headers=auth).json()
    assert not again["changed"] and again["new_feedback"] == 0

    missed = app_client.post(
        f"/devices/{camera}/missed", json={"time": T0 + 200 * SECOND}, headers=auth
    )
    assert missed.status_code == 200
    lowered = app_client.post(f"/devices/{camera}/thresholds/tune", json={}, headers=auth).json()
    assert lowered["directions"]["iat_mean"] == "lower"
    assert lowered["thresholds"]["iat_mean"] < 3.2 <= lowered["previous"]["iat_mean"]
    assert all(lowered["thresholds"][n] <= v for n, v in lowered["previous"].items())
    assert lowered["new_feedback"] == 1
    history = app_client.get(f"/devices/{camera}/thresholds").json()["tunes"]
    assert [t["thresholds"] for t in history] == [lowered["thresholds"], tuned["thresholds"]]


def test_tune_refuses_bad_parameters(app_client, auth, camera):
    url = f"/devices/{camera}/thresholds/tune"
    for body in ({"trials": 2}, {"seed": -1}, {"missed_weight": 0}, {"weights": 1}):
        response = app_client.post(url, json=body, headers=auth)
        assert response.status_code == 422, body
    quiet = app_client.post(url, json={"trials": 8, "seed": 3}, headers=auth)
    assert quiet.status_code == 200 and not quiet.json()["changed"]
