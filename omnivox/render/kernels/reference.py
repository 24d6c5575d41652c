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
  vertices, always in the same (lexicographic) order, negated for one of them, so a ray on the shared edge gets
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
CANDIDATE_CHUNK = 1 << 20
# Pixel boxes are widened by this many pixels so that rounding in the projection can never drop a pixel whose
# centre the (exact, inclusive) ray test would accept; the extra candidates just fail the test.
BOX_SLACK = 1e-3


@dataclass
class TriangleSetup:
    """Per-(camera, triangle) data of the triangles that can cover a pixel (T of them).

    camera: (T,) int64, face: (T,) int64 index into ``faces``, normals: (T, 3, 3) float32 edge-plane normals
    (row k = n_k), depth: (T, 3) float32 camera z of the corners, box: (T, 4) int64 inclusive pixel box
    ``(x0, y0, x1, y1)``; rays: (B, 4) float32 ``(sx, ox, sy, oy)`` per camera; clip: (B, 2) float32
    ``(near, far)`` per camera.
    """

    camera: torch.Tensor
    face: torch.Tensor
    normals: torch.Tensor
    depth: torch.Tensor
    box: torch.Tensor
    rays: torch.Tensor
    clip: torch.Tensor


def pixel_rays(intrinsics: torch.Tensor, resolution: Tuple[int, int]) -> torch.Tensor:
    """(B, 4) ``(sx, ox, sy, oy)``: the ray of pixel (i, j) is ``((j+0.5) sx + ox, (i+0.5) sy + oy, 1)``.

    float32, or float64 for float64 intrinsics.
    """
    height, width = resolution
    k = intrinsics.to(torch.float64)
    fx, fy, cx, cy = k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]
    rays = torch.stack([1 / (width * fx), -cx / fx, 1 / (height * fy), -cy / fy], dim=1)
    return rays if intrinsics.dtype == torch.float64 else rays.to(torch.float32)


def _lex_less(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., 3) points: a < b in lexicographic (x, y, z) order."""
    ax, ay, az = a.unbind(-1)
    bx, by, bz = b.unbind(-1)
    return (ax < bx) | ((ax == bx) & ((ay < by) | ((ay == by) & (az < bz))))


def edge_normals(corners: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) camera-space corners -> (..., 3, 3) edge-plane normals, row k = v_{k+1} x v_{k+2}.

    Each cross product is evaluated with its two points in lexicographic order and negated when they were
    swapped, so the two triangles sharing an edge get exactly opposite normals whatever the cross-product
    kernel does (fused multiply-adds make ``a x b`` and ``-(b x a)`` differ in the last bit), also where the
    mesh duplicates the edge's vertices (UV seams).
    """
    rows = []
    for k in range(3):
        a, b = corners[..., (k + 1) % 3, :], corners[..., (k + 2) % 3, :]
        ordered = _lex_less(a, b).unsqueeze(-1)
        first, second = torch.where(ordered, a, b), torch.where(ordered, b, a)
        n = torch.linalg.cross(first, second, dim=-1)
        rows.append(torch.where(ordered, n, -n))
    return torch.stack(rows, dim=-2)


