"""PyTorch rasterization: triangle set-up, the per-pixel coverage test, and the CPU path (any device).

The coverage test (shared with the Triton kernel, which evaluates the same formulas):

* Each triangle is transformed to camera space once. Its three **edge planes** through the camera centre have
  normals ``n_k = v_{k+1} x v_{k+2}`` (edge opposite vertex ``k``).
* The ray of pixel ``(i, j)`` is ``d = ((j + 0.5) sx + ox, (i + 0.5) sy + oy, 1)`` with ``sx = 1 / (W fx)``,
  ``ox = -cx / fx`` (likewise for y).
* ``w_k = n_k . d`` are the signed volumes of the tetrahedra (origin, edge k, ray); the ray hits the triangle
  when all three have the same sign, and ``b_k = w_k / (w_0 + w_1 + w_2)`` are then the **perspective-correct
  barycentrics** of the hit point, whose camera depth is ``z = sum_k b_k z_k``. The hit counts when
  ``near <= z <= far``. This is clipping against the near plane without clipping any polygon: a triangle that
  crosses the near plane shows exactly its part beyond it (the SC-VAE loss slices objects on purpose, spec
  training.md 2.4).
* Watertight: two triangles that share an edge compute its plane normal from the same two camera-space
  vertices in opposite order, and IEEE ``a x b`` is exactly ``-(b x a)``, so a ray on the shared edge gets
  ``w = 0`` from both (the test is inclusive: both cover it; the depth test picks one) and a ray beside it
  is inside exactly one of the two. No pinholes, no cracks.
* Depth test: candidates are packed into int64 keys ``(float32 bits of z) << 32 | face id`` (z > 0, so the
  bit pattern orders like the float) and reduced with ``amin`` per pixel: nearest surface first, lowest face
  id on exact ties, deterministic on every backend. Depth peeling keeps only keys larger than the previous
  layer's key at that pixel.

CPU enumeration: triangles are grouped by the power-of-two size of their pixel bounding box and each group is
evaluated on a dense (triangles x box) grid in chunks, so small triangles cost a few candidates each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

EMPTY_KEY = torch.iinfo(torch.int64).max
# Candidates evaluated at once by the CPU path (bounds the temporary memory to ~100 MB).
CANDIDATE_CHUNK = 1 << 21
# Pixel boxes are widened by this many pixels so that rounding in the projection can never drop a pixel whose
# centre the (exact, inclusive) ray test would accept; the extra candidates just fail the test.
BOX_SLACK = 1e-3


@dataclass
class TriangleSetup:
    """Per-(camera, triangle) data of the triangles that can cover a pixel (T of them).

    camera: (T,) int64, face: (T,) int64 index into ``faces``, normals: (T, 3, 3) float32 edge-plane normals
    (row k = n_k), depth: (T, 3) float32 camera z of the corners, box: (T, 4) int64 inclusive pixel box
    ``(x0, y0, x1, y1)``; rays: (B, 4) float32 ``(sx, ox, sy, oy)`` per camera.
    """

    camera: torch.Tensor
    face: torch.Tensor
    normals: torch.Tensor
    depth: torch.Tensor
    box: torch.Tensor
    rays: torch.Tensor


def pixel_rays(intrinsics: torch.Tensor, resolution: Tuple[int, int]) -> torch.Tensor:
    """(B, 4) float32 ``(sx, ox, sy, oy)``: the ray of pixel (i, j) is ``((j+0.5) sx + ox, (i+0.5) sy + oy, 1)``."""
    height, width = resolution
    k = intrinsics.to(torch.float64)
    fx, fy, cx, cy = k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]
    return torch.stack([1 / (width * fx), -cx / fx, 1 / (height * fy), -cy / fy], dim=1).to(torch.float32)


def edge_normals(corners: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) camera-space corners -> (..., 3, 3) edge-plane normals, row k = v_{k+1} x v_{k+2}."""
    v0, v1, v2 = corners.unbind(-2)
    return torch.stack([torch.linalg.cross(v1, v2, dim=-1), torch.linalg.cross(v2, v0, dim=-1),
                        torch.linalg.cross(v0, v1, dim=-1)], dim=-2)


