"""Plain PyTorch implementations of the sparse kernels: the CPU path, and the reference the Triton kernels
are tested against. They run on any device.

Submanifold convolution semantics (spec models.md 2.2). For every active voxel ``p = (b, x, y, z)``::

    out[p, co] = bias[co] + sum_{a, c2, c3 in 0..2} sum_ci W[co, a, c2, c3, ci] * in[(b, x+a-1, y+c2-1, z+c3-1), ci]

with ``in[q] = 0`` when ``q`` is not active in the same batch item. Internally the kernel offsets are
flattened as ``v = 9a + 3c2 + c3`` (x-major, z fastest; the centre tap is ``v = 13``), and a neighbour map
``table[i, v]`` holds the row of voxel ``i``'s neighbour at offset ``v`` or ``-1``.
"""

from __future__ import annotations

import itertools

import torch

KERNEL_VOLUME = 27
CENTER_TAP = 13
MISSING = -1

# Rows per chunk when building the neighbour map: bounds the (rows, 27) int64 query tensor to ~0.5 GB.
_MAP_CHUNK_ROWS = 1 << 21

KERNEL_OFFSETS = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=torch.int64)
"""(27, 3) int64 ``(dx, dy, dz)`` of tap ``v = 9(dx+1) + 3(dy+1) + (dz+1)``."""


def neighbor_map_reference(coords: torch.Tensor) -> torch.Tensor:
    """Build the 3x3x3 submanifold neighbour map by sorting voxel keys and binary search.

    Each voxel gets one int64 key from ``(b, x+1, y+1, z+1)`` in mixed radix with per-axis extent
    ``max + 3``; the padding by one on each side keeps the keys of out-of-range neighbours (``x - 1 = -1``,
    ``x + 1 = max + 1``) from aliasing a real voxel of another row, plane or batch item.

    Args:
        coords: ``(N, 4) int32`` ``(batch, x, y, z)``, non-negative, no duplicate rows.

    Returns:
        ``(N, 27) int32`` table: ``table[i, v]`` = row of the neighbour at offset ``v`` or ``-1``.

    Raises:
        ValueError: duplicate coordinates, or a grid too large for 63-bit keys.
    """
    n = coords.shape[0]
    device = coords.device
    if n == 0:
        return torch.zeros(0, KERNEL_VOLUME, dtype=torch.int32, device=device)
    c = coords.long()
    extent = (c[:, 1:].amax(0) + 3).tolist()
    batches = int(c[:, 0].max()) + 1
    if batches * extent[0] * extent[1] * extent[2] >= 2**62:
        raise ValueError(f"coords span too large a grid for 63-bit voxel keys: extents {extent}, {batches} items")
    key = ((c[:, 0] * extent[0] + c[:, 1] + 1) * extent[1] + c[:, 2] + 1) * extent[2] + c[:, 3] + 1
    sorted_key, order = torch.sort(key)
    if n > 1 and bool((sorted_key[1:] == sorted_key[:-1]).any()):
        raise ValueError("coords contain duplicate voxels; every (batch, x, y, z) must appear once")
    offsets = KERNEL_OFFSETS.to(device)
    delta = (offsets[:, 0] * extent[1] + offsets[:, 1]) * extent[2] + offsets[:, 2]  # (27,)
    table = torch.empty(n, KERNEL_VOLUME, dtype=torch.int32, device=device)
    for start in range(0, n, _MAP_CHUNK_ROWS):
        query = key[start:start + _MAP_CHUNK_ROWS, None] + delta[None, :]
        pos = torch.searchsorted(sorted_key, query).clamp_(max=n - 1)
        found = sorted_key[pos] == query
        table[start:start + _MAP_CHUNK_ROWS] = torch.where(found, order[pos], MISSING).to(torch.int32)
    return table


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # 16-bit inputs accumulate in fp32 and round once at the end, as the reference kernel does.
    return torch.float64 if dtype == torch.float64 else torch.float32


# Bytes of gathered neighbour features per chunk of rows: bounds the (rows, 27 * Ci) gather buffer.
_GATHER_CHUNK_BYTES = 1 << 28


