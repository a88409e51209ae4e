"""Read and change the run-time settings (tolerance, frequency): next check applies them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from netsentry.api.auth import Authorized
from netsentry.api.deps import SettingsDep, StoreDep
from netsentry.config import FREQUENCY_RANGE, TOLERANCE_RANGE
from netsentry.service.runtime import effective

router = APIRouter(tags=["configuration"])


class ConfigUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tolerance: float | None = Field(None, ge=TOLERANCE_RANGE[0], le=TOLERANCE_RANGE[1])
    frequency: int | None = Field(None, ge=FREQUENCY_RANGE[0], le=FREQUENCY_RANGE[1])


def _view(settings: Any) -> dict[str, Any]:
    return {
        "tolerance": settings.tolerance,
        "frequency": settings.frequency,
        "alternative": settings.alternative,
        "min_count": settings.min_count,
        "adapt_after": settings.adapt_after,
        "detectors": settings.detectors,
        "ml_quantile": settings.ml_quantile,
        "changepoint": settings.changepoint_params(),
        "ranges": {"tolerance": TOLERANCE_RANGE, "frequency": FREQUENCY_RANGE},
    }


@router.get("/config", summary="Effective detection settings")
def get_config(store: StoreDep, settings: SettingsDep) -> dict[str, Any]:
    return _view(effective(settings, store))


@router.put("/config", summary="Change tolerance and/or frequency (takes effect at the next check)")
def put_config(
    update: ConfigUpdate, store: StoreDep, settings: SettingsDep, _: Authorized
) -> dict[str, Any]:
    store.set_settings(update.model_dump(exclude_none=True), actor="api")
    return _view(effective(settings, store))
