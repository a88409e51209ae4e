"""InfluxDB-compatible write endpoints, so Telegraf and the official clients push straight in.

``POST /write`` behaves like InfluxDB 1.x: query parameters ``db`` (required) and
``precision`` (n, ns, u, ms, s, m, h; default ns), gzip bodies, 204 on success. A body
with malformed lines keeps its good lines and answers 400 with a JSON error naming the
first bad line and the reason (as InfluxDB's "partial write"), plus every bad line
(up to 100) and the counts. ``POST /api/v2/write`` takes InfluxDB 2.x's ``bucket`` and
``precision`` (s, ms, us, ns) for the 2.x clients.
"""

from __future__ import annotations

import zlib
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from netsentry.api.auth import Authorized
from netsentry.api.deps import SettingsDep, StoreDep
from netsentry.ingest.lineprotocol import parse_lines
from netsentry.store.sqlite import Store

router = APIRouter(tags=["ingest"])

V1_PRECISIONS = ("n", "ns", "u", "ms", "s", "m", "h")
V2_PRECISIONS = {"s": "s", "ms": "ms", "us": "u", "ns": "ns"}
ERRORS_SHOWN = 100


async def _body(request: Request, limit: int) -> bytes:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE, f"request body exceeds {limit} bytes"
            )
    if request.headers.get("content-encoding", "").lower() != "gzip":
        return bytes(raw)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(bytes(raw), limit + 1)
    except zlib.error as err:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"invalid gzip body: {err}") from err
    if len(data) > limit or inflater.unconsumed_tail:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"decompressed body exceeds {limit} bytes"
        )
    return data


def _ingest(store: Store, data: bytes, precision: str, source: str) -> dict[str, Any]:
    result = parse_lines(data, precision=precision, source=source)
    accepted = store.append(result.batch)
    store.record_errors("ingest", source, [str(e) for e in result.errors])
    return {"accepted": accepted, "result": result}


async def _write(request: Request, store: Store, limit: int, precision: str) -> Response:
    data = await _body(request, limit)
    client = request.client.host if request.client else "unknown"
    outcome = await run_in_threadpool(_ingest, store, data, precision, f"http:{client}")
    errors = outcome["result"].errors
    if not errors:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    first = errors[0]
    return JSONResponse(
        status_code=status.HTTP_400_BAD_REQUEST,
        content={
            "error": f"partial write: line {first.line_no}: {first.reason} dropped={len(errors)}",
            "line": first.line_no,
            "reason": first.reason,
            "accepted": outcome["accepted"],
            "rejected": len(errors),
            "errors": [
                {"line": e.line_no, "reason": e.reason, "text": e.line}
                for e in errors[:ERRORS_SHOWN]
            ],
        },
    )


def _check_target(target: str | None, name: str, precision: str, allowed: tuple[str, ...]) -> None:
    """InfluxDB's own refusals: a missing database/bucket, an unknown precision."""
    if not target:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{name} is required")
    if precision not in allowed:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"invalid precision {precision!r}: use one of {', '.join(allowed)}",
        )


@router.post("/write", status_code=204, summary="InfluxDB 1.x line protocol write")
async def write_v1(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    _: Authorized,
    db: Annotated[str | None, Query(description="database (required, as in InfluxDB)")] = None,
    precision: Annotated[str, Query()] = "ns",
) -> Response:
    _check_target(db, "database", precision, V1_PRECISIONS)
    return await _write(request, store, settings.max_body_bytes, precision)


@router.post("/api/v2/write", status_code=204, summary="InfluxDB 2.x line protocol write")
async def write_v2(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    _: Authorized,
    bucket: Annotated[str | None, Query()] = None,
    org: Annotated[str | None, Query()] = None,
    precision: Annotated[str, Query()] = "ns",
) -> Response:
    _check_target(bucket, "bucket", precision, tuple(V2_PRECISIONS))
    return await _write(request, store, settings.max_body_bytes, V2_PRECISIONS[precision])


@router.head("/ping", status_code=204, include_in_schema=False)
@router.get("/ping", status_code=204, summary="InfluxDB-style liveness probe")
def ping() -> Response:
    return Response(status_code=204, headers={"X-Influxdb-Version": "netsentry-1.x-compatible"})


@router.post("/query", summary="InfluxQL subset: CREATE DATABASE (what Telegraf sends first)")
async def query(
    request: Request, _: Authorized, q: Annotated[str | None, Query()] = None
) -> JSONResponse:
    """Telegraf's influxdb output creates its database before writing; accept that.

    netsentry keeps no databases, so ``CREATE DATABASE`` succeeds as a no-op. Any other
    statement is refused: netsentry is written to, not queried, over this protocol.
    """
    if q is None:
        form = await request.form()
        value = form.get("q")
        q = value if isinstance(value, str) else None
    if not q:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, 'missing required parameter "q"')
    statements = [s.strip() for s in q.split(";") if s.strip()]
    if statements and all(s.upper().startswith("CREATE DATABASE ") for s in statements):
        return JSONResponse({"results": [{"statement_id": i} for i in range(len(statements))]})
    raise HTTPException(
        status.HTTP_400_BAD_REQUEST,
        "netsentry accepts only CREATE DATABASE on /query; read data through "
        "the REST routes (GET / lists them)",
    )
