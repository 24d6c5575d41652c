"""Reversible attribute filters of `.vxz` chunks (spec ovoxel.md 5.3).

A filter replaces each attribute row by its difference (mod 256) to a *predictor* row, which makes smooth
attributes compress better. Both filters used by the reference fit one pattern, which this module makes explicit
as a *prediction plan* of two (n,) int64 arrays:

* ``rows[i]``: the output row that voxel ``i``'s residual goes to;
* ``predictors[i]``: the voxel whose value predicts voxel ``i``, or -1 (the value is stored raw).

Encoding is ``out[rows[i]] = value[i] - value[predictors[i]]``, one vectorised NumPy expression. Decoding walks
voxels in ascending order, ``value[i] = out[rows[i]] + value[predictors[i]]``; every predictor precedes its voxel,
so each value it needs is already decoded.

``parent``: in the chunk's octree, each node's representative is the value of its first voxel (in Z-order). Row 0
holds the root's representative; then, in pre-order of the internal nodes, a node with ``m`` children holds
``m - 1`` rows, ``rep(child_k) - rep(child_{k-1})``. The representative of child ``k`` is the value of its first
voxel ``i``, and that of child ``k - 1`` is the first voxel of the previous child: the predictor.

``neighbor``: the predictor of voxel ``(x, y, z)`` is the *last* existing voxel in the list
``(x-1,y,z), (x,y-1,z), (x,y,z-1), (x-1,y-1,z), (x-1,y,z-1), (x,y-1,z-1), (x-1,y-1,z-1)``, and rows stay in
place. Z-order is monotone in each coordinate, so every such neighbour precedes its voxel in Z-order.

Worked examples (depth 2, voxels (0,0,0), (1,0,0), (3,3,3) with values 10, 20, 30): parent rows ``10, 20, 10``.
Voxels (0,0,0)=10, (1,0,0)=20, (1,1,0)=35, (0,0,1)=7 with the neighbour filter: ``10, 10, 25, 253``.
"""

from __future__ import annotations

import numba
import numpy as np

from omnivox.ovoxel.io.svo import check_codes, svo_encode

FILTERS = ("none", "parent", "neighbor")

# Neighbour offsets in increasing priority: a later existing neighbour overrides an earlier one.
NEIGHBOR_OFFSETS = (
    (-1, 0, 0),
    (0, -1, 0),
    (0, 0, -1),
    (-1, -1, 0),
    (-1, 0, -1),
    (0, -1, -1),
    (-1, -1, -1),
)


def encode_filter(name: str, codes: np.ndarray, values: np.ndarray, depth: int) -> np.ndarray:
    """Apply a filter to the attribute rows of one chunk.

    Args:
        name: ``"none"``, ``"parent"`` or ``"neighbor"``.
        codes: (n,) int64 strictly ascending chunk-local Z-order codes of the voxels.
        values: (n, C) uint8 attribute rows, row ``i`` belonging to ``codes[i]``.
        depth: octree depth, ``log2(chunk_size)``.

    Returns:
        (n, C) uint8 filtered rows.
    """
    if name not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {name!r}")
    values = _check_values(values, codes)
    if name == "none":
        return values
    rows, predictors = _plan(name, codes, depth)
    residual = values.copy()
    has_predictor = predictors >= 0
    residual[has_predictor] -= values[predictors[has_predictor]]  # uint8 arithmetic wraps mod 256
    out = np.empty_like(values)
    out[rows] = residual
    return out


def decode_filter(name: str, codes: np.ndarray, filtered: np.ndarray, depth: int) -> np.ndarray:
    """Undo :func:`encode_filter`.

    Args:
        name: the filter used when encoding.
        codes: (n,) int64 strictly ascending chunk-local Z-order codes.
        filtered: (n, C) uint8 filtered rows.
        depth: octree depth.

    Returns:
        (n, C) uint8 attribute rows in the order of ``codes``.
    """
    if name not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {name!r}")
    filtered = _check_values(filtered, codes)
    if name == "none":
        return filtered
    rows, predictors = _plan(name, codes, depth)
    return _undo_prediction(filtered, rows, predictors)


