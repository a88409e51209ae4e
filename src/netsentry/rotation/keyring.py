"""The keys one party holds for a stream, by key id, with a grace period on rotation.

A sender encrypts under :attr:`KeyRing.current` (the newest key). A receiver opens each
frame with the key :meth:`KeyRing.peek` gives for the frame's key id and, once the
frame's tag verified, calls :meth:`KeyRing.confirm` (:meth:`KeyRing.lookup` does both,
for a caller with nothing to verify). When a rotation installs a new key, the receiver
accepts old and new keys; the old ones are retired ``grace_s`` seconds after the first
frame under the new key was confirmed, so frames still in flight under the old key open
while the sender switches, nothing is retired if the sender never switches, and a
forged frame (which never verifies) cannot start the switch.

The ring is thread-safe: the MQTT thread installs keys while the UDP thread looks them
up. Keys never appear in its ``repr``.

>>> now = [0.0]
>>> ring = KeyRing(grace_s=5.0, clock=lambda: now[0])
>>> ring.install(1, bytes(32)); ring.install(2, bytes([1]) * 32)
>>> ring.current[0]
2
>>> len(ring.lookup(2)), len(ring.lookup(1))   # key 2 seen at t=0: key 1 lives until t=5
(32, 32)
>>> now[0] = 5.0
>>> ring.lookup(1)
Traceback (most recent call last):
...
netsentry.rotation.keyring.StaleKeyError: key id 1 was retired (superseded by key id 2)
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

KEY_BYTES = 32
RETIRED_REMEMBERED = 1024


class UnknownKeyError(KeyError):
    """A key id that was never installed in this ring."""


class StaleKeyError(ValueError):
    """A key id that is not newer than the newest installed, or that was retired."""


class KeyRing:
    """Keys by increasing key id; old keys retire a grace period after the switch.

    Parameters
    ----------
    grace_s : float
        How long an older key stays valid after the first use of a newer key.
    clock : callable
        Monotonic seconds (injected for tests).
    on_switch : callable, optional
        Called with the key id, outside the lock, the first time a key newer than every
        key used before is used, by :meth:`confirm` or :meth:`lookup` (the receiver "has
        switched"; the very first use counts too). Also settable as the attribute
        ``on_switch``.
    max_keys : int
        At most this many keys are held: installing beyond it drops the oldest keys
        other than the newest one in use (so repeated unfinished rotations stay bounded).
    """

    def __init__(
        self,
        grace_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        on_switch: Callable[[int], None] | None = None,
        max_keys: int = 8,
    ) -> None:
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        if max_keys < 2:
            raise ValueError(f"max_keys must be >= 2 (old and new key), got {max_keys}")
        self.grace_s = grace_s
        self.clock = clock
        self.on_switch = on_switch
        self.max_keys = max_keys
        self._keys: OrderedDict[int, bytes] = OrderedDict()
        self._newest_installed = -1
        self._newest_used = -1
        self._pending: deque[tuple[float, int]] = deque()  # (deadline, retire ids below)
        self._retired: OrderedDict[int, int] = OrderedDict()  # retired id -> superseded by
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        with self._lock:
            ids = list(self._keys)
        return f"KeyRing(key_ids={ids}, grace_s={self.grace_s})"

    def install(self, key_id: int, key: bytes) -> None:
        """Add ``key`` under ``key_id``, which must exceed every key id installed before."""
        if not isinstance(key_id, int) or key_id < 0:
            raise ValueError(f"key id must be a non-negative integer, got {key_id!r}")
        if len(key) != KEY_BYTES:
            raise ValueError(f"key {key_id} is {len(key)} bytes, expected {KEY_BYTES}")
        with self._lock:
            self._retire_due()
            if key_id <= self._newest_installed:
                raise StaleKeyError(
                    f"key id {key_id} is not newer than the newest installed "
                    f"({self._newest_installed})"
                )
            self._keys[key_id] = bytes(key)
            self._newest_installed = key_id
            while len(self._keys) > self.max_keys:
                oldest = next(k for k in self._keys if k != self._newest_used)
                self._retire(oldest, key_id)

    @property
    def current(self) -> tuple[int, bytes] | None:
        """The newest key and its id (what a sender uses), or None before any install."""
        with self._lock:
            self._retire_due()
            if not self._keys:
                return None
            key_id = next(reversed(self._keys))
            return key_id, self._keys[key_id]

    @property
    def key_ids(self) -> list[int]:
        """The ids of the keys held now (retired ones excluded), oldest first."""
        with self._lock:
            self._retire_due()
            return list(self._keys)

    def peek(self, key_id: int) -> bytes:
        """The key of a received frame's ``key_id``, without marking it used.

        A receiver opens a frame with this key and calls :meth:`confirm` only once the
        frame's tag verified, so a forged frame carrying the id of a newer installed key
        cannot start the switch that retires the older keys.

        Raises
        ------
        UnknownKeyError
            ``key_id`` was never installed (or was retired too long ago to remember).
        StaleKeyError
            ``key_id`` was retired.
        """
        with self._lock:
            return self._held(key_id)

    def confirm(self, key_id: int) -> None:
        """Mark ``key_id`` used: a frame under it was authenticated.

        The first time a key newer than every key confirmed before is confirmed, this
        calls ``on_switch`` and starts the grace period of the older keys. Raises as
        :meth:`peek` does if ``key_id`` is not held (any more).
        """
        with self._lock:
            self._held(key_id)
            callback = self._use(key_id)
        if callback is not None:
            callback(key_id)

    def lookup(self, key_id: int) -> bytes:
        """:meth:`peek` and :meth:`confirm` at once, for a caller with nothing to verify.

        Raises
        ------
        UnknownKeyError
            ``key_id`` was never installed (or was retired too long ago to remember).
        StaleKeyError
            ``key_id`` was retired.
        """
        with self._lock:
            key = self._held(key_id)
            callback = self._use(key_id)
        if callback is not None:
            callback(key_id)
        return key

    def retire_pending(self) -> list[int]:
        """Retire the keys whose grace period is over now; return their ids."""
        with self._lock:
            return self._retire_due()

    def _held(self, key_id: int) -> bytes:
        """The key of ``key_id`` now (the lock is held); raises as :meth:`peek` says."""
        self._retire_due()
        key = self._keys.get(key_id)
        if key is None:
            if key_id in self._retired:
                raise StaleKeyError(
                    f"key id {key_id} was retired (superseded by key id {self._retired[key_id]})"
                )
            raise UnknownKeyError(f"key id {key_id} was never installed")
        return key

    def _use(self, key_id: int) -> Callable[[int], None] | None:
        """Mark ``key_id`` used (the lock is held); the callback to run if it is a switch."""
        if key_id <= self._newest_used:
            return None
        self._pending.append((self.clock() + self.grace_s, key_id))
        self._newest_used = key_id
        return self.on_switch

    def _retire_due(self) -> list[int]:
        retired: list[int] = []
        now = self.clock()
        while self._pending and self._pending[0][0] <= now:
            _, newer = self._pending.popleft()
            for key_id in [k for k in self._keys if k < newer]:
                self._retire(key_id, newer)
                retired.append(key_id)
        return retired

    def _retire(self, key_id: int, newer: int) -> None:
        del self._keys[key_id]
        self._retired[key_id] = newer
        while len(self._retired) > RETIRED_REMEMBERED:
            self._retired.popitem(last=False)
