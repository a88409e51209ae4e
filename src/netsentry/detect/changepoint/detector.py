"""Streaming change-point detector: the two-stage "disorder" criterion per entity.

One instance watches one measurement (like :class:`~netsentry.detect.zscore.ZScore`);
its state holds, per entity key, a sliding window over the entity's *current regime*.

Stage 1 (is there a disorder, and when)
    Every new point closes a window: the last ``window`` points of the regime. The
    point's score is the window's exceedance ``√N·max|Y_N(n,1)| / (sigma*·c_alpha)``
    (:mod:`~.statistic`, :mod:`~.kolmogorov`), or that of the indicator test
    (:mod:`~.distribution`) when larger: above 1 means a change at level alpha. A
    change is *confirmed* after ``adapt_after`` consecutive points above 1. Its moment
    is ``n* = argmax |Y_N(n, delta)|`` in the window; the points before it are dropped
    and the window restarts from the new regime. One window costs O(window) with
    prefix sums (the distribution test keeps the window sorted as it slides), so a
    stream of N points costs O(N·window).

    alpha is the false-alarm probability of *one* window. Consecutive windows overlap,
    so a stream without change sees a false change every ~1,000 to 3,000 points at
    alpha = 0.01 and every ~6,000 to 25,000 at 0.001 (``docs/changepoint.md``).

Stage 2 (is the number of disorders abnormal)
    Confirmed changes are counted in blocks of ``stage2_window`` points per entity.
    The counts of closed blocks form a baseline (mu, sigma) pooled over the detector's
    entities; once it holds ``stage2_min_blocks`` blocks, a confirmed change that brings
    its block's count above ``C(2) = mu + lambda·sigma`` (:mod:`~.stage2`) is a stage-2
    alarm. Blocks in which stage 2 fired stay out of the baseline. A baseline without
    any trigger has sigma = 0, and then any trigger fires stage 2.

Warm-up
    A row whose entity's regime (the points learned before plus the batch's points up
    to this row) holds fewer than ``2·min_count`` points scores 0: no split can leave
    ``min_count`` points on each side. A new entity is judged within its first batch
    once it has that many.

alpha, delta, cells, the bound and ``adapt_after`` only enter the tests: they can change
without refitting (they are not in the fingerprint). The state is ``16·window + 64``
bytes per entity (a ring buffer of values and times, and seven counters).

>>> from netsentry.model import Batch
>>> rng = np.random.default_rng(1)
>>> x = np.r_[rng.normal(10, 1, 100), rng.normal(14, 1, 60)]
>>> minute = 60_000_000_000
>>> batch = Batch.from_columns(np.arange(160) * minute, ["m"] * 160, x, {"src": ["a"] * 160})
>>> det = ChangePoint(window=100)
>>> det.learn(batch, np.ones(160, dtype=bool))
>>> alarm = det.changes_.row(0, named=True)
>>> alarm["time"] // minute, alarm["direction"], alarm["stage"], round(alarm["size"])
(99, 1, 1, 4)
"""

from __future__ import annotations

from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt
import polars as pl

from netsentry.config import Alternative
from netsentry.detect.base import NotMergeableError, State, StateMismatchError, fingerprint
from netsentry.detect.changepoint import _stream as kern
from netsentry.detect.changepoint.alarms import ALARM_SCHEMA, alarm_frame
from netsentry.detect.changepoint.kolmogorov import critical_value, critical_value_table
from netsentry.detect.changepoint.segment import SIDES, stage1_levels, validate
from netsentry.detect.changepoint.stage2 import Bound, TriggerBaseline, validate_bound
from netsentry.detect.changepoint.windows import COLUMNS, EntityWindows
from netsentry.model import Batch

Sigma = Literal["long-run", "iid"]
_LAYOUT = {"detector": "changepoint", "layout": list(COLUMNS)}


