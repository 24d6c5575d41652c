"""Fused Triton kernels of the flow block (`omnivox.models.kernels.triton.block`) against the PyTorch block path."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omnivox.models import SLatFlowModel, SparseStructureFlowModel
from omnivox.sparse import SparseTensor

from .fused_block_check import TOLERANCES, check
from .helpers import random_voxels, randomize, relative_error, tiny_flow_config
from tests.conftest import HANG_GUARD_S

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_fused_block_in_triton_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    seed = str(torch.randint(0, 10_000, ()).item())
    result = subprocess.run([sys.executable, str(HERE / "fused_block_check.py"), seed], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.count(" ok") == 16


def test_set_fused_kernels_takes_a_bool():
    model = SLatFlowModel(tiny_flow_config())
    model.set_fused_kernels(False)
    assert not any(block.fused_kernels for block in model.blocks)
    with pytest.raises(ValueError, match="True or False"):
        model.set_fused_kernels("no")


def test_cpu_and_autograd_take_the_pytorch_path():
    block = SLatFlowModel(tiny_flow_config()).blocks[0]
    x = torch.randn(5, 48)
    with torch.no_grad():
        assert not block._can_fuse(x)  # CPU tensors never reach Triton
    if torch.cuda.is_available():
        block = block.cuda()
        assert not block._can_fuse(x.cuda())  # autograd on: the kernels have no backward
        with torch.no_grad():
            assert block._can_fuse(x.cuda())
            block.fused_kernels = False
            assert not block._can_fuse(x.cuda())


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("heads", [2, 3])
@pytest.mark.parametrize("prepared", [False, True])
def test_fused_block_on_gpu_matches_float64(dtype, layout, heads, prepared):
    errors = check("cuda", dtype, layout, heads, seed=int(torch.randint(0, 10_000, ())), prepared=prepared)
    assert errors["fused"] < TOLERANCES[dtype], errors
    assert errors["fused"] < 2 * errors["torch"] + 1e-6, errors


@cuda
def test_fused_models_match_pytorch_path_on_gpu():
    """Whole networks, bf16 as released: fused kernels on against off (rounding differences only)."""
    cfg = tiny_flow_config(dtype="bfloat16", model_channels=128, num_heads=2)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ())))
    sparse_model = randomize(SLatFlowModel(cfg), seed=1).eval().cuda()
    coords = random_voxels(60, 6, batch=2, seed=2).cuda()
    x = SparseTensor.from_coords(coords, torch.randn(len(coords), 8, generator=gen).cuda(), 2)
    dense_model = randomize(SparseStructureFlowModel(cfg), seed=3).eval().cuda()
    dense_x = torch.randn(2, 8, 4, 4, 4, generator=gen).cuda()
    t = torch.tensor([700.0, 200.0]).cuda()
    cond = torch.randn(2, 5, cfg.cond_channels, generator=gen).cuda()
    for model, inputs, read in ((sparse_model, (x, t, cond), lambda out: out.feats),
                                (dense_model, (dense_x, t, cond), lambda out: out)):
        with torch.no_grad():
            fused = read(model(*inputs))
            model.set_fused_kernels(False)
            plain = read(model(*inputs))
        assert relative_error(fused, plain) < 2e-2
        assert not torch.equal(fused, torch.zeros_like(fused))


@cuda
def test_gemm_gelu_epilogue_is_the_tanh_gelu_of_the_checkpoint():
    """The fused feed-forward relies on cuBLASLt's GELU epilogue being GELU(tanh), the models' activation."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ())))
    x, w, b = (torch.randn(shape, generator=gen).cuda() for shape in ((300, 96), (192, 96), (192,)))
    fused = torch._addmm_activation(b, x, w.t(), use_gelu=True)
    expected = F.gelu(F.linear(x.double(), w.double(), b.double()), approximate="tanh")
    exact = F.gelu(F.linear(x.double(), w.double(), b.double()))
    assert relative_error(fused, expected) < 1e-5 < relative_error(exact, expected)
