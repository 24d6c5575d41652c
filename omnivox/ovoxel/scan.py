"""The scan conversion shared by geometry and attribute voxelization (spec ovoxel.md 2.2 and 4.2).

Attributes must live on exactly the voxels (and in the order) of the geometry: both come from the same scan of
every triangle against the interior lattice lines.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from omnivox.ovoxel.grid import Grid

ArrayLike = Union[np.ndarray, torch.Tensor]


def triangle_voxel_pairs(triangles: ArrayLike, grid: Grid) -> tuple[ArrayLike, ArrayLike]:
    """Every (triangle, voxel) incidence of the scan, de-duplicated per triangle, in scan order.

    The order of first appearance of the voxels equals the order of ``mesh_to_dual_grid``'s coords for the same
    triangles, so attributes accumulated per voxel line up with the geometry.

    Args:
        triangles: (T, 3, 3) float32 triangles in the shifted frame (world minus ``grid.lo``).
        grid: the grid.

    Returns:
        tri_index: (P,) int64, the triangle of each incidence.
        coords: (P, 3) int32, the voxel.
        numpy for numpy input; torch (same device; CUDA runs the vectorized torch path) for torch input.
    """
    if isinstance(triangles, torch.Tensor):
        if triangles.device.type != "cpu":
            from omnivox.ovoxel.kernels import scan_torch

            return scan_torch.triangle_voxel_pairs(triangles.float(), grid)
        t, c = triangle_voxel_pairs(triangles.detach().numpy(), grid)
        return torch.from_numpy(t), torch.from_numpy(c)
    tris = np.ascontiguousarray(np.asarray(triangles, dtype=np.float32))
    if tris.ndim != 3 or tris.shape[1:] != (3, 3):
        raise ValueError(f"triangles must have shape (T, 3, 3), got {tris.shape}")
    from omnivox.ovoxel.kernels import scan_numba

    tri, axis, owner, _ = scan_numba.scan_crossings(tris, grid.resolution, grid.voxel_size)
    return scan_numba.first_touch_pairs(tri, axis, owner, grid.resolution)
