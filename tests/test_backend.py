"""`omnivox._backend`: the one backend rule, and that every package with kernels uses it."""

import pytest
import torch

from omnivox import _backend
from omnivox._backend import NUMBA_BACKENDS, TRITON_BACKENDS, check_backend, resolve_backend


def test_auto_takes_the_kernel_only_where_preferred():
    assert resolve_backend("auto", NUMBA_BACKENDS, "numba", preferred=True) == "numba"
    assert resolve_backend("auto", NUMBA_BACKENDS, "numba", preferred=False) == "torch"
    assert resolve_backend("torch", NUMBA_BACKENDS, "numba", preferred=True) == "torch"
    assert resolve_backend("numba", NUMBA_BACKENDS, "numba", preferred=False) == "numba"  # possible by default


def test_asking_for_a_kernel_where_it_cannot_run_says_what_it_needs():
    with pytest.raises(ValueError, match="backend='triton' needs the triton package"):
        resolve_backend("triton", TRITON_BACKENDS, "triton", preferred=False, possible=False,
                        requirement="needs the triton package")
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'triton', 'torch'\), got 'cuda'"):
        check_backend("cuda", TRITON_BACKENDS)
    with pytest.raises(ValueError, match="f: backend must be one of"):
        resolve_backend("numba", TRITON_BACKENDS, "triton", preferred=True, name="f: backend")


def test_the_packages_share_the_one_probe_and_rule():
    from omnivox.models import kernels as model_kernels
    from omnivox.ovoxel import bake
    from omnivox.render import kernels as render_kernels
    from omnivox.sparse import kernels as sparse_kernels

    assert sparse_kernels.triton_available is render_kernels.triton_available \
        is model_kernels.triton_available is _backend.triton_available
    assert sparse_kernels.BACKENDS == render_kernels.BACKENDS == model_kernels.BACKENDS == TRITON_BACKENDS
    assert bake.BACKENDS == NUMBA_BACKENDS
    cpu = torch.device("cpu")
    assert sparse_kernels.resolve_backend("auto", cpu, torch.float32) == "torch"
    assert render_kernels.resolve_backend("auto", cpu) == "torch"
    assert model_kernels.resolve_backend("auto", cpu) == "torch"
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        sparse_kernels.resolve_backend("triton", cpu, torch.float32)
