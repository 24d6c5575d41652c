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
    return y * (1 + _per_row(table, rows, scale_col, c)) + _per_row(table, rows, shift_col, c)


def gated_add_reference(x: torch.Tensor, y: torch.Tensor, table: torch.Tensor, rows: torch.Tensor,
                        gate_col: int) -> torch.Tensor:
    """``x + y * table[rows[r], gate_col:+C]`` for ``x, y (R, C)`` of one dtype."""
    return x + y * _per_row(table, rows, gate_col, x.shape[-1])


def _per_row(table: torch.Tensor, rows: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """``table[rows, first:first + count]`` in ``table.dtype``: only the columns used (under autograd the gathered
    factor is kept for the backward pass), gathered in float32 so that the backward pass sums a 16-bit table's
    gradient over its rows in float32 (as a broadcast over the rows would), not in 16 bits."""
    columns = table[:, first:first + count]
    return columns.to(torch.promote_types(columns.dtype, torch.float32))[rows].to(table.dtype)


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
