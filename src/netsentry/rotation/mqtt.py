"""MQTT 5 links for key rotation (paho-mqtt 2), with Nagle's algorithm off.

paho leaves Nagle's algorithm on, so a small message may wait for the acknowledgement
of the previous one (tens of milliseconds per exchange on loopback). :class:`MqttLink`
sets ``TCP_NODELAY`` on its socket the moment paho opens it (``on_socket_open``, before
CONNECT is sent); the broker needs ``set_tcp_nodelay true`` for its side.

A link connects synchronously and fails with :class:`BrokerUnavailableError` naming the
broker when it is unreachable or refuses the connection. After that, paho's network
thread reconnects by itself, and the link subscribes again to its topics on every
reconnection. Messages reach ``on_message`` as :class:`Received` values on paho's thread;
an exception there is logged, never allowed to stop the thread.

Topics (``<id>`` is a device id, so never contains ``/``, ``+`` or ``#``)::

    netsentry/v1/devices/<device id>/keys        offers to a device
    netsentry/v1/receivers/<receiver id>/keys    offers to a transport receiver
    netsentry/v1/issuers/<issuer id>/acks        acks and refusals (the response topic)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from netsentry.rotation.wire import Role, check_device_id

log = logging.getLogger(__name__)

TOPIC_ROOT = "netsentry/v1"
ISSUER_TOPICS = f"{TOPIC_ROOT}/issuers/"


def offer_topic(role: Role, holder_id: str) -> str:
    """Where offers for a device or a receiver are published."""
    return f"{TOPIC_ROOT}/{role}s/{check_device_id(holder_id, f'{role} id')}/keys"


def ack_topic(issuer_id: str) -> str:
    """Where an issuer receives acks (the response topic of its offers)."""
    return f"{ISSUER_TOPICS}{check_device_id(issuer_id, 'issuer id')}/acks"


class BrokerUnavailableError(ConnectionError):
    """The MQTT broker cannot be reached, or refused the connection or a subscription."""


@dataclass(frozen=True)
class Received:
    """One message as the application sees it, with its MQTT 5 request/response data."""

    topic: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None


class MqttLink:
    """One MQTT 5 client connection (QoS 1), its own network thread.

    Parameters
    ----------
    host, port : str, int
        The broker.
    client_id : str
        Prefix of the MQTT client id (a random suffix keeps two links apart).
    on_message : callable, optional
        Called with every :class:`Received` message (on paho's thread).
    nodelay : bool
        Set ``TCP_NODELAY`` on the socket (True except for baseline measurements).
    timeout_s : float
        How long :meth:`connect` and :meth:`subscribe` wait for the broker.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str = "netsentry",
        *,
        on_message: Callable[[Received], None] | None = None,
        nodelay: bool = True,
        timeout_s: float = 5.0,
        keepalive_s: int = 30,
    ) -> None:
        self.host, self.port, self.nodelay = host, port, nodelay
        self.timeout_s, self.keepalive_s = timeout_s, keepalive_s
        self.on_message = on_message
        self.client_id = f"{client_id}-{os.urandom(4).hex()}"
        self.nodelay_sockets = 0  # sockets on which TCP_NODELAY was set
        self._topics: dict[str, int] = {}
        self._suback: dict[int, list[Any]] = {}
        self._connack: Any = None
        self._changed = threading.Condition()
        self._started = False
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
        )
        client.connect_timeout = timeout_s
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

    def __repr__(self) -> str:
        return f"MqttLink({self.client_id!r} -> {self.host}:{self.port})"

    @property
    def where(self) -> str:
        return f"MQTT broker {self.host}:{self.port}"

    @property
    def nodelay_active(self) -> bool:
        """Whether the connected socket has TCP_NODELAY set (False when disconnected)."""
        sock = self._client.socket()
        if sock is None or not hasattr(sock, "getsockopt"):
            return False
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    # -- lifecycle ----------------------------------------------------------------

    def connect(self) -> None:
        """Connect and wait for the broker's CONNACK; :class:`BrokerUnavailableError`."""
        try:
            self._client.connect(self.host, self.port, keepalive=self.keepalive_s)
        except OSError as error:
            raise BrokerUnavailableError(f"{self.where} is unreachable: {error}") from None
        self._client.loop_start()
        self._started = True
        with self._changed:
            self._changed.wait_for(lambda: self._connack is not None, self.timeout_s)
            connack = self._connack
        if connack is None or connack.is_failure:
            self.close()
            why = "no CONNACK" if connack is None else f"refused: {connack}"
            raise BrokerUnavailableError(f"{self.where}: {why} within {self.timeout_s}s")

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK (re-subscribed after every reconnection)."""
        self._topics[topic] = qos
        result, mid = self._client.subscribe(topic, qos)
        if result != paho.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerUnavailableError(f"{self.where}: cannot subscribe to {topic}: {result}")
        with self._changed:
            self._changed.wait_for(lambda: mid in self._suback, self.timeout_s)
            codes = self._suback.pop(mid, None)
        if codes is None or any(code.is_failure for code in codes):
            why = "no SUBACK" if codes is None else f"refused: {codes}"
            raise BrokerUnavailableError(f"{self.where}: subscription to {topic}: {why}")

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> bool:
        """Publish (queued by paho while disconnected); True if it went out at once."""
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if response_topic is not None:
            properties.ResponseTopic = response_topic
        if correlation is not None:
            properties.CorrelationData = correlation
        info = self._client.publish(topic, payload, qos=qos, properties=properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            log.debug("%s: publish to %s queued (%s)", self.where, topic, info.rc)
            return False
        return True

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False

    def __enter__(self) -> MqttLink:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho callbacks (network thread) ------------------------------------------

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self.nodelay and hasattr(sock, "setsockopt"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.nodelay_sockets += 1

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        with self._changed:
            self._connack = reason
            self._changed.notify_all()
        if reason.is_failure:
            log.warning("%s refused the connection: %s", self.where, reason)
            return
        for topic, qos in list(self._topics.items()):  # a reconnection: subscribe again
            client.subscribe(topic, qos)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, codes: list[Any], properties: Any
    ) -> None:
        with self._changed:
            self._suback[mid] = codes
            self._changed.notify_all()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        properties = message.properties
        received = Received(
            topic=message.topic,
            payload=bytes(message.payload),
            response_topic=getattr(properties, "ResponseTopic", None),
            correlation=getattr(properties, "CorrelationData", None),
        )
        handler = self.on_message
        if handler is None:
            return
        try:
            handler(received)
        except Exception:  # a bad message must never stop the network thread
            log.exception("%s: handling a message on %s failed", self.where, received.topic)
