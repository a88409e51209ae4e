"""Machine-learning detectors: ROC-AUC on ODDS http and NSL-KDD, EM/MV against ROC,
and the batch detectors' cost on 1M rows against plain scikit-learn calls, same run.

    .venv/bin/python bench/bench_ml.py              # everything (needs ../shared/data)
    .venv/bin/python bench/bench_ml.py --quick      # the cuts in tests/data, no 1M timing

Settings, each printed with its figures:

* batch detectors (Isolation Forest, LOF, One-Class SVM) fit on a seeded reservoir of
  ``capacity`` rows, as a segment does in the service, and score every row;
* ODDS http is unsupervised (fit on the data, attacks included); NSL-KDD is novelty
  detection (fit on the normal connections of KDDTrain+_20Percent, score KDDTest+);
* streaming detectors run prequentially in the data's order (score, then learn): HST
  (ours and river's, via bench_hst.py), the online OCSVM (ours and river's
  ``anomaly.OneClassSVM`` with its documented defaults), and the z-score;
* EM/MV (Goix 2016) against ROC-AUC: ``netsentry.evaluate.evaluate`` with the paper's
  settings (100,000 uniform points, 50 draws of 5 features above 8 features).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from river import anomaly
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM

sys.path.insert(0, str(Path(__file__).parent))
from bench_hst import load as load_scaled
from bench_hst import river_prequential
from bench_hst import run as run_hst
from netsentry.detect.batch import (
    IsolationForestDetector,
    LocalOutlierFactorDetector,
    OneClassSVMDetector,
    SegmentDetector,
)
from netsentry.detect.hst import HalfSpaceTrees
from netsentry.detect.ocsvm_online import OnlineOneClassSVM
from netsentry.detect.segment_features import reservoir_update, segment_features
from netsentry.evaluate import (
    Dataset,
    agreement,
    evaluate,
    evaluate_stream,
    load_nsl_kdd,
    load_odds_http,
    nsl_kdd_field_names,
)
from netsentry.model import Batch

ROOT = Path(__file__).parent.parent
SHARED = ROOT.parent / "shared" / "data"
TESTS = ROOT / "tests" / "data"
KINDS: list[type[SegmentDetector]] = [
    IsolationForestDetector,
    LocalOutlierFactorDetector,
    OneClassSVMDetector,
]
pl.Config.set_tbl_rows(200)
pl.Config.set_tbl_cols(20)
pl.Config.set_tbl_width_chars(160)


def batch_auc(data: Dataset, capacity: int) -> None:
    """ROC-AUC of each batch detector fit on a reservoir of the training rows."""
    train = data.x if data.train is None else data.x[data.train]
    test = slice(None) if data.train is None else ~data.train
    assert data.labels is not None
    sample = reservoir_update(
        np.zeros((0, train.shape[1])), 0, train, capacity, np.random.default_rng(0)
    )
    for cls in KINDS:
        start = time.perf_counter()
        scores = cls(capacity=capacity).fit_scorer(sample, random_state=1)(data.x[test])
        took = time.perf_counter() - start
        auc = roc_auc_score(data.labels[test], scores)
        print(f"  {cls.name:<8} fit on {len(sample):,} rows: ROC-AUC {auc:.4f}  ({took:.1f} s)")


def river_ocsvm(x: np.ndarray, labels: np.ndarray, ours_scores: np.ndarray, ours_s: float) -> None:
    scores, river_s = river_prequential(anomaly.OneClassSVM(), x)
    print(
        f"  online OCSVM: netsentry {len(x) / ours_s:>10,.0f}/s AUC "
        f"{roc_auc_score(labels, ours_scores):.4f} | river OneClassSVM (linear) "
        f"{len(x) / river_s:>9,.0f}/s AUC {roc_auc_score(labels, scores):.4f}"
    )


def streaming(data: Dataset, out: Path) -> None:
    report = evaluate_stream(data, out / f"stream-{data.name}", window=20_000)
    print(report.table.select("detector", "roc_auc", "window_median", "window_min", "rows_per_s"))


def odds_http(path: Path, out: Path, capacity: int) -> None:
    data = load_odds_http(path)
    assert data.labels is not None
    print(f"\n== ODDS {path.name}: {len(data):,} rows, {int(data.labels.sum()):,} attacks")
    batch_auc(data, capacity)
    x, labels = load_scaled(path)
    for n_trees, height, window in ((25, 15, 250),):
        run_hst(x, labels, n_trees, height, window)  # one seed each, river beside ours
        aucs = [
            roc_auc_score(
                labels,
                HalfSpaceTrees(
                    n_trees=n_trees, height=height, window_size=window, seed=seed
                ).score_learn(x),
            )
            for seed in range(5)
        ]
        print(f"  HST, our trees for seeds 0..4: ROC-AUC {np.round(aucs, 4).tolist()}")
    svm = OnlineOneClassSVM(seed=1)
    start = time.perf_counter()
    scores = svm.score_learn(x)
    river_ocsvm(x, labels, scores, time.perf_counter() - start)
    streaming(data, out)
    report = evaluate(data, out / "em-mv-http", max_test=20_000)
    print("  EM/MV (random half split):")
    print(report.table.drop("train_rows", "test_rows"))


def nsl_kdd(folder: Path, train: str, test: str, fields: Path, out: Path, capacity: int) -> None:
    data = load_nsl_kdd(folder / train, folder / test, nsl_kdd_field_names(fields))
    assert data.labels is not None and data.train is not None
    print(
        f"\n== NSL-KDD: fit on {int(data.train.sum()):,} normal connections of {train}, "
        f"score the {int((~data.train).sum()):,} of {test} "
        f"({int(data.labels[~data.train].sum()):,} attacks)"
    )
    batch_auc(Dataset(data.name, data.x, data.labels, None, data.train), capacity)
    streaming(data, out)  # the normal training part first, learned, not judged
    report = evaluate(data, out / "em-mv-nsl-kdd", min_rows=200)
    print("  EM/MV per service (segments with >= 200 training and test rows):")
    print(report.table.drop("train_rows"))
    print(agreement(report.table))


def million_rows(capacity: int) -> None:
    """learn + score of 1M rows through the detector against the same sklearn calls."""
    rng = np.random.default_rng(0)
    n = 1_000_000
    batch = Batch.from_columns(
        np.arange(n) * 3_600_000_000_000 // 1000,
        ["bytes"] * n,
        rng.lognormal(8, 1, n),
        {"service": ["web"] * n, "src": rng.integers(0, 1000, n).astype(str)},
    )
    print(f"\n== 1M rows, one segment, reservoir {capacity:,} rows")
    start = time.perf_counter()
    x = segment_features(batch)
    features_s = time.perf_counter() - start
    print(f"  features of 1M rows: {features_s:.2f} s (inside 'netsentry' below, twice)")
    for cls in KINDS:
        det = cls(capacity=capacity, seed=0)
        start = time.perf_counter()
        det.learn(batch, np.ones(n, dtype=bool))
        learn_s = time.perf_counter() - start
        start = time.perf_counter()
        det.score(batch)
        score_s = time.perf_counter() - start
        sample = det.state_dict()["sample"]
        plain = {
            "iforest": lambda: IsolationForest(max_samples=256, random_state=0),
            "lof": lambda: LocalOutlierFactor(n_neighbors=20, novelty=True),
            "ocsvm": lambda: OneClassSVM(nu=0.1, gamma="scale"),
        }[cls.name]()
        scaled = cls.name != "iforest"
        center, scale = sample.mean(axis=0), np.where(sample.std(axis=0) > 0, sample.std(axis=0), 1)
        start = time.perf_counter()
        plain.fit((sample - center) / scale if scaled else sample)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        plain.score_samples((x - center) / scale if scaled else x)
        plain_score_s = time.perf_counter() - start
        line = (
            f"  {cls.name:<8} netsentry learn {learn_s:6.2f} s + score {score_s:6.2f} s = "
            f"{learn_s + score_s:6.2f} s | scikit-learn fit {fit_s:6.2f} s + score_samples "
            f"{plain_score_s:6.2f} s = {fit_s + plain_score_s:6.2f} s"
        )
        if cls.name == "iforest":
            whole = IsolationForest(max_samples=256, random_state=0)
            start = time.perf_counter()
            whole.fit(x).score_samples(x)
            line += f" | sklearn fit+score on all 1M: {time.perf_counter() - start:.2f} s"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--capacity", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: temp)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_ml-"))
    full = not args.quick and (SHARED / "odds" / "http.csv.gz").exists()
    print(f"reports under {out}")
    if full:
        odds_http(SHARED / "odds" / "http.csv.gz", out, args.capacity)
        nsl = SHARED / "nsl_kdd"
        nsl_kdd(
            nsl,
            "KDDTrain+_20Percent.txt",
            "KDDTest+.txt",
            nsl / "Field Names.csv",
            out,
            args.capacity,
        )
        million_rows(args.capacity)
    else:
        odds_http(TESTS / "odds_http_460k_520k.csv.gz", out, args.capacity)
        nsl_kdd(
            TESTS,
            "nsl_kdd_train20_head6000.txt.gz",
            "nsl_kdd_test_head4000.txt.gz",
            TESTS / "nsl_kdd_field_names.csv",
            out,
            args.capacity,
        )


if __name__ == "__main__":
    main()
