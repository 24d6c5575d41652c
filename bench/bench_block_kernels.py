"""Time each fused flow-block kernel (`omnivox.models.kernels.triton.block`) against the PyTorch ops it replaces.

Shapes of the dense sparse-structure flow with batched CFG (8,192 rows, width 1536, 12 heads of 128, bf16). Prints
microseconds per call and the effective memory bandwidth of the fused kernel (bytes it must read and write).

Usage::

    PYTHONPATH=. python bench/bench_block_kernels.py          # GPU machine
"""

from __future__ import annotations

import math

import torch

from omnivox.models.kernels.triton import block as kernels
from omnivox.models.layers import layer_norm_fp32
from omnivox.sparse.attention import apply_rope, multi_head_rms_norm, rope_3d_phases


def microseconds(fn, iters: int = 50) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters * 1e3


def main() -> None:
    rows, c, heads, batch = 8192, 1536, 12, 2
    d = c // heads
    dt, dev = torch.bfloat16, "cuda"
    x = torch.randn(rows, c, device=dev, dtype=dt)
    y = torch.randn(rows, c, device=dev, dtype=dt)
    table = (torch.randn(batch, 6 * c, device=dev) * 0.3).to(dt)
    sample = torch.arange(rows, device=dev) // (rows // batch)
    weight, bias = torch.randn(c, device=dev), torch.randn(c, device=dev)
    qkv = torch.randn(rows, 3, heads, d, device=dev, dtype=dt)
    gamma = torch.rand(heads, d, device=dev) + 0.5
    axis = torch.arange(16, device=dev)
    positions = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3).repeat(batch, 1)
    phases = rope_3d_phases(positions, d)
    cos, sin = phases.real.contiguous(), phases.imag.contiguous()
    per_row = lambda k: table[:, k * c:(k + 1) * c][sample]  # noqa: E731  (what the sparse path gathers)
    row_bytes = rows * c * 2

    cases = {
        "LayerNorm + modulation": (
            lambda: layer_norm_fp32(x, 1e-6) * (1 + per_row(1)) + per_row(0),
            lambda: kernels.layer_norm(x, 1e-6, table=table, rows=sample, shift_col=0, scale_col=c),
            2 * row_bytes),
        "affine LayerNorm": (
            lambda: layer_norm_fp32(x, 1e-6, weight, bias),
            lambda: kernels.layer_norm(x, 1e-6, weight=weight, bias=bias), 2 * row_bytes),
        "gated residual": (
            lambda: x + y * per_row(2),
            lambda: kernels.gated_add(x, y, table, sample, 2 * c), 3 * row_bytes),
        "q RMSNorm + RoPE (strided q of qkv)": (
            lambda: apply_rope(multi_head_rms_norm(qkv[:, 0], gamma), phases),
            lambda: kernels.rms_norm_rope(qkv[:, 0], gamma, cos, sin), 2 * row_bytes + rows * d * 4),
        "q RMSNorm (cross-attention)": (
            lambda: multi_head_rms_norm(x.view(rows, heads, d), gamma),
            lambda: kernels.rms_norm_rope(x.view(rows, heads, d), gamma), 2 * row_bytes),
    }
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {rows} rows x {c}, bf16")
    print("| op | PyTorch us | fused us | speed-up | fused GB/s |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        for name, (plain, fused, nbytes) in cases.items():
            err = ((fused().double() - plain().double()).norm() / plain().double().norm()).item()
            assert math.isfinite(err) and err < 1e-2, (name, err)
            t_plain, t_fused = microseconds(plain), microseconds(fused)
            print(f"| {name} | {t_plain:.1f} | {t_fused:.1f} | {t_plain / t_fused:.1f}x | "
                  f"{nbytes / t_fused / 1e3:.0f} |")


if __name__ == "__main__":
    main()
