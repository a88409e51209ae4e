"""Registered devices and receivers, their keys (sealed at rest) and every rotation.

Tables ``devices``, ``device_keys`` and ``rotations`` of migration 4, through the
store's connections and transactions. A new key id is one more than the largest ever
issued for the device (keys and rotations both count), taken inside the transaction
that stores the key, so ids only increase even across restarts and processes. Keys are
sealed by the :class:`~netsentry.rotation.vault.Vault` (purpose ``device-key``,
additional data = device id and key id), so a sealed key copied to another row does not
open; they are never logged.

A rotation is recorded once its outcome is known (one commit after the deliveries, which
also draws the next key, so no commit sits on the key's path: on a 2-core machine a
commit before the deliveries cost 8 ms at the median, and one running beside them
doubled their latency). Its key is drawn and committed before it is sent, so a crash
in the middle leaves a key id that was drawn but has no rotation row, and the next
rotation takes a higher id.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from netsentry.rotation.handshake import KEY_BYTES
from netsentry.rotation.vault import Vault
from netsentry.rotation.wire import PUBLIC_BYTES, ROLE_CODES, Role, check_device_id
from netsentry.store.sqlite import Store

KEY_PURPOSE = "device-key"
Reason = Literal["anomaly", "schedule", "operator"]
REASONS: tuple[Reason, ...] = ("anomaly", "schedule", "operator")
Status = Literal["pending", "completed", "failed"]


class UnknownDeviceError(LookupError):
    """A device or receiver id that is not registered (or has another role)."""


@dataclass(frozen=True)
class Registered:
    """A device or receiver and its static X25519 public key."""

    id: str
    role: Role
    public_key: bytes
    registered_ns: int


@dataclass(frozen=True)
class RotationRecord:
    """One row of ``rotations``."""

    id: int
    device_id: str
    key_id: int
    reason: Reason
    detail: str
    requested_ns: int
    completed_ns: int | None
    latency_ms: float | None
    attempts: int
    status: Status
    error: str | None


def key_context(device_id: str, key_id: int) -> bytes:
    """The additional data a device key is sealed with."""
    return f"{device_id}\x00{key_id}".encode()


class Registry:
    """Devices, keys and rotations in ``store``; keys sealed by ``vault``."""

    def __init__(self, store: Store, vault: Vault) -> None:
        self.store, self.vault = store, vault

    def __repr__(self) -> str:
        return f"Registry({self.store.path}, {self.vault!r})"

    # -- devices ----------------------------------------------------------------------

    def register(
        self, device_id: str, role: Role, public_key: bytes, *, replace: bool = False
    ) -> Registered:
        """Record the static public key of a device or receiver (provisioned out of band).

        A second registration of the same id is refused unless ``replace`` (re-keying a
        device is an operator's decision).
        """
        check_device_id(device_id, f"{role} id")
        if role not in ROLE_CODES:
            raise ValueError(f"role {role!r} is neither 'device' nor 'receiver'")
        if len(public_key) != PUBLIC_BYTES:
            raise ValueError(f"an X25519 public key is 32 bytes, got {len(public_key)}")
        now = time.time_ns()
        with self.store.transaction() as tx:
            row = tx.db.execute("SELECT role FROM devices WHERE id = ?", (device_id,)).fetchone()
            if row is not None and not replace:
                raise ValueError(f"{device_id!r} is already registered (as {row[0]})")
            tx.db.execute(
                "INSERT INTO devices VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "role = excluded.role, public_key = excluded.public_key, "
                "registered = excluded.registered",
                (device_id, role, bytes(public_key), now),
            )
        return Registered(device_id, role, bytes(public_key), now)

    def get(
        self, device_id: str, role: Role | None = None, db: sqlite3.Connection | None = None
    ) -> Registered:
        """The registration of ``device_id`` (with ``role``, if given)."""
        if db is None:
            with self.store.read() as own:
                return self.get(device_id, role, own)
        row = db.execute(
            "SELECT id, role, public_key, registered FROM devices WHERE id = ?", (device_id,)
        ).fetchone()
        if row is None:
            raise UnknownDeviceError(f"{device_id!r} is not registered")
        found = Registered(row[0], row[1], bytes(row[2]), int(row[3]))
        if role is not None and found.role != role:
            raise UnknownDeviceError(f"{device_id!r} is registered as a {found.role}, not {role}")
        return found

    def all(
        self, role: Role | None = None, db: sqlite3.Connection | None = None
    ) -> list[Registered]:
        """Every registration (of ``role``, if given), by id."""
        if db is None:
            with self.store.read() as own:
                return self.all(role, own)
        rows = db.execute(
            "SELECT id, role, public_key, registered FROM devices "
            "WHERE ? IS NULL OR role = ? ORDER BY id",
            (role, role),
        ).fetchall()
        return [Registered(r[0], r[1], bytes(r[2]), int(r[3])) for r in rows]

    def recipients(
        self, device_id: str, receiver_ids: Sequence[str] | None = None
    ) -> tuple[Registered, list[Registered]]:
        """The device and the receivers its keys go to (``receiver_ids``, or every
        registered receiver), read together."""
        with self.store.read() as db:
            device = self.get(device_id, "device", db)
            if receiver_ids is None:
                return device, self.all("receiver", db)
            return device, [self.get(r, "receiver", db) for r in receiver_ids]

    # -- keys and rotations -----------------------------------------------------------

    def draw_key(self, device_id: str) -> tuple[int, bytes]:
        """Draw the next key of ``device_id`` and store it sealed; (key id, key).

        The id is one more than any ever drawn or rotated to for the device, taken in
        the transaction that stores the key.
        """
        self.get(device_id, "device")
        with self.store.transaction() as tx:
            return self._draw(tx.db, device_id, tx.now)

    def _draw(self, db: sqlite3.Connection, device_id: str, now: int) -> tuple[int, bytes]:
        key = secrets.token_bytes(KEY_BYTES)
        key_id = _last_key_id(db, device_id) + 1
        sealed = self.vault.seal(KEY_PURPOSE, key, key_context(device_id, key_id))
        db.execute("INSERT INTO device_keys VALUES (?, ?, ?, ?)", (device_id, key_id, sealed, now))
        return key_id, key

    def record_rotation(
        self,
        device_id: str,
        key_id: int,
        reason: Reason,
        detail: str,
        *,
        requested_ns: int,
        completed: bool,
        latency_ms: float | None,
        attempts: int,
        error: str | None = None,
        draw_next: bool = False,
    ) -> tuple[int, tuple[int, bytes] | None]:
        """Record a finished rotation, ``completed`` (with its latency) or ``failed``
        (with the error), and with ``draw_next`` draw the device's next key in the same
        commit; (rotation id, next key id and key or None)."""
        if reason not in REASONS:
            raise ValueError(f"rotation reason {reason!r} is not one of {', '.join(REASONS)}")
        with self.store.transaction() as tx:
            cursor = tx.db.execute(
                "INSERT INTO rotations (device, key_id, reason, detail, requested, completed, "
                "latency_ms, attempts, status, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    device_id,
                    key_id,
                    reason,
                    detail,
                    requested_ns,
                    tx.now if completed else None,
                    latency_ms if completed else None,
                    attempts,
                    "completed" if completed else "failed",
                    error,
                ),
            )
            rotation_id = cursor.lastrowid
            drawn = self._draw(tx.db, device_id, tx.now) if draw_next else None
        assert rotation_id is not None
        return rotation_id, drawn

    def key(self, device_id: str, key_id: int) -> bytes:
        """The key ``key_id`` of ``device_id``, opened (IntegrityError if tampered)."""
        with self.store.read() as db:
            row = db.execute(
                "SELECT sealed FROM device_keys WHERE device = ? AND key_id = ?",
                (device_id, key_id),
            ).fetchone()
        if row is None:
            raise KeyError(f"no key id {key_id} for {device_id!r}")
        return self.vault.open(KEY_PURPOSE, bytes(row[0]), key_context(device_id, key_id))

    def current_key(self, device_id: str) -> tuple[int, bytes] | None:
        """The newest key of ``device_id`` whose rotation completed, or None."""
        with self.store.read() as db:
            row = db.execute(
                "SELECT MAX(key_id) FROM rotations WHERE device = ? AND status = 'completed'",
                (device_id,),
            ).fetchone()
        if row is None or row[0] is None:
            return None
        return int(row[0]), self.key(device_id, int(row[0]))

    def rotations(self, device_id: str | None = None, limit: int = 100) -> list[RotationRecord]:
        """The latest rotations (of ``device_id``, if given), newest first."""
        with self.store.read() as db:
            rows = db.execute(
                "SELECT id, device, key_id, reason, detail, requested, completed, latency_ms, "
                "attempts, status, error FROM rotations WHERE ? IS NULL OR device = ? "
                "ORDER BY id DESC LIMIT ?",
                (device_id, device_id, limit),
            ).fetchall()
        return [RotationRecord(*row) for row in rows]


def _last_key_id(db: sqlite3.Connection, device_id: str) -> int:
    (last,) = db.execute(
        "SELECT MAX(k) FROM (SELECT MAX(key_id) AS k FROM device_keys WHERE device = ? "
        "UNION ALL SELECT MAX(key_id) FROM rotations WHERE device = ?)",
        (device_id, device_id),
    ).fetchone()
    return int(last) if last is not None else 0
