"""The scan conversion shared by geometry and attribute voxelization (spec ovoxel.md 2.2 and 4.2).

Attributes must live on exactly the voxels (and in the order) of the geometry: both come from the same scan of
every triangle against the interior lattice lines. ``scan_triangles`` runs that scan once and returns its
`Crossings`; ``dual_grid.dual_grid_from_crossings`` and ``materials.materials_from_crossings`` both read them
(``convert.scene_to_ovoxel`` hands the one scan to both).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from omnivox.ovoxel.grid import Grid

ArrayLike = Union[np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class Crossings:
    """Every lattice-edge crossing of a triangle soup, in the reference's scan order (spec 2.2).

    NumPy arrays from the numba scan (CPU), torch tensors on the triangles' device from the torch scan; both scans
    give the same crossings, and the first-touch order of the voxels around them is the geometry's voxel order.
    """

    triangles: ArrayLike  # (T, 3, 3) float32 triangles in the shifted frame (world minus grid.lo)
    tri: ArrayLike  # (M,) the triangle of each crossing
    axis: ArrayLike  # (M,) the axis (0, 1, 2) of the crossed lattice edge
    owner: ArrayLike  # (M, 3) the voxel owning the crossed edge
    point: ArrayLike  # (M, 3) float32 crossing point, shifted frame
    grid: Grid

    def __len__(self) -> int:
        return int(self.tri.shape[0])

    @property
    def on_torch(self) -> bool:
        """True for the torch scan's tensors, False for the numba scan's arrays."""
        return isinstance(self.tri, torch.Tensor)


@contextlib.contextmanager
def numba_threads(n: Optional[int]):
    """Run the enclosed numba kernels on ``n`` threads (``None``: leave the thread count as it is)."""
    if n is None:
        yield
        return
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def scan_triangles(triangles: ArrayLike, grid: Grid, threads: Optional[int] = None) -> Crossings:
    """Scan (T, 3, 3) float32 triangles (shifted frame) against the grid's lattice lines.

    A numpy array runs the numba scan (on ``threads`` threads, default all); a tensor runs the vectorized torch scan
    on its device. Inputs are not validated here (the public entry points validate them).
    """
    if isinstance(triangles, torch.Tensor):
        from omnivox.ovoxel.kernels import scan_torch

        tri, axis, owner, point = scan_torch.scan_crossings(triangles, grid)
    else:
        from omnivox.ovoxel.kernels import scan_numba

        with numba_threads(threads):
            tri, axis, owner, point = scan_numba.scan_crossings(triangles, grid.resolution, grid.voxel_size)
    return Crossings(triangles, tri, axis, owner, point, grid)


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

            return scan_torch.crossing_voxel_pairs(scan_triangles(triangles.float(), grid))
        t, c = triangle_voxel_pairs(triangles.detach().numpy(), grid)
        return torch.from_numpy(t), torch.from_numpy(c)
    tris = np.ascontiguousarray(np.asarray(triangles, dtype=np.float32))
    if tris.ndim != 3 or tris.shape[1:] != (3, 3):
        raise ValueError(f"triangles must have shape (T, 3, 3), got {tris.shape}")
    from omnivox.ovoxel.kernels import scan_numba

    crossings = scan_triangles(tris, grid)
    return scan_numba.first_touch_pairs(crossings.tri, crossings.axis, crossings.owner, grid.resolution)
