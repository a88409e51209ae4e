"""The cryptography of key rotation: wrapping a key for one holder, proving possession.

Parties and long-term keys: netsentry (the issuer) holds a static X25519 key pair; every
device and receiver holds its own and registers the public half with netsentry out of
band (table ``devices``); each holder is provisioned with the issuer's public key.

Wrapping (one offer, :func:`seal_offer`): the issuer draws a fresh ephemeral X25519 key
pair and a 16-byte nonce and derives ::

    wrap key = HKDF-SHA256(ikm = DH(ephemeral, holder) || DH(issuer, holder),
                           salt = nonce, info = "netsentry/rotation/v1 wrap" || header || holder)

then encrypts the 32-byte session key with ChaCha20-Poly1305 under the wrap key (AEAD
nonce: the first 12 bytes of the offer nonce; the wrap key is unique per offer), with
the serialized header as additional data. Only the holder of the registered private key
can derive the wrap key, and only the holder of the issuer's static private key can
make an offer that opens (the second DH authenticates the issuer: a broker, or anyone
else, without it cannot sit in the middle). The header, authenticated as AEAD data and
hashed into the key derivation, binds the key to the protocol version, role, recipient,
device, key id, time, nonce and both public keys. The ephemeral DH gives forward
secrecy against a later leak of the issuer's static key.

Proof of possession (one ack, :func:`make_ack` / :func:`verify_ack`)::

    proof = HMAC-SHA256(HKDF-SHA256(session key, salt = offer nonce,
                                    info = "netsentry/rotation/v1 ack"),
                        ack header || correlation data)

The ack header names version, role, recipient, device, key id and the offer's nonce;
the correlation data is the MQTT 5 property the issuer chose, so an ack can answer one
rotation only. Verification is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import time
from dataclasses import replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from netsentry.rotation.wire import NONCE_BYTES, PUBLIC_BYTES, Ack, Offer, Role

KEY_BYTES = 32
_WRAP_INFO = b"netsentry/rotation/v1 wrap"
_ACK_INFO = b"netsentry/rotation/v1 ack"


class AuthenticationError(ValueError):
    """An offer or an ack that does not authenticate (forged, tampered or misaddressed)."""


class StaticKey:
    """A long-term X25519 key pair (the issuer's or a holder's); its repr hides the key.

    >>> a, b = StaticKey.generate(), StaticKey.generate()
    >>> a.exchange(b.public) == b.exchange(a.public)
    True
    >>> StaticKey.from_text(a.private_bytes().hex()).public == a.public
    True
    """

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public: bytes = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> StaticKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> StaticKey:
        if len(raw) != KEY_BYTES:
            raise ValueError(f"an X25519 private key is {KEY_BYTES} bytes, got {len(raw)}")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def from_text(cls, text: str) -> StaticKey:
        """Read a private key written as 64 hex digits or base64 (e.g. a secret file)."""
        text = text.strip()
        try:
            if re.fullmatch(r"[0-9a-fA-F]{64}", text):
                raw = bytes.fromhex(text)
            else:
                raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("an X25519 private key must be 64 hex digits or base64") from None
        return cls.from_bytes(raw)

    def private_bytes(self) -> bytes:
        """The raw private key, to write to a secret file at provisioning time."""
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def exchange(self, peer_public: bytes) -> bytes:
        """X25519 with ``peer_public``; :class:`AuthenticationError` for a bad point."""
        if len(peer_public) != PUBLIC_BYTES:
            raise AuthenticationError(f"public key is {len(peer_public)} bytes, expected 32")
        try:
            return self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:  # a low-order point gives an all-zero shared secret
            raise AuthenticationError("public key is a low-order point") from None

    @property
    def fingerprint(self) -> str:
        return public_fingerprint(self.public)

    def __repr__(self) -> str:
        return f"StaticKey(public={self.fingerprint})"


def public_fingerprint(public: bytes) -> str:
    """16 hex digits naming a public key in logs."""
    return hashlib.sha256(public).hexdigest()[:16]


def _wrap_key(ikm: bytes, offer: Offer, holder_public: bytes) -> bytes:
    info = _WRAP_INFO + offer.header() + holder_public
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=offer.nonce, info=info).derive(ikm)


def seal_offer(
    issuer: StaticKey,
    holder_public: bytes,
    *,
    role: Role,
    recipient_id: str,
    device_id: str,
    key_id: int,
    key: bytes,
    issued_ns: int | None = None,
) -> Offer:
    """Wrap ``key`` (32 bytes) for the holder whose registered public key is given."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a session key is {KEY_BYTES} bytes, got {len(key)}")
    if not 0 <= key_id < 1 << 64:
        raise ValueError(f"key id {key_id} is outside 0 .. 2**64 - 1")
    ephemeral = X25519PrivateKey.generate()
    blank = Offer(
        role=role,
        recipient_id=recipient_id,
        device_id=device_id,
        key_id=key_id,
        issued_ns=time.time_ns() if issued_ns is None else issued_ns,
        nonce=os.urandom(NONCE_BYTES),
        issuer_public=issuer.public,
        ephemeral_public=StaticKey(ephemeral).public,
        wrapped=b"",
    )
    ikm = StaticKey(ephemeral).exchange(holder_public) + issuer.exchange(holder_public)
    wrap = ChaCha20Poly1305(_wrap_key(ikm, blank, holder_public))
    wrapped = wrap.encrypt(blank.nonce[:12], key, blank.header())
    return replace(blank, wrapped=wrapped)


