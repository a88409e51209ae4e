"""Points per second of change-point detection for N = 10k, 100k, 1M, beside ruptures.

One series per size: unit Gaussian noise with a mean shift of ±2 every 2,000 points, so
the number of changes grows with N as in a long-running stream. Every method sees the
same series in the same run:

* ours, streaming: ``ChangePoint.learn`` over the whole series (window 168; with and
  without the distribution test), one window test per point: O(N · window);
* ours, offline: ``segment`` (binary segmentation, O(N · bandwidth · log K));
* ruptures ``Binseg`` and ``Pelt`` with the l2 cost (``min_size`` 8, ``jump`` 5, their
  default; penalty ``3·sigma²·ln N``), each in a child process stopped after
  ``--timeout`` seconds: their cost grows faster than N and the larger sizes do not
  finish.

The last column, time per point relative to the smallest size, stays near 1 when the
cost grows linearly with N.

    .venv/bin/python bench/bench_changepoint.py               # 10k, 100k, 1M
    .venv/bin/python bench/bench_changepoint.py --timeout 30
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import numpy as np

from netsentry.detect.changepoint import ChangePoint, segment
from netsentry.model import Batch

SIZES = (10_000, 100_000, 1_000_000)
SPACING = 2_000


def make_series(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    levels = np.cumsum(rng.choice([-2.0, 2.0], size=n // SPACING + 1))
    return np.asarray(rng.normal(size=n) + np.repeat(levels, SPACING)[:n], dtype=np.float64)


def as_batch(x: np.ndarray) -> Batch:
    return Batch.from_columns(np.arange(len(x), dtype=np.int64), ["m"] * len(x), x, {})


Run = Callable[[np.ndarray], tuple[int, float] | None]  # (changes found, seconds)


def streaming(cells: int) -> Run:
    def run(x: np.ndarray) -> tuple[int, float]:
        det, b = ChangePoint(cells=cells), as_batch(x)
        start = time.perf_counter()
        det.learn(b, np.ones(len(b), dtype=bool))
        return len(det.changes_), time.perf_counter() - start

    return run


def offline(x: np.ndarray) -> tuple[int, float]:
    start = time.perf_counter()
    found = len(segment(x, alpha=0.01))
    return found, time.perf_counter() - start


def _ruptures_child(algo: str, x: np.ndarray, out: Connection) -> None:
    import ruptures as rpt

    start = time.perf_counter()
    cls = rpt.Binseg if algo == "Binseg" else rpt.Pelt
    model = cls(model="l2", min_size=8, jump=5).fit(x)
    found = len(model.predict(pen=3.0 * math.log(len(x)))) - 1
    out.send((found, time.perf_counter() - start))


def ruptures(algo: str, timeout: float) -> Run:
    def run(x: np.ndarray) -> tuple[int, float] | None:
        receiver, sender = mp.Pipe(duplex=False)
        child = mp.get_context("fork").Process(target=_ruptures_child, args=(algo, x, sender))
        child.start()
        done = receiver.poll(timeout)
        if not done:
            child.terminate()
            child.join()
            return None
        found, seconds = receiver.recv()
        child.join()
        return int(found), float(seconds)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per ruptures run")
    args = parser.parse_args()
    warm = make_series(5_000, seed=1)
    streaming(3)(warm), streaming(0)(warm), offline(warm)  # compile the numba kernels
    methods: dict[str, Run] = {
        "ours, streaming (cells=3)": streaming(3),
        "ours, streaming (cells=0)": streaming(0),
        "ours, offline segment": offline,
        "ruptures Binseg l2": ruptures("Binseg", args.timeout),
        "ruptures PELT l2": ruptures("Pelt", args.timeout),
    }
    print(f"| method | N | true changes | found | seconds | points/s | time/N vs N={SIZES[0]:,} |")
    print("|---|---|---|---|---|---|---|")
    for name, method in methods.items():
        first: float | None = None
        for n in SIZES:
            result = method(make_series(n))
            truth = (n - 1) // SPACING
            if result is None:
                print(f"| {name} | {n:,} | {truth} | - | > {args.timeout:.0f} | - | - |")
                continue
            found, seconds = result
            per_point = seconds / n
            first = per_point if first is None else first
            print(
                f"| {name} | {n:,} | {truth} | {found} | {seconds:.2f} | {n / seconds:,.0f} | "
                f"{per_point / first:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
