"""Authentication for mutating routes: one token from configuration, compared in constant time.

Accepted forms, so that InfluxDB clients and Telegraf can push without changes:
``Authorization: Bearer <token>``, ``Authorization: Token <token>`` (InfluxDB 2.x),
HTTP Basic with the token as password (Telegraf's influxdb output ``password``) and
the InfluxDB 1.x query parameter ``p=<token>``. With no token configured, every
mutating route refuses: there is no built-in default.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from netsentry.api.deps import SettingsDep


def _presented(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    if scheme in ("bearer", "token"):
        return credentials.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return request.query_params.get("p")


def require_token(request: Request, settings: SettingsDep) -> None:
    if settings.api_token is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this route changes state and no API token is configured: "
            "set NETSENTRY_API_TOKEN (at least 16 characters)",
        )
    presented = _presented(request)
    expected = settings.api_token.get_secret_value()
    if presented is None or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong API token (send 'Authorization: Bearer <token>')",
            headers={"WWW-Authenticate": "Bearer"},
        )


Authorized = Annotated[None, Depends(require_token)]
