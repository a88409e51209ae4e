"""The key-rotation protocol over a real Mosquitto broker on loopback: full rotations,
forged / replayed / stale / unknown-version messages (all refused and logged), retries,
failures, and keys that never leak into logs, reprs or the database."""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import sqlite3
import struct
import threading
import time

import pytest

from mosquitto_server import mosquitto_server
from netsentry.rotation.handshake import StaticKey, make_ack, seal_offer
from netsentry.rotation.keyring import KeyRing
from netsentry.rotation.mqtt import BrokerUnavailableError, MqttLink, offer_topic
from netsentry.rotation.registry import KEY_PURPOSE, Registry, UnknownDeviceError, key_context
from netsentry.rotation.vault import IntegrityError, Vault
from netsentry.rotation.wire import Ack, ErrorCode, ErrorReply, Offer
from netsentry.store.sqlite import Store
from rotation_fixtures import HOST, World
from servers import free_port

DEVICE_TOPIC = offer_topic("device", "cam-1")
RECEIVER_TOPIC = offer_topic("receiver", "rx-1")


@pytest.fixture
def world(broker, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="netsentry")
    world = World(broker, tmp_path / "rotation.sqlite")
    world.register("cam-1", "device")
    world.register("rx-1", "receiver")
    yield world
    world.stop()


def offer_for(world: World, key_id: int, key: bytes = b"k" * 32, **changes) -> Offer:
    """An authentic offer (made with the issuer's key) to cam-1."""
    fields = {"role": "device", "recipient_id": "cam-1", "device_id": "cam-1", "key_id": key_id}
    fields.update(changes)
    public = world.holder_keys[fields["recipient_id"]].public
    return seal_offer(world.issuer_key, public, key=key, **fields)


def refusal(probe, code: ErrorCode) -> ErrorReply:
    received, reply = probe.next_on(probe.reply_topic)
    assert received.correlation == b"probe-1"
    assert isinstance(reply, ErrorReply), reply
    assert reply.code == code, reply
    return reply


# -- the happy path -------------------------------------------------------------------


def test_rotations_reach_receiver_then_device_with_increasing_key_ids(world):
    installed: list[tuple[str, int]] = []
    receiver = world.receiver("rx-1", on_install=lambda d, k: installed.append(("rx-1", k)))
    device = world.device("cam-1", on_install=lambda d, k: installed.append(("cam-1", k)))
    issuer = world.issuer()

    results = [issuer.rotate("cam-1", reason, f"test {n}") for n, reason in
               enumerate(["anomaly", "schedule", "operator", "anomaly"])]  # fmt: skip

    assert [r.status for r in results] == ["completed"] * 4
    assert [r.key_id for r in results] == [1, 2, 3, 4]
    assert all(r.attempts == 1 and 0 < r.latency_ms < 1000 for r in results)
    assert installed == [(holder, k) for k in (1, 2, 3, 4) for holder in ("rx-1", "cam-1")]
    key = world.registry.key("cam-1", 4)
    assert device.keyring.current == (4, key)
    assert receiver.ring("cam-1").current == (4, key)
    assert receiver.ring("cam-1").key_ids == [1, 2, 3, 4]  # no frame yet: nothing retired
    assert world.registry.current_key("cam-1") == (4, key)

    records = world.registry.rotations("cam-1")
    assert [(r.key_id, r.reason, r.detail, r.status) for r in records] == [
        (4, "anomaly", "test 3", "completed"),
        (3, "operator", "test 2", "completed"),
        (2, "schedule", "test 1", "completed"),
        (1, "anomaly", "test 0", "completed"),
    ]
    assert all(r.completed_ns and r.completed_ns >= r.requested_ns for r in records)
    assert all(r.latency_ms and r.attempts == 1 and r.error is None for r in records)


def test_receiver_retires_old_key_after_first_frame_under_new(world):
    receiver = world.receiver("rx-1", grace_s=0.2)
    world.device("cam-1")
    issuer = world.issuer()
    issuer.rotate("cam-1", "schedule")
    ring = receiver.ring("cam-1")
    ring.lookup(1)
    issuer.rotate("cam-1", "anomaly", "burst")
    assert ring.lookup(1) == world.registry.key("cam-1", 1)  # in flight: still opens
    ring.lookup(2)  # the first frame under key 2
    assert ring.lookup(1)
    time.sleep(0.25)
    assert ring.key_ids == [2]


