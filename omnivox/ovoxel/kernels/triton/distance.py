"""Triton kernel: the exact distance from points to the nearest of a set of triangles, by brute force.

What the exporter's tolerance search measures after each halving (`meshops.decimate_within`): 10,000 sample points
against a surface of up to a few hundred thousand triangles, both ways. Every (point, triangle) pair is evaluated
(no search structure to build), in float32 tiles of ``BLOCK_P`` points x ``BLOCK_T`` triangles, with the same
formulas as `kernels.reference.point_triangle_distance_reference`: the plane distance where the projection falls
inside the triangle (barycentric test), else the nearest of the three clamped edge projections. The triangles are
split over ``SPLITS`` program columns whose partial minima are reduced afterwards, so a few thousand points still
fill the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from omnivox.ovoxel.metrics import DEGENERATE_SINE_SQUARED

# Rows of the per-triangle set-up (structure of arrays, one row per value; see _triangle_setup).
SETUP_ROWS = 22


@triton.jit
def _nearest_triangle_kernel(points_ptr, setup_ptr, partial_ptr, num_points, num_triangles, triangles_per_split,
                             BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    split = tl.program_id(1)
    row_ok = rows < num_points
    px = tl.load(points_ptr + rows * 3 + 0, mask=row_ok, other=0.0)[:, None]
    py = tl.load(points_ptr + rows * 3 + 1, mask=row_ok, other=0.0)[:, None]
    pz = tl.load(points_ptr + rows * 3 + 2, mask=row_ok, other=0.0)[:, None]
    best = tl.full([BLOCK_P], float("inf"), tl.float32)
    first = split * triangles_per_split
    last = tl.minimum(first + triangles_per_split, num_triangles)
    for start in range(first, last, BLOCK_T):
        cols = start + tl.arange(0, BLOCK_T)
        ok = cols < last
        row = setup_ptr + cols
        ax = tl.load(row + 0 * num_triangles, mask=ok, other=0.0)[None, :]
        ay = tl.load(row + 1 * num_triangles, mask=ok, other=0.0)[None, :]
        az = tl.load(row + 2 * num_triangles, mask=ok, other=0.0)[None, :]
        bx = tl.load(row + 3 * num_triangles, mask=ok, other=0.0)[None, :]  # ab
        by = tl.load(row + 4 * num_triangles, mask=ok, other=0.0)[None, :]
        bz = tl.load(row + 5 * num_triangles, mask=ok, other=0.0)[None, :]
        cx = tl.load(row + 6 * num_triangles, mask=ok, other=0.0)[None, :]  # ac
        cy = tl.load(row + 7 * num_triangles, mask=ok, other=0.0)[None, :]
        cz = tl.load(row + 8 * num_triangles, mask=ok, other=0.0)[None, :]
        nx = tl.load(row + 9 * num_triangles, mask=ok, other=0.0)[None, :]  # unit normal
        ny = tl.load(row + 10 * num_triangles, mask=ok, other=0.0)[None, :]
        nz = tl.load(row + 11 * num_triangles, mask=ok, other=0.0)[None, :]
        ux = tl.load(row + 12 * num_triangles, mask=ok, other=0.0)[None, :]  # beta = ap . u
        uy = tl.load(row + 13 * num_triangles, mask=ok, other=0.0)[None, :]
        uz = tl.load(row + 14 * num_triangles, mask=ok, other=0.0)[None, :]
        vx = tl.load(row + 15 * num_triangles, mask=ok, other=0.0)[None, :]  # gamma = ap . v
        vy = tl.load(row + 16 * num_triangles, mask=ok, other=0.0)[None, :]
        vz = tl.load(row + 17 * num_triangles, mask=ok, other=0.0)[None, :]
        inv_ab = tl.load(row + 18 * num_triangles, mask=ok, other=0.0)[None, :]
        inv_ac = tl.load(row + 19 * num_triangles, mask=ok, other=0.0)[None, :]
        inv_bc = tl.load(row + 20 * num_triangles, mask=ok, other=0.0)[None, :]
        limit = tl.load(row + 21 * num_triangles, mask=ok, other=-1.0)[None, :]  # 1, or -1: never inside
        qx = px - ax
        qy = py - ay
        qz = pz - az
        beta = qx * ux + qy * uy + qz * uz
        gamma = qx * vx + qy * vy + qz * vz
        plane = qx * nx + qy * ny + qz * nz
        inside = (beta >= 0) & (gamma >= 0) & (beta + gamma <= limit)
        d2 = tl.where(inside, plane * plane, float("inf"))
        # Edge ab (from a), edge ac (from a), edge bc (from b = a + ab).
        t = tl.minimum(tl.maximum((qx * bx + qy * by + qz * bz) * inv_ab, 0.0), 1.0)
        ex = qx - t * bx
        ey = qy - t * by
        ez = qz - t * bz
        d2 = tl.minimum(d2, ex * ex + ey * ey + ez * ez)
        t = tl.minimum(tl.maximum((qx * cx + qy * cy + qz * cz) * inv_ac, 0.0), 1.0)
        ex = qx - t * cx
        ey = qy - t * cy
        ez = qz - t * cz
        d2 = tl.minimum(d2, ex * ex + ey * ey + ez * ez)
        sx = qx - bx
        sy = qy - by
        sz = qz - bz
        dx = cx - bx
        dy = cy - by
        dz = cz - bz
        t = tl.minimum(tl.maximum((sx * dx + sy * dy + sz * dz) * inv_bc, 0.0), 1.0)
        ex = sx - t * dx
        ey = sy - t * dy
        ez = sz - t * dz
        d2 = tl.minimum(d2, ex * ex + ey * ey + ez * ez)
        d2 = tl.where(ok[None, :], d2, float("inf"))
        best = tl.minimum(best, tl.min(d2, axis=1))
    tl.store(partial_ptr + split * num_points + rows, best, mask=row_ok)


def _triangle_setup(triangles: torch.Tensor) -> torch.Tensor:
    """(T, 3, 3) -> (SETUP_ROWS, T) float32, computed in float64: corner a, ab, ac, unit normal, the vectors whose
    dot product with ``p - a`` gives the barycentric coordinates, 1/|ab|^2, 1/|ac|^2, 1/|bc|^2 (0 for a zero-length
    edge) and the barycentric limit (-1 for a degenerate triangle, so only its edges count)."""
    t = triangles.to(torch.float64)
    a, ab, ac = t[:, 0], t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    normal = torch.linalg.cross(ab, ac)
    norm2 = (normal * normal).sum(1, keepdim=True)
    flat = norm2 > DEGENERATE_SINE_SQUARED * (ab * ab).sum(1, keepdim=True) * (ac * ac).sum(1, keepdim=True)
    scale = torch.where(flat, 1 / norm2.clamp_min(1e-300), torch.zeros_like(norm2))
    unit = normal * scale.sqrt()
    beta = torch.linalg.cross(ac, normal) * scale
    gamma = torch.linalg.cross(normal, ab) * scale

    def inverse_square(edge):
        square = (edge * edge).sum(1, keepdim=True)
        return torch.where(square > 0, 1 / square.clamp_min(1e-300), torch.zeros_like(square))

    limit = torch.where(flat, torch.ones_like(norm2), -torch.ones_like(norm2))
    columns = [a, ab, ac, unit, beta, gamma, inverse_square(ab), inverse_square(ac), inverse_square(ac - ab), limit]
    return torch.cat(columns, dim=1).t().contiguous().to(torch.float32)


def point_triangle_distance(points: torch.Tensor, triangles: torch.Tensor, block_points: int = 32,
                            block_triangles: int = 64) -> torch.Tensor:
    """(P,) float32 distance from each of ``points`` (P, 3) to the nearest of ``triangles`` (T, 3, 3), on CUDA."""
    if len(triangles) == 0:
        raise ValueError("point_triangle_distance needs at least one triangle")
    points = points.to(torch.float32).contiguous()
    setup = _triangle_setup(triangles)
    num_points, num_triangles = len(points), len(triangles)
    row_blocks = triton.cdiv(num_points, block_points)
    # Enough (row block, triangle slice) programs to fill the GPU several times over, each slice a whole number
    # of tiles.
    splits = max(1, min(triton.cdiv(num_triangles, 8 * block_triangles), triton.cdiv(2048, row_blocks)))
    per_split = triton.cdiv(triton.cdiv(num_triangles, splits), block_triangles) * block_triangles
    splits = triton.cdiv(num_triangles, per_split)
    partial = torch.empty(splits, num_points, dtype=torch.float32, device=points.device)
    _nearest_triangle_kernel[(row_blocks, splits)](points, setup, partial, num_points, num_triangles, per_split,
                                                   BLOCK_P=block_points, BLOCK_T=block_triangles)
    return partial.min(dim=0).values.sqrt()
