"""Key rotation in the service: the issuer, its trigger and the schedule (docs/rotation.md).

On when ``NETSENTRY_MQTT_HOST`` is set (with ``NETSENTRY_ISSUER_KEY`` and
``NETSENTRY_VAULT_KEY``, which the settings then require). The API's
``POST /devices/{id}/rotate`` (operator), the device monitors' anomalies and, with
``NETSENTRY_ROTATION_INTERVAL_H``, a schedule all go through one :class:`KeyIssuer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from netsentry.config import Settings
from netsentry.privacy.epochs import parse_master_secret
from netsentry.rotation.handshake import StaticKey
from netsentry.rotation.issuer import KeyIssuer, Rotation
from netsentry.rotation.registry import Reason, Registry
from netsentry.rotation.trigger import RotationTrigger, rotate_all
from netsentry.rotation.vault import Vault
from netsentry.store.sqlite import Store

log = logging.getLogger(__name__)


class RotationService:
    """One issuer for the process, with the anomaly trigger and the schedule."""

    def __init__(self, settings: Settings, store: Store, *, issuer_id: str = "netsentry") -> None:
        if settings.mqtt_host is None or settings.issuer_key is None or settings.vault_key is None:
            raise ValueError("key rotation needs NETSENTRY_MQTT_HOST, _ISSUER_KEY and _VAULT_KEY")
        vault = Vault(parse_master_secret(settings.vault_key.get_secret_value()))
        self.settings = settings
        self.registry = Registry(store, vault)
        self.issuer = KeyIssuer(
            self.registry,
            StaticKey.from_text(settings.issuer_key.get_secret_value()),
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            issuer_id=issuer_id,
            attempts=settings.rotation_attempts,
            timeout_s=settings.rotation_timeout_s,
        )
        self.trigger: RotationTrigger | None = None

    @classmethod
    def from_settings(cls, settings: Settings, store: Store) -> RotationService | None:
        return None if settings.mqtt_host is None else cls(settings, store)

    def start(self) -> None:
        """Connect to the broker (raises ``BrokerUnavailableError``) and draw next keys."""
        self.issuer.start()
        for device in self.devices():
            self.issuer.prepare(device)
        self.trigger = RotationTrigger(self.issuer, cooldown_s=self.settings.rotation_cooldown_s)

    def stop(self) -> None:
        if self.trigger is not None:
            self.trigger.close()
        self.issuer.stop()

    def devices(self) -> list[str]:
        return [d.id for d in self.registry.all("device")]

    def rotate(self, device_id: str, reason: Reason, detail: str = "") -> Rotation:
        """One rotation now (blocks until it completes or fails)."""
        return self.issuer.rotate(device_id, reason, detail)

    async def run_schedule(self, stopping: asyncio.Event) -> None:
        """Rotate every device every ``rotation_interval_h`` until ``stopping`` is set."""
        interval_h = self.settings.rotation_interval_h
        if interval_h is None:
            return
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):  # the interval is over: rotate
                await asyncio.wait_for(stopping.wait(), timeout=interval_h * 3600.0)
                return
            rotations = await asyncio.to_thread(rotate_all, self.issuer, self.devices())
            failed = [r.device_id for r in rotations if not r.ok]
            if failed:
                log.warning("scheduled rotation failed for %s", ", ".join(failed))
