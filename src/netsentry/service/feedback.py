"""Analyst feedback on an anomaly: confirm it, or call it a false positive.

A false positive leaves the anomaly list, and its value is folded into the baseline it
was judged against (the seed's planned feedback route), in the same transaction as the
status change, so a concurrent check can never overwrite it (see ``run_check``).
"""

from __future__ import annotations

import polars as pl

from netsentry.config import DetectionSettings
from netsentry.detect.zscore import ZScore
from netsentry.model import KEY_TAGS, Batch
from netsentry.store.sqlite import Store, key_from_sql, read_state

STATUSES = ("open", "confirmed", "false_positive")


class UnknownAnomalyError(LookupError):
    """No anomaly has the id that feedback was given for."""


def apply_feedback(
    store: Store, anomaly_id: str, status: str, settings: DetectionSettings
) -> dict[str, object]:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    with store.transaction() as tx:
        row = tx.db.execute(
            "SELECT time, measurement, key, value, detector, status FROM anomalies WHERE id = ?",
            (anomaly_id,),
        ).fetchone()
        if row is None:
            raise UnknownAnomalyError(f"no anomaly with id {anomaly_id!r}")
        time_ns, measurement, key, value, detector, previous = row
        folded = False
        if status == "false_positive" and previous != "false_positive" and detector == "zscore":
            state, _ = read_state(tx.db, "zscore", measurement)
            detector_ = ZScore(
                min_count=settings.min_count,
                alternative=settings.alternative,
                adapt_after=settings.adapt_after,
            )
            if state is not None:
                detector_.load_state(state)
            one = Batch.from_columns([time_ns], [measurement], [value], {t: [""] for t in KEY_TAGS})
            one = Batch(
                one.frame.with_columns(pl.lit(key_from_sql(key), dtype=pl.UInt64).alias("key"))
            )
            detector_.learn(one, pl.Series([True]).to_numpy())
            tx.save_state("zscore", measurement, detector_.state_dict())
            folded = True
        tx.set_status(anomaly_id, status)
        tx.bump({f"feedback_{status}": 1.0})
    return {
        "id": anomaly_id,
        "status": status,
        "previous": previous,
        "folded_into_baseline": folded,
    }
