"""Voxel previews: axis-aligned cubes with per-voxel colours (spec training.md 5.4), for O-Voxels and sparse
structures.

Each active voxel becomes a cube of 12 triangles; faces shared by two active voxels are dropped first (they
can never be seen), so a solid block costs only its surface. The cubes go through `rasterize`, so the images
follow the camera conventions of `omnivox.render.cameras`. Voxel ``i`` spans
``[origin + i * size, origin + (i + 1) * size]`` with ``size = 1 / resolution`` by default (centres at
``origin + (i + 0.5) * size``, as in spec 5.2).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from omnivox.render.rasterize import rasterize

__all__ = ["render_voxels", "voxel_cubes"]

# The six cube faces: outward axis direction, then two triangles (counter-clockwise seen from outside) over the
# cube's corners numbered by bits (x, y, z) = (c >> 2 & 1, c >> 1 & 1, c & 1).
_FACES = (
    ((-1, 0, 0), ((0, 1, 3), (0, 3, 2))),
    ((1, 0, 0), ((4, 6, 7), (4, 7, 5))),
    ((0, -1, 0), ((0, 5, 1), (0, 4, 5))),
    ((0, 1, 0), ((2, 3, 7), (2, 7, 6))),
    ((0, 0, -1), ((0, 2, 6), (0, 6, 4))),
    ((0, 0, 1), ((1, 5, 7), (1, 7, 3))),
)


def voxel_cubes(coords: torch.Tensor, resolution: int, origin: Union[float, Sequence[float]] = -0.5,
                voxel_size: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triangle mesh of the visible cube faces of a voxel set.

    Args:
        coords: (N, 3) int voxel indices, unique.
        resolution: grid size per axis.
        origin: the grid's minimum corner (scalar or 3 values).
        voxel_size: edge length (default ``1 / resolution``).

    Returns:
        vertices (8N, 3) float32, faces (M, 3) int64, voxel_of_face (M,) int64 row of ``coords``.
    """
    device = coords.device
    coords = coords.to(torch.int64)
    size = voxel_size if voxel_size is not None else 1.0 / resolution
    lo = torch.as_tensor(origin, dtype=torch.float32, device=device)
    bits = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], device=device)
    vertices = ((coords.unsqueeze(1) + bits).to(torch.float32) * size + lo).reshape(-1, 3)
    # Hash the voxel set (with a 1-voxel margin so neighbours outside the grid do not alias).
    span = int(resolution) + 2
    keys = ((coords[:, 0] + 1) * span + coords[:, 1] + 1) * span + coords[:, 2] + 1
    sorted_keys, _ = torch.sort(keys)
    faces, owners = [], []
    base = torch.arange(coords.shape[0], device=device) * 8
    for direction, triangles in _FACES:
        d = torch.tensor(direction, device=device)
        neighbour = coords + d
        nkey = ((neighbour[:, 0] + 1) * span + neighbour[:, 1] + 1) * span + neighbour[:, 2] + 1
        slot = torch.searchsorted(sorted_keys, nkey).clamp(max=max(sorted_keys.shape[0] - 1, 0))
        hidden = sorted_keys[slot] == nkey if sorted_keys.numel() else torch.zeros_like(nkey, dtype=torch.bool)
        visible = (~hidden).nonzero().squeeze(1)
        for tri in triangles:
            faces.append(base[visible].unsqueeze(1) + torch.tensor(tri, device=device))
            owners.append(visible)
    if faces:
        return vertices, torch.cat(faces), torch.cat(owners)
    return vertices, torch.zeros(0, 3, dtype=torch.int64, device=device), torch.zeros(0, dtype=torch.int64,
                                                                                      device=device)


def render_voxels(coords: torch.Tensor, colors: torch.Tensor, resolution: int, extrinsics: torch.Tensor,
                  intrinsics: torch.Tensor, image_size: Union[int, Tuple[int, int]], *,
                  origin: Union[float, Sequence[float]] = -0.5, voxel_size: Optional[float] = None,
                  background: Union[float, Sequence[float]] = 0.0, near: float = 0.01, far: float = 100.0,
                  backend: str = "auto") -> Dict[str, torch.Tensor]:
    """Render voxels as coloured cubes.

    Args:
        coords: (N, 3) int voxel indices, unique, in ``[0, resolution)``.
        colors: (N, C) float per-voxel colours (any number of channels, e.g. RGB or PBR attributes).
        resolution: grid size per axis.
        extrinsics, intrinsics: (B, 4, 4) and (B, 3, 3) cameras.
        image_size: (H, W) or an int.
        origin, voxel_size: grid placement (default: the unit box centred at the origin).
        background: colour of empty pixels.

    Returns:
        dict: ``"rgb"`` (B, H, W, C) colours, ``"mask"`` (B, H, W) float, ``"depth"`` (B, H, W) camera z (0 where
        empty), ``"voxel_id"`` (B, H, W) int64 row of ``coords`` (-1 where empty).
    """
    if coords.dim() != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must be (N, 3), got {tuple(coords.shape)}")
    if colors.dim() != 2 or colors.shape[0] != coords.shape[0]:
        raise ValueError(f"colors must be (N, C) with N = {coords.shape[0]}, got {tuple(colors.shape)}")
    if coords.numel() and (int(coords.min()) < 0 or int(coords.max()) >= resolution):
        raise ValueError(f"coords must lie in [0, {resolution})")
    vertices, faces, owner = voxel_cubes(coords, resolution, origin, voxel_size)
    fragments = rasterize(vertices, faces, extrinsics, intrinsics, image_size, near=near, far=far, backend=backend)
    triangle = fragments.triangle_id[:, 0]
    hit = triangle >= 0
    voxel_id = torch.where(hit, owner[triangle.clamp(min=0)], torch.full_like(triangle, -1))
    bg = torch.as_tensor(background, dtype=colors.dtype, device=colors.device).expand(colors.shape[1])
    rgb = torch.where(hit.unsqueeze(-1), colors[voxel_id.clamp(min=0)], bg)
    return {"rgb": rgb, "mask": hit.to(colors.dtype), "depth": fragments.depth[:, 0], "voxel_id": voxel_id}
