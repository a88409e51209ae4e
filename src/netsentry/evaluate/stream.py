"""``netsentry evaluate --stream``: prequential ROC-AUC over time for the streaming detectors.

The stream is cut into checks (``frequency_hours`` of a Batch, ``chunk`` rows of a
Dataset). At every check each detector first scores the check's rows with what it
knew before them, then learns them (prequential, "test then train"): Half-Space Trees
and the online One-Class SVM learn every row, the z-score only the rows it did not flag
(its rule). ROC-AUC is computed over all scored rows and over sliding windows of
``window`` rows (step ``window // 2``), where a window holds both classes. A Dataset's
``train`` rows (NSL-KDD's normal training connections) are learned but not judged.

The reference labels are the data's own labels where it has them. Without labels
(telemetry), the reference is the z-score's verdicts (|z| > ``tolerance``), the seed's
method. That is circular, and the report says so: the z-score is then judged against
itself (its ROC-AUC is 1 by construction) and the others only by how much they agree
with it, so a detector that finds what the z-score misses scores *lower*. It measures
agreement with the statistical detector, not detection quality.

Features: a Batch goes through each detector's own features (``value_hour`` for HST and
the online OCSVM, the raw value per entity for the z-score), one instance per
measurement. A Dataset's matrix is min-max scaled to [0, 1] over the whole set for HST
and the OCSVM (as in the HST paper's experiments; a mild look-ahead), and the z-score
keeps one single-entity baseline per feature and scores the largest |z|.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
from sklearn.metrics import roc_auc_score

from netsentry.detect.hst import HalfSpaceTrees
from netsentry.detect.ocsvm_online import OnlineOneClassSVM
from netsentry.detect.threshold import Tolerance
from netsentry.detect.zscore import ZScore
from netsentry.evaluate.datasets import Dataset
from netsentry.evaluate.report import Report, markdown_table, plot_windows
from netsentry.model import Batch

Floats = npt.NDArray[np.float64]
HOUR_NS = 3_600_000_000_000
# one prequential step of one detector: the rows of a check -> their scores (then learned)
Step = Callable[[npt.NDArray[np.int64]], Floats]


def _zscore_matrix(
    x: Floats, rows: npt.NDArray[np.int64], found: list[ZScore], tol: Tolerance
) -> Floats:
    """Largest |z| over features, each a single-entity ZScore; learns the unflagged rows."""
    part = x[rows]
    scores = np.zeros(len(rows))
    batches = []
    for j, det in enumerate(found):
        b = Batch.from_columns(rows, [f"f{j}"] * len(rows), part[:, j], {})
        batches.append(b)
        scores = np.maximum(scores, det.score(b))
    keep = ~tol.flags(scores)
    for det, b in zip(found, batches, strict=True):
        det.learn(b, keep)
    return scores


def _dataset_steps(
    data: Dataset, tol: Tolerance, hst: dict[str, Any], svm: dict[str, Any], seed: int
) -> dict[str, Step]:
    low, high = data.x.min(axis=0), data.x.max(axis=0)
    scaled = (data.x - low) / np.where(high > low, high - low, 1.0)
    tree = HalfSpaceTrees(seed=seed, **hst)
    online = OnlineOneClassSVM(seed=seed, **svm)
    zs = [ZScore() for _ in range(data.x.shape[1])]
    return {
        "hst": lambda rows: tree.score_learn(scaled[rows]),
        "ocsvm_online": lambda rows: online.score_learn(scaled[rows]),
        "zscore": lambda rows: _zscore_matrix(data.x, rows, zs, tol),
    }


def _batch_steps(
    batch: Batch, tol: Tolerance, hst: dict[str, Any], svm: dict[str, Any], seed: int
) -> dict[str, Step]:
    measurement = batch.frame["measurement"].to_numpy()
    models: dict[str, dict[str, Any]] = {
        m: {
            "hst": HalfSpaceTrees(seed=seed, **hst),
            "ocsvm_online": OnlineOneClassSVM(seed=seed, **svm),
            "zscore": ZScore(),
        }
        for m in batch.measurements()
    }

    def step(name: str) -> Step:
        def run(rows: npt.NDArray[np.int64]) -> Floats:
            out = np.zeros(len(rows))
            for m in np.unique(measurement[rows]):
                where = np.flatnonzero(measurement[rows] == m)
                part = Batch(batch.frame[rows[where]])
                det = models[str(m)][name]
                out[where] = det.score(part)
                learn = ~tol.flags(out[where]) if name == "zscore" else np.ones(len(where), bool)
                det.learn(part, learn)
            return out

        return run

    return {name: step(name) for name in ("hst", "ocsvm_online", "zscore")}


def _checks(
    data: Batch | Dataset, chunk: int, frequency_hours: int
) -> Iterator[npt.NDArray[np.int64]]:
    if isinstance(data, Dataset):
        for start in range(0, len(data), chunk):
            yield np.arange(start, min(start + chunk, len(data)))
        return
    period = data.frame["time"].to_numpy() // (frequency_hours * HOUR_NS)
    edges = np.flatnonzero(np.diff(period)) + 1
    yield from np.split(np.arange(len(data)), edges)


def finite(scores: Floats) -> Floats:
    """Scores with ``inf`` (a zero-variance z-score) replaced by a larger finite value."""
    top = float(np.max(scores[np.isfinite(scores)], initial=0.0))
    return np.nan_to_num(scores, posinf=top + 1.0, neginf=-top - 1.0)


def windows_auc(
    truth: npt.NDArray[np.bool_], scores: Floats, window: int
) -> list[tuple[int, float]]:
    """(end row, ROC-AUC) of sliding windows of ``window`` rows, step ``window // 2``."""
    out = []
    scores = finite(scores)
    step = max(1, window // 2)
    for end in range(min(window, len(truth)), len(truth) + step, step):
        end = min(end, len(truth))
        part = slice(max(0, end - window), end)
        if 0 < truth[part].sum() < end - part.start:
            out.append((end, float(roc_auc_score(truth[part], scores[part]))))
        if end == len(truth):
            break
    return out


def evaluate_stream(
    data: Batch | Dataset,
    out_dir: Path,
    *,
    chunk: int = 1000,
    frequency_hours: int = 24,
    window: int = 10_000,
    tolerance: float = 3.0,
    hst: dict[str, Any] | None = None,
    ocsvm: dict[str, Any] | None = None,
    seed: int = 0,
) -> Report:
    """Prequential ROC-AUC of HST, online OCSVM and z-score; writes ``stream.md`` and ``.png``."""
    if isinstance(data, Batch):
        data = Batch(data.frame.sort("time", maintain_order=True))
    tol = Tolerance(tolerance)
    hst, ocsvm = dict(hst or {}), dict(ocsvm or {})
    steps = (
        _dataset_steps(data, tol, hst, ocsvm, seed)
        if isinstance(data, Dataset)
        else _batch_steps(data, tol, hst, ocsvm, seed)
    )
    scores = {name: np.zeros(len(data)) for name in steps}
    seconds = dict.fromkeys(steps, 0.0)
    for rows in _checks(data, chunk, frequency_hours):
        for name, run in steps.items():
            start = time.perf_counter()
            scores[name][rows] = run(rows)
            seconds[name] += time.perf_counter() - start
    labels = data.labels if isinstance(data, Dataset) else None
    if labels is not None:
        truth, reference = labels.astype(bool), "true labels"
    else:
        truth, reference = tol.flags(scores["zscore"]), f"z-score verdicts (|z| > {tolerance})"
    counted = np.ones(len(data), dtype=bool)
    if isinstance(data, Dataset) and data.train is not None:
        counted = ~data.train  # the training part is learned, not judged
    positions = np.flatnonzero(counted)
    truth = truth[counted]
    both = 0 < truth.sum() < len(truth)
    rows_out, window_rows = [], []
    for name, every in scores.items():
        got = finite(every[counted])
        found = windows_auc(truth, got, window)
        window_rows += [
            {"detector": name, "end": int(positions[end - 1]) + 1, "auc": auc} for end, auc in found
        ]
        aucs = np.array([auc for _, auc in found])
        rows_out.append(
            {
                "detector": name,
                "roc_auc": float(roc_auc_score(truth, got)) if both else float("nan"),
                "window_median": float(np.median(aucs)) if len(aucs) else float("nan"),
                "window_min": float(aucs.min()) if len(aucs) else float("nan"),
                "windows": len(aucs),
                "rows_per_s": len(data) / max(seconds[name], 1e-9),
            }
        )
    table = pl.DataFrame(rows_out)
    windows = pl.DataFrame(
        window_rows, schema={"detector": pl.String, "end": pl.Int64, "auc": pl.Float64}
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"windows": plot_windows(windows, out_dir / "stream.png", reference)}
    name = data.name if isinstance(data, Dataset) else "batch"
    markdown = "\n".join(
        [
            f"# Prequential evaluation of {name}\n",
            f"{len(data):,} rows"
            + (
                f" ({len(data) - len(truth):,} of a training part, learned, not judged)"
                if len(truth) < len(data)
                else ""
            )
            + f", {int(truth.sum()):,} positive in the reference ({reference}); ROC-AUC "
            f"over the judged rows and over windows of {window:,} of them.\n",
            markdown_table(table),
            "" if labels is not None else CIRCULAR,
            "\n![ROC-AUC per window](stream.png)\n",
        ]
    )
    files["report"] = out_dir / "stream.md"
    files["report"].write_text(markdown)
    return Report(
        f"evaluate --stream {name}", table, markdown, files, windows=windows, scores=scores
    )


CIRCULAR = (
    "\n**The reference is circular.** Without labels the reference is the z-score's own "
    "verdicts: the z-score is judged against itself (ROC-AUC 1 by construction), and the "
    "other detectors by how much they agree with it. A detector that finds anomalies the "
    "z-score misses is marked down for it. Read this as agreement with the statistical "
    "detector, not as detection quality.\n"
)