def open_offer(offer: Offer, holder: StaticKey, issuer_public: bytes) -> bytes:
    """The session key of ``offer``; :class:`AuthenticationError` unless it is genuine.

    ``issuer_public`` is the issuer's key the holder was provisioned with: an offer naming
    another issuer key, or made without the issuer's private key, or changed in any
    byte, does not open.
    """
    if not hmac.compare_digest(offer.issuer_public, issuer_public):
        raise AuthenticationError(
            f"offer names issuer key {public_fingerprint(offer.issuer_public)}, "
            f"not the provisioned {public_fingerprint(issuer_public)}"
        )
    ikm = holder.exchange(offer.ephemeral_public) + holder.exchange(offer.issuer_public)
    wrap = ChaCha20Poly1305(_wrap_key(ikm, offer, holder.public))
    try:
        return wrap.decrypt(offer.nonce[:12], offer.wrapped, offer.header())
    except InvalidTag:
        raise AuthenticationError(
            "offer does not authenticate: not made by the issuer's key, or changed in transit"
        ) from None


def _proof(key: bytes, ack_header: bytes, nonce: bytes, correlation: bytes) -> bytes:
    proof_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=nonce, info=_ACK_INFO).derive(key)
    return hmac.new(proof_key, ack_header + correlation, hashlib.sha256).digest()


def make_ack(offer: Offer, key: bytes, correlation: bytes) -> Ack:
    """The acknowledgement of ``offer`` by the holder of ``key``."""
    blank = Ack(
        role=offer.role,
        recipient_id=offer.recipient_id,
        device_id=offer.device_id,
        key_id=offer.key_id,
        offer_nonce=offer.nonce,
        proof=b"",
    )
    return replace(blank, proof=_proof(key, blank.header(), offer.nonce, correlation))


def verify_ack(ack: Ack, key: bytes, correlation: bytes) -> None:
    """:class:`AuthenticationError` unless ``ack`` proves possession of ``key``."""
    expected = _proof(key, ack.header(), ack.offer_nonce, correlation)
    if not hmac.compare_digest(expected, ack.proof):
        raise AuthenticationError(
            f"ack from {ack.recipient_id!r} for key id {ack.key_id} of {ack.device_id!r} "
            "does not prove possession of the key"
        )