def test_one_receiver_serves_several_devices_and_mapping(world):
    world.register("cam-2", "device")
    world.register("rx-2", "receiver")
    rx1, rx2 = world.receiver("rx-1"), world.receiver("rx-2")
    world.device("cam-1")
    world.device("cam-2")
    issuer = world.issuer(receivers={"cam-1": ["rx-1"], "cam-2": ["rx-1", "rx-2"]})
    assert issuer.rotate("cam-1", "operator").ok
    assert issuer.rotate("cam-2", "operator").ok
    assert issuer.rotate("cam-2", "operator").key_id == 2
    assert rx1.ring("cam-1").current[0] == 1
    assert rx1.ring("cam-2").current[0] == 2
    assert rx2.ring("cam-2").current[0] == 2
    assert rx2.ring("cam-1").current is None


def test_unknown_device_and_reason_refused_before_anything_is_recorded(world):
    issuer = world.issuer()
    with pytest.raises(UnknownDeviceError, match="'cam-9' is not registered"):
        issuer.rotate("cam-9", "operator")
    with pytest.raises(UnknownDeviceError, match="registered as a receiver"):
        issuer.rotate("rx-1", "operator")
    with pytest.raises(ValueError, match="reason 'whim'"):
        issuer.rotate("cam-1", "whim")  # type: ignore[arg-type]
    assert world.registry.rotations() == []


# -- forged, replayed, stale, unknown version -------------------------------------------


def test_forged_offers_refused_and_logged(world, caplog):
    device = world.device("cam-1")
    probe = world.probe()
    forger = StaticKey.generate()
    public = world.holder_keys["cam-1"].public
    fields = {"role": "device", "recipient_id": "cam-1", "device_id": "cam-1", "key_id": 5}
    own_key = seal_offer(forger, public, key=b"f" * 32, **fields)
    posing = dataclasses.replace(
        seal_offer(forger, public, key=b"f" * 32, **fields), issuer_public=world.issuer_key.public
    )
    genuine = offer_for(world, 5).encode()
    tampered_ciphertext = genuine[:-1] + bytes([genuine[-1] ^ 1])
    at = 2 + 1 + (1 + 5) * 2  # key id in the header: after version, type, role, two ids
    tampered_header = genuine[:at] + struct.pack(">Q", 6) + genuine[at + 8 :]

    for payload, says in [
        (own_key.encode(), "not the provisioned"),
        (posing.encode(), "does not authenticate"),
        (tampered_ciphertext, "does not authenticate"),
        (tampered_header, "does not authenticate"),
    ]:
        probe.send(DEVICE_TOPIC, payload)
        assert says in refusal(probe, ErrorCode.UNAUTHENTICATED).text
    assert device.keyring.current is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("refused an offer" in w for w in warnings) == 4

    probe.send(DEVICE_TOPIC, genuine)  # the untouched original still opens
    _, ack = probe.next_on(probe.reply_topic)
    assert isinstance(ack, Ack) and ack.key_id == 5
    assert device.keyring.current == (5, b"k" * 32)


def test_misaddressed_and_expired_offers_refused(world):
    world.register("cam-2", "device")
    device = world.device("cam-1")
    probe = world.probe()
    for_cam2 = offer_for(world, 1, recipient_id="cam-2", device_id="cam-2")
    probe.send(DEVICE_TOPIC, for_cam2.encode())
    assert "reached device 'cam-1'" in refusal(probe, ErrorCode.NOT_FOR_ME).text
    old = offer_for(world, 1, issued_ns=time.time_ns() - 600 * 10**9)
    probe.send(DEVICE_TOPIC, old.encode())
    assert "outside the 60.0 s window" in refusal(probe, ErrorCode.EXPIRED).text
    probe.send(DEVICE_TOPIC, Ack("device", "cam-1", "cam-1", 1, bytes(16), bytes(32)).encode())
    assert "expected an offer" in refusal(probe, ErrorCode.MALFORMED).text
    assert device.keyring.current is None


