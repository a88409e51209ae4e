"""Anomalies per measurement, one anomaly, and the feedback route."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from netsentry.api.auth import Authorized
from netsentry.api.deps import SettingsDep, StoreDep
from netsentry.api.render import respond
from netsentry.service.feedback import UnknownAnomalyError, apply_feedback
from netsentry.service.runtime import effective
from netsentry.store import queries

router = APIRouter(tags=["anomalies"])


class Feedback(BaseModel):
    status: Literal["confirmed", "false_positive", "open"]


@router.get("/{measurement}/anomalies", summary="Anomalies of a measurement, newest first")
def list_anomalies(
    measurement: str,
    request: Request,
    store: StoreDep,
    status_: Annotated[
        Literal["open", "confirmed", "false_positive", "all"] | None, Query(alias="status")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    since: Annotated[int, Query(ge=0, description="ns since the epoch")] = 0,
) -> Response:
    statuses = (
        queries.VISIBLE
        if status_ is None
        else ("open", "confirmed", "false_positive")
        if status_ == "all"
        else (status_,)
    )
    with store.read() as db:
        if measurement not in queries.measurements(db):
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"unknown measurement {measurement!r}: see GET /measurements",
            )
        rows = queries.anomalies(db, measurement, statuses, limit, since)
    flat = [{k: v for k, v in r.items() if k != "tags"} | r["tags"] for r in rows]
    return respond(request, f"{measurement}: anomalies", rows, flat)


@router.get("/anomalies/{anomaly_id}", summary="One anomaly with its explanation")
def get_anomaly(anomaly_id: str, request: Request, store: StoreDep) -> Response:
    with store.read() as db:
        row = queries.anomaly(db, anomaly_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no anomaly with id {anomaly_id!r}")
    return respond(request, f"anomaly {anomaly_id}", row)


@router.post(
    "/anomalies/{anomaly_id}/feedback",
    summary="Mark an anomaly confirmed or false positive (folds it into the baseline)",
)
async def feedback(
    anomaly_id: str, body: Feedback, store: StoreDep, settings: SettingsDep, _: Authorized
) -> dict[str, object]:
    try:
        return await run_in_threadpool(
            apply_feedback, store, anomaly_id, body.status, effective(settings, store)
        )
    except UnknownAnomalyError as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(err)) from err
