"""Encrypted frames on UDP: one RTP packet per datagram, sealed under a rotating key.

Layout (big-endian)::

    offset  size  field
    0       1     version      (1; anything else is refused with UnknownVersionError)
    1       4     key id       (u32: which key of the KeyRing sealed it)
    5       8     sequence     (u64: per sender, never repeated under one key)
    13      n+16  AES-256-GCM ciphertext of the n-byte RTP packet, then the 16-byte tag

The nonce is four zero bytes followed by the sequence (12 bytes); the additional data
is the 13-byte header, so a version, key id or sequence changed on the way makes the
frame fail to open. A nonce must never repeat under one key: a :class:`FrameSealer`
counts its sequence up from a random start below 2**62 (two sealers under one key, as
after a restart, overlap only with probability about ``frames / 2**62``), and keys are
fresh per rotation.

A :class:`FrameOpener` peeks at the key in its :class:`~netsentry.rotation.keyring.KeyRing`
(``UnknownKeyError``, ``StaleKeyError`` from there), checks the tag
(:class:`UndecryptableError`) and then refuses a sequence it has already opened under
that key, or one older than its window of :data:`REPLAY_WINDOW` sequences
(:class:`ReplayError`), as IPsec and DTLS do. Only a frame that opened moves the window
and confirms its key to the ring (which may start the switch to a newer key), so forged
frames can neither push genuine ones out nor retire the key the sender still uses.

>>> from netsentry.rotation.keyring import KeyRing
>>> ring = KeyRing(); ring.install(1, bytes(32))
>>> frame = FrameSealer(ring, sequence=5).seal(b"rtp packet")
>>> FrameOpener(ring).open(frame)
(FrameHeader(version=1, key_id=1, sequence=5), b'rtp packet')
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from netsentry.rotation.keyring import KeyRing

__all__ = [
    "HEADER",
    "OVERHEAD",
    "VERSION",
    "FrameError",
    "FrameHeader",
    "FrameOpener",
    "FrameSealer",
    "NoKeyError",
    "ReplayError",
    "UndecryptableError",
    "UnknownVersionError",
    "parse_header",
]

VERSION = 1
HEADER = struct.Struct("!BIQ")
TAG_BYTES = 16
OVERHEAD = HEADER.size + TAG_BYTES
REPLAY_WINDOW = 4096
_NONCE_PREFIX = bytes(4)
_FIRST_SEQUENCE_BOUND = 1 << 62


class FrameError(ValueError):
    """A datagram that is not a frame this receiver can accept (the message says why)."""


class UnknownVersionError(FrameError):
    """A frame of a version this code does not speak."""


class UndecryptableError(FrameError):
    """The frame's tag does not verify under its key: forged, corrupted or another key."""


class ReplayError(FrameError):
    """A sequence already opened under that key, or older than the replay window."""


class NoKeyError(RuntimeError):
    """A sender has no key to seal with (nothing installed in its KeyRing yet)."""


@dataclass(frozen=True, slots=True)
class FrameHeader:
    version: int
    key_id: int
    sequence: int


def parse_header(frame: bytes) -> FrameHeader:
    """The header of a frame; :class:`FrameError` if it is too short or of another version."""
    if len(frame) < OVERHEAD:
        raise FrameError(
            f"frame of {len(frame)} bytes is shorter than header and tag ({OVERHEAD} bytes)"
        )
    version, key_id, sequence = HEADER.unpack_from(frame)
    if version != VERSION:
        raise UnknownVersionError(f"frame version (byte 0) is {version}, this speaks {VERSION}")
    return FrameHeader(version, key_id, sequence)


