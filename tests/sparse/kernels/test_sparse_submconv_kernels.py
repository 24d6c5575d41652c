"""Triton convolution kernels against the PyTorch path: in Triton's CPU interpreter, and on CUDA."""

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omnivox.sparse import SparseTensor, functional as SF
from tests.conftest import HANG_GUARD_S

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_every_triton_launcher_has_a_reference():
    pytest.importorskip("triton")
    triton_mod = importlib.import_module("omnivox.sparse.kernels.triton.submconv")
    reference = importlib.import_module("omnivox.sparse.kernels.reference")
    launchers = [n for n, f in inspect.getmembers(triton_mod, inspect.isfunction)
                 if n.endswith("_triton") and f.__module__ == triton_mod.__name__ and not n.startswith("_")]
    assert "submanifold_conv3d_triton" in launchers
    for name in launchers:
        if name in ("implicit_gemm_triton", "weight_grad_triton", "weight_and_bias_grad_triton"):
            continue  # building blocks of the two public launchers below
        if name == "submanifold_conv3d_gradients_triton":
            continue  # the backward plus grad_out.sum(0): checked against both in the interpreter below
        assert hasattr(reference, name.replace("_triton", "_reference")), name


def test_triton_kernels_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, str(HERE / "triton_interpret_check.py"), "7"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


# ----------------------------------------------------------------------------------- tile rules
SHARED_MEMORY_LIMITS = (99 * 1024, 163 * 1024, 227 * 1024)  # consumer (sm_86/89), A100, H100 opt-in per block


@pytest.mark.parametrize("limit", SHARED_MEMORY_LIMITS)
def test_tile_rules_fit_shared_memory_and_share_one_schedule(limit):
    pytest.importorskip("triton")
    T = importlib.import_module("omnivox.sparse.kernels.triton.submconv")
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        block_rows = set()
        for c_in, c_out in [(c, c) for c in (16, 64, 128, 256, 512, 1024)] + [(5, 130), (1024, 6)]:
            tiles = T.forward_tiles(c_in, c_out, dtype, limit)
            assert T.shared_memory_bytes(tiles, dtype) <= limit, (dtype, c_in, c_out, tiles)
            assert tiles.num_stages >= 2 and tiles.block_m >= 16 and tiles.block_k >= 16
            block_rows.add(tiles.block_rows)
            wtiles = T.weight_grad_tiles(c_in, c_out, dtype, limit)
            assert T.shared_memory_bytes(wtiles, dtype, weight_grad=True) <= limit, (dtype, c_in, c_out, wtiles)
        # forward and input gradient of every layer share one cached schedule per map
        assert len(block_rows) == 1, (dtype, block_rows)
    wide = T.forward_tiles(256, 256, torch.bfloat16, 227 * 1024)
    assert wide.block_m == 256  # one program covers a 256-channel row: neighbour rows gathered once


