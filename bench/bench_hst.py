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
import time
from pathlib import Path
from typing import Any

import numpy as np
from river import anomaly
from sklearn.metrics import roc_auc_score

from netsentry.detect.hst import HalfSpaceTrees
from netsentry.evaluate import load_odds_http

ROOT = Path(__file__).parent.parent
FULL = ROOT.parent / "shared" / "data" / "odds" / "http.csv.gz"
CUT = ROOT / "tests" / "data" / "odds_http_460k_520k.csv.gz"


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """ODDS http with each feature scaled to [0, 1], and its labels."""
    data = load_odds_http(path)
    low, high = data.x.min(axis=0), data.x.max(axis=0)
    return (data.x - low) / (high - low), data.labels


def river_prequential(model: Any, x: np.ndarray) -> tuple[np.ndarray, float]:
    """A river detector's scores, point by point (score, then learn), and the seconds."""
    points = [dict(enumerate(row)) for row in x.tolist()]
    scores = np.empty(len(points))
    start = time.perf_counter()
    for i, point in enumerate(points):
        scores[i] = model.score_one(point)
        model.learn_one(point)
    return scores, time.perf_counter() - start


def run(x: np.ndarray, labels: np.ndarray, n_trees: int, height: int, window: int) -> None:
    ours = HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window, seed=1)
    ours.score_learn(x[:10])  # compile both kernels outside the timing
    ours.score_learn(x[:5000])
    ours = HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window, seed=1)
    start = time.perf_counter()
    our_scores = ours.score_learn(x)
    ours_s = time.perf_counter() - start

    river = anomaly.HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window, seed=1)
    river_scores, river_s = river_prequential(river, x)
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
