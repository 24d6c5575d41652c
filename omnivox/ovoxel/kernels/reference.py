"""PyTorch references of the O-Voxel package's Triton kernels (same arguments as the launchers in ``triton/``).

The numba and PyTorch conversion stages beside this file (``scan_*``, ``materials_numba``, ``orient_numba``) are
checked against the reference implementation's outputs instead (docs/layout.md).
"""

from __future__ import annotations

import torch

from omnivox.ovoxel.metrics import DEGENERATE_SINE_SQUARED

# Points per slice of the reference's (points x triangles) distance table: bounds its memory, not its result.
POINT_CHUNK = 64


def point_triangle_distance_reference(points: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """(P,) distance from each of ``points`` (P, 3) to the nearest of ``triangles`` (T, 3, 3), exact: the plane
    distance where the projection falls inside the triangle, else the nearest edge's (clamped segment
    projection). Computed in float64, returned in ``points``' dtype."""
    p = points.to(torch.float64)
    t = triangles.to(torch.float64)
    a, b, c = t[:, 0], t[:, 1], t[:, 2]
    ab, ac = b - a, c - a
    normal = torch.linalg.cross(ab, ac)
    norm2 = (normal * normal).sum(1)
    flat = norm2 > DEGENERATE_SINE_SQUARED * (ab * ab).sum(1) * (ac * ac).sum(1)  # else only its edges count
    best = []
    for start in range(0, len(p), POINT_CHUNK):
        q = p[start:start + POINT_CHUNK, None, :]  # (chunk, 1, 3) against (T, 3)
        ap = q - a
        # Barycentric coordinates of the projection, from the signed areas of its sub-triangles.
        beta = (torch.linalg.cross(ap, ac.expand_as(ap)) * normal).sum(-1)
        gamma = (torch.linalg.cross(ab.expand_as(ap), ap) * normal).sum(-1)
        inside = flat & (beta >= 0) & (gamma >= 0) & (beta + gamma <= norm2)
        plane = (ap * normal).sum(-1).abs() / norm2.clamp_min(1e-300).sqrt()
        distance = torch.where(inside, plane, torch.full_like(plane, float("inf")))
        for s, e in ((a, b), (b, c), (c, a)):
            d = e - s
            u = (((q - s) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-300)).clamp(0, 1)
            distance = torch.minimum(distance, (q - (s + u[..., None] * d)).norm(dim=-1))
        best.append(distance.min(dim=1).values)
    return torch.cat(best).to(points.dtype)
