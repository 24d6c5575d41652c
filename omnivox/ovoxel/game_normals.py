"""Detail maps for game export: MikkTSpace-convention tangents, a tangent-space normal map and ambient occlusion.

Both maps carry what the full-resolution O-Voxel surface has and a decimated mesh has lost:

* **Normals.** The full-resolution extracted surface has one vertex per voxel (`omnivox.ovoxel.extract`); its
  area-weighted vertex normals, averaged per voxel, are a normal field on the voxel grid. Each texel of the low-poly
  mesh looks that field up at its 3-D point (`bake.sample_sparse_trilinear`, the lookup the colours use) and stores
  it in the texel's tangent frame. Where the field is unreliable (no voxel near, or the two sides of a sheet thinner
  than a voxel cancelled out) the texel keeps the low-poly normal, i.e. the flat value (0.5, 0.5, 1).
* **Tangent frames** follow glTF: ``TANGENT = (t, w)`` with ``t`` along increasing U and the bitangent
  ``b = w * cross(n, t)`` along increasing ``1 - V``, i.e. towards the top of the image, which makes the map's
  green channel "+Y up" (OpenGL convention) as glTF requires. Per-vertex tangents are corner-angle-weighted sums of
  the face tangents, orthogonalised against the vertex normal (the MikkTSpace construction, without its vertex
  splitting: the UV atlas already splits vertices along seams). The bake inverts the exact per-texel basis a shader
  builds from the interpolated ``n``, ``t`` and ``b``, so a renderer that uses the written tangents reproduces the
  full-resolution normal.
* **Ambient occlusion** is ray-marched through the voxel occupancy (pooled to at most ``AO_GRID`` cells per axis):
  ``AO_RAYS`` cosine-distributed rays from each texel of an AO image, over ``AO_STEPS`` cells. It is packed as the
  R channel of glTF's ORM image (occlusion, roughness, metallic).

Everything is PyTorch on the device of the inputs (CUDA or CPU); on the CPU the rasteriser and the voxel lookup
take their numba kernels (``backend="auto"``), with ``backend="torch"`` the same arithmetic as on the GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numba
import numpy as np
import torch
import torch.nn.functional as F

from omnivox._backend import NUMBA_BACKENDS, resolve_backend
from omnivox.ovoxel import bake
from omnivox.ovoxel.grid import Grid

BACKENDS = NUMBA_BACKENDS
# A looked-up normal shorter than this (the two faces of a sheet thinner than a voxel averaged away) is not used.
MIN_NORMAL_LENGTH = 0.3
# Looked-up normals more than this far from the low-poly normal (cosine) are taken as the far side of a thin part.
MIN_NORMAL_AGREEMENT = 0.0
# Tangent-space normals keep at least this z (a map pointing below the surface shades black in most engines).
MIN_TANGENT_Z = 0.05
# Occlusion: occupancy pooled to at most this many cells per axis, rays per texel, cells marched per ray, and the
# start offset along the normal in cells (clears the texel's own cell and its flat neighbours at grazing angles).
AO_GRID = 128
AO_RAYS = 16
AO_STEPS = 16
AO_START = 1.75
# The AO image is computed at most this large and scaled up (occlusion varies slowly).
AO_MAX_SIZE = 512


def _unit(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


def any_perpendicular(n: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit vectors perpendicular to unit ``n`` (a fixed, continuous-enough choice)."""
    helper = torch.where(n[..., :1].abs() < 0.9, torch.tensor([1.0, 0.0, 0.0], dtype=n.dtype, device=n.device),
                         torch.tensor([0.0, 1.0, 0.0], dtype=n.dtype, device=n.device))
    return _unit(torch.linalg.cross(helper.expand_as(n), n, dim=-1))


