"""The per-record loop of the streaming change-point detector, compiled with numba.

Kept apart from the rules' documentation in :mod:`~.detector`. Per entity the state is
one row of three flat arrays:

* ``values[r, :]`` and ``times[r, :]``: a ring buffer of the last ``W`` values of the
  entity's *current regime* and their times; the point with sequence number ``s``
  (0-based count of the entity's points) sits in slot ``s mod W``;
* ``ints[r, :]``: the counters below.

=====  ===========  ===================================================================
col    name         holds
=====  ===========  ===================================================================
0      SEEN         points the entity has had in all
1      LENGTH       points of the current regime in the ring (at most ``W``)
2      STREAK       consecutive points whose window exceeded C(1)
3      REGIME_T     time of the first point of the current regime
4      BLOCK_N      points in the current stage-2 block
5      BLOCK_Z      stage-1 triggers (confirmed changes) in the current block
6      BLOCK_FLAG   1 when stage 2 fired in the current block (kept out of the baseline)
=====  ===========  ===================================================================

A batch is processed entity by entity, in time order within an entity: the entity's
regime is copied out of the ring into a scratch line, each new point is appended and
the window ending at it (the last ``W`` points of the regime) is tested. Scoring runs
the same loop without writing the state back, so a score is exactly what learning all
rows would see.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from netsentry.detect.changepoint.distribution import distribution_split_test
from netsentry.detect.changepoint.statistic import TWO_SIDED, exceedance, split_test

WIDTH = 8
SEEN, LENGTH, STREAK, REGIME_T, BLOCK_N, BLOCK_Z, BLOCK_FLAG = range(7)
NONE = np.iinfo(np.int64).min
MEAN_TEST, DISTRIBUTION_TEST = 0, 1
#: Columns of the alarm matrices returned by :func:`run`.
A_GROUP, A_TIME, A_DETECTED, A_TEST, A_STAGE, A_TRIGGERS = range(6)
A_SIZE, A_STD_RATIO, A_EXCEEDANCE = range(3)


@numba.njit(cache=True, nogil=True)
def _moments(x: np.ndarray) -> tuple[float, float]:
    n = x.shape[0]
    mean = 0.0
    for i in range(n):
        mean += x[i]
    mean /= n
    ss = 0.0
    for i in range(n):
        ss += (x[i] - mean) ** 2
    return mean, math.sqrt(ss / (n - 1)) if n > 1 else 0.0


@numba.njit(cache=True, nogil=True)
def _insert(ordered: np.ndarray, size: int, v: float) -> None:
    """Insert ``v`` into the sorted ``ordered[:size]`` (one slot must be free)."""
    i = np.searchsorted(ordered[:size], v)
    for q in range(size, i, -1):
        ordered[q] = ordered[q - 1]
    ordered[i] = v


@numba.njit(cache=True, nogil=True)
def _remove(ordered: np.ndarray, size: int, v: float) -> None:
    """Remove one ``v`` from the sorted ``ordered[:size]``."""
    i = np.searchsorted(ordered[:size], v)
    for q in range(i, size - 1):
        ordered[q] = ordered[q + 1]


@numba.njit(cache=True, nogil=True)
def run(
    order: np.ndarray,
    group: np.ndarray,
    group_rows: np.ndarray,
    x: np.ndarray,
    t: np.ndarray,
    values: np.ndarray,
    times: np.ndarray,
    ints: np.ndarray,
    params: np.ndarray,
    c_mean: np.ndarray,
    commit: bool,
    scores: np.ndarray,
) -> tuple[int, np.ndarray, np.ndarray, int, np.ndarray]:
    """Test every new point of a batch; fill ``scores``; return alarms and closed blocks.

    ``order``: batch rows sorted by entity then time; ``group[i]``: the entity of row
    ``i`` (0..G-1); ``group_rows[g]``: its state row, -1 for an entity without state.
    ``params``: min_count, delta, side, long_run, cells, c_dist (one indicator's critical
    value), adapt_after, block_len, stage-2 threshold C(2) (inf while the baseline warms
    up); ``c_mean[N]`` the mean test's critical value for a window of N points.

    Returns ``(alarm count, alarm ints, alarm floats, block count, blocks)`` where a
    block row is ``(triggers, stage 2 fired)`` for each stage-2 block that closed.
    """
    min_count = int(params[0])
    delta = params[1]
    side = int(params[2])
    long_run = params[3] != 0.0
    cells = int(params[4])
    c_dist = params[5]
    adapt_after = int(params[6])
    block_len = int(params[7])
    threshold2 = params[8]
    use_dist = cells > 0 and side == TWO_SIDED
    width = values.shape[1]
    n = order.shape[0]
    buf = np.empty(width + n)
    buf_t = np.empty(width + n, dtype=np.int64)
    ordered = np.empty(width + 1)  # the window, sorted (for the quantile cells)
    alarm_i = np.empty((n, 6), dtype=np.int64)
    alarm_f = np.empty((n, 3))
    blocks = np.empty((n + group_rows.shape[0], 2), dtype=np.int64)
    n_alarms = 0
    n_blocks = 0
    i = 0
    while i < n:
        g = group[order[i]]
        j = i
        while j < n and group[order[j]] == g:
            j += 1
        r = group_rows[g]
        seen, length, streak, regime_t, block_n, block_z, block_flag = 0, 0, 0, NONE, 0, 0, 0
        if r >= 0:
            seen, length, streak = ints[r, SEEN], ints[r, LENGTH], ints[r, STREAK]
            regime_t, block_n = ints[r, REGIME_T], ints[r, BLOCK_N]
            block_z, block_flag = ints[r, BLOCK_Z], ints[r, BLOCK_FLAG]
            for q in range(length):
                slot = (seen - length + q) % width
                buf[q] = values[r, slot]
                buf_t[q] = times[r, slot]
        start, end = 0, length
        sorted_lo = 0  # ordered holds buf[sorted_lo:end], sorted
        if use_dist:
            ordered[:length] = np.sort(buf[:length])
        for k in range(i, j):
            row = order[k]
            v = x[row]
            scores[row] = 0.0
            if not np.isfinite(v):
                continue
            buf[end] = v
            buf_t[end] = t[row]
            end += 1
            seen += 1
            if regime_t == NONE:
                regime_t = t[row]
            lo = max(start, end - width)
            part = buf[lo:end]
            if use_dist:
                if lo - sorted_lo > 1:  # the regime restarted: sort the new window once
                    ordered[: end - lo] = np.sort(part)
                else:
                    _insert(ordered, end - 1 - sorted_lo, v)
                    if lo > sorted_lo:
                        _remove(ordered, end - sorted_lo, buf[sorted_lo])
                sorted_lo = lo
            stat, n_star, sigma = split_test(part, min_count, delta, side, long_run, 0)
            ratio = exceedance(stat, sigma, c_mean[end - lo])
            test = MEAN_TEST
            if use_dist:
                d_ratio, d_index, _ = distribution_split_test(
                    part, ordered[: end - lo], cells, min_count, delta, long_run, c_dist
                )
                if d_ratio > ratio:
                    ratio, n_star, test = d_ratio, d_index, DISTRIBUTION_TEST
            scores[row] = ratio
            block_n += 1
            streak = streak + 1 if ratio > 1.0 else 0
            if streak >= adapt_after and n_star > 0:
                cut = lo + n_star
                mean_before, sd_before = _moments(buf[lo:cut])
                mean_after, sd_after = _moments(buf[cut:end])
                block_z += 1
                stage = 1
                if block_z > threshold2:
                    stage = 2
                    block_flag = 1
                alarm_i[n_alarms, A_GROUP] = g
                alarm_i[n_alarms, A_TIME] = buf_t[cut]
                alarm_i[n_alarms, A_DETECTED] = t[row]
                alarm_i[n_alarms, A_TEST] = test
                alarm_i[n_alarms, A_STAGE] = stage
                alarm_i[n_alarms, A_TRIGGERS] = block_z
                alarm_f[n_alarms, A_SIZE] = mean_after - mean_before
                if sd_before > 0:
                    alarm_f[n_alarms, A_STD_RATIO] = sd_after / sd_before
                else:
                    alarm_f[n_alarms, A_STD_RATIO] = 1.0 if sd_after == 0 else np.inf
                alarm_f[n_alarms, A_EXCEEDANCE] = ratio
                n_alarms += 1
                start = cut
                regime_t = buf_t[cut]
                streak = 0
            if block_n >= block_len:
                blocks[n_blocks, 0] = block_z
                blocks[n_blocks, 1] = block_flag
                n_blocks += 1
                block_n, block_z, block_flag = 0, 0, 0
        if commit and r >= 0:
            keep = min(width, end - start)
            for q in range(keep):
                slot = (seen - keep + q) % width
                values[r, slot] = buf[end - keep + q]
                times[r, slot] = buf_t[end - keep + q]
            ints[r, SEEN], ints[r, LENGTH], ints[r, STREAK] = seen, keep, streak
            ints[r, REGIME_T], ints[r, BLOCK_N] = regime_t, block_n
            ints[r, BLOCK_Z], ints[r, BLOCK_FLAG] = block_z, block_flag
        i = j
    return n_alarms, alarm_i[:n_alarms], alarm_f[:n_alarms], n_blocks, blocks[:n_blocks]