def test_replayed_and_stale_offers_refused(world, caplog):
    device = world.device("cam-1")
    world.receiver("rx-1")
    sniffer = world.probe(DEVICE_TOPIC)  # sees what the broker sees
    issuer = world.issuer()
    assert issuer.rotate("cam-1", "schedule").ok
    _, captured = sniffer.next_on(DEVICE_TOPIC)
    assert isinstance(captured, Offer) and captured.key_id == 1
    assert issuer.rotate("cam-1", "schedule").ok

    sniffer.send(DEVICE_TOPIC, captured.encode())  # replay of a genuine offer
    assert "replayed nonce" in refusal(sniffer, ErrorCode.REPLAYED).text
    stale = offer_for(world, 1, key=world.registry.key("cam-1", 1))  # genuine, fresh, old id
    sniffer.send(DEVICE_TOPIC, stale.encode())
    assert "not newer than the newest installed (2)" in refusal(sniffer, ErrorCode.STALE_KEY).text
    other = offer_for(world, 2, key=os.urandom(32))  # current id, another key
    sniffer.send(DEVICE_TOPIC, other.encode())
    assert "installed with another key" in refusal(sniffer, ErrorCode.STALE_KEY).text
    assert device.keyring.current == (2, world.registry.key("cam-1", 2))
    assert sum("refused an offer" in r.getMessage() for r in caplog.records) == 3


def test_unknown_protocol_version_refused_with_a_clear_error(world, caplog):
    device = world.device("cam-1")
    probe = world.probe()
    future = bytes([2]) + offer_for(world, 1).encode()[1:]
    probe.send(DEVICE_TOPIC, future)
    reply = refusal(probe, ErrorCode.UNSUPPORTED_VERSION)
    assert "protocol version 2 is not supported (supported: 1)" in reply.text
    assert reply.supported == (1,)
    assert device.keyring.current is None
    assert any("version 2 is not supported" in r.getMessage() for r in caplog.records)

    # and the issuer refuses (and logs) an ack in a version it does not speak
    issuer = world.issuer()
    ack = make_ack(offer_for(world, 1), b"k" * 32, b"c").encode()
    probe.link.publish(issuer.ack_topic, bytes([7]) + ack[1:], correlation=b"c")
    wait_for_log(caplog, "protocol version 7 is not supported (supported: 1)")


# -- acks ------------------------------------------------------------------------------


def wait_for_log(caplog, text: str, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(text in r.getMessage() for r in caplog.records):
            return
        time.sleep(0.01)
    raise AssertionError(f"no log record with {text!r}")


def test_ack_for_unknown_or_completed_correlation_refused(world, caplog):
    world.device("cam-1")
    world.receiver("rx-1")
    issuer = world.issuer()
    sniffer = world.probe(issuer.ack_topic)
    assert issuer.rotate("cam-1", "operator").ok
    received, ack = sniffer.next_on(issuer.ack_topic)
    assert isinstance(ack, Ack)

    sniffer.link.publish(issuer.ack_topic, received.payload, correlation=received.correlation)
    wait_for_log(caplog, "for an unknown or already completed correlation")
    sniffer.link.publish(issuer.ack_topic, received.payload, correlation=os.urandom(16))
    sniffer.link.publish(issuer.ack_topic, received.payload)  # no correlation at all
    deadline = time.monotonic() + 2
    while sum("unknown or already" in r.getMessage() for r in caplog.records) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert [r.status for r in world.registry.rotations()] == ["completed"]


def test_forged_ack_refused_and_rotation_fails(world, caplog):
    world.receiver("rx-1")
    sniffer = world.probe(DEVICE_TOPIC)
    issuer = world.issuer(attempts=1, timeout_s=0.8)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(issuer.rotate("cam-1", "operator")))
    thread.start()
    received, offer = sniffer.next_on(DEVICE_TOPIC)
    forged = make_ack(offer, os.urandom(32), received.correlation)  # a key it does not hold
    sniffer.link.publish(issuer.ack_topic, forged.encode(), correlation=received.correlation)
    thread.join()
    assert not result[0].ok
    wait_for_log(caplog, "does not prove possession of the key")


# -- retries and failures --------------------------------------------------------------


