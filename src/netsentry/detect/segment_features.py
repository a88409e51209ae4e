"""Segments, their features and their reservoirs, for the batch detectors (IF, LOF, OCSVM).

A *segment* is one (measurement, service) pair: the batch detectors fit one model per
segment, because the traffic of a DNS service and of a web service, or bytes and
packets, have nothing to learn from each other. ``service`` is the entity tag (``""``
where the data has none).

The features of a row, in this order (:data:`FEATURES`; ``z`` only with a baseline):

``log_value``
    ``sign(x) · log1p(|x|)``: traffic magnitudes span orders of magnitude.
``z``
    The row's per-entity z-score against a given baseline (a fitted
    :class:`~netsentry.detect.zscore.ZScore` of the same measurement), clipped to
    ``±Z_CAP`` (a zero-variance baseline gives ``±inf``); 0 while the entity is
    still learning. It tells a model what is unusual *for this entity*, which a model
    over the whole segment cannot see otherwise.
``hour_sin``, ``hour_cos``
    The hour of day in UTC on the unit circle, so 23:00 and 00:00 are neighbours.
``rate``
    The change of ``log_value`` per hour since the entity's previous row *in the same
    batch* (0 for its first row there): a sudden jump for an entity. It depends on the
    batch a row comes in, as a check's features depend on the check's window.

Each segment keeps a *reservoir* (:func:`reservoir_update`, Vitter's Algorithm R): a
uniform sample of at most ``capacity`` of the rows it learned, whatever their number.
:func:`pack_segments` lays every segment's reservoir, counters and model arrays out as a
few plain arrays (rows concatenated, one length per segment), without pickle.

>>> from netsentry.model import Batch
>>> hour = 3_600_000_000_000
>>> b = Batch.from_columns([0, 2 * hour], ["m", "m"], [0.0, float(np.e - 1)], {"src": ["a", "a"]})
>>> x = segment_features(b)
>>> x.round(3).tolist()
[[0.0, 0.0, 1.0, 0.0], [1.0, 0.5, 0.866, 0.5]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from netsentry.detect.base import State
from netsentry.model import Batch

Matrix = npt.NDArray[np.float64]
Segment = tuple[str, str]
Arrays = dict[str, npt.NDArray[Any]]

FEATURES: tuple[str, ...] = ("log_value", "z", "hour_sin", "hour_cos", "rate")
Z_CAP = 50.0
HOUR_NS = 3_600_000_000_000


class Baseline(Protocol):
    """What the ``z`` feature needs: :meth:`ZScore.baseline` has this signature."""

    def baseline(self, batch: Batch) -> pl.DataFrame: ...


def feature_names(baseline: bool) -> tuple[str, ...]:
    """The feature columns, in order, with or without the ``z`` feature."""
    return FEATURES if baseline else tuple(f for f in FEATURES if f != "z")


def segments(batch: Batch) -> dict[Segment, npt.NDArray[np.int64]]:
    """Row indices of each (measurement, service) segment, in row order."""
    if len(batch) == 0:
        return {}
    groups = (
        batch.frame.select("measurement", "service")
        .with_row_index("row")
        .group_by(["measurement", "service"], maintain_order=True)
        .agg(pl.col("row"))
    )
    return {
        (m, s): np.asarray(rows, dtype=np.int64)
        for m, s, rows in zip(
            groups["measurement"].to_list(),
            groups["service"].to_list(),
            groups["row"].to_list(),
            strict=True,
        )
    }


def segment_labels(batch: Batch) -> npt.NDArray[np.str_]:
    """Each row's segment as :func:`segment_label` writes it (threshold groups)."""
    out = np.empty(len(batch), dtype=object)
    for segment, rows in segments(batch).items():
        out[rows] = segment_label(segment)
    return out.astype(np.str_) if len(batch) else np.zeros(0, dtype=np.str_)


def _rate(keys: npt.NDArray[np.uint64], time: npt.NDArray[np.int64], log_value: Matrix) -> Matrix:
    """Per row: Δ log_value / Δ hours since the entity's previous row in the batch."""
    order = np.lexsort((time, keys))
    k, t, v = keys[order], time[order], log_value[order]
    rate = np.zeros(len(keys))
    if len(keys) > 1:
        hours = (t[1:] - t[:-1]) / HOUR_NS
        valid = (k[1:] == k[:-1]) & (hours > 0)
        step = np.divide(v[1:] - v[:-1], hours, out=np.zeros(len(hours)), where=valid)
        rate[order[1:]] = step
    return rate


