"""Entity key → dense row index, as an open-addressing hash table compiled with numba.

Per-entity state lives in flat arrays (one row per entity, in order of first sight);
this index finds an entity's row in a few nanoseconds. numpy has no hash map, and
``searchsorted`` or a polars join cost 50-200 ns a lookup here, which is most of a
check (``bench/bench_check.py`` measures it).

Linear probing, power-of-two table, kept at most half full; slots hold row + 1 so a
zero-filled table is empty. The multiplier is Fibonacci hashing's 2^64/φ.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, nogil=True)
def _slot(key: np.uint64, bits: int) -> int:
    return np.int64((key * _GOLDEN) >> np.uint64(64 - bits))


@numba.njit(cache=True, nogil=True)
def _find(table: np.ndarray, keys: np.ndarray, key: np.uint64, bits: int) -> tuple[int, int]:
    """(row or -1, slot where the search ended)."""
    mask = (1 << bits) - 1
    slot = _slot(key, bits)
    while True:
        entry = table[slot]
        if entry == 0:
            return -1, slot
        if keys[entry - 1] == key:
            return entry - 1, slot
        slot = (slot + 1) & mask


@numba.njit(cache=True, nogil=True)
def _lookup(table: np.ndarray, keys: np.ndarray, bits: int, query: np.ndarray) -> np.ndarray:
    out = np.empty(query.shape[0], dtype=np.int64)
    for i in range(query.shape[0]):
        out[i] = _find(table, keys, query[i], bits)[0]
    return out


@numba.njit(cache=True, nogil=True)
def _insert(table: np.ndarray, keys: np.ndarray, size: int, bits: int, query: np.ndarray
            ) -> tuple[np.ndarray, int]:
    """Rows of ``query``, appending unseen keys to ``keys`` (capacity ensured by caller)."""
    out = np.empty(query.shape[0], dtype=np.int64)
    for i in range(query.shape[0]):
        row, slot = _find(table, keys, query[i], bits)
        if row < 0:
            row = size
            keys[row] = query[i]
            table[slot] = row + 1
            size += 1
        out[i] = row
    return out, size


@numba.njit(cache=True, nogil=True)
def _build(keys: np.ndarray, size: int, bits: int) -> np.ndarray:
    table = np.zeros(1 << bits, dtype=np.int64)
    for row in range(size):
        slot = _find(table, keys, keys[row], bits)[1]
        table[slot] = row + 1
    return table


@numba.njit(cache=True, nogil=True)
def _count_missing(table: np.ndarray, keys: np.ndarray, bits: int, query: np.ndarray) -> int:
    missing = 0
    for i in range(query.shape[0]):
        if _find(table, keys, query[i], bits)[0] < 0:
            missing += 1
    return missing


def _bits_for(capacity: int) -> int:
    return max(4, int(2 * max(capacity, 1) - 1).bit_length())


class KeyIndex:
    """Maps uint64 entity keys to dense rows ``0..len-1`` in order of first sight.

    >>> index = KeyIndex()
    >>> index.rows(np.array([7, 9, 7], dtype=np.uint64), insert=True).tolist()
    [0, 1, 0]
    >>> index.rows(np.array([9, 5], dtype=np.uint64)).tolist()
    [1, -1]
    """

    def __init__(self, keys: npt.NDArray[np.uint64] | None = None) -> None:
        keys = np.empty(0, dtype=np.uint64) if keys is None else np.asarray(keys, np.uint64)
        self._size = len(keys)
        self._keys = np.empty(max(16, 2 * self._size), dtype=np.uint64)
        self._keys[: self._size] = keys
        self._bits = _bits_for(len(self._keys))
        self._table = _build(self._keys, self._size, self._bits)
        if len(np.unique(keys)) != len(keys):
            raise ValueError("KeyIndex keys must be distinct")

    def __len__(self) -> int:
        return self._size

    @property
    def keys(self) -> npt.NDArray[np.uint64]:
        return self._keys[: self._size]

    def rows(self, query: npt.NDArray[np.uint64], *, insert: bool = False
             ) -> npt.NDArray[np.int64]:
        """Row of each key (-1 when unknown), or new rows for unknown keys with ``insert``."""
        query = np.ascontiguousarray(query, dtype=np.uint64)
        if not insert:
            return _lookup(self._table, self._keys, self._bits, query)  # type: ignore[no-any-return]
        missing = _count_missing(self._table, self._keys, self._bits, query)
        if missing:
            self._reserve(self._size + missing)
        rows, self._size = _insert(self._table, self._keys, self._size, self._bits, query)
        return rows  # type: ignore[no-any-return]

    def _reserve(self, capacity: int) -> None:
        if capacity <= len(self._keys):
            return
        grown = np.empty(max(capacity, 2 * len(self._keys)), dtype=np.uint64)
        grown[: self._size] = self._keys[: self._size]
        self._keys = grown
        self._bits = _bits_for(len(grown))
        self._table = _build(self._keys, self._size, self._bits)
