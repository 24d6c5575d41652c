"""A small open-addressing hash table for numba kernels: int64 keys (>= 0) -> int64 values.

Used where a dense index does not fit: voxel keys for quad assembly and attribute lookups, and undirected edge keys
for boundary and orientation passes. Capacity is a power of two kept at least twice the number of entries
(`number_edges`: at least 4/3 of them, growing as it goes); linear probing; the empty slot holds -1.
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
def empty_table(cap):
    """An empty table of ``cap`` slots (a power of two): (keys, values)."""
    return np.full(cap, EMPTY, dtype=np.int64), np.empty(cap, dtype=np.int64)


@nb.njit(cache=True)
def new_table(n):
    """An empty table sized for ``n`` entries: (keys, values)."""
    return empty_table(capacity_for(max(n, 8)))


@nb.njit(cache=True, inline="always")
def _probe(keys, key):
    """The slot holding ``key``, or the empty slot where it would go (linear probing)."""
    mask = keys.shape[0] - 1
    s = _slot(key, mask)
    while keys[s] != key and keys[s] != EMPTY:
        s = (s + 1) & mask
    return s


@nb.njit(cache=True)
def lookup(keys, values, key):
    """The value stored for ``key``, or -1."""
    s = _probe(keys, key)
    return values[s] if keys[s] == key else -1


@nb.njit(cache=True)
def insert(keys, values, key, value):
    """Store ``value`` for ``key`` unless present; returns the value now stored for ``key``."""
    s = _probe(keys, key)
    if keys[s] == EMPTY:
        keys[s] = key
        values[s] = value
    return values[s]


@nb.njit(cache=True)
def number_edges(faces, num_vertices):
    """Number the undirected edges of a triangle mesh in order of first use.

    The table starts sized for a closed mesh (1.5 edges per face) at a load of at most 3/4 and doubles when it
    fills that far: sizing it for all 3F half-edges at load 1/2 took 8.6 GB at 45M faces.

    Args:
        faces: (F, 3) int64.
        num_vertices: V, for the edge key ``min * V + max``.

    Returns:
        edge_of: (F, 3) int64 id of the edge from corner c to corner c + 1 of each face.
        keys: (E,) int64 key of each edge.
        counts: (E,) int32 number of faces on each edge.
    """
    F = faces.shape[0]
    nv = np.int64(num_vertices)
    cap = 16
    while 3 * cap < 4 * (3 * F // 2 + 8):
        cap *= 2
    tk, tv = empty_table(cap)
    edge_of = np.empty((F, 3), dtype=np.int64)
    keys = np.empty(3 * F, dtype=np.int64)
    counts = np.zeros(3 * F, dtype=np.int32)
    n = 0
    for f in range(F):
        for c in range(3):
            a, b = faces[f, c], faces[f, (c + 1) % 3]
            key = min(a, b) * nv + max(a, b)
            e = insert(tk, tv, key, n)
            if e == n:
                keys[n] = key
                n += 1
                if 4 * n > 3 * tk.shape[0]:
                    tk, tv = build(keys[:n])  # edge ids are row indices of keys: rehash at load 1/2
            edge_of[f, c] = e
            counts[e] += 1
    return edge_of, keys[:n].copy(), counts[:n].copy()


@nb.njit(cache=True)
def build(keys_in):
    """A table mapping each of ``keys_in`` (unique) to its row index."""
    keys, values = new_table(keys_in.shape[0])
    for row in range(keys_in.shape[0]):
        insert(keys, values, keys_in[row], row)
    return keys, values