class ChangePoint:
    """Two-stage change-point detector over a sliding window per entity.

    Parameters
    ----------
    alpha : stage-1 false-alarm probability of one window test (0 < alpha < 1). Every
        point tests a window, so the default is 0.001: about one false change per 25,000
        points of independent data (per 6,000 to 8,000 with AR(1) dependence, phi = 0.5).
    delta : exponent delta of ``Y_N(n, delta)`` placing the change moment (0..1; the test
        itself always uses delta = 1, the one the threshold is calibrated for). The
        default 1/2 places a change that has just happened, near the end of the window,
        best: on 2-sigma shifts the mean error is 0.9 points against 2.6 for delta = 1,
        with half the repeated alarms (``docs/changepoint.md``).
    window : points per window (default 168, a week of hourly values).
    min_count : fewest points on each side of a change (ruptures' ``min_size``);
        the warm-up is ``2·min_count`` points.
    cells : quantile cells of the distribution test (0 = mean only, else 2..8); with
        it on, the mean test runs at alpha/2 and each of the ``cells²`` indicators at
        alpha/(2·cells²) (Bonferroni).
    sigma : ``"long-run"`` (prewhitened Bartlett sigma*, for autocorrelated series) or
        ``"iid"`` (sample standard deviation).
    alternative : ``"two-sided"``; ``"greater"`` / ``"less"`` watch only increases /
        decreases of the mean (and turn the distribution test off).
    adapt_after : consecutive points above C(1) that confirm a change (default 1).
    bound : stage-2 bound, ``"vp"`` (Vysochanskij-Petunin, default), ``"chebyshev"``
        or ``"normal"``.
    stage2_alpha : stage-2 false-alarm probability (below 1/6 for ``"vp"``).
    stage2_window : points per stage-2 block (default: ``window``).
    stage2_min_blocks : closed normal blocks before stage 2 judges (default 10).
    """

    name = "changepoint"

    def __init__(
        self,
        *,
        alpha: float = 0.001,
        delta: float = 0.5,
        window: int = 168,
        min_count: int = 8,
        cells: int = 3,
        sigma: Sigma = "long-run",
        alternative: Alternative = "two-sided",
        adapt_after: int = 1,
        bound: Bound = "vp",
        stage2_alpha: float = 0.05,
        stage2_window: int | None = None,
        stage2_min_blocks: int = 10,
    ) -> None:
        validate(alpha, delta, min_count, cells)
        validate_bound(stage2_alpha, bound)
        if window < 2 * min_count:
            raise ValueError(f"window must hold 2*min_count = {2 * min_count} points, got {window}")
        if sigma not in ("long-run", "iid"):
            raise ValueError(f"sigma must be 'long-run' or 'iid', got {sigma!r}")
        if alternative not in SIDES:
            raise ValueError(f"alternative must be two-sided, greater or less: {alternative!r}")
        if adapt_after < 1:
            raise ValueError(f"adapt_after must be at least 1, got {adapt_after}")
        if stage2_window is not None and stage2_window < 1:
            raise ValueError(f"stage2_window must be at least 1, got {stage2_window}")
        if stage2_min_blocks < 2:
            raise ValueError(f"stage2_min_blocks must be at least 2, got {stage2_min_blocks}")
        self.alpha, self.delta, self.window, self.min_count = alpha, delta, window, min_count
        self.cells, self.sigma, self.alternative = cells, sigma, alternative
        self.adapt_after, self.bound, self.stage2_alpha = adapt_after, bound, stage2_alpha
        self.stage2_window = window if stage2_window is None else stage2_window
        self.stage2_min_blocks = stage2_min_blocks
        self.stage2_ = TriggerBaseline()
        self.changes_ = pl.DataFrame(schema=ALARM_SCHEMA)
        self._windows = EntityWindows(window)

    # -- the tests ------------------------------------------------------------------

    def stage2_threshold(self) -> float:
        """C(2) from the pooled baseline; inf until it holds ``stage2_min_blocks``."""
        if self.stage2_.n < self.stage2_min_blocks:
            return float("inf")
        return self.stage2_.threshold(self.stage2_alpha, self.bound)

    def _params(self) -> npt.NDArray[np.float64]:
        alpha_dist = stage1_levels(self.alpha, self.cells, self.alternative)[1]
        c_dist = critical_value(alpha_dist) if alpha_dist > 0 else np.inf
        return np.array(
            [
                self.min_count,
                self.delta,
                SIDES[self.alternative],
                self.sigma == "long-run",
                self.cells,
                c_dist,
                self.adapt_after,
                self.stage2_window,
                self.stage2_threshold(),
            ],
            dtype=np.float64,
        )

    def _thresholds(self) -> npt.NDArray[np.float64]:
        """c_alpha of the mean test for windows of 0..window points (sigma_hat's spread in)."""
        alpha_mean = stage1_levels(self.alpha, self.cells, self.alternative)[0]
        return critical_value_table(
            alpha_mean, self.window, self.alternative, self.sigma == "long-run"
        )

    def _run(
        self, batch: Batch, mask: npt.NDArray[np.bool_] | None, commit: bool
    ) -> tuple[npt.NDArray[np.float64], pl.DataFrame, npt.NDArray[np.int64]]:
        frame = batch.frame if mask is None else batch.frame.filter(pl.Series(mask))
        keys = frame["key"].to_numpy()
        t = np.ascontiguousarray(frame["time"].to_numpy(), dtype=np.int64)
        x = np.ascontiguousarray(frame["value"].to_numpy(), dtype=np.float64)
        uniq, group = np.unique(keys, return_inverse=True)
        rows = self._windows.rows(uniq, insert=commit)
        order = np.lexsort((t, group))
        scores = np.zeros(len(x))
        _, a_int, a_float, n_blocks, blocks = kern.run(
            order,
            group.astype(np.int64),
            rows,
            x,
            t,
            self._windows.values,
            self._windows.times,
            self._windows.ints,
            self._params(),
            self._thresholds(),
            commit,
            scores,
        )
        alarms = alarm_frame(
            uniq, a_int, a_float, self.alpha, self.stage2_alpha, self.stage2_threshold()
        )
        return scores, alarms, blocks[:n_blocks]

    def score(self, batch: Batch) -> npt.NDArray[np.float64]:
        """Stage-1 exceedance of the window ending at each row; above 1 = change at alpha.

        Pure: rows are taken in time order per entity, as ``learn`` would take them.
        """
        if len(batch) == 0:
            return np.zeros(0)
        return self._run(batch, None, commit=False)[0]

    def alarms(self, batch: Batch) -> pl.DataFrame:
        """The changes that learning all of ``batch`` would confirm (pure).

        One row per change: ``key``, ``time`` (first point of the new regime),
        ``detected_at``, ``size`` and ``direction`` of the mean change, ``std_ratio``,
        ``test`` (mean or distribution), ``stage`` (1, or 2 when the block's count of
        triggers is abnormal), ``alpha`` of the stage that fired, ``exceedance``,
        ``triggers`` in the block and ``stage2_threshold`` C(2).
        """
        if len(batch) == 0:
            return pl.DataFrame(schema=ALARM_SCHEMA)
        return self._run(batch, None, commit=False)[1]

    # -- learning -------------------------------------------------------------------

    def learn(self, batch: Batch, mask: npt.NDArray[np.bool_]) -> None:
        """Append the rows where ``mask`` is True; confirmed changes go to ``changes_``.

        A change-point detector learns the new regime from the very values that signal
        it, so the check should pass every valid row (not only unflagged ones).
        """
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(batch),):
            raise ValueError(f"mask has shape {mask.shape}, batch has {len(batch)} rows")
        if not mask.any():
            self.changes_ = pl.DataFrame(schema=ALARM_SCHEMA)
            return
        _, self.changes_, blocks = self._run(batch, mask, commit=True)
        self.stage2_.update(blocks[blocks[:, 1] == 0, 0])

    # -- the current regime (to restart a baseline from it) ---------------------------

    def regime(self, keys: npt.ArrayLike) -> pl.DataFrame:
        """Per key: ``start`` (time of the regime's first point), ``n``, ``mean``, ``m2``
        of the regime's points in the window (null / 0 for unknown keys): what a
        baseline restarts from after a confirmed change.
        """
        return self._windows.regime(keys)

    def new_regime_start(self, key: int) -> int | None:
        """Time (ns) of the first point of ``key``'s current regime; None if unknown."""
        start = self.regime([key])["start"][0]
        return None if start is None else int(start)

    # -- persistence and merging ----------------------------------------------------

    def fingerprint(self) -> str:
        return fingerprint(
            {**_LAYOUT, "window": self.window, "stage2_window": self.stage2_window, "version": 1}
        )

    def state_dict(self) -> State:
        return {
            "fingerprint": self.fingerprint(),
            **self._windows.state(),
            "stage2_n": np.int64(self.stage2_.n),
            "stage2_mean": np.float64(self.stage2_.mean),
            "stage2_m2": np.float64(self.stage2_.m2),
        }

    def load_state(self, state: State) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise StateMismatchError(
                f"changepoint state has fingerprint {state.get('fingerprint')!r}, expected "
                f"{self.fingerprint()!r} (window {self.window}, stage2_window "
                f"{self.stage2_window})"
            )
        self._windows = EntityWindows.from_state(self.window, state)
        self.stage2_ = TriggerBaseline(
            int(state["stage2_n"]), float(state["stage2_mean"]), float(state["stage2_m2"])
        )

    def merge(self, other: Self) -> Self:
        """Combine with a detector that watched *other* entities (a shard by entity key).

        Windows of one entity seen by two shards cannot be interleaved into the window
        one pass would have kept (its regime restarts depend on the order), so a shared
        key raises :class:`NotMergeableError`. The stage-2 baselines add up exactly.
        """
        if other.fingerprint() != self.fingerprint():
            raise StateMismatchError("cannot merge change-point detectors of different layouts")
        shared = np.intersect1d(self._windows.index.keys, other._windows.index.keys)
        if len(shared):
            raise NotMergeableError(
                f"{len(shared)} entities (e.g. {int(shared[0]):016x}) are in both detectors; "
                "shard change-point state by entity key"
            )
        merged = type(self)(**self.get_params())
        merged._windows = EntityWindows.concat(self._windows, other._windows)
        merged.stage2_ = TriggerBaseline(self.stage2_.n, self.stage2_.mean, self.stage2_.m2)
        merged.stage2_.merge_moments(other.stage2_.n, other.stage2_.mean, other.stage2_.m2)
        return merged

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters (scikit-learn's convention)."""
        names: tuple[str, ...] = ("alpha", "delta", "window", "min_count", "cells", "sigma")
        names += (
            "alternative",
            "adapt_after",
            "bound",
            "stage2_alpha",
            "stage2_window",
            "stage2_min_blocks",
        )
        return {name: getattr(self, name) for name in names}

    def __len__(self) -> int:
        return len(self._windows)
