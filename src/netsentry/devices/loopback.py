"""The whole loop on one machine: a camera, its transport receiver, netsentry between.

:class:`Loopback` wires the reference components over real sockets: a
:class:`~netsentry.devices.video.VideoSource` streamed by a
:class:`~netsentry.devices.stream.VideoSender` (the device) over loopback UDP to a
:class:`~netsentry.devices.stream.TransportReceiver`, whose
:class:`~netsentry.devices.monitor.DeviceMonitor` learns the profile and judges every
window; an anomaly goes to a :class:`~netsentry.rotation.trigger.RotationTrigger`,
whose :class:`~netsentry.rotation.issuer.KeyIssuer` delivers a new key over MQTT to
the receiver's and then the device's agents. Every key switch seen by the receiver is
recorded (:attr:`Loopback.switches`), which is how the end-to-end test and
``bench/bench_device_rotation.py`` see the loop close.

The first key is delivered by an operator rotation before the stream starts, as a
deployment's provisioning would.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from netsentry.devices.monitor import DeviceMonitor
from netsentry.devices.stream import TransportReceiver, VideoSender
from netsentry.devices.video import VideoSource
from netsentry.rotation.agent import DeviceAgent, ReceiverAgent
from netsentry.rotation.handshake import StaticKey
from netsentry.rotation.issuer import KeyIssuer
from netsentry.rotation.keyring import KeyRing
from netsentry.rotation.registry import Registry
from netsentry.rotation.trigger import RotationTrigger
from netsentry.rotation.vault import Vault
from netsentry.store.sqlite import Store


@dataclass(frozen=True)
class Switch:
    """The receiver opened its first frame under ``key_id`` at ``at`` (monotonic s)."""

    key_id: int
    at: float


class Loopback:
    """A provisioned camera, receiver and issuer on one machine (see the module doc).

    Parameters
    ----------
    db : the SQLite store (devices, keys, rotations, profile, detections).
    mqtt_port : a Mosquitto on 127.0.0.1.
    source : the camera's video, misbehaviour injected beforehand.
    learn_windows : windows of the device's learning phase (0.5 s apart).
    cooldown_s : least time between two anomaly rotations.
    grace_s : how long the receiver keeps an old key after the first frame under a new one.
    """

    device_id = "cam-1"
    receiver_id = "rx-1"

    def __init__(
        self,
        db: Path,
        mqtt_port: int,
        source: VideoSource,
        *,
        learn_windows: int = 40,
        cooldown_s: float = 30.0,
        grace_s: float = 2.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.store, self.vault = Store(db), Vault(os.urandom(32))
        self.registry = Registry(self.store, self.vault)
        issuer_key = StaticKey.generate()
        camera_key, receiver_key = StaticKey.generate(), StaticKey.generate()
        self.registry.register(self.device_id, "device", camera_key.public)
        self.registry.register(self.receiver_id, "receiver", receiver_key.public)
        self.switches: list[Switch] = []
        self.installs: list[Switch] = []  # the device's agent installed (and sends under) a key
        self._switched = threading.Condition()
        ring = KeyRing(grace_s=grace_s, on_switch=self._on_switch)
        self.issuer = KeyIssuer(self.registry, issuer_key, host=host, port=mqtt_port)
        self.device = DeviceAgent(
            self.device_id,
            camera_key,
            issuer_key.public,
            host=host,
            port=mqtt_port,
            on_install=lambda _, key_id: self.installs.append(Switch(key_id, time.monotonic())),
        )
        self.receiver_agent = ReceiverAgent(
            self.receiver_id,
            receiver_key,
            issuer_key.public,
            host=host,
            port=mqtt_port,
            rings={self.device_id: ring},
        )
        self.trigger: RotationTrigger | None = None
        self.monitor = DeviceMonitor(
            self.device_id,
            learn_windows=learn_windows,
            store=self.store,
            vault=self.vault,
            on_anomaly=self._on_anomaly,
            record="flagged",
        )
        self.receiver = TransportReceiver(ring, host=host, monitor=self.monitor)
        self.sender = VideoSender(self.device.keyring, self.receiver.address, source)
        self.cooldown_s = cooldown_s

    def _on_switch(self, key_id: int) -> None:
        with self._switched:
            self.switches.append(Switch(key_id, time.monotonic()))
            self._switched.notify_all()

    def _on_anomaly(self, device_id: str, detection: object) -> None:
        if self.trigger is not None:
            self.trigger.on_anomaly(device_id, detection)

    def start(self) -> None:
        """Connect everything and deliver the first key (raises if the broker is down)."""
        self.issuer.start()
        self.receiver_agent.start()
        self.device.start()
        self.issuer.prepare(self.device_id)
        first = self.issuer.rotate(self.device_id, "operator", "provisioning")
        if not first.ok:
            raise RuntimeError(f"the first key could not be delivered: {first.error}")
        self.trigger = RotationTrigger(self.issuer, cooldown_s=self.cooldown_s)
        self.receiver.start()

    def wait_for_switch(self, key_id: int, timeout_s: float) -> Switch | None:
        """The receiver's switch to ``key_id`` (or a later key), waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._switched:
            while True:
                found = [s for s in self.switches if s.key_id >= key_id]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._switched.wait(left)

    def stop(self) -> None:
        self.sender.close()
        if self.trigger is not None:
            self.trigger.close()
        self.receiver.close()
        self.device.stop()
        self.receiver_agent.stop()
        self.issuer.stop()

    def __enter__(self) -> Loopback:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
