"""`FlowBlock.forward_fused` (Triton kernels) against the PyTorch block path and a float64 run of it.

Imported by `test_flow_fused.py` for the GPU, and run as a script there in a subprocess with TRITON_INTERPRET=1
(the interpreter must be chosen before triton is imported) for the CPU. As a script it exits non-zero on a
mismatch.
"""

import sys

import torch

from omnivox.models.flow import BlockCondition, DenseTokens, FlowBlock, FlowConfig, SparseTokens
from omnivox.sparse import SparseTensor

TOLERANCES = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def _tokens(layout: str, config: FlowConfig, gen: torch.Generator, device):
    """Tokens and an input of the block for ``layout`` 'dense' (B=2 x 27 tokens) or 'sparse' (items of 23 and 9
    tokens, so attention takes the variable-length path)."""
    if layout == "dense":
        axis = torch.arange(3)
        positions = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        make = lambda: DenseTokens(positions.to(device), 2, config.head_dim, config.rope_freq)  # noqa: E731
        return make, torch.randn(2, 27, config.model_channels, generator=gen), 2
    cells = [torch.randperm(125, generator=gen)[:n].sort().values for n in (23, 9)]
    coords = torch.cat([torch.stack([torch.full_like(c, b), c // 25, c // 5 % 5, c % 5], 1)
                        for b, c in enumerate(cells)]).int().to(device)
    sparse = SparseTensor.from_coords(coords, torch.zeros(len(coords), 1, device=device), 2)
    make = lambda: SparseTokens(sparse, config.head_dim, config.rope_freq)  # noqa: E731
    return make, torch.randn(len(coords), config.model_channels, generator=gen), 2


def check(device: str, dtype: torch.dtype, layout: str, heads: int, seed: int, prepared: bool = False) -> dict:
    """Relative errors of the fused and the PyTorch block against float64, for one random block and input.

    ``prepared``: the blocks get a `BlockCondition` (sample 0 attends to its prepared keys and values, sample 1
    has the zero condition), the float64 reference the condition tensors ``[cond[0], 0]``."""
    gen = torch.Generator().manual_seed(seed)
    name = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    config = FlowConfig(resolution=4, in_channels=8, out_channels=8, model_channels=48, cond_channels=16,
                        num_blocks=1, num_heads=heads, mlp_ratio=2.0, dtype=name)
    block = FlowBlock(config)
    with torch.no_grad():  # never zero: norm weights and gammas near 1, everything else N(0, 0.3)
        for param_name, p in block.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.3
            p.copy_(noise + 1 if param_name.endswith("gamma") or param_name == "norm2.weight" else noise)
    make_tokens, x, batch = _tokens(layout, config, gen, device)
    mod = torch.randn(batch, 6 * config.model_channels, generator=gen) * 0.5
    cond = torch.randn(batch, 5, config.cond_channels, generator=gen)

    def run(fused: bool, run_dtype: torch.dtype):
        b = FlowBlock(config)
        b.load_state_dict(block.state_dict())
        b = b.to(device)
        if run_dtype == torch.float64:
            b = b.double()
        b.fused_kernels = False
        xs, ms = x.to(device, run_dtype), (b.modulation + mod.to(device, b.modulation.dtype)).to(run_dtype)
        with torch.no_grad():
            c = cond.to(device, run_dtype)
            if prepared and run_dtype != torch.float64:
                keys, values = b.cross_attn.keys_values(c[:1])
                c = BlockCondition(keys, values, b.cross_attn.null_output())
            elif prepared:
                c = torch.cat([c[:1], torch.zeros_like(c[1:])])
            if fused:
                return b.forward_fused(xs, ms, c, make_tokens())
            return b.forward(xs, mod.to(device, b.modulation.dtype), c, make_tokens())

    expected = run(False, torch.float64)
    fused, plain = run(True, dtype), run(False, dtype)
    assert fused.dtype == dtype and fused.shape == x.shape
    return {"fused": _relative(fused, expected), "torch": _relative(plain, expected),
            "fused_vs_torch": _relative(fused, plain)}


def main() -> int:
    failures = 0
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    for dtype in (torch.float32, torch.float16):  # the interpreter has no bfloat16 arithmetic
        for layout in ("dense", "sparse"):
            for heads, prepared in ((2, False), (3, False), (2, True), (3, True)):
                errors = check("cpu", dtype, layout, heads, seed, prepared)
                ok = errors["fused"] < TOLERANCES[dtype] and errors["fused"] < 2 * errors["torch"] + 1e-6
                failures += not ok
                print(f"{dtype} {layout} heads={heads} prepared={prepared}: {errors} {'ok' if ok else 'MISMATCH'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