def triangle_setup(camera_vertices: torch.Tensor, faces: torch.Tensor, intrinsics: torch.Tensor,
                   resolution: Tuple[int, int], clip: torch.Tensor) -> TriangleSetup:
    """Transform, cull and bound the triangles for every camera.

    Args:
        camera_vertices: (B, V, 3) float32 camera-space positions.
        faces: (F, 3) int64.
        intrinsics: (B, 3, 3) normalised.
        resolution: (H, W).
        clip: (B, 2) float32 ``(near, far)`` per camera; triangles entirely in front of the near plane, off
            screen, or covering no pixel centre are dropped.
    """
    height, width = resolution
    k = intrinsics.to(torch.float32)
    fx, fy = k[:, 0, 0].view(-1, 1), k[:, 1, 1].view(-1, 1)
    cx, cy = k[:, 0, 2].view(-1, 1), k[:, 1, 2].view(-1, 1)
    z = camera_vertices[..., 2]
    near = clip[:, 0:1]  # (B, 1)
    safe_z = torch.where(z >= near, z, torch.ones_like(z))
    # Pixel positions of the vertices (meaningful for those beyond the near plane).
    vx = (fx * camera_vertices[..., 0] / safe_z + cx) * width
    vy = (fy * camera_vertices[..., 1] / safe_z + cy) * height
    ahead = z >= near
    corner_ahead = ahead[:, faces]  # (B, F, 3)
    cx_, cy_ = vx[:, faces], vy[:, faces]
    x_lo, x_hi = cx_.amin(dim=2), cx_.amax(dim=2)
    y_lo, y_hi = cy_.amin(dim=2), cy_.amax(dim=2)
    n_ahead = corner_ahead.sum(dim=2)
    visible = n_ahead > 0
    clipped = (visible & (n_ahead < 3)).nonzero(as_tuple=True)
    if clipped[0].numel():
        # Triangles crossing the near plane: bound the part beyond it (its corners there plus the points where
        # its edges cross the plane).
        corners = camera_vertices[clipped[0].unsqueeze(1), faces[clipped[1]]]  # (C, 3, 3)
        cz = corners[..., 2]
        near_c = clip[clipped[0], 0].unsqueeze(1)  # (C, 1)
        nxt = corners.roll(-1, dims=1)
        crosses = (cz >= near_c) != (nxt[..., 2] >= near_c)
        t = ((near_c - cz) / torch.where(crosses, nxt[..., 2] - cz, torch.ones_like(cz))).unsqueeze(-1)
        points = torch.cat([corners, corners + t * (nxt - corners)], dim=1)  # (C, 6, 3)
        usable = torch.cat([cz >= near_c, crosses], dim=1)
        b = clipped[0].unsqueeze(1)
        pz = torch.maximum(points[..., 2], near_c)
        px = (fx[b, 0] * points[..., 0] / pz + cx[b, 0]) * width
        py = (fy[b, 0] * points[..., 1] / pz + cy[b, 0]) * height
        inf = torch.tensor(float("inf"), device=px.device)
        x_lo[clipped] = torch.where(usable, px, inf).amin(dim=1)
        x_hi[clipped] = torch.where(usable, px, -inf).amax(dim=1)
        y_lo[clipped] = torch.where(usable, py, inf).amin(dim=1)
        y_hi[clipped] = torch.where(usable, py, -inf).amax(dim=1)
    # Pixel j is a candidate when its centre j + 0.5 lies in [x_lo, x_hi] (widened by BOX_SLACK).
    x0 = torch.ceil(x_lo - 0.5 - BOX_SLACK).clamp(-1, width)
    x1 = torch.floor(x_hi - 0.5 + BOX_SLACK).clamp(-1, width)
    y0 = torch.ceil(y_lo - 0.5 - BOX_SLACK).clamp(-1, height)
    y1 = torch.floor(y_hi - 0.5 + BOX_SLACK).clamp(-1, height)
    # NaN boxes fail every comparison and are dropped here too.
    keep = visible & (x1 >= 0) & (x0 <= width - 1) & (y1 >= 0) & (y0 <= height - 1) & (x0 <= x1) & (y0 <= y1)
    camera, face = keep.nonzero(as_tuple=True)
    box = torch.stack([x0[camera, face].clamp(min=0), y0[camera, face].clamp(min=0),
                       x1[camera, face].clamp(max=width - 1), y1[camera, face].clamp(max=height - 1)], dim=1)
    kept = camera_vertices[camera.unsqueeze(1), faces[face]]
    return TriangleSetup(camera=camera, face=face, normals=edge_normals(kept).contiguous(),
                         depth=kept[..., 2].contiguous(), box=box.long(),
                         rays=pixel_rays(intrinsics.to(torch.float32), resolution).to(camera_vertices.device),
                         clip=clip.to(device=camera_vertices.device, dtype=torch.float32).contiguous())


