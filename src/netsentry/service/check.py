"""The periodic check: everything in the inbox since the last check, scored and learned.

One check reads the inbox rows above the ``inbox`` watermark, turns every measurement
into what its detector should see (:mod:`netsentry.series`), scores it against the
state from before the check, learns the rows that were not flagged, and commits
state, anomalies and the new watermark in one SQLite transaction. Killed anywhere
before that commit, the check leaves no trace and the next run does the same work;
the anomaly ids are derived from what they describe, so that rerun is identical.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from netsentry.config import DetectionSettings
from netsentry.detect.threshold import Tolerance
from netsentry.detect.zscore import ZScore
from netsentry.keys import format_key
from netsentry.model import Anomaly, Batch
from netsentry.respond.outbox import enqueue
from netsentry.series import CounterIncrease, CreatedTracker, GaugePassThrough, family, kind_of
from netsentry.service.ensemble import (
    SEGMENTED,
    STREAMING,
    Series,
    run_changepoint,
    run_segmented,
    run_streaming,
)
from netsentry.service.states import Outcome, anomaly_id, row_anomaly
from netsentry.store.sqlite import ConcurrentUpdateError, Store

__all__ = ["INBOX", "CheckReport", "anomaly_id", "describe", "detect", "run_check"]

INBOX = "inbox"


@dataclass
class CheckReport:
    check_id: int = 0
    records: int = 0
    judged: int = 0
    anomalies: int = 0
    new_entities: int = 0
    late: int = 0
    resets: int = 0
    rebaselined: int = 0
    restarted: list[str] = field(default_factory=list)
    detectors: list[str] = field(default_factory=list)
    by_detector: dict[str, int] = field(default_factory=dict)
    watermark_from: int = 0
    watermark_to: int = 0
    duration_s: float = 0.0
    tolerance: float = 0.0
    per_measurement: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _new_entity_anomalies(sub: Batch, known: pl.Series) -> list[Anomaly]:
    first = (
        sub.frame.filter(~pl.col("key").is_in(known.implode()))
        .sort("time")
        .unique(subset=["key"], keep="first", maintain_order=True)
    )
    return [
        row_anomaly(
            row,
            "new_entity",
            float("nan"),
            float("nan"),
            {"rule": "entity never seen before in this measurement", "value": row["value"]},
        )
        for row in first.iter_rows(named=True)
    ]


def _zscore_anomalies(
    flagged: Batch, baseline: pl.DataFrame, tolerance: float, what: str
) -> list[Anomaly]:
    rows = pl.concat([flagged.frame, baseline], how="horizontal")
    out = []
    for row in rows.iter_rows(named=True):
        z = row["z"]
        out.append(
            row_anomaly(
                row,
                "zscore",
                abs(z),
                tolerance,
                {
                    "value": row["value"],
                    "series": what,
                    "mean": row["mean"],
                    "std": row["std"],
                    "n": row["n"],
                    "z": z if np.isfinite(z) else None,
                    "zero_variance": row["std"] == 0,
                    "tolerance": tolerance,
                },
            )
        )
    return out


def detect(batch: Batch, store: Store, settings: DetectionSettings, report: CheckReport) -> Outcome:
    """Score and learn every measurement of ``batch`` (no writes: see :func:`run_check`)."""
    threshold = Tolerance(settings.tolerance)
    interval_ns = int(settings.counter_interval_s * 1e9)
    outcome = Outcome([], {})
    resets: dict[str, pl.DataFrame] = {}
    report.detectors = list(settings.detectors)

    def load(component: Any, name: str, measurement: str) -> Any:
        return outcome.load(component, store, name, measurement, fresh_on_mismatch=False)

    # *_created first: its resets feed the matching *_total counter.
    order = sorted(batch.measurements(), key=lambda m: (kind_of(m) != "created", m))
    for measurement in order:
        sub, kind = batch.only(measurement), kind_of(measurement)
        stats = report.per_measurement.setdefault(measurement, {"records": len(sub)})
        if kind == "created":
            # (no new-entity report here: the family's *_total makes it)
            tracker = load(CreatedTracker(), "created", measurement)
            resets[family(measurement)], progress = tracker.resets(sub)
            outcome.states[("created", measurement)] = tracker.state_dict()
            report.late += progress.late
            report.resets += progress.resets
            continue
        transform: CounterIncrease | GaugePassThrough
        if kind == "counter":
            transform = load(CounterIncrease(interval_ns), "counter", measurement)
        else:
            transform = load(GaugePassThrough(), "gauge", measurement)
        had_population = transform.state_.height > 0
        known = transform.state_["key"]
        if isinstance(transform, CounterIncrease):
            values, progress = transform.increases(sub, resets.get(family(measurement)))
            what = f"increase per {settings.counter_interval_s:g} s"
        else:
            values, progress = transform.values(sub)
            what = "gauge value"
        outcome.states[(transform.kind, measurement)] = transform.state_dict()
        report.late += progress.late
        report.resets += progress.resets
        new = _new_entity_anomalies(sub, known) if had_population else []

        detector = load(
            ZScore(
                min_count=settings.min_count,
                alternative=settings.alternative,
                adapt_after=settings.adapt_after,
            ),
            "zscore",
            measurement,
        )
        scores = detector.score(values)
        flags = threshold.flags(scores)
        flagged = values.where(flags)
        found = _zscore_anomalies(flagged, detector.baseline(flagged), settings.tolerance, what)
        judged = int((~detector.learning(values)).sum())
        series = Series(measurement, values, what, store, settings, outcome)
        # the segment models read the z-score's baseline from before the check
        for name in settings.detectors:
            if name in SEGMENTED:
                found += run_segmented(series, name, detector)
            elif name in STREAMING:
                found += run_streaming(series, name)
        detector.learn(values, ~flags)
        restarted = 0
        if "changepoint" in settings.detectors:
            changes, restarted = run_changepoint(series, detector)
            found += changes
        outcome.states[("zscore", measurement)] = detector.state_dict()
        outcome.anomalies += new + found
        report.judged += judged
        rebaselined = len(detector.rebaselined_) + restarted
        report.rebaselined += rebaselined
        stats.update(
            judged=judged,
            anomalies=len(found),
            new_entities=len(new),
            rebaselined=rebaselined,
        )
    report.new_entities = sum(a.detector == "new_entity" for a in outcome.anomalies)
    report.anomalies = len(outcome.anomalies)
    for anomaly in outcome.anomalies:
        report.by_detector[anomaly.detector] = report.by_detector.get(anomaly.detector, 0) + 1
    report.restarted = [f"{name}/{measurement}" for name, measurement in outcome.restarted]
    return outcome


def run_check(
    store: Store,
    settings: DetectionSettings,
    *,
    upto: int | None = None,
    attempts: int = 3,
    outbox: str | None = None,
) -> CheckReport:
    """Run one check over the inbox and commit its results atomically.

    If feedback or another check replaced a state meanwhile, the check is redone from
    the new state (optimistic concurrency), up to ``attempts`` times. With ``outbox``
    every new anomaly is queued for that destination (e.g. ``"riot"``) in the same
    transaction, so a notification can neither be lost nor sent for a rolled-back check.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _check_once(store, settings, upto, outbox)
        except ConcurrentUpdateError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _check_once(
    store: Store, settings: DetectionSettings, upto: int | None, outbox: str | None
) -> CheckReport:
    started = time.time_ns()
    after = store.watermark(INBOX)
    head = store.inbox_head() if upto is None else upto
    report = CheckReport(
        watermark_from=after, watermark_to=max(head, after), tolerance=settings.tolerance
    )
    batch = store.read_inbox(after, head) if head > after else Batch.empty()
    report.records = len(batch)
    outcome = detect(batch, store, settings, report)
    report.duration_s = (time.time_ns() - started) / 1e9
    with store.transaction() as tx:
        tx.expect_versions(outcome.versions)
        if store.watermark(INBOX, tx.db) != after:
            raise ConcurrentUpdateError("another check advanced the inbox watermark")
        for (component, measurement), state in outcome.states.items():
            tx.save_state(component, measurement, state)
        report.check_id = tx.add_check(
            started,
            report.records,
            report.anomalies,
            (after, report.watermark_to),
            report.as_dict(),
        )
        tx.add_anomalies(outcome.anomalies, report.check_id)
        if outbox is not None:
            enqueue(tx.db, outbox, outcome.anomalies, tx.now)
        tx.advance(INBOX, report.watermark_to)
        tx.bump(
            {
                "checks": 1.0,
                "check_seconds": report.duration_s,
                "records_checked": float(report.records),
                "anomalies": float(report.anomalies),
                "late_samples": float(report.late),
                "counter_resets": float(report.resets),
            }
        )
        if len(batch):
            newest = int(batch.frame["time"].max())  # type: ignore[arg-type]
            retention_ns = int(settings.inbox_retention_s * 1e9)
            tx.prune_inbox(report.watermark_to, newest - retention_ns)
    return report


def describe(anomaly: Anomaly) -> str:
    """One line for people: what, where and why."""
    who = (
        f"{anomaly.tags.get('src', '')}:{anomaly.tags.get('srcp', '')} -> "
        f"{anomaly.tags.get('dst', '')}:{anomaly.tags.get('dstp', '')}"
    )
    e = anomaly.explanation
    if anomaly.detector == "new_entity":
        why = "new entity"
    elif anomaly.detector == "zscore":
        why = (
            f"value {e['value']:.6g} vs mean {e['mean']:.6g} ± {e['std']:.3g}"
            f" (z={'inf' if e['z'] is None else format(e['z'], '.2f')})"
        )
    elif anomaly.detector == "changepoint":
        why = (
            f"change of mean {e['size']:+.6g} ({e['test']} test, stage {e['stage']},"
            f" alpha {e['alpha']:g})"
        )
    else:
        feature = f", {e['feature']} stood out" if "feature" in e else ""
        why = f"{anomaly.detector} score {anomaly.score:.3g} > {anomaly.threshold:.3g}{feature}"
    return f"{anomaly.measurement} {format_key(anomaly.key)} {who}: {why}"
