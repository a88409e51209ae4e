"""Key rotation in the service: operator requests through the API, the anomaly trigger's
cooldown, the schedule, and the settings that turn it on (real Mosquitto)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from helpers import TOKEN
from netsentry.api.app import create_app
from netsentry.config import Settings
from netsentry.rotation.agent import DeviceAgent, ReceiverAgent
from netsentry.rotation.handshake import StaticKey
from netsentry.rotation.mqtt import BrokerUnavailableError
from netsentry.rotation.trigger import RotationTrigger
from netsentry.service.rotation import RotationService
from netsentry.store.sqlite import Store
from servers import free_port

HOST = "127.0.0.1"


def rotation_settings(tmp_path, port: int, **extra) -> Settings:
    return Settings(
        db=tmp_path / "s.sqlite",
        api_token=SecretStr(TOKEN),
        mqtt_host=HOST,
        mqtt_port=port,
        issuer_key=SecretStr(StaticKey.generate().private_bytes().hex()),
        vault_key=SecretStr(os.urandom(32).hex()),
        _env_file=None,
        **extra,
    )


@pytest.fixture
def deployment(tmp_path, broker):
    """Settings with rotation on, a registered camera and receiver, their agents running."""
    settings = rotation_settings(tmp_path, broker)
    service = RotationService(settings, Store(settings.db))
    keys = {name: StaticKey.generate() for name in ("cam-1", "rx-1")}
    service.registry.register("cam-1", "device", keys["cam-1"].public)
    service.registry.register("rx-1", "receiver", keys["rx-1"].public)
    issuer_public = service.issuer.public_key
    device = DeviceAgent("cam-1", keys["cam-1"], issuer_public, host=HOST, port=broker)
    receiver = ReceiverAgent("rx-1", keys["rx-1"], issuer_public, host=HOST, port=broker)
    device.start()
    receiver.start()
    yield settings, service, device, receiver
    device.stop()
    receiver.stop()


def test_an_operator_rotates_a_key_through_the_api(deployment):
    settings, _, device, receiver = deployment
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings)) as client:
        assert client.post("/devices/cam-1/rotate").status_code == 401
        assert (
            client.post("/devices/cam-1/rotate", headers={"Authorization": "Bearer x"}).status_code
            == 401
        )
        answer = client.post("/devices/cam-1/rotate", headers=auth, json={"note": "ticket 7"})
        assert answer.status_code == 200, answer.text
        first = answer.json()
        assert first["key_id"] >= 1 and first["status"] == "completed"
        second = client.post("/devices/cam-1/rotate", headers=auth).json()
        assert second["key_id"] > first["key_id"]
        assert device.keyring.current is not None
        assert device.keyring.current[0] == second["key_id"]
        assert second["key_id"] in receiver.ring("cam-1").key_ids
        assert client.post("/devices/cam-9/rotate", headers=auth).status_code == 404
        assert client.post("/devices/bad id!/rotate", headers=auth).status_code in (404, 422)
        rotations = client.get("/devices/cam-1/rotations").json()["rotations"]
    assert [r["key_id"] for r in rotations] == [second["key_id"], first["key_id"]]
    assert rotations[1]["reason"] == "operator" and rotations[1]["detail"] == "ticket 7"
    assert all(r["status"] == "completed" and r["latency_ms"] > 0 for r in rotations)


def test_without_mqtt_rotation_is_off_and_says_how_to_turn_it_on(client, auth):
    answer = client.post("/devices/cam-1/rotate", headers=auth)
    assert answer.status_code == 503 and "NETSENTRY_MQTT_HOST" in answer.json()["error"]


def test_rotation_settings_need_both_secrets(tmp_path):
    with pytest.raises(ValidationError, match="NETSENTRY_ISSUER_KEY"):
        Settings(db=tmp_path / "s.sqlite", mqtt_host=HOST, _env_file=None)
    with pytest.raises(ValidationError):
        Settings(mqtt_host=HOST, rotation_timeout_s=0, _env_file=None)


def test_the_service_refuses_to_start_when_the_broker_is_down(tmp_path):
    settings = rotation_settings(tmp_path, free_port())
    served = []
    with pytest.raises(BrokerUnavailableError), TestClient(create_app(settings)) as client:
        served.append(client.get("/status"))  # never: the lifespan refuses to start
    assert served == []


def test_an_episode_of_anomalies_rotates_once_per_cooldown(deployment):
    _, service, device, _ = deployment
    service.start()
    now = [100.0]
    trigger = RotationTrigger(service.issuer, cooldown_s=30.0, clock=lambda: now[0])
    try:
        for _ in range(5):  # five flagged windows of one episode
            trigger.on_anomaly("cam-1", "burst")
        assert trigger.join(10.0)
        assert trigger.stats.completed == 1 and trigger.stats.suppressed == 4
        now[0] += 31.0
        trigger.on_anomaly("cam-1", "burst again")
        trigger.on_anomaly("cam-9", "unknown device")  # logged and counted, never raised
        assert trigger.join(10.0)
        assert trigger.stats.completed == 2 and trigger.stats.failed == 1
        assert device.keyring.current is not None
        assert device.keyring.current[0] == trigger.stats.rotations[-1].key_id
        reasons = [r.reason for r in service.registry.rotations("cam-1")]
        assert reasons == ["anomaly", "anomaly"]
    finally:
        trigger.close()
        service.stop()


def test_the_schedule_rotates_every_device(deployment):
    settings, _, device, _ = deployment
    scheduled = RotationService(
        settings.model_copy(update={"rotation_interval_h": 0.2 / 3600}), Store(settings.db)
    )
    scheduled.start()

    async def run_for(seconds: float) -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(scheduled.run_schedule(stopping))
        await asyncio.sleep(seconds)
        stopping.set()
        await task

    try:
        started = time.monotonic()
        asyncio.run(run_for(0.7))
        assert time.monotonic() - started < 5
    finally:
        scheduled.stop()
    rotations = scheduled.registry.rotations("cam-1")
    assert len(rotations) >= 2 and {r.reason for r in rotations} == {"schedule"}
    assert device.keyring.current is not None
    assert device.keyring.current[0] == max(r.key_id for r in rotations)


def test_a_new_store_is_readable_by_its_owner_only(tmp_path):
    store = Store(tmp_path / "new.sqlite")
    with store.transaction() as tx:  # the WAL and shared-memory files exist now
        tx.bump({"x": 1.0})
        for path in tmp_path.glob("new.sqlite*"):
            assert path.stat().st_mode & 0o777 == 0o600, path
