"""The detectors a check runs beside the z-score, on the same series (``detectors``).

Every detector sees what the z-score sees: a measurement's gauge values or counter
increases (:mod:`netsentry.series`). Each scores the batch against its state from before
the check, and its anomalies are stored under its own name with an explanation.

* ``changepoint`` (:class:`~netsentry.detect.changepoint.ChangePoint`) learns every
  valid row, because a change is seen in the very values that make it. A confirmed
  change is an anomaly (when it started, its size and direction, the stage that fired
  and its alpha) and, with ``changepoint_rebaseline``, restarts the entity's z-score
  baseline from the new regime's points (:meth:`ZScore.rebaseline`): that is how the
  z-score accepts a new normal at once instead of flagging it for ever.
* ``hst``, ``ocsvm_online``: streaming learners over :func:`~netsentry.detect.features.
  value_hour`. A score is flagged above the ``ml_quantile`` of their last scores
  (:class:`~netsentry.detect.score_history.ScoreHistory`, out-of-sample scores); they
  learn the rows they did not flag. The history keeps flagged scores too: left out, a
  region the model never learned (an hour of day missing from the reference window,
  say) would stay above a threshold fitted without it for ever.
* ``iforest``, ``lof``, ``ocsvm``: per (measurement, service) segment
  (:mod:`netsentry.detect.batch`), with the entity's z from the z-score's baseline as a
  feature; flagged above the ``ml_quantile`` of the segment's recent scores of rows it
  judged (again out of sample: a One-Class SVM scored on its own training sample would
  flag a fifth of new normal data at 0.99), explained by the feature farthest from the
  segment's sample. They learn the rows they did not flag.

A detector's saved state that no longer fits its configuration (a changed window, say)
is started afresh, and the check report says so (``restarted``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from netsentry.config import DetectionSettings
from netsentry.detect.batch import (
    IsolationForestDetector,
    LocalOutlierFactorDetector,
    OneClassSVMDetector,
    SegmentDetector,
)
from netsentry.detect.changepoint import ChangePoint
from netsentry.detect.features import LOG_SPAN, OnBatches, value_hour
from netsentry.detect.hst import HalfSpaceTrees
from netsentry.detect.ocsvm_online import OnlineOneClassSVM
from netsentry.detect.score_history import ScoreHistory
from netsentry.detect.segment_features import segment_labels
from netsentry.detect.zscore import ZScore
from netsentry.model import Anomaly, Batch
from netsentry.service.states import Outcome, row_anomaly
from netsentry.store.sqlite import Store

STREAMING: dict[str, type[OnBatches]] = {"hst": HalfSpaceTrees, "ocsvm_online": OnlineOneClassSVM}
SEGMENTED: dict[str, type[SegmentDetector]] = {
    "iforest": IsolationForestDetector,
    "lof": LocalOutlierFactorDetector,
    "ocsvm": OneClassSVMDetector,
}


@dataclass
class Series:
    """One measurement's series in one check, and where its results go."""

    measurement: str
    values: Batch
    what: str  # "gauge value" or "increase per 3600 s"
    store: Store
    settings: DetectionSettings
    outcome: Outcome

    def load(self, component: Any, name: str) -> Any:
        return self.outcome.load(
            component, self.store, name, self.measurement, fresh_on_mismatch=True
        )


# -- machine-learned scores -------------------------------------------------------------


def _score_anomalies(
    series: Series,
    name: str,
    flags: npt.NDArray[np.bool_],
    scores: npt.NDArray[np.float64],
    thresholds: npt.NDArray[np.float64],
    explain: list[dict[str, Any]],
) -> list[Anomaly]:
    rows = series.values.frame.filter(pl.Series(flags))
    out = []
    for row, score, threshold, extra in zip(
        rows.iter_rows(named=True), scores[flags], thresholds[flags], explain, strict=True
    ):
        explanation = {
            "value": row["value"],
            "series": series.what,
            "score": float(score),
            "threshold": float(threshold),
            "quantile": series.settings.ml_quantile,
            **extra,
        }
        out.append(row_anomaly(row, name, float(score), float(threshold), explanation))
    return out


