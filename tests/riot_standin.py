"""A stand-in RIoT server on a real loopback port, strict about the seed's authentication.

It checks every ``Authorization`` header twice: with ``verify`` (the code under test)
and with the seed's own formula, re-implemented here without sharing any code with
netsentry, so a mistake made on both sides of ``riot_auth`` still shows.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from netsentry.model import Anomaly
from netsentry.respond.riot import (
    RiotSettings,
)
from netsentry.respond.riot_auth import (
    NonceGuard,
    verify,
)
from servers import free_port

# -- the seed's formula, independently ----------------------------------------------

SEED_POOL = "ABCDEFGH0123456789"
HEX = "0123456789ABCDEF"
USER = "service"
# a test secret made at run time, as a real HA1 is: MD5(user:realm:password)
HA1 = hashlib.md5(b"service:riot-test:not-a-real-password").hexdigest().upper()
WRONG_HA1 = hashlib.md5(b"service:riot-test:wrong").hexdigest().upper()
# pinned vectors, computed with coreutils `md5sum` (not Python)
FAKE_HA1 = "0123456789ABCDEF0123456789ABCDEF"
FIXED_NONCE = "65A1B2C3ABCDEFGH0123456789ABCDEF"
VECTORS = [
    ("GET", "/global", "FECFD8AE882E450619EFE1A4C1EED747"),
    ("PUT", "/events", "28EBE7ED66EA5808274908E67057E352"),
]


def seed_authority(hash1: str, nonce: str, method: str, uri: str) -> str:
    """``create_auth`` of the seed, step by step."""
    auth2 = method + ":" + uri
    hash2 = hashlib.md5(auth2.encode()).hexdigest().upper()
    auth3 = hash1 + ":" + nonce + ":" + hash2
    return hashlib.md5(auth3.encode()).hexdigest().upper()


def seed_check(header: str, method: str, uri: str, users: dict[str, str]) -> str | None:
    """Why ``header`` is not what the seed would send for this request (None: it is)."""
    if not header.startswith("oasis "):
        return "scheme"
    parts = header[len("oasis ") :].split(", ")
    if [p.split("=", 1)[0] for p in parts] != ["username", "nonce", "authority"]:
        return "fields"
    values = {}
    for part in parts:
        name, _, quoted = part.partition("=")
        if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"' or '"' in quoted[1:-1]:
            return "quoting"
        values[name] = quoted[1:-1]
    nonce = values["nonce"]
    if len(nonce) != 32 or any(c not in HEX for c in nonce[:8]):
        return "nonce time"
    if any(c not in SEED_POOL for c in nonce[8:]):
        return "nonce pool"
    if values["username"] not in users:
        return "user"
    if values["authority"] != seed_authority(users[values["username"]], nonce, method, uri):
        return "authority"
    return None


# -- the stand-in RIoT server ---------------------------------------------------------

PARAMS = {"keys": {"net_anomaly": {"tolerance": 4, "frequency": 12}}}
FRESHNESS = ("stale nonce", "nonce from the future", "replayed nonce")


class StandIn:
    """A RIoT server: ``GET {uri}?expand`` and ``PUT {events_uri}``, strict about auth.

    ``mode`` (or the next entry of ``script``) makes it answer ``"ok"``, any status
    code, ``"drop"`` (close without an answer) or ``"hang"`` (no answer at all).
    """

    def __init__(self, users: dict[str, str], uri: str = "/global", events_uri: str = "/events"):
        self.users, self.uri, self.events_uri = dict(users), uri, events_uri
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.clock = time.time
        self.guard = NonceGuard(clock=lambda: self.clock())
        self.reset()
        self.httpd: ThreadingHTTPServer | None = None
        self.release = threading.Event()

    def reset(self) -> None:
        self.params: Any = PARAMS
        self.raw_params: bytes | None = None
        self.mode: Any = "ok"
        self.script: list[Any] = []
        self.requests: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.disagreements: list[str] = []

    def start(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.stand = self  # type: ignore[attr-defined]
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        ).start()

    def stop(self) -> None:
        """Stop listening: connections are refused until :meth:`start`."""
        self.release.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        self.release = threading.Event()

    def authenticate(self, header: str, method: str, path: str) -> str | None:
        """Both checks; the reason to refuse, or None."""
        try:
            verify(header, method, path, self.users, self.guard)
            ours = None
        except ValueError as exc:
            ours = str(exc)
        theirs = seed_check(header, method, path, self.users)
        if (ours is None) != (theirs is None) and ours not in FRESHNESS:
            self.disagreements.append(f"verify: {ours}, seed: {theirs}")
        return ours or theirs


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read what they need from the stand-in itself."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def _answer(self, status: int, body: bytes = b"{}") -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, method: str) -> None:
        stand: StandIn = self.server.stand  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        url = urlsplit(self.path)
        headers = dict(self.headers.items())
        stand.requests.append({"method": method, "url": url, "headers": headers})
        mode = stand.script.pop(0) if stand.script else stand.mode
        if mode == "hang":
            stand.release.wait(10)
            return
        if mode == "drop":
            return
        if isinstance(mode, int):
            self._answer(mode, b'{"error": "as told"}')
            return
        reason = stand.authenticate(headers.get("Authorization", ""), method, url.path)
        if reason is not None:
            stand.refused.append(reason)
            self._answer(401, b'{"error": "unauthorized"}')
        elif method == "GET" and url.path == stand.uri and url.query == "expand":
            raw = stand.raw_params
            self._answer(200, raw if raw is not None else json.dumps(stand.params).encode())
        elif method == "PUT" and url.path == stand.events_uri:
            stand.events.append({"headers": headers, "body": json.loads(body)})
            self._answer(200)
        else:
            self._answer(404, b'{"error": "not found"}')


def riot_settings(stand: StandIn, **changes: Any) -> RiotSettings:
    values: dict[str, Any] = {
        "base_uri": stand.base,
        "uri": "/global",
        "events_uri": "/events",
        "username": USER,
        "ha1": SecretStr(HA1),
        "service": "netsentry-test",
        "timeout_s": 2.0,
        **changes,
    }
    return RiotSettings(_env_file=None, **values)


def make_anomaly(i: int, score: float = 4.0, **changes: Any) -> Anomaly:
    values: dict[str, Any] = {
        "time": 1_700_000_000_000_000_000 + i * 3_600_000_000_000,
        "measurement": "tdmp_bytes_total",
        "key": 0x0123456789ABCDEF + i,
        "value": 1000.0 + i,
        "score": score,
        "threshold": 3.0,
        "detector": "zscore",
        "explanation": {
            "value": 1000.0 + i,
            "series": "increase per 3600 s",
            "mean": 10.0,
            "std": 2.0,
            "n": 50,
            "z": score if score != float("inf") else None,
            "zero_variance": score == float("inf"),
            "tolerance": 3.0,
        },
        "tags": {"src": "10.0.0.1", "srcp": "443", "dst": "10.0.0.2", "dstp": "51000"},
        "id": f"00000000-0000-4000-8000-{i:012d}",
        **changes,
    }
    return Anomaly(**values)


def last_auth(stand: StandIn) -> str:
    return stand.requests[-1]["headers"]["Authorization"]
