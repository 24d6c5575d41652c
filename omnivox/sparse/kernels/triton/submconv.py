"""Triton kernels for the submanifold 3x3x3 convolution: implicit GEMM with the gather fused into the loads.

Forward (and the input gradient, which is the same computation with a mirrored, transposed kernel):
one program computes a ``BLOCK_N x BLOCK_M`` tile of ``out[rows, :]``. For each of the 27 taps it loads the
neighbour rows ``table[rows, v]`` and then ``feats[neighbour, k-chunk]`` straight into the dot-product
operand (rows without a neighbour load zeros), so the ``(N, 27, Ci)`` gathered tensor is never formed.

Skipping empty taps. Surface-like voxel sets have about 10 of 27 neighbours per voxel. Rows are processed
in a schedule (`row_schedule`) that groups rows with similar neighbour patterns, and each block of
``BLOCK_N`` rows carries a 27-bit mask of the taps any of its rows uses; taps absent from the whole block
are skipped. Rows can be sorted inside windows of consecutive rows (keeps gathers local) or globally
(skips the most taps); the global sort measured fastest and is the default (see design.md).

Weight gradient: one program owns a ``(tap, Co tile, Ci tile)`` block of ``grad_W`` and a range of row
blocks (split-K over rows); partial sums are added atomically into an fp32 buffer.

All products accumulate in fp32; fp32 inputs use exact IEEE fp32 dot products (no TF32) so that the result
matches the PyTorch path to ~1e-6.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

KERNEL_VOLUME = 27


@triton.jit
def _submconv_fwd_kernel(
    feats_ptr,  # (N, K) input rows
    table_ptr,  # (N, 27) int32 neighbour rows, -1 = none
    order_ptr,  # (N,) int32 schedule: program rows
    block_mask_ptr,  # (num_blocks,) int32 taps used by each block of the schedule
    weight_ptr,  # (27, K, M) kernel
    bias_ptr,  # (M,) or dummy
    out_ptr,  # (N, M)
    N, K, M,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_n < N
    rows = tl.load(order_ptr + offs_n, mask=row_ok, other=0).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    taps = tl.load(block_mask_ptr + pid_n)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for v in range(27):
        if ((taps >> v) & 1) != 0:
            nb = tl.load(table_ptr + rows * 27 + v, mask=row_ok, other=-1)
            nb_ok = nb >= 0
            nb_row = tl.where(nb_ok, nb, 0).to(tl.int64)
            for k0 in range(0, K, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_ok = offs_k < K
                a = tl.load(feats_ptr + nb_row[:, None] * K + offs_k[None, :],
                            mask=nb_ok[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(weight_ptr + (v * K + offs_k[:, None]) * M + offs_m[None, :],
                            mask=k_ok[:, None] & m_ok[None, :], other=0.0)
                acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_m, mask=m_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * M + offs_m[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & m_ok[None, :])


@triton.jit
def _submconv_bwd_weight_kernel(
    feats_ptr,  # (N, K) forward input
    grad_out_ptr,  # (N, M) gradient of the forward output
    table_ptr, order_ptr, block_mask_ptr,
    grad_weight_ptr,  # (27, M, K) fp32, accumulated atomically
    N, K, M, num_blocks, blocks_per_split,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    tiles_k = tl.cdiv(K, BLOCK_K)
    tiles_m = tl.cdiv(M, BLOCK_M)
    v = pid // (tiles_m * tiles_k)
    tile_m = (pid // tiles_k) % tiles_m
    tile_k = pid % tiles_k
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tile_k * BLOCK_K + tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    k_ok = offs_k < K
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, num_blocks)
    for block in range(first, last):
        taps = tl.load(block_mask_ptr + block)
        if ((taps >> v) & 1) != 0:
            offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
            row_ok = offs_n < N
            rows = tl.load(order_ptr + offs_n, mask=row_ok, other=0).to(tl.int64)
            nb = tl.load(table_ptr + rows * 27 + v, mask=row_ok, other=-1)
            nb_ok = nb >= 0
            nb_row = tl.where(nb_ok, nb, 0).to(tl.int64)
            g = tl.load(grad_out_ptr + rows[:, None] * M + offs_m[None, :],
                        mask=nb_ok[:, None] & m_ok[None, :], other=0.0)
            a = tl.load(feats_ptr + nb_row[:, None] * K + offs_k[None, :],
                        mask=nb_ok[:, None] & k_ok[None, :], other=0.0)
            acc = tl.dot(tl.trans(g), a, acc, input_precision=PRECISION)
    tl.atomic_add(grad_weight_ptr + (v * M + offs_m[:, None]) * K + offs_k[None, :], acc,
                  mask=m_ok[:, None] & k_ok[None, :])


def row_schedule(table: torch.Tensor, block_n: int, sort_window: int):
    """Order rows so that blocks of ``block_n`` rows share neighbour patterns; list each block's taps.

    Args:
        table: ``(N, 27) int32`` neighbour map.
        block_n: rows per program.
        sort_window: rows are sorted by their 27-bit neighbour pattern inside consecutive windows of this
            many rows (1 keeps the input order; ``>= N`` sorts globally).

    Returns:
        ``order (N,) int32`` (row processed at each schedule position) and
        ``block_taps (ceil(N / block_n),) int32`` (bit ``v`` set when some row of the block has tap ``v``).
    """
    n = table.shape[0]
    present = table >= 0
    if sort_window > 1 and n > 1:
        bit_values = torch.ones(KERNEL_VOLUME, dtype=torch.int64, device=table.device) << torch.arange(
            KERNEL_VOLUME, device=table.device)
        pattern = (present.long() * bit_values).sum(1)
        window = torch.arange(n, device=table.device) // sort_window
        order = torch.argsort((window << KERNEL_VOLUME) | pattern, stable=True)
    else:
        order = torch.arange(n, device=table.device)
    num_blocks = triton.cdiv(n, block_n)
    padded = torch.zeros(num_blocks * block_n, KERNEL_VOLUME, dtype=torch.bool, device=table.device)
    padded[:n] = present[order]
    used = padded.view(num_blocks, block_n, KERNEL_VOLUME).any(1).int()
    block_taps = (used << torch.arange(KERNEL_VOLUME, device=table.device, dtype=torch.int32)).sum(1)
    return order.to(torch.int32).contiguous(), block_taps.to(torch.int32).contiguous()


def _pow2_between(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(x)))


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _forward_tiles(n_rows: int, k: int, m: int, dtype: torch.dtype):
    block_m = _pow2_between(m, 16, 128)
    block_k = _pow2_between(k, 16, 64 if dtype != torch.float32 else 32)
    block_n = 128 if m >= 64 else 64
    num_warps = 8 if block_n * block_m >= 128 * 128 else 4
    num_stages = 2 if dtype == torch.float32 else 3
    return block_n, block_k, block_m, num_warps, num_stages


def implicit_gemm_triton(
    feats: torch.Tensor,  # (N, K)
    table: torch.Tensor,  # (N, 27) int32
    schedule,  # callable block_n -> (order, block_taps)
    weight: torch.Tensor,  # (27, K, M) contiguous
    bias: torch.Tensor | None,  # (M,)
) -> torch.Tensor:
    """``out[i] = bias + sum_v feats[table[i, v]] @ weight[v]`` (missing neighbours contribute 0).

    This is the forward convolution with ``weight[v] = W[:, v, :].T``, and the input gradient with the
    mirrored kernel ``weight[v] = W[:, 26 - v, :]``.

    Returns:
        ``(N, M)`` in the dtype of ``feats``, accumulated in fp32.
    """
    n, k = feats.shape
    m = weight.shape[2]
    out = torch.empty(n, m, dtype=feats.dtype, device=feats.device)
    if n == 0:
        return out
    block_n, block_k, block_m, num_warps, num_stages = _forward_tiles(n, k, m, feats.dtype)
    order, block_taps = schedule(block_n)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    _submconv_fwd_kernel[grid](
        feats, table, order, block_taps, weight, bias if bias is not None else out, out,
        n, k, m,
        HAS_BIAS=bias is not None, PRECISION=_precision(feats.dtype),
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_M=block_m,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


def weight_grad_triton(
    feats: torch.Tensor,  # (N, K)
    grad_out: torch.Tensor,  # (N, M)
    table: torch.Tensor,
    schedule,
    num_programs_target: int,
) -> torch.Tensor:
    """``grad_w[v] = sum_i grad_out[i]^T feats[table[i, v]]``, returned as ``(27, M, K) float32``."""
    n, k = feats.shape
    m = grad_out.shape[1]
    grad_w = torch.zeros(KERNEL_VOLUME, m, k, dtype=torch.float32, device=feats.device)
    if n == 0:
        return grad_w
    # Each (tap, Co tile, Ci tile) program re-reads its rows of grad_out and feats, so large tiles cut the
    # operand traffic for wide layers.
    block_n = 64
    block_m = _pow2_between(m, 16, 128)
    block_k = _pow2_between(k, 16, 128)
    num_warps = 8 if block_m * block_k >= 128 * 128 else 4
    order, block_taps = schedule(block_n)
    num_blocks = triton.cdiv(n, block_n)
    tiles = KERNEL_VOLUME * triton.cdiv(m, block_m) * triton.cdiv(k, block_k)
    splits = max(1, min(num_blocks, triton.cdiv(num_programs_target, tiles)))
    blocks_per_split = triton.cdiv(num_blocks, splits)
    splits = triton.cdiv(num_blocks, blocks_per_split)
    _submconv_bwd_weight_kernel[(tiles, splits)](
        feats, grad_out, table, order, block_taps, grad_w,
        n, k, m, num_blocks, blocks_per_split,
        PRECISION=_precision(feats.dtype),
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_M=block_m,
        num_warps=num_warps, num_stages=2 if feats.dtype == torch.float32 else 3,
    )
    return grad_w


# Rows are sorted by neighbour pattern over the whole set by default: on the H100 a global sort was fastest at
# every SC-VAE shape (docs/benchmarks/sparse.md, windows 1 / 512 / 4096 / all), because it skips the most
# taps and the scattered gathers still move whole 128-byte rows.
DEFAULT_SORT_WINDOW = 1 << 62


def _schedule_for(neighbor_map, sort_window: int):
    def schedule(block_n: int):
        return neighbor_map.derived(("triton_schedule", block_n, sort_window),
                                    lambda: row_schedule(neighbor_map.table, block_n, sort_window))
    return schedule


def submanifold_conv3d_triton(
    feats: torch.Tensor,  # (N, Ci)
    neighbor_map,  # NeighborMap of the input coordinates
    weight: torch.Tensor,  # (Co, 27, Ci)
    bias: torch.Tensor | None,  # (Co,)
    sort_window: int = DEFAULT_SORT_WINDOW,
) -> torch.Tensor:
    """Forward submanifold convolution on CUDA; same contract as `submanifold_conv3d_reference`.

    Returns:
        ``(N, Co)`` in the dtype of ``feats`` (fp32 accumulation, one rounding).
    """
    weight_kio = weight.permute(1, 2, 0).contiguous()  # (27, Ci, Co)
    return implicit_gemm_triton(feats.contiguous(), neighbor_map.table, _schedule_for(neighbor_map, sort_window),
                                weight_kio, bias.contiguous() if bias is not None else None)


def submanifold_conv3d_backward_triton(
    grad_out: torch.Tensor,  # (N, Co)
    feats: torch.Tensor,  # (N, Ci)
    neighbor_map,
    weight: torch.Tensor,  # (Co, 27, Ci)
    needs_input_grad: bool = True,
    needs_weight_grad: bool = True,
    sort_window: int = DEFAULT_SORT_WINDOW,
):
    """Gradients on CUDA; same contract as `submanifold_conv3d_backward_reference`.

    The input gradient reuses the forward kernel: because the map is symmetric
    (``table[i, v] = j  <=>  table[j, 26 - v] = i``), ``grad_in[j] = sum_u grad_out[table[j, u]] @ W[:, 26 - u, :]``.
    """
    grad_out = grad_out.contiguous()
    schedule = _schedule_for(neighbor_map, sort_window)
    grad_in = grad_w = None
    if needs_input_grad:
        mirrored = weight.flip(1).permute(1, 0, 2).contiguous()  # (27, Co, Ci)
        grad_in = implicit_gemm_triton(grad_out, neighbor_map.table, schedule, mirrored, None)
    if needs_weight_grad:
        sms = torch.cuda.get_device_properties(feats.device).multi_processor_count if feats.is_cuda else 8
        grad_w = weight_grad_triton(feats.contiguous(), grad_out, neighbor_map.table, schedule, 4 * sms)
        grad_w = grad_w.permute(1, 0, 2).to(weight.dtype)  # (Co, 27, Ci)
    return grad_in, grad_w
