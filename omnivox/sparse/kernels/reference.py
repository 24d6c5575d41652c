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


def neighbor_pairs_reference(table: torch.Tensor) -> list:
    """Split a neighbour map into per-tap row pairs for gather-GEMM-scatter.

    Args:
        table: ``(N, 27) int32`` neighbour map.

    Returns:
        27 tuples ``(out_rows, in_rows)`` of ``(P_v,) int64``: ``table[out_rows, v] == in_rows``.
    """
    pairs = []
    for v in range(KERNEL_VOLUME):
        out_rows = torch.nonzero(table[:, v] >= 0).flatten()
        pairs.append((out_rows, table[out_rows, v].long()))
    return pairs


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # 16-bit inputs accumulate in fp32 and round once at the end, as the reference kernel does.
    return torch.float64 if dtype == torch.float64 else torch.float32


def submanifold_conv3d_reference(
    feats: torch.Tensor,  # (N, Ci)
    pairs: list,  # 27 x ((P_v,), (P_v,)) int64
    weight: torch.Tensor,  # (Co, 27, Ci)
    bias: torch.Tensor | None,  # (Co,)
) -> torch.Tensor:
    """Submanifold 3x3x3 convolution by 27 gather-GEMM-scatter steps.

    Args:
        feats: ``(N, Ci)`` input features.
        pairs: output of `neighbor_pairs_reference` for the input's coordinates.
        weight: ``(Co, 27, Ci)`` kernel, tap index ``v = 9a + 3b + c``.
        bias: optional ``(Co,)``.

    Returns:
        ``(N, Co)`` in the dtype of ``feats``; products accumulate in fp32 (fp64 for fp64 inputs).
    """
    acc_dtype = _accumulation_dtype(feats.dtype)
    x = feats.to(acc_dtype)
    w = weight.to(acc_dtype)
    out = torch.zeros(feats.shape[0], weight.shape[0], dtype=acc_dtype, device=feats.device)
    for v, (out_rows, in_rows) in enumerate(pairs):
        if out_rows.numel():
            out.index_add_(0, out_rows, x.index_select(0, in_rows) @ w[:, v, :].T)
    if bias is not None:
        out += bias.to(acc_dtype)
    return out.to(feats.dtype)


def submanifold_conv3d_backward_reference(
    grad_out: torch.Tensor,  # (N, Co)
    feats: torch.Tensor,  # (N, Ci)
    pairs: list,
    weight: torch.Tensor,  # (Co, 27, Ci)
    needs_input_grad: bool = True,
    needs_weight_grad: bool = True,
):
    """Gradients of `submanifold_conv3d_reference` with respect to its input and weight.

    ``grad_in[j] = sum over pairs (i, j) of tap v of grad_out[i] @ W_v`` and
    ``grad_W_v = sum over the same pairs of grad_out[i]^T feats[j]``.

    Returns:
        ``(grad_feats (N, Ci) or None, grad_weight (Co, 27, Ci) or None)`` in the input / weight dtypes.
    """
    acc_dtype = _accumulation_dtype(feats.dtype)
    g = grad_out.to(acc_dtype)
    x = feats.to(acc_dtype)
    w = weight.to(acc_dtype)
    grad_in = torch.zeros_like(x) if needs_input_grad else None
    grad_w = torch.zeros_like(w) if needs_weight_grad else None
    for v, (out_rows, in_rows) in enumerate(pairs):
        if out_rows.numel() == 0:
            continue
        g_rows = g.index_select(0, out_rows)
        if needs_input_grad:
            grad_in.index_add_(0, in_rows, g_rows @ w[:, v, :])
        if needs_weight_grad:
            grad_w[:, v, :] = g_rows.T @ x.index_select(0, in_rows)
    return (grad_in.to(feats.dtype) if needs_input_grad else None,
            grad_w.to(weight.dtype) if needs_weight_grad else None)
