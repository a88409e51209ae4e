"""The seed's read routes: per-entity statistics and the tag values seen."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response, status

from netsentry.api.deps import StoreDep
from netsentry.api.render import respond
from netsentry.detect import moments
from netsentry.keys import format_key, parse_key
from netsentry.model import KEY_TAGS
from netsentry.store import queries
from netsentry.store.sqlite import Store, key_to_sql

router = APIRouter(tags=["statistics"])


def _rows(store: Store, measurement: str) -> list[dict[str, Any]]:
    state, _ = store.load_state("zscore", measurement)
    if state is not None:
        n, mean, m2 = state["n"], state["mean"], state["m2"]
        std = moments.std(n, m2)
        columns = {
            "n": n,
            "mean": mean,
            "std": std,
            "sum": n * mean,
            "sum_of_squares": m2 + n * mean * mean,
            "pending_n": state["pending_n"],
            "streak": state["streak"],
        }
    else:
        state, _ = store.load_state("created", measurement)
        if state is None:
            with store.read() as db:
                known = measurement in queries.measurements(db)
            if known:
                return []
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"unknown measurement {measurement!r}: see GET /measurements",
            )
        columns = {
            "last_created": state["last_value"],
            "last_time": state["last_time"],
            "resets": state["resets"],
        }
    keys = np.asarray(state["key"], dtype=np.uint64)
    with store.read() as db:
        tags = queries.tags_of(db, [key_to_sql(int(k)) for k in keys])
    return [
        {
            "key": format_key(int(k)),
            **tags.get(key_to_sql(int(k)), {}),
            **{name: values[i].item() for name, values in columns.items()},
        }
        for i, k in enumerate(keys)
    ]


@router.get("/measurements", summary="Measurements netsentry knows")
def list_measurements(request: Request, store: StoreDep) -> Response:
    with store.read() as db:
        names = queries.measurements(db)
    return respond(request, "measurements", names, [{"measurement": m} for m in names])


@router.get("/{measurement}/stats", summary="Every entity of a measurement with its statistics")
def stats(measurement: str, request: Request, store: StoreDep) -> Response:
    rows = _rows(store, measurement)
    return respond(request, f"{measurement}: statistics", rows)


@router.get("/{measurement}/stats/{key}", summary="Statistics of one entity")
def entity_stats(measurement: str, key: str, request: Request, store: StoreDep) -> Response:
    try:
        wanted = format_key(parse_key(key.lower()))
    except ValueError as err:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(err)) from err
    for row in _rows(store, measurement):
        if row["key"] == wanted:
            return respond(request, f"{measurement} {wanted}", row)
    raise HTTPException(
        status.HTTP_404_NOT_FOUND, f"entity {wanted} has no statistics in {measurement!r}"
    )


def tag_route(router_: APIRouter) -> None:
    """``GET /{entity_type}``: registered last, as it matches any single segment."""

    @router_.get("/{entity_type}", summary="Values seen for one entity tag", tags=["statistics"])
    def tag_values(entity_type: str, request: Request, store: StoreDep) -> Response:
        if entity_type not in KEY_TAGS:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"no route or entity type {entity_type!r}: entity types are "
                f"{', '.join(KEY_TAGS)}; GET / lists the routes",
            )
        with store.read() as db:
            values = queries.tag_values(db, entity_type)
        return respond(request, f"{entity_type} values", values, [{entity_type: v} for v in values])