def _compile_for_sm90(kernel, signature, constexprs, tiles):
    """Compile ``kernel`` for an H100 without a GPU (Triton's bundled ptxas), pointers and channel counts
    16-divisible as the launch specialises them."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(signature)
    aligned = [i for i, name in enumerate(names)
               if signature[name].startswith("*") or name in ("K", "M", "share_stride")]
    source = ASTSource(kernel, signature, constexprs, {(i,): [["tt.divisibility", 16]] for i in aligned})
    try:
        return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": tiles.num_warps, "num_stages": tiles.num_stages})
    except Exception as error:  # no CUDA backend in this Triton build
        pytest.skip(f"cannot compile for sm_90 here: {type(error).__name__}: {str(error)[:200]}")


@pytest.mark.parametrize("channels,mirrored", [(64, False), (128, False), (256, False), (128, True)])
def test_rule_tiles_compile_for_h100_within_the_shared_memory_model(channels, mirrored):
    """The rule's configurations compile for sm_90, pipeline their gathers (several operand buffers, waits that
    leave copies in flight), and use the shared memory `shared_memory_bytes` predicts (plus the small index
    buffers), so the fitting rule is right: for the forward and the input gradient (the weight read in place,
    along K or along M), and for the weight gradient with the bias gradient's own loop on the centre tap."""
    T = importlib.import_module("omnivox.sparse.kernels.triton.submconv")
    dtype = torch.bfloat16
    tiles = T.forward_tiles(channels, channels, dtype)
    signature = {"feats_ptr": "*bf16", "order_ptr": "*i32", "slot_offsets_ptr": "*i32", "slot_taps_ptr": "*i32",
                 "slot_neighbors_ptr": "*i32", "weight_ptr": "*bf16", "bias_ptr": "*bf16", "out_ptr": "*bf16",
                 "N": "i32", "K": "i32", "M": "i32", "MIRRORED": "constexpr", "HAS_BIAS": "constexpr",
                 "PRECISION": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "BLOCK_M": "constexpr"}
    constexprs = {"MIRRORED": mirrored, "HAS_BIAS": not mirrored, "PRECISION": "tf32", "BLOCK_N": tiles.block_rows,
                  "BLOCK_K": tiles.block_k, "BLOCK_M": tiles.block_m}
    compiled = _compile_for_sm90(T._submconv_fwd_kernel, signature, constexprs, tiles)
    predicted = T.shared_memory_bytes(tiles, dtype)
    assert predicted <= compiled.metadata.shared <= predicted + 4096, (compiled.metadata.shared, predicted)
    assert "async_copy_global_to_local" in compiled.asm["ttgir"]
    assert T._operand_buffers(tiles.num_stages) >= 3  # at least two gathers in flight under one MMA
    if mirrored:
        return

    wtiles = T.weight_grad_tiles(channels, channels, dtype)
    signature = {"feats_ptr": "*bf16", "grad_out_ptr": "*bf16", "share_bounds_ptr": "*i32", "pair_rows_ptr": "*i32",
                 "pair_neighbors_ptr": "*i32", "out_ptr": "*fp32", "bias_out_ptr": "*fp32", "K": "i32", "M": "i32",
                 "splits": "i32", "share_stride": "i32", "CENTER": "constexpr", "HAS_BIAS": "constexpr",
                 "PRECISION": "constexpr", "BLOCK_P": "constexpr", "BLOCK_K": "constexpr", "BLOCK_M": "constexpr"}
    constexprs = {"CENTER": 13, "HAS_BIAS": True, "PRECISION": "tf32", "BLOCK_P": wtiles.block_rows,
                  "BLOCK_K": wtiles.block_k, "BLOCK_M": wtiles.block_m}
    compiled = _compile_for_sm90(T._submconv_weight_grad_kernel, signature, constexprs, wtiles)
    predicted = T.shared_memory_bytes(wtiles, dtype, weight_grad=True)
    assert predicted <= compiled.metadata.shared <= predicted + 4096, (compiled.metadata.shared, predicted)
    # both loops (with and without the bias sums) are pipelined
    assert compiled.asm["ttgir"].count("async_copy_global_to_local") >= 4


# ------------------------------------------------------------------------------------------- CUDA
def _shell_coords(resolution: int, batch: int, device) -> torch.Tensor:
    """One-voxel-thick sphere shells (surface-like, ~10 neighbours per voxel), one per batch item, plus an
    empty batch item in the middle."""
    r = resolution
    ax = torch.arange(r, device=device, dtype=torch.float32) - (r - 1) / 2
    d = (ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2).sqrt()
    shell = (d - 0.4 * r).abs() < 0.5
    xyz = shell.nonzero().int()
    parts = [torch.cat([torch.full_like(xyz[:, :1], b), xyz], 1) for b in range(batch) if b != 1]
    return torch.cat(parts)


