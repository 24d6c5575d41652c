"""SparseTensor construction, validation, broadcasting, and the fp32 norms."""

import pytest
import torch
import torch.nn.functional as F

from omnivox.sparse import SparseTensor, functional as SF, modules
from sparse_inputs import random_sparse, rel_err


def test_construction_and_layout():
    g = torch.Generator().manual_seed(20)
    x = random_sparse(g, channels=3)
    assert x.batch_size == 4
    lens = x.seq_lens.tolist()
    assert lens[1] == 0 and lens[2] == 1 and sum(lens) == x.num_voxels
    for b, sl in enumerate(x.layout):
        assert torch.all(x.coords[sl, 0] == b)
    y = SparseTensor.from_batch_list([x.coords[sl, 1:] for sl in x.layout], [x.feats[sl] for sl in x.layout])
    assert torch.equal(y.coords, x.coords) and y.batch_size == 4


def test_broadcast_rows_and_arithmetic():
    g = torch.Generator().manual_seed(21)
    x = random_sparse(g, channels=3)
    per_sample = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = x * per_sample + per_sample[:1]
    expected = x.feats * per_sample[x.coords[:, 0].long()] + per_sample[0]
    assert torch.equal(y.feats, expected)
    assert torch.equal((x + x).feats, 2 * x.feats)
    with pytest.raises(ValueError, match="batch_size=4"):
        x.broadcast_rows(torch.ones(3, 3))


def test_validation_messages():
    feats = torch.zeros(2, 1)
    with pytest.raises(TypeError, match="int32"):
        SparseTensor.from_coords(torch.zeros(2, 4, dtype=torch.int64), feats)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        SparseTensor.from_coords(torch.zeros(2, 3, dtype=torch.int32), feats)
    with pytest.raises(ValueError, match="batch-major"):
        SparseTensor.from_coords(torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.int32), feats)
    with pytest.raises(ValueError, match="non-negative"):
        SparseTensor.from_coords(torch.tensor([[0, -1, 0, 0], [0, 0, 0, 0]], dtype=torch.int32), feats)
    with pytest.raises(ValueError, match="one row per coordinate"):
        SparseTensor.from_coords(torch.zeros(3, 4, dtype=torch.int32), feats)
    with pytest.raises(ValueError, match="too small"):
        SparseTensor.from_coords(torch.tensor([[0, 0, 0, 0], [2, 0, 0, 0]], dtype=torch.int32), feats, batch_size=2)
    x = SparseTensor.from_coords(torch.zeros(2, 4, dtype=torch.int32), feats)
    with pytest.raises(ValueError, match="2 rows"):
        x.replace(torch.zeros(3, 1))


def test_replace_keeps_cache_only_for_same_coords():
    g = torch.Generator().manual_seed(22)
    x = random_sparse(g, channels=2)
    SF.neighbor_map(x)
    assert x.replace(x.feats)._cache is x._cache
    moved = x.coords.clone()
    moved[:, 1:] += 1
    assert x.replace(x.feats, moved)._cache is not x._cache


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_layer_norm_fp32(dtype):
    g = torch.Generator().manual_seed(23)
    x = random_sparse(g, channels=16, dtype=dtype)
    w = torch.randn(16, generator=g)
    b = torch.randn(16, generator=g)
    y = SF.layer_norm(x, w, b, eps=1e-6)
    ref = F.layer_norm(x.feats.double(), (16,), w.double(), b.double(), 1e-6)
    assert y.feats.dtype == dtype
    assert rel_err(y.feats, ref) < (1e-12 if dtype == torch.float64 else 1e-2)
    module = modules.SparseLayerNorm32(16, eps=1e-6)
    assert module(x).feats.dtype == dtype


def test_group_norm_per_batch_item():
    g = torch.Generator().manual_seed(24)
    x = random_sparse(g, channels=8)
    w = torch.randn(8, generator=g, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    y = SF.group_norm(x, 4, w, b, eps=1e-5)
    for sl in x.layout:
        if sl.stop == sl.start:
            continue
        item = x.feats[sl].T[None]  # (1, C, N_b)
        ref = F.group_norm(item, 4, w, b, 1e-5)[0].T
        assert rel_err(y.feats[sl], ref) < 1e-12
    with pytest.raises(ValueError, match="divisor"):
        SF.group_norm(x, 3)


def test_activations_and_linear():
    g = torch.Generator().manual_seed(25)
    x = random_sparse(g, channels=4)
    assert torch.equal(SF.silu(x).feats, F.silu(x.feats))
    assert torch.equal(SF.gelu(x, "tanh").feats, F.gelu(x.feats, approximate="tanh"))
    w = torch.randn(6, 4, generator=g, dtype=torch.float64)
    assert torch.equal(SF.linear(x, w).feats, x.feats @ w.T)
    with pytest.raises(ValueError, match=r"\(Co, 4\)"):
        SF.linear(x, w.T)