def pack_keys(depth: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """Positive float32 depth and int64 face ids -> int64 depth-test keys (nearest first, then lowest id)."""
    return (depth.contiguous().view(torch.int32).to(torch.int64) << 32) | face


def unpack_keys(keys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """int64 keys -> (face id int64 with -1 for empty pixels, depth float32 with 0 for empty pixels)."""
    empty = keys == EMPTY_KEY
    face = torch.where(empty, -1, keys & 0xFFFFFFFF)
    depth = (keys >> 32).to(torch.int32).view(torch.float32)
    return face, torch.where(empty, torch.zeros_like(depth), depth)


def coverage(setup: TriangleSetup, rows: torch.Tensor, px: torch.Tensor, py: torch.Tensor
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Ray test of candidate pixels against triangles, broadcast over a (T, S) grid of candidates.

    ``rows`` (T, 1) selects triangles of ``setup``; ``px``, ``py`` (T, S) int64 are the pixel columns and rows
    tested against each. Returns (hit mask (T, S) bool, depth (T, S) float32). The operation order matches the
    Triton kernel.
    """
    flat_rows = rows.squeeze(1)
    camera = setup.camera.index_select(0, flat_rows)
    rays = setup.rays.index_select(0, camera).unsqueeze(1)  # (T, 1, 4)
    clip = setup.clip.index_select(0, camera)  # (T, 2)
    dx = (px.to(torch.float32) + 0.5) * rays[..., 0] + rays[..., 1]
    dy = (py.to(torch.float32) + 0.5) * rays[..., 2] + rays[..., 3]
    n = setup.normals.index_select(0, flat_rows)  # (T, 3, 3)
    z = setup.depth.index_select(0, flat_rows)  # (T, 3)
    w0 = n[:, 0, 0:1] * dx + n[:, 0, 1:2] * dy + n[:, 0, 2:3]
    w1 = n[:, 1, 0:1] * dx + n[:, 1, 1:2] * dy + n[:, 1, 2:3]
    w2 = n[:, 2, 0:1] * dx + n[:, 2, 1:2] * dy + n[:, 2, 2:3]
    total = w0 + w1 + w2
    inside = (((w0 >= 0) & (w1 >= 0) & (w2 >= 0)) | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0))) & (total != 0)
    depth = (w0 * z[:, 0:1] + w1 * z[:, 1:2] + w2 * z[:, 2:3]) / torch.where(total != 0, total, 1.0)
    return inside & (depth >= clip[:, 0:1]) & (depth <= clip[:, 1:2]), depth


def rasterize_keys_reference(setup: TriangleSetup, num_cameras: int, resolution: Tuple[int, int],
                             previous: Optional[torch.Tensor] = None) -> torch.Tensor:
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
    classes, counts = torch.unique_consecutive(class_id[order], return_counts=True)
    start = 0
    for cls, count in zip(classes.tolist(), counts.tolist()):
        members = order[start:start + count]
        start += count
        span_w, span_h = 1 << (cls // 32), 1 << (cls % 32)
        offsets = torch.arange(span_w * span_h, device=device)
        offsets_x, offsets_y = (offsets % span_w).unsqueeze(0), (offsets // span_w).unsqueeze(0)
        per_chunk = max(1, CANDIDATE_CHUNK // (span_w * span_h))
        for chunk in members.split(per_chunk):
            chunk_box = box.index_select(0, chunk)
            px = chunk_box[:, 0:1] + offsets_x
            py = chunk_box[:, 1:2] + offsets_y
            hit, depth = coverage(setup, chunk.unsqueeze(1), px, py)
            if span_w > 1 or span_h > 1:
                hit &= (px <= chunk_box[:, 2:3]) & (py <= chunk_box[:, 3:4])
            flat = hit.view(-1).nonzero().squeeze(1)
            row = chunk.index_select(0, flat // (span_w * span_h))
            keys = pack_keys(depth.view(-1).index_select(0, flat), setup.face.index_select(0, row))
            pixel = (setup.camera.index_select(0, row) * height + py.reshape(-1).index_select(0, flat)) * width \
                + px.reshape(-1).index_select(0, flat)
            if previous is not None:
                later = keys > previous.index_select(0, pixel)
                keys, pixel = keys[later], pixel[later]
            keys_out.scatter_reduce_(0, pixel, keys, reduce="amin")
    return keys_out
