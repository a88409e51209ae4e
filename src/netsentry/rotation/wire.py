"""The messages of the key-rotation protocol, as bytes (big-endian, fixed layout).

Every message starts with the protocol version (one byte) and the message type (one
byte). A version this code does not speak is refused with
:class:`UnsupportedVersionError` *before* anything else is read, so a future version can
change everything after the first byte. Any other malformed input raises
:class:`ProtocolError` naming the message, the field and its byte offset; parsing never
raises anything else.

Version 1 layouts (``id`` = one length byte then ASCII ``[A-Za-z0-9_.-]{1,64}``)::

    offer  version=1 | type=1 | role | recipient id | device id | key id (u64)
           | issued (u64, unix ns) | nonce (16) | issuer public (32) | ephemeral public (32)
           || wrapped key (32 + 16 tag)
    ack    version=1 | type=2 | role | recipient id | device id | key id (u64)
           | offer nonce (16) || proof (32)
    error  version=1 | type=3 | code | supported versions (count, bytes) | text (u16 + UTF-8)

``|`` separates header fields and ``||`` the header from what the header authenticates:
the offer's header is the AEAD additional data of the wrapped key, the ack's header (with
the MQTT correlation data) is what the proof covers (:mod:`netsentry.rotation.handshake`).
``role`` is 1 for a device, 2 for a receiver; for a device the recipient is the device.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (VERSION,)
NONCE_BYTES = 16
PUBLIC_BYTES = 32
WRAPPED_BYTES = 32 + 16
PROOF_BYTES = 32
MAX_TEXT_BYTES = 1024
DEVICE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

Role = Literal["device", "receiver"]
ROLES: dict[int, Role] = {1: "device", 2: "receiver"}
ROLE_CODES: dict[Role, int] = {role: code for code, role in ROLES.items()}


class MessageType(IntEnum):
    OFFER = 1
    ACK = 2
    ERROR = 3


class ErrorCode(IntEnum):
    """Why a holder refused an offer (sent back in an :class:`ErrorReply`)."""

    UNSUPPORTED_VERSION = 1
    MALFORMED = 2
    NOT_FOR_ME = 3
    UNAUTHENTICATED = 4
    STALE_KEY = 5
    REPLAYED = 6
    EXPIRED = 7


class ProtocolError(ValueError):
    """A message that cannot be parsed or must be refused; the text says why."""


class UnsupportedVersionError(ProtocolError):
    """A message in a protocol version this code does not speak."""

    def __init__(self, version: int, what: str = "message") -> None:
        supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        super().__init__(
            f"{what}: protocol version {version} is not supported (supported: {supported})"
        )
        self.version = version


def check_device_id(value: str, what: str = "device id") -> str:
    """``value`` if it is a valid device id, else :class:`ValueError` naming ``what``."""
    if not isinstance(value, str) or DEVICE_ID.fullmatch(value) is None:
        raise ValueError(f"{what} {value!r} does not match [A-Za-z0-9_.-]{{1,64}}")
    return value


@dataclass(frozen=True)
class Offer:
    """A new key for ``device_id``, wrapped for ``recipient_id`` (see handshake)."""

    role: Role
    recipient_id: str
    device_id: str
    key_id: int
    issued_ns: int
    nonce: bytes
    issuer_public: bytes
    ephemeral_public: bytes
    wrapped: bytes
    version: int = VERSION

    def header(self) -> bytes:
        """The bytes the wrapped key is bound to (AEAD additional data)."""
        return (
            _head(self.version, MessageType.OFFER, self.role, self.recipient_id, self.device_id)
            + struct.pack(">QQ", self.key_id, self.issued_ns)
            + self.nonce
            + self.issuer_public
            + self.ephemeral_public
        )

    def encode(self) -> bytes:
        return self.header() + self.wrapped


@dataclass(frozen=True)
class Ack:
    """Proof that ``recipient_id`` holds key ``key_id`` of ``device_id``."""

    role: Role
    recipient_id: str
    device_id: str
    key_id: int
    offer_nonce: bytes
    proof: bytes
    version: int = VERSION

    def header(self) -> bytes:
        """The bytes the proof covers (with the MQTT correlation data)."""
        return (
            _head(self.version, MessageType.ACK, self.role, self.recipient_id, self.device_id)
            + struct.pack(">Q", self.key_id)
            + self.offer_nonce
        )

    def encode(self) -> bytes:
        return self.header() + self.proof


@dataclass(frozen=True)
class ErrorReply:
    """A refusal, sent to the offer's response topic (not authenticated: advisory)."""

    code: ErrorCode
    text: str
    supported: tuple[int, ...] = SUPPORTED_VERSIONS
    version: int = VERSION

    def encode(self) -> bytes:
        text = self.text.encode()[:MAX_TEXT_BYTES].decode(errors="ignore").encode()
        return (
            bytes([self.version, MessageType.ERROR, self.code, len(self.supported)])
            + bytes(self.supported)
            + struct.pack(">H", len(text))
            + text
        )


