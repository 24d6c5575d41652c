"""Package surface: every exported name resolves; modules carry the checkpoint layouts."""

import pytest
import torch

import omnivox.sparse as sparse
from omnivox.sparse import SparseTensor, attention, functional, modules
from sparse_inputs import random_sparse


@pytest.mark.parametrize("module", [sparse, functional, attention, modules])
def test_all_names_resolve(module):
    for name in module.__all__:
        assert getattr(module, name) is not None, name


def test_conv_module_layout_and_forward():
    conv = modules.SubmanifoldConv3d(4, 6).double()
    assert dict((k, tuple(v.shape)) for k, v in conv.state_dict().items()) == {
        "weight": (6, 3, 3, 3, 4), "bias": (6,)}
    x = random_sparse(torch.Generator().manual_seed(40), channels=4)
    y = conv(x)
    expected = functional.submanifold_conv3d(x, conv.weight, conv.bias, backend="torch")
    assert torch.equal(y.feats, expected.feats)
    with pytest.raises(ValueError, match="backend"):
        modules.SubmanifoldConv3d(4, 6, backend="flex_gemm")


def test_rms_norm_module_and_linear_module():
    norm = modules.MultiHeadRMSNorm(2, 8)
    assert tuple(norm.gamma.shape) == (2, 8)
    x = torch.randn(5, 2, 8)
    assert torch.allclose(norm(x).norm(dim=-1), torch.full((5, 2), 8 ** 0.5), rtol=1e-5)
    lin = modules.SparseLinear(3, 2)
    s = SparseTensor.from_coords(torch.zeros(1, 4, dtype=torch.int32), torch.randn(1, 3))
    assert torch.allclose(lin(s).feats, s.feats @ lin.weight.T + lin.bias)
