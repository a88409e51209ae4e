"""Device detections, analyst feedback on them, and the thresholds tuned from it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from netsentry.api.auth import Authorized
from netsentry.api.deps import StoreDep
from netsentry.api.render import jsonable, respond
from netsentry.devices import feedback_store as feedback
from netsentry.devices.tuning import BOUNDS, DEFAULT_BOUNDS, TRIALS, CostWeights, effective

router = APIRouter(prefix="/devices", tags=["devices"])

DeviceId = Annotated[
    str, Path(pattern=feedback.DEVICE_ID.pattern, description="a registered device id")
]
DetectionId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Note = Annotated[str, Field(max_length=1000, description="why, for the audit trail")]
Weight = Annotated[float, Field(gt=0, le=1000)]


class LabelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: Literal["false_positive", "confirmed"]
    note: Note = ""


class MissedBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time: int = Field(ge=0, le=2**62, description="when the anomaly was, ns since the epoch")
    note: Note = ""
    within_s: float = Field(10.0, gt=0, le=3600, description="how far a detection may be")


class TuneBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trials: int = Field(TRIALS, ge=8, le=2000)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    false_positive_weight: Weight = CostWeights.false_positive
    missed_weight: Weight = CostWeights.missed
    anchor: float = Field(CostWeights.anchor, ge=0, le=1000)


@contextmanager
def _errors() -> Iterator[None]:
    """The store's refusals as HTTP errors that say what to do."""
    try:
        yield
    except (feedback.UnknownDeviceError, feedback.UnknownDetectionError) as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(err)) from err
    except (feedback.FlaggedDetectionError, feedback.ConcurrentTuneError) as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from err
    except feedback.CorruptRowError as err:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(err)) from err


@router.get("/{device}/detections", summary="A device's scored windows, newest first")
def list_detections(
    device: DeviceId,
    request: Request,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, description="only ids below (next page)")] = None,
    label: Annotated[
        Literal["false_positive", "confirmed", "missed", "unlabelled"] | None, Query()
    ] = None,
) -> Response:
    with _errors():
        rows = feedback.detections(store, device, limit, before, label)
    page = {"device": device, "detections": rows, "next": rows[-1]["id"] if rows else None}
    if len(rows) < limit:
        page["next"] = None
    return respond(request, f"{device}: detections", page, jsonable(rows))


@router.post(
    "/{device}/detections/{detection_id}/label",
    summary="Mark a detection a false positive or a confirmed anomaly",
)
def label_detection(
    device: DeviceId, detection_id: DetectionId, body: LabelBody, store: StoreDep, _: Authorized
) -> dict[str, Any]:
    with _errors():
        row = feedback.label_detection(store, device, detection_id, body.label, "api", body.note)
    result: dict[str, Any] = jsonable(row)
    return result


@router.post("/{device}/missed", summary="Report an anomaly the detector missed")
def report_missed(
    device: DeviceId, body: MissedBody, store: StoreDep, response: Response, _: Authorized
) -> dict[str, Any]:
    within_ns = round(body.within_s * 1e9)
    with _errors():
        row, matched = feedback.report_missed(store, device, body.time, body.note, within_ns, "api")
    if not matched:
        response.status_code = status.HTTP_201_CREATED
    return {
        "detection": jsonable(row),
        "matched": matched,
        "usable_for_tuning": matched,
        "detail": (
            f"detection {row['id']} labelled missed"
            if matched
            else f"no detection of {device!r} within {body.within_s} s: a row without scores "
            f"was added ({row['id']}); it is kept but cannot move a threshold"
        ),
    }


@router.get("/{device}/thresholds", summary="A device's effective thresholds and their bounds")
def get_thresholds(
    device: DeviceId,
    store: StoreDep,
    history: Annotated[int, Query(ge=0, le=100, description="last tunes to include")] = 5,
) -> dict[str, Any]:
    with _errors(), store.read() as db:
        feedback.require_device(db, device)
        stored, updated = feedback.stored_thresholds(db, device)
        tunes = feedback.threshold_audit(db, device, history)
    thresholds = effective(stored)
    return {
        "device": device,
        "thresholds": thresholds,
        "source": "defaults" if stored is None else "tuned",
        "updated": updated or None,
        "bounds": {name: BOUNDS.get(name, DEFAULT_BOUNDS) for name in thresholds},
        "tunes": jsonable(tunes),
    }


@router.post(
    "/{device}/thresholds/tune",
    summary="Tune a device's thresholds on its labelled detections (Bayesian optimization)",
)
async def tune_thresholds(
    device: DeviceId, store: StoreDep, _: Authorized, body: TuneBody | None = None
) -> dict[str, Any]:
    body = body or TuneBody()
    weights = CostWeights(body.false_positive_weight, body.missed_weight, body.anchor)
    with _errors():
        result, history = await run_in_threadpool(
            feedback.tune_device,
            store,
            device,
            weights=weights,
            trials=body.trials,
            seed=body.seed,
            actor="api",
        )
    return {
        "device": device,
        "previous": result.previous,
        "thresholds": result.thresholds,
        "changed": result.changed,
        "directions": result.directions,
        "cost_before": result.cost_before.as_dict(),
        "cost_after": result.cost_after.as_dict(),
        "labelled": len(history),
        "new_feedback": int(history.new.sum()),
        "trials": result.trials,
    }


class RotateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Note = ""


def _rotation_service(request: Request) -> Any:
    service = getattr(request.app.state, "rotation", None)
    if service is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "key rotation is off: set NETSENTRY_MQTT_HOST, NETSENTRY_ISSUER_KEY and "
            "NETSENTRY_VAULT_KEY",
        )
    return service


@router.post("/{device}/rotate", summary="Rotate a device's key now (operator request)")
async def rotate_key(
    device: DeviceId, request: Request, _: Authorized, body: RotateBody | None = None
) -> dict[str, Any]:
    service = _rotation_service(request)
    note = (body or RotateBody()).note
    try:
        rotation = await run_in_threadpool(service.rotate, device, "operator", note)
    except LookupError as err:  # UnknownDeviceError
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(err)) from err
    if not rotation.ok:
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, f"rotation of {device!r} failed: {rotation.error}"
        )
    return {
        "device": device,
        "key_id": rotation.key_id,
        "latency_ms": rotation.latency_ms,
        "attempts": rotation.attempts,
        "status": rotation.status,
    }


@router.get("/{device}/rotations", summary="A device's key rotations, newest first")
def list_rotations(
    device: DeviceId,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    with _errors(), store.read() as db:
        feedback.require_device(db, device)
        rows = db.execute(
            "SELECT id, key_id, reason, detail, requested, completed, latency_ms, attempts, "
            "status, error FROM rotations WHERE device = ? ORDER BY id DESC LIMIT ?",
            (device, limit),
        ).fetchall()
    names: tuple[str, ...] = ("id", "key_id", "reason", "detail", "requested", "completed")
    names += ("latency_ms", "attempts", "status", "error")
    return {"device": device, "rotations": [dict(zip(names, r, strict=True)) for r in rows]}
