"""netsentry's side of key rotation: draw a key, deliver it, wait for proof, record.

:meth:`KeyIssuer.rotate` runs one rotation of one device, in the order that loses no
frame:

1. the device's next key, drawn and stored sealed ahead of time (after the previous
   rotation, in the commit that records it, or by :meth:`KeyIssuer.prepare`), is
   taken, so no database commit sits on the key's path;
2. the key goes to the device's transport receiver(s), and the issuer waits for each
   one's ack: a receiver then accepts old and new keys;
3. the key goes to the device, and the issuer waits for its ack: the device's sender
   switches to the new key;
4. the receiver's ring retires the old key a grace period after the first frame under
   the new one (on its own, see :class:`~netsentry.rotation.keyring.KeyRing`);
5. the rotation is recorded ``completed`` with its latency, or ``failed`` with the error
   (see :mod:`netsentry.rotation.registry` for what a crash in the middle leaves).

Each delivery is retried (``attempts`` times, ``timeout_s`` apart) with a fresh offer
(new ephemeral key, nonce and time) for the *same* key id and key and the same MQTT 5
correlation data, so an ack to an earlier attempt still counts. An ack is accepted only
for a correlation the issuer is waiting on, only for an offer it sent, and only with a
valid proof of possession; everything else is refused and logged. An error reply from
a holder (advisory: not authenticated) ends that delivery at once with its reason,
except ``replayed``: QoS 1 may deliver an offer twice, and the next attempt is a fresh
offer that the holder acknowledges again.
If a receiver does not confirm, the device is not told, so it keeps streaming under the
old key that every receiver still holds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from netsentry.rotation.handshake import AuthenticationError, StaticKey, seal_offer, verify_ack
from netsentry.rotation.mqtt import MqttLink, Received, ack_topic, offer_topic
from netsentry.rotation.registry import REASONS, Reason, Registered, Registry, UnknownDeviceError
from netsentry.rotation.wire import (
    Ack,
    ErrorCode,
    ErrorReply,
    Offer,
    ProtocolError,
    check_device_id,
    decode,
)

log = logging.getLogger(__name__)
CORRELATION_BYTES = 16


@dataclass(frozen=True)
class Rotation:
    """The outcome of one :meth:`KeyIssuer.rotate` (also a row of ``rotations``)."""

    rotation_id: int
    device_id: str
    key_id: int
    reason: Reason
    status: Literal["completed", "failed"]
    latency_ms: float | None
    attempts: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "completed"


@dataclass
class _Delivery:
    """One key on its way to one holder, across attempts."""

    target: Registered
    device_id: str
    key_id: int
    key: bytes = field(repr=False)
    correlation: bytes = field(default_factory=lambda: os.urandom(CORRELATION_BYTES))
    nonces: set[bytes] = field(default_factory=set)
    acked: bool = False
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.acked or self.error is not None


class KeyIssuer:
    """Rotates device keys over MQTT 5; one connection, many rotations.

    Parameters
    ----------
    registry : Registry
        Registered devices and receivers, keys, rotation records.
    issuer_key : StaticKey
        netsentry's static X25519 key (its public half is provisioned on every holder).
    host, port : str, int
        The MQTT broker.
    issuer_id : str
        Names the ack topic ``netsentry/v1/issuers/<issuer_id>/acks``.
    attempts, timeout_s : int, float
        Deliveries per holder, and how long each waits for the ack.
    receivers : mapping, optional
        Device id -> ids of its transport receivers. Without it, every registered
        receiver receives every device's keys.
    nodelay : bool
        TCP_NODELAY on the MQTT socket.
    """

    def __init__(
        self,
        registry: Registry,
        issuer_key: StaticKey,
        *,
        host: str,
        port: int,
        issuer_id: str = "netsentry",
        attempts: int = 3,
        timeout_s: float = 1.0,
        receivers: Mapping[str, Sequence[str]] | None = None,
        nodelay: bool = True,
    ) -> None:
        if attempts < 1 or timeout_s <= 0:
            raise ValueError(f"attempts ({attempts}) must be >= 1 and timeout_s ({timeout_s}) > 0")
        self.registry = registry
        self._issuer_key = issuer_key
        self.issuer_id = check_device_id(issuer_id, "issuer id")
        self.ack_topic = ack_topic(issuer_id)
        self.attempts, self.timeout_s = attempts, timeout_s
        self.receivers = receivers
        self._pending: dict[bytes, _Delivery] = {}
        self._changed = threading.Condition()
        self._device_locks: dict[str, threading.Lock] = {}
        self._reserved: dict[str, tuple[int, bytes]] = {}  # next key id and key, drawn ahead
        self.link = MqttLink(
            host, port, f"issuer-{issuer_id}", on_message=self.handle_ack, nodelay=nodelay
        )
        self._started = False

    def __repr__(self) -> str:
        return f"KeyIssuer({self.issuer_id!r}, key={self._issuer_key.fingerprint})"

    @property
    def public_key(self) -> bytes:
        """The issuer's static public key, to provision on devices and receivers."""
        return self._issuer_key.public

    def start(self) -> None:
        """Connect and subscribe to the ack topic."""
        self.link.connect()
        try:
            self.link.subscribe(self.ack_topic, qos=1)
        except BaseException:
            self.link.close()
            raise
        self._started = True

    def stop(self) -> None:
        self._started = False
        self.link.close()

    def __enter__(self) -> KeyIssuer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one rotation ------------------------------------------------------------------

    def rotate(self, device_id: str, reason: Reason, detail: str = "") -> Rotation:
        """Rotate the key of ``device_id`` (blocking until done or failed).

        Raises
        ------
        UnknownDeviceError
            The device, or one of its receivers, is not registered.
        ValueError
            An unknown reason.
        RuntimeError
            :meth:`start` was not called.
        """
        if not self._started:
            raise RuntimeError("KeyIssuer.start() must be called before rotate()")
        with self._lock_of(device_id):
            return self._rotate(device_id, reason, detail)

    def prepare(self, device_id: str) -> None:
        """Draw (and store sealed) the next key of ``device_id`` ahead of its rotation.

        :meth:`rotate` does this itself after every rotation; calling it once per device
        at start-up takes the key store's commit off the first rotation's path too.
        """
        with self._lock_of(device_id):
            if device_id not in self._reserved:
                self._reserved[device_id] = self.registry.draw_key(device_id)

    def _lock_of(self, device_id: str) -> threading.Lock:
        with self._changed:
            return self._device_locks.setdefault(device_id, threading.Lock())

    def _rotate(self, device_id: str, reason: Reason, detail: str) -> Rotation:
        requested_ns, started = time.time_ns(), time.perf_counter()
        if reason not in REASONS:
            raise ValueError(f"rotation reason {reason!r} is not one of {', '.join(REASONS)}")
        device, receivers = self.registry.recipients(
            device_id, None if self.receivers is None else self.receivers.get(device_id, ())
        )
        reserved = self._reserved.pop(device_id, None)
        key_id, key = reserved if reserved is not None else self.registry.draw_key(device_id)
        attempts, error = 0, None
        try:
            for step in (receivers, [device]):
                if not step:
                    continue
                tries, error = self._deliver(step, device_id, key_id, key)
                attempts = max(attempts, tries)
                if error is not None:
                    break
        except BaseException as failure:  # recorded as failed, then raised
            error = f"{type(failure).__name__}: {failure}"
            raise
        finally:
            latency_ms = (time.perf_counter() - started) * 1000
            completed = error is None
            rotation_id, drawn = self.registry.record_rotation(
                device_id,
                key_id,
                reason,
                detail,
                requested_ns=requested_ns,
                completed=completed,
                latency_ms=latency_ms,
                attempts=attempts,
                error=error,
                draw_next=True,
            )
        if drawn is not None:
            self._reserved[device_id] = drawn
        if completed:
            log.info(
                "rotated %r to key id %d (%s) in %.1f ms, %d attempt(s)",
                device_id, key_id, reason, latency_ms, attempts,
            )  # fmt: skip
        else:
            log.warning("rotation of %r to key id %d failed: %s", device_id, key_id, error)
        return Rotation(
            rotation_id,
            device_id,
            key_id,
            reason,
            "completed" if completed else "failed",
            latency_ms if completed else None,
            attempts,
            error,
        )

    def _deliver(
        self, targets: list[Registered], device_id: str, key_id: int, key: bytes
    ) -> tuple[int, str | None]:
        """Offer the key to every target until each acks; (attempts, first error)."""
        deliveries = [_Delivery(t, device_id, key_id, key) for t in targets]
        with self._changed:
            for delivery in deliveries:
                self._pending[delivery.correlation] = delivery
        try:
            for attempt in range(1, self.attempts + 1):
                for delivery in deliveries:
                    if not delivery.done:
                        self._offer(delivery)
                deadline = time.monotonic() + self.timeout_s
                with self._changed:
                    while not all(d.done for d in deliveries):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._changed.wait(left)
                    errors = [d.error for d in deliveries if d.error is not None]
                    if errors:
                        return attempt, "; ".join(errors)
                    if all(d.acked for d in deliveries):
                        return attempt, None
            silent = [d.target.id for d in deliveries if not d.done]
            return self.attempts, (
                f"no ack from {', '.join(silent)} after {self.attempts} attempt(s) of "
                f"{self.timeout_s} s"
            )
        finally:
            with self._changed:
                for delivery in deliveries:
                    self._pending.pop(delivery.correlation, None)

    def _offer(self, delivery: _Delivery) -> None:
        target = delivery.target
        offer = seal_offer(
            self._issuer_key,
            target.public_key,
            role=target.role,
            recipient_id=target.id,
            device_id=delivery.device_id,
            key_id=delivery.key_id,
            key=delivery.key,
        )
        with self._changed:
            delivery.nonces.add(offer.nonce)
        self.link.publish(
            offer_topic(target.role, target.id),
            offer.encode(),
            response_topic=self.ack_topic,
            correlation=delivery.correlation,
        )

    # -- acks (MQTT thread) ------------------------------------------------------------

    def handle_ack(self, message: Received) -> None:
        """Accept an ack (or a holder's refusal) for a pending delivery; refuse the rest."""
        try:
            self._accept(message)
        except (ProtocolError, AuthenticationError) as refusal:
            log.warning("%s refused a message on %s: %s", self, message.topic, refusal)

    def _accept(self, message: Received) -> None:
        reply = decode(message.payload)
        if isinstance(reply, Offer):
            raise ProtocolError("an offer on the ack topic")
        with self._changed:
            delivery = self._pending.get(message.correlation or b"")
            if delivery is None:
                raise ProtocolError(
                    f"{_what(reply)} for an unknown or already completed correlation"
                )
            if delivery.done:
                raise ProtocolError(f"{_what(reply)} for an already completed delivery")
            if isinstance(reply, ErrorReply) and reply.code == ErrorCode.REPLAYED:
                # a duplicate copy of an offer (QoS 1 may deliver twice): the next
                # attempt, a fresh offer of the same key, is acknowledged again
                log.info("%s: %s refused a duplicate offer", self, delivery.target.id)
                return
            if isinstance(reply, ErrorReply):
                delivery.error = f"{delivery.target.id} refused key id {delivery.key_id}: " + (
                    f"{reply.code.name.lower()}: {reply.text}"
                )
                self._changed.notify_all()
                return
            _check_matches(reply, delivery)
            verify_ack(reply, delivery.key, delivery.correlation)
            delivery.acked = True
            self._changed.notify_all()


def _what(reply: Ack | ErrorReply) -> str:
    if isinstance(reply, Ack):
        return f"ack from {reply.recipient_id!r} for key id {reply.key_id}"
    return f"error reply ({reply.code.name.lower()})"


def _check_matches(ack: Ack, delivery: _Delivery) -> None:
    expected = (delivery.target.role, delivery.target.id, delivery.device_id, delivery.key_id)
    got = (ack.role, ack.recipient_id, ack.device_id, ack.key_id)
    if got != expected:
        raise ProtocolError(f"ack for {got} under the correlation of {expected}")
    if ack.offer_nonce not in delivery.nonces:
        raise ProtocolError(f"{_what(ack)} answers an offer that was never sent")


__all__ = ["KeyIssuer", "Rotation", "UnknownDeviceError"]
