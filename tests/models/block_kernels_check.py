"""Each fused flow-block launcher (`omnivox.models.kernels.triton.block`) against its PyTorch reference
(`omnivox.models.kernels.reference`), on random inputs of every stream dtype.

Imported by `test_block_kernels.py` for the GPU, and run there as a script in a subprocess with TRITON_INTERPRET=1
(the interpreter must be chosen before triton is imported) for the CPU. As a script it prints one `` ok`` line per
case and exits non-zero on a mismatch.
"""

import sys

import torch

from omnivox.models.kernels import reference

# Relative error (Frobenius) allowed between a launcher and its reference: float32 sums in another order, and
# at most one rounding step of the stream dtype per element (measured in the interpreter, seed 3: float32 <= 8e-8,
# float16 <= 4e-5; bfloat16 4e-3..9e-3, as the interpreter's bfloat16 conversion differs from PyTorch's by a step).
TOLERANCES = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def cases(device, seed: int = 0):
    """``(name, launcher output, reference output, dtype)`` for every op and option."""
    from omnivox.models.kernels.triton import block

    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen).to(dtype).to(device)

    rows_per_sample, samples, c, heads = 7, 3, 48, 3
    rows = torch.arange(samples * rows_per_sample, device=device) // rows_per_sample
    for dtype in DTYPES:
        x = rand(len(rows), c, dtype=dtype)
        table = rand(samples, 6 * c, dtype=dtype)
        weight, bias = rand(c), rand(c)
        for name, kwargs in (("layer_norm", {}), ("layer_norm affine", {"weight": weight, "bias": bias}),
                             ("layer_norm modulated", {"table": table, "rows": rows, "shift_col": c,
                                                       "scale_col": 4 * c})):
            yield name, block.layer_norm(x, 1e-6, **kwargs), reference.layer_norm_reference(x, 1e-6, **kwargs), dtype
        y = rand(len(rows), c, dtype=dtype)
        yield ("gated_add", block.gated_add(x, y, table, rows, 2 * c),
               reference.gated_add_reference(x, y, table, rows, 2 * c), dtype)
        q = rand(len(rows), heads, c // heads, dtype=dtype)
        gamma = rand(heads, c // heads).abs() + 0.5
        angles = rand(len(rows), c // heads // 2)
        cos, sin = torch.cos(angles).contiguous(), torch.sin(angles).contiguous()
        yield "rms_norm", block.rms_norm_rope(q, gamma), reference.rms_norm_rope_reference(q, gamma), dtype
        yield ("rms_norm_rope", block.rms_norm_rope(q, gamma, cos, sin),
               reference.rms_norm_rope_reference(q, gamma, cos, sin), dtype)


def check(device, seed: int = 0) -> list:
    """Compare every case; returns the failures as text (empty when all agree)."""
    failures = []
    for name, ours, theirs, dtype in cases(device, seed):
        error = _relative(ours, theirs)
        if ours.shape != theirs.shape or ours.dtype != theirs.dtype or not error <= TOLERANCES[dtype]:
            failures.append(f"{name} {dtype}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}, "
                            f"dtype {ours.dtype} vs {theirs.dtype}, relative error {error:.3g}")
        else:
            print(f"{name} {dtype} ok")
    return failures


if __name__ == "__main__":
    failed = check(torch.device("cpu"), int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print("\n".join(failed))
    sys.exit(1 if failed else 0)
