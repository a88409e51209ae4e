"""IP addresses as integers, parsed and written back in bulk.

IPv4 in the top 32 bits, IPv6 as (high, low) 64-bit words; IPv4-mapped IPv6 addresses
(``::ffff:a.b.c.d``) are canonicalised to IPv4. Dotted quads are parsed in polars, IPv6
through ``inet_pton``; text comes back in RFC 5952 form, vectorized, identical to
:mod:`ipaddress` (zone ids such as ``%eth0`` are kept).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from numpy.typing import NDArray

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressLike = str | IPAddress
U64 = NDArray[np.uint64]

_DOTTED_QUAD = r"^(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})$"
_ALL64 = (1 << 64) - 1
_ALL32 = (1 << 32) - 1
_HEX = pl.Series([f"{i:x}" for i in range(1 << 16)], dtype=pl.String)


def canonical_address(address: AddressLike) -> IPAddress:
    """Parse ``address`` and turn an IPv4-mapped IPv6 address into its IPv4 address."""
    if isinstance(address, str):
        ip: IPAddress = ipaddress.ip_address(address)
    elif isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
        ip = address
    else:
        raise TypeError(f"expected an IP address or a string, got {type(address).__name__}")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass
class ParsedAddresses:
    """Addresses as integers, one row per input value.

    ``kind`` is 4, 6 or 0 (not an address); an IPv4 address is in ``hi``, an IPv6 one in
    ``hi`` (high 64 bits) and ``lo``; ``zones`` holds IPv6 zone ids by row.
    """

    kind: NDArray[np.int8]
    hi: U64
    lo: U64
    zones: dict[int, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, values: pl.Series | Sequence[AddressLike]) -> ParsedAddresses:
        """Parse strings (dotted quads in polars) or ``ipaddress`` objects."""
        n = len(values)
        parsed = cls(np.zeros(n, np.int8), np.zeros(n, np.uint64), np.zeros(n, np.uint64))
        if not isinstance(values, pl.Series) and not all(isinstance(v, str) for v in values):
            for i, value in enumerate(values):
                ip = canonical_address(value)
                parsed._put(i, ip.version, int(ip), getattr(ip, "scope_id", None))
            return parsed
        strings = pl.Series(values, dtype=pl.String)  # a no-op for a String series
        octets = strings.str.extract_groups(_DOTTED_QUAD).struct.unnest()
        quads = octets.cast(pl.UInt32).fill_null(256).to_numpy().astype(np.uint64).reshape(-1, 4)
        is_v4 = (quads <= 255).all(axis=1)
        parsed.kind[is_v4] = 4
        shifted = quads[is_v4] << np.array([24, 16, 8, 0], dtype=np.uint64)
        parsed.hi[is_v4] = np.bitwise_or.reduce(shifted, axis=1)
        colon = strings.str.contains(":", literal=True).fill_null(False).to_numpy() & ~is_v4
        parsed._put_ipv6(np.flatnonzero(colon), strings.gather(np.flatnonzero(colon)).to_list())
        return parsed

    def _put_ipv6(self, rows: NDArray[np.intp], texts: list[str]) -> None:
        """IPv6 text through inet_pton, in bulk; ipaddress for zone ids and the rest."""
        raw = [_pton6(text) for text in texts]
        good = np.array([len(r) == 16 for r in raw], dtype=bool)
        joined = b"".join(r or bytes(16) for r in raw)
        words = np.frombuffer(joined, dtype=">u8").reshape(-1, 2).astype(np.uint64)
        mapped = good & (words[:, 0] == 0) & (words[:, 1] >> np.uint64(32) == 0xFFFF)
        self.kind[rows[good]] = 6
        self.hi[rows[good]], self.lo[rows[good]] = words[good, 0], words[good, 1]
        self.kind[rows[mapped]] = 4  # IPv4-mapped: canonicalised to IPv4
        self.hi[rows[mapped]], self.lo[rows[mapped]] = words[mapped, 1] & np.uint64(_ALL32), 0
        for j in np.flatnonzero(~good).tolist():
            try:
                ip = canonical_address(texts[j])
            except ValueError:
                continue
            self._put(int(rows[j]), ip.version, int(ip), getattr(ip, "scope_id", None))

    def _put(self, i: int, version: int, value: int, zone: str | None) -> None:
        self.kind[i] = version
        self.hi[i], self.lo[i] = (value, 0) if version == 4 else divmod(value, 1 << 64)
        if zone:
            self.zones[i] = zone

    def to_objects(self) -> list[IPAddress]:
        """``ipaddress`` objects (every row must be an address)."""
        rows = zip(self.kind.tolist(), self.hi.tolist(), self.lo.tolist(), strict=True)
        return [
            ipaddress.IPv4Address(high)
            if kind == 4
            else ipv6_address(high << 64 | low, self.zones.get(i))
            for i, (kind, high, low) in enumerate(rows)
        ]

    def to_text(self, original: pl.Series) -> pl.Series:
        """Addresses as text (IPv6 compressed as RFC 5952); other rows from ``original``."""
        out = original.cast(pl.String).clone()  # scatter writes in place
        v4 = np.flatnonzero(self.kind == 4)
        if v4.size:
            octets = [(self.hi[v4] >> np.uint64(s)) & np.uint64(255) for s in (24, 16, 8, 0)]
            dotted = pl.select(pl.concat_str([pl.lit(pl.Series(o)) for o in octets], separator="."))
            out = out.scatter(v4, dotted.to_series())
        v6 = np.flatnonzero(self.kind == 6)
        if v6.size:
            texts = _ipv6_texts(self.hi[v6], self.lo[v6])
            for j, i in enumerate(v6.tolist()):  # zone ids are rare
                if i in self.zones:
                    texts[j] = f"{texts[j]}%{self.zones[i]}"
            out = out.scatter(v6, texts)
        return out


def _ipv6_texts(hi: U64, lo: U64) -> pl.Series:
    """RFC 5952 text of IPv6 addresses, as ``ipaddress`` writes it, vectorized.

    Hextets in lower-case hex; the leftmost longest run of two or more zero hextets
    becomes ``::`` (its first hextet turns into ``""``, ``":"`` or ``"::"`` by whether it
    touches an end, the rest into nulls that the join skips).
    """
    shifts = [np.uint64(s) for s in (48, 32, 16, 0)]
    hextets = np.stack([(w >> s) & np.uint64(0xFFFF) for w in (hi, lo) for s in shifts], 1)
    run = np.zeros(hi.size, dtype=np.int64)
    best_len, best_end = np.zeros_like(run), np.zeros_like(run)
    for j in range(8):
        run = np.where(hextets[:, j] == 0, run + 1, 0)
        longer = run > best_len
        best_len, best_end = np.where(longer, run, best_len), np.where(longer, j, best_end)
    start = np.where(best_len >= 2, best_end - best_len + 1, 8)
    stop = np.where(best_len >= 2, best_end + 1, 8)
    ends = (start == 0).astype(np.int64) + 2 * (stop == 8)
    frame = pl.DataFrame({f"h{j}": _HEX.gather(hextets[:, j].astype(np.int64)) for j in range(8)})
    frame = frame.with_columns(
        start=start, stop=stop, token=pl.Series(["", ":", ":", "::"]).gather(ends)
    )
    start_col, stop_col = pl.col("start"), pl.col("stop")
    parts = [
        pl.when(start_col == j)
        .then(pl.col("token"))
        .when((start_col < j) & (stop_col > j))
        .then(None)
        .otherwise(pl.col(f"h{j}"))
        for j in range(8)
    ]
    return frame.select(pl.concat_str(parts, separator=":", ignore_nulls=True)).to_series()


def _pton6(text: str) -> bytes:
    """The 16 bytes of an IPv6 address, or nothing (zone ids, not an address)."""
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return b""


def ipv6_address(value: int, zone: str | None) -> ipaddress.IPv6Address:
    """An IPv6 address from its integer, keeping a zone (scope) identifier if any."""
    address = ipaddress.IPv6Address(value)
    return ipaddress.IPv6Address(f"{address}%{zone}") if zone else address
