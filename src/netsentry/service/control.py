"""The RIoT control plane as the service uses it: parameters in, anomalies out.

Parameters (tolerance, frequency) are polled before every check and every few minutes
(the reference read them only at start-up); valid values are stored as run-time
settings with actor ``riot`` and apply at the next check. If RIoT is unreachable or
answers nonsense, the last values stay and ``/status`` shows why: a control-plane
outage never stops detection. Anomalies reach RIoT through the persistent outbox that
every check fills in its own transaction (:mod:`netsentry.respond.outbox`).
"""

from __future__ import annotations

import logging

import httpx

from netsentry.config import DetectionSettings
from netsentry.respond import outbox
from netsentry.respond.riot import DESTINATION, RiotClient, RiotError, RiotSettings
from netsentry.service.runtime import effective
from netsentry.store.sqlite import Store

log = logging.getLogger(__name__)


class ControlPlane:
    destination = DESTINATION

    def __init__(self, settings: RiotSettings, http: httpx.Client | None = None) -> None:
        self.client = RiotClient(settings, http)

    @classmethod
    def from_environment(cls) -> ControlPlane | None:
        settings = RiotSettings()
        return cls(settings) if settings.enabled else None

    def refresh(self, store: Store, defaults: DetectionSettings) -> bool:
        """Fetch the parameters; store them if they changed. False if RIoT failed."""
        try:
            tolerance, frequency = self.client.get_params()
        except RiotError as err:
            log.warning("RIoT parameters: %s", err)
            store.record_errors("riot", "parameters", [f"RIoT parameters: {err}"])
            return False
        current = effective(defaults, store)
        if (current.tolerance, current.frequency) != (tolerance, frequency):
            store.set_settings({"tolerance": tolerance, "frequency": frequency}, actor="riot")
        return True

    def deliver(self, store: Store) -> outbox.DeliveryReport:
        return outbox.deliver(store, self.client, destination=self.destination)

    def close(self) -> None:
        self.client.close()