def test_retries_until_the_device_comes_up(world):
    world.receiver("rx-1")
    device = world.device("cam-1", start=False)
    issuer = world.issuer(attempts=6, timeout_s=0.3)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(issuer.rotate("cam-1", "anomaly")))
    thread.start()
    time.sleep(0.5)  # the first offers go nowhere: no one subscribed
    device.start()
    thread.join()
    (rotation,) = result
    assert rotation.ok and rotation.attempts >= 2
    assert device.keyring.current == (1, world.registry.key("cam-1", 1))
    (record,) = world.registry.rotations("cam-1")
    assert record.status == "completed" and record.attempts == rotation.attempts


def test_a_late_ack_to_an_earlier_attempt_still_counts(world, caplog):
    world.receiver("rx-1")
    slow = world.device("cam-1", on_install=lambda d, k: time.sleep(0.45))  # acks late
    issuer = world.issuer(attempts=3, timeout_s=0.3)
    rotation = issuer.rotate("cam-1", "anomaly")
    assert rotation.ok and rotation.attempts == 2  # attempt 1's ack came during attempt 2
    assert slow.keyring.current == (1, world.registry.key("cam-1", 1))
    # the device then answers attempt 2 (same key id and key) by acknowledging again
    wait_for_log(caplog, "key id 1 acknowledged again (retry)")
    wait_for_log(caplog, "already completed")  # the issuer took the first ack only


def test_failure_recorded_when_the_device_never_answers(world):
    receiver = world.receiver("rx-1")
    issuer = world.issuer(attempts=2, timeout_s=0.2)
    rotation = issuer.rotate("cam-1", "anomaly", "size change")
    assert not rotation.ok and rotation.attempts == 2 and rotation.latency_ms is None
    assert rotation.error == "no ack from cam-1 after 2 attempt(s) of 0.2 s"
    (record,) = world.registry.rotations("cam-1")
    assert (record.status, record.error, record.completed_ns) == ("failed", rotation.error, None)
    assert receiver.ring("cam-1").key_ids == [1]  # receivers accept it; the device keeps the old

    device = world.device("cam-1")
    again = issuer.rotate("cam-1", "anomaly")
    assert again.ok and again.key_id == 2  # never reused, even after a failure
    assert device.keyring.current[0] == 2


def test_a_receiver_that_never_answers_keeps_the_device_on_its_old_key(world):
    device = world.device("cam-1")
    issuer = world.issuer(attempts=1, timeout_s=0.2)
    rotation = issuer.rotate("cam-1", "schedule")
    assert not rotation.ok and "no ack from rx-1" in rotation.error
    assert device.keyring.current is None  # the device was never told


def test_a_holder_refusal_ends_the_delivery_with_its_reason(world):
    world.receiver("rx-1")
    device = world.device("cam-1")
    device.keyring.install(50, b"x" * 32)  # e.g. a device ahead of a restored database
    issuer = world.issuer(attempts=3, timeout_s=1.0)
    started = time.monotonic()
    rotation = issuer.rotate("cam-1", "operator")
    assert time.monotonic() - started < 1.0  # no waiting for retries
    assert "cam-1 refused key id 1: stale_key" in rotation.error


def test_a_replayed_refusal_does_not_end_the_delivery(world, caplog):
    world.receiver("rx-1")
    device = world.device("cam-1", start=False)
    sniffer = world.probe(DEVICE_TOPIC)
    issuer = world.issuer(attempts=4, timeout_s=0.4)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(issuer.rotate("cam-1", "operator")))
    thread.start()
    received, _ = sniffer.next_on(DEVICE_TOPIC)
    duplicate = ErrorReply(ErrorCode.REPLAYED, "cam-1: seen before (a QoS 1 duplicate)")
    sniffer.link.publish(issuer.ack_topic, duplicate.encode(), correlation=received.correlation)
    wait_for_log(caplog, "cam-1 refused a duplicate offer")
    device.start()
    thread.join()
    assert result[0].ok and device.keyring.current[0] == 1


def test_unreachable_broker_is_a_clean_error(world):
    port = free_port()
    with pytest.raises(BrokerUnavailableError, match=rf"127.0.0.1:{port} is unreachable"):
        MqttLink(HOST, port).connect()
    dead = World(port, world.db)
    dead.holder_keys = world.holder_keys
    with pytest.raises(BrokerUnavailableError):
        dead.issuer()
    with pytest.raises(BrokerUnavailableError):
        dead.device("cam-1")


