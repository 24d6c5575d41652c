"""Texture baking for the GLB exporter: UV-space rasterisation, sparse trilinear voxel lookup, gutter filling.

PyTorch, so the same code runs on the CPU and on a CUDA device (pass tensors on the device you want); on the CPU
each function runs its numba kernel by default (``backend=``; `omnivox.ovoxel.kernels.bake_numba`, tested against
the PyTorch path). These are the substitutes for nvdiffrast, FlexGEMM's ``grid_sample_3d`` and OpenCV
inpainting in the reference (spec ovoxel.md section 7 steps 7-9).

Texel convention: texel ``(row i, column j)`` of an ``S x S`` texture is centred on ``uv = ((j + 0.5) / S,
(i + 0.5) / S)``, so row 0 is at ``v ~ 0``. Written as an image with row 0 on top, this matches glTF's texture
coordinate ``t = v`` (glTF puts ``t = 0`` at the top of the image).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from omnivox._backend import NUMBA_BACKENDS, resolve_backend
from omnivox.ovoxel.grid import Grid
from omnivox.ovoxel.kernels import bake_numba, hashtable
from omnivox.ovoxel.kernels.bake_numba import texel_barycentrics  # noqa: F401 - its old home (atlas, game_report)

BACKENDS = NUMBA_BACKENDS

# Candidate (texel, triangle) pairs tested per rasterisation chunk; bounds the memory to a few hundred MB.
RASTER_CHUNK = 1 << 23
# Query points per sparse-lookup chunk (each needs 8 neighbour lookups).
LOOKUP_CHUNK = 1 << 20


def rasterize_uv(uvs: torch.Tensor, faces: torch.Tensor, vertex_values: torch.Tensor, texture_size: int,
                 backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Rasterise triangles in UV space and interpolate a per-vertex quantity over the covered texels.

    A texel is covered when its centre lies inside a triangle or on its edges (texels on an edge shared by two
    triangles take the value of either; both agree there because the quantity is linear on each triangle).
    Triangles with zero UV area are skipped.

    Args:
        uvs: (V, 2) float, texture coordinates in [0, 1].
        faces: (F, 3) int64 vertex indices.
        vertex_values: (V, C) float, e.g. 3-D positions.
        texture_size: S, the texture is S x S.
        backend: ``"numba"`` (CPU, a loop over each triangle's texels: about 20x faster than the tensor ops there),
            ``"torch"`` (any device, batched candidates), or ``"auto"``: numba for CPU inputs. Same coverage rule
            and arithmetic; a texel on an edge shared by two triangles may take either's (equal) value.

    Returns:
        image: (S, S, C) float32, interpolated values (0 where uncovered).
        mask: (S, S) bool, covered texels.
    """
    if resolve_backend(backend, BACKENDS, "numba", preferred=uvs.device.type == "cpu") == "numba":
        size = int(texture_size)
        image, mask = bake_numba.rasterize_uv(
            np.ascontiguousarray(uvs.detach().cpu().numpy(), dtype=np.float64),
            np.ascontiguousarray(faces.detach().cpu().numpy(), dtype=np.int64),
            np.ascontiguousarray(vertex_values.detach().cpu().numpy(), dtype=np.float32), size)
        return torch.from_numpy(image), torch.from_numpy(mask)
    device = uvs.device
    size = int(texture_size)
    channels = vertex_values.shape[1]
    image = torch.zeros(size * size, channels, dtype=torch.float32, device=device)
    mask = torch.zeros(size * size, dtype=torch.bool, device=device)
    if faces.shape[0] == 0:
        return image.view(size, size, channels), mask.view(size, size)

    # Texel centre (i, j) sits at pixel coordinate (j, i) after this shift, so bounding boxes are plain ceil/floor.
    pix = uvs.to(torch.float64) * size - 0.5
    corners = pix[faces]  # (F, 3, 2)
    lo = torch.ceil(corners.amin(dim=1)).clamp(0, size - 1).long()
    hi = torch.floor(corners.amax(dim=1)).clamp(0, size - 1).long()
    width = (hi[:, 0] - lo[:, 0] + 1).clamp(min=0)
    height = (hi[:, 1] - lo[:, 1] + 1).clamp(min=0)
    e1 = corners[:, 1] - corners[:, 0]
    e2 = corners[:, 2] - corners[:, 0]
    twice_area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    count = torch.where(twice_area.abs() > 1e-12, width * height, torch.zeros_like(width))

    face_ids = torch.nonzero(count > 0).squeeze(1)
    count = count[face_ids]
    ends = torch.cumsum(count, 0)
    values = vertex_values.to(torch.float32)
    first = 0
    while first < face_ids.shape[0]:
        # Take faces until the chunk holds RASTER_CHUNK candidates (at least one face).
        offset = ends[first - 1] if first > 0 else 0
        last = int(torch.searchsorted(ends, offset + RASTER_CHUNK, right=True))
        last = max(last, first + 1)
        fid = face_ids[first:last]
        local = torch.repeat_interleave(torch.arange(last - first, device=device), count[first:last])
        starts = ends[first:last] - count[first:last]
        rank = torch.arange(local.shape[0], device=device) + offset - starts[local]
        f = fid[local]
        col = lo[f, 0] + rank % width[f]
        row = lo[f, 1] + rank // width[f]
        first = last

        c = corners[f]
        px = col.to(torch.float64)
        py = row.to(torch.float64)
        # Barycentrics from signed sub-triangle areas, divided by the signed total: >= 0 inside for either winding.
        w0 = ((c[:, 1, 0] - px) * (c[:, 2, 1] - py) - (c[:, 1, 1] - py) * (c[:, 2, 0] - px)) / twice_area[f]
        w1 = ((c[:, 2, 0] - px) * (c[:, 0, 1] - py) - (c[:, 2, 1] - py) * (c[:, 0, 0] - px)) / twice_area[f]
        w2 = 1.0 - w0 - w1
        inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
        f, row, col = f[inside], row[inside], col[inside]
        bary = torch.stack([w0[inside], w1[inside], w2[inside]], dim=1).to(torch.float32)
        corner_values = values[faces[f]]  # (K, 3, C)
        texel = row * size + col
        image[texel] = (bary.unsqueeze(2) * corner_values).sum(dim=1)
        mask[texel] = True
    return image.view(size, size, channels), mask.view(size, size)


