"""The contract every detector honours (DESIGN.md, "Detectors").

* ``score(batch)`` is pure: it never changes the detector, and a higher score means
  more anomalous. Turning a score into a verdict is the job of a separate threshold
  object (:mod:`netsentry.detect.threshold`), so sensitivity changes need no refit.
* ``learn(batch, mask)`` updates the state with the rows where ``mask`` is True.
* ``state_dict()`` / ``load_state()`` round-trip the learned state as plain numpy
  arrays and scalars (no pickle), stamped with a fingerprint of the state layout.
* ``merge(other)`` combines two detectors trained on disjoint data, where the state
  is mergeable, so a check can be sharded by entity key.

``tests/test_detector_contract.py`` runs one suite over every registered detector.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

from netsentry.model import Batch

State = dict[str, Any]


@runtime_checkable
class Detector(Protocol):
    name: str

    def score(self, batch: Batch) -> npt.NDArray[np.float64]: ...

    def learn(self, batch: Batch, mask: npt.NDArray[np.bool_]) -> None: ...

    def state_dict(self) -> State: ...

    def load_state(self, state: State) -> None: ...

    def merge(self, other: Self) -> Self: ...


def fingerprint(params: dict[str, Any]) -> str:
    """A short stable digest of the parameters a state depends on."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StateMismatchError(ValueError):
    """A saved state does not fit the detector that is asked to load it."""


class NotMergeableError(TypeError):
    """This detector's state cannot be combined across shards (the message says why)."""
