"""Feedback tuning of device thresholds: seconds and cost for 10k labelled detections.

Two synthetic devices, each scored and flagged at the default thresholds; analysts
label 80% of the flagged windows and half of the missed anomalies, and the history is
the first ``--labelled`` labelled windows:

* ``noisy``: heavy-tailed packet-size and inter-arrival spreads (false positives on
  them) and 5% anomalous windows (one or two features far off, the forest score up);
* ``trade``: anomalies that the noisy size_std catches today and that a quieter
  size_mean would catch if it were lower (a few of them missed today), so clearing
  the false positives means raising one threshold and lowering the other together:
  either move alone costs more than it saves.

Beside the tuner, in the same process, on the same cost and search box: a plain grid
search (``--grid-budget`` evaluations, spread evenly over the thresholds that may
move, the current ones included) and the exact one-threshold-at-a-time polish alone
(no TPE). Last, the route's path on ``noisy``: a store holding the history, then
``tune_device`` (load, tune, write).

    .venv/bin/python bench/bench_tuning.py
    .venv/bin/python bench/bench_tuning.py --labelled 2000 --grid-budget 2000
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from netsentry.devices.feedback_store import tune_device
from netsentry.devices.tuning import (
    DEFAULT_THRESHOLDS,
    Cost,
    CostWeights,
    History,
    Problem,
    flags,
    polish,
    tune,
)
from netsentry.store.sqlite import Store

Z = ("iat_mean", "iat_std", "size_mean", "size_std", "rate", "peak_rate")
HEAVY = ("iat_std", "size_std")
Window = tuple[dict[str, float], bool]  # scores, anomalous


def noisy(rng: np.random.Generator) -> Window:
    anomalous = bool(rng.random() < 0.05)
    scores = {n: float(abs(rng.standard_t(3) * 1.3 if n in HEAVY else rng.normal())) for n in Z}
    scores["forest"] = float(rng.normal(0.45, 0.04))
    if anomalous:
        for n in rng.choice(Z, size=rng.integers(1, 3), replace=False):
            scores[str(n)] = float(rng.uniform(3.0, 9.0))
        scores["forest"] = float(rng.uniform(0.55, 0.8))
    return scores, anomalous


def trade(rng: np.random.Generator) -> Window:
    anomalous = bool(rng.random() < 0.05)
    scores = {n: float(abs(rng.normal())) * 0.5 for n in Z}
    scores["forest"] = 0.45
    scores["size_std"] = float(abs(rng.standard_t(3)))
    if anomalous and rng.random() < 0.05:  # missed today: only size_mean is up a little
        scores["size_std"] = float(rng.uniform(0.0, 3.9))
        scores["size_mean"] = float(rng.uniform(3.8, 3.95))
    elif anomalous:  # caught today by size_std, which the false positives push up
        scores["size_std"] = float(rng.uniform(4.2, 7.0))
        scores["size_mean"] = float(rng.uniform(3.0, 3.8))
    return scores, anomalous


def history_of(
    source: Callable[[np.random.Generator], Window], labelled: int, seed: int
) -> list[tuple[dict[str, float], str | None]]:
    """Scored windows with analyst labels, until ``labelled`` of them carry one."""
    rng = np.random.default_rng(seed)
    out: list[tuple[dict[str, float], str | None]] = []
    count = 0
    while count < labelled:
        scores, anomalous = source(rng)
        flagged = flags(scores, DEFAULT_THRESHOLDS)
        label: str | None = None
        if flagged and rng.random() < 0.8:
            label = "confirmed" if anomalous else "false_positive"
        elif anomalous and not flagged and rng.random() < 0.5:
            label = "missed"
        count += label is not None
        out.append((scores, label))
    return out


def grid(problem: Problem, budget: int) -> tuple[np.ndarray, int]:
    """The best point of a plain grid over the search box (current thresholds included)."""
    directions, low, high = problem.box()
    active = [i for i, d in enumerate(directions) if d != "hold"]
    points = max(2, int(budget ** (1 / max(len(active), 1))) - 1)
    axes = [
        np.unique(np.r_[np.linspace(low[i], high[i], points), problem.theta0[i]]) for i in active
    ]
    best, best_cost = problem.theta0.copy(), problem.total(problem.theta0)
    theta, evaluations = problem.theta0.copy(), 0
    for values in itertools.product(*axes):
        evaluations += 1
        theta[active] = values
        cost = problem.total(theta)
        if cost < best_cost:
            best, best_cost = theta.copy(), cost
    return best, evaluations


def line(name: str, seconds: float, cost: Cost, evaluations: int | str) -> None:
    print(
        f"  {name:<36} {seconds:7.3f} s {evaluations!s:>7} evals  cost {cost.total:8.2f}  "
        f"FP {cost.false_positives:5d}  missed {cost.missed:4d}  anchor {cost.anchor:5.2f}"
    )


def compare(name: str, rows: list[tuple[dict[str, float], str | None]], args: Any) -> None:
    history = History.from_rows([(scores, label, True) for scores, label in rows])
    problem = Problem(history, {}, CostWeights())
    directions, low, high = problem.box()
    active = [i for i, d in enumerate(directions) if d != "hold"]
    print(
        f"{name}: {len(rows)} windows, {len(history)} labelled (false positives "
        f"{int(history.false_positive.sum())}, should fire {int(history.should_fire.sum())}); "
        f"may move: {', '.join(f'{problem.names[i]} ({directions[i]})' for i in active)}"
    )
    line("current thresholds", 0.0, problem.cost(problem.theta0), 1)
    start = time.perf_counter()
    result = tune(history, {}, seed=args.seed, trials=args.trials)
    line("tune: TPE + exact polish", time.perf_counter() - start, result.cost_after, result.trials)
    start = time.perf_counter()
    polished = polish(problem, problem.theta0, active, low, high)
    line("baseline: exact polish alone", time.perf_counter() - start, problem.cost(polished), "-")
    start = time.perf_counter()
    gridded, evaluations = grid(problem, args.grid_budget)
    line("baseline: plain grid", time.perf_counter() - start, problem.cost(gridded), evaluations)
    moved = {n: round(t, 3) for n, t in result.thresholds.items() if t != result.previous[n]}
    print(f"  tuned: {moved}")


def through_the_store(rows: list[tuple[dict[str, float], str | None]], args: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.sqlite")
        with store.transaction() as tx:
            tx.db.execute("INSERT INTO devices VALUES ('cam', 'device', ?, ?)", (os.urandom(32), 0))
            tx.db.executemany(
                "INSERT INTO device_detections (device, time, scores, flagged, label, labelled) "
                "VALUES ('cam', ?, ?, ?, ?, ?)",
                [
                    (i, json.dumps(s), int(flags(s, DEFAULT_THRESHOLDS)), label, label and 1)
                    for i, (s, label) in enumerate(rows)
                ],
            )
        start = time.perf_counter()
        result, _ = tune_device(store, "cam", seed=args.seed, trials=args.trials)
        seconds = time.perf_counter() - start
    line("tune_device: load + tune + write", seconds, result.cost_after, result.trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled", type=int, default=10_000)
    parser.add_argument("--grid-budget", type=int, default=20_000)
    parser.add_argument("--trials", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tune(History.from_rows([({"rate": 5.0}, "false_positive", True)]), {})  # import optuna
    rows = history_of(noisy, args.labelled, args.seed)
    compare("noisy", rows, args)
    through_the_store(rows, args)
    compare("trade", history_of(trade, args.labelled, args.seed), args)


if __name__ == "__main__":
    main()
