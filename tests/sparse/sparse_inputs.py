"""Random sparse inputs and dense references shared by the sparse tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omnivox.sparse import SparseTensor


def random_coords(generator: torch.Generator, resolution: int = 6, density: float = 0.35) -> torch.Tensor:
    """(N, 4) int32 coords of 4 batch items: random voxels incl. grid corners, an empty item, a single
    boundary voxel, and another random item. Rows are shuffled inside each item (ops must not care)."""
    r = resolution
    items = []
    occ = torch.rand(r, r, r, generator=generator) < density
    occ[0, 0, 0] = occ[r - 1, r - 1, r - 1] = occ[r - 1, 0, r - 1] = True  # voxels on the grid boundary
    items.append(occ.nonzero())
    items.append(torch.zeros(0, 3, dtype=torch.int64))  # empty batch item
    items.append(torch.tensor([[r - 1, 0, r - 1]]))  # a single voxel on the boundary
    items.append((torch.rand(r, r, r, generator=generator) < density).nonzero())
    packed = []
    for b, xyz in enumerate(items):
        xyz = xyz[torch.randperm(xyz.shape[0], generator=generator)]
        packed.append(torch.cat([torch.full((xyz.shape[0], 1), b), xyz], 1))
    return torch.cat(packed).to(torch.int32)


def random_sparse(generator: torch.Generator, channels: int, dtype=torch.float64, resolution: int = 6,
                  density: float = 0.35) -> SparseTensor:
    coords = random_coords(generator, resolution, density)
    feats = torch.randn(coords.shape[0], channels, generator=generator, dtype=torch.float64).to(dtype)
    return SparseTensor.from_coords(coords, feats, batch_size=4)


def to_dense(x: SparseTensor, resolution: int) -> torch.Tensor:
    """(B, C, R, R, R) float64 volume with zeros at inactive voxels."""
    c = x.coords.long()
    dense = torch.zeros(x.batch_size, x.feats.shape[1], resolution, resolution, resolution, dtype=torch.float64)
    dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = x.feats.double()
    return dense


def dense_conv_reference(x: SparseTensor, weight: torch.Tensor, bias, resolution: int) -> torch.Tensor:
    """Masked dense conv3d in float64, read back at the active voxels: (N, Co)."""
    out = F.conv3d(to_dense(x, resolution), weight.double().permute(0, 4, 1, 2, 3),
                   None if bias is None else bias.double(), padding=1)
    c = x.coords.long()
    return out[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
