"""JSON by default, a readable HTML table when a browser asks for ``text/html``."""

from __future__ import annotations

import html
import json
import math
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response


def wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and request.query_params.get("format") != "json"


def jsonable(value: Any) -> Any:
    """Replace non-finite floats (JSON has none) by null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        value = json.dumps(jsonable(value))
    elif isinstance(value, float):
        value = f"{value:.6g}"
    return html.escape("" if value is None else str(value))


def table(title: str, rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0]) if rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:1.5em}table{border-collapse:"
        "collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
        "th{background:#eee;position:sticky;top:0}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(rows)} rows · <a href='/'>routes</a> · "
        f"<a href='?format=json'>JSON</a></p><table><tr>{head}</tr>\n{body}</table></body></html>"
    )


def respond(
    request: Request, title: str, payload: Any, rows: list[dict[str, Any]] | None = None
) -> Response:
    """``payload`` as JSON, or ``rows`` (default: the payload itself) as an HTML table."""
    if wants_html(request):
        if rows is None:
            rows = (
                payload
                if isinstance(payload, list)
                else [{"name": k, "value": v} for k, v in payload.items()]
            )
        return HTMLResponse(table(title, rows))
    return JSONResponse(jsonable(payload))
