"""Triton kernels for 8-bit weights (`omnivox.models.quantize`): dequantizing a weight, quantizing activation rows.

* `dequantize_rows`: ``(N, K)`` int8 or float8 codes times a per-row float32 scale -> ``(N, K)`` in the compute
  dtype, rounded once. The PyTorch expression of the same (`dequantize_rows_reference`) makes two float32
  temporaries of the weight's size; at ~39 M weights per flow block call that is ~5 ms per 1.3B-model call on an
  H100, against ~1 ms for this single pass (int8/fp8 in, bf16 out).
* `quantize_rows_fp8`: activation rows ``(M, K)`` -> float8 e4m3 codes and one float32 scale per row (absmax /
  448), the left operand of a row-wise scaled fp8 GEMM (``torch._scaled_mm``). One pass instead of the five
  PyTorch kernels of `quantize_rows_fp8_reference`.

Both have a same-signature PyTorch reference in `omnivox.models.kernels.reference`; ``tests/models/test_quantize.py``
compares them in Triton's CPU interpreter and on the GPU. Imported only when a CUDA forward uses them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_MAX = 448.0


@triton.jit
def _dequantize_kernel(Q, S, Y, K, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < K
    codes = tl.load(Q + row * K + cols, mask=mask).to(tl.float32)
    scale = tl.load(S + row)
    tl.store(Y + row * K + cols, (codes * scale).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _quantize_rows_kernel(X, Q, S, K, fp8_max, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    mask = cols < K
    x = tl.load(X + row * K + cols, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=0)
    scale = tl.where(amax > 0, amax / fp8_max, 1.0)
    y = tl.minimum(tl.maximum(x / scale, -fp8_max), fp8_max)
    tl.store(Q + row * K + cols, y.to(Q.dtype.element_ty), mask=mask)
    tl.store(S + row, scale)


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``codes (N, K)`` int8 / float8 times ``scale (N,) float32`` per row -> ``(N, K) dtype``."""
    codes = codes.contiguous()
    rows, cols = codes.shape
    out = torch.empty(rows, cols, dtype=dtype, device=codes.device)
    block = 1024
    _dequantize_kernel[(rows, triton.cdiv(cols, block))](codes, scale.contiguous(), out, cols, BLOCK=block,
                                                          num_warps=4)
    return out


def quantize_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (M, K)`` float -> (codes ``(M, K) float8_e4m3fn``, scales ``(M, 1) float32``), absmax per row."""
    x = x.contiguous()
    rows, cols = x.shape
    codes = torch.empty(rows, cols, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(cols)
    _quantize_rows_kernel[(rows,)](x, codes, scale, cols, FP8_MAX, BLOCK_K=block,
                                   num_warps=8 if block >= 4096 else 4)
    return codes, scale
