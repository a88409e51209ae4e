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

The state costs 58 bytes per entity (``bench/bench_check.py`` measures it).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import numpy.typing as npt
import polars as pl

from netsentry.config import Alternative
from netsentry.detect import moments
from netsentry.detect.base import State, StateMismatchError, fingerprint
from netsentry.model import Batch

STATE_SCHEMA: dict[str, Any] = {
    "key": pl.UInt64,
    "n": pl.Int64,
    "mean": pl.Float64,
    "m2": pl.Float64,
    "pending_n": pl.Int64,
    "pending_mean": pl.Float64,
    "pending_m2": pl.Float64,
    "streak": pl.Int16,
}
_LAYOUT = {"detector": "zscore", "layout": list(STATE_SCHEMA), "version": 1}


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
        self.state_ = pl.DataFrame(schema=STATE_SCHEMA)
        self.rebaselined_: npt.NDArray[np.uint64] = np.empty(0, dtype=np.uint64)

    # -- scoring (pure) -------------------------------------------------------------

    def baseline(self, batch: Batch) -> pl.DataFrame:
        """Per row of ``batch``: the baseline ``n``, ``mean``, ``std`` and ``z``."""
        rows = batch.frame.select("key", "value").join(
            self.state_.select("key", "n", "mean", "m2"), on="key", how="left",
            maintain_order="left",
        )
        n = rows["n"].fill_null(0).to_numpy()
        mean = rows["mean"].fill_null(np.nan).to_numpy()
        std = moments.std(n, rows["m2"].fill_null(0.0).to_numpy())
        x = rows["value"].to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            dev = x - mean
            z = np.where(std > 0, dev / std, np.where(dev == 0, 0.0, np.sign(dev) * np.inf))
        z = np.where(n >= self.min_count, z, 0.0)
        return pl.DataFrame({"n": n, "mean": mean, "std": std, "z": z})

    def score(self, batch: Batch) -> npt.NDArray[np.float64]:
        """Higher is more anomalous; 0 while an entity is still learning."""
        z = self.baseline(batch)["z"].to_numpy()
        if self.alternative == "two-sided":
            return np.abs(z)
        return z if self.alternative == "greater" else -z

    def unseen(self, batch: Batch) -> npt.NDArray[np.bool_]:
        """Rows whose entity this detector has never seen."""
        known = batch.frame["key"].is_in(self.state_["key"].implode())
        return ~known.to_numpy()

    # -- learning -------------------------------------------------------------------

    def learn(self, batch: Batch, mask: npt.NDArray[np.bool_]) -> None:
        """Learn the rows where ``mask`` is True; the others feed the candidate regime."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(batch),):
            raise ValueError(f"mask has shape {mask.shape}, batch has {len(batch)} rows")
        rows = batch.frame.select("key", "time", "value").with_columns(
            trusted=pl.Series(mask)
        ).filter(pl.col("value").is_finite())
        if rows.height == 0:
            self.rebaselined_ = np.empty(0, dtype=np.uint64)
            return
        trusted = moments.grouped(rows.filter(pl.col("trusted"))).rename(
            {"n": "tn", "mean": "tmean", "m2": "tm2"}
        )
        flagged = moments.grouped(rows.filter(~pl.col("trusted"))).rename(
            {"n": "fn", "mean": "fmean", "m2": "fm2"}
        )
        ends_flagged = rows.group_by("key").agg(
            (~pl.col("trusted").sort_by("time").last()).alias("ends_flagged")
        )
        touched = (
            ends_flagged.join(trusted, on="key", how="left")
            .join(flagged, on="key", how="left")
            .join(self.state_, on="key", how="left")
            .fill_null(0)
        )
        updated = self._update(touched)
        self.rebaselined_ = updated.filter(pl.col("rebaselined"))["key"].to_numpy()
        self.state_ = (
            pl.concat(
                [
                    self.state_.join(updated.select("key"), on="key", how="anti"),
                    updated.select(list(STATE_SCHEMA)).cast(STATE_SCHEMA),  # type: ignore[arg-type]
                ]
            )
            .sort("key")
        )

    def _update(self, t: pl.DataFrame) -> pl.DataFrame:
        """Fold one check into the state of the entities it touched."""
        c = {name: t[name].to_numpy() for name in t.columns if name != "key"}
        n, mean, m2 = moments.merge(c["n"], c["mean"], c["m2"], c["tn"], c["tmean"], c["tm2"])
        ends_flagged = c["ends_flagged"].astype(bool)
        pn, pmean, pm2 = moments.merge(
            c["pending_n"], c["pending_mean"], c["pending_m2"], c["fn"], c["fmean"], c["fm2"]
        )
        pn = np.where(ends_flagged, pn, 0)
        pmean = np.where(ends_flagged, pmean, 0.0)
        pm2 = np.where(ends_flagged, pm2, 0.0)
        streak = np.where(ends_flagged, c["streak"].astype(np.int64) + 1, 0)
        adopt = (streak >= self.adapt_after) & (pn >= self.min_count)
        return pl.DataFrame(
            {
                "key": t["key"],
                "n": np.where(adopt, pn, n),
                "mean": np.where(adopt, pmean, mean),
                "m2": np.where(adopt, pm2, m2),
                "pending_n": np.where(adopt, 0, pn),
                "pending_mean": np.where(adopt, 0.0, pmean),
                "pending_m2": np.where(adopt, 0.0, pm2),
                "streak": np.minimum(np.where(adopt, 0, streak), np.iinfo(np.int16).max),
                "rebaselined": adopt,
            }
        )

    # -- persistence and merging ----------------------------------------------------

    def fingerprint(self) -> str:
        return fingerprint(_LAYOUT)

    def state_dict(self) -> State:
        return {
            "fingerprint": self.fingerprint(),
            **{name: self.state_[name].to_numpy().copy() for name in STATE_SCHEMA},
        }

    def load_state(self, state: State) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise StateMismatchError(
                f"zscore state has fingerprint {state.get('fingerprint')!r}, "
                f"expected {self.fingerprint()!r} (layout {_LAYOUT})"
            )
        self.state_ = pl.DataFrame(
            {name: pl.Series(name, state[name], dtype=dtype) for name, dtype in STATE_SCHEMA.items()}
        ).sort("key")

    def merge(self, other: Self) -> Self:
        """Combine with a detector trained on other data (e.g. another shard)."""
        merged = type(self)(
            min_count=self.min_count, alternative=self.alternative, adapt_after=self.adapt_after
        )
        both = self.state_.join(other.state_, on="key", how="full", coalesce=True).fill_null(0)
        n, mean, m2 = moments.merge(
            both["n"].to_numpy(), both["mean"].to_numpy(), both["m2"].to_numpy(),
            both["n_right"].to_numpy(), both["mean_right"].to_numpy(), both["m2_right"].to_numpy(),
        )
        pn, pmean, pm2 = moments.merge(
            both["pending_n"].to_numpy(), both["pending_mean"].to_numpy(),
            both["pending_m2"].to_numpy(), both["pending_n_right"].to_numpy(),
            both["pending_mean_right"].to_numpy(), both["pending_m2_right"].to_numpy(),
        )
        streak = np.maximum(both["streak"].to_numpy(), both["streak_right"].to_numpy())
        merged.state_ = pl.DataFrame(
            {"key": both["key"], "n": n, "mean": mean, "m2": m2, "pending_n": pn,
             "pending_mean": pmean, "pending_m2": pm2, "streak": streak}
        ).cast(STATE_SCHEMA).sort("key")  # type: ignore[arg-type]
        return merged

    def __len__(self) -> int:
        return self.state_.height
