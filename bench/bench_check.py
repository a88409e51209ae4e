"""Records per second of a z-score check, beside a plain-Python loop of the same rule.

A check here is what ``run_check`` does per measurement once the data is in memory:
score every record against the statistics from before the check, flag |z| > tolerance,
learn the records that were not flagged. Both sides start from the same warm state
(one learning check over the same entities) and see the same records.

Also reports bytes of detector state per entity (serialized, as stored) and the
end-to-end ``run_check`` throughput through SQLite for the smallest size.

    .venv/bin/python bench/bench_check.py            # 1M and 10M records
    .venv/bin/python bench/bench_check.py --quick    # 1M only
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from netsentry.config import DetectionSettings
from netsentry.detect.threshold import Tolerance
from netsentry.detect.zscore import ZScore
from netsentry.model import KEY_TAGS, SCHEMA, Batch
from netsentry.service.check import run_check
from netsentry.store.sqlite import Store, encode_state

TOLERANCE, MIN_COUNT = 3.0, 8


def make_batch(rows: int, entities: int, seed: int, t0: int = 0, every: bool = False) -> Batch:
    """``rows`` records over ``entities`` keys (each entity at least once with ``every``)."""
    rng = np.random.default_rng(seed)
    keys = np.random.default_rng(12345).integers(0, 2**63, entities, dtype=np.uint64) * 2 + 1
    which = rng.integers(0, entities, rows)
    if every:
        which[:entities] = np.arange(entities)
    values = 1000.0 + (which % 97) * 10.0 + rng.normal(0.0, 5.0, rows)
    spikes = rng.random(rows) < 0.001
    values[spikes] += 500.0
    empty = pl.repeat("", rows, dtype=pl.String, eager=True)
    frame = pl.DataFrame(
        {
            "time": t0 + np.arange(rows, dtype=np.int64),
            "measurement": pl.repeat("m", rows, dtype=pl.String, eager=True),
            "value": values,
            "key": keys[which],
            **{t: empty for t in KEY_TAGS},
        }
    ).select(list(SCHEMA))
    return Batch(frame)


def vectorized_check(detector: ZScore, batch: Batch) -> int:
    flags = Tolerance(TOLERANCE).flags(detector.score(batch))
    detector.learn(batch, ~flags)
    return int(flags.sum())


def plain_state(detector: ZScore) -> dict[int, list[float]]:
    """The same warm state for the plain loop: per key [n, mean, m2]."""
    state = detector.state_dict()
    return {
        k: [float(n), mean, m2]
        for k, n, mean, m2 in zip(
            state["key"].tolist(),
            state["n"].tolist(),
            state["mean"].tolist(),
            state["m2"].tolist(),
            strict=True,
        )
    }


def plain_check(state: dict[int, list[float]], keys: list[int], values: list[float]) -> int:
    """The same rule, one record at a time: score all against the old state, then learn."""
    flagged = []
    for key, x in zip(keys, values, strict=True):
        s = state.get(key)
        bad = False
        if s is not None and s[0] >= MIN_COUNT:
            sd = math.sqrt(s[2] / (s[0] - 1))
            bad = (x != s[1]) if sd == 0 else abs(x - s[1]) / sd > TOLERANCE
        flagged.append(bad)
    for key, x, bad in zip(keys, values, flagged, strict=True):
        if bad:
            continue
        s = state.get(key)
        if s is None:
            state[key] = [1.0, x, 0.0]
        else:
            s[0] += 1
            d = x - s[1]
            s[1] += d / s[0]
            s[2] += d * (x - s[1])
    return sum(flagged)


def run(rows: int, entities: int, repeats: int) -> None:
    # warm state: every entity known with ~10 values, so the check judges (steady state)
    warm = make_batch(max(rows, 10 * entities), entities, seed=1, every=True)
    check = make_batch(rows, entities, seed=2, t0=len(warm))
    detector = ZScore(min_count=MIN_COUNT, adapt_after=10**6)
    detector.learn(warm, np.ones(len(warm), dtype=bool))
    state = plain_state(detector)
    detector.score(make_batch(10, entities, seed=3))  # load the compiled kernels first
    saved = detector.state_dict()
    keys, values = check.frame["key"].to_list(), check.frame["value"].to_list()
    vec_s = loop_s = float("inf")
    for _ in range(repeats):  # best of n on both sides, from the same warm state each time
        detector.load_state(saved)
        start = time.perf_counter()
        ours = vectorized_check(detector, check)
        vec_s = min(vec_s, time.perf_counter() - start)
        fresh = {k: list(v) for k, v in state.items()}
        start = time.perf_counter()
        theirs = plain_check(fresh, keys, values)
        loop_s = min(loop_s, time.perf_counter() - start)
        assert ours == theirs, f"verdicts differ: {ours} vs {theirs}"

    blob = encode_state(detector.state_dict())
    print(
        f"{rows:>11,} records {entities:>9,} entities | netsentry {rows / vec_s:>12,.0f} rec/s"
        f" | plain loop {rows / loop_s:>10,.0f} rec/s | x{loop_s / vec_s:6.1f}"
        f" | state {len(blob) / len(detector):5.1f} B/entity | {ours} flagged (same)"
    )


def end_to_end(rows: int, entities: int) -> None:
    """Ingest into SQLite and run the real check, to show what the store costs."""
    warm = make_batch(10 * entities, entities, 1, every=True)
    check = make_batch(rows, entities, 2, t0=len(warm))
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.sqlite")
        settings = DetectionSettings(min_count=MIN_COUNT)
        store.append(warm)
        run_check(store, settings)
        start = time.perf_counter()
        store.append(check)
        appended = time.perf_counter()
        report = run_check(store, settings)
        done = time.perf_counter()
    print(
        f"end to end, {rows:,} records over {entities:,} entities: append "
        f"{rows / (appended - start):,.0f} rec/s, run_check {rows / (done - appended):,.0f} "
        f"rec/s ({report.anomalies} anomalies)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1M records only")
    args = parser.parse_args()
    sizes = [1_000_000] if args.quick else [1_000_000, 10_000_000]
    for rows in sizes:
        for entities in (10_000, 1_000_000):
            run(rows, entities, repeats=3 if rows <= 1_000_000 else 2)
    end_to_end(1_000_000, 10_000)


if __name__ == "__main__":
    main()
