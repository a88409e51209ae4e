"""Pseudonymization at ingest with keys that rotate by epoch.

Every record's addresses are replaced, before anything is stored, by their Crypto-PAn
image under the key of the record's *epoch*: ``floor(time / period)`` for a period of an
hour or a day, counted from the Unix epoch (UTC). The epoch id is stored with the data.
Each epoch's 32-byte Crypto-PAn key is derived from one master secret with HKDF-SHA256
(RFC 5869; no salt, ``info = b"netsentry/crypto-pan/v1 period=<period> epoch=<id>"``),
so only the master secret needs keeping; it comes from the environment
(``NETSENTRY_PSEUDONYM_KEY``, hex or base64, at least 32 random bytes), never from code.

What rotation protects
    * Linkability across epochs: the same address maps to unrelated pseudonyms in two
      epochs, so the long-term history of a host cannot be joined by its pseudonym.
    * Leaks are bounded: an epoch key that leaks (it sits in the memory of an ingest
      worker) reveals that epoch's mapping only; HKDF is one-way, so neither other epoch
      keys nor the master secret follow from it.
    * Statistical (frequency, fingerprinting) attacks get only one epoch of data per
      mapping to work with.

What it does not protect
    * Within an epoch the mapping is deterministic and prefix-preserving: subnet
      structure, which hosts share a /24, and traffic patterns (volumes, timing, ports,
      fan-out) stay visible, and can re-identify well-known servers by their behaviour.
    * Injection: an attacker who can make the sensor see traffic from addresses of their
      choice learns the pseudonyms of those addresses and, through prefix preservation,
      of the prefixes they share with every other address in that epoch (Crypto-PAn's
      known weakness; rotation only limits it to one epoch).
    * The master secret: whoever holds it can reverse every epoch
      (:meth:`Pseudonymizer.depseudonymize`); it must live apart from the data.
    * Values that are not addresses (host names, URLs) pass through unchanged; they are
      counted so that a caller can see them.

>>> master = bytes.fromhex("8f3a1c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a")
>>> p = Pseudonymizer(master, period="hour")
>>> out = p.pseudonymize(pl.Series(["10.0.0.1", "demo.riotlocal"]), pl.Series([0, 0]))
>>> out.passed_through, p.depseudonymize(out.addresses, out.epochs).addresses.to_list()
(1, ['10.0.0.1', 'demo.riotlocal'])
"""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from netsentry.privacy.addresses import ParsedAddresses
from netsentry.privacy.cryptopan import KEY_SIZE, CryptoPAn

Period = Literal["hour", "day"]
PERIOD_NS: dict[str, int] = {"hour": 3_600 * 10**9, "day": 86_400 * 10**9}
ENV_VAR = "NETSENTRY_PSEUDONYM_KEY"
MIN_MASTER_BYTES = 32
_GENERATE = "generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
_CACHED_EPOCHS = 64
_DEDUPE_BELOW = 0.5  # distinct share of addresses under which a batch is deduplicated


class WeakKeyError(ValueError):
    """The master secret is missing, too short or not random."""


class WrongKeyError(ValueError):
    """The data was pseudonymized under another master secret."""


def _period(period: str) -> int:
    if period not in PERIOD_NS:
        raise ValueError(f"period must be one of {sorted(PERIOD_NS)}, got {period!r}")
    return PERIOD_NS[period]


def epoch_of(time_ns: int, period: Period) -> int:
    """The epoch id of one timestamp (ns since the Unix epoch, UTC)."""
    return time_ns // _period(period)


