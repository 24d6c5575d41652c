"""PyTorch references of the models' Triton kernels, same signatures: the fused flow-block ops
(`omnivox.models.kernels.triton.block`) and the 8-bit weight helpers (`omnivox.models.kernels.triton.weights8`).

The flow-block references are the PyTorch path itself: ``FlowBlock.forward`` runs one body with either these or the
Triton launchers (`omnivox.models.kernels.block_kernels`), on the kernels' interface (rows ``(R, C)`` and a
per-sample modulation ``table`` indexed by ``rows``). The kernels round to the stream dtype where these do;
``tests/models/test_block_kernels.py`` compares each launcher with its reference (Triton's CPU interpreter; the GPU
when there is one) and ``tests/models/test_flow_block_reference.py`` the block on these references with the block
written out op by op.
"""

from __future__ import annotations

from typing import Optional

import torch

from omnivox.models.layers import layer_norm_fp32
from omnivox.sparse.attention import apply_rope, multi_head_rms_norm


def layer_norm_reference(x: torch.Tensor, eps: float, weight: Optional[torch.Tensor] = None,
                         bias: Optional[torch.Tensor] = None, table: Optional[torch.Tensor] = None,
                         rows: Optional[torch.Tensor] = None, shift_col: int = 0, scale_col: int = 0) -> torch.Tensor:
    """float32 LayerNorm of ``x (R, C)``, optionally affine, optionally modulated as
    ``norm * (1 + table[rows[r], scale_col:+C]) + table[rows[r], shift_col:+C]``; returns ``x.dtype``."""
    y = layer_norm_fp32(x, eps, weight, bias)
    if table is None:
        return y
    c = x.shape[-1]
    return _scale_rows(y, 1 + table[:, scale_col:scale_col + c], rows) + _per_row(table, rows, shift_col, c)


def gated_add_reference(x: torch.Tensor, y: torch.Tensor, table: torch.Tensor, rows: torch.Tensor,
                        gate_col: int) -> torch.Tensor:
    """``x + y * table[rows[r], gate_col:+C]`` for ``x, y (R, C)`` of one dtype."""
    return x + _scale_rows(y, table[:, gate_col:gate_col + x.shape[-1]], rows)


# Under autograd the per-sample modulation must cost what a broadcast over each sample's rows costs: the backward
# pass keeps the (B, C) table rather than an (R, C) gathered copy, and sums a 16-bit table's gradient over the rows
# in float32 rather than in 16 bits.


def _per_row(table: torch.Tensor, rows: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """``table[rows, first:first + count]`` in ``table.dtype``, gathered in float32 (see above)."""
    columns = table[:, first:first + count]
    return columns.to(_accumulation_dtype(columns.dtype))[rows].to(table.dtype)


def _scale_rows(y: torch.Tensor, factors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``y (R, C) * factors[rows]`` for per-sample ``factors (B, C)`` (see above)."""
    return _ScaleRows.apply(y, factors, rows)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _ScaleRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, factors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y, factors, rows)
        return y * factors[rows]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, factors, rows = ctx.saved_tensors
        grad_y = grad * factors[rows] if ctx.needs_input_grad[0] else None
        grad_factors = None
        if ctx.needs_input_grad[1]:
            total = torch.zeros(factors.shape, dtype=_accumulation_dtype(factors.dtype), device=factors.device)
            grad_factors = total.index_add_(0, rows, (grad * y).to(total.dtype)).to(factors.dtype)
        return grad_y, grad_factors, None


def rms_norm_rope_reference(x: torch.Tensor, gamma: torch.Tensor, cos: Optional[torch.Tensor] = None,
                            sin: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-head RMSNorm of ``x (R, H, D)`` with ``gamma (H, D)``, then, with ``cos``/``sin (R, D/2)`` float32,
    rotary embedding of channel pairs. Returns contiguous ``x.dtype``."""
    y = multi_head_rms_norm(x, gamma)
    if cos is not None:
        y = apply_rope(y, torch.complex(cos, sin))
    return y.contiguous()


# Largest finite float8 e4m3 value: the fp8 codes' range (omnivox.models.quantize.CODE_MAX['fp8']).
FP8_MAX = 448.0


def dequantize_rows_reference(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``codes (N, K) * scale (N,)`` in float32, rounded once to ``dtype`` (what the Triton kernel computes)."""
    return (codes.float() * scale.float()[:, None]).to(dtype)


def quantize_rows_fp8_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (M, K)`` -> fp8 e4m3 codes ``(M, K)`` and scales ``(M, 1) float32`` (absmax / 448 per row)."""
    top = FP8_MAX
    xf = x.float()
    amax = xf.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / top, torch.ones_like(amax))
    return (xf / scale).clamp(-top, top).to(torch.float8_e4m3fn), scale
