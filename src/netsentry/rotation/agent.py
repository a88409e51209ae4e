"""The holders of rotated keys: a device's agent and a transport receiver's agent.

A holder subscribes to its offer topic (:func:`~netsentry.rotation.mqtt.offer_topic`),
and for every offer, in this order:

1. parses it; an unknown protocol version or a malformed message is refused;
2. checks that it is addressed to this holder (role and id);
3. checks its time against the holder's clock (``window_s`` either side) and that its
   nonce was not seen before (replay);
4. opens it with the holder's static key and the provisioned issuer key (forged,
   tampered or misaddressed offers do not open);
5. installs the key in the device's :class:`~netsentry.rotation.keyring.KeyRing` if its
   key id is newer than the ring's newest; the same key id with the same key (an issuer
   retry whose first ack was late) is acknowledged again; an older key id is stale;
6. answers on the offer's response topic with an ack that proves it holds the key.

Every refusal is logged (warning, never with key material) and, when the offer carries
a response topic under ``netsentry/v1/issuers/``, answered with an
:class:`~netsentry.rotation.wire.ErrorReply` naming the reason and the supported
protocol versions. A device switches its sender as soon as the key is installed (its
ring's ``current``); a receiver's ring accepts old and new keys until the grace period
after the first frame under the new key.

What is not covered: the seen-nonce memory and the rings live in memory, so after a
restart a holder accepts a replay of an offer newer than its (empty) ring if it is
still inside the time window.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from netsentry.rotation.handshake import AuthenticationError, StaticKey, make_ack, open_offer
from netsentry.rotation.keyring import KeyRing, StaleKeyError
from netsentry.rotation.mqtt import ISSUER_TOPICS, MqttLink, Received, offer_topic
from netsentry.rotation.wire import (
    ErrorCode,
    ErrorReply,
    Offer,
    ProtocolError,
    Role,
    UnsupportedVersionError,
    check_device_id,
    decode,
)

log = logging.getLogger(__name__)
MAX_NONCES = 4096


class RefusedError(Exception):
    """An offer this holder will not accept; ``code`` goes back to the issuer."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code


