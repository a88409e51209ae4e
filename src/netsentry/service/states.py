"""What one check reads and will write: components' states, their versions, its anomalies.

A check loads every state it needs through :meth:`Outcome.load`, which notes the
version it read; the commit then refuses to overwrite a state that feedback or another
check replaced meanwhile (optimistic concurrency, see ``run_check``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, TypeVar

from netsentry.detect.base import StateMismatchError
from netsentry.model import KEY_TAGS, Anomaly
from netsentry.store.sqlite import Store

C = TypeVar("C")
_IDS = uuid.UUID("6b3f0a52-8c1e-4d7a-9f5e-2a4c1b7d9e30")


def anomaly_id(detector: str, measurement: str, key: int, time_ns: int) -> str:
    """An anomaly's id, derived from what it describes: a rerun check gives the same ids."""
    return str(uuid.uuid5(_IDS, f"{detector}|{measurement}|{key:016x}|{time_ns}"))


def row_anomaly(
    row: dict[str, Any],
    detector: str,
    score: float,
    threshold: float,
    explanation: dict[str, Any],
    *,
    id_time: int | None = None,
) -> Anomaly:
    """An anomaly about one row of a Batch frame (its time, measurement, key, value and
    tags), its id derived from ``id_time`` (default: the row's time)."""
    when = row["time"] if id_time is None else id_time
    return Anomaly(
        time=row["time"],
        measurement=row["measurement"],
        key=row["key"],
        value=row["value"],
        score=score,
        threshold=threshold,
        detector=detector,
        explanation=explanation,
        tags={t: row[t] for t in KEY_TAGS},
        id=anomaly_id(detector, row["measurement"], row["key"], when),
    )


@dataclass
class Outcome:
    anomalies: list[Anomaly]
    states: dict[tuple[str, str], dict[str, Any]]
    versions: dict[tuple[str, str], int] = field(default_factory=dict)
    #: components whose saved state no longer fits their configuration: started afresh
    restarted: list[tuple[str, str]] = field(default_factory=list)

    def load(
        self, component: C, store: Store, name: str, measurement: str, *, fresh_on_mismatch: bool
    ) -> C:
        """``component`` with the state saved under (name, measurement), if any.

        A state saved under another configuration (e.g. a changed window) raises
        :class:`StateMismatchError`, or with ``fresh_on_mismatch`` leaves ``component``
        fresh and notes it in :attr:`restarted`: the new configuration starts learning
        again, which the check reports.
        """
        state, version = store.load_state(name, measurement)
        self.versions[(name, measurement)] = version
        if state is not None:
            try:
                component.load_state(state)  # type: ignore[attr-defined]
            except StateMismatchError:
                if not fresh_on_mismatch:
                    raise
                self.restarted.append((name, measurement))
        return component

    def save(self, name: str, measurement: str, component: Any) -> None:
        self.states[(name, measurement)] = component.state_dict()
