"""Helpers for key-rotation tests over a real Mosquitto: one store, one vault, the
issuer's and holders' static keys, agents and issuers that are stopped at teardown,
and a probe that publishes raw messages and collects what comes back."""

from __future__ import annotations

import os
import queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from netsentry.rotation.agent import DeviceAgent, KeyHolder, ReceiverAgent
from netsentry.rotation.handshake import StaticKey
from netsentry.rotation.issuer import KeyIssuer
from netsentry.rotation.mqtt import MqttLink, Received, ack_topic
from netsentry.rotation.registry import Registry
from netsentry.rotation.vault import Vault
from netsentry.rotation.wire import Message, decode
from netsentry.store.sqlite import Store

HOST = "127.0.0.1"
H = TypeVar("H", DeviceAgent, ReceiverAgent)


class Probe:
    """A bare MQTT client: publishes raw payloads, collects decoded messages."""

    def __init__(self, port: int, name: str = "probe", *topics: str) -> None:
        self.reply_topic = ack_topic(name)
        self.messages: queue.Queue[tuple[Received, Message | Exception]] = queue.Queue()
        self.link = MqttLink(HOST, port, name, on_message=self._collect)
        self.link.connect()
        for topic in (self.reply_topic, *topics):
            self.link.subscribe(topic)

    def _collect(self, received: Received) -> None:
        try:
            self.messages.put((received, decode(received.payload)))
        except Exception as error:
            self.messages.put((received, error))

    def send(self, topic: str, payload: bytes, correlation: bytes = b"probe-1") -> None:
        self.link.publish(topic, payload, response_topic=self.reply_topic, correlation=correlation)

    def next(self, timeout_s: float = 2.0) -> tuple[Received, Message | Exception]:
        return self.messages.get(timeout=timeout_s)

    def next_on(self, topic: str, timeout_s: float = 2.0) -> tuple[Received, Any]:
        while True:
            received, message = self.next(timeout_s)
            if received.topic == topic:
                return received, message

    def close(self) -> None:
        self.link.close()


@dataclass
class World:
    """A provisioned deployment: registry, keys of every party, running parts."""

    port: int
    db: Path
    vault: Vault = field(default_factory=lambda: Vault(os.urandom(32)))
    issuer_key: StaticKey = field(default_factory=StaticKey.generate)
    holder_keys: dict[str, StaticKey] = field(default_factory=dict)
    running: list[KeyHolder | KeyIssuer | Probe] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.registry = Registry(Store(self.db), self.vault)

    def register(self, holder_id: str, role: str) -> StaticKey:
        key = self.holder_keys[holder_id] = StaticKey.generate()
        self.registry.register(holder_id, role, key.public)  # type: ignore[arg-type]
        return key

    def issuer(self, **options: Any) -> KeyIssuer:
        issuer = KeyIssuer(self.registry, self.issuer_key, host=HOST, port=self.port, **options)
        issuer.start()
        self.running.append(issuer)
        return issuer

    def device(self, device_id: str, start: bool = True, **options: Any) -> DeviceAgent:
        return self._holder(DeviceAgent, device_id, start, options)

    def receiver(self, receiver_id: str, start: bool = True, **options: Any) -> ReceiverAgent:
        return self._holder(ReceiverAgent, receiver_id, start, options)

    def _holder(self, kind: type[H], holder_id: str, start: bool, options: dict[str, Any]) -> H:
        agent = kind(
            holder_id, self.holder_keys[holder_id], self.issuer_key.public,
            host=HOST, port=self.port, **options,
        )  # fmt: skip
        if start:
            agent.start()
        self.running.append(agent)
        return agent

    def probe(self, *topics: str) -> Probe:
        probe = Probe(self.port, "probe", *topics)
        self.running.append(probe)
        return probe

    def stop(self) -> None:
        for part in reversed(self.running):
            if isinstance(part, Probe):
                part.close()
            else:
                part.stop()
