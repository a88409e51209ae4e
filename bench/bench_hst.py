"""Half-Space Trees: samples per second and ROC-AUC, ours beside river's, same run.

On the ODDS "http" set (567,498 connections, 0.39% attacks, 3 features scaled to
[0, 1]) in its original order, prequential (score, then learn, point by point),
with the same number of trees, height and window on both sides. Each side grows
its own random trees; a test (tests/test_hst.py) shows that on the same trees our
scores equal river's exactly.

    .venv/bin/python bench/bench_hst.py            # whole set (needs ../shared/data)
    .venv/bin/python bench/bench_hst.py --quick    # the 60k-row cut in tests/data
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
from river import anomaly
from sklearn.metrics import roc_auc_score

from netsentry.detect.hst import HalfSpaceTrees

ROOT = Path(__file__).parent.parent
FULL = ROOT.parent / "shared" / "data" / "odds" / "http.csv.gz"
CUT = ROOT / "tests" / "data" / "odds_http_460k_520k.csv.gz"


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt") as text:
        data = np.loadtxt(text, delimiter=",", skiprows=1)
    x, labels = data[:, :3], data[:, 3]
    low, high = x.min(axis=0), x.max(axis=0)
    return (x - low) / (high - low), labels


def run(x: np.ndarray, labels: np.ndarray, n_trees: int, height: int, window: int) -> None:
    ours = HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window, seed=1)
    ours.score_learn(x[:10])  # compile both kernels outside the timing
    ours.score_learn(x[:5000])
    ours = HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window, seed=1)
    start = time.perf_counter()
    our_scores = ours.score_learn(x)
    ours_s = time.perf_counter() - start

    river = anomaly.HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window, seed=1)
    points = [dict(enumerate(row)) for row in x.tolist()]
    river_scores = np.empty(len(points))
    start = time.perf_counter()
    for i, point in enumerate(points):
        river_scores[i] = river.score_one(point)
        river.learn_one(point)
    river_s = time.perf_counter() - start
    print(
        f"trees {n_trees:>2} height {height:>2} window {window}: "
        f"netsentry {len(x) / ours_s:>12,.0f}/s AUC {roc_auc_score(labels, our_scores):.4f} | "
        f"river {len(x) / river_s:>9,.0f}/s AUC {roc_auc_score(labels, river_scores):.4f} | "
        f"x{river_s / ours_s:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    path = CUT if args.quick or not FULL.exists() else FULL
    x, labels = load(path)
    print(f"{path.name}: {len(x):,} points, {int(labels.sum()):,} attacks")
    for n_trees, height, window in ((10, 8, 250), (25, 15, 250)):
        run(x, labels, n_trees, height, window)


if __name__ == "__main__":
    main()
