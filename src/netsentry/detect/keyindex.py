"""Entity key → dense row index, as an open-addressing hash table compiled with numba.

Per-entity state lives in flat arrays (one row per entity, in order of first sight);
this index finds an entity's row with one memory access in the common case. numpy has
no hash map, and ``searchsorted`` or a polars join cost 50-200 ns a lookup here, which
would be most of a check (``bench/bench_check.py`` measures it).

Linear probing over a power-of-two table kept at most half full. Each slot holds the
key and its row + 1 side by side (``table[2s]``, ``table[2s+1]``), so a probe touches
one cache line; row + 1 = 0 marks an empty slot. Keys are hashed by Fibonacci hashing
(multiplication by 2^64/φ, top bits).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, nogil=True, inline="always")
def find(table: np.ndarray, key: np.int64, bits: int) -> tuple[Any, Any]:
    """(row or -1, slot where the search ended)."""
    mask = (1 << bits) - 1
    slot = np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(64 - bits))
    while True:
        entry = table[2 * slot + 1]
        if entry == 0:
            return -1, slot
        if table[2 * slot] == key:
            return entry - 1, slot
        slot = (slot + 1) & mask


@numba.njit(cache=True, nogil=True)
def _lookup(table: np.ndarray, bits: int, query: np.ndarray) -> np.ndarray:
    out = np.empty(query.shape[0], dtype=np.int64)
    for i in range(query.shape[0]):
        out[i] = find(table, query[i], bits)[0]
    return out


@numba.njit(cache=True, nogil=True)
def _insert(
    table: np.ndarray,
    keys: np.ndarray,
    size: int,
    bits: int,
    query: np.ndarray,
    out: np.ndarray,
    start: int,
) -> tuple[int, int]:
    """Fill ``out`` from ``start``, appending unseen keys; stop when ``keys`` is full.

    Returns (new size, index where it stopped: ``len(query)`` when done).
    """
    capacity = keys.shape[0]
    for i in range(start, query.shape[0]):
        row, slot = find(table, query[i], bits)
        if row < 0:
            if size == capacity:
                return size, i
            row = size
            keys[row] = query[i]
            table[2 * slot] = query[i]
            table[2 * slot + 1] = row + 1
            size += 1
        out[i] = row
    return size, query.shape[0]


@numba.njit(cache=True, nogil=True)
def _build(keys: np.ndarray, size: int, bits: int) -> np.ndarray:
    table = np.zeros(2 << bits, dtype=np.int64)
    for row in range(size):
        slot = find(table, keys[row], bits)[1]
        table[2 * slot] = keys[row]
        table[2 * slot + 1] = row + 1
    return table


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
        if len(np.unique(keys)) != len(keys):
            raise ValueError("KeyIndex keys must be distinct")
        self._size = len(keys)
        self._keys = np.empty(max(16, 2 * self._size), dtype=np.int64)
        self._keys[: self._size] = keys.view(np.int64)
        self._rebuild()

    def _rebuild(self) -> None:
        self._bits = _bits_for(len(self._keys))
        self._table = _build(self._keys, self._size, self._bits)

    def __len__(self) -> int:
        return self._size

    @property
    def table(self) -> tuple[npt.NDArray[np.int64], int]:
        """The raw table and its bit width, for kernels that fuse the lookup in."""
        return self._table, self._bits

    @property
    def keys(self) -> npt.NDArray[np.uint64]:
        return self._keys[: self._size].view(np.uint64)

    def rows(self, query: npt.NDArray[np.uint64], *, insert: bool = False) -> npt.NDArray[np.int64]:
        """Row of each key (-1 when unknown), or new rows for unknown keys with ``insert``."""
        query = np.ascontiguousarray(query, dtype=np.uint64).view(np.int64)
        if not insert:
            return _lookup(self._table, self._bits, query)
        out = np.empty(len(query), dtype=np.int64)
        done = 0
        while True:
            self._size, done = _insert(
                self._table, self._keys, self._size, self._bits, query, out, done
            )
            if done == len(query):
                return out
            grown = np.empty(2 * len(self._keys), dtype=np.int64)
            grown[: self._size] = self._keys[: self._size]
            self._keys = grown
            self._rebuild()
