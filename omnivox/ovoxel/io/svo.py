"""Sparse voxel octree (SVO) byte stream: the coordinate part of a `.vxz` chunk (spec ovoxel.md 5.2).

The voxels of one chunk (local coordinates in ``[0, 2**depth)``) are described by an octree of ``depth`` levels.
Each internal node is one byte, its *child mask*: bit ``i`` is set when child octant ``i`` holds a voxel. The
octant digit of a voxel at level ``j`` is ``(code >> 3 * (depth - 1 - j)) & 7`` where ``code`` is its Z-order
code, i.e. ``(x_bit << 2) | (y_bit << 1) | z_bit`` of coordinate bit ``depth - 1 - j``. Nodes of the last level
(``depth - 1``) point at voxels directly, so leaves take no bytes. The bytes are written depth first, pre-order,
children in ascending octant order.

Worked example (depth 2, voxels (0,0,0), (1,0,0), (3,3,3), Z-order codes 0, 4, 63)::

    root      children 0 and 7          -> 0b10000001 = 0x81
    node 0    voxels 0 (digit 0), 4 (4) -> 0b00010001 = 0x11
    node 7    voxel 63 (digit 7)        -> 0b10000000 = 0x80
    stream: 81 11 80

Both directions are sequential walks over the sorted codes, compiled with numba.
"""

from __future__ import annotations

import numba
import numpy as np

MAX_DEPTH = 10  # chunk-local Z-order codes have 10 bits per axis


def svo_encode(codes: np.ndarray, depth: int) -> np.ndarray:
    """Octree bytes of a set of voxels.

    Args:
        codes: (n,) integer array of chunk-local Z-order codes, strictly ascending, each < ``8**depth``.
        depth: number of octree levels, ``log2(chunk_size)``, in [1, 10].

    Returns:
        (num_nodes,) uint8 child masks in pre-order; a single ``0`` byte for an empty chunk.

    Raises:
        ValueError: ``depth`` out of range, codes out of range or not strictly ascending.
    """
    codes = check_codes(codes, depth)
    if codes.size == 0:
        return np.zeros(1, dtype=np.uint8)
    return _svo_encode_kernel(codes, depth)


def check_codes(codes: np.ndarray, depth: int) -> np.ndarray:
    """Validate chunk-local Z-order codes: (n,) integers, strictly ascending, in ``[0, 8**depth)``.

    Returns:
        (n,) int64 contiguous copy or view.

    Raises:
        ValueError: any of the above does not hold, or ``depth`` is not in [1, 10].
    """
    _check_depth(depth)
    array = np.asarray(codes)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise ValueError(f"codes must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.int64)
    if array.size and (array[0] < 0 or array[-1] >= 8**depth):
        raise ValueError(f"codes must lie in [0, 8**{depth}), got [{array[0]}, {array[-1]}]")
    if array.size > 1 and not (np.diff(array) > 0).all():
        raise ValueError("codes must be strictly ascending (sorted, no duplicate voxels)")
    return array


def svo_decode(data: np.ndarray, depth: int, max_voxels: int) -> np.ndarray:
    """Voxel codes of an octree byte stream; the inverse of :func:`svo_encode`.

    Args:
        data: (num_nodes,) uint8 child masks in pre-order.
        depth: number of octree levels.
        max_voxels: upper bound on the number of voxels the caller accepts; a stream describing more is rejected
            (this bounds the output allocation for untrusted files).

    Returns:
        (n,) int64 strictly ascending chunk-local Z-order codes.

    Raises:
        ValueError: the stream ends inside the tree, has bytes after it, or describes more than ``max_voxels``
            voxels.
    """
    _check_depth(depth)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if data.ndim != 1 or data.size == 0:
        raise ValueError("octree stream is empty")
    # Every byte of the last level names at most 8 voxels, so 8 * len(data) bounds the voxel count as well.
    capacity = int(min(max(max_voxels, 0), 8 * data.size, 8**depth))
    codes, count, status = _svo_decode_kernel(data, depth, capacity)
    if status == _STATUS_TRUNCATED:
        raise ValueError(f"octree stream of {data.size} bytes ends inside the tree (truncated or corrupt)")
    if status == _STATUS_TOO_MANY:
        raise ValueError(f"octree stream describes more than the {capacity} voxels allowed here")
    if status == _STATUS_TRAILING:
        raise ValueError(f"octree stream has bytes after the end of the tree ({data.size} bytes in total)")
    return codes[:count]


def _check_depth(depth: int) -> None:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be an int in [1, {MAX_DEPTH}], got {depth!r}")


_STATUS_OK = 0
_STATUS_TRUNCATED = 1
_STATUS_TOO_MANY = 2
_STATUS_TRAILING = 3


@numba.njit(cache=True, nogil=True)
def _svo_encode_kernel(codes, depth):
    out = np.zeros(codes.size * depth, dtype=np.uint8)
    node_at_level = np.zeros(depth, dtype=np.int64)  # byte position of the open node on each level
    num_bytes = 0
    for i in range(codes.size):
        code = codes[i]
        if i == 0:
            first_new_level = 0
            node_at_level[0] = 0
            num_bytes = 1
        else:
            # The first level whose octant digit differs from the previous voxel's: the previous path is shared
            # above it, and every node below it is new.
            previous = codes[i - 1]
            first_new_level = depth - 1
            for level in range(depth):
                shift = 3 * (depth - 1 - level)
                if ((code >> shift) & 7) != ((previous >> shift) & 7):
                    first_new_level = level
                    break
        shift = 3 * (depth - 1 - first_new_level)
        out[node_at_level[first_new_level]] |= np.uint8(1 << ((code >> shift) & 7))
        for level in range(first_new_level + 1, depth):
            shift = 3 * (depth - 1 - level)
            node_at_level[level] = num_bytes
            out[num_bytes] = np.uint8(1 << ((code >> shift) & 7))
            num_bytes += 1
    return out[:num_bytes].copy()


@numba.njit(cache=True, nogil=True)
def _svo_decode_kernel(data, depth, capacity):
    codes = np.empty(capacity, dtype=np.int64)
    remaining_mask = np.zeros(depth, dtype=np.int64)  # child bits not yet visited, per level of the open path
    prefix = np.zeros(depth, dtype=np.int64)  # code prefix of the open node on each level
    remaining_mask[0] = data[0]
    position = 1
    count = 0
    level = 0
    while level >= 0:
        mask = remaining_mask[level]
        if mask == 0:
            level -= 1
            continue
        octant = 0
        while not (mask >> octant) & 1:
            octant += 1
        remaining_mask[level] = mask & (mask - 1)
        child = prefix[level] * 8 + octant
        if level == depth - 1:
            if count == capacity:
                return codes, count, _STATUS_TOO_MANY
            codes[count] = child
            count += 1
        else:
            if position >= data.size:
                return codes, count, _STATUS_TRUNCATED
            level += 1
            remaining_mask[level] = data[position]
            prefix[level] = child
            position += 1
    if position != data.size:
        return codes, count, _STATUS_TRAILING
    return codes, count, _STATUS_OK
