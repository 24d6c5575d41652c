"""Submanifold convolution (torch path) against a masked dense conv3d in float64."""

import pytest
import torch
import torch.nn.functional as F

from omnivox.sparse import SparseTensor, functional as SF
from omnivox.sparse.kernels.reference import KERNEL_OFFSETS
from sparse_inputs import dense_conv_reference, random_sparse, rel_err, to_dense

RES = 6


def _weights(generator, c_out, c_in, dtype=torch.float64):
    w = torch.randn(c_out, 3, 3, 3, c_in, generator=generator, dtype=torch.float64).to(dtype)
    b = torch.randn(c_out, generator=generator, dtype=torch.float64).to(dtype)
    return w, b


def test_conv_equals_masked_dense_conv3d():
    g = torch.Generator().manual_seed(1)
    x = random_sparse(g, channels=5, resolution=RES)
    w, b = _weights(g, 7, 5)
    y = SF.submanifold_conv3d(x, w, b, backend="torch")
    assert y.feats.shape == (x.num_voxels, 7) and y.feats.dtype == torch.float64
    assert y.coords is x.coords
    assert rel_err(y.feats, dense_conv_reference(x, w, b, RES)) < 1e-12


def test_conv_without_bias_and_kernel_axis_order():
    # A weight with a single non-zero tap moves features along exactly one axis: tap (a, b, c) reads the
    # neighbour at (x + a - 1, y + b - 1, z + c - 1).
    coords = torch.tensor([[0, 2, 2, 2], [0, 3, 2, 2], [0, 2, 3, 2], [0, 2, 2, 3]], dtype=torch.int32)
    feats = torch.tensor([[1.0], [10.0], [100.0], [1000.0]], dtype=torch.float64)
    x = SparseTensor.from_coords(coords, feats)
    for (a, b, c), expected in (((2, 1, 1), 10.0), ((1, 2, 1), 100.0), ((1, 1, 2), 1000.0)):
        w = torch.zeros(1, 3, 3, 3, 1, dtype=torch.float64)
        w[0, a, b, c, 0] = 1.0
        assert SF.submanifold_conv3d(x, w, backend="torch").feats[0, 0].item() == expected


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_conv_low_precision_matches_float64(dtype, tol):
    g = torch.Generator().manual_seed(2)
    x = random_sparse(g, channels=16, dtype=dtype, resolution=RES)
    w, b = _weights(g, 24, 16, dtype)
    y = SF.submanifold_conv3d(x, w, b, backend="torch")
    assert y.feats.dtype == dtype
    assert rel_err(y.feats, dense_conv_reference(x, w, b, RES)) < tol


def test_conv_full_grid_equals_dense_conv3d():
    g = torch.Generator().manual_seed(3)
    occ = torch.ones(4, 4, 4).nonzero()
    coords = torch.cat([torch.zeros(64, 1, dtype=torch.int64), occ], 1).int()
    x = SparseTensor.from_coords(coords, torch.randn(64, 3, generator=g, dtype=torch.float64))
    w, b = _weights(g, 2, 3)
    dense = F.conv3d(to_dense(x, 4), w.permute(0, 4, 1, 2, 3), b, padding=1)
    y = SF.submanifold_conv3d(x, w, b, backend="torch")
    assert rel_err(y.feats, dense[0].permute(1, 2, 3, 0).reshape(64, 2)) < 1e-12


def test_conv_gradcheck():
    g = torch.Generator().manual_seed(4)
    x = random_sparse(g, channels=2, resolution=3, density=0.5)
    w, b = _weights(g, 3, 2)
    feats = x.feats.clone().requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    fn = lambda f, w_, b_: SF.submanifold_conv3d(x.replace(f), w_, b_, backend="torch").feats  # noqa: E731
    assert torch.autograd.gradcheck(fn, (feats, w, b), eps=1e-6, atol=1e-7)


def test_conv_gradients_match_dense_autograd():
    g = torch.Generator().manual_seed(5)
    x = random_sparse(g, channels=4, resolution=RES)
    w, b = _weights(g, 5, 4)
    cot = torch.randn(x.num_voxels, 5, generator=g, dtype=torch.float64)

    feats = x.feats.clone().requires_grad_(True)
    ws, bs = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    (SF.submanifold_conv3d(x.replace(feats), ws, bs, backend="torch").feats * cot).sum().backward()

    fd, wd, bd = x.feats.clone().requires_grad_(True), w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    (dense_conv_reference(x.replace(fd), wd, bd, RES) * cot).sum().backward()
    assert rel_err(feats.grad, fd.grad) < 1e-12
    assert rel_err(ws.grad, wd.grad) < 1e-12
    assert rel_err(bs.grad, bd.grad) < 1e-12