Message = Offer | Ack | ErrorReply


def _head(version: int, kind: MessageType, role: Role, recipient: str, device: str) -> bytes:
    for what, value in (("recipient id", recipient), ("device id", device)):
        check_device_id(value, what)
    if role == "device" and recipient != device:
        raise ValueError(f"a device offer's recipient {recipient!r} must be the device {device!r}")
    return (
        bytes([version, kind, ROLE_CODES[role], len(recipient)])
        + recipient.encode()
        + bytes([len(device)])
        + device.encode()
    )


class _Reader:
    """Bytes read field by field; every shortfall is a ProtocolError naming the field."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.what, self.at = data, what, 0

    def fail(self, text: str) -> ProtocolError:
        return ProtocolError(f"{self.what}: {text}")

    def take(self, n: int, field: str) -> bytes:
        if self.at + n > len(self.data):
            raise self.fail(
                f"{field} at byte {self.at} needs {n} bytes, {len(self.data) - self.at} left"
            )
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def byte(self, field: str) -> int:
        return self.take(1, field)[0]

    def u64(self, field: str) -> int:
        value: int = struct.unpack(">Q", self.take(8, field))[0]
        return value

    def ident(self, field: str) -> str:
        at = self.at
        raw = self.take(self.byte(f"{field} length"), field)
        text = raw.decode("ascii", errors="replace")
        if DEVICE_ID.fullmatch(text) is None:
            raise self.fail(f"{field} at byte {at} is not [A-Za-z0-9_.-]{{1,64}}: {raw[:64]!r}")
        return text

    def role(self) -> Role:
        at, code = self.at, self.byte("role")
        if code not in ROLES:
            raise self.fail(f"role at byte {at} is {code}, expected 1 (device) or 2 (receiver)")
        return ROLES[code]

    def end(self) -> None:
        if self.at != len(self.data):
            raise self.fail(f"{len(self.data) - self.at} unexpected bytes after byte {self.at}")


def decode(data: bytes) -> Message:
    """Parse one message; :class:`ProtocolError` (or its subclass for versions) if bad."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"message: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ProtocolError("message: empty payload (expected a protocol version byte)")
    if data[0] not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(data[0])
    if len(data) < 2:
        raise ProtocolError("message: no message type after the version byte")
    kind = data[1]
    if kind == MessageType.OFFER:
        return _offer(_Reader(data, "offer"))
    if kind == MessageType.ACK:
        return _ack(_Reader(data, "ack"))
    if kind == MessageType.ERROR:
        return _error(_Reader(data, "error"))
    raise ProtocolError(f"message: unknown message type {kind} at byte 1 (expected 1, 2 or 3)")


def _ids(r: _Reader) -> tuple[Role, str, str]:
    r.take(2, "version and type")
    role = r.role()
    recipient = r.ident("recipient id")
    device = r.ident("device id")
    if role == "device" and recipient != device:
        raise r.fail(f"device message for {device!r} addressed to another device {recipient!r}")
    return role, recipient, device


def _offer(r: _Reader) -> Offer:
    role, recipient, device = _ids(r)
    key_id = r.u64("key id")
    issued_ns = r.u64("issued time")
    nonce = r.take(NONCE_BYTES, "nonce")
    issuer_public = r.take(PUBLIC_BYTES, "issuer public key")
    ephemeral_public = r.take(PUBLIC_BYTES, "ephemeral public key")
    wrapped = r.take(WRAPPED_BYTES, "wrapped key")
    r.end()
    return Offer(
        role, recipient, device, key_id, issued_ns, nonce, issuer_public, ephemeral_public, wrapped
    )


def _ack(r: _Reader) -> Ack:
    role, recipient, device = _ids(r)
    key_id = r.u64("key id")
    nonce = r.take(NONCE_BYTES, "offer nonce")
    proof = r.take(PROOF_BYTES, "proof")
    r.end()
    return Ack(role, recipient, device, key_id, nonce, proof)


def _error(r: _Reader) -> ErrorReply:
    r.take(2, "version and type")
    at, code = r.at, r.byte("error code")
    if code not in ErrorCode._value2member_map_:
        raise r.fail(f"unknown error code {code} at byte {at}")
    supported = tuple(r.take(r.byte("supported versions count"), "supported versions"))
    (length,) = struct.unpack(">H", r.take(2, "text length"))
    if length > MAX_TEXT_BYTES:
        raise r.fail(f"text of {length} bytes is longer than {MAX_TEXT_BYTES}")
    at = r.at
    try:
        text = r.take(length, "text").decode()
    except UnicodeDecodeError:
        raise r.fail(f"text at byte {at} is not UTF-8") from None
    r.end()
    return ErrorReply(ErrorCode(code), text, supported)