def segment_features(batch: Batch, baseline: Baseline | None = None) -> Matrix:
    """(rows, features) matrix in the order of :func:`feature_names`."""
    frame = batch.frame
    value = frame["value"].to_numpy()
    time = frame["time"].to_numpy()
    log_value = np.sign(value) * np.log1p(np.abs(value))
    angle = 2 * np.pi * ((time // HOUR_NS) % 24) / 24.0
    columns = [log_value]
    if baseline is not None:
        z = baseline.baseline(batch)["z"].to_numpy().astype(np.float64)
        columns.append(np.clip(np.nan_to_num(z, nan=0.0), -Z_CAP, Z_CAP))
    columns += [np.sin(angle), np.cos(angle), _rate(frame["key"].to_numpy(), time, log_value)]
    return np.column_stack(columns) if len(value) else np.zeros((0, len(columns)))


def reservoir_update(
    sample: Matrix, seen: int, x: Matrix, capacity: int, rng: np.random.Generator
) -> Matrix:
    """Algorithm R over a whole batch: row ``seen + i`` replaces a uniform slot w.p. k/(i+1).

    >>> rng = np.random.default_rng(0)
    >>> s = reservoir_update(np.zeros((0, 1)), 0, np.array([[7.0], [8.0]]), 3, rng)
    >>> s.ravel().tolist()  # not full yet: every row is kept
    [7.0, 8.0]
    >>> reservoir_update(s, 2, np.arange(1000.0)[:, None], 3, rng).shape
    (3, 1)
    """
    index = seen + np.arange(len(x))
    slots = np.where(index < capacity, index, rng.integers(0, index + 1))
    rows = np.flatnonzero(slots < capacity)
    # a later row taking the same slot overwrites an earlier one, as in the serial loop
    _, last = np.unique(slots[rows][::-1], return_index=True)
    rows = rows[::-1][last]
    out = np.zeros((min(capacity, seen + len(x)), x.shape[1]))
    out[: len(sample)] = sample
    out[slots[rows]] = x[rows]
    return out


def standardise(x: Matrix) -> tuple[Matrix, Matrix]:
    """Centre and scale of each column (scale 1 where a column is constant)."""
    center, scale = x.mean(axis=0), x.std(axis=0)
    return center, np.where(scale > 1e-12, scale, 1.0)


@dataclass
class SegmentState:
    """A segment's reservoir, its counters and its fitted model (arrays + a cache)."""

    sample: Matrix
    seen: int = 0
    fresh: int = 0
    checks: int = 0
    fits: int = 0
    model: Arrays = field(default_factory=dict)
    cache: Any = None


def segment_label(segment: Segment) -> str:
    """``measurement/service`` (``measurement`` alone when the service is empty)."""
    return f"{segment[0]}/{segment[1]}" if segment[1] else segment[0]


COUNTERS = ("seen", "fresh", "checks", "fits")


def pack_segments(
    states: dict[Segment, SegmentState], model_arrays: dict[str, int], dims: int
) -> State:
    """Segments as plain arrays: each array's rows concatenated, with rows per segment."""
    items = list(states.items())
    state: State = {
        "measurement": np.array([s[0] for s, _ in items], dtype=np.str_),
        "service": np.array([s[1] for s, _ in items], dtype=np.str_),
        "counters": np.array(
            [[getattr(v, c) for c in COUNTERS] for _, v in items], dtype=np.int64
        ).reshape(-1, len(COUNTERS)),
        "sample": np.concatenate([v.sample for _, v in items] or [np.zeros((0, dims))]),
        "sample_rows": np.array([len(v.sample) for _, v in items], dtype=np.int64),
    }
    for name, ndim in model_arrays.items():
        parts = [v.model[name] for _, v in items if v.model]
        state[f"model.{name}"] = np.concatenate(parts or [np.zeros((0, dims)[:ndim])])
        state[f"model.{name}.rows"] = np.array(
            [len(v.model[name]) if v.model else 0 for _, v in items], dtype=np.int64
        )
    return state


def unpack_segments(state: State, model_arrays: dict[str, int]) -> dict[Segment, SegmentState]:
    """The inverse of :func:`pack_segments` (model caches are left to the detector)."""

    def split(name: str, rows: str) -> list[npt.NDArray[Any]]:
        return np.split(np.asarray(state[name]), np.cumsum(state[rows])[:-1])

    samples = split("sample", "sample_rows")
    models = {name: split(f"model.{name}", f"model.{name}.rows") for name in model_arrays}
    out = {}
    for i, (m, s) in enumerate(zip(state["measurement"], state["service"], strict=True)):
        counts = dict(zip(COUNTERS, (int(c) for c in state["counters"][i]), strict=True))
        model = {name: models[name][i].copy() for name in model_arrays}
        if not any(len(a) for a in model.values()):
            model = {}
        sample = samples[i].astype(np.float64)
        out[(str(m), str(s))] = SegmentState(sample, model=model, **counts)
    return out