def epoch_ids(times_ns: pl.Series, period: Period) -> pl.Series:
    """Epoch ids (Int64, named ``epoch``) of a column of ns timestamps or datetimes."""
    times = times_ns.dt.epoch("ns") if times_ns.dtype == pl.Datetime else times_ns
    if times.null_count():
        raise ValueError("every record needs a time to pick its epoch key; got nulls")
    return (times.cast(pl.Int64) // _period(period)).alias("epoch")


def check_master_secret(master: bytes) -> None:
    """Refuse a master secret that is short or visibly not random (never shows it)."""
    if len(master) < MIN_MASTER_BYTES:
        raise WeakKeyError(
            f"the pseudonymization master secret must be at least {MIN_MASTER_BYTES} bytes, "
            f"got {len(master)}; {_GENERATE}"
        )
    steps = {(b - a) % 256 for a, b in itertools.pairwise(master)}
    if len(set(master)) < 16 or len(steps) == 1:
        raise WeakKeyError(f"the pseudonymization master secret is not random; {_GENERATE}")
    if all(32 <= b < 127 for b in master):
        raise WeakKeyError(
            "the pseudonymization master secret decodes to printable text (a passphrase?), "
            f"not random bytes; {_GENERATE}"
        )


def parse_master_secret(text: str) -> bytes:
    """Decode a master secret written as hex (preferred when ambiguous) or base64."""
    text = text.strip()
    try:
        if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", text):
            master = bytes.fromhex(text)
        elif re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", text):
            master = base64.b64decode(text, validate=True)
        elif re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", text):
            master = base64.urlsafe_b64decode(text)
        else:
            raise ValueError
    except (binascii.Error, ValueError):
        raise WeakKeyError("the pseudonymization master secret is neither hex nor base64") from None
    check_master_secret(master)
    return master


def load_master_secret(environ: Mapping[str, str] | None = None, name: str = ENV_VAR) -> bytes:
    """Read and check the master secret from the environment variable ``name``."""
    value = (os.environ if environ is None else environ).get(name, "")
    if not value.strip():
        raise WeakKeyError(f"{name} is not set (hex or base64, >= 32 bytes); {_GENERATE}")
    return parse_master_secret(value)


def derive_epoch_key(master: bytes, period: Period, epoch: int) -> bytes:
    """The 32-byte Crypto-PAn key of one epoch: HKDF-SHA256 over the master secret."""
    _period(period)
    info = f"netsentry/crypto-pan/v1 period={period} epoch={epoch}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(master)


def key_fingerprint(master: bytes) -> str:
    """16 hex digits that identify a master secret without revealing it (HKDF, one-way)."""
    info = b"netsentry/pseudonym-key-fingerprint/v1"
    return HKDF(algorithm=hashes.SHA256(), length=8, salt=None, info=info).derive(master).hex()


@dataclass(frozen=True)
class Pseudonymized:
    """A transformed address column, the epoch of every row, and the rows left as they were.

    ``passed_through`` counts non-null values that are not IP addresses (host names,
    empty strings): they are returned unchanged.
    """

    addresses: pl.Series
    epochs: pl.Series
    passed_through: int


class Pseudonymizer:
    """Crypto-PAn pseudonyms under a key that rotates every ``period``.

    Parameters
    ----------
    master : bytes
        The master secret (>= 32 random bytes), e.g. from :func:`load_master_secret`.
    period : {"hour", "day"}
        How long one epoch key is used.
    """

    def __init__(self, master: bytes, period: Period = "day") -> None:
        check_master_secret(master)
        _period(period)
        self.period: Period = period
        self._master = bytes(master)
        self._pans: dict[int, CryptoPAn] = {}

    def __repr__(self) -> str:
        return f"Pseudonymizer(period={self.period!r}, fingerprint={self.fingerprint!r})"

    @property
    def fingerprint(self) -> str:
        """The master secret's fingerprint, to store beside the data (safe to show)."""
        return key_fingerprint(self._master)

    def cryptopan(self, epoch: int) -> CryptoPAn:
        """The Crypto-PAn permutation of ``epoch`` (a few recent ones are kept)."""
        pan = self._pans.get(epoch)
        if pan is None:
            if len(self._pans) >= _CACHED_EPOCHS:
                self._pans.pop(next(iter(self._pans)))
            pan = self._pans[epoch] = CryptoPAn(derive_epoch_key(self._master, self.period, epoch))
        return pan

    def pseudonymize(self, addresses: pl.Series, times_ns: pl.Series) -> Pseudonymized:
        """Replace every address by its pseudonym under the key of its row's epoch."""
        epochs = epoch_ids(times_ns, self.period)
        return self._transform(addresses, epochs, inverse=False)

    def depseudonymize(
        self, addresses: pl.Series, epochs: pl.Series, fingerprint: str | None = None
    ) -> Pseudonymized:
        """Recover the original addresses; ``fingerprint``, if given, must match the key's."""
        if fingerprint is not None and not hmac.compare_digest(
            fingerprint.encode(), self.fingerprint.encode()
        ):
            raise WrongKeyError("the data was pseudonymized under another master secret")
        if epochs.null_count():
            raise ValueError("every pseudonymized record needs its epoch id; got nulls")
        return self._transform(addresses, epochs.cast(pl.Int64).alias("epoch"), inverse=True)

    def _transform(self, addresses: pl.Series, epochs: pl.Series, inverse: bool) -> Pseudonymized:
        if len(addresses) != len(epochs):
            raise ValueError(f"{len(addresses)} addresses but {len(epochs)} times/epochs")
        frame = pl.DataFrame({"address": addresses.cast(pl.String), "epoch": epochs})
        # Real traffic repeats addresses: transform each distinct (address, epoch) once and
        # join back. When most values are distinct, the join costs more than it saves.
        distinct = frame.select(pl.col("address").approx_n_unique()).item()
        dedupe = int(distinct) < _DEDUPE_BELOW * len(frame)
        table = frame.unique() if dedupe else frame
        parsed = ParsedAddresses.parse(table["address"])
        epoch_of_row = table["epoch"].to_numpy()
        order = np.argsort(epoch_of_row, kind="stable")
        edges = [0, *(np.flatnonzero(np.diff(epoch_of_row[order])) + 1).tolist(), len(table)]
        for start, stop in itertools.pairwise(edges if len(table) else []):
            pan = self.cryptopan(int(epoch_of_row[order[start]]))
            pan.apply(parsed, inverse=inverse, rows=order[start:stop])
        table = table.with_columns(
            parsed.to_text(table["address"]).alias("pseudonym"),
            pl.Series("is_address", parsed.kind > 0),
        )
        if dedupe:
            on = ["address", "epoch"]
            table = frame.join(table, on=on, how="left", nulls_equal=True, maintain_order="left")
        passed = int((~table["is_address"] & table["address"].is_not_null()).sum())
        return Pseudonymized(table["pseudonym"].alias(addresses.name), epochs, passed)
