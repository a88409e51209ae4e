"""Helpers for the flow tests: the data folder and hand-made flows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from netsentry.flows.schema import FLOW_SCHEMA, Flows

DATA = Path(__file__).resolve().parent.parent / "data" / "flows"
SECOND = 1_000_000_000
HOUR = 3600 * SECOND


def flow(start_s: float, **fields: Any) -> dict[str, Any]:
    """One flow row: 10.0.0.1 → 10.0.0.2:443/tcp unless ``fields`` say otherwise."""
    row: dict[str, Any] = {
        "start": round(start_s * SECOND),
        "end": round(start_s * SECOND) + SECOND,
        "src": "10.0.0.1",
        "dst": "10.0.0.2",
        "srcp": 50000,
        "dstp": 443,
        "proto": "tcp",
        "service": "ssl",
        "bytes_out": 100,
        "bytes_in": 1000,
        "packets_out": 2,
        "packets_in": 3,
        "state": "SF",
        "source": "hand",
    }
    row.update(fields)
    return row


def make_flows(rows: list[dict[str, Any]]) -> Flows:
    return Flows(pl.DataFrame(rows, schema=FLOW_SCHEMA))