def triangle_setup(camera_vertices: torch.Tensor, faces: torch.Tensor, intrinsics: torch.Tensor,
                   resolution: Tuple[int, int], near: float) -> TriangleSetup:
    """Transform, cull and bound the triangles for every camera.

    Args:
        camera_vertices: (B, V, 3) float32 camera-space positions.
        faces: (F, 3) int64.
        intrinsics: (B, 3, 3) normalised.
        resolution: (H, W).
        near: near-plane depth; triangles entirely in front of it (or entirely off screen) are dropped.
    """
    height, width = resolution
    num_cameras = camera_vertices.shape[0]
    corners = camera_vertices[:, faces]  # (B, F, 3, 3)
    z = corners[..., 2]
    # The pixel box of the part of the triangle beyond the near plane: its corners there plus the points where
    # its edges cross the plane.
    ahead = z >= near
    nxt = corners.roll(-1, dims=2)
    z_next = nxt[..., 2]
    crosses = (z >= near) != (z_next >= near)
    t = ((near - z) / torch.where(crosses, z_next - z, torch.ones_like(z))).unsqueeze(-1)
    crossing = corners + t * (nxt - corners)
    points = torch.cat([corners, crossing], dim=2)  # (B, F, 6, 3)
    usable = torch.cat([ahead, crosses], dim=2)
    k = intrinsics.to(torch.float32)
    fx, fy = k[:, 0, 0].view(-1, 1, 1), k[:, 1, 1].view(-1, 1, 1)
    cx, cy = k[:, 0, 2].view(-1, 1, 1), k[:, 1, 2].view(-1, 1, 1)
    pz = torch.where(usable, points[..., 2], torch.ones_like(points[..., 2])).clamp(min=near * 0.5)
    px = (fx * points[..., 0] / pz + cx) * width
    py = (fy * points[..., 1] / pz + cy) * height
    inf = torch.tensor(float("inf"), device=px.device)
    x_lo = torch.where(usable, px, inf).amin(dim=2)
    x_hi = torch.where(usable, px, -inf).amax(dim=2)
    y_lo = torch.where(usable, py, inf).amin(dim=2)
    y_hi = torch.where(usable, py, -inf).amax(dim=2)
    # Pixel j is a candidate when its centre j + 0.5 lies in [x_lo, x_hi] (widened by BOX_SLACK).
    x0 = torch.ceil(x_lo - 0.5 - BOX_SLACK).clamp(-1, width)
    x1 = torch.floor(x_hi - 0.5 + BOX_SLACK).clamp(-1, width)
    y0 = torch.ceil(y_lo - 0.5 - BOX_SLACK).clamp(-1, height)
    y1 = torch.floor(y_hi - 0.5 + BOX_SLACK).clamp(-1, height)
    keep = usable.any(dim=2) & (x1 >= 0) & (x0 <= width - 1) & (y1 >= 0) & (y0 <= height - 1) & (x0 <= x1) \
        & (y0 <= y1) & torch.isfinite(x_lo) & torch.isfinite(y_lo) & torch.isfinite(x_hi) & torch.isfinite(y_hi)
    camera, face = keep.nonzero(as_tuple=True)
    box = torch.stack([x0[camera, face].clamp(min=0), y0[camera, face].clamp(min=0),
                       x1[camera, face].clamp(max=width - 1), y1[camera, face].clamp(max=height - 1)], dim=1)
    kept = corners[camera, face]
    return TriangleSetup(camera=camera, face=face, normals=edge_normals(kept).contiguous(),
                         depth=kept[..., 2].contiguous(), box=box.long(),
                         rays=pixel_rays(intrinsics, resolution).to(camera_vertices.device))


