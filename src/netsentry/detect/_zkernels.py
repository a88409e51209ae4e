"""The per-record loops of the z-score detector, compiled with numba.

Kept apart from the rules' documentation in :mod:`netsentry.detect.zscore`; each loop
is the plain statement of a rule, one record at a time, without Python overhead.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def baseline(rows: np.ndarray, x: np.ndarray, n: np.ndarray, mean: np.ndarray,
             m2: np.ndarray, min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                      np.ndarray]:
    """Per record: baseline count, mean, std (NaN below 2) and z (0 while learning)."""
    size = rows.shape[0]
    out_n = np.zeros(size, dtype=np.int64)
    out_mean = np.full(size, np.nan)
    out_std = np.full(size, np.nan)
    out_z = np.zeros(size)
    for i in range(size):
        r = rows[i]
        if r < 0:
            continue
        count = n[r]
        out_n[i] = count
        out_mean[i] = mean[r]
        if count > 1:
            out_std[i] = np.sqrt(max(m2[r], 0.0) / (count - 1))
        if count >= min_count:
            dev = x[i] - mean[r]
            sd = out_std[i]
            if sd > 0:
                out_z[i] = dev / sd
            elif dev != 0:
                out_z[i] = np.inf if dev > 0 else -np.inf
    return out_n, out_mean, out_std, out_z


@numba.njit(cache=True, nogil=True)
def _welford(n: np.ndarray, mean: np.ndarray, m2: np.ndarray, r: int, x: float) -> None:
    n[r] += 1
    delta = x - mean[r]
    mean[r] += delta / n[r]
    m2[r] += delta * (x - mean[r])


@numba.njit(cache=True, nogil=True)
def learn(rows: np.ndarray, t: np.ndarray, x: np.ndarray, trusted: np.ndarray,
          n: np.ndarray, mean: np.ndarray, m2: np.ndarray,
          pn: np.ndarray, pmean: np.ndarray, pm2: np.ndarray, streak: np.ndarray,
          adapt_after: int, min_count: int) -> np.ndarray:
    """Fold one check into the state; return the rows that were rebaselined.

    Trusted records update the baseline (Welford); flagged ones the candidate regime.
    Per touched entity: if its latest record is flagged the streak grows, otherwise the
    candidate is dropped; a candidate that lasted ``adapt_after`` checks with at least
    ``min_count`` values becomes the baseline.
    """
    entities = n.shape[0]
    last_trusted = np.full(entities, np.iinfo(np.int64).min)
    last_flagged = np.full(entities, np.iinfo(np.int64).min)
    touched = np.empty(rows.shape[0], dtype=np.int64)
    seen = np.zeros(entities, dtype=np.bool_)
    count = 0
    for i in range(rows.shape[0]):
        if not np.isfinite(x[i]):
            continue
        r = rows[i]
        if not seen[r]:
            seen[r] = True
            touched[count] = r
            count += 1
        if trusted[i]:
            _welford(n, mean, m2, r, x[i])
            last_trusted[r] = max(last_trusted[r], t[i])
        else:
            _welford(pn, pmean, pm2, r, x[i])
            last_flagged[r] = max(last_flagged[r], t[i])
    adopted = np.empty(count, dtype=np.int64)
    n_adopted = 0
    for j in range(count):
        r = touched[j]
        if last_flagged[r] > last_trusted[r]:
            streak[r] = min(streak[r] + 1, 32767)
            if streak[r] >= adapt_after and pn[r] >= min_count:
                n[r], mean[r], m2[r] = pn[r], pmean[r], pm2[r]
                pn[r], pmean[r], pm2[r], streak[r] = 0, 0.0, 0.0, 0
                adopted[n_adopted] = r
                n_adopted += 1
        else:
            pn[r], pmean[r], pm2[r], streak[r] = 0, 0.0, 0.0, 0
    return adopted[:n_adopted]
