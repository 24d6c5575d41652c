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
        if name in ("implicit_gemm_triton", "weight_grad_triton"):
            continue  # building blocks of the two public launchers below
        assert hasattr(reference, name.replace("_triton", "_reference")), name


def test_triton_kernels_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, str(HERE / "triton_interpret_check.py"), "7"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


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