def vertex_tangents(vertices, faces, uvs, normals) -> np.ndarray:
    """glTF ``TANGENT`` attributes of a UV-mapped mesh.

    Args:
        vertices: (V, 3) float positions.
        faces: (F, 3) int triangles.
        uvs: (V, 2) float glTF texture coordinates (V down the image).
        normals: (V, 3) float unit vertex normals.

    Returns:
        (V, 4) float32: unit tangent along increasing U, orthogonal to the normal, and handedness ``w = +-1`` such
        that ``w * cross(n, t)`` runs along increasing ``1 - V``.
    """
    v = torch.as_tensor(np.asarray(vertices), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
    uv = torch.as_tensor(np.asarray(uvs), dtype=torch.float64).clone()
    n = _unit(torch.as_tensor(np.asarray(normals), dtype=torch.float64))
    uv[:, 1] = 1.0 - uv[:, 1]  # bitangent up the image
    p, q = v[f], uv[f]  # (F, 3, 3), (F, 3, 2)
    tangent_sum = torch.zeros_like(v)
    bitangent_sum = torch.zeros_like(v)
    for corner in range(3):
        a, b, c = corner, (corner + 1) % 3, (corner + 2) % 3
        e1, e2 = p[:, b] - p[:, a], p[:, c] - p[:, a]
        d1, d2 = q[:, b] - q[:, a], q[:, c] - q[:, a]
        det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
        ok = det.abs() > 1e-20
        inv = torch.where(ok, 1.0 / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
        s_dir = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * inv[:, None]
        t_dir = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * inv[:, None]
        cos = (_unit(e1) * _unit(e2)).sum(-1).clamp(-1, 1)
        angle = torch.acos(cos)[:, None]  # MikkTSpace weights each face's frame by its corner angle
        tangent_sum.index_add_(0, f[:, a], _unit(s_dir) * angle)
        bitangent_sum.index_add_(0, f[:, a], _unit(t_dir) * angle)
    t = tangent_sum - n * (tangent_sum * n).sum(-1, keepdim=True)
    fallback = t.norm(dim=-1) < 1e-12
    t = torch.where(fallback[:, None], any_perpendicular(n), _unit(t))
    handed = (torch.linalg.cross(n, t, dim=-1) * bitangent_sum).sum(-1)
    w = torch.where(handed < 0, -1.0, 1.0)
    return torch.cat([t, w[:, None]], dim=1).float().numpy()


def voxel_normals(vertices, faces, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The full-resolution surface's normal field on the voxel grid.

    Area-weighted vertex normals, averaged over the vertices inside each voxel (the extracted surface has one per
    voxel). Not normalised: where the two sides of a thin sheet share voxels the sum shrinks, and the bake reads the
    length as reliability.

    Returns:
        coords (M, 3) int64 of the voxels holding a vertex, normals (M, 3) float32 (length <= 1).
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    face_normal = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    summed = np.zeros_like(v)
    for corner in range(3):
        np.add.at(summed, f[:, corner], face_normal)
    length = np.linalg.norm(summed, axis=1)
    used = length > 0
    unit = summed[used] / length[used, None]
    cell = np.floor((v[used] - grid.lo) / grid.voxel_size).astype(np.int64)
    cell = np.clip(cell, 0, grid.resolution - 1)
    keys = (cell[:, 0] * grid.resolution[1] + cell[:, 1]) * grid.resolution[2] + cell[:, 2]
    unique, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.reshape(-1)
    total = np.zeros((len(unique), 3))
    np.add.at(total, inverse, unit)
    count = np.bincount(inverse, minlength=len(unique))[:, None]
    coords = np.stack([unique // (grid.resolution[1] * grid.resolution[2]),
                       (unique // grid.resolution[2]) % grid.resolution[1], unique % grid.resolution[2]], axis=1)
    return coords.astype(np.int64), (total / count).astype(np.float32)


@dataclass
class SurfaceTexels:
    """What the bakes need of every texel of a UV-mapped mesh: covered texels, their points and shading frames.

    Attributes:
        size: texture side S.
        covered: (K,) int64 flat indices (row * S + column) of texels inside a UV triangle.
        points: (K, 3) float32 3-D points.
        normal, tangent, bitangent: (K, 3) float32 interpolated and normalised, as a shader builds them.
    """

    size: int
    covered: torch.Tensor
    points: torch.Tensor
    normal: torch.Tensor
    tangent: torch.Tensor
    bitangent: torch.Tensor


def surface_texels(vertices, faces, uvs, normals, tangents, texture_size: int, device=None,
                   backend: str = "auto") -> SurfaceTexels:
    """Rasterise a UV-mapped mesh (``bake.rasterize_uv``) and interpolate positions and the tangent frame."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    t = torch.as_tensor(np.asarray(tangents), dtype=torch.float32)
    n = torch.as_tensor(np.asarray(normals), dtype=torch.float32)
    b = torch.linalg.cross(n, t[:, :3], dim=1) * t[:, 3:4]
    values = torch.cat([torch.as_tensor(np.asarray(vertices), dtype=torch.float32), n, t[:, :3], b], dim=1)
    image, mask = bake.rasterize_uv(torch.as_tensor(np.asarray(uvs), dtype=torch.float32).to(device),
                                    torch.as_tensor(np.asarray(faces), dtype=torch.int64).to(device),
                                    values.to(device), int(texture_size), backend=backend)
    image, mask = image.to(device), mask.to(device)
    covered = torch.nonzero(mask.view(-1)).squeeze(1)
    texel = image.view(-1, values.shape[1])[covered]
    return SurfaceTexels(int(texture_size), covered, texel[:, :3], _unit(texel[:, 3:6]), _unit(texel[:, 6:9]),
                         _unit(texel[:, 9:12]))


def detail_normals(texels: SurfaceTexels, normal_coords, normal_field, grid: Grid, backend: str = "auto"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The full-resolution normal at each texel's point, and whether it is used (else the low-poly normal)."""
    device = texels.points.device
    field, found = bake.sample_sparse_trilinear(torch.as_tensor(normal_coords), torch.as_tensor(normal_field), grid,
                                                texels.points, fallback_radius=2, backend=backend)
    field, found = field.to(device), found.to(device)
    length = field.norm(dim=1)
    detail = field / length.clamp(min=1e-12)[:, None]
    usable = found & (length >= MIN_NORMAL_LENGTH) & ((detail * texels.normal).sum(1) > MIN_NORMAL_AGREEMENT)
    return torch.where(usable[:, None], detail, texels.normal), usable


def to_tangent_space(texels: SurfaceTexels, world_normals: torch.Tensor) -> torch.Tensor:
    """(K, 3) unit tangent-space normals ``m`` with ``normalize(m.x t + m.y b + m.z n) = world_normal``."""
    basis = torch.stack([texels.tangent, texels.bitangent, texels.normal], dim=2).to(torch.float64)  # columns
    det = torch.linalg.det(basis)
    solvable = det.abs() > 1e-6
    eye = torch.eye(3, dtype=torch.float64, device=basis.device).expand_as(basis)
    safe = torch.where(solvable[:, None, None], basis, eye)
    m = torch.linalg.solve(safe, world_normals.to(torch.float64).unsqueeze(2)).squeeze(2)
    m = torch.where(solvable[:, None], m, torch.tensor([0.0, 0.0, 1.0], dtype=m.dtype, device=m.device))
    m = _unit(m)
    low = m[:, 2] < MIN_TANGENT_Z
    xy = m[:, :2] * (math.sqrt(1 - MIN_TANGENT_Z ** 2) / m[:, :2].norm(dim=1, keepdim=True).clamp(min=1e-12))
    m = torch.where(low[:, None], torch.cat([xy, torch.full_like(m[:, :1], MIN_TANGENT_Z)], dim=1), m)
    return m.float()


def bake_normal_map(texels: SurfaceTexels, normal_coords, normal_field, grid: Grid, backend: str = "auto"
                    ) -> tuple[torch.Tensor, float]:
    """Tangent-space normal map (S, S, 3) in [0, 1] (flat = (0.5, 0.5, 1)), gutters filled, and the fraction of
    covered texels that took a full-resolution normal."""
    size = texels.size
    device = texels.points.device
    world, usable = detail_normals(texels, normal_coords, normal_field, grid, backend)
    m = to_tangent_space(texels, world)
    image = torch.zeros(size * size, 3, device=device)
    image[:, 2] = 1.0
    image[texels.covered] = m
    valid = torch.zeros(size * size, dtype=torch.bool, device=device)
    valid[texels.covered] = True
    filled = bake.fill_gutter(image.view(size, size, 3), valid.view(size, size))
    encoded = (_unit(filled) * 0.5 + 0.5).clamp(0, 1)
    return encoded, float(usable.float().mean()) if len(usable) else 0.0


def occupancy_grid(coords, resolution: int, cells: int = AO_GRID, device=None) -> torch.Tensor:
    """(G, G, G) bool: active voxels max-pooled onto a grid of ``G = min(cells, resolution)`` per axis."""
    g = min(int(cells), int(resolution))
    c = torch.as_tensor(np.asarray(coords), dtype=torch.int64, device=device)
    c = torch.div(c * g, int(resolution), rounding_mode="floor").clamp(0, g - 1)
    grid = torch.zeros(g, g, g, dtype=torch.bool, device=device)
    grid[c[:, 0], c[:, 1], c[:, 2]] = True
    return grid


def hemisphere_directions(count: int = AO_RAYS) -> torch.Tensor:
    """(count, 3) cosine-distributed unit directions about +Z (a Fibonacci spiral: fixed, even coverage)."""
    k = torch.arange(count, dtype=torch.float64) + 0.5
    r = torch.sqrt(k / count)
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), torch.sqrt(1 - r * r)], dim=1).float()


def ambient_occlusion(points: torch.Tensor, normals: torch.Tensor, occupancy: torch.Tensor, grid: Grid,
                      rays: int = AO_RAYS, steps: int = AO_STEPS, backend: str = "auto") -> torch.Tensor:
    """(K,) visibility in [0, 1] (1 = open sky) of surface points by marching rays through ``occupancy``.

    ``occupancy`` covers ``grid``'s box with its own cell count. Each point casts ``rays`` cosine-distributed rays
    about its normal (the spiral turned by a per-point angle, so neighbouring texels do not band), starting
    ``AO_START`` cells out, one sample per cell for ``steps`` cells; a ray that meets an occupied cell is blocked.

    ``backend``: ``"numba"`` (CPU loop), ``"torch"`` (any device) or ``"auto"`` (numba for CPU points). Same
    arithmetic in float32; a sample exactly on a cell face may round to either cell.
    """
    if resolve_backend(backend, BACKENDS, "numba", preferred=points.device.type == "cpu") == "numba":
        cells = occupancy.shape[0]
        padded = F.pad(occupancy.to(torch.uint8), (1, 1, 1, 1, 1, 1)).cpu().numpy().reshape(-1).astype(np.bool_)
        frames = _ray_frames(points.cpu(), normals.cpu(), 0)
        visibility = _occlusion_numba(
            np.ascontiguousarray(points.detach().cpu().numpy(), np.float32),
            *(np.ascontiguousarray(x.numpy(), np.float32) for x in frames),
            np.ascontiguousarray(hemisphere_directions(rays).numpy(), np.float32), padded, cells,
            np.asarray(grid.lo, np.float32), np.float32(float((grid.hi - grid.lo).max()) / cells), steps)
        return torch.from_numpy(visibility).to(points.device)
    return _ambient_occlusion_torch(points, normals, occupancy, grid, rays, steps)


def _ray_frames(points: torch.Tensor, normals: torch.Tensor, start: int) -> tuple:
    """Per point: unit normal and the two tangent directions the ray spiral is laid on (turned by a per-point
    golden-ratio angle), as float32."""
    n = _unit(normals.float())
    t1 = any_perpendicular(n)
    t2 = torch.linalg.cross(n, t1, dim=1)
    golden = (math.sqrt(5.0) - 1) / 2
    angle = ((torch.arange(start, start + points.shape[0], device=points.device, dtype=torch.float64) * golden) % 1.0
             * 2 * math.pi).float()
    cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    return n, cos * t1 + sin * t2, -sin * t1 + cos * t2


@numba.njit(parallel=True, cache=True)
def _occlusion_numba(points, n, u, v, local, padded, cells, lo, cell_size, steps):
    count = points.shape[0]
    rays = local.shape[0]
    out = np.ones(count, np.float32)
    side = cells + 2
    for k in numba.prange(count):
        ox = (points[k, 0] + n[k, 0] * np.float32(AO_START) * cell_size - lo[0]) / cell_size + np.float32(1.0)
        oy = (points[k, 1] + n[k, 1] * np.float32(AO_START) * cell_size - lo[1]) / cell_size + np.float32(1.0)
        oz = (points[k, 2] + n[k, 2] * np.float32(AO_START) * cell_size - lo[2]) / cell_size + np.float32(1.0)
        blocked = 0
        for r in range(rays):
            dx = local[r, 0] * u[k, 0] + local[r, 1] * v[k, 0] + local[r, 2] * n[k, 0]
            dy = local[r, 0] * u[k, 1] + local[r, 1] * v[k, 1] + local[r, 2] * n[k, 1]
            dz = local[r, 0] * u[k, 2] + local[r, 1] * v[k, 2] + local[r, 2] * n[k, 2]
            for step in range(steps):
                t = np.float32(step + 0.5)
                ix = min(max(int(np.floor(ox + dx * t)), 0), cells + 1)
                iy = min(max(int(np.floor(oy + dy * t)), 0), cells + 1)
                iz = min(max(int(np.floor(oz + dz * t)), 0), cells + 1)
                if padded[(ix * side + iy) * side + iz]:
                    blocked += 1
                    break
        out[k] = np.float32(1.0) - np.float32(blocked) / np.float32(rays)
    return out


def _ambient_occlusion_torch(points, normals, occupancy, grid, rays, steps, chunk: int = 1 << 16):
    device = points.device
    cells = occupancy.shape[0]
    # One empty cell of padding on every side: samples outside the grid clamp into it and read "open".
    padded = F.pad(occupancy.to(torch.uint8), (1, 1, 1, 1, 1, 1)).view(-1).bool()
    stride = torch.tensor([(cells + 2) ** 2, cells + 2, 1], device=device)
    lo = torch.as_tensor(grid.lo, dtype=torch.float32, device=device)
    cell_size = float((grid.hi - grid.lo).max()) / cells
    local = hemisphere_directions(rays).to(device)
    out = torch.ones(points.shape[0], device=device)
    for start in range(0, points.shape[0], chunk):
        p = points[start:start + chunk]
        n, u, v = _ray_frames(p, normals[start:start + chunk], start)
        dirs = local[None, :, 0:1] * u[:, None] + local[None, :, 1:2] * v[:, None] + local[None, :, 2:3] * n[:, None]
        # In padded cell units: sample s of a ray sits at origin + (s + 0.5) * direction.
        origin = (p + n * (AO_START * cell_size) - lo) / cell_size + 1.0
        blocked = torch.zeros(p.shape[0], rays, dtype=torch.bool, device=device)
        for step in range(steps):
            q = torch.floor(origin[:, None] + dirs * (step + 0.5)).long().clamp_(0, cells + 1)
            blocked |= padded[(q * stride).sum(-1)]
        out[start:start + chunk] = 1.0 - blocked.float().mean(1)
    return out


def bake_occlusion_map(vertices, faces, uvs, normals, tangents, texture_size: int, occupancy: torch.Tensor,
                       grid: Grid, normal_coords=None, normal_field=None, device=None,
                       backend: str = "auto") -> torch.Tensor:
    """(S, S) ambient visibility in [0, 1], computed at ``min(S, AO_MAX_SIZE)`` and scaled up bilinearly.

    Rays leave along the full-resolution normal where ``normal_coords``/``normal_field`` are given (the detail the
    normal map shows), else along the low-poly normal.
    """
    size = int(texture_size)
    small = min(size, AO_MAX_SIZE)
    texels = surface_texels(vertices, faces, uvs, normals, tangents, small, device, backend)
    direction = texels.normal
    if normal_field is not None:
        direction, _ = detail_normals(texels, normal_coords, normal_field, grid, backend)
    visibility = ambient_occlusion(texels.points, direction, occupancy.to(texels.points.device), grid,
                                   backend=backend)
    dev = texels.points.device
    image = torch.ones(small * small, 1, device=dev)
    image[texels.covered, 0] = visibility
    valid = torch.zeros(small * small, dtype=torch.bool, device=dev)
    valid[texels.covered] = True
    filled = bake.fill_gutter(image.view(small, small, 1), valid.view(small, small))
    if small != size:
        filled = F.interpolate(filled.permute(2, 0, 1)[None], size=(size, size), mode="bilinear",
                               align_corners=False)[0].permute(1, 2, 0)
    return filled[..., 0].clamp(0, 1)


def flat_normal_map(texture_size: int, device=None) -> torch.Tensor:
    """(S, S, 3) the flat tangent-space normal (0.5, 0.5, 1)."""
    image = torch.full((int(texture_size), int(texture_size), 3), 0.5, device=device)
    image[..., 2] = 1.0
    return image