class _Ciphers:
    """AESGCM objects by key id, built once per key (keys are never shown)."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[bytes, AESGCM]] = {}

    def get(self, key_id: int, key: bytes) -> AESGCM:
        known = self._by_id.get(key_id)
        if known is None or known[0] != key:
            if len(self._by_id) > 16:
                self._by_id.clear()
            known = (key, AESGCM(key))
            self._by_id[key_id] = known
        return known[1]

    def __repr__(self) -> str:
        return f"_Ciphers(key_ids={sorted(self._by_id)})"


class FrameSealer:
    """Seals RTP packets under the newest key of ``keyring`` (thread-safe).

    ``sequence`` is the first sequence number (default: random below 2**62).
    """

    def __init__(self, keyring: KeyRing, *, sequence: int | None = None) -> None:
        if sequence is None:
            sequence = int.from_bytes(os.urandom(8), "big") % _FIRST_SEQUENCE_BOUND
        if not 0 <= sequence < 2**64:
            raise ValueError(f"sequence must be a u64, got {sequence}")
        self.keyring = keyring
        self.sequence = sequence
        self._ciphers = _Ciphers()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FrameSealer(keyring={self.keyring!r}, sequence={self.sequence})"

    def seal(self, packet: bytes) -> bytes:
        """One frame holding ``packet``; :class:`NoKeyError` before any key is installed."""
        current = self.keyring.current
        if current is None:
            raise NoKeyError("no key installed: the sender cannot seal frames yet")
        key_id, key = current
        with self._lock:
            sequence = self.sequence
            if sequence >= 2**64:
                raise NoKeyError("sequence space exhausted: rotate the key and restart")
            self.sequence += 1
        header = HEADER.pack(VERSION, key_id, sequence)
        nonce = _NONCE_PREFIX + header[5:]
        return header + self._ciphers.get(key_id, key).encrypt(nonce, packet, header)


class FrameOpener:
    """Opens frames with the keys of ``keyring``, refusing replays (one receiver thread)."""

    def __init__(self, keyring: KeyRing, *, window: int = REPLAY_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"replay window must be positive, got {window}")
        self.keyring = keyring
        self.window = window
        self._ciphers = _Ciphers()
        self._highest: dict[int, int] = {}  # key id -> highest sequence opened
        self._seen: dict[int, int] = {}  # key id -> bit i set: highest - i was opened

    def __repr__(self) -> str:
        return f"FrameOpener(keyring={self.keyring!r}, window={self.window})"

    def open(self, frame: bytes) -> tuple[FrameHeader, bytes]:
        """The header and the RTP packet of a frame.

        Raises
        ------
        FrameError
            Too short, unknown version (:class:`UnknownVersionError`), tag does not
            verify (:class:`UndecryptableError`), replayed (:class:`ReplayError`).
        UnknownKeyError, StaleKeyError
            From the key ring: a key id never installed, or retired.
        """
        header = parse_header(frame)
        key = self.keyring.peek(header.key_id)  # confirmed only once the tag verified
        self._check_fresh(header)
        nonce = _NONCE_PREFIX + frame[5 : HEADER.size]
        try:
            packet = self._ciphers.get(header.key_id, key).decrypt(
                nonce, frame[HEADER.size :], frame[: HEADER.size]
            )
        except InvalidTag:
            raise UndecryptableError(
                f"frame {header.sequence} under key id {header.key_id} does not verify"
            ) from None
        self.keyring.confirm(header.key_id)
        self._mark(header)
        return header, packet

    def _check_fresh(self, header: FrameHeader) -> None:
        highest = self._highest.get(header.key_id)
        if highest is None or header.sequence > highest:
            return
        age = highest - header.sequence
        if age >= self.window or (self._seen[header.key_id] >> age) & 1:
            raise ReplayError(
                f"frame {header.sequence} under key id {header.key_id} is a replay or older "
                f"than the replay window (highest {highest}, window {self.window})"
            )

    def _mark(self, header: FrameHeader) -> None:
        key_id, sequence = header.key_id, header.sequence
        highest = self._highest.get(key_id)
        mask = (1 << self.window) - 1
        if highest is None:
            self._highest[key_id], self._seen[key_id] = sequence, 1
        elif sequence > highest:
            self._seen[key_id] = ((self._seen[key_id] << (sequence - highest)) | 1) & mask
            self._highest[key_id] = sequence
        else:
            self._seen[key_id] |= 1 << (highest - sequence)
        if len(self._highest) > 64:  # keys long retired: forget their windows
            for old in sorted(self._highest)[:-32]:
                del self._highest[old], self._seen[old]
