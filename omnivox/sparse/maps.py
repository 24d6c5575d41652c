"""Index maps between voxel sets: the convolution neighbour map and the downsampling map.

`NeighborMap` is a pure function of the coordinates (a performance cache: recomputing it never changes a
result). `DownsampleMap` is data with meaning: it records which fine voxel went to which parent and child
slot in a space-to-channel step, so that a decoder can invert exactly that step (spec models.md 2.3, 2.4
and 9.6). It is returned and passed explicitly, never looked up from hidden state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


class NeighborMap:
    """The 3x3x3 neighbour table of one coordinate set, plus schedules derived from it on demand.

    Attributes:
        table: ``(N, 27) int32``; ``table[i, v]`` is the row of voxel ``i``'s neighbour at kernel offset
            ``v = 9(dx+1) + 3(dy+1) + (dz+1)``, or ``-1`` when that voxel is not active. The map is
            symmetric: ``table[i, v] == j`` exactly when ``table[j, 26 - v] == i``.
    """

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self._derived: dict = {}

    def derived(self, key: tuple, compute: Callable[[], object]):
        """A value computed from ``table`` once and kept (kernel schedules)."""
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]

    @property
    def num_voxels(self) -> int:
        return self.table.shape[0]

    def __repr__(self) -> str:
        return f"NeighborMap(num_voxels={self.num_voxels}, device={self.table.device})"


@dataclass(frozen=True, eq=False)
class DownsampleMap:
    """What one space-to-channel (2x) step did, so that channel-to-space can undo it.

    Fine row ``i`` (coordinates ``fine_coords[i]``) went to coarse row ``parent[i]``, child slot
    ``child[i] = (x % 2) + 2 (y % 2) + 4 (z % 2)``, i.e. channels ``child[i] * C : (child[i] + 1) * C``.

    Attributes:
        fine_coords: ``(N, 4) int32`` coordinates of the fine tensor, in its row order.
        coarse_coords: ``(N', 4) int32`` coordinates of the coarse tensor (sorted by ``(b, x, y, z)``).
        parent: ``(N,) int64`` coarse row of each fine row.
        child: ``(N,) int64`` child slot (0..7) of each fine row.
        batch_size: batch size of both tensors.
    """

    fine_coords: torch.Tensor
    coarse_coords: torch.Tensor
    parent: torch.Tensor
    child: torch.Tensor
    batch_size: int

    def __repr__(self) -> str:
        return (f"DownsampleMap(fine={self.fine_coords.shape[0]}, coarse={self.coarse_coords.shape[0]}, "
                f"batch_size={self.batch_size})")
