"""Spec models.md Appendix B self-tests that concern the networks' building blocks.

(Key/shape sets and parameter counts: test_full_configs.py; DINOv3 token counts: test_ss_decoder_dinov3.py.
The Euler time grids belong to the samplers.)
"""

import torch
import torch.nn.functional as F

from omnivox.models.sc_vae import SparseConv3d
from omnivox.sparse import SparseTensor
from omnivox.sparse.functional import channel_to_space, space_to_channel


def test_space_to_channel_example():
    coords = torch.tensor([[0, 3, 0, 1], [0, 2, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.int32)
    feats = torch.arange(1, 9, dtype=torch.float32).reshape(4, 2)  # f0..f3, two channels each
    coarse, _ = space_to_channel(SparseTensor.from_coords(coords, feats))
    assert coarse.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
    expected = torch.zeros(3, 16)
    expected[1, 10:12] = feats[0]  # (0,3,0,1): slot 5 of parent (0,1,0,0)
    expected[1, 4:6] = feats[1]  # (0,2,1,0): slot 2
    expected[0, 0:2] = feats[2]  # (0,0,0,0): slot 0 of parent (0,0,0,0)
    expected[2, 14:16] = feats[3]  # (1,1,1,1): slot 7 of parent (1,0,0,0)
    assert torch.equal(coarse.feats, expected)


def test_channel_to_space_example():
    parents = torch.tensor([[0, 0, 0, 0], [0, 5, 5, 5]], dtype=torch.int32)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [0, 5]] = True
    mask[1, [1, 2]] = True
    fine = channel_to_space(SparseTensor.from_coords(parents, torch.randn(2, 8)), mask)
    assert fine.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 1], [0, 11, 10, 10], [0, 10, 11, 10]]


def test_sparse_conv_on_full_grid_equals_dense_conv3d():
    conv = SparseConv3d(3, 5, torch.float64)
    with torch.no_grad():
        conv.weight.normal_()
        conv.bias.normal_()
    axis = torch.arange(4)
    xyz = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([torch.zeros(64, 1, dtype=torch.int64), xyz], 1).int()
    volume = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64)
    feats = volume[0].reshape(3, -1).T
    expected = F.conv3d(volume, conv.weight.permute(0, 4, 1, 2, 3), conv.bias, padding=1)[0].reshape(5, -1).T
    got = conv(SparseTensor.from_coords(coords, feats)).feats
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
