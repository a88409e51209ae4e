"""Key rotation over MQTT (issue 6): secrets at rest, key rings, the protocol.

- :mod:`~netsentry.rotation.vault`: secrets at rest under one master secret.
- :mod:`~netsentry.rotation.keyring`: the keys of one stream, with a grace period.
- :mod:`~netsentry.rotation.wire`: the versioned messages of the protocol.
- :mod:`~netsentry.rotation.handshake`: the cryptography (X25519, HKDF, AEAD).
- :mod:`~netsentry.rotation.issuer` / :mod:`~netsentry.rotation.agent`: netsentry's side
  and the device's / receiver's side over MQTT 5 (docs/rotation.md).

This package imports only the pure parts; the MQTT parts are imported from their
modules, so a UDP sender that needs a :class:`KeyRing` does not load paho.
"""

from netsentry.rotation.handshake import AuthenticationError, StaticKey
from netsentry.rotation.keyring import KeyRing, StaleKeyError, UnknownKeyError
from netsentry.rotation.vault import IntegrityError, Vault
from netsentry.rotation.wire import ProtocolError, UnsupportedVersionError

__all__ = [
    "AuthenticationError",
    "IntegrityError",
    "KeyRing",
    "ProtocolError",
    "StaleKeyError",
    "StaticKey",
    "UnknownKeyError",
    "UnsupportedVersionError",
    "Vault",
]