def test_links_reconnect_and_resubscribe_after_a_broker_restart(tmp_path):
    server, port = mosquitto_server(tmp_path / "broker")
    server.start()
    world = World(port, tmp_path / "rotation.sqlite")
    try:
        world.register("cam-1", "device")
        world.register("rx-1", "receiver")
        world.receiver("rx-1")
        device = world.device("cam-1")
        issuer = world.issuer(attempts=8, timeout_s=0.5)
        assert issuer.rotate("cam-1", "schedule").ok
        server.stop()
        server.start()
        rotation = issuer.rotate("cam-1", "schedule")  # retried until every link is back
        assert rotation.ok and rotation.key_id == 2
        assert device.keyring.current[0] == 2 and device.link.nodelay_sockets >= 2
    finally:
        world.stop()
        server.stop()


def test_tcp_nodelay_is_set_on_the_client_socket(world):
    device = world.device("cam-1")
    assert device.link.nodelay_sockets == 1 and device.link.nodelay_active
    plain = MqttLink(HOST, world.port, nodelay=False)
    plain.connect()
    assert not plain.nodelay_active
    plain.close()


# -- secrecy ---------------------------------------------------------------------------


def test_keys_never_in_logs_or_reprs(world, caplog):
    receiver = world.receiver("rx-1")
    device = world.device("cam-1")
    issuer = world.issuer()
    rotations = [issuer.rotate("cam-1", "operator") for _ in range(3)]
    probe = world.probe()
    probe.send(DEVICE_TOPIC, offer_for(world, 2, key=world.registry.key("cam-1", 2)).encode())
    refusal(probe, ErrorCode.STALE_KEY)

    texts = [caplog.text, *(r.getMessage() for r in caplog.records)]
    objects = [issuer, device, receiver, device.keyring, receiver.ring("cam-1"), world.registry,
               world.vault, world.issuer_key, *world.holder_keys.values(), *rotations]  # fmt: skip
    texts += [repr(o) for o in objects] + [str(o) for o in objects]
    secrets = [world.registry.key("cam-1", n) for n in (1, 2, 3)]
    secrets += [k.private_bytes() for k in (world.issuer_key, *world.holder_keys.values())]
    assert any("installed key id 3" in t for t in texts)  # the logs are there
    for secret in secrets:
        for form in (secret.hex(), repr(secret), base64.b64encode(secret).decode(),
                     secret[:8].hex()):  # fmt: skip
            assert not any(form in text for text in texts)


def test_keys_sealed_at_rest(world):
    world.receiver("rx-1")
    world.device("cam-1")
    issuer = world.issuer()
    for _ in range(2):
        issuer.rotate("cam-1", "schedule")
    with sqlite3.connect(world.db) as db:
        rows = db.execute("SELECT key_id, sealed FROM device_keys ORDER BY key_id").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]  # 3: drawn ahead for the next rotation
    for key_id, sealed in rows:
        key = world.registry.key("cam-1", key_id)
        assert len(key) == 32 and key not in sealed and key[:8] not in sealed
        assert world.vault.open(KEY_PURPOSE, sealed, key_context("cam-1", key_id)) == key

    other = Registry(Store(world.db), Vault(os.urandom(32)))
    with pytest.raises(IntegrityError):
        other.key("cam-1", 1)
    with sqlite3.connect(world.db) as db:  # a sealed key moved to another row does not open
        db.execute("UPDATE device_keys SET sealed = ? WHERE key_id = 2", (rows[0][1],))
    with pytest.raises(IntegrityError):
        world.registry.key("cam-1", 2)


def test_prepared_key_is_the_one_rotated_to(world):
    world.receiver("rx-1")
    device = world.device("cam-1")
    issuer = world.issuer()
    issuer.prepare("cam-1")
    issuer.prepare("cam-1")  # idempotent: one key drawn ahead
    with sqlite3.connect(world.db) as db:
        assert db.execute("SELECT key_id FROM device_keys").fetchall() == [(1,)]
    assert issuer.rotate("cam-1", "schedule").key_id == 1
    assert device.keyring.current == (1, world.registry.key("cam-1", 1))


def test_agents_share_a_given_keyring(world):
    ring = KeyRing(grace_s=1.0)
    world.receiver("rx-1")
    device = world.device("cam-1", keyring=ring)
    assert device.keyring is ring
    world.issuer().rotate("cam-1", "operator")
    assert ring.current[0] == 1
