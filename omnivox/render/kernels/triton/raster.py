"""Triton rasterization kernel: the coverage test of `kernels.reference` over (triangle, pixel tile) pairs.

The launcher splits every triangle's pixel box into ``TILE x TILE`` tiles and lists the (triangle, tile)
pairs; one program takes ``BLOCK_PAIRS`` pairs and evaluates all ``TILE * TILE`` pixels of each as one 2-D
block, then does an ``atomic_min`` of the packed (depth, face id) key into the key buffer (same formulas and
tie rules as `coverage_keys`, so the two paths give the same triangle ids except where rounding differs by an
ulp at an exact tie).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from omnivox.render.kernels.reference import EMPTY_KEY, TriangleSetup


@triton.jit
def _rasterize_fwd_kernel(
    pair_tri_ptr,  # (P,) int32 row of the triangle in the set-up arrays
    pair_tile_ptr,  # (P, 2) int32 tile origin (x, y) in pixels
    camera_ptr,  # (T,) int64
    face_ptr,  # (T,) int64
    normals_ptr,  # (T, 9) float32
    depth_ptr,  # (T, 3) float32
    box_ptr,  # (T, 4) int64
    rays_ptr,  # (B, 4) float32
    clip_ptr,  # (B, 2) float32 near, far
    keys_ptr,  # (B * H * W,) int64, atomically reduced
    previous_ptr,  # (B * H * W,) int64 or dummy
    num_pairs, height, width,
    HAS_PREVIOUS: tl.constexpr, TILE: tl.constexpr, BLOCK_PAIRS: tl.constexpr,
):
    pid = tl.program_id(0)
    pairs = pid * BLOCK_PAIRS + tl.arange(0, BLOCK_PAIRS)
    pair_ok = pairs < num_pairs
    tri = tl.load(pair_tri_ptr + pairs, mask=pair_ok, other=0).to(tl.int64)
    tile_x = tl.load(pair_tile_ptr + pairs * 2, mask=pair_ok, other=0)
    tile_y = tl.load(pair_tile_ptr + pairs * 2 + 1, mask=pair_ok, other=0)
    cam = tl.load(camera_ptr + tri, mask=pair_ok, other=0)
    face = tl.load(face_ptr + tri, mask=pair_ok, other=0)
    x1 = tl.load(box_ptr + tri * 4 + 2, mask=pair_ok, other=-1)
    y1 = tl.load(box_ptr + tri * 4 + 3, mask=pair_ok, other=-1)
    n00 = tl.load(normals_ptr + tri * 9 + 0, mask=pair_ok, other=0.0)
    n01 = tl.load(normals_ptr + tri * 9 + 1, mask=pair_ok, other=0.0)
    n02 = tl.load(normals_ptr + tri * 9 + 2, mask=pair_ok, other=0.0)
    n10 = tl.load(normals_ptr + tri * 9 + 3, mask=pair_ok, other=0.0)
    n11 = tl.load(normals_ptr + tri * 9 + 4, mask=pair_ok, other=0.0)
    n12 = tl.load(normals_ptr + tri * 9 + 5, mask=pair_ok, other=0.0)
    n20 = tl.load(normals_ptr + tri * 9 + 6, mask=pair_ok, other=0.0)
    n21 = tl.load(normals_ptr + tri * 9 + 7, mask=pair_ok, other=0.0)
    n22 = tl.load(normals_ptr + tri * 9 + 8, mask=pair_ok, other=0.0)
    z0 = tl.load(depth_ptr + tri * 3 + 0, mask=pair_ok, other=0.0)
    z1 = tl.load(depth_ptr + tri * 3 + 1, mask=pair_ok, other=0.0)
    z2 = tl.load(depth_ptr + tri * 3 + 2, mask=pair_ok, other=0.0)
    sx = tl.load(rays_ptr + cam * 4 + 0, mask=pair_ok, other=0.0)
    ox = tl.load(rays_ptr + cam * 4 + 1, mask=pair_ok, other=0.0)
    sy = tl.load(rays_ptr + cam * 4 + 2, mask=pair_ok, other=0.0)
    oy = tl.load(rays_ptr + cam * 4 + 3, mask=pair_ok, other=0.0)
    near = tl.load(clip_ptr + cam * 2 + 0, mask=pair_ok, other=1.0)
    far = tl.load(clip_ptr + cam * 2 + 1, mask=pair_ok, other=0.0)

    offs = tl.arange(0, TILE * TILE)
    px = tile_x[:, None] + (offs % TILE)[None, :]  # (BLOCK_PAIRS, TILE*TILE)
    py = tile_y[:, None] + (offs // TILE)[None, :]
    ok = pair_ok[:, None] & (px <= x1[:, None]) & (py <= y1[:, None])
    dx = (px.to(tl.float32) + 0.5) * sx[:, None] + ox[:, None]
    dy = (py.to(tl.float32) + 0.5) * sy[:, None] + oy[:, None]
    w0 = n00[:, None] * dx + n01[:, None] * dy + n02[:, None]
    w1 = n10[:, None] * dx + n11[:, None] * dy + n12[:, None]
    w2 = n20[:, None] * dx + n21[:, None] * dy + n22[:, None]
    total = w0 + w1 + w2
    inside = (((w0 >= 0) & (w1 >= 0) & (w2 >= 0)) | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0))) & (total != 0)
    safe_total = tl.where(total != 0, total, 1.0)
    z = (w0 * z0[:, None] + w1 * z1[:, None] + w2 * z2[:, None]) / safe_total
    ok = ok & inside & (z >= near[:, None]) & (z <= far[:, None])
    z = tl.where(ok, z, 1.0)
    key = (z.to(tl.int32, bitcast=True).to(tl.int64) << 32) | face[:, None]
    pixel = (cam[:, None] * height + py) * width + px
    if HAS_PREVIOUS:
        previous = tl.load(previous_ptr + pixel, mask=ok, other=0)
        ok = ok & (key > previous)
    tl.atomic_min(keys_ptr + pixel, key, mask=ok)


def tile_pairs(box: torch.Tensor, tile: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(T, 4) inclusive pixel boxes -> (P,) int32 triangle rows and (P, 2) int32 tile origins."""
    tiles_x = (box[:, 2] - box[:, 0]) // tile + 1
    tiles_y = (box[:, 3] - box[:, 1]) // tile + 1
    count = tiles_x * tiles_y
    tri = torch.repeat_interleave(torch.arange(box.shape[0], device=box.device), count)
    first = torch.cumsum(count, 0) - count
    local = torch.arange(tri.shape[0], device=box.device) - first[tri]
    per_row = tiles_x[tri]
    origin = torch.stack([box[tri, 0] + (local % per_row) * tile, box[tri, 1] + (local // per_row) * tile], dim=1)
    return tri.to(torch.int32), origin.to(torch.int32).contiguous()


def rasterize_keys_triton(setup: TriangleSetup, num_cameras: int, resolution: Tuple[int, int],
                          previous: Optional[torch.Tensor] = None, tile: int = 4,
                          block_pairs: int = 16) -> torch.Tensor:
    """Triton version of `rasterize_keys_reference` (same arguments, same result up to exact ties).

    ``tile`` 4 and ``block_pairs`` 16 measured fastest on an H100 for both 1M triangles at 1024^2 and
    16 x 200K at 512^2 (docs/benchmarks/render.md): most triangles of dense meshes cover a few pixels.
    """
    height, width = resolution
    device = setup.normals.device
    keys = torch.full((num_cameras * height * width,), EMPTY_KEY, dtype=torch.int64, device=device)
    if setup.face.numel() == 0:
        return keys
    pair_tri, pair_tile = tile_pairs(setup.box, tile)
    num_pairs = pair_tri.shape[0]
    grid = (triton.cdiv(num_pairs, block_pairs),)
    _rasterize_fwd_kernel[grid](
        pair_tri, pair_tile, setup.camera.contiguous(), setup.face.contiguous(),
        setup.normals.reshape(-1, 9).contiguous(), setup.depth.contiguous(), setup.box.contiguous(),
        setup.rays.contiguous(), setup.clip.contiguous(), keys, previous if previous is not None else keys,
        num_pairs, height, width,
        HAS_PREVIOUS=previous is not None, TILE=tile, BLOCK_PAIRS=block_pairs,
    )
    return keys
