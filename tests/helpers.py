"""Small builders shared by the tests."""

from __future__ import annotations

import numpy as np

from netsentry.model import Batch

HOUR = 3_600_000_000_000
TOKEN = "test-token-0123456789abcdef"  # the API token of the test settings


def batch(
    rows: list[tuple[str, float]], measurement: str = "m", t0: int = 0, step: int = HOUR
) -> Batch:
    """Rows of (src tag, value) at consecutive times ``t0, t0+step, ...``."""
    return Batch.from_columns(
        [t0 + i * step for i in range(len(rows))],
        [measurement] * len(rows),
        [v for _, v in rows],
        {"src": [s for s, _ in rows]},
    )


def series(
    values: list[float] | np.ndarray,
    src: str = "a",
    measurement: str = "m",
    t0: int = 0,
    step: int = HOUR,
) -> Batch:
    return batch([(src, float(v)) for v in values], measurement, t0, step)


def all_rows(b: Batch) -> np.ndarray:
    return np.ones(len(b), dtype=bool)
