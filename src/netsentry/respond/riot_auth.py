"""The RIoT ``oasis`` authorization scheme, both sides of it.

Every request to the RIoT control plane carries a fresh header::

    Authorization: oasis username="service", nonce="<nonce>", authority="<authority>"

as the reference connector builds it (seed, "RIoT Connector"), with

* ``nonce`` = the current Unix time as 8 upper-case hex digits followed by 24
  characters drawn from ``ABCDEFGH0123456789``; here with :mod:`secrets` (the reference
  used :mod:`random`, which is predictable) and zero-padded (``'{:08X}'``);
* ``authority`` = ``MD5(HA1 ":" nonce ":" MD5(method ":" uri))``, every MD5 written
  as upper-case hex, where ``uri`` is the resource path without the base URI and
  without a query string (the reference hashes ``self._uri`` even for ``?expand``).

``HA1`` is the shared secret (the reference hard-coded it); here it comes from the
configuration only and is never logged. MD5 is the protocol's choice, not ours.

The server side (:class:`NonceGuard`, :func:`verify`) refuses malformed, stale,
future and replayed nonces; netsentry's tests run it in a stand-in RIoT server.

>>> len(make_nonce(0x65000000)), make_nonce(0x65000000)[:8]
(32, '65000000')
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping

SCHEME = "oasis"
#: The reference's nonce alphabet.
POOL = "ABCDEFGH0123456789"
NONCE_RANDOM_CHARS = 24
#: How far ahead of the server's clock a nonce may be (clock skew), in seconds.
MAX_FUTURE_S = 30.0

_NONCE = re.compile(rf"[0-9A-F]{{8}}[{POOL}]{{{NONCE_RANDOM_CHARS}}}")
_HEADER = re.compile(
    rf'{SCHEME} username="(?P<username>[^"\\\x00-\x1f\x7f]+)", '
    r'nonce="(?P<nonce>[^"\\\x00-\x20\x7f]+)", '
    r'authority="(?P<authority>[0-9A-F]{32})"'
)
_USERNAME = re.compile(r'[^"\\\x00-\x1f\x7f]+')


def _md5_hex(text: str) -> str:
    """Upper-case hex MD5 of ``text`` (UTF-8)."""
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()  # noqa: S324 (protocol)


def make_nonce(now: float | None = None) -> str:
    """A fresh nonce: 8 hex digits of Unix time, then 24 CSPRNG characters of :data:`POOL`.

    Parameters
    ----------
    now
        Unix time in seconds; the current time when ``None``.
    """
    seconds = int(time.time() if now is None else now)
    if not 0 <= seconds <= 0xFFFFFFFF:
        raise ValueError(f"time {seconds} does not fit the nonce's 8 hex digits")
    tail = "".join(secrets.choice(POOL) for _ in range(NONCE_RANDOM_CHARS))
    return f"{seconds:08X}{tail}"


def nonce_time(nonce: str) -> int:
    """The Unix time (s) a well-formed nonce was made at; ``ValueError`` otherwise."""
    if not _NONCE.fullmatch(nonce):
        raise ValueError("malformed nonce")
    return int(nonce[:8], 16)


def authority(ha1: str, nonce: str, method: str, uri: str) -> str:
    """``MD5(ha1:nonce:MD5(method:uri))`` in upper-case hex, as the reference computes it.

    >>> len(authority("0" * 32, "65000000" + "A" * 24, "GET", "/global"))
    32
    """
    return _md5_hex(f"{ha1}:{nonce}:{_md5_hex(f'{method}:{uri}')}")


def authorization_header(
    username: str, ha1: str, method: str, uri: str, now: float | None = None
) -> str:
    """The ``Authorization`` value for one request (a new nonce every call).

    Parameters
    ----------
    username
        The RIoT user; must not contain quotes, backslashes or control characters.
    ha1
        The shared secret (upper-case hex, from the configuration).
    method, uri
        HTTP method and resource path (no base URI, no query string).
    now
        Unix time for the nonce; the current time when ``None``.
    """
    if not _USERNAME.fullmatch(username):
        raise ValueError("username is empty or has quotes, backslashes or control characters")
    nonce = make_nonce(now)
    return (
        f'{SCHEME} username="{username}", nonce="{nonce}", '
        f'authority="{authority(ha1, nonce, method, uri)}"'
    )


def parse_authorization(header: str) -> dict[str, str]:
    """The three fields of an ``oasis`` header, in exactly the reference's format.

    Raises
    ------
    ValueError
        On any other scheme, order, spacing, quoting, extra or missing field.
    """
    match = _HEADER.fullmatch(header)
    if match is None:
        raise ValueError("malformed oasis authorization header")
    return match.groupdict()


class NonceGuard:
    """Server-side freshness and replay check of nonces.

    A nonce is accepted once, if it is well formed and made within ``max_age_s`` before
    and :data:`MAX_FUTURE_S` after the server's clock. Seen nonces are remembered until
    they would be stale anyway; beyond ``max_entries`` the oldest are forgotten and
    every nonce not newer than them is refused from then on, so memory stays bounded
    without opening a replay window.

    Parameters
    ----------
    max_age_s
        Oldest acceptable nonce, in seconds.
    clock
        Unix time in seconds (injectable for tests).
    max_entries
        Most nonces remembered at once.
    """

    def __init__(
        self,
        max_age_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        max_entries: int = 100_000,
    ) -> None:
        if max_age_s <= 0 or max_entries < 1:
            raise ValueError("max_age_s and max_entries must be positive")
        self.max_age_s = max_age_s
        self.clock = clock
        self.max_entries = max_entries
        self._seen: set[str] = set()
        self._by_time: list[tuple[int, str]] = []
        self._floor = -1  # nonces made at or before this second are refused
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, nonce: str) -> None:
        """Accept ``nonce`` once; ``ValueError`` (with the reason) if it is not acceptable."""
        made = nonce_time(nonce)
        with self._lock:
            now = self.clock()
            if made < now - self.max_age_s or made <= self._floor:
                raise ValueError("stale nonce")
            if made > now + MAX_FUTURE_S:
                raise ValueError("nonce from the future")
            self._forget(now)
            if nonce in self._seen:
                raise ValueError("replayed nonce")
            self._seen.add(nonce)
            heapq.heappush(self._by_time, (made, nonce))
            while len(self._seen) > self.max_entries:
                oldest, gone = heapq.heappop(self._by_time)
                self._seen.discard(gone)
                self._floor = max(self._floor, oldest)

    def _forget(self, now: float) -> None:
        """Drop nonces that are stale by now: they would be refused as such anyway."""
        while self._by_time and self._by_time[0][0] < now - self.max_age_s:
            _, gone = heapq.heappop(self._by_time)
            self._seen.discard(gone)


def verify(header: str, method: str, uri: str, users: Mapping[str, str], guard: NonceGuard) -> str:
    """Check one request's ``Authorization`` header; return the username.

    Parameters
    ----------
    header
        The ``Authorization`` value as received.
    method, uri
        The request's method and path (no query string).
    users
        Username to HA1.
    guard
        Freshness and replay state of the server.

    Raises
    ------
    ValueError
        With the reason: malformed header, unknown user, wrong authority, or a
        malformed, stale, future or replayed nonce.
    """
    fields = parse_authorization(header)
    nonce_time(fields["nonce"])
    ha1 = users.get(fields["username"])
    # the same work for unknown users, so timing does not tell which users exist
    expected = authority(ha1 if ha1 is not None else "0" * 32, fields["nonce"], method, uri)
    if ha1 is None:
        raise ValueError("unknown user")
    if not hmac.compare_digest(expected, fields["authority"]):
        raise ValueError("wrong authority")
    guard.check(fields["nonce"])  # only authenticated nonces take memory
    return fields["username"]