def pack_keys(depth: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """Positive float32 depth and int64 face ids -> int64 depth-test keys (nearest first, then lowest id)."""
    return (depth.contiguous().view(torch.int32).to(torch.int64) << 32) | face


def unpack_keys(keys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """int64 keys -> (face id int64 with -1 for empty pixels, depth float32 with 0 for empty pixels)."""
    empty = keys == EMPTY_KEY
    face = torch.where(empty, -1, keys & 0xFFFFFFFF)
    depth = (keys >> 32).to(torch.int32).view(torch.float32)
    return face, torch.where(empty, torch.zeros_like(depth), depth)


def coverage_keys(setup: TriangleSetup, index: torch.Tensor, px: torch.Tensor, py: torch.Tensor,
                  near: float, far: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Ray test of candidate pixels against triangles: (valid mask, int64 keys) for each candidate.

    ``index`` (K,) selects rows of ``setup``; ``px``, ``py`` (K,) are the candidates' pixel columns and rows.
    """
    rays = setup.rays[setup.camera[index]]
    dx = (px.to(torch.float32) + 0.5) * rays[:, 0] + rays[:, 1]
    dy = (py.to(torch.float32) + 0.5) * rays[:, 2] + rays[:, 3]
    n = setup.normals[index]  # (K, 3, 3)
    w = n[..., 0] * dx.unsqueeze(1) + n[..., 1] * dy.unsqueeze(1) + n[..., 2]  # (K, 3)
    total = w.sum(dim=1)
    inside = ((w >= 0).all(dim=1) | (w <= 0).all(dim=1)) & (total != 0)
    z = (w * setup.depth[index]).sum(dim=1) / torch.where(total != 0, total, torch.ones_like(total))
    valid = inside & (z >= near) & (z <= far)
    keys = pack_keys(torch.where(valid, z, torch.ones_like(z)), setup.face[index])
    return valid, keys


def rasterize_keys_reference(setup: TriangleSetup, num_cameras: int, resolution: Tuple[int, int], near: float,
                             far: float, previous: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The nearest key per pixel, (B * H * W,) int64 (``EMPTY_KEY`` where nothing is hit).

    With ``previous`` (a key buffer of the same shape), only keys strictly larger than it count (depth peeling).
    """
    height, width = resolution
    device = setup.normals.device
    keys_out = torch.full((num_cameras * height * width,), EMPTY_KEY, dtype=torch.int64, device=device)
    if setup.face.numel() == 0:
        return keys_out
    box = setup.box
    box_w = box[:, 2] - box[:, 0] + 1
    box_h = box[:, 3] - box[:, 1] + 1
    # Power-of-two size classes: class (a, b) holds boxes of at most 2^a x 2^b pixels.
    class_w = torch.ceil(torch.log2(box_w.to(torch.float32))).long()
    class_h = torch.ceil(torch.log2(box_h.to(torch.float32))).long()
    class_id = class_w * 32 + class_h
    order = torch.argsort(class_id)
    sorted_class = class_id[order]
    classes, counts = torch.unique_consecutive(sorted_class, return_counts=True)
    start = 0
    for cls, count in zip(classes.tolist(), counts.tolist()):
        members = order[start:start + count]
        start += count
        span_w, span_h = 1 << (cls // 32), 1 << (cls % 32)
        offsets_y, offsets_x = torch.meshgrid(torch.arange(span_h, device=device), torch.arange(span_w, device=device),
                                              indexing="ij")
        offsets_x, offsets_y = offsets_x.reshape(-1), offsets_y.reshape(-1)
        per_chunk = max(1, CANDIDATE_CHUNK // (span_w * span_h))
        for chunk in members.split(per_chunk):
            px = (box[chunk, 0:1] + offsets_x).reshape(-1)
            py = (box[chunk, 1:2] + offsets_y).reshape(-1)
            index = chunk.repeat_interleave(span_w * span_h)
            in_box = (px <= box[index, 2]) & (py <= box[index, 3])
            index, px, py = index[in_box], px[in_box], py[in_box]
            valid, keys = coverage_keys(setup, index, px, py, near, far)
            pixel = (setup.camera[index] * height + py) * width + px
            if previous is not None:
                valid &= keys > previous[pixel]
            keys_out.scatter_reduce_(0, pixel[valid], keys[valid], reduce="amin")
    return keys_out
