"""Per-entity z-score: the statistical detector of the RIoT/PoliMi seed, done properly.

One instance watches one measurement; its state holds, per entity key, the baseline
moments (count ``n``, ``mean``, ``m2``; see :mod:`netsentry.detect.moments`) and a
*candidate regime* (``pending_*`` moments and a ``streak`` of checks).

Rules (each one is tested in ``tests/test_zscore.py``):

Scoring against the past
    A batch (one check) is scored against the statistics from *before* it:
    ``z = (x - mean) / std`` with the sample std (ddof=1). The score is ``|z|``
    (two-sided, default), ``z`` (``alternative="greater"``) or ``-z`` (``"less"``).

Cold start
    An entity with fewer than ``min_count`` learned values is *learning*: its score is
    0, so it is never flagged, and all its values are learned.

Zero variance
    A baseline whose learned values are all equal has std 0: a value equal to the
    mean scores 0, any other value scores ``inf`` (z = ±inf). A perfectly regular
    series that changes at all is worth a look; the explanation says so.

Learning only from normal values
    The check calls ``learn(batch, mask=~flagged)``: only values that were not
    flagged update the baseline, so a burst of attack traffic cannot drag the mean
    and inflate the std that is meant to catch it.

Accepting a new normal
    That rule alone can never follow a lasting change: after a level shift every value
    is flagged and never learned. Flagged values therefore feed a candidate regime.
    A check in which the entity's *last* value is flagged extends its ``streak``;
    a check that ends on a normal value discards the candidate. When the candidate has
    lasted ``adapt_after`` consecutive checks *and* holds at least ``min_count``
    values, it replaces the baseline (the entity is *rebaselined*). An attacker who
    wants the detector to accept a new level must therefore hold it for that many
    checks while every one of its values is reported as an anomaly; a single normal
    value on the way resets the clock. Analyst feedback (a false positive folded into
    the baseline) is the other, manual, way.

NaN and inf
    Never reach a detector: ingest rejects them line by line. ``learn`` still drops
    non-finite values defensively, so one bad value can never poison an entity.

The state costs 58 bytes per entity as stored (``bench/bench_check.py`` measures it).
In memory it is one 64-byte row per entity; the per-record loops are compiled with
numba (:mod:`netsentry.detect._zkernels`) and the entity lookup is a hash index
(:mod:`netsentry.detect.keyindex`).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import numpy.typing as npt
import polars as pl

from netsentry.config import Alternative
from netsentry.detect import _zkernels as kern
from netsentry.detect import moments
from netsentry.detect.base import State, StateMismatchError, fingerprint
from netsentry.detect.keyindex import KeyIndex
from netsentry.model import Batch

STATE_DTYPES: dict[str, Any] = {
    "key": np.uint64,
    "n": np.int64,
    "mean": np.float64,
    "m2": np.float64,
    "pending_n": np.int64,
    "pending_mean": np.float64,
    "pending_m2": np.float64,
    "streak": np.int16,
}
_LAYOUT = {"detector": "zscore", "layout": list(STATE_DTYPES), "version": 1}


class ZScore:
    """Per-entity z-score with cold start, zero-variance and new-normal rules.

    Parameters
    ----------
    min_count : values an entity must have learned before it is judged.
    alternative : ``"two-sided"`` (default), ``"greater"`` or ``"less"``.
    adapt_after : consecutive deviating checks after which a new level is accepted.

    >>> from netsentry.model import Batch
    >>> det = ZScore(min_count=3)
    >>> calm = Batch.from_columns([1, 2, 3, 4], ["m"] * 4, [10.0, 11.0, 9.0, 10.0], {})
    >>> det.learn(calm, np.ones(4, dtype=bool))
    >>> spike = Batch.from_columns([5], ["m"], [20.0], {})
    >>> round(float(det.score(spike)[0]), 3)
    12.247
    """

    name = "zscore"

    def __init__(
        self, *, min_count: int = 8, alternative: Alternative = "two-sided", adapt_after: int = 3
    ) -> None:
        if min_count < 2:
            raise ValueError(f"min_count must be at least 2, got {min_count}")
        if adapt_after < 1:
            raise ValueError(f"adapt_after must be at least 1, got {adapt_after}")
        if alternative not in ("two-sided", "greater", "less"):
            raise ValueError(f"alternative must be two-sided, greater or less: {alternative!r}")
        self.min_count = min_count
        self.alternative: Alternative = alternative
        self.adapt_after = adapt_after
        self._reset(KeyIndex(), {name: np.empty(0, dtype=dt) for name, dt in STATE_DTYPES.items()})
        self.rebaselined_: npt.NDArray[np.uint64] = np.empty(0, dtype=np.uint64)

    def _reset(self, index: KeyIndex, columns: dict[str, np.ndarray]) -> None:
        """Lay the state out as one 64-byte row per entity (see ``_zkernels``)."""
        size = len(index)
        self._index = index
        self._ints = np.zeros((max(16, size), kern.WIDTH), dtype=np.int64)
        self._ints[:, kern.LAST_TRUSTED] = kern.UNTOUCHED
        self._ints[:, kern.LAST_FLAGGED] = kern.UNTOUCHED
        self._cand = np.zeros((len(self._ints), 2))
        floats = self._ints.view(np.float64)
        self._ints[:size, kern.N] = columns["n"]
        floats[:size, kern.MEAN] = columns["mean"]
        floats[:size, kern.M2] = columns["m2"]
        self._ints[:size, kern.PN] = columns["pending_n"]
        self._ints[:size, kern.STREAK] = columns["streak"]
        self._cand[:size, 0] = columns["pending_mean"]
        self._cand[:size, 1] = columns["pending_m2"]

    def _grow(self, size: int) -> None:
        if size <= len(self._ints):
            return
        capacity = max(size, 2 * len(self._ints))
        ints = np.zeros((capacity, kern.WIDTH), dtype=np.int64)
        ints[:, kern.LAST_TRUSTED] = kern.UNTOUCHED
        ints[:, kern.LAST_FLAGGED] = kern.UNTOUCHED
        ints[: len(self._ints)] = self._ints
        cand = np.zeros((capacity, 2))
        cand[: len(self._cand)] = self._cand
        self._ints, self._cand = ints, cand

    @property
    def state_(self) -> pl.DataFrame:
        """The learned state, one row per entity (a copy, for reading)."""
        return pl.DataFrame({k: v for k, v in self.state_dict().items() if k != "fingerprint"})

    # -- scoring (pure) -------------------------------------------------------------

    def _z(self, batch: Batch, sign: int = kern.GREATER) -> npt.NDArray[np.float64]:
        table, bits = self._index.table
        keys = np.ascontiguousarray(batch.frame["key"].to_numpy()).view(np.int64)
        return kern.zscores(
            table,
            bits,
            keys,
            batch.frame["value"].to_numpy(),
            self._ints,
            self._ints.view(np.float64),
            self.min_count,
            sign,
        )

    def baseline(self, batch: Batch) -> pl.DataFrame:
        """Per row of ``batch``: the baseline ``n``, ``mean``, ``std`` and ``z``."""
        rows = self._index.rows(batch.frame["key"].to_numpy())
        known = rows >= 0
        safe = np.where(known, rows, 0)
        n = np.where(known, self._ints[safe, kern.N], 0)
        mean = np.where(known, self._ints.view(np.float64)[safe, kern.MEAN], np.nan)
        std = moments.std(n, np.where(known, self._ints.view(np.float64)[safe, kern.M2], 0.0))
        return pl.DataFrame({"n": n, "mean": mean, "std": std, "z": self._z(batch)})

    def score(self, batch: Batch) -> npt.NDArray[np.float64]:
        """Higher is more anomalous; 0 while an entity is still learning."""
        sign = {"two-sided": kern.TWO_SIDED, "greater": kern.GREATER, "less": kern.LESS}
        return self._z(batch, sign[self.alternative])

    def learning(self, batch: Batch) -> npt.NDArray[np.bool_]:
        """Rows whose entity has fewer than ``min_count`` learned values (cold start)."""
        rows = self._index.rows(batch.frame["key"].to_numpy())
        return np.where(rows >= 0, self._ints[np.maximum(rows, 0), kern.N], 0) < self.min_count

    def unseen(self, batch: Batch) -> npt.NDArray[np.bool_]:
        """Rows whose entity this detector has never seen."""
        return self._index.rows(batch.frame["key"].to_numpy()) < 0

    # -- learning -------------------------------------------------------------------

    def learn(self, batch: Batch, mask: npt.NDArray[np.bool_]) -> None:
        """Learn the rows where ``mask`` is True; the others feed the candidate regime."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(batch),):
            raise ValueError(f"mask has shape {mask.shape}, batch has {len(batch)} rows")
        rows = self._index.rows(batch.frame["key"].to_numpy(), insert=True)
        self._grow(len(self._index))
        adopted = kern.learn(
            rows,
            batch.frame["time"].to_numpy(),
            batch.frame["value"].to_numpy(),
            mask,
            self._ints,
            self._ints.view(np.float64),
            self._cand,
            self.adapt_after,
            self.min_count,
        )
        self.rebaselined_ = self._index.keys[adopted]

    def rebaseline(
        self,
        keys: npt.NDArray[np.uint64],
        n: npt.NDArray[np.int64],
        mean: npt.NDArray[np.float64],
        m2: npt.NDArray[np.float64],
    ) -> int:
        """Restart known entities' baselines from given moments (a new regime).

        This is how a confirmed change point teaches the z-score a new normal at once
        (``ChangePoint.regime`` gives the moments). The candidate regime is dropped.
        Unknown keys are ignored; returns how many baselines were replaced.
        """
        rows = self._index.rows(np.asarray(keys, dtype=np.uint64))
        known = rows >= 0
        rows = rows[known]
        floats = self._ints.view(np.float64)
        self._ints[rows, kern.N] = np.asarray(n)[known]
        floats[rows, kern.MEAN] = np.asarray(mean)[known]
        floats[rows, kern.M2] = np.asarray(m2)[known]
        self._ints[rows, kern.PN] = 0
        self._ints[rows, kern.STREAK] = 0
        self._cand[rows] = 0.0
        return int(known.sum())

    # -- persistence and merging ----------------------------------------------------

    def fingerprint(self) -> str:
        return fingerprint(_LAYOUT)

    def state_dict(self) -> State:
        size = len(self._index)
        ints, floats = self._ints[:size], self._ints.view(np.float64)[:size]
        return {
            "fingerprint": self.fingerprint(),
            "key": self._index.keys.copy(),
            "n": ints[:, kern.N].copy(),
            "mean": floats[:, kern.MEAN].copy(),
            "m2": floats[:, kern.M2].copy(),
            "pending_n": ints[:, kern.PN].copy(),
            "pending_mean": self._cand[:size, 0].copy(),
            "pending_m2": self._cand[:size, 1].copy(),
            "streak": ints[:, kern.STREAK].astype(np.int16),
        }

    def load_state(self, state: State) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise StateMismatchError(
                f"zscore state has fingerprint {state.get('fingerprint')!r}, "
                f"expected {self.fingerprint()!r} (layout {_LAYOUT})"
            )
        self._reset(KeyIndex(state["key"]), state)

    def merge(self, other: Self) -> Self:
        """Combine with a detector trained on other data (e.g. another shard)."""
        merged = type(self)(
            min_count=self.min_count, alternative=self.alternative, adapt_after=self.adapt_after
        )
        a, b = self.state_dict(), other.state_dict()
        keys = np.concatenate([a["key"], b["key"][~np.isin(b["key"], a["key"])]])
        index = KeyIndex(keys)
        columns: dict[str, np.ndarray] = {
            name: np.zeros(len(keys), dtype=dt) for name, dt in STATE_DTYPES.items()
        }
        columns["key"] = keys
        ra, rb = index.rows(a["key"]), index.rows(b["key"])
        for prefix in ("", "pending_"):
            na, nb = (np.zeros(len(keys), np.int64) for _ in range(2))
            ma, mb, sa, sb = (np.zeros(len(keys)) for _ in range(4))
            na[ra], ma[ra], sa[ra] = a[prefix + "n"], a[prefix + "mean"], a[prefix + "m2"]
            nb[rb], mb[rb], sb[rb] = b[prefix + "n"], b[prefix + "mean"], b[prefix + "m2"]
            n, mean, m2 = moments.merge(na, ma, sa, nb, mb, sb)
            columns[prefix + "n"], columns[prefix + "mean"], columns[prefix + "m2"] = n, mean, m2
        streak = np.zeros(len(keys), np.int16)
        streak[ra] = a["streak"]
        streak[rb] = np.maximum(streak[rb], b["streak"])
        columns["streak"] = streak
        merged._reset(index, columns)
        return merged

    def __len__(self) -> int:
        return len(self._index)
