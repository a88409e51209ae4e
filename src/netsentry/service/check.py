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
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from netsentry.config import DetectionSettings
from netsentry.detect.threshold import Tolerance
from netsentry.detect.zscore import ZScore
from netsentry.keys import format_key
from netsentry.model import KEY_TAGS, Anomaly, Batch
from netsentry.respond.outbox import enqueue
from netsentry.series import CounterIncrease, CreatedTracker, GaugePassThrough, family, kind_of
from netsentry.store.sqlite import ConcurrentUpdateError, Store

INBOX = "inbox"
_IDS = uuid.UUID("6b3f0a52-8c1e-4d7a-9f5e-2a4c1b7d9e30")


def anomaly_id(detector: str, measurement: str, key: int, time_ns: int) -> str:
    return str(uuid.uuid5(_IDS, f"{detector}|{measurement}|{key:016x}|{time_ns}"))


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
    watermark_from: int = 0
    watermark_to: int = 0
    duration_s: float = 0.0
    tolerance: float = 0.0
    per_measurement: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Outcome:
    anomalies: list[Anomaly]
    states: dict[tuple[str, str], dict[str, Any]]
    versions: dict[tuple[str, str], int] = field(default_factory=dict)


def _new_entity_anomalies(sub: Batch, known: pl.Series) -> list[Anomaly]:
    first = (
        sub.frame.filter(~pl.col("key").is_in(known.implode()))
        .sort("time")
        .unique(subset=["key"], keep="first", maintain_order=True)
    )
    return [
        Anomaly(
            time=row["time"],
            measurement=row["measurement"],
            key=row["key"],
            value=row["value"],
            score=float("nan"),
            threshold=float("nan"),
            detector="new_entity",
            explanation={
                "rule": "entity never seen before in this measurement",
                "value": row["value"],
            },
            tags={t: row[t] for t in KEY_TAGS},
            id=anomaly_id("new_entity", row["measurement"], row["key"], row["time"]),
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
            Anomaly(
                time=row["time"],
                measurement=row["measurement"],
                key=row["key"],
                value=row["value"],
                score=abs(z),
                threshold=tolerance,
                detector="zscore",
                explanation={
                    "value": row["value"],
                    "series": what,
                    "mean": row["mean"],
                    "std": row["std"],
                    "n": row["n"],
                    "z": z if np.isfinite(z) else None,
                    "zero_variance": row["std"] == 0,
                    "tolerance": tolerance,
                },
                tags={t: row[t] for t in KEY_TAGS},
                id=anomaly_id("zscore", row["measurement"], row["key"], row["time"]),
            )
        )
    return out


def _load(component: Any, store: Store, name: str, measurement: str, outcome: _Outcome) -> Any:
    state, version = store.load_state(name, measurement)
    outcome.versions[(name, measurement)] = version
    if state is not None:
        component.load_state(state)
    return component


def detect(
    batch: Batch, store: Store, settings: DetectionSettings, report: CheckReport
) -> _Outcome:
    """Score and learn every measurement of ``batch`` (no writes: see :func:`run_check`)."""
    threshold = Tolerance(settings.tolerance)
    interval_ns = int(settings.counter_interval_s * 1e9)
    outcome = _Outcome([], {})
    resets: dict[str, pl.DataFrame] = {}
    # *_created first: its resets feed the matching *_total counter.
    order = sorted(batch.measurements(), key=lambda m: (kind_of(m) != "created", m))
    for measurement in order:
        sub, kind = batch.only(measurement), kind_of(measurement)
        stats = report.per_measurement.setdefault(measurement, {"records": len(sub)})
        if kind == "created":
            # (no new-entity report here: the family's *_total makes it)
            tracker = _load(CreatedTracker(), store, "created", measurement, outcome)
            resets[family(measurement)], progress = tracker.resets(sub)
            outcome.states[("created", measurement)] = tracker.state_dict()
            report.late += progress.late
            report.resets += progress.resets
            continue
        transform: CounterIncrease | GaugePassThrough
        if kind == "counter":
            transform = _load(CounterIncrease(interval_ns), store, "counter", measurement, outcome)
        else:
            transform = _load(GaugePassThrough(), store, "gauge", measurement, outcome)
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

        detector = _load(
            ZScore(
                min_count=settings.min_count,
                alternative=settings.alternative,
                adapt_after=settings.adapt_after,
            ),
            store,
            "zscore",
            measurement,
            outcome,
        )
        scores = detector.score(values)
        flags = threshold.flags(scores)
        flagged = Batch(values.frame.filter(pl.Series(flags)))
        found = _zscore_anomalies(flagged, detector.baseline(flagged), settings.tolerance, what)
        judged = int((~detector.learning(values)).sum())
        detector.learn(values, ~flags)
        outcome.states[("zscore", measurement)] = detector.state_dict()
        outcome.anomalies += new + found
        report.judged += judged
        report.rebaselined += len(detector.rebaselined_)
        stats.update(
            judged=judged,
            anomalies=len(found),
            new_entities=len(new),
            rebaselined=len(detector.rebaselined_),
        )
    report.new_entities = sum(a.detector == "new_entity" for a in outcome.anomalies)
    report.anomalies = len(outcome.anomalies)
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
    if anomaly.detector == "new_entity":
        why = "new entity"
    else:
        e = anomaly.explanation
        why = (
            f"value {e['value']:.6g} vs mean {e['mean']:.6g} ± {e['std']:.3g}"
            f" (z={'inf' if e['z'] is None else format(e['z'], '.2f')})"
        )
    return f"{anomaly.measurement} {format_key(anomaly.key)} {who}: {why}"
