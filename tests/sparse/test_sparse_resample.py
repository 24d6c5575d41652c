"""Space-to-channel and channel-to-space: orderings of spec models.md 2.3/2.4 and round trips."""

import pytest
import torch

from omnivox.sparse import DownsampleMap, SparseTensor, functional as SF
from sparse_inputs import random_sparse


def test_space_to_channel_spec_example():
    # spec models.md Appendix B
    coords = torch.tensor([[0, 3, 0, 1], [0, 2, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.int32)
    feats = torch.arange(1, 9, dtype=torch.float32).reshape(4, 2)
    coarse, down = SF.space_to_channel(SparseTensor.from_coords(coords, feats))
    assert coarse.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
    expected = torch.zeros(3, 16)
    expected[1, 10:12] = feats[0]  # (0,3,0,1) -> slot 5 of parent (0,1,0,0)
    expected[1, 4:6] = feats[1]  # (0,2,1,0) -> slot 2
    expected[0, 0:2] = feats[2]  # (0,0,0,0) -> slot 0 of parent (0,0,0,0)
    expected[2, 14:16] = feats[3]  # (1,1,1,1) -> slot 7 of parent (1,0,0,0)
    assert torch.equal(coarse.feats, expected)
    assert down.parent.tolist() == [1, 1, 0, 2] and down.child.tolist() == [5, 2, 0, 7]
    assert coarse.scale == (2, 2, 2)


def test_channel_to_space_spec_example():
    coords = torch.tensor([[0, 0, 0, 0], [0, 5, 5, 5]], dtype=torch.int32)
    x = SparseTensor.from_coords(coords, torch.arange(32, dtype=torch.float32).reshape(2, 16))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [0, 5]] = True
    mask[1, [1, 2]] = True
    fine = SF.channel_to_space(x, mask)
    assert fine.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 1], [0, 11, 10, 10], [0, 10, 11, 10]]
    # child k gets channel slot k (2 channels each) of its parent
    assert fine.feats.tolist() == [[0, 1], [10, 11], [18, 19], [20, 21]]
    assert fine.scale == (pytest.approx(0.5),) * 3


def test_space_to_channel_then_invert_is_identity():
    g = torch.Generator().manual_seed(11)
    x = random_sparse(g, channels=3, resolution=7)
    coarse, down = SF.space_to_channel(x)
    back = SF.invert_space_to_channel(coarse, down)
    assert torch.equal(back.coords, x.coords) and torch.equal(back.feats, x.feats)
    assert back.batch_size == x.batch_size and back.scale == x.scale
    # every coarse row is batch-major and sorted, and absent child slots are exactly zero
    c = coarse.coords.long()
    key = ((c[:, 0] * 100 + c[:, 1]) * 100 + c[:, 2]) * 100 + c[:, 3]
    assert torch.all(key[1:] > key[:-1])
    present = torch.zeros(coarse.num_voxels, 8, dtype=torch.bool)
    present[down.parent, down.child] = True
    slots = coarse.feats.reshape(-1, 8, 3)
    assert torch.all(slots[~present] == 0)


def test_space_to_channel_then_subdivide_with_occupancy_mask():
    g = torch.Generator().manual_seed(12)
    x = random_sparse(g, channels=2, resolution=8)
    coarse, down = SF.space_to_channel(x)
    mask = torch.zeros(coarse.num_voxels, 8, dtype=torch.bool)
    mask[down.parent, down.child] = True
    fine = SF.channel_to_space(coarse, mask)
    # same voxel set and features, emitted parent-major / child-minor
    order = torch.argsort(down.parent * 8 + down.child)
    assert torch.equal(fine.coords, x.coords[order])
    assert torch.equal(fine.feats, x.feats[order])


def test_resampling_gradients_flow():
    g = torch.Generator().manual_seed(13)
    x = random_sparse(g, channels=2, resolution=5)
    feats = x.feats.clone().requires_grad_(True)
    coarse, down = SF.space_to_channel(x.replace(feats))
    back = SF.invert_space_to_channel(coarse, down)
    cot = torch.randn(back.feats.shape, generator=g, dtype=torch.float64)
    (back.feats * cot).sum().backward()
    assert torch.equal(feats.grad, cot)


def test_resampling_validation():
    g = torch.Generator().manual_seed(14)
    x = random_sparse(g, channels=8, resolution=5)
    with pytest.raises(TypeError, match="bool"):
        SF.channel_to_space(x, torch.ones(x.num_voxels, 8))
    with pytest.raises(ValueError, match="shape"):
        SF.channel_to_space(x, torch.ones(x.num_voxels + 1, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of 8"):
        SF.channel_to_space(x.replace(x.feats[:, :3]), torch.ones(x.num_voxels, 8, dtype=torch.bool))
    _, down = SF.space_to_channel(x)
    with pytest.raises(ValueError, match="coarse"):
        SF.invert_space_to_channel(x, down)
    with pytest.raises(TypeError, match="DownsampleMap"):
        SF.invert_space_to_channel(x, (down.parent, down.child))
    assert isinstance(down, DownsampleMap)


def test_empty_resampling():
    x = SparseTensor.empty(3, batch_size=2)
    coarse, down = SF.space_to_channel(x)
    assert coarse.feats.shape == (0, 24) and coarse.batch_size == 2
    assert SF.invert_space_to_channel(coarse, down).feats.shape == (0, 3)
