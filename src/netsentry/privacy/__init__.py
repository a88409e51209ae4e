"""Pseudonymization of IP addresses at ingest, before anything is stored.

:class:`CryptoPAn` is the keyed, prefix-preserving, reversible permutation (compatible
with the Crypto-PAn reference vectors, IPv4 and IPv6); :class:`Pseudonymizer` applies it
to polars columns under keys that rotate by epoch (hour or day), derived from one master
secret. :mod:`netsentry.privacy.epochs` documents what rotation does and does not protect.
"""

from netsentry.privacy.addresses import ParsedAddresses, canonical_address
from netsentry.privacy.cryptopan import CryptoPAn
from netsentry.privacy.epochs import (
    ENV_VAR,
    PERIOD_NS,
    Period,
    Pseudonymized,
    Pseudonymizer,
    WeakKeyError,
    WrongKeyError,
    check_master_secret,
    derive_epoch_key,
    epoch_ids,
    epoch_of,
    key_fingerprint,
    load_master_secret,
    parse_master_secret,
)

__all__ = [
    "ENV_VAR",
    "PERIOD_NS",
    "CryptoPAn",
    "ParsedAddresses",
    "Period",
    "Pseudonymized",
    "Pseudonymizer",
    "WeakKeyError",
    "WrongKeyError",
    "canonical_address",
    "check_master_secret",
    "derive_epoch_key",
    "epoch_ids",
    "epoch_of",
    "key_fingerprint",
    "load_master_secret",
    "parse_master_secret",
]
