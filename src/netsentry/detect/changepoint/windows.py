"""Per-entity sliding windows, kept compactly: ring buffers in flat numpy arrays.

Row ``r`` of three arrays holds one entity (the layout is documented in
:mod:`~._stream`, which reads and writes it): ``values[r]`` and ``times[r]``, a ring of
the last ``window`` points of the entity's current regime, and ``ints[r]``, its
counters. Entity keys find their row through a :class:`~netsentry.detect.keyindex.KeyIndex`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl

from netsentry.detect.base import State
from netsentry.detect.changepoint import _stream as kern
from netsentry.detect.keyindex import KeyIndex

#: Names of the counters in a saved state, in column order of ``ints``.
COUNTERS = ("seen", "length", "streak", "regime_start", "block_n", "block_z", "block_flag")
COLUMNS = ("key", "values", "times", *COUNTERS)


class EntityWindows:
    """The windows of every entity a detector has seen (16·window + 64 bytes each).

    >>> w = EntityWindows(window=4)
    >>> w.rows(np.array([7, 9], dtype=np.uint64), insert=True).tolist()
    [0, 1]
    >>> len(w), w.values.shape
    (2, (16, 4))
    """

    def __init__(self, window: int, index: KeyIndex | None = None) -> None:
        self.window = window
        self.index = KeyIndex() if index is None else index
        self._allocate(max(16, len(self.index)))

    def _allocate(self, capacity: int) -> None:
        self.values = np.zeros((capacity, self.window))
        self.times = np.zeros((capacity, self.window), dtype=np.int64)
        self.ints = np.zeros((capacity, kern.WIDTH), dtype=np.int64)
        self.ints[:, kern.REGIME_T] = kern.NONE

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, keys: npt.NDArray[np.uint64], *, insert: bool = False) -> npt.NDArray[np.int64]:
        """Row of each key (-1 when unknown); ``insert`` adds rows for unknown keys."""
        rows = self.index.rows(keys, insert=insert)
        if len(self.index) > len(self.ints):
            old = (self.values, self.times, self.ints)
            self._allocate(max(len(self.index), 2 * len(self.ints)))
            for new, saved in zip((self.values, self.times, self.ints), old, strict=True):
                new[: len(saved)] = saved
        return rows

    def regime(self, keys: npt.ArrayLike) -> pl.DataFrame:
        """Per key: ``start`` (time of the regime's first point, null when unknown) and
        ``n``, ``mean``, ``m2`` of the regime's points in the window.
        """
        query = np.asarray(keys, dtype=np.uint64)
        rows = self.index.rows(query)
        n = np.zeros(len(query), dtype=np.int64)
        mean, m2 = np.zeros(len(query)), np.zeros(len(query))
        start = np.full(len(query), kern.NONE, dtype=np.int64)
        for i, r in enumerate(rows):
            if r < 0:
                continue
            seen, length = self.ints[r, kern.SEEN], self.ints[r, kern.LENGTH]
            x = self.values[r, (seen - length + np.arange(length)) % self.window]
            n[i], start[i] = length, self.ints[r, kern.REGIME_T]
            if length:
                mean[i] = x.mean()
                m2[i] = ((x - mean[i]) ** 2).sum()
        frame = pl.DataFrame({"key": query, "start": start, "n": n, "mean": mean, "m2": m2})
        known = pl.col("start") != kern.NONE
        return frame.with_columns(pl.when(known).then(pl.col("start")).alias("start"))

    def state(self) -> State:
        """Plain arrays, one row per entity (copies)."""
        size = len(self.index)
        state: State = {
            "key": self.index.keys.copy(),
            "values": self.values[:size].copy(),
            "times": self.times[:size].copy(),
        }
        for col, name in enumerate(COUNTERS):
            state[name] = self.ints[:size, col].copy()
        return state

    @classmethod
    def from_state(cls, window: int, state: State) -> EntityWindows:
        keys = np.asarray(state["key"], dtype=np.uint64)
        windows = cls(window, KeyIndex(keys))
        windows.values[: len(keys)] = state["values"]
        windows.times[: len(keys)] = state["times"]
        for col, name in enumerate(COUNTERS):
            windows.ints[: len(keys), col] = state[name]
        return windows

    @classmethod
    def concat(cls, a: EntityWindows, b: EntityWindows) -> EntityWindows:
        """The windows of two disjoint sets of entities, side by side."""
        sa, sb = a.state(), b.state()
        return cls.from_state(a.window, {k: np.concatenate([sa[k], sb[k]]) for k in COLUMNS})
