"""Bake O-Voxel materials into the UV layout of a given mesh (texturing an existing mesh, e.g. issue #7).

``bake_to_uv_layout`` keeps the caller's vertices, faces and UVs and only makes textures: every texel that a
triangle covers in UV space looks up its 3-D point in the sparse attribute volume (``bake.sample_sparse_trilinear``,
only active voxels), the rest of the texture is gutter-filled so that bilinear filtering and mip-maps do not bleed,
and the result is the same kind of PBR mesh as ``to_glb`` returns, ready for ``save_glb``.

Decisions:

* **UV convention.** UVs have their origin at the bottom-left of the image, ``v`` growing upwards: the convention
  of ``trimesh.visual.uv`` and of ``omnivox.assets`` scenes (``Scene.uvs``, which the voxelizer reads with
  ``row = (1 - v) * height``). The glTF file stores ``1 - v``, as trimesh writes it; UVs taken straight from a
  glTF accessor must be passed as ``(u, 1 - v)``.
* **UVs outside [0, 1]** are wrapped the way glTF's default sampler (REPEAT) reads them: each triangle is moved by
  whole units to start inside the unit square, and a triangle that still crosses ``u = 1`` or ``v = 1`` is baked
  once more shifted back by one unit, so both halves land on their texels. The output keeps the caller's UVs
  unchanged, so the file reads the texture exactly there. A layout where two surface points share a texel (UV
  islands that overlap, mirrored halves, triangles spanning more than one repeat) cannot hold two colours: such a
  texel takes one of them.
* **Texels whose point has no active voxel** within ``fallback_radius`` voxels (a mesh that strays from the
  O-Voxel surface) are filled like the gutter, from their neighbours; ``BakeReport.uncovered_texels`` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch

from omnivox.ovoxel import bake
from omnivox.ovoxel.grid import AABB, UNIT_AABB, Grid

if TYPE_CHECKING:
    import trimesh

# Largest UV coordinate magnitude accepted: beyond it float32 UVs lose texel precision at 16k textures.
MAX_UV = 1e4


@dataclass
class BakeReport:
    """What ``bake_to_uv_layout`` did.

    Attributes:
        texture_size: side of the square textures.
        covered_texels: texels inside the UV triangles.
        uncovered_texels: covered texels whose point had no active voxel within reach (filled like gutter).
        alpha_mode, alpha_cutoff: the material's alphaMode and (for MASK) alphaCutoff.
    """

    texture_size: int = 0
    covered_texels: int = 0
    uncovered_texels: int = 0
    alpha_mode: str = "OPAQUE"
    alpha_cutoff: Optional[float] = None


def _check_uvs(uvs, num_vertices: int) -> np.ndarray:
    u = uvs.detach().cpu().numpy() if isinstance(uvs, torch.Tensor) else np.asarray(uvs)
    if u.ndim != 2 or u.shape != (num_vertices, 2) or not np.issubdtype(u.dtype, np.number):
        raise ValueError(f"uvs must be a numeric ({num_vertices}, 2) array, one (u, v) per vertex; got shape "
                         f"{u.shape} dtype {u.dtype}")
    u = u.astype(np.float64)
    if not np.isfinite(u).all():
        raise ValueError("uvs contain NaN or infinite values")
    if np.abs(u).max() > MAX_UV:
        raise ValueError(f"uvs must lie within +-{MAX_UV:g}, found magnitude {np.abs(u).max():.4g}")
    return u


def wrapped_uv_triangles(uvs: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-corner UVs of every triangle moved into the unit square by whole units (REPEAT), plus wrapped copies.

    Args:
        uvs: (V, 2) float64 UVs with row 0 of the image at v = 0, any range.
        faces: (F, 3) int64.

    Returns:
        corner_uvs: (F', 3, 2) float64, each triangle starting inside [0, 1); triangles crossing ``u = 1`` or
            ``v = 1`` appear again shifted by -1 along that axis (and along both when they cross both).
        face_of: (F',) int64, the input face of each entry.
    """
    corners = uvs[faces]  # (F, 3, 2)
    corners = corners - np.floor(corners.min(axis=1, keepdims=True))
    copies, owners = [corners], [np.arange(len(faces))]
    crosses = corners.max(axis=1) > 1.0  # (F, 2)
    for shift in ([-1.0, 0.0], [0.0, -1.0], [-1.0, -1.0]):
        needed = np.all(crosses | (np.asarray(shift) == 0), axis=1)
        if needed.any():
            copies.append(corners[needed] + np.asarray(shift))
            owners.append(np.nonzero(needed)[0])
    return np.concatenate(copies), np.concatenate(owners)


