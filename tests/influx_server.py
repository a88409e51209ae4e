"""A real InfluxDB 1.x (Debian's influxd 1.6) on loopback, and line protocol to fill it.

influxd 1.6 has no ``/api/v2`` routes, rejects the ``u`` integer suffix and reads
``precision=us`` as nanoseconds: write with ``precision=n`` (the default here).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from netsentry.model import KEY_TAGS, Batch
from servers import ServerProcess, free_port, http_ok


def influxd(tmp: Path) -> tuple[ServerProcess, str]:
    """An influxd on free loopback ports with its data in ``tmp`` (not started)."""
    http_port = free_port()
    rpc_port = free_port()
    while rpc_port == http_port:
        rpc_port = free_port()
    config = tmp / "influxdb.conf"
    config.write_text(
        "reporting-disabled = true\n"
        f'bind-address = "127.0.0.1:{rpc_port}"\n'
        "[meta]\n"
        f'  dir = "{tmp / "meta"}"\n'
        "  logging-enabled = false\n"
        "[data]\n"
        f'  dir = "{tmp / "data"}"\n'
        f'  wal-dir = "{tmp / "wal"}"\n'
        "  query-log-enabled = false\n"
        "[monitor]\n"
        "  store-enabled = false\n"
        "[http]\n"
        f'  bind-address = "127.0.0.1:{http_port}"\n'
        "  log-enabled = false\n"
        "  pprof-enabled = false\n"
        "[logging]\n"
        '  level = "warn"\n'
        "  suppress-logo = true\n"
        "[continuous_queries]\n"
        "  enabled = false\n"
        "[subscriber]\n"
        "  enabled = false\n"
    )
    url = f"http://127.0.0.1:{http_port}"
    server = ServerProcess(
        "influxd",
        ["influxd", "-config", str(config)],
        http_ok(f"{url}/ping", 204),
        tmp / "influxd.log",
    )
    return server, url


def query(url: str, q: str, db: str | None = None) -> dict[str, Any]:
    """Run InfluxQL (POST, so CREATE/DROP work too); raises on any error."""
    params = {"q": q} if db is None else {"q": q, "db": db}
    response = httpx.post(f"{url}/query", data=params, timeout=30)
    body: dict[str, Any] = response.json()
    errors = [body.get("error")] + [r.get("error") for r in body.get("results", [])]
    if response.status_code != 200 or any(errors):
        raise RuntimeError(f"{q!r}: HTTP {response.status_code}: {body}")
    return body


def create_database(url: str, name: str) -> None:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    query(url, f'CREATE DATABASE "{escaped}"')


def _escape(text: str, special: str) -> str:
    for ch in special:
        text = text.replace(ch, "\\" + ch)
    return text


def line_protocol(batch: Batch) -> list[str]:
    """One line per row: escaped measurement and tags (empty tags left out),
    ``value=<float>`` (shortest round-trip repr) and the ns timestamp."""
    lines = []
    columns = ["measurement", *KEY_TAGS, "value", "time"]
    for row in batch.frame.select(columns).iter_rows():
        key = _escape(row[0], ", ")
        for tag, value in zip(KEY_TAGS, row[1:8], strict=True):
            if value:
                key += f",{tag}={_escape(value, ',= ')}"
        lines.append(f"{key} value={row[8]!r} {row[9]}")
    return lines


def write(
    url: str, db: str, lines: Iterable[str], *, precision: str = "n", rp: str | None = None
) -> None:
    """POST line protocol to ``/write`` in bodies of 5,000 lines; raises on refusal."""
    params = {"db": db, "precision": precision}
    if rp is not None:
        params["rp"] = rp
    lines = list(lines)
    with httpx.Client(timeout=60) as client:
        for i in range(0, len(lines), 5000):
            body = "\n".join(lines[i : i + 5000]) + "\n"
            response = client.post(f"{url}/write", params=params, content=body.encode())
            if response.status_code != 204:
                raise RuntimeError(f"write refused: HTTP {response.status_code}: {response.text}")
