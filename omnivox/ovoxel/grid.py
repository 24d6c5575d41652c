"""The voxel grid an O-Voxel lives on: an axis-aligned box cut into `resolution` cells per axis.

Voxel ``(i, j, k)`` is the closed box ``lo + vs * (i, j, k)`` ... ``lo + vs * (i+1, j+1, k+1)``; lattice points
sit at integer voxel coordinates and voxel centres at half-integers (spec ovoxel.md 1.1). The voxel size is
computed in float32, as the reference does, so that conversions reproduce its arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

UNIT_AABB = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))

# 2048^3 voxels is the largest grid whose lattice keys and surface voxel counts stay sane in memory on one
# machine; the reference's own curve codes stop at 1024 per axis.
MAX_RESOLUTION = 4096

Resolution = Union[int, Sequence[int]]
AABB = Sequence[Sequence[float]]


@dataclass(frozen=True)
class Grid:
    """A validated grid description.

    Attributes:
        resolution: (3,) int64 cells per axis.
        lo, hi: (3,) float32 box corners.
        voxel_size: (3,) float32, ``(hi - lo) / resolution`` in float32.
    """

    resolution: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    voxel_size: np.ndarray

    @staticmethod
    def make(resolution: Resolution, aabb: AABB = UNIT_AABB) -> "Grid":
        """Validate ``resolution`` (int or 3 ints) and ``aabb`` ((lo, hi) pairs of 3 floats)."""
        res = np.asarray(resolution)
        if res.ndim == 0:
            res = np.repeat(res, 3)
        if res.shape != (3,) or not np.issubdtype(res.dtype, np.integer):
            raise ValueError(f"resolution must be an int or 3 ints, got {resolution!r}")
        res = res.astype(np.int64)
        if (res < 1).any():
            raise ValueError(f"resolution must be >= 1 on every axis, got {res.tolist()}")
        if (res > MAX_RESOLUTION).any():
            raise ValueError(
                f"resolution {res.tolist()} is larger than the supported maximum {MAX_RESOLUTION} per axis"
            )
        box = np.asarray(aabb, dtype=np.float64)
        if box.shape != (2, 3):
            raise ValueError(f"aabb must be ((lo_x, lo_y, lo_z), (hi_x, hi_y, hi_z)), got shape {box.shape}")
        if not np.isfinite(box).all():
            raise ValueError(f"aabb must be finite, got {box.tolist()}")
        lo = box[0].astype(np.float32)
        hi = box[1].astype(np.float32)
        if (hi <= lo).any():
            raise ValueError(f"aabb must have hi > lo on every axis, got lo={lo.tolist()} hi={hi.tolist()}")
        voxel_size = ((hi - lo) / res.astype(np.float32)).astype(np.float32)
        return Grid(res, lo, hi, voxel_size)
