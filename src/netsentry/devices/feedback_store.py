"""Analyst feedback on device detections, and per-device thresholds, in the store.

Tables (migration 4): ``device_detections`` (windows the detector scored: ``scores``
JSON, ``flagged``, ``label``, ``labelled``) and ``device_thresholds`` (``thresholds``
JSON). Every change leaves an audit entry in ``settings_history``, in the same
transaction: ``device_feedback/<device>`` for a label (the new label, the previous one,
the analyst's note) and ``device_thresholds/<device>`` for a tune (previous and new
thresholds, the costs, and ``feedback_through``: the newest ``labelled`` time the tune
saw, so the next tune knows which feedback is new).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from typing import Any

from netsentry.devices.tuning import (
    TRIALS,
    CostWeights,
    History,
    TuneResult,
    effective,
    tune,
)
from netsentry.store.sqlite import Store

DEVICE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
THRESHOLDS_AUDIT = "device_thresholds/"
FEEDBACK_AUDIT = "device_feedback/"


class UnknownDeviceError(LookupError):
    """No device with that id is registered."""


class UnknownDetectionError(LookupError):
    """The device has no detection with that id."""


class FlaggedDetectionError(ValueError):
    """A missed anomaly was reported where the detector did fire."""


class ConcurrentTuneError(RuntimeError):
    """The device's thresholds changed while a tune was running."""


class CorruptRowError(ValueError):
    """A stored row cannot be read (its JSON is not what the schema says)."""


def check_device_id(device: str) -> str:
    if not DEVICE_ID.fullmatch(device):
        raise ValueError(f"device id must match {DEVICE_ID.pattern}, got {device!r}")
    return device


def require_device(db: sqlite3.Connection, device: str) -> None:
    check_device_id(device)
    if db.execute("SELECT 1 FROM devices WHERE id = ?", (device,)).fetchone() is None:
        raise UnknownDeviceError(f"no device {device!r} is registered")


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    detection_id, time_ns, scores, flagged, label, labelled = row
    try:
        parsed: Any = json.loads(scores)
    except ValueError:
        parsed = None
    return {
        "id": detection_id,
        "time": time_ns,
        "scores": parsed,
        "flagged": bool(flagged),
        "label": label,
        "labelled": labelled,
    }


def detections(
    store: Store, device: str, limit: int, before: int | None = None, label: str | None = None
) -> list[dict[str, Any]]:
    """A device's detections, newest id first; ``before``: only ids below it (paging)."""
    with store.read() as db:
        require_device(db, device)
        rows = db.execute(
            "SELECT id, time, scores, flagged, label, labelled FROM device_detections "
            "WHERE device = ? AND id < ? AND (? IS NULL OR coalesce(label, 'unlabelled') = ?) "
            "ORDER BY id DESC LIMIT ?",
            (device, before if before is not None else 2**63 - 1, label, label, limit),
        ).fetchall()
    return [_row(r) for r in rows]


def _audit(db: sqlite3.Connection, name: str, value: dict[str, Any], at: int, actor: str) -> None:
    db.execute(
        "INSERT INTO settings_history (name, value, at, actor) VALUES (?, ?, ?, ?)",
        (name, json.dumps(value, allow_nan=False), at, actor),
    )


def label_detection(
    store: Store, device: str, detection_id: int, label: str, actor: str, note: str = ""
) -> dict[str, Any]:
    """Set a detection's label; the same label again changes nothing (and is not new)."""
    with store.transaction() as tx:
        require_device(tx.db, device)
        row = tx.db.execute(
            "SELECT id, time, scores, flagged, label, labelled FROM device_detections "
            "WHERE id = ? AND device = ?",
            (detection_id, device),
        ).fetchone()
        if row is None:
            raise UnknownDetectionError(f"device {device!r} has no detection {detection_id}")
        previous = row[4]
        if previous != label:
            tx.db.execute(
                "UPDATE device_detections SET label = ?, labelled = ? WHERE id = ?",
                (label, tx.now, detection_id),
            )
            value = {"detection": detection_id, "label": label, "previous": previous}
            _audit(tx.db, FEEDBACK_AUDIT + device, value | {"note": note}, tx.now, actor)
            row = (*row[:4], label, tx.now)
    return _row(row) | {"previous": previous, "changed": previous != label}


def report_missed(
    store: Store, device: str, time_ns: int, note: str, within_ns: int, actor: str
) -> tuple[dict[str, Any], bool]:
    """Label the detection nearest ``time_ns`` (within ``within_ns``) missed, or add one.

    Returns the row and whether an existing detection matched. A detection that was
    flagged is refused (:class:`FlaggedDetectionError`: label it confirmed instead). An
    added row has no scores, so it is recorded but cannot move a threshold.
    """
    with store.transaction() as tx:
        require_device(tx.db, device)
        row = tx.db.execute(
            "SELECT id, time, scores, flagged, label, labelled FROM device_detections "
            "WHERE device = ? AND time BETWEEN ? AND ? ORDER BY abs(time - ?), id LIMIT 1",
            (device, time_ns - within_ns, time_ns + within_ns, time_ns),
        ).fetchone()
        if row is not None and row[3]:
            raise FlaggedDetectionError(
                f"detection {row[0]} of {device!r} at {row[1]} was flagged: the anomaly was "
                "not missed; label that detection 'confirmed' instead"
            )
        matched = row is not None
        if row is None:
            cursor = tx.db.execute(
                "INSERT INTO device_detections (device, time, scores, flagged, label, labelled) "
                "VALUES (?, ?, '{}', 0, 'missed', ?)",
                (device, time_ns, tx.now),
            )
            assert cursor.lastrowid is not None
            row, previous = (cursor.lastrowid, time_ns, "{}", 0, "missed", tx.now), None
        else:
            previous = row[4]
            if previous != "missed":
                tx.db.execute(
                    "UPDATE device_detections SET label = 'missed', labelled = ? WHERE id = ?",
                    (tx.now, row[0]),
                )
                row = (*row[:4], "missed", tx.now)
        value = {"detection": row[0], "label": "missed", "previous": previous, "note": note}
        _audit(tx.db, FEEDBACK_AUDIT + device, value | {"time": time_ns}, tx.now, actor)
    return _row(row) | {"previous": previous}, matched