class KeyHolder:
    """Answers key offers for one device or receiver over MQTT.

    Parameters
    ----------
    holder_id : str
        This device's or receiver's id (as registered).
    role : {"device", "receiver"}
    static_key : StaticKey
        This holder's private key (its public half is registered with netsentry).
    issuer_public : bytes
        netsentry's static X25519 public key, provisioned out of band.
    host, port : str, int
        The MQTT broker.
    rings : dict, optional
        Key rings by device id to install into (created on demand otherwise, with
        ``grace_s``). A device holds one ring, under its own id.
    window_s : float
        Offers issued more than this many seconds away from the holder's clock are
        refused (replay protection together with the nonces seen).
    on_install : callable, optional
        Called with (device id, key id) after a new key was installed.
    nodelay : bool
        TCP_NODELAY on the MQTT socket.
    """

    def __init__(
        self,
        holder_id: str,
        role: Role,
        static_key: StaticKey,
        issuer_public: bytes,
        *,
        host: str,
        port: int,
        rings: dict[str, KeyRing] | None = None,
        grace_s: float = 5.0,
        window_s: float = 60.0,
        on_install: Callable[[str, int], None] | None = None,
        nodelay: bool = True,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.holder_id = check_device_id(holder_id, f"{role} id")
        self.role: Role = role
        self.topic = offer_topic(role, holder_id)
        self._static_key = static_key
        self.issuer_public = bytes(issuer_public)
        self.grace_s, self.window_s = grace_s, window_s
        self.on_install = on_install
        self.wall_clock = wall_clock
        self._rings: dict[str, KeyRing] = dict(rings or {})
        self._nonces: OrderedDict[bytes, int] = OrderedDict()  # nonce -> issued ns
        self._lock = threading.Lock()
        self.refusals: list[tuple[ErrorCode, str]] = []  # the latest, for status pages
        self.link = MqttLink(
            host, port, f"{role}-{holder_id}", on_message=self.handle, nodelay=nodelay
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.holder_id!r}, topic={self.topic!r})"

    def start(self) -> None:
        """Connect and subscribe (returns once the broker confirmed the subscription)."""
        self.link.connect()
        try:
            self.link.subscribe(self.topic, qos=1)
        except BaseException:
            self.link.close()
            raise

    def stop(self) -> None:
        self.link.close()

    def __enter__(self) -> KeyHolder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ring(self, device_id: str) -> KeyRing:
        """The key ring of ``device_id`` (created empty on first use)."""
        with self._lock:
            ring = self._rings.get(device_id)
            if ring is None:
                ring = self._rings[device_id] = KeyRing(grace_s=self.grace_s)
            return ring

    # -- one offer ---------------------------------------------------------------------

    def handle(self, message: Received) -> None:
        """Process one offer: install and ack, or refuse (log and answer the reason)."""
        reply_to = message.response_topic
        if reply_to is not None and not reply_to.startswith(ISSUER_TOPICS):
            log.warning("%s: ignoring response topic %r outside %s", self, reply_to, ISSUER_TOPICS)
            reply_to = None
        correlation = message.correlation or b""
        try:
            offer, key = self._accept(message.payload)
        except RefusedError as refusal:
            log.warning("%s refused an offer on %s: %s", self, message.topic, refusal)
            with self._lock:
                self.refusals = [*self.refusals[-99:], (refusal.code, str(refusal))]
            if reply_to is not None:
                self.link.publish(
                    reply_to,
                    ErrorReply(refusal.code, f"{self.holder_id}: {refusal}").encode(),
                    correlation=message.correlation,
                )
            return
        if reply_to is None:
            log.warning("%s: offer of key id %d has no response topic", self, offer.key_id)
            return
        ack = make_ack(offer, key, correlation)
        self.link.publish(reply_to, ack.encode(), correlation=message.correlation)

    def _accept(self, payload: bytes) -> tuple[Offer, bytes]:
        try:
            message = decode(payload)
        except UnsupportedVersionError as error:
            raise RefusedError(ErrorCode.UNSUPPORTED_VERSION, str(error)) from None
        except ProtocolError as error:
            raise RefusedError(ErrorCode.MALFORMED, str(error)) from None
        if not isinstance(message, Offer):
            raise RefusedError(
                ErrorCode.MALFORMED, f"expected an offer, got {type(message).__name__}"
            )
        offer = message
        if offer.role != self.role or offer.recipient_id != self.holder_id:
            raise RefusedError(
                ErrorCode.NOT_FOR_ME,
                f"offer for {offer.role} {offer.recipient_id!r} reached {self.role} "
                f"{self.holder_id!r}",
            )
        now = self.wall_clock()
        if abs(now - offer.issued_ns) > self.window_s * 1e9:
            raise RefusedError(
                ErrorCode.EXPIRED,
                f"offer of key id {offer.key_id} issued {(now - offer.issued_ns) / 1e9:.1f} s "
                f"ago, outside the {self.window_s} s window",
            )
        with self._lock:
            if offer.nonce in self._nonces:
                raise RefusedError(
                    ErrorCode.REPLAYED,
                    f"offer of key id {offer.key_id} for {offer.device_id!r} was seen before "
                    "(replayed nonce)",
                )
        try:
            key = open_offer(offer, self._static_key, self.issuer_public)
        except AuthenticationError as error:
            raise RefusedError(ErrorCode.UNAUTHENTICATED, str(error)) from None
        with self._lock:
            if offer.nonce in self._nonces:  # the same offer delivered twice meanwhile
                raise RefusedError(
                    ErrorCode.REPLAYED, f"offer of key id {offer.key_id} seen before"
                )
            self._remember(offer.nonce, now)
        self._install(offer, key)
        return offer, key

    def _remember(self, nonce: bytes, now: int) -> None:
        self._nonces[nonce] = now
        horizon = now - 2 * self.window_s * 1e9
        while self._nonces and (
            len(self._nonces) > MAX_NONCES or next(iter(self._nonces.values())) < horizon
        ):
            self._nonces.popitem(last=False)

    def _install(self, offer: Offer, key: bytes) -> None:
        ring = self.ring(offer.device_id)
        current = ring.current
        if current is not None and offer.key_id == current[0]:
            if hmac.compare_digest(current[1], key):
                log.info("%s: key id %d acknowledged again (retry)", self, offer.key_id)
                return
            raise RefusedError(
                ErrorCode.STALE_KEY,
                f"key id {offer.key_id} of {offer.device_id!r} is installed with another key",
            )
        try:
            ring.install(offer.key_id, key)
        except StaleKeyError as error:
            raise RefusedError(ErrorCode.STALE_KEY, f"{offer.device_id!r}: {error}") from None
        log.info("%s installed key id %d of %r", self, offer.key_id, offer.device_id)
        if self.on_install is not None:
            try:
                self.on_install(offer.device_id, offer.key_id)
            except Exception:  # the holder's own hook must not cost the ack
                log.exception("%s: on_install hook failed", self)


class DeviceAgent(KeyHolder):
    """The device side: one ring (:attr:`keyring`) whose ``current`` the sender uses."""

    def __init__(
        self,
        device_id: str,
        static_key: StaticKey,
        issuer_public: bytes,
        *,
        host: str,
        port: int,
        keyring: KeyRing | None = None,
        window_s: float = 60.0,
        on_install: Callable[[str, int], None] | None = None,
        nodelay: bool = True,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(
            device_id,
            "device",
            static_key,
            issuer_public,
            host=host,
            port=port,
            rings={device_id: keyring if keyring is not None else KeyRing()},
            window_s=window_s,
            on_install=on_install,
            nodelay=nodelay,
            wall_clock=wall_clock,
        )

    @property
    def keyring(self) -> KeyRing:
        return self.ring(self.holder_id)


class ReceiverAgent(KeyHolder):
    """The transport receiver's side: one ring per device it receives from
    (:meth:`ring`), created with ``grace_s`` unless given in ``rings``."""

    def __init__(
        self,
        receiver_id: str,
        static_key: StaticKey,
        issuer_public: bytes,
        *,
        host: str,
        port: int,
        rings: dict[str, KeyRing] | None = None,
        grace_s: float = 5.0,
        window_s: float = 60.0,
        on_install: Callable[[str, int], None] | None = None,
        nodelay: bool = True,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(
            receiver_id,
            "receiver",
            static_key,
            issuer_public,
            host=host,
            port=port,
            rings=rings,
            grace_s=grace_s,
            window_s=window_s,
            on_install=on_install,
            nodelay=nodelay,
            wall_clock=wall_clock,
        )
