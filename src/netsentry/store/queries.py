"""Read-only queries behind the API (the store's writes live in ``sqlite.py``)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from netsentry.keys import format_key
from netsentry.model import KEY_TAGS
from netsentry.store.sqlite import key_from_sql, to_unsigned

VISIBLE = ("open", "confirmed")


def measurements(db: sqlite3.Connection) -> list[str]:
    rows = db.execute(
        "SELECT measurement FROM state UNION SELECT measurement FROM anomalies "
        "UNION SELECT DISTINCT measurement FROM inbox ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def tags_of(db: sqlite3.Connection, keys: list[int]) -> dict[int, dict[str, str]]:
    """Tags of the given (signed, as stored) keys."""
    out: dict[int, dict[str, str]] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        rows = db.execute(
            f"SELECT key, {', '.join(KEY_TAGS)} FROM entities "
            f"WHERE key IN ({', '.join('?' * len(chunk))})",
            chunk,
        ).fetchall()
        out.update({row[0]: dict(zip(KEY_TAGS, row[1:], strict=True)) for row in rows})
    return out


def tag_values(db: sqlite3.Connection, tag: str) -> list[str]:
    if tag not in KEY_TAGS:
        raise ValueError(tag)
    return [r[0] for r in db.execute(f"SELECT DISTINCT {tag} FROM entities ORDER BY 1")]


def anomaly_row(row: tuple[Any, ...], tags: dict[int, dict[str, str]]) -> dict[str, Any]:
    (id_, time_ns, measurement, key, value, score, threshold, detector, explanation, status) = row
    return {
        "id": id_,
        "time": time_ns,
        "measurement": measurement,
        "key": format_key(key_from_sql(key)),
        "tags": tags.get(key, {}),
        "value": value,
        "score": score,
        "threshold": threshold,
        "detector": detector,
        "explanation": json.loads(explanation),
        "status": status,
    }


_ANOMALY_COLUMNS = (
    "id, time, measurement, key, value, score, threshold, detector, explanation, status"
)


def anomalies(
    db: sqlite3.Connection, measurement: str, statuses: tuple[str, ...], limit: int, since: int
) -> list[dict[str, Any]]:
    rows = db.execute(
        f"SELECT {_ANOMALY_COLUMNS} FROM anomalies WHERE measurement = ? AND time >= ? "
        f"AND status IN ({', '.join('?' * len(statuses))}) ORDER BY time DESC, id LIMIT ?",
        (measurement, since, *statuses, limit),
    ).fetchall()
    tags = tags_of(db, sorted({r[3] for r in rows}))
    return [anomaly_row(r, tags) for r in rows]


def anomaly(db: sqlite3.Connection, anomaly_id: str) -> dict[str, Any] | None:
    row = db.execute(
        f"SELECT {_ANOMALY_COLUMNS} FROM anomalies WHERE id = ?", (anomaly_id,)
    ).fetchone()
    return None if row is None else anomaly_row(row, tags_of(db, [row[3]]))


def recent_errors(db: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT at, kind, source, message FROM errors ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    return [dict(zip(("at", "kind", "source", "message"), r, strict=True)) for r in rows]


def last_check(db: sqlite3.Connection) -> dict[str, Any] | None:
    row = db.execute("SELECT report, finished FROM checks ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else {**json.loads(row[0]), "finished": row[1]}


def pending(db: sqlite3.Connection, watermark: int) -> int:
    (n,) = db.execute("SELECT COUNT(*) FROM inbox WHERE id > ?", (watermark,)).fetchone()
    return int(n)


def checkpoints(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every source's watermark (ns) and when it last moved."""
    rows = db.execute("SELECT source, watermark, updated FROM checkpoints ORDER BY source")
    return [{"source": s, "watermark": w, "updated": u} for s, w, u in rows]


def entity_count(db: sqlite3.Connection) -> int:
    (n,) = db.execute("SELECT COUNT(*) FROM entities").fetchone()
    return int(n)


__all__ = ["to_unsigned"]
