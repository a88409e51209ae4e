"""The FastAPI application: routers, error shapes and the periodic check."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from netsentry.api.routes import anomalies, config, devices, stats, status, write
from netsentry.config import Settings
from netsentry.service.control import ControlPlane
from netsentry.service.rotation import RotationService
from netsentry.service.scheduler import Scheduler
from netsentry.store.sqlite import Store


def create_app(
    settings: Settings, store: Store | None = None, *, schedule: bool = False
) -> FastAPI:
    """Build the app; with ``schedule`` it also runs a check every ``frequency`` hours."""
    store = store or Store(settings.db)
    scheduler = Scheduler(store, settings, control=ControlPlane.from_environment())
    rotation = RotationService.from_settings(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stopping = asyncio.Event()
        rotating = None
        if rotation is not None:
            await asyncio.to_thread(rotation.start)  # BrokerUnavailableError: refuse to start
            rotating = asyncio.create_task(rotation.run_schedule(stopping))
        task = asyncio.create_task(scheduler.run()) if schedule else None
        yield
        stopping.set()
        if task is not None:
            scheduler.stop()
            await task
        if rotating is not None and rotation is not None:
            await rotating
            await asyncio.to_thread(rotation.stop)
        if scheduler.control is not None:
            scheduler.control.close()

    app = FastAPI(
        title="netsentry",
        version="0.1.0",
        lifespan=lifespan,
        description="Per-entity anomaly detection over network telemetry.",
    )
    app.state.settings = settings
    app.state.store = store
    app.state.scheduler = scheduler
    app.state.rotation = rotation
    for module in (status, write, config, anomalies, stats, devices):
        app.include_router(module.router)
    stats.tag_route(app.router)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(problems)}, status_code=422)

    return app
