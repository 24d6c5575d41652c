"""A small open-addressing hash table for numba kernels: int64 keys (>= 0) -> int64 values.

Used where a dense index does not fit: voxel keys for quad assembly and attribute lookups, and undirected edge keys
for boundary and orientation passes. Capacity is a power of two kept at least twice the number of entries; linear
probing; the empty slot holds -1.
"""

from __future__ import annotations

import numba as nb
import numpy as np

EMPTY = np.int64(-1)


@nb.njit(cache=True, inline="always")
def _slot(key, mask):
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: neighbouring keys spread out
    return np.int64(h >> np.uint64(20)) & mask


@nb.njit(cache=True)
def capacity_for(n):
    cap = 16
    while cap < 2 * n:
        cap *= 2
    return cap


@nb.njit(cache=True)
def new_table(n):
    """An empty table sized for ``n`` entries: (keys, values)."""
    cap = capacity_for(max(n, 8))
    return np.full(cap, EMPTY, dtype=np.int64), np.empty(cap, dtype=np.int64)


@nb.njit(cache=True)
def lookup(keys, values, key):
    """The value stored for ``key``, or -1."""
    mask = keys.shape[0] - 1
    s = _slot(key, mask)
    while True:
        k = keys[s]
        if k == key:
            return values[s]
        if k == EMPTY:
            return -1
        s = (s + 1) & mask


@nb.njit(cache=True)
def insert(keys, values, key, value):
    """Store ``value`` for ``key`` unless present; returns the value now stored for ``key``."""
    mask = keys.shape[0] - 1
    s = _slot(key, mask)
    while True:
        k = keys[s]
        if k == key:
            return values[s]
        if k == EMPTY:
            keys[s] = key
            values[s] = value
            return value
        s = (s + 1) & mask


@nb.njit(cache=True)
def build(keys_in):
    """A table mapping each of ``keys_in`` (unique) to its row index."""
    keys, values = new_table(keys_in.shape[0])
    for row in range(keys_in.shape[0]):
        insert(keys, values, keys_in[row], row)
    return keys, values
