"""The per-record loops of the z-score detector, compiled with numba.

Kept apart from the rules' documentation in :mod:`netsentry.detect.zscore`; each loop
is the plain statement of a rule, one record at a time, without Python overhead.

In memory an entity is one 64-byte row of an int64 matrix ``ints`` (one cache line), read
as float64 through a view ``floats`` of the same buffer where a column holds a float:

=====  ================  =====================================================
col    holds             as
=====  ================  =====================================================
0      n                 int64: values learned in the baseline
1      mean              float64 (``floats``)
2      m2                float64 (``floats``): sum of squared deviations
3      pending_n         int64: values in the candidate regime
4      streak            int64: consecutive checks ending on a flagged value
5      last trusted t    int64 scratch during ``learn`` (``UNTOUCHED`` outside)
6      last flagged t    int64 scratch during ``learn``
7      (spare)
=====  ================  =====================================================

The candidate regime's mean and m2 live in a separate float64 matrix ``cand`` (n, 2): only
flagged values and adoptions touch it.
"""

from __future__ import annotations

import numba
import numpy as np

from netsentry.detect.keyindex import find

WIDTH = 8
N, MEAN, M2, PN, STREAK, LAST_TRUSTED, LAST_FLAGGED = range(7)
UNTOUCHED = np.iinfo(np.int64).min
NEVER = np.iinfo(np.int64).min + 1


TWO_SIDED, GREATER, LESS = 0, 1, 2


@numba.njit(cache=True, nogil=True)
def zscores(
    table: np.ndarray,
    bits: int,
    keys: np.ndarray,
    x: np.ndarray,
    ints: np.ndarray,
    floats: np.ndarray,
    min_count: int,
    sign: int,
) -> np.ndarray:
    """z of each record against its entity's baseline (0 while learning or unknown).

    The key lookup is fused in (one pass); ``sign`` turns z into the score: ``|z|``
    (``TWO_SIDED``), ``z`` (``GREATER``) or ``-z`` (``LESS``).
    """
    out = np.zeros(keys.shape[0])
    for i in range(keys.shape[0]):
        r = find(table, keys[i], bits)[0]
        if r < 0:
            continue
        n = ints[r, N]
        if n < min_count:
            continue
        dev = x[i] - floats[r, MEAN]
        sd = np.sqrt(max(floats[r, M2], 0.0) / (n - 1))
        z = dev / sd if sd > 0 else (0.0 if dev == 0 else (np.inf if dev > 0 else -np.inf))
        out[i] = abs(z) if sign == TWO_SIDED else (z if sign == GREATER else -z)
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _welford(n: int, mean: float, m2: float, x: float) -> tuple[int, float, float]:
    n += 1
    delta = x - mean
    mean += delta / n
    return n, mean, m2 + delta * (x - mean)


@numba.njit(cache=True, nogil=True)
def learn(
    rows: np.ndarray,
    t: np.ndarray,
    x: np.ndarray,
    trusted: np.ndarray,
    ints: np.ndarray,
    floats: np.ndarray,
    cand: np.ndarray,
    adapt_after: int,
    min_count: int,
) -> np.ndarray:
    """Fold one check into the state; return the rows that were rebaselined.

    Trusted records update the baseline (Welford); flagged ones the candidate regime.
    Per touched entity: if its latest record is flagged the streak grows, otherwise the
    candidate is dropped; a candidate that lasted ``adapt_after`` checks with at least
    ``min_count`` values becomes the baseline.
    """
    touched = np.empty(rows.shape[0], dtype=np.int64)
    count = 0
    for i in range(rows.shape[0]):
        if not np.isfinite(x[i]):
            continue
        r = rows[i]
        if ints[r, LAST_TRUSTED] == UNTOUCHED:
            ints[r, LAST_TRUSTED] = NEVER
            ints[r, LAST_FLAGGED] = NEVER
            touched[count] = r
            count += 1
        if trusted[i]:
            ints[r, N], floats[r, MEAN], floats[r, M2] = _welford(
                ints[r, N], floats[r, MEAN], floats[r, M2], x[i]
            )
            if t[i] > ints[r, LAST_TRUSTED]:
                ints[r, LAST_TRUSTED] = t[i]
        else:
            ints[r, PN], cand[r, 0], cand[r, 1] = _welford(
                ints[r, PN], cand[r, 0], cand[r, 1], x[i]
            )
            if t[i] > ints[r, LAST_FLAGGED]:
                ints[r, LAST_FLAGGED] = t[i]
    adopted = np.empty(count, dtype=np.int64)
    n_adopted = 0
    for j in range(count):
        r = touched[j]
        if ints[r, LAST_FLAGGED] > ints[r, LAST_TRUSTED]:
            ints[r, STREAK] = min(ints[r, STREAK] + 1, 32767)
            if ints[r, STREAK] >= adapt_after and ints[r, PN] >= min_count:
                ints[r, N], floats[r, MEAN], floats[r, M2] = ints[r, PN], cand[r, 0], cand[r, 1]
                adopted[n_adopted] = r
                n_adopted += 1
                ints[r, PN], ints[r, STREAK], cand[r, 0], cand[r, 1] = 0, 0, 0.0, 0.0
        elif ints[r, PN] != 0 or ints[r, STREAK] != 0:
            ints[r, PN], ints[r, STREAK], cand[r, 0], cand[r, 1] = 0, 0, 0.0, 0.0
        ints[r, LAST_TRUSTED] = UNTOUCHED
        ints[r, LAST_FLAGGED] = UNTOUCHED
    return adopted[:n_adopted]
