"""``/`` (the routes), ``/status`` (errors and counters) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from netsentry.api.deps import StoreDep
from netsentry.api.render import respond
from netsentry.respond.outbox import pending_summary
from netsentry.service.check import INBOX
from netsentry.store import queries
from netsentry.store.sqlite import Store

router = APIRouter(tags=["service"])

COUNTERS = {
    "checks": "Checks run",
    "check_seconds": "Seconds spent in checks",
    "records_ingested": "Records accepted into the inbox",
    "records_checked": "Records processed by checks",
    "anomalies": "Anomalies found",
    "errors_ingest": "Malformed input lines rejected",
    "late_samples": "Samples dropped as late",
    "counter_resets": "Counter resets seen",
}


@router.get("/", summary="The routes this service offers")
def index(request: Request) -> Response:
    rows = [
        {"path": path, "method": method.upper(), "summary": operation.get("summary", "")}
        for path, operations in sorted(request.app.openapi()["paths"].items())
        for method, operation in operations.items()
    ]
    return respond(
        request, "netsentry", {"routes": rows, "openapi": "/openapi.json", "docs": "/docs"}, rows
    )


def status_payload(store: Store, outbox_destination: str | None = None) -> dict[str, Any]:
    watermark = store.watermark(INBOX)
    outbox = None
    if outbox_destination is not None:
        outbox = {outbox_destination: pending_summary(store, outbox_destination)}
    with store.read() as db:
        return {
            "outbox": outbox,
            "counters": store.counters(),
            "last_check": queries.last_check(db),
            "inbox": {"watermark": watermark, "pending": queries.pending(db, watermark)},
            "entities": queries.entity_count(db),
            "checkpoints": queries.checkpoints(db),
            "recent_errors": queries.recent_errors(db),
        }


@router.get("/status", summary="Recent errors, counters and the last check")
def status_(request: Request, store: StoreDep) -> Response:
    control = request.app.state.scheduler.control
    payload = status_payload(store, control.destination if control is not None else None)
    rows = [{"name": k, "value": v} for k, v in payload["counters"].items()] + [
        {"name": f"error {e['source']}", "value": e["message"]} for e in payload["recent_errors"]
    ]
    return respond(request, "status", payload, rows)


class StoreCollector:
    """Exposes the store's persisted counters, so they survive restarts and CLI checks."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        counters = self.store.counters()
        for name, help_text in COUNTERS.items():
            family = CounterMetricFamily(f"netsentry_{name}", help_text)
            family.add_metric([], counters.get(name, 0.0))
            yield family
        watermark = self.store.watermark(INBOX)
        with self.store.read() as db:
            pending = queries.pending(db, watermark)
            entities = queries.entity_count(db)
        yield GaugeMetricFamily(
            "netsentry_inbox_pending", "Records awaiting a check", value=pending
        )
        yield GaugeMetricFamily("netsentry_entities", "Entities known", value=entities)


@router.get("/metrics", summary="Prometheus metrics")
def metrics(store: StoreDep) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