def bake_to_uv_layout(vertices, faces, uvs, coords, attributes, grid: Union[Grid, int, Sequence[int]], *,
                      texture_size: int = 1024, aabb: AABB = UNIT_AABB, image_format: str = "png",
                      alpha_mode: str = "auto", double_sided: bool = False, fallback_radius: int = 2,
                      device: Union[str, torch.device, None] = None, report: Optional[BakeReport] = None
                      ) -> "trimesh.Trimesh":
    """Bake base colour, metallic-roughness and alpha from voxel attributes into a mesh's own UV layout.

    Args:
        vertices: (V, 3) float, world units, Z-up, in the frame of ``grid`` (e.g. a scene after ``normalized()``).
        faces: (F, 3) int triangles.
        uvs: (V, 2) float per-vertex UVs, origin bottom-left like trimesh (module docstring); values outside
            [0, 1] wrap.
        coords: (N, 3) int voxel indices of the active voxels (unique).
        attributes: (N, 6) float in [0, 1] (or uint8): base_color 0:3, metallic 3:4, roughness 4:5, alpha 5:6.
        grid: an ``omnivox.ovoxel.grid.Grid``, or a resolution (int or 3 ints) used with ``aabb``.
        texture_size: side of the square textures, 16 to 16384.
        aabb: box of the grid when ``grid`` is a resolution.
        image_format: "png" or "webp" (written by ``save_glb``).
        alpha_mode: "auto" (``export.choose_alpha_mode`` on the voxel alphas) or a glTF alphaMode to force.
        double_sided: the material's doubleSided flag (the caller knows whether its mesh is closed).
        fallback_radius: voxels searched for the nearest active voxel where the trilinear stencil finds none.
        device: torch device for rasterisation, lookup and gutter filling (default CPU).
        report: optional ``BakeReport`` filled in place.

    Returns:
        ``trimesh.Trimesh`` in glTF's Y-up frame with the caller's faces, vertices (mapped to Y-up) and UVs, unit
        vertex normals and a ``PBRMaterial`` with baseColorTexture RGBA and metallicRoughnessTexture RGB.

    Raises:
        ValueError: bad shapes, dtypes, ranges, indices or options.
    """
    # Imported here: ``export`` offers this function too and imports this module at its end.
    from omnivox.ovoxel.export import (
        ATTRIBUTE_LAYOUT,
        _as_grid,
        _check_inputs,
        check_texture_options,
        resolve_alpha_mode,
        textured_mesh,
        vertex_normals,
    )

    grid = _as_grid(grid, aabb)
    check_texture_options(texture_size, image_format, alpha_mode)
    if not isinstance(fallback_radius, (int, np.integer)) or not 0 <= fallback_radius <= 8:
        raise ValueError(f"fallback_radius must be an int in [0, 8], got {fallback_radius!r}")
    v, f, c, a = _check_inputs(vertices, faces, coords, attributes, grid)
    uv = _check_uvs(uvs, len(v))
    report = BakeReport() if report is None else report
    size = report.texture_size = int(texture_size)
    device = torch.device(device) if device is not None else torch.device("cpu")

    image_uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)  # rows from the top, as the texels are stored
    corner_uvs, face_of = wrapped_uv_triangles(image_uv, f)
    flat_faces = torch.arange(3 * len(face_of), device=device).view(-1, 3)
    positions, mask = bake.rasterize_uv(torch.from_numpy(corner_uvs.reshape(-1, 2)).to(device), flat_faces,
                                        torch.from_numpy(v[f[face_of]].reshape(-1, 3)).to(device), size)
    covered = torch.nonzero(mask.view(-1)).squeeze(1)
    values, found = bake.sample_sparse_trilinear(torch.from_numpy(c), torch.from_numpy(a), grid,
                                                 positions.view(-1, 3)[covered], fallback_radius=fallback_radius)
    texels = torch.zeros(size * size, a.shape[1], dtype=torch.float32, device=device)
    texels[covered] = values.to(device)
    valid = torch.zeros(size * size, dtype=torch.bool, device=device)
    valid[covered] = found.to(device)
    report.covered_texels = int(covered.numel())
    report.uncovered_texels = int((~found).sum())
    filled = bake.fill_gutter(texels.view(size, size, -1), valid.view(size, size))

    report.alpha_mode, report.alpha_cutoff = resolve_alpha_mode(alpha_mode, a[:, ATTRIBUTE_LAYOUT["alpha"]])
    return textured_mesh(v, f, image_uv.astype(np.float32), vertex_normals(v, f), filled, alpha_mode=report.alpha_mode,
                         alpha_cutoff=report.alpha_cutoff, double_sided=bool(double_sided), image_format=image_format)
