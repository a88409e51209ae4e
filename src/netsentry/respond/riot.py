"""The RIoT control-plane connector: run-time parameters in, anomaly events out.

``GET {base_uri}{uri}?expand`` returns ``keys.net_anomaly.tolerance`` and
``.frequency`` (the seed's run-time knobs); ``PUT {base_uri}{events_uri}`` notifies
one anomaly. Every request carries a fresh ``oasis`` authorization
(:mod:`netsentry.respond.riot_auth`).

Decisions, where the reference connector leaves room:

* the authority of ``GET {uri}?expand`` hashes ``GET:{uri}`` **without** ``?expand``,
  exactly as the reference does (it hashes ``self._uri``); the authority always hashes
  the resource path alone, never the base URI or a query string;
* parameters are checked, not trusted: numbers only (no strings, no booleans),
  ``frequency`` a whole number of hours, both within
  :data:`~netsentry.config.TOLERANCE_RANGE` / :data:`~netsentry.config.FREQUENCY_RANGE`;
  every refusal is a :class:`RiotError` naming the key and the request;
* ``Level`` is ``critical`` when the score is at least :data:`CRITICAL_FACTOR` times
  the anomaly's threshold (or infinite: a constant baseline broken), else ``warning``;
  new entities have no score and are ``warning``;
* ``Message`` is :func:`~netsentry.service.check.describe`'s line made header-safe:
  non-ASCII and control characters escaped (``\\xb1``), at most
  :data:`MESSAGE_MAX_CHARS` characters;
* failures are retryable for connection errors, timeouts, 5xx, 408, 425 and 429,
  and permanent until fixed (configuration, credentials, payload) otherwise.

HA1 comes from ``NETSENTRY_RIOT_HA1`` only and is never logged, nor is any header.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import httpx
import numpy as np
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from netsentry.config import FREQUENCY_RANGE, TOLERANCE_RANGE
from netsentry.keys import format_key
from netsentry.model import Anomaly
from netsentry.respond.riot_auth import authorization_header

#: Outbox destination name of the RIoT events resource.
DESTINATION = "riot"
LEVELS = ("warning", "critical")
#: ``critical`` from this many thresholds up (|z| >= 2 x tolerance for the z-score).
CRITICAL_FACTOR = 2.0
MESSAGE_MAX_CHARS = 400
RETRYABLE_STATUSES = frozenset({408, 425, 429})

_PATH = re.compile(r"/[^\s?#]*")
_BASE = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,64}")
_USERNAME = re.compile(r'[^"\\\x00-\x1f\x7f]+')
_HA1 = re.compile(r"[0-9A-Fa-f]{32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RiotSettings(BaseSettings):
    """Where RIoT is and who we are there (``NETSENTRY_RIOT_*``); disabled without a base URI."""

    model_config = SettingsConfigDict(env_prefix="NETSENTRY_RIOT_", env_file=".env", extra="ignore")

    base_uri: str | None = None
    uri: str = "/global"
    events_uri: str = "/events"
    username: str = ""
    ha1: SecretStr | None = None
    service: str = "netsentry"
    timeout_s: float = Field(10.0, gt=0, le=300)

    @field_validator("base_uri")
    @classmethod
    def _base(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not _BASE.fullmatch(value):
            raise ValueError("base_uri must be http(s)://host[:port][/path], without query")
        return value.rstrip("/")

    @field_validator("uri", "events_uri")
    @classmethod
    def _path(cls, value: str) -> str:
        if not _PATH.fullmatch(value):
            raise ValueError("must be a path starting with '/', without query or spaces")
        return value

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        if not _TOKEN.fullmatch(value):
            raise ValueError("service must be 1-64 of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("ha1")
    @classmethod
    def _ha1(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        if not _HA1.fullmatch(value.get_secret_value()):
            raise ValueError("NETSENTRY_RIOT_HA1 must be 32 hex digits")
        return SecretStr(value.get_secret_value().upper())

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.base_uri is not None:
            if not _USERNAME.fullmatch(self.username):
                raise ValueError(
                    "NETSENTRY_RIOT_USERNAME is required (no quotes, backslashes or "
                    "control characters) when NETSENTRY_RIOT_BASE_URI is set"
                )
            if self.ha1 is None:
                raise ValueError(
                    "NETSENTRY_RIOT_HA1 is required when NETSENTRY_RIOT_BASE_URI is set"
                )
        return self

    @property
    def enabled(self) -> bool:
        return self.base_uri is not None


class RiotError(Exception):
    """A RIoT request failed.

    Attributes
    ----------
    status
        The HTTP status, or ``None`` when there was no response (connection, timeout).
    message
        What failed and where; never a header or a secret.
    retryable
        ``True`` when trying again later may succeed as it is (server down or busy),
        ``False`` when someone must fix something first.
    """

    def __init__(self, status: int | None, message: str, retryable: bool | None = None) -> None:
        super().__init__(f"RIoT {status if status is not None else 'unreachable'}: {message}")
        self.status = status
        self.message = message
        self.retryable = is_retryable(status) if retryable is None else retryable


def is_retryable(status: int | None) -> bool:
    """Whether a failure with this status (``None``: no response) may pass by itself."""
    return status is None or status >= 500 or status in RETRYABLE_STATUSES


def header_safe(text: str, limit: int = MESSAGE_MAX_CHARS) -> str:
    r"""``text`` as one printable-ASCII header value of at most ``limit`` characters.

    >>> header_safe("a ± b\r\nX-Evil: 1")
    'a \\xb1 b\\x0d\\x0aX-Evil: 1'
    """
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def level_for(anomaly: Anomaly) -> str:
    """``critical`` at :data:`CRITICAL_FACTOR` thresholds or more, else ``warning``."""
    score, threshold = anomaly.score, anomaly.threshold
    if math.isnan(score):
        return "warning"
    if math.isinf(score):
        return "critical"
    if math.isfinite(threshold) and threshold > 0 and score >= CRITICAL_FACTOR * threshold:
        return "critical"
    return "warning"


def _json_safe(value: Any) -> Any:
    """JSON-ready copy: numpy scalars as Python, NaN and infinities as ``None``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def event_payload(anomaly: Anomaly) -> dict[str, Any]:
    """The JSON body of one anomaly event (also what the outbox keeps)."""
    # imported here: the check imports the outbox, which imports this module
    from netsentry.service.check import describe

    seconds, ns = divmod(anomaly.time, 1_000_000_000)
    when = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=ns // 1000)
    body: dict[str, Any] = _json_safe(
        {
            "id": anomaly.id,
            "time": anomaly.time,
            "time_iso": when.isoformat().replace("+00:00", "Z"),
            "measurement": anomaly.measurement,
            "key": format_key(anomaly.key),
            "tags": anomaly.tags,
            "value": anomaly.value,
            "score": anomaly.score,
            "threshold": anomaly.threshold,
            "detector": anomaly.detector,
            "explanation": anomaly.explanation,
            "level": level_for(anomaly),
            "description": describe(anomaly),
        }
    )
    return body