def test_neighbor_map_is_symmetric_and_cached():
    g = torch.Generator().manual_seed(6)
    x = random_sparse(g, channels=1, resolution=RES)
    nmap = SF.neighbor_map(x)
    table = nmap.table
    assert table.shape == (x.num_voxels, 27) and table.dtype == torch.int32
    assert torch.equal(table[:, 13], torch.arange(x.num_voxels, dtype=torch.int32))
    i, v = torch.nonzero(table >= 0, as_tuple=True)
    j = table[i, v].long()
    assert torch.equal(table[j, 26 - v].long(), i)
    # every listed neighbour really is at the tap's offset, in the same batch item
    c = x.coords.long()
    assert torch.equal(c[j, 0], c[i, 0])
    assert torch.equal(c[j, 1:] - c[i, 1:], KERNEL_OFFSETS[v])
    # the same map object serves every tensor derived with replace()
    assert SF.neighbor_map(x.replace(x.feats * 2)) is nmap


def test_conv_caches_change_nothing():
    g = torch.Generator().manual_seed(7)
    x = random_sparse(g, channels=3, dtype=torch.float32, resolution=RES)
    w1, b1 = _weights(g, 3, 3, torch.float32)
    w2, b2 = _weights(g, 3, 3, torch.float32)
    cached = SF.submanifold_conv3d(SF.submanifold_conv3d(x, w1, b1), w2, b2)
    fresh = SF.submanifold_conv3d(SF.submanifold_conv3d(x, w1, b1).without_cache(), w2, b2)
    assert torch.equal(cached.feats, fresh.feats)


def test_conv_empty_input():
    x = SparseTensor.empty(4, batch_size=2, dtype=torch.float64)
    w = torch.randn(3, 3, 3, 3, 4, dtype=torch.float64)
    y = SF.submanifold_conv3d(x, w, torch.zeros(3, dtype=torch.float64))
    assert y.feats.shape == (0, 3)


def test_conv_rejects_bad_arguments():
    g = torch.Generator().manual_seed(8)
    x = random_sparse(g, channels=4, dtype=torch.float32, resolution=RES)
    w = torch.randn(2, 3, 3, 3, 4)
    with pytest.raises(ValueError, match="Ci=5"):
        SF.submanifold_conv3d(x, torch.randn(2, 3, 3, 3, 5))
    with pytest.raises(ValueError, match=r"\(Co, 3, 3, 3, Ci\)"):
        SF.submanifold_conv3d(x, torch.randn(2, 27, 4))
    with pytest.raises(TypeError, match="dtype"):
        SF.submanifold_conv3d(x, w.double())
    with pytest.raises(ValueError, match="bias"):
        SF.submanifold_conv3d(x, w, torch.zeros(3))
    with pytest.raises(ValueError, match="backend"):
        SF.submanifold_conv3d(x, w, backend="cuda")
    with pytest.raises(ValueError, match="triton"):
        SF.submanifold_conv3d(x, w, backend="triton")  # CPU tensors
    with pytest.raises(TypeError, match="SparseTensor"):
        SF.submanifold_conv3d(x.feats, w)
    dup = SparseTensor.from_coords(torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.int32), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="duplicate"):
        SF.submanifold_conv3d(dup, w)


@pytest.mark.parametrize("needs", [(False, False, True), (False, True, False), (True, False, True)])
def test_conv_gradients_asked_for_only(needs):
    """Each pattern of needed gradients (torch path): the asked ones match dense autograd, the others stay None."""
    g = torch.Generator().manual_seed(8)
    x = random_sparse(g, channels=3, resolution=RES)
    w, b = _weights(g, 4, 3)
    cot = torch.randn(x.num_voxels, 4, generator=g, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(need) for t, need in zip((x.feats, w, b), needs)]
    (SF.submanifold_conv3d(x.replace(leaves[0]), leaves[1], leaves[2], backend="torch").feats * cot).sum().backward()
    dense = [t.clone().requires_grad_(True) for t in (x.feats, w, b)]
    (dense_conv_reference(x.replace(dense[0]), dense[1], dense[2], RES) * cot).sum().backward()
    for leaf, need, ref in zip(leaves, needs, dense):
        if need:
            assert leaf.grad.dtype == torch.float64 and rel_err(leaf.grad, ref.grad) < 1e-12
        else:
            assert leaf.grad is None
