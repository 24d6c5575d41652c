"""The fused flow-block launchers (`omnivox.models.kernels.triton.block`) against their PyTorch references."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import HANG_GUARD_S

from .block_kernels_check import DTYPES, check

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CASES_PER_DTYPE = 6


def test_launchers_equal_references_in_triton_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, str(HERE / "block_kernels_check.py"), "3"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.count(" ok") == CASES_PER_DTYPE * len(DTYPES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_launchers_equal_references_on_the_gpu():
    pytest.importorskip("triton")
    assert check(torch.device("cuda"), seed=5) == []


def test_deprecated_module_forwards():
    pytest.importorskip("triton")
    import importlib

    sys.modules.pop("omnivox.models.triton_block", None)
    with pytest.warns(DeprecationWarning, match="kernels.triton.block"):
        old = importlib.import_module("omnivox.models.triton_block")
    from omnivox.models.kernels.triton import block

    assert old.layer_norm is block.layer_norm and old.gated_add is block.gated_add
    assert old.rms_norm_rope is block.rms_norm_rope


def test_every_launcher_has_a_reference():
    """Each public launcher of `kernels.triton.block` has a same-signature `<name>_reference` (style guide 8.2)."""
    pytest.importorskip("triton")
    import inspect

    from omnivox.models.kernels import reference
    from omnivox.models.kernels.triton import block

    launchers = [name for name, f in vars(block).items()
                 if inspect.isfunction(f) and f.__module__ == block.__name__ and not name.startswith("_")]
    assert sorted(launchers) == ["gated_add", "layer_norm", "rms_norm_rope"]
    for name in launchers:
        ours = inspect.signature(getattr(block, name))
        theirs = inspect.signature(getattr(reference, name + "_reference"))
        assert list(ours.parameters) == list(theirs.parameters), name
        assert [p.default for p in ours.parameters.values()] == [p.default for p in theirs.parameters.values()]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_fused_block_structure_on_the_references_is_the_pytorch_forward(monkeypatch, dtype, layout):
    """`FlowBlock.forward_fused` with every launcher replaced by its reference gives `FlowBlock.forward`'s bits on
    the CPU (inference): the references are the PyTorch path, op for op (the step before one forward serves both)."""
    pytest.importorskip("triton")
    import dataclasses

    from omnivox.models import SLatFlowModel, SparseStructureFlowModel
    from omnivox.models.flow import DenseTokens, SparseTokens
    from omnivox.models.kernels import reference
    from omnivox.models.kernels.triton import block
    from omnivox.sparse import SparseTensor

    from .helpers import tiny_flow_config

    for name in ("layer_norm", "gated_add", "rms_norm_rope"):
        monkeypatch.setattr(block, name, getattr(reference, name + "_reference"))
    config = dataclasses.replace(tiny_flow_config(), dtype=dtype)
    generator = torch.Generator().manual_seed(11)
    c = config.model_channels
    if layout == "dense":
        axis = torch.arange(3)
        positions = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        model, tokens = SparseStructureFlowModel(config), DenseTokens(positions, 2, config.head_dim, config.rope_freq)
        x = torch.randn(2, 27, c, generator=generator)
    else:
        coords = torch.tensor([[b, i % 5, i // 5 % 5, i // 25] for b, n in ((0, 23), (1, 9)) for i in range(n)],
                              dtype=torch.int32)
        model = SLatFlowModel(config)
        tokens = SparseTokens(SparseTensor.from_coords(coords, torch.zeros(len(coords), 1)), config.head_dim,
                              config.rope_freq)
        x = torch.randn(len(coords), c, generator=generator)
    block_module = model.blocks[0]
    x = x.to(config.torch_dtype)
    mod = torch.randn(2, 6 * c, generator=generator)
    cond = torch.randn(2, 5, config.cond_channels, generator=generator).to(config.torch_dtype)
    with torch.no_grad():
        expected = block_module(x, mod, cond, tokens)
        fused = block_module.forward_fused(x, (block_module.modulation + mod).to(x.dtype), cond, tokens)
    assert fused.dtype == expected.dtype and torch.equal(fused, expected)