def run_streaming(series: Series, name: str) -> list[Anomaly]:
    """Score with a streaming learner, flag above its recent normal scores, learn the rest."""
    detector = series.load(STREAMING[name](), name)
    history = series.load(ScoreHistory(), f"{name}_scores")
    scores = detector.score(series.values)
    threshold = history.threshold(series.settings.ml_quantile)
    if threshold is None:
        flags = np.zeros(len(scores), dtype=bool)
        limits = np.full(len(scores), np.inf)
    else:
        flags, limits = threshold.flags(scores), threshold.threshold(None, len(scores))
    x = value_hour(series.values.where(flags))
    explain = [
        {"features": {"log1p_value": float(v * LOG_SPAN), "hour_utc": round(float(h * 24))}}
        for v, h in x
    ]
    found = _score_anomalies(series, name, flags, scores, limits, explain)
    warm = bool(getattr(detector, "warm_", True))
    detector.learn(series.values, ~flags)
    if warm:  # scores before the first window are 0 by definition, not a reference
        history.update(scores)
    series.outcome.save(name, series.measurement, detector)
    series.outcome.save(f"{name}_scores", series.measurement, history)
    return found


def run_segmented(series: Series, name: str, zscore: ZScore) -> list[Anomaly]:
    """Score with a per-segment model; flag above its segment's recent scores' quantile."""
    detector = series.load(SEGMENTED[name](baseline=zscore), name)
    history = series.load(ScoreHistory(), f"{name}_scores")
    scores = detector.score(series.values)
    judged = detector.judged(series.values)
    groups = segment_labels(series.values)
    threshold = history.threshold(series.settings.ml_quantile)
    if threshold is None:
        limits = np.full(len(scores), np.inf)
        flags = np.zeros(len(scores), dtype=bool)
    else:
        limits = threshold.threshold(groups)
        flags = threshold.flags(scores, groups) & judged
    reasons = detector.explain(series.values.where(flags))
    explain = [
        {"segment": segment, "feature": row["feature"], "deviation": row["deviation"]}
        for segment, row in zip(groups[flags], reasons.iter_rows(named=True), strict=True)
    ]
    found = _score_anomalies(series, name, flags, scores, limits, explain)
    history.update(scores[judged], groups[judged])
    detector.learn(series.values, ~flags)
    series.outcome.save(name, series.measurement, detector)
    series.outcome.save(f"{name}_scores", series.measurement, history)
    return found


# -- change points ------------------------------------------------------------------------


def _changepoint_anomalies(series: Series, alarms: pl.DataFrame) -> list[Anomaly]:
    """One anomaly per confirmed change, valued at the point that confirmed it."""
    frame = series.values.frame.unique(subset=["key", "time"], keep="last")
    rows = alarms.join(frame.rename({"time": "detected_at"}), on=["key", "detected_at"], how="left")
    out = []
    for row in rows.iter_rows(named=True):
        explanation = {
            "value": row["value"],
            "series": series.what,
            "change_moment": row["time"],
            "detected_at": row["detected_at"],
            "size": row["size"],
            "direction": "up" if row["direction"] > 0 else "down",
            "std_ratio": row["std_ratio"],
            "test": row["test"],
            "stage": row["stage"],
            "alpha": row["alpha"],
            "exceedance": row["exceedance"],
            "triggers": row["triggers"],
            "stage2_threshold": row["stage2_threshold"]
            if np.isfinite(row["stage2_threshold"])
            else None,
        }
        out.append(
            row_anomaly(
                {**row, "measurement": series.measurement},
                "changepoint",
                row["exceedance"],
                1.0,
                explanation,
                id_time=row["detected_at"],
            )
        )
    return out


def run_changepoint(series: Series, zscore: ZScore) -> tuple[list[Anomaly], int]:
    """Learn every row; report confirmed changes; restart z-score baselines from them.

    Returns the anomalies and how many z-score baselines were restarted. Call it after
    the z-score learned the batch, so the restart is what the z-score keeps.
    """
    settings = series.settings
    detector = series.load(ChangePoint(**settings.changepoint_params()), "changepoint")
    detector.learn(series.values, np.ones(len(series.values), dtype=bool))
    alarms = detector.changes_
    restarted = 0
    if settings.changepoint_rebaseline and alarms.height:
        regime = detector.regime(alarms["key"].unique().to_numpy())
        ready = regime.filter(pl.col("n") >= settings.min_count)
        restarted = zscore.rebaseline(
            ready["key"].to_numpy(),
            ready["n"].to_numpy(),
            ready["mean"].to_numpy(),
            ready["m2"].to_numpy(),
        )
    series.outcome.save("changepoint", series.measurement, detector)
    return _changepoint_anomalies(series, alarms), restarted
