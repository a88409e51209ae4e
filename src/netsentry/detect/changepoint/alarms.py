"""What a change-point alarm says: one row per confirmed change."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from netsentry.detect.changepoint import _stream as kern

#: ``time`` is the change moment (first point of the new regime), ``detected_at`` the
#: point whose window confirmed it; ``size`` the mean after minus the mean before.
ALARM_SCHEMA: dict[str, Any] = {
    "key": pl.UInt64,
    "time": pl.Int64,
    "detected_at": pl.Int64,
    "size": pl.Float64,
    "direction": pl.Int8,
    "std_ratio": pl.Float64,
    "test": pl.String,
    "stage": pl.Int8,
    "alpha": pl.Float64,
    "exceedance": pl.Float64,
    "triggers": pl.Int64,
    "stage2_threshold": pl.Float64,
}
TESTS = ("mean", "distribution")


def alarm_frame(
    keys: npt.NDArray[np.uint64],
    a_int: npt.NDArray[np.int64],
    a_float: npt.NDArray[np.float64],
    alpha: float,
    stage2_alpha: float,
    stage2_threshold: float,
) -> pl.DataFrame:
    """The alarm matrices of :func:`~._stream.run` as a frame, in detection order.

    ``keys[g]`` is the entity key of group ``g``; ``alpha`` is that of the stage that
    fired.
    """
    stage = a_int[:, kern.A_STAGE]
    size = a_float[:, kern.A_SIZE]
    frame = pl.DataFrame(
        {
            "key": keys[a_int[:, kern.A_GROUP]],
            "time": a_int[:, kern.A_TIME],
            "detected_at": a_int[:, kern.A_DETECTED],
            "size": size,
            "direction": np.sign(size).astype(np.int8),
            "std_ratio": a_float[:, kern.A_STD_RATIO],
            "test": [TESTS[k] for k in a_int[:, kern.A_TEST]],
            "stage": stage.astype(np.int8),
            "alpha": np.where(stage == 2, stage2_alpha, alpha),
            "exceedance": a_float[:, kern.A_EXCEEDANCE],
            "triggers": a_int[:, kern.A_TRIGGERS],
            "stage2_threshold": np.full(len(stage), stage2_threshold),
        },
        schema=ALARM_SCHEMA,
    )
    return frame.sort("detected_at", "key")