def stored_thresholds(db: sqlite3.Connection, device: str) -> tuple[dict[str, float] | None, int]:
    """The device's stored thresholds and when they were set (``None, 0``: none)."""
    row = db.execute(
        "SELECT thresholds, updated FROM device_thresholds WHERE device = ?", (device,)
    ).fetchone()
    if row is None:
        return None, 0
    try:
        thresholds = json.loads(row[0])
        ok = isinstance(thresholds, dict) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in thresholds.values()
        )
    except ValueError:
        ok = False
    if not ok:
        raise CorruptRowError(f"device_thresholds of {device!r} is not a JSON object of numbers")
    return {str(k): float(v) for k, v in thresholds.items()}, int(row[1])


def effective_thresholds(store: Store, device: str) -> dict[str, float]:
    """What the device's detector uses: its stored thresholds over the defaults."""
    with store.read() as db:
        require_device(db, device)
        return effective(stored_thresholds(db, device)[0])


def threshold_audit(db: sqlite3.Connection, device: str, limit: int) -> list[dict[str, Any]]:
    """The device's last tunes, newest first."""
    rows = db.execute(
        "SELECT id, value, at, actor FROM settings_history WHERE name = ? ORDER BY id DESC LIMIT ?",
        (THRESHOLDS_AUDIT + device, limit),
    ).fetchall()
    return [
        {"id": i, "at": at, "actor": actor, **json.loads(value)} for i, value, at, actor in rows
    ]


def _last_tune(db: sqlite3.Connection, device: str) -> tuple[int, int]:
    """The id of the device's last tune entry (0: none) and the feedback it had seen."""
    last = threshold_audit(db, device, 1)
    return (last[0]["id"], int(last[0]["feedback_through"])) if last else (0, -1)


def load_history(db: sqlite3.Connection, device: str, feedback_through: int) -> tuple[History, int]:
    """The labelled history (new: labelled after ``feedback_through``) and its newest time."""
    rows = db.execute(
        "SELECT id, scores, label, labelled FROM device_detections "
        "WHERE device = ? AND label IS NOT NULL ORDER BY id",
        (device,),
    ).fetchall()
    parsed = []
    newest = feedback_through
    for detection_id, scores, label, labelled_or_null in rows:
        labelled = labelled_or_null or 0
        try:
            parsed.append((json.loads(scores), label, labelled > feedback_through))
        except ValueError as err:
            raise CorruptRowError(f"detection {detection_id} of {device!r}: {err}") from None
        newest = max(newest, labelled)
    try:
        return History.from_rows(parsed), newest
    except ValueError as err:
        raise CorruptRowError(f"detections of {device!r}: {err}") from None


def tune_device(
    store: Store,
    device: str,
    *,
    weights: CostWeights | None = None,
    trials: int = TRIALS,
    seed: int = 0,
    actor: str = "api",
) -> tuple[TuneResult, History]:
    """Tune a device's thresholds on its labelled history and store them, with an audit entry.

    Nothing is written when there is no new feedback and nothing moved. Raises
    :class:`ConcurrentTuneError` if another tune committed meanwhile.
    """
    with store.read() as db:
        require_device(db, device)
        stored, _ = stored_thresholds(db, device)
        last_id, through = _last_tune(db, device)
        history, newest = load_history(db, device, through)
    started = time.perf_counter()
    result = tune(history, effective(stored), weights=weights, trials=trials, seed=seed)
    seconds = time.perf_counter() - started
    if not result.changed and not history.new.any():
        return result, history
    with store.transaction() as tx:
        if _last_tune(tx.db, device)[0] != last_id:
            raise ConcurrentTuneError(f"the thresholds of {device!r} were tuned meanwhile: retry")
        if result.changed:
            tx.db.execute(
                "INSERT INTO device_thresholds VALUES (?, ?, ?) ON CONFLICT (device) DO UPDATE "
                "SET thresholds = excluded.thresholds, updated = excluded.updated",
                (device, json.dumps(result.thresholds, allow_nan=False), tx.now),
            )
        entry = {
            "previous": result.previous,
            "thresholds": result.thresholds,
            "directions": result.directions,
            "cost_before": result.cost_before.as_dict(),
            "cost_after": result.cost_after.as_dict(),
            "feedback_through": newest,
            "labelled": len(history),
            "trials": result.trials,
            "seed": seed,
            "seconds": seconds,
        }
        _audit(tx.db, THRESHOLDS_AUDIT + device, entry, tx.now, actor)
    return result, history
