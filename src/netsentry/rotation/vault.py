"""Secrets at rest, all derived from one master secret (from configuration, never code).

A :class:`Vault` derives one sub-key per *purpose* by HKDF-SHA256 (``info`` names the
purpose), so a key sealed for ``"device-key"`` can never be opened, nor a MAC verified,
under another purpose. Sealing is AES-256-GCM with a random 96-bit nonce prepended:
``sealed = nonce (12) || ciphertext || tag (16)``. The additional data ``aad`` binds a
sealed value to where it belongs (e.g. device id and key id), so a sealed blob copied to
another row does not open.

>>> vault = Vault(bytes(range(32)))
>>> sealed = vault.seal("demo", b"secret", aad=b"row 1")
>>> vault.open("demo", sealed, aad=b"row 1")
b'secret'
>>> vault.open("demo", sealed, aad=b"row 2")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
netsentry.rotation.vault.IntegrityError: sealed 'demo' value does not open: ...
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_MASTER_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_INFO_PREFIX = b"netsentry/vault/v1 purpose="


class IntegrityError(ValueError):
    """A sealed value or a MAC does not verify: wrong secret, wrong context or tampering."""


class Vault:
    """Seal, open and MAC values under sub-keys of one master secret.

    Parameters
    ----------
    master : bytes
        At least 32 bytes of secret (e.g. ``secrets.token_bytes(32)``, kept in the
        service's configuration).
    """

    def __init__(self, master: bytes) -> None:
        if not isinstance(master, bytes | bytearray) or len(master) < MIN_MASTER_BYTES:
            raise ValueError(f"the vault master secret must be at least {MIN_MASTER_BYTES} bytes")
        self._master = bytes(master)
        self._subkeys: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Vault(fingerprint={self.fingerprint!r})"

    @property
    def fingerprint(self) -> str:
        """16 hex digits that identify the master secret without revealing it."""
        return self._subkey("fingerprint", "fingerprint")[:8].hex()

    def _subkey(self, kind: str, purpose: str) -> bytes:
        if not purpose:
            raise ValueError("a vault purpose must not be empty")
        with self._lock:
            key = self._subkeys.get((kind, purpose))
            if key is None:
                info = _INFO_PREFIX + purpose.encode() + b" kind=" + kind.encode()
                key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
                    self._master
                )
                self._subkeys[(kind, purpose)] = key
            return key

    def seal(self, purpose: str, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext``, bound to ``purpose`` and ``aad``."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self._subkey("seal", purpose)).encrypt(nonce, plaintext, aad)

    def open(self, purpose: str, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext of ``sealed``; :class:`IntegrityError` if it does not verify."""
        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            raise IntegrityError(
                f"sealed {purpose!r} value is {len(sealed)} bytes, shorter than "
                f"nonce and tag ({NONCE_BYTES + TAG_BYTES})"
            )
        aead = AESGCM(self._subkey("seal", purpose))
        try:
            return aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except InvalidTag:
            raise IntegrityError(
                f"sealed {purpose!r} value does not open: wrong master secret, wrong context "
                "or tampered data"
            ) from None

    def mac(self, purpose: str, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` under the ``purpose`` sub-key (32 bytes)."""
        return hmac.new(self._subkey("mac", purpose), data, hashlib.sha256).digest()

    def verify(self, purpose: str, data: bytes, mac: bytes) -> None:
        """Check ``mac`` in constant time; :class:`IntegrityError` if it does not match."""
        if not hmac.compare_digest(self.mac(purpose, data), mac):
            raise IntegrityError(f"{purpose!r} MAC does not match: data changed or wrong secret")
