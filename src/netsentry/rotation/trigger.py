"""What starts a rotation: a device's anomaly, a schedule, an operator.

:class:`RotationTrigger` receives a monitor's ``on_anomaly(device_id, detection)`` in
the receiver's thread and must not block it (the packets keep coming), so it only
queues the request; one worker thread runs :meth:`KeyIssuer.rotate` for each. A
device is rotated for an anomaly at most once per ``cooldown_s``: an episode of
misbehaviour triggers one rotation, not one per window (the requests in between are
counted as ``suppressed``). Operator requests and the schedule are not rate-limited.

:func:`rotate_all` is the scheduled trigger: every registered device, one by one.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from netsentry.rotation.issuer import KeyIssuer, Rotation
from netsentry.rotation.registry import Reason

log = logging.getLogger(__name__)


@dataclass
class TriggerStats:
    requested: int = 0
    suppressed: int = 0
    completed: int = 0
    failed: int = 0
    rotations: list[Rotation] = field(default_factory=list)


class RotationTrigger:
    """Queue rotations for a :class:`KeyIssuer`; run them on one worker thread.

    Parameters
    ----------
    issuer : a started issuer.
    cooldown_s : least time between two anomaly rotations of one device.
    on_rotation : called with each finished :class:`Rotation` (worker thread).
    clock : monotonic seconds (injectable for tests of the cooldown).
    """

    def __init__(
        self,
        issuer: KeyIssuer,
        *,
        cooldown_s: float = 30.0,
        on_rotation: Callable[[Rotation], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
        self.issuer, self.cooldown_s, self.on_rotation = issuer, cooldown_s, on_rotation
        self.clock = clock
        self.stats = TriggerStats()
        self._last: dict[str, float] = {}
        self._queue: queue.Queue[tuple[str, Reason, str] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="rotation-trigger", daemon=True)
        self._worker.start()

    def on_anomaly(self, device_id: str, detection: Any) -> None:
        """A monitor's callback: queue an anomaly rotation unless one ran recently."""
        now = self.clock()
        with self._lock:
            last = self._last.get(device_id)
            if last is not None and now - last < self.cooldown_s:
                self.stats.suppressed += 1
                return
            self._last[device_id] = now
            self.stats.requested += 1
        self._queue.put((device_id, "anomaly", _detail(detection)))

    def request(self, device_id: str, reason: Reason, detail: str = "") -> None:
        """Queue a rotation for another reason (schedule, operator)."""
        with self._lock:
            self.stats.requested += 1
        self._queue.put((device_id, reason, detail))

    def join(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued rotation has finished; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.005)
        return False

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)

    def __enter__(self) -> RotationTrigger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                device_id, reason, detail = item
                try:
                    rotation = self.issuer.rotate(device_id, reason, detail)
                except Exception:  # an unknown device, a stopped issuer: log, go on
                    log.exception("rotation of %s (%s) could not start", device_id, reason)
                    with self._lock:
                        self.stats.failed += 1
                    continue
                with self._lock:
                    self.stats.rotations.append(rotation)
                    if rotation.ok:
                        self.stats.completed += 1
                    else:
                        self.stats.failed += 1
                if self.on_rotation is not None:
                    self.on_rotation(rotation)
            finally:
                self._queue.task_done()


def _detail(detection: Any) -> str:
    """Why, for the rotation record: the detection's explanation, or its text."""
    explanation = getattr(detection, "explanation", None)
    if explanation is None:
        return str(detection)[:2000]
    summary = {
        "feature": getattr(detection, "feature", None),
        "detector": getattr(detection, "detector", None),
        "time_ns": getattr(detection, "time_ns", None),
        "explanation": explanation,
    }
    return json.dumps(summary, default=str)[:4000]


def rotate_all(
    issuer: KeyIssuer, devices: list[str], reason: Reason = "schedule"
) -> list[Rotation]:
    """Rotate each device in turn (the scheduled trigger); failures are recorded, not raised."""
    return [issuer.rotate(device, reason, "scheduled rotation") for device in devices]
