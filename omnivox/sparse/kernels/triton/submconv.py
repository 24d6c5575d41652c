"""Triton kernels for the submanifold 3x3x3 convolution: implicit GEMM with the gather fused into the loads.

Forward (and the input gradient, which is the same computation with a mirrored, transposed kernel):
one program computes a ``BLOCK_N x BLOCK_M`` tile of ``out[rows, :]`` for one block of a `BlockSchedule`.
It walks ONE flat loop over (used tap, ``BLOCK_K`` channel chunk) pairs of its block: each step reads the
block's neighbour rows for that tap (one contiguous vector), gathers ``feats[neighbour, chunk]`` straight into
the dot-product operand (rows without a neighbour load zeros), loads the tap's weight chunk, and accumulates.
There is no branch on the tap inside the loop, so Triton's software pipelining (``num_stages``) issues the
gathers of later steps while the tensor cores work on this one; the ``(N, 27, Ci)`` gathered tensor is never
formed. Rows are sorted by neighbour pattern (the schedule), so a block of surface voxels uses 11-19 of the 27
taps (SC-VAE shell levels, C = 64 ... 512) instead of all of them.

Output tiles up to 256 channels wide: at 256 output channels one program covers the whole row, so each
neighbour row is gathered once per block instead of once per 128-channel tile.

Weight gradient: ``grad_W[v] = sum over pairs (i, j) of tap v of grad_out[i]^T feats[j]`` over the packed
pair list of tap ``v`` (`TapPairs`: no rows without a neighbour, no branch). One program owns a
``(tap, Co tile, Ci tile)`` block and one share of the tap's pairs (split-K): the pairs whose row lies in one
range of rows, the same range for all taps, so the programs of a share that run side by side gather the same
rows. One share writes the gradient straight in the weight's ``(Co, 27, Ci)`` layout and dtype; several write
fp32 sums to their own slices and a second kernel adds them in share order and rounds once, so the result is
deterministic (no atomics). The centre tap's programs also sum the ``grad_out`` rows they read (the bias
gradient), so the backward makes no pass over ``grad_out`` of its own. The forward and the input gradient read
the layer's weight in place (no permuted copy).

All products accumulate in fp32; fp32 inputs use exact IEEE fp32 dot products (no TF32) so that the result
matches the PyTorch path to ~1e-6.

Tile sizes come from a rule (`forward_tiles`, `weight_grad_tiles`), never from run-time autotuning, so the
first call costs one compilation per kernel; every launcher takes an explicit `TileConfig` too (benchmarks).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from omnivox.sparse.kernels.schedule import (
    CENTER_TAP,
    GLOBAL_SORT,
    KERNEL_VOLUME,
    BlockSchedule,
    TapPairs,
    block_schedule,
    tap_pairs,
)


@triton.jit
def _submconv_fwd_kernel(
    feats_ptr,  # (N, K) input rows
    order_ptr,  # (N,) int32 row at each schedule position
    slot_offsets_ptr,  # (num_blocks + 1,) int32 first slot of each block
    slot_taps_ptr,  # (num_slots,) int32 tap of each slot
    slot_neighbors_ptr,  # (num_slots, BLOCK_N) int32 neighbour row per block row, -1 = none
    weight_ptr,  # the layer's (Co, 27, Ci) weight, read in place (see MIRRORED)
    bias_ptr,  # (M,) or dummy
    out_ptr,  # (N, M)
    N, K, M,
    MIRRORED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # Output-channel tiles of one row block are neighbours in launch order: they gather the same rows,
    # which are then still in L2.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    block = pid // tiles_m
    offs_m = (pid % tiles_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    offs_r = tl.arange(0, BLOCK_N)
    slot_begin = tl.load(slot_offsets_ptr + block)
    slot_end = tl.load(slot_offsets_ptr + block + 1)
    k_chunks = tl.cdiv(K, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for step in range((slot_end - slot_begin) * k_chunks):
        slot = slot_begin + step // k_chunks
        offs_k = (step % k_chunks) * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        tap = tl.load(slot_taps_ptr + slot)
        nb = tl.load(slot_neighbors_ptr + slot.to(tl.int64) * BLOCK_N + offs_r)
        nb_ok = nb >= 0
        nb_row = tl.where(nb_ok, nb, 0).to(tl.int64)
        a = tl.load(feats_ptr + nb_row[:, None] * K + offs_k[None, :],
                    mask=nb_ok[:, None] & k_ok[None, :], other=0.0)
        if MIRRORED:  # input gradient: b[k, m] = W[k, 26 - tap, m] (K = Co, M = Ci), rows along m
            b_offs = (offs_k[:, None].to(tl.int64) * 27 + (26 - tap)) * M + offs_m[None, :]
        else:  # forward: b[k, m] = W[m, tap, k] (M = Co, K = Ci), columns along k
            b_offs = (offs_m[None, :].to(tl.int64) * 27 + tap) * K + offs_k[:, None]
        b = tl.load(weight_ptr + b_offs, mask=k_ok[:, None] & m_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_m, mask=m_ok, other=0.0).to(tl.float32)[None, :]
    offs_n = block * BLOCK_N + offs_r
    row_ok = offs_n < N
    rows = tl.load(order_ptr + offs_n, mask=row_ok, other=0).to(tl.int64)
    tl.store(out_ptr + rows[:, None] * M + offs_m[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & m_ok[None, :])


@triton.jit
def _pair_products(
    feats_ptr, grad_out_ptr, pair_rows_ptr, pair_neighbors_ptr,
    begin, end, mirrored, offs_m, offs_k, m_ok, k_ok, K, M,
    SUM_ROWS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """``sum over pairs p of grad_out[out_row]^T feats[in_row]`` over pairs ``begin:end`` (one tile), and with
    SUM_ROWS the column sums of the ``grad_out`` rows it read (the bias gradient, on the centre tap)."""
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    # The column sums come from the tensor cores too, as grad_out^T @ ones (16 equal columns, products exact, fp32
    # accumulation): a sum over the rows in registers would need a cross-thread reduction with barriers in the
    # pipelined loop, or a (BLOCK_P, BLOCK_M) fp32 accumulator (on sm_90 that cost 64 more registers per thread
    # and halved the programs per SM of the whole kernel).
    rows_acc = tl.zeros((BLOCK_M, 16), dtype=tl.float32)
    for p0 in range(begin, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_ok = offs_p < end
        first = tl.load(pair_rows_ptr + offs_p, mask=p_ok, other=0)
        second = tl.load(pair_neighbors_ptr + offs_p, mask=p_ok, other=0)
        out_row = tl.where(mirrored, second, first).to(tl.int64)
        in_row = tl.where(mirrored, first, second).to(tl.int64)
        g = tl.load(grad_out_ptr + out_row[:, None] * M + offs_m[None, :],
                    mask=p_ok[:, None] & m_ok[None, :], other=0.0)
        a = tl.load(feats_ptr + in_row[:, None] * K + offs_k[None, :],
                    mask=p_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(g), a, acc, input_precision=PRECISION)
        if SUM_ROWS:
            ones = tl.full((BLOCK_P, 16), 1.0, dtype=g.dtype)
            rows_acc = tl.dot(tl.trans(g), ones, rows_acc, input_precision=PRECISION)
    first_column = tl.arange(0, 16)[None, :] == 0
    return acc, tl.sum(tl.where(first_column, rows_acc, 0.0), axis=1)


@triton.jit
def _submconv_weight_grad_kernel(
    feats_ptr,  # (N, K) forward input
    grad_out_ptr,  # (N, M) gradient of the forward output
    share_bounds_ptr,  # (14, splits + 1) int32 first pair of each share of taps 0..13
    pair_rows_ptr,  # (P,) int32 row i of each pair
    pair_neighbors_ptr,  # (P,) int32 its neighbour table[i, v]
    out_ptr,  # share s writes its (M, 27, K) sum at out_ptr + s * share_stride
    bias_out_ptr,  # share s writes its (M,) column sums of grad_out at bias_out_ptr + s * share_stride
    K, M, splits, share_stride,
    CENTER: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    tiles_k = tl.cdiv(K, BLOCK_K)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tap = pid // (tiles_m * tiles_k)
    offs_m = ((pid // tiles_k) % tiles_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = (pid % tiles_k) * BLOCK_K + tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    k_ok = offs_k < K
    # Taps past the centre reuse the pair list of their mirror tap with the roles swapped.
    mirrored = tap > CENTER
    listed = tl.where(mirrored, 2 * CENTER - tap, tap)
    begin = tl.load(share_bounds_ptr + listed * (splits + 1) + split)
    end = tl.load(share_bounds_ptr + listed * (splits + 1) + split + 1)
    share_base = split.to(tl.int64) * share_stride
    # The centre tap pairs every row of the share with itself: its programs of the first K tile read each
    # grad_out row of their M tile once, so they also sum them (the bias gradient). Their own loop, so that
    # the other programs' loop stays as it was.
    sums_rows = (tap == CENTER) & (pid % tiles_k == 0)
    if HAS_BIAS:
        if sums_rows:
            acc, row_sum = _pair_products(feats_ptr, grad_out_ptr, pair_rows_ptr, pair_neighbors_ptr, begin, end,
                                          mirrored, offs_m, offs_k, m_ok, k_ok, K, M, True, PRECISION,
                                          BLOCK_P, BLOCK_K, BLOCK_M)
            tl.store(bias_out_ptr + share_base + offs_m, row_sum.to(bias_out_ptr.dtype.element_ty), mask=m_ok)
        else:
            acc, row_sum = _pair_products(feats_ptr, grad_out_ptr, pair_rows_ptr, pair_neighbors_ptr, begin, end,
                                          mirrored, offs_m, offs_k, m_ok, k_ok, K, M, False, PRECISION,
                                          BLOCK_P, BLOCK_K, BLOCK_M)
    else:
        acc, row_sum = _pair_products(feats_ptr, grad_out_ptr, pair_rows_ptr, pair_neighbors_ptr, begin, end,
                                      mirrored, offs_m, offs_k, m_ok, k_ok, K, M, False, PRECISION,
                                      BLOCK_P, BLOCK_K, BLOCK_M)
    # (M, 27, K): the layer's weight layout, so that one share writes the gradient as autograd wants it
    out = out_ptr + share_base + (offs_m[:, None].to(tl.int64) * 27 + tap) * K + offs_k[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :])


@triton.jit
def _sum_shares_kernel(
    partial_ptr,  # (splits, share_stride) fp32: each share's (M, 27, K) weight sums, then its (M,) bias sums
    weight_out_ptr,  # (M, 27, K) in the weight dtype
    bias_out_ptr,  # (M,) in the bias dtype, or dummy
    weight_numel, share_stride, splits,
    BLOCK: tl.constexpr,
):
    """Add the shares in share order (deterministic) and round once to the output dtypes."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < share_stride
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    share = partial_ptr + offs
    for _ in range(splits):
        total += tl.load(share, mask=ok, other=0.0)
        share += share_stride
    is_weight = offs < weight_numel
    tl.store(weight_out_ptr + offs, total.to(weight_out_ptr.dtype.element_ty), mask=is_weight)
    is_bias = ok & (offs >= weight_numel)
    tl.store(bias_out_ptr + tl.where(is_bias, offs - weight_numel, 0), total.to(bias_out_ptr.dtype.element_ty),
             mask=is_bias)


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes and launch options of one kernel launch.

    Attributes:
        block_rows: rows per program (forward: rows of the schedule's blocks; weight gradient: pairs per step).
        block_k: input channels per step.
        block_m: output channels per program.
        num_warps: warps per program.
        num_stages: software-pipelining depth of the main loop.
    """

    block_rows: int
    block_k: int
    block_m: int
    num_warps: int
    num_stages: int


def _pow2_between(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(x)))


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


# Shared memory left for other uses (layout conversions of the epilogue) when sizing the pipelined buffers.
_SHARED_MEMORY_MARGIN = 16 * 1024
#: Shared memory per program assumed off CUDA (an H100's opt-in limit).
DEFAULT_SHARED_MEMORY = 227 * 1024


@functools.cache
def _device_shared_memory(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    limit = getattr(props, "shared_memory_per_block_optin", 0)
    if not limit:
        limit = triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]
    return int(limit)


def _shared_memory_limit(device: torch.device) -> int:
    """Bytes of shared memory one program may use on ``device``."""
    if device.type != "cuda":
        return DEFAULT_SHARED_MEMORY
    return _device_shared_memory(device.index if device.index is not None else torch.cuda.current_device())


def _operand_buffers(num_stages: int) -> int:
    """Shared-memory copies of each dot operand that Triton 3.6 allocates for these kernels' main loops.

    The operands are gathered through indices loaded in the same loop (one level of indirection), and the
    pipeliner spends about half the stages on the index loads: compiled for sm_90, ``num_stages`` 2-4 give 2
    buffers (one gather in flight), 5-6 give 3, 7-8 give 4.
    """
    return max(2, (num_stages + 1) // 2)


def _forward_stage_bytes(tiles: TileConfig, element_bytes: int) -> int:
    return (tiles.block_rows * tiles.block_k + tiles.block_k * tiles.block_m) * element_bytes


def _weight_grad_stage_bytes(tiles: TileConfig, element_bytes: int) -> int:
    return tiles.block_rows * (tiles.block_m + tiles.block_k) * element_bytes


def shared_memory_bytes(tiles: TileConfig, dtype: torch.dtype, weight_grad: bool = False) -> int:
    """Shared memory the pipelined operand buffers of one program take (indices and epilogue not counted)."""
    stage_bytes = _weight_grad_stage_bytes if weight_grad else _forward_stage_bytes
    return _operand_buffers(tiles.num_stages) * stage_bytes(tiles, dtype.itemsize)


def _fit_shared_memory(tiles: TileConfig, dtype: torch.dtype, weight_grad: bool, limit: int) -> TileConfig:
    """Shrink ``tiles`` until its operand buffers fit: fewer stages first (costs overlap), then narrower
    output tiles (costs repeated gathers), then shorter K steps."""
    budget = limit - _SHARED_MEMORY_MARGIN
    while shared_memory_bytes(tiles, dtype, weight_grad) > budget:
        if _operand_buffers(tiles.num_stages) > 2:
            tiles = replace(tiles, num_stages=tiles.num_stages - 2)
        elif tiles.block_m > 32:
            tiles = replace(tiles, block_m=tiles.block_m // 2, num_warps=min(tiles.num_warps, 4))
        elif tiles.block_k > 16:
            tiles = replace(tiles, block_k=tiles.block_k // 2)
        else:
            break
    return tiles


def _smaller(tiles: TileConfig) -> TileConfig | None:
    """The next smaller configuration to try after a launch ran out of shared memory, or None."""
    if _operand_buffers(tiles.num_stages) > 2:
        return replace(tiles, num_stages=tiles.num_stages - 2)
    if tiles.block_m > 16:
        return replace(tiles, block_m=tiles.block_m // 2, num_warps=min(tiles.num_warps, 4))
    return None


def _launch_fitting(launch, tiles: TileConfig):
    """``launch(tiles)``, shrinking ``tiles`` while the compiled kernel needs more shared memory than the device
    has (the rules leave a margin, but Triton's buffer count can change between versions)."""
    while True:
        try:
            return launch(tiles)
        except triton.runtime.errors.OutOfResources:
            tiles = _smaller(tiles)
            if tiles is None:
                raise


# Rows per block of the forward schedule: one value per dtype width, so the forward and the input gradient of
# every layer at one scale share one cached schedule.
FORWARD_BLOCK_ROWS = {2: 128, 4: 64}


def forward_tiles(k: int, m: int, dtype: torch.dtype,
                  shared_memory_limit: int = DEFAULT_SHARED_MEMORY) -> TileConfig:
    """Tiles of the forward / input-gradient kernel for ``K`` input and ``M`` output channels.

    16-bit: 128-row blocks; output tiles as wide as ``M`` up to 256 (up to 256 channels one program covers a
    row block: every neighbour row is gathered once); 64-channel K steps (one 128-byte line per gathered row);
    3-4 operand buffers (``num_stages`` 5-7) so that 2-3 gathers are in flight while the tensor cores work.
    fp32 (exact IEEE products, no tensor cores): smaller tiles. Shrunk to fit ``shared_memory_limit``.
    """
    if dtype == torch.float32:
        block_m = _pow2_between(m, 16, 128)
        tiles = TileConfig(block_rows=FORWARD_BLOCK_ROWS[4], block_k=_pow2_between(k, 16, 32), block_m=block_m,
                           num_warps=8 if block_m >= 128 else 4, num_stages=3)
        return _fit_shared_memory(tiles, dtype, False, shared_memory_limit)
    block_m = _pow2_between(m, 16, 256)
    block_rows = FORWARD_BLOCK_ROWS[2]
    # Two warp groups only for tiles above 128 x 128: at 128 x 128 one group was 1.10x faster on the H100, at
    # 128 x 256 four times slower (tile sweep of 2026-12-07, docs/benchmarks/sparse_vs_flexgemm.md).
    tiles = TileConfig(block_rows=block_rows, block_k=_pow2_between(k, 16, 64), block_m=block_m,
                       num_warps=8 if block_rows * block_m > 128 * 128 else 4,
                       num_stages=7 if block_m <= 64 else 5)
    return _fit_shared_memory(tiles, dtype, False, shared_memory_limit)


def weight_grad_tiles(k: int, m: int, dtype: torch.dtype,
                      shared_memory_limit: int = DEFAULT_SHARED_MEMORY) -> TileConfig:
    """Tiles of the weight-gradient kernel: ``(M x K)`` accumulator tiles, ``block_rows`` pairs per step.

    Each (tap, Co tile, Ci tile) program re-reads its pairs' rows of ``grad_out`` and ``feats``, so large
    tiles cut the operand traffic for wide layers. Two warp groups for 128 x 128 tiles: ptxas then serialises
    the asynchronous MMAs of this loop (warning C7515 when compiled for sm_90 with Triton 3.6), yet the H100 ran
    them 1.05-1.07x faster than one group at C = 128-1024 (tile sweep of 2026-12-07); smaller tiles keep one.
    """
    if dtype == torch.float32:
        tiles = TileConfig(block_rows=32, block_k=_pow2_between(k, 16, 64), block_m=_pow2_between(m, 16, 64),
                           num_warps=4, num_stages=3)
        return _fit_shared_memory(tiles, dtype, True, shared_memory_limit)
    block_k, block_m = _pow2_between(k, 16, 128), _pow2_between(m, 16, 128)
    tiles = TileConfig(block_rows=64, block_k=block_k, block_m=block_m,
                       num_warps=8 if block_k * block_m >= 128 * 128 else 4, num_stages=5)
    return _fit_shared_memory(tiles, dtype, True, shared_memory_limit)


def implicit_gemm_triton(
    feats: torch.Tensor,  # (N, K)
    schedule: BlockSchedule,
    weight: torch.Tensor,  # the layer's (Co, 27, Ci) weight, contiguous
    bias: torch.Tensor | None,  # (M,)
    tiles: TileConfig,
    mirrored: bool = False,
) -> torch.Tensor:
    """``out[i] = bias + sum_v feats[table[i, v]] @ B[v]`` (missing neighbours contribute 0), reading ``weight``
    in place (no permuted copy).

    ``mirrored=False``: the forward convolution, ``B[v] = W[:, v, :].T`` (K = Ci, M = Co). ``mirrored=True``: the
    input gradient, ``feats`` being ``grad_out`` and ``B[v] = W[:, 26 - v, :]`` (K = Co, M = Ci).
    ``tiles.block_rows`` must be the schedule's.

    Returns:
        ``(N, M)`` in the dtype of ``feats``, accumulated in fp32.
    """
    n, k = feats.shape
    m = weight.shape[2] if mirrored else weight.shape[0]
    if weight.shape[2 if not mirrored else 0] != k or weight.shape[1] != KERNEL_VOLUME:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit {k} input channels (mirrored={mirrored})")
    if tiles.block_rows != schedule.block_rows:
        raise ValueError(f"tiles.block_rows={tiles.block_rows} differs from the schedule's {schedule.block_rows}")
    weight = weight.contiguous()
    out = torch.empty(n, m, dtype=feats.dtype, device=feats.device)
    if n == 0:
        return out

    def launch(t: TileConfig) -> None:
        _submconv_fwd_kernel[(schedule.num_blocks * triton.cdiv(m, t.block_m),)](
            feats, schedule.order, schedule.slot_offsets, schedule.slot_taps, schedule.slot_neighbors,
            weight, bias if bias is not None else out, out,
            n, k, m,
            MIRRORED=mirrored, HAS_BIAS=bias is not None, PRECISION=_precision(feats.dtype),
            BLOCK_N=t.block_rows, BLOCK_K=t.block_k, BLOCK_M=t.block_m,
            num_warps=t.num_warps, num_stages=t.num_stages,
        )

    _launch_fitting(launch, tiles)
    return out


# Elements per program of the kernel that adds the weight gradient's shares.
_SUM_SHARES_BLOCK = 1024


def weight_and_bias_grad_triton(
    feats: torch.Tensor,  # (N, K)
    grad_out: torch.Tensor,  # (N, M)
    pairs: TapPairs,
    tiles: TileConfig,
    num_programs_target: int,
    weight_dtype: torch.dtype,
    bias_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``grad_w[:, v, :] = sum_i grad_out[i]^T feats[table[i, v]]`` as ``(M, 27, K)`` in ``weight_dtype``, and
    with ``bias_dtype`` the bias gradient ``grad_out.sum(0)`` (else None), both summed in fp32 and rounded once.

    The rows are cut into ``splits`` equal ranges (shares) so that about ``num_programs_target`` programs run.
    One share writes straight into the outputs. Several write fp32 sums to their own slices of one buffer and a
    second kernel adds them in share order and rounds (deterministic, no atomics). The bias gradient is summed
    by the centre tap's programs, which read every row of ``grad_out`` once; ``pairs.centre_is_self`` must hold.
    """
    n, k = feats.shape
    m = grad_out.shape[1]
    if bias_dtype is not None and not pairs.centre_is_self:
        raise ValueError("the bias gradient needs a neighbour map whose centre tap pairs every row with itself")
    device = feats.device
    grad_w = torch.empty(m, KERNEL_VOLUME, k, dtype=weight_dtype, device=device)
    grad_b = torch.empty(m, dtype=bias_dtype, device=device) if bias_dtype is not None else None
    if n == 0:
        grad_w.zero_()
        return grad_w, grad_b.zero_() if grad_b is not None else None
    weight_numel = grad_w.numel()
    share_numel = weight_numel + (m if grad_b is not None else 0)

    def launch(t: TileConfig) -> None:
        tiles_per_tap = triton.cdiv(m, t.block_m) * triton.cdiv(k, t.block_k)
        # shares of equal row ranges; the centre tap (every row) gets >= 4 steps per share
        splits = max(1, min(triton.cdiv(num_programs_target, KERNEL_VOLUME * tiles_per_tap),
                            triton.cdiv(n, 4 * t.block_rows)))
        if splits == 1:
            out, bias_out = grad_w, grad_b if grad_b is not None else grad_w
        else:
            partial = torch.empty(splits, share_numel, dtype=torch.float32, device=device)
            out, bias_out = partial, partial.view(-1)[weight_numel:]
        _submconv_weight_grad_kernel[(KERNEL_VOLUME * tiles_per_tap, splits)](
            feats, grad_out, pairs.share_bounds(splits, n), pairs.rows, pairs.neighbors, out, bias_out,
            k, m, splits, share_numel,
            CENTER=CENTER_TAP, HAS_BIAS=grad_b is not None, PRECISION=_precision(feats.dtype),
            BLOCK_P=t.block_rows, BLOCK_K=t.block_k, BLOCK_M=t.block_m,
            num_warps=t.num_warps, num_stages=t.num_stages,
        )
        if splits > 1:
            _sum_shares_kernel[(triton.cdiv(share_numel, _SUM_SHARES_BLOCK),)](
                partial, grad_w, grad_b if grad_b is not None else grad_w, weight_numel, share_numel, splits,
                BLOCK=_SUM_SHARES_BLOCK, num_warps=4,
            )

    _launch_fitting(launch, tiles)
    return grad_w, grad_b


# Rows are sorted by neighbour pattern over the whole set by default: on the H100 a global sort was fastest at
# every SC-VAE shape (docs/benchmarks/sparse.md, windows 1 / 512 / 4096 / all), because it skips the most
# taps and the scattered gathers still move whole 128-byte rows.
DEFAULT_SORT_WINDOW = GLOBAL_SORT


def _cached_block_schedule(neighbor_map, block_rows: int, sort_window: int) -> BlockSchedule:
    return neighbor_map.derived(("triton_block_schedule", block_rows, sort_window),
                                lambda: block_schedule(neighbor_map.table, block_rows, sort_window))


def _cached_tap_pairs(neighbor_map) -> TapPairs:
    return neighbor_map.derived(("triton_tap_pairs",), lambda: tap_pairs(neighbor_map.table))


def _forward_plan(feats, neighbor_map, m: int, sort_window: int, tiles):
    """Tiles (the rule unless given) and the cached schedule for an implicit GEMM with ``m`` outputs."""
    if tiles is None:
        tiles = forward_tiles(feats.shape[1], m, feats.dtype, _shared_memory_limit(feats.device))
    return tiles, _cached_block_schedule(neighbor_map, tiles.block_rows, sort_window)


def submanifold_conv3d_triton(
    feats: torch.Tensor,  # (N, Ci)
    neighbor_map,  # NeighborMap of the input coordinates
    weight: torch.Tensor,  # (Co, 27, Ci)
    bias: torch.Tensor | None,  # (Co,)
    sort_window: int = DEFAULT_SORT_WINDOW,
    tiles: TileConfig | None = None,
) -> torch.Tensor:
    """Forward submanifold convolution on CUDA; same contract as `submanifold_conv3d_reference`.

    ``tiles`` overrides the rule (`forward_tiles`); benchmarks use it to compare configurations.

    Returns:
        ``(N, Co)`` in the dtype of ``feats`` (fp32 accumulation, one rounding).
    """
    tiles, schedule = _forward_plan(feats, neighbor_map, weight.shape[0], sort_window, tiles)
    return implicit_gemm_triton(feats.contiguous(), schedule, weight,
                                bias.contiguous() if bias is not None else None, tiles)


def submanifold_conv3d_gradients_triton(
    grad_out: torch.Tensor,  # (N, Co)
    feats: torch.Tensor,  # (N, Ci)
    neighbor_map,
    weight: torch.Tensor,  # (Co, 27, Ci)
    needs_input_grad: bool = True,
    needs_weight_grad: bool = True,
    bias_dtype: torch.dtype | None = None,
    sort_window: int = DEFAULT_SORT_WINDOW,
    tiles: TileConfig | None = None,
    weight_tiles: TileConfig | None = None,
):
    """Input, weight and bias gradients on CUDA: `submanifold_conv3d_backward_triton` plus, with ``bias_dtype``,
    the bias gradient ``grad_out.sum(0)`` in that dtype (summed in fp32).

    With the weight gradient the bias gradient comes out of the weight-gradient kernel (no extra pass over
    ``grad_out``); without it, from one ``sum``.

    Returns:
        ``(grad_feats or None, grad_weight (Co, 27, Ci) contiguous or None, grad_bias (Co,) or None)``.
    """
    grad_out = grad_out.contiguous()
    grad_in = grad_w = grad_b = None
    if needs_input_grad:
        tiles, schedule = _forward_plan(grad_out, neighbor_map, weight.shape[2], sort_window, tiles)
        grad_in = implicit_gemm_triton(grad_out, schedule, weight, None, tiles, mirrored=True)
    if needs_weight_grad:
        pairs = _cached_tap_pairs(neighbor_map)
        k, m = feats.shape[1], grad_out.shape[1]
        if weight_tiles is None:
            weight_tiles = weight_grad_tiles(k, m, feats.dtype, _shared_memory_limit(feats.device))
        sms = torch.cuda.get_device_properties(feats.device).multi_processor_count if feats.is_cuda else 8
        fused_bias = bias_dtype if pairs.centre_is_self else None
        grad_w, grad_b = weight_and_bias_grad_triton(feats.contiguous(), grad_out, pairs, weight_tiles, 4 * sms,
                                                     weight.dtype, fused_bias)
    if bias_dtype is not None and grad_b is None:
        grad_b = grad_out.sum(0, dtype=torch.float32).to(bias_dtype)
    return grad_in, grad_w, grad_b


def submanifold_conv3d_backward_triton(
    grad_out: torch.Tensor,  # (N, Co)
    feats: torch.Tensor,  # (N, Ci)
    neighbor_map,
    weight: torch.Tensor,  # (Co, 27, Ci)
    needs_input_grad: bool = True,
    needs_weight_grad: bool = True,
    sort_window: int = DEFAULT_SORT_WINDOW,
    tiles: TileConfig | None = None,
    weight_tiles: TileConfig | None = None,
):
    """Gradients on CUDA; same contract as `submanifold_conv3d_backward_reference`.

    The input gradient reuses the forward kernel: because the map is symmetric
    (``table[i, v] = j  <=>  table[j, 26 - v] = i``), ``grad_in[j] = sum_u grad_out[table[j, u]] @ W[:, 26 - u, :]``.
    ``tiles`` / ``weight_tiles`` override the rules for the input / weight gradient.
    """
    grad_in, grad_w, _ = submanifold_conv3d_gradients_triton(
        grad_out, feats, neighbor_map, weight, needs_input_grad, needs_weight_grad, None, sort_window, tiles,
        weight_tiles)
    return grad_in, grad_w
