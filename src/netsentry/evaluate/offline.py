"""``netsentry evaluate``: rank the batch detectors per segment by EM and MV, without labels.

Per segment (a (measurement, service) pair of a Batch, or a Dataset's segment labels):

1. split the rows into a training and a test part: a Dataset's own ``train`` mask when
   it has one; else the earlier half in time for a Batch (deployment: fit on the past,
   judge the future) and a seeded random half for a Dataset (as in Goix's experiments);
2. draw the training sample as the detectors do (a seeded reservoir of ``max_train``
   rows), and at most ``max_test`` test rows;
3. fit each detector and compute its EM and MV criteria on the test part
   (:func:`netsentry.detect.selection.compare`), rank them (high EM, low MV) and keep
   the best;
4. where labels exist, also the ROC-AUC of each detector on the same test rows, and
   whether the EM/MV choice agrees with the ROC choice (the criteria's validation).

The report (``report.md``) has the table and ``curves.png`` (EM and MV curves).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import polars as pl
from sklearn.metrics import roc_auc_score

from netsentry.detect.batch import (
    IsolationForestDetector,
    LocalOutlierFactorDetector,
    OneClassSVMDetector,
)
from netsentry.detect.segment_features import (
    Baseline,
    reservoir_update,
    segment_features,
    segment_labels,
)
from netsentry.detect.selection import N_DRAWS, N_GENERATED, Criteria, FitsScorer, compare, rank
from netsentry.evaluate.datasets import Dataset
from netsentry.evaluate.report import Report, kendall_tau, markdown_table, plot_curves
from netsentry.model import Batch

Split = Literal["random", "time"]


def default_models(seed: int = 0) -> dict[str, FitsScorer]:
    """The three batch detectors with their default parameters."""
    return {
        cls.name: cls(seed=seed)
        for cls in (IsolationForestDetector, LocalOutlierFactorDetector, OneClassSVMDetector)
    }


def batch_dataset(batch: Batch, baseline: Baseline | None = None) -> Dataset:
    """A Batch as a Dataset: its segment features, in time order, segment labels per row."""
    order = np.argsort(batch.frame["time"].to_numpy(), kind="stable")
    ordered = Batch(batch.frame[order])
    return Dataset("batch", segment_features(ordered, baseline), segments=segment_labels(ordered))


def _split(
    rows: npt.NDArray[np.int64], data: Dataset, split: Split, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    if data.train is not None:
        return rows[data.train[rows]], rows[~data.train[rows]]
    if split == "random":
        rows = rows[rng.permutation(len(rows))]
    half = len(rows) // 2
    return np.sort(rows[:half]), np.sort(rows[half:])


def evaluate(
    data: Batch | Dataset,
    out_dir: Path,
    *,
    models: Mapping[str, FitsScorer] | None = None,
    baseline: Baseline | None = None,
    split: Split | None = None,
    seed: int = 0,
    min_rows: int = 64,
    max_train: int = 2048,
    max_test: int = 20_000,
    n_generated: int = N_GENERATED,
    n_draws: int = N_DRAWS,
    max_plots: int = 6,
) -> Report:
    """Rank ``models`` per segment by EM/MV, pick the best, write ``report.md`` + ``curves.png``.

    Segments with fewer than ``min_rows`` training or test rows are skipped (and listed).
    """
    dataset = batch_dataset(data, baseline) if isinstance(data, Batch) else data
    split = split or ("time" if isinstance(data, Batch) else "random")
    models = dict(models or default_models(seed))
    rng = np.random.default_rng(seed)
    labels = dataset.segments if dataset.segments is not None else np.full(len(dataset), "all")
    names, inverse = np.unique(labels, return_inverse=True)
    per_segment: dict[str, dict[str, Criteria]] = {}
    rows_out: list[dict[str, object]] = []
    skipped: list[str] = []
    for code, segment in enumerate(names.tolist()):
        train, test = _split(np.flatnonzero(inverse == code), dataset, split, rng)
        if min(len(train), len(test)) < min_rows:
            skipped.append(segment)
            continue
        x_train = reservoir_update(
            np.zeros((0, dataset.x.shape[1])), 0, dataset.x[train], max_train, rng
        )
        test = np.sort(rng.choice(test, max_test, replace=False)) if len(test) > max_test else test
        found = compare(
            models, x_train, dataset.x[test], seed=seed, n_generated=n_generated, n_draws=n_draws
        )
        per_segment[segment] = found
        order = rank(found)
        truth = dataset.labels[test] if dataset.labels is not None else None
        for name, model in models.items():
            auc = float("nan")
            if truth is not None and 0 < truth.sum() < len(truth):
                scores = model.fit_scorer(x_train, random_state=seed)(dataset.x[test])
                auc = float(roc_auc_score(truth, scores))
            rows_out.append(
                {
                    "segment": segment,
                    "detector": name,
                    "em": found[name].em,
                    "mv": found[name].mv,
                    "rank": order.index(name) + 1,
                    "roc_auc": auc,
                    "train_rows": len(train),
                    "test_rows": len(test),
                }
            )
    table = pl.DataFrame(rows_out, schema=_SCHEMA)
    best = {segment: rank(found)[0] for segment, found in per_segment.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"curves": plot_curves(per_segment, out_dir / "curves.png", max_plots)}
    markdown = _markdown(dataset, table, best, skipped, split, n_draws)
    files["report"] = out_dir / "report.md"
    files["report"].write_text(markdown)
    return Report(f"evaluate {dataset.name}", table, markdown, files, best)


_SCHEMA = {
    "segment": pl.String,
    "detector": pl.String,
    "em": pl.Float64,
    "mv": pl.Float64,
    "rank": pl.Int64,
    "roc_auc": pl.Float64,
    "train_rows": pl.Int64,
    "test_rows": pl.Int64,
}


def agreement(table: pl.DataFrame) -> pl.DataFrame:
    """Per segment with labels: do EM, MV and their ranking agree with ROC-AUC?

    Columns: the EM/MV choice, the ROC choice, and Kendall's tau between each
    criterion's order and the ROC order (1 = same order, -1 = reversed).
    """
    out = []
    for (segment,), part in table.filter(pl.col("roc_auc").is_not_nan()).group_by(
        ["segment"], maintain_order=True
    ):
        auc = part["roc_auc"].to_numpy()
        out.append(
            {
                "segment": segment,
                "em_mv_choice": part.sort("rank")["detector"][0],
                "roc_choice": part["detector"][int(np.argmax(auc))],
                "tau_em_roc": kendall_tau(part["em"].to_numpy(), auc),
                "tau_mv_roc": kendall_tau(-part["mv"].to_numpy(), auc),
                "tau_rank_roc": kendall_tau(-part["rank"].to_numpy().astype(float), auc),
            }
        )
    return pl.DataFrame(
        out,
        schema={
            "segment": pl.String,
            "em_mv_choice": pl.String,
            "roc_choice": pl.String,
            "tau_em_roc": pl.Float64,
            "tau_mv_roc": pl.Float64,
            "tau_rank_roc": pl.Float64,
        },
    )


def _markdown(
    data: Dataset,
    table: pl.DataFrame,
    best: dict[str, str],
    skipped: list[str],
    split: Split,
    n_draws: int,
) -> str:
    how = "its training mask" if data.train is not None else f"a {split} half"
    draws = (
        f"{data.x.shape[1]} features, more than 8: EM/MV averaged over {n_draws} draws of 5"
        if data.x.shape[1] > 8
        else f"{data.x.shape[1]} features"
    )
    parts = [
        f"# Detector choice for {data.name}\n",
        f"Excess-Mass (EM, higher is better) and Mass-Volume (MV, lower is better) after "
        f"Goix (2016); train/test split by {how}; {draws}. `rank` orders the detectors "
        f"by the mean of their EM and MV ranks.\n",
        markdown_table(table),
        "\n## Best per segment\n",
        markdown_table(pl.DataFrame({"segment": list(best), "detector": list(best.values())})),
    ]
    agree = agreement(table)
    if agree.height:
        same = int((agree["em_mv_choice"] == agree["roc_choice"]).sum())
        parts += [
            "\n## EM/MV against ROC-AUC (labels)\n",
            f"The label-free choice equals the ROC-AUC choice in {same} of {agree.height} "
            "segments.\n",
            markdown_table(agree, digits=2),
        ]
    if skipped:
        parts.append(f"\nSkipped (too few rows): {', '.join(skipped)}.")
    caption = "EM and MV curves" + (
        " (the first feature draw; the legend has the means over draws)"
        if data.x.shape[1] > 8
        else ""
    )
    parts.append(f"\n![{caption}](curves.png)\n")
    return "\n".join(parts)
