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