def _row_chunks(n: int, row_bytes: int):
    step = max(1, _GATHER_CHUNK_BYTES // max(row_bytes, 1))
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def _gather_neighbors(padded: torch.Tensor, table: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """``(rows, 27 * Ci)``: the 27 neighbour rows of rows ``start:end``, zeros (the padding row) if absent."""
    n = padded.shape[0] - 1
    rows = table[start:end].long()
    rows = torch.where(rows >= 0, rows, n)
    return padded.index_select(0, rows.flatten()).reshape(end - start, -1)


def submanifold_conv3d_reference(
    feats: torch.Tensor,  # (N, Ci)
    table: torch.Tensor,  # (N, 27) int32
    weight: torch.Tensor,  # (Co, 27, Ci)
    bias: torch.Tensor | None,  # (Co,)
) -> torch.Tensor:
    """Submanifold 3x3x3 convolution as gather + one GEMM per chunk of rows.

    For a chunk of rows, the 27 neighbour feature rows of each row (zeros where absent) are gathered into
    ``(rows, 27 * Ci)`` and multiplied by ``weight.reshape(Co, 27 * Ci).T``: a single large GEMM, which is
    what a CPU does fastest, and no scatter.

    Args:
        feats: ``(N, Ci)`` input features.
        table: ``(N, 27) int32`` neighbour map of the input coordinates.
        weight: ``(Co, 27, Ci)`` kernel, tap index ``v = 9a + 3b + c``.
        bias: optional ``(Co,)``.

    Returns:
        ``(N, Co)`` in the dtype of ``feats``; products accumulate in fp32 (fp64 for fp64 inputs).
    """
    acc_dtype = _accumulation_dtype(feats.dtype)
    n, c_in = feats.shape
    c_out = weight.shape[0]
    padded = torch.cat([feats.to(acc_dtype), feats.new_zeros(1, c_in, dtype=acc_dtype)])
    w = weight.to(acc_dtype).reshape(c_out, KERNEL_VOLUME * c_in).T
    out = torch.empty(n, c_out, dtype=feats.dtype, device=feats.device)
    b = bias.to(acc_dtype) if bias is not None else None
    for start, end in _row_chunks(n, KERNEL_VOLUME * c_in * padded.element_size()):
        gathered = _gather_neighbors(padded, table, start, end)
        chunk = torch.addmm(b, gathered, w) if b is not None else gathered @ w
        out[start:end] = chunk.to(feats.dtype)
    return out


def submanifold_conv3d_backward_reference(
    grad_out: torch.Tensor,  # (N, Co)
    feats: torch.Tensor,  # (N, Ci)
    table: torch.Tensor,  # (N, 27) int32
    weight: torch.Tensor,  # (Co, 27, Ci)
    needs_input_grad: bool = True,
    needs_weight_grad: bool = True,
):
    """Gradients of `submanifold_conv3d_reference` with respect to its input and weight.

    The map is symmetric (``table[i, v] = j  <=>  table[j, 26 - v] = i``), so the input gradient is the same
    convolution applied to ``grad_out`` with the mirrored, transposed kernel ``W'[ci, u, co] = W[co, 26 - u, ci]``.
    The weight gradient is ``grad_out^T @ gathered`` summed over row chunks.

    Returns:
        ``(grad_feats (N, Ci) or None, grad_weight (Co, 27, Ci) or None)`` in the input / weight dtypes.
    """
    grad_in = grad_w = None
    if needs_input_grad:
        mirrored = weight.flip(1).permute(2, 1, 0)  # (Ci, 27, Co)
        grad_in = submanifold_conv3d_reference(grad_out.to(feats.dtype), table, mirrored, None)
    if needs_weight_grad:
        acc_dtype = _accumulation_dtype(feats.dtype)
        n, c_in = feats.shape
        padded = torch.cat([feats.to(acc_dtype), feats.new_zeros(1, c_in, dtype=acc_dtype)])
        g = grad_out.to(acc_dtype)
        acc = torch.zeros(grad_out.shape[1], KERNEL_VOLUME * c_in, dtype=acc_dtype, device=feats.device)
        for start, end in _row_chunks(n, KERNEL_VOLUME * c_in * padded.element_size()):
            acc.addmm_(g[start:end].T, _gather_neighbors(padded, table, start, end))
        grad_w = acc.reshape(-1, KERNEL_VOLUME, c_in).to(weight.dtype)
    return grad_in, grad_w