CUDA_CASES = [  # (resolution, Ci, Co)
    (24, 16, 16),
    (32, 64, 64),
    (20, 37, 130),
    (16, 256, 256),
    (12, 6, 1024),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("resolution,c_in,c_out", CUDA_CASES)
def test_triton_matches_torch_on_cuda(dtype, tol, resolution, c_in, c_out):
    g = torch.Generator(device="cuda").manual_seed(resolution * 1000 + c_in)
    coords = _shell_coords(resolution, 3, "cuda")
    feats = torch.randn(coords.shape[0], c_in, device="cuda", generator=g).to(dtype)
    weight = (torch.randn(c_out, 3, 3, 3, c_in, device="cuda", generator=g) / (27 * c_in) ** 0.5).to(dtype)
    bias = torch.randn(c_out, device="cuda", generator=g).to(dtype)
    cot = torch.randn(coords.shape[0], c_out, device="cuda", generator=g).to(dtype)
    results = {}
    for backend in ("triton", "torch"):
        x = SparseTensor.from_coords(coords, feats.clone().requires_grad_(True), batch_size=3)
        w = weight.clone().requires_grad_(True)
        b = bias.clone().requires_grad_(True)
        out = SF.submanifold_conv3d(x, w, b, backend=backend)
        (out.feats.float() * cot.float()).sum().backward()
        results[backend] = (out.feats.detach(), x.feats.grad, w.grad, b.grad)
    for name, a, b in zip(("out", "grad_in", "grad_w", "grad_b"), results["triton"], results["torch"]):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) <= tol, f"{name}: {rel_err(a, b):.3e}"


@pytest.mark.gpu
def test_auto_backend_on_cuda_matches_float64():
    g = torch.Generator(device="cuda").manual_seed(5)
    coords = _shell_coords(20, 2, "cuda")
    feats = torch.randn(coords.shape[0], 32, device="cuda", generator=g)
    weight = torch.randn(48, 3, 3, 3, 32, device="cuda", generator=g)
    x = SparseTensor.from_coords(coords, feats)
    out = SF.submanifold_conv3d(x, weight)  # auto -> triton on CUDA
    ref = SF.submanifold_conv3d(x.to(torch.float64), weight.double(), backend="torch")
    assert rel_err(out.feats, ref.feats) <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("channels,tile_args", [
    (128, (128, 64, 128, 8, 3)),  # one gather in flight
    (128, (128, 128, 64, 4, 7)),  # 128-channel K steps, narrow output tiles, four operand buffers
    (256, (128, 64, 128, 8, 5)),  # two 128-channel output tiles per row block
    (96, (64, 32, 32, 4, 5)),  # other row blocks; ragged K and output tiles
])
def test_triton_explicit_tiles_match_float64_on_cuda(channels, tile_args):
    """Configurations other than the rule's (the benchmark's candidates) compute the same convolution."""
    T = importlib.import_module("omnivox.sparse.kernels.triton.submconv")
    R = importlib.import_module("omnivox.sparse.kernels.reference")
    tiles = T.TileConfig(*tile_args)
    wtiles = T.TileConfig(64, min(tiles.block_k, 64), min(tiles.block_m, 64), 4, tiles.num_stages)
    g = torch.Generator(device="cuda").manual_seed(channels)
    coords = _shell_coords(20, 2, "cuda")
    nmap = SF.neighbor_map(SparseTensor.from_coords(coords, torch.zeros(coords.shape[0], 1, device="cuda")))
    n = coords.shape[0]
    feats = torch.randn(n, channels, device="cuda", generator=g).bfloat16()
    weight = (torch.randn(channels, 27, channels, device="cuda", generator=g) / (27 * channels) ** 0.5).bfloat16()
    grad_out = torch.randn(n, channels, device="cuda", generator=g).bfloat16()
    out = T.submanifold_conv3d_triton(feats, nmap, weight, None, tiles=tiles)
    gi, gw = T.submanifold_conv3d_backward_triton(grad_out, feats, nmap, weight, tiles=tiles, weight_tiles=wtiles)
    ref = R.submanifold_conv3d_reference(feats.double(), nmap.table, weight.double(), None)
    gi_ref, gw_ref = R.submanifold_conv3d_backward_reference(grad_out.double(), feats.double(), nmap.table,
                                                             weight.double())
    for name, a, b in (("out", out, ref), ("grad_in", gi, gi_ref), ("grad_w", gw, gw_ref)):
        assert rel_err(a, b) <= 1e-2, f"{name}: {rel_err(a, b):.3e}"
