"""Triton kernels for the inference forward of a flow block (`omnivox.models.flow.FlowBlock`).

A block's float32 norm, RMSNorm, RoPE and modulation arithmetic is a few dozen small elementwise kernels in
PyTorch; at a few thousand tokens the GPU spends more time on those launches and their float32 temporaries than on
the GEMMs. Each kernel here replaces one such chain with a single pass over the rows. They round to the stream
dtype at the same points as the PyTorch path (``FlowBlock.forward``), so the two agree to within a rounding step.

Imported only when the fused path runs (CUDA tensors, no autograd). Each launcher has a same-signature PyTorch
reference in ``omnivox/models/kernels/reference.py``: ``tests/models/test_block_kernels.py`` compares each pair and
``tests/models/test_flow_fused.py`` the fused block against the PyTorch block, in Triton's CPU interpreter and on
the GPU.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _norm_kernel(X, Y, W, B, TABLE, ROWS, C, table_stride, shift_col, scale_col, eps,
                 HAS_AFFINE: tl.constexpr, HAS_MOD: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    x = tl.load(X + row * C + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / C
    centred = tl.where(mask, x - mean, 0.0)
    y = centred / tl.sqrt(tl.sum(centred * centred, axis=0) / C + eps)
    if HAS_AFFINE:
        y = y * tl.load(W + cols, mask=mask, other=0.0) + tl.load(B + cols, mask=mask, other=0.0)
    out_type = Y.dtype.element_ty
    if HAS_MOD:
        sample = tl.load(ROWS + row).to(tl.int64)
        entry = TABLE + sample * table_stride
        shift = tl.load(entry + shift_col + cols, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(entry + scale_col + cols, mask=mask, other=0.0).to(tl.float32)
        # The PyTorch path: norm(x) rounded, (1 + scale) rounded, product rounded, sum rounded.
        y = y.to(out_type).to(tl.float32) * (1.0 + scale).to(out_type).to(tl.float32)
        y = y.to(out_type).to(tl.float32) + shift
    tl.store(Y + row * C + cols, y.to(out_type), mask=mask)


def layer_norm(x: torch.Tensor, eps: float, weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, table: Optional[torch.Tensor] = None,
               rows: Optional[torch.Tensor] = None, shift_col: int = 0, scale_col: int = 0) -> torch.Tensor:
    """float32 LayerNorm of ``x (R, C)``, optionally affine, optionally modulated as
    ``norm * (1 + table[rows[r], scale_col:+C]) + table[rows[r], shift_col:+C]``; returns ``x.dtype``."""
    x = x.contiguous()
    out = torch.empty_like(x)
    num_rows, channels = x.shape
    if num_rows == 0:
        return out
    has_mod = table is not None
    _norm_kernel[(num_rows,)](
        x, out, weight if weight is not None else x, bias if bias is not None else x,
        table if has_mod else x, rows if has_mod else x, channels, table.stride(0) if has_mod else 0,
        shift_col, scale_col, eps, HAS_AFFINE=weight is not None, HAS_MOD=has_mod,
        BLOCK_C=triton.next_power_of_2(channels), num_warps=8 if channels >= 1024 else 4)
    return out


@triton.jit
def _gated_add_kernel(X, Y, OUT, TABLE, ROWS, C, table_stride, gate_col, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    out_type = OUT.dtype.element_ty
    sample = tl.load(ROWS + row).to(tl.int64)
    gate = tl.load(TABLE + sample * table_stride + gate_col + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + row * C + cols, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + row * C + cols, mask=mask, other=0.0).to(tl.float32)
    gated = (y * gate).to(out_type).to(tl.float32)  # rounded like the PyTorch product
    tl.store(OUT + row * C + cols, (x + gated).to(out_type), mask=mask)


def gated_add(x: torch.Tensor, y: torch.Tensor, table: torch.Tensor, rows: torch.Tensor,
              gate_col: int) -> torch.Tensor:
    """``x + y * table[rows[r], gate_col:+C]`` for ``x, y (R, C)`` of one dtype."""
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    num_rows, channels = x.shape
    if num_rows:
        _gated_add_kernel[(num_rows,)](x, y, out, table, rows, channels, table.stride(0), gate_col,
                                       BLOCK_C=triton.next_power_of_2(channels),
                                       num_warps=8 if channels >= 1024 else 4)
    return out


RMS_ROWS_PER_PROGRAM = 4


@triton.jit
def _rms_rope_kernel(X, Y, GAMMA, COS, SIN, R, H, D, stride_row, stride_head, scale,
                     HAS_ROPE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr):
    head = tl.arange(0, BLOCK_H)[:, None]
    channel = tl.arange(0, BLOCK_D)[None, :]
    out_type = Y.dtype.element_ty
    gamma = tl.load(GAMMA + head * D + channel, mask=(head < H) & (channel < D), other=0.0)
    for i in tl.static_range(ROWS):  # a few rows per program: one row is too little work to keep memory busy
        row = tl.program_id(0).to(tl.int64) * ROWS + i
        # (row < R) broadcast to a tensor first: Triton 3.9's interpreter refuses a mask made from a scalar.
        mask = (head < H) & (channel < D) & ((head * 0 + row) < R)
        x = tl.load(X + row * stride_row + head * stride_head + channel, mask=mask, other=0.0).to(tl.float32)
        # F.normalize: x / max(||x||, 1e-12), per head.
        inv = scale / tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), 1e-12)[:, None]
        y = (x * inv * gamma).to(out_type).to(tl.float32)
        if HAS_ROPE:
            # Pair (2p, 2p + 1) -> (a cos - b sin, a sin + b cos), split in registers: every load and store stays
            # contiguous (a second, partner-indexed load of the row ran at a third of the memory bandwidth).
            a, b = tl.split(tl.reshape(y, (BLOCK_H, BLOCK_D // 2, 2)))
            pair = tl.arange(0, BLOCK_D // 2)[None, :]
            pair_mask = (pair < D // 2) & ((pair * 0 + row) < R)
            cos = tl.load(COS + row * (D // 2) + pair, mask=pair_mask, other=1.0)
            sin = tl.load(SIN + row * (D // 2) + pair, mask=pair_mask, other=0.0)
            y = tl.reshape(tl.join(a * cos - b * sin, a * sin + b * cos), (BLOCK_H, BLOCK_D))
        tl.store(Y + row * H * D + head * D + channel, y.to(out_type), mask=mask)


def rms_norm_rope(x: torch.Tensor, gamma: torch.Tensor, cos: Optional[torch.Tensor] = None,
                  sin: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-head RMSNorm of ``x (R, H, D)`` (any row and head strides, unit channel stride) with ``gamma (H, D)``,
    then, with ``cos``/``sin (R, D/2)`` float32, rotary embedding of channel pairs. Returns contiguous ``x.dtype``."""
    num_rows, heads, dim = x.shape
    if x.stride(2) != 1:
        x = x.contiguous()
    out = torch.empty((num_rows, heads, dim), dtype=x.dtype, device=x.device)
    if num_rows:
        gamma = gamma.float().contiguous()
        _rms_rope_kernel[(triton.cdiv(num_rows, RMS_ROWS_PER_PROGRAM),)](
            x, out, gamma, cos if cos is not None else gamma, sin if sin is not None else gamma, num_rows, heads,
            dim, x.stride(0), x.stride(1), float(dim) ** 0.5, HAS_ROPE=cos is not None,
            BLOCK_H=triton.next_power_of_2(heads), BLOCK_D=triton.next_power_of_2(dim), ROWS=RMS_ROWS_PER_PROGRAM,
            num_warps=4)
    return out