def _voxel_keys(coords: torch.Tensor, resolution: torch.Tensor) -> torch.Tensor:
    return (coords[..., 0] * resolution[1] + coords[..., 1]) * resolution[2] + coords[..., 2]


def sample_sparse_trilinear(coords: torch.Tensor, attributes: torch.Tensor, grid: Grid, points: torch.Tensor,
                            fallback_radius: int = 2, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear interpolation of per-voxel attributes that uses only active voxels (spec 7 step 8).

    With ``g = (p - lo) / voxel_size`` the 8 neighbours are ``floor(g - 0.5) + {0, 1}^3`` (voxel centres at
    ``i + 0.5``), each weighted ``prod(1 - |g - (n + 0.5)|)``; neighbours that are outside the grid or not active
    get weight 0 and the rest are renormalised by their sum. A point with no active neighbour (possible after
    decimation moved the surface off the voxel band) takes the attributes of the nearest active voxel centre within
    ``fallback_radius`` voxels; points with none there are reported as not found.

    Args:
        coords: (N, 3) int voxel indices of the active voxels, unique.
        attributes: (N, C) float per-voxel values.
        grid: the voxel grid.
        points: (P, 3) float world positions.
        fallback_radius: search radius in voxels for the nearest-voxel fallback (0 disables it).
        backend: ``"numba"`` (CPU hash table, fast), ``"torch"`` (sorted keys + ``searchsorted``, runs on any
            device), or ``"auto"``: numba for CPU points, torch otherwise. Both give the same result.

    Returns:
        values: (P, C) float32, on the device of ``points``.
        found: (P,) bool, False where neither the trilinear stencil nor the fallback found an active voxel.
    """
    if resolve_backend(backend, BACKENDS, "numba", preferred=points.device.type == "cpu") == "numba":
        return _sample_sparse_trilinear_numba(coords, attributes, grid, points, fallback_radius)
    return _sample_sparse_trilinear_torch(coords, attributes, grid, points, fallback_radius)


def _sample_sparse_trilinear_torch(coords, attributes, grid, points, fallback_radius):
    device = points.device
    resolution = torch.as_tensor(grid.resolution, dtype=torch.int64, device=device)
    lo = torch.as_tensor(grid.lo, dtype=torch.float64, device=device)
    voxel_size = torch.as_tensor(grid.voxel_size, dtype=torch.float64, device=device)
    keys = _voxel_keys(coords.to(device=device, dtype=torch.int64), resolution)
    sorted_keys, order = torch.sort(keys)
    table = attributes.to(device=device, dtype=torch.float32)[order]

    def lookup(cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cells (..., 3) int64 -> (row index into table, active mask)."""
        inside = ((cells >= 0) & (cells < resolution)).all(dim=-1)
        key = _voxel_keys(cells, resolution)
        index = torch.searchsorted(sorted_keys, key).clamp(max=sorted_keys.shape[0] - 1)
        return index, inside & (sorted_keys[index] == key)

    corner_offsets = torch.tensor([[(b >> 2) & 1, (b >> 1) & 1, b & 1] for b in range(8)], device=device)
    out_values = torch.zeros(points.shape[0], table.shape[1], dtype=torch.float32, device=device)
    out_found = torch.zeros(points.shape[0], dtype=torch.bool, device=device)
    for start in range(0, points.shape[0], LOOKUP_CHUNK):
        g = (points[start:start + LOOKUP_CHUNK].to(torch.float64) - lo) / voxel_size
        base = torch.floor(g - 0.5)
        frac = g - 0.5 - base  # in [0, 1): distance to the lower neighbour's centre
        cells = base.long().unsqueeze(1) + corner_offsets  # (P, 8, 3)
        weight = torch.where(corner_offsets.bool(), frac.unsqueeze(1), 1.0 - frac.unsqueeze(1)).prod(dim=2)
        index, active = lookup(cells)
        weight = torch.where(active, weight, torch.zeros_like(weight))
        total = weight.sum(dim=1)
        blended = (weight.unsqueeze(2).to(torch.float32) * table[index]).sum(dim=1)
        values = blended / total.clamp(min=1e-12).unsqueeze(1).to(torch.float32)
        found = total > 0

        if fallback_radius > 0 and not bool(found.all()):
            missing = torch.nonzero(~found).squeeze(1)
            near_values, near_found = _nearest_active(g[missing], lookup, table, fallback_radius)
            values[missing] = near_values
            found[missing] = near_found
        out_values[start:start + LOOKUP_CHUNK] = values
        out_found[start:start + LOOKUP_CHUNK] = found
    return out_values, out_found


def _nearest_active(g: torch.Tensor, lookup, table: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attributes of the active voxel whose centre is nearest to each grid-space point, within ``radius`` voxels."""
    span = torch.arange(-radius, radius + 1, device=g.device)
    offsets = torch.stack(torch.meshgrid(span, span, span, indexing="ij"), dim=-1).reshape(-1, 3)
    home = torch.floor(g).long()
    values = torch.zeros(g.shape[0], table.shape[1], dtype=torch.float32, device=g.device)
    found = torch.zeros(g.shape[0], dtype=torch.bool, device=g.device)
    for start in range(0, g.shape[0], LOOKUP_CHUNK // offsets.shape[0] + 1):
        stop = start + LOOKUP_CHUNK // offsets.shape[0] + 1
        cells = home[start:stop].unsqueeze(1) + offsets  # (P, K, 3)
        index, active = lookup(cells)
        dist = ((cells.to(torch.float64) + 0.5 - g[start:stop].unsqueeze(1)) ** 2).sum(dim=2)
        dist = torch.where(active, dist, torch.full_like(dist, float("inf")))
        best = dist.argmin(dim=1)
        rows = torch.arange(best.shape[0], device=g.device)
        hit = torch.isfinite(dist[rows, best])
        values[start:stop] = torch.where(hit.unsqueeze(1), table[index[rows, best]], 0.0)
        found[start:stop] = hit
    return values, found


def fill_gutter(image: torch.Tensor, mask: torch.Tensor, dilation_steps: int = 4, backend: str = "auto"
                ) -> torch.Tensor:
    """Fill uncovered texels so that bilinear filtering and mip-mapping never pull in unrelated colours.

    First ``dilation_steps`` rounds of dilation (each uncovered texel next to covered ones takes the mean of its
    covered 3 x 3 neighbours) extend every chart by its own border colours; then a push-pull pass (masked mean
    pyramid, upsampled back into the holes) fills whatever is left with smooth averages.

    Args:
        image: (H, W, C) float.
        mask: (H, W) bool, texels holding valid values.
        dilation_steps: rounds of 1-texel dilation before push-pull.
        backend: ``"numba"`` (CPU; one pass over the texels per round, about 10x faster than the tensor ops on two
            cores), ``"torch"`` (any device), or ``"auto"``: numba for CPU images. Both compute the same image up
            to float32 rounding.

    Returns:
        (H, W, C) float32 image, equal to ``image`` on ``mask``.
    """
    if resolve_backend(backend, BACKENDS, "numba", preferred=image.device.type == "cpu") == "numba":
        if not bool(mask.any()):
            return torch.zeros(image.shape, dtype=torch.float32)
        x = np.ascontiguousarray(image.detach().cpu().numpy(), dtype=np.float32)
        valid = np.ascontiguousarray(mask.detach().cpu().numpy(), dtype=np.bool_)
        return torch.from_numpy(bake_numba.fill_gutter(x, valid, int(dilation_steps)))
    x = image.to(torch.float32).permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W)
    valid = mask.to(torch.float32).view(1, 1, *mask.shape)
    if not bool(mask.any()):
        return torch.zeros_like(image, dtype=torch.float32)
    x = x * valid
    for _ in range(dilation_steps):
        pooled = F.avg_pool2d(torch.cat([x, valid], dim=1), 3, stride=1, padding=1)  # x is already 0 off-mask
        summed, weight = pooled[:, :-1], pooled[:, -1:]
        grow = (valid == 0) & (weight > 0)
        if not bool(grow.any()):
            break
        x = torch.where(grow, summed / weight.clamp(min=1e-12), x)
        valid = torch.where(grow, torch.ones_like(valid), valid)
    x = _push_pull(x, valid)
    return x.squeeze(0).permute(1, 2, 0).contiguous()


def _push_pull(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Fill texels where ``valid == 0`` from a masked-mean pyramid; ``x`` is zero there. (1, C, H, W) in and out."""
    height, width = x.shape[-2:]
    if bool((valid > 0).all()) or (height == 1 and width == 1):
        return x
    summed = F.avg_pool2d(x * valid, 2, ceil_mode=True)
    weight = F.avg_pool2d(valid, 2, ceil_mode=True)
    coarse = summed / weight.clamp(min=1e-12)
    coarse = _push_pull(coarse, (weight > 0).to(valid.dtype))
    up = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return torch.where(valid > 0, x, up)


def _sample_sparse_trilinear_numba(coords, attributes, grid, points, fallback_radius):
    resolution = np.asarray(grid.resolution, np.int64)
    c = coords.detach().cpu().numpy().astype(np.int64)
    keys = (c[:, 0] * resolution[1] + c[:, 1]) * resolution[2] + c[:, 2]
    slot_keys, slot_rows = hashtable.build(keys)
    table = np.ascontiguousarray(attributes.detach().cpu().numpy(), dtype=np.float32)
    g = (points.detach().cpu().numpy().astype(np.float64) - grid.lo.astype(np.float64)) / grid.voxel_size.astype(
        np.float64)
    out = np.zeros((g.shape[0], table.shape[1]), np.float32)
    found = np.zeros(g.shape[0], np.bool_)
    bake_numba.sample_sparse_trilinear(np.ascontiguousarray(g), resolution, slot_keys, slot_rows, table,
                                       int(fallback_radius), out, found)
    return torch.from_numpy(out).to(points.device), torch.from_numpy(found).to(points.device)
