"""Run-time settings: the configured defaults overridden by what was set through the API.

``tolerance`` and ``frequency`` can change while the service runs (API, CLI, and the
RIoT control plane later); they are kept in the store with their history and read
again before every check, so a change takes effect at the next check.
"""

from __future__ import annotations

import json
from typing import Any

from netsentry.config import DetectionSettings
from netsentry.store.sqlite import Store

RUNTIME = ("tolerance", "frequency")


def effective(defaults: DetectionSettings, store: Store) -> DetectionSettings:
    overrides: dict[str, Any] = {
        name: json.loads(value) for name, value in store.settings().items() if name in RUNTIME
    }
    merged = {**defaults.model_dump(), **overrides}
    return DetectionSettings.model_validate(merged)
