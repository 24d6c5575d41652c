"""Voxel renderer: a known configuration seen head-on (silhouette size, colours, depth) and hidden faces."""

import math

import torch

from omnivox.render import intrinsics_from_fov, look_at, render_voxels, voxel_cubes


def test_hidden_faces_are_dropped():
    coords = torch.tensor([[0, 0, 0], [1, 0, 0]])
    _, faces, owner = voxel_cubes(coords, 4)
    assert faces.shape[0] == 20  # 2 cubes x 6 faces - 2 shared faces, 2 triangles each
    assert torch.equal(torch.bincount(owner), torch.tensor([10, 10]))
    block = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(3), torch.arange(3), indexing="ij"), -1)
    _, faces, _ = voxel_cubes(block.reshape(-1, 3), 3)
    assert faces.shape[0] == 6 * 9 * 2  # only the outer surface of a 3^3 block


def test_voxels_seen_head_on():
    # A 4^3 grid in the unit box; the camera looks down the -z axis from above.
    resolution = 4
    coords = torch.tensor([[0, 0, 3], [3, 3, 3], [1, 2, 0]])
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    distance = 3.0
    extrinsics = look_at(torch.tensor([[0.0, 0.0, distance]]), torch.zeros(3), up=(0.0, 1.0, 0.0))
    # Choose the FoV so that the top face (z = 0.5) exactly spans the image: 4 voxels -> 4 x 16 pixels.
    intrinsics = intrinsics_from_fov(2 * math.atan(0.5 / (distance - 0.5)))
    out = render_voxels(coords, colors, resolution, extrinsics, intrinsics, 64)
    rgb, mask, depth = out["rgb"][0], out["mask"][0], out["depth"][0]
    # Looking down -z with up = +y: right = forward x up = +x, and image row 0 is world +y. The top faces
    # (z = 0.5, depth 2.5) of voxel (0, 0, 3) fill the bottom-left 16 x 16 block; the side walls facing the
    # camera show as well, deeper.
    top = (depth - (distance - 0.5)).abs() < 1e-5
    red = rgb[..., 0] > 0.5
    rows, cols = (red & top).nonzero().unbind(1)
    assert int(cols.min()) == 0 and int(cols.max()) == 15 and int(rows.min()) == 48 and int(rows.max()) == 63
    assert int((red & top).sum()) == 256
    green = rgb[..., 1] > 0.5
    rows, cols = (green & top).nonzero().unbind(1)
    assert int(cols.min()) == 48 and int(cols.max()) == 63 and int(rows.min()) == 0 and int(rows.max()) == 15
    assert int((green & top).sum()) == 256 and int(green.sum()) > 256
    assert bool((depth[red] >= distance - 0.5 - 1e-5).all()) and bool((depth[red] <= distance - 0.25 + 1e-5).all())
    # The bottom voxel (z = 0) is seen through empty space, 3/4 of the box deeper and so smaller on screen.
    blue = rgb[..., 2] > 0.5
    assert 0 < int(blue.sum()) < 256
    assert torch.allclose(depth[blue], torch.full_like(depth[blue], distance - 0.5 + 0.75), atol=1e-5)
    assert int(mask.sum()) == int(red.sum() + green.sum() + blue.sum())
    ids = out["voxel_id"][0]
    assert bool((ids[red] == 0).all()) and bool((ids[~mask.bool()] == -1).all())