class RiotClient:
    """Talks to one RIoT server.

    Parameters
    ----------
    settings
        A configured :class:`RiotSettings` (``base_uri``, ``username``, ``ha1``).
    http
        The HTTP client to use (the caller closes it); a new one when ``None``.
    clock
        Unix time for the nonces (injectable for tests).
    """

    def __init__(
        self,
        settings: RiotSettings,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if settings.base_uri is None or settings.ha1 is None:
            raise ValueError(
                "RIoT is not configured: set NETSENTRY_RIOT_BASE_URI, _USERNAME and _HA1"
            )
        self.settings = settings
        self._base = settings.base_uri
        self._ha1 = settings.ha1
        self._own = http is None
        self._http = httpx.Client(timeout=settings.timeout_s) if http is None else http
        self._clock = clock

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _request(
        self, method: str, uri: str, query: str, headers: dict[str, str], body: bytes | None
    ) -> httpx.Response:
        """One authorized request; transport failures become retryable :class:`RiotError`."""
        auth = authorization_header(
            self.settings.username, self._ha1.get_secret_value(), method, uri, self._clock()
        )
        url = f"{self._base}{uri}" + (f"?{query}" if query else "")
        where = f"{method} {uri}" + (f"?{query}" if query else "")
        try:
            return self._http.request(
                method,
                url,
                headers={"Authorization": auth, **headers},
                content=body,
                timeout=self.settings.timeout_s,
            )
        except httpx.TimeoutException as exc:
            message = f"{where}: no answer within {self.settings.timeout_s:g} s"
            raise RiotError(None, message, retryable=True) from exc
        except httpx.TransportError as exc:
            message = f"{where}: {type(exc).__name__}: {exc}"
            raise RiotError(None, message, retryable=True) from exc

    def get_params(self) -> tuple[float, int]:
        """``(tolerance, frequency in hours)`` from ``GET {uri}?expand``, validated.

        Raises
        ------
        RiotError
            On 401, 404, any other non-200, a transport failure, malformed JSON, a
            missing key, a non-number, a fractional frequency or an out-of-range value.
        """
        uri = self.settings.uri
        where = f"GET {uri}?expand"
        response = self._request(
            "GET",
            uri,
            "expand",
            {"Content-Type": "application/json", "Cache-Control": "no-cache"},
            None,
        )
        status = response.status_code
        if status == 401:
            hint = "check NETSENTRY_RIOT_USERNAME and NETSENTRY_RIOT_HA1"
            raise RiotError(401, f"{where}: unauthorized ({hint})")
        if status == 404:
            raise RiotError(404, f"{where}: not found (check NETSENTRY_RIOT_URI)")
        if status != 200:
            raise RiotError(status, f"{where}: unexpected {status} {response.reason_phrase}")
        try:
            data = json.loads(response.content)
        except ValueError:
            raise RiotError(200, f"{where}: malformed JSON", retryable=False) from None
        net = _dig(data, ("keys", "net_anomaly"), where)
        tolerance = _number(net, "tolerance", TOLERANCE_RANGE, where)
        frequency = _number(net, "frequency", FREQUENCY_RANGE, where)
        if not frequency.is_integer():
            raise RiotError(
                200,
                f"{where}: keys.net_anomaly.frequency = {frequency:g} is not a whole "
                "number of hours",
                retryable=False,
            )
        return tolerance, int(frequency)

    def report(self, event: Anomaly) -> None:
        """Notify RIoT of one anomaly (see :meth:`send`)."""
        self.send(event_payload(event))

    def send(self, payload: Mapping[str, Any]) -> None:
        """``PUT {events_uri}`` one :func:`event_payload` with ``Service``, ``Level``, ``Message``.

        Raises
        ------
        RiotError
            On a transport failure or any non-2xx answer, with ``retryable`` set.
        """
        uri = self.settings.events_uri
        level = payload.get("level")
        headers = {
            "Content-Type": "application/json",
            "Service": self.settings.service,
            "Level": level if level in LEVELS else "warning",
            "Message": header_safe(str(payload.get("description", ""))),
        }
        body = json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()
        response = self._request("PUT", uri, "", headers, body)
        status = response.status_code
        if not 200 <= status < 300:
            raise RiotError(status, f"PUT {uri}: {status} {response.reason_phrase}")


def _dig(data: Any, path: tuple[str, ...], where: str) -> dict[str, Any]:
    """``data[path[0]][path[1]]…`` as a JSON object, or a :class:`RiotError` naming the gap."""
    for depth, name in enumerate(path):
        if not isinstance(data, dict) or name not in data:
            dotted = ".".join(path[: depth + 1])
            raise RiotError(200, f"{where}: missing {dotted}", retryable=False)
        data = data[name]
    if not isinstance(data, dict):
        raise RiotError(200, f"{where}: {'.'.join(path)} is not an object", retryable=False)
    return data


def _number(net: dict[str, Any], name: str, bounds: tuple[float, float], where: str) -> float:
    """One finite number in ``bounds`` (inclusive) from ``keys.net_anomaly``."""
    key = f"keys.net_anomaly.{name}"
    if name not in net:
        raise RiotError(200, f"{where}: missing {key}", retryable=False)
    value = net[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = type(value).__name__ if value is not None else "null"
        raise RiotError(200, f"{where}: {key} must be a number, got {kind}", retryable=False)
    low, high = bounds
    if not low <= value <= high:  # also refuses NaN and infinities (no float() overflow)
        raise RiotError(
            200, f"{where}: {key} = {value!r} is outside [{low:g}, {high:g}]", retryable=False
        )
    return float(value)