def _check_values(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    if values.dtype != np.uint8 or values.ndim != 2 or values.shape[0] != codes.shape[0]:
        raise ValueError(
            f"filter input must be ({codes.shape[0]}, C) uint8, got {values.shape} {values.dtype}"
        )
    return np.ascontiguousarray(values)


def _plan(name: str, codes: np.ndarray, depth: int):
    codes = check_codes(codes, depth)
    if name == "parent":
        node_bytes = svo_encode(codes, depth)
        return _parent_plan(codes, depth, node_bytes)
    if name == "neighbor":
        return _neighbor_plan(codes)
    raise ValueError(f"filter must be one of {FILTERS}, got {name!r}")


def _neighbor_plan(codes: np.ndarray):
    offsets = -np.asarray(NEIGHBOR_OFFSETS, dtype=np.int64)  # 1 where an axis steps back
    predictors = _neighbor_predictors(np.ascontiguousarray(codes, dtype=np.int64), offsets)
    return np.arange(codes.shape[0], dtype=np.int64), predictors


# Bits of each axis in a Z-order code: x at 3k + 2, y at 3k + 1, z at 3k.
_AXIS_MASKS = np.array([0o4444444444, 0o2222222222, 0o1111111111], dtype=np.int64)


@numba.njit(cache=True, nogil=True)
def _neighbor_predictors(codes, steps_back):
    count = codes.size
    predictors = np.full(count, -1, dtype=np.int64)
    for i in range(count):
        code = codes[i]
        # The last existing neighbour of the list wins, so search the list backwards and stop at the first hit.
        for k in range(steps_back.shape[0] - 1, -1, -1):
            query = code
            inside = True
            for axis in range(3):
                if steps_back[k, axis]:
                    mask = _AXIS_MASKS[axis]
                    if query & mask == 0:  # coordinate 0: the neighbour is outside the chunk
                        inside = False
                        break
                    # Subtract 1 from the axis while it stays spread over its bits ("dilated" arithmetic).
                    query = (((query & mask) - 1) & mask) | (query & ~mask)
            if not inside:
                continue
            found = _find_before(codes, query, i)
            if found >= 0:
                predictors[i] = found
                break
    return predictors


@numba.njit(cache=True, nogil=True)
def _find_before(codes, query, stop):
    """Index of ``query`` in ``codes[:stop]`` (ascending), or -1.

    Neighbours tend to sit just before ``stop`` in Z-order, so gallop backwards before bisecting.
    """
    if stop == 0:
        return -1
    high = stop
    step = 1
    low = stop - 1
    while low > 0 and codes[low] > query:
        high = low
        step *= 2
        low = stop - step
        if low < 0:
            low = 0
    # Invariant: codes[high:stop] > query; bisect [low, high).
    while low < high:
        middle = (low + high) // 2
        if codes[middle] < query:
            low = middle + 1
        else:
            high = middle
    if low < stop and codes[low] == query:
        return low
    return -1


@numba.njit(cache=True, nogil=True)
def _parent_plan(codes, depth, node_bytes):
    count = codes.size
    rows = np.empty(count, dtype=np.int64)
    predictors = np.empty(count, dtype=np.int64)
    if count == 0:
        return rows, predictors
    # First residual row of each node (pre-order): row 0 is the root value, then m - 1 rows per node.
    first_row = np.empty(node_bytes.size, dtype=np.int64)
    next_row = 1
    for node in range(node_bytes.size):
        first_row[node] = next_row
        children = 0
        mask = node_bytes[node]
        while mask:
            mask &= mask - 1
            children += 1
        next_row += children - 1

    open_node = np.empty(depth, dtype=np.int64)  # pre-order index of the open node on each level
    children_seen = np.zeros(depth, dtype=np.int64)  # children of that node met so far, minus one
    first_voxel_of_child = np.zeros(depth, dtype=np.int64)  # first voxel of its latest child
    for level in range(depth):
        open_node[level] = level
    next_node = depth
    rows[0] = 0
    predictors[0] = -1
    for i in range(1, count):
        code = codes[i]
        previous = codes[i - 1]
        branch_level = depth - 1
        for level in range(depth):
            shift = 3 * (depth - 1 - level)
            if ((code >> shift) & 7) != ((previous >> shift) & 7):
                branch_level = level
                break
        children_seen[branch_level] += 1
        rows[i] = first_row[open_node[branch_level]] + children_seen[branch_level] - 1
        predictors[i] = first_voxel_of_child[branch_level]
        first_voxel_of_child[branch_level] = i
        for level in range(branch_level + 1, depth):
            open_node[level] = next_node
            next_node += 1
            children_seen[level] = 0
            first_voxel_of_child[level] = i
    return rows, predictors


@numba.njit(cache=True, nogil=True)
def _undo_prediction(filtered, rows, predictors):
    count, channels = filtered.shape
    values = np.empty_like(filtered)
    for i in range(count):
        row = rows[i]
        predictor = predictors[i]
        for c in range(channels):
            if predictor < 0:
                values[i, c] = filtered[row, c]
            else:
                values[i, c] = filtered[row, c] + values[predictor, c]  # uint8 wraps mod 256
    return values
