"""Game-ready export: a triangle budget, levels of detail sharing one texture set, a baked tangent-space normal map
and ambient occlusion, an optional watertight surface, and a validity report.

``export_game`` takes what ``omnivox.ovoxel.export.to_glb`` takes plus a `GameProfile`, and returns a `GameAsset`;
``GameAsset.save(path)`` writes the GLB, runs the Khronos validator and writes the report beside it as
``<name>.report.json``. Steps:

1. **Surface.** The extracted surface is cleaned and decimated to ``profile.faces`` (``export.prepare_surface``:
   the same clean-up as ``to_glb``; where edge collapses stall above the budget, `cluster_to_budget` ends it), or,
   with ``profile.watertight``, rebuilt from the voxels' solid as a closed, manifold, outward surface
   (`omnivox.ovoxel.game_watertight`).
2. **Atlas** (``export.unwrap_atlas``, the voxel atlas) and **materials**: base colour, metallic, roughness and
   alpha looked up in the voxels at every texel, as ``to_glb`` does.
3. **Normal map** from the full-resolution surface (`omnivox.ovoxel.game_normals`), with glTF ``TANGENT``\\ s.
4. **Occlusion** ray-marched through the voxel occupancy, packed with roughness and metallic into one ORM image
   read by both ``metallicRoughnessTexture`` and ``occlusionTexture``.
5. **Levels of detail** (``profile.lods`` more): each asks for ``profile.lod_ratio`` of the previous level's faces
   from every UV chart, with the chart's outline fixed (so a level often keeps more); every level keeps level 0's
   atlas and shares its base-colour and ORM images, and gets its own normal map where it pays (its shading frames
   differ). They are written as ``MSFT_lod`` on one node (`omnivox.ovoxel.game_gltf`).

Axes: like ``to_glb``, Z-up data is written Y-up.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch

from omnivox.assets.frames import z_up_to_y_up
from omnivox.ovoxel import bake, game_normals, meshops
from omnivox.ovoxel.export import (ATTRIBUTE_LAYOUT, OPENING_AREA, UvMethod, _as_grid, _check_inputs, _check_options,
                                   prepare_surface, resolve_alpha_mode, unwrap_atlas, vertex_normals)
from omnivox.ovoxel.game_gltf import GltfPrimitive, encode_image, write_glb
from omnivox.ovoxel.game_report import GameReport, level_report, run_gltf_validator
from omnivox.ovoxel.game_watertight import closed_manifold_problems, watertight_surface
from omnivox.ovoxel.grid import AABB, UNIT_AABB, Grid

# The steps a game export reports through ``progress``.
GAME_STEPS = ("surface", "unwrap", "materials", "normal_map", "occlusion", "lods", "assemble")
MAX_LODS = 6
# A level gets a normal map only when it has at most this share of the full-resolution surface's faces: closer to
# the full surface the map has little detail to add, and its 8-bit, voxel-smoothed normals then cost more than they
# bring. Picked from docs/benchmarks/game_export.md (256^3, forced maps): every level at or under 0.3 of the full
# faces gained PSNR or held it within 0.02 dB; of the 13 levels above it 8 lost (3.6 dB at 0.76, 35 dB where the
# budget kept every face).
NORMAL_MAP_MAX_FACE_RATIO = 0.3
# A chart whose UVs are not an affine function of its 3-D points (residual above this many texels) keeps all its
# faces in coarser levels: its UVs could not follow moved vertices.
AFFINE_UV_TOLERANCE_TEXELS = 0.05


@dataclass(frozen=True)
class GameProfile:
    """What a game-ready export asks for.

    Attributes:
        faces: triangle budget of the finest level (level 0).
        lods: coarser levels after level 0 (0: none), each ``lod_ratio`` times the previous one's faces.
        watertight: rebuild the surface as a closed, manifold, outward solid (3-D printing, physics).
        normal_map: bake a tangent-space normal map from the full-resolution surface, on every level with at most
            ``NORMAL_MAP_MAX_FACE_RATIO`` of its faces (where the map has detail to add).
        occlusion: bake ambient occlusion into the ORM image's red channel.
        texture_size: side of the square textures.
        lod_ratio: face ratio between consecutive levels, in (0, 1).
    """

    faces: int = 20_000
    lods: int = 0
    watertight: bool = False
    normal_map: bool = True
    occlusion: bool = True
    texture_size: int = 2048
    lod_ratio: float = 0.5

    def __post_init__(self):
        if isinstance(self.faces, bool) or not isinstance(self.faces, (int, np.integer)) or self.faces < 16:
            raise ValueError(f"GameProfile.faces must be an int >= 16 (a triangle budget), got {self.faces!r}")
        lods = self.lods
        if isinstance(lods, bool) or not isinstance(lods, (int, np.integer)) or not 0 <= lods <= MAX_LODS:
            raise ValueError(f"GameProfile.lods must be an int in [0, {MAX_LODS}], got {self.lods!r}")
        for name in ("watertight", "normal_map", "occlusion"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GameProfile.{name} must be True or False, got {getattr(self, name)!r}")
        size = self.texture_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= 16384:
            raise ValueError(f"GameProfile.texture_size must be an int in [16, 16384], got {size!r}")
        if isinstance(self.lod_ratio, bool) or not isinstance(self.lod_ratio, (int, float)) or not (
                0 < self.lod_ratio < 1):
            raise ValueError(f"GameProfile.lod_ratio must be a number in (0, 1), got {self.lod_ratio!r}")


@dataclass
class GameLevel:
    """One level of detail (Z-up, world units).

    Attributes:
        vertices, faces: the welded surface (for topology checks).
        vmapping: (V',) int64 surface vertex of each file vertex; uv_faces (F, 3) into the file vertices.
        uvs: (V', 2) float32 glTF UVs; normals (V', 3) float32; tangents (V', 4) float32 (xyz, w).
        normal_map: (S, S, 3) uint8 or None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    vmapping: np.ndarray
    uv_faces: np.ndarray
    uvs: np.ndarray
    normals: np.ndarray
    tangents: np.ndarray
    normal_map: Optional[np.ndarray] = None

    def primitive(self) -> GltfPrimitive:
        positions = z_up_to_y_up(self.vertices[self.vmapping].astype(np.float32))
        normals = _unit32(z_up_to_y_up(self.normals))
        tangents = np.concatenate([_unit32(z_up_to_y_up(self.tangents[:, :3])), self.tangents[:, 3:]], axis=1)
        return GltfPrimitive(positions, normals, tangents, self.uvs.astype(np.float32),
                             self.uv_faces.astype(np.uint32))


@dataclass
class GameAsset:
    """The result of `export_game`: levels of detail, the shared images and the material settings.

    ``save(path)`` writes the GLB and its report; ``to_glb_bytes()`` gives the file's bytes.
    """

    levels: List[GameLevel]
    base_color: np.ndarray  # (S, S, 4) uint8: base colour RGB, alpha
    orm: np.ndarray  # (S, S, 3) uint8: occlusion, roughness, metallic
    alpha_mode: str
    alpha_cutoff: Optional[float]
    double_sided: bool
    profile: GameProfile
    image_format: str = "png"
    report: GameReport = field(default_factory=GameReport)

    def to_glb_bytes(self) -> bytes:
        levels = self.levels
        maps = [encode_image(level.normal_map, self.image_format) if level.normal_map is not None else None
                for level in levels]
        coverage = [0.5 / 4 ** k for k in range(len(levels) - 1)] + [0.0] if len(levels) > 1 else []
        return write_glb([level.primitive() for level in levels], encode_image(self.base_color, self.image_format),
                         encode_image(self.orm, self.image_format), maps, alpha_mode=self.alpha_mode,
                         alpha_cutoff=self.alpha_cutoff, double_sided=self.double_sided,
                         occlusion=self.profile.occlusion, screen_coverage=coverage, image_format=self.image_format)

    def to_scene(self):
        """The file as a ``trimesh.Scene`` (for viewers and the app)."""
        import trimesh

        return trimesh.load(io.BytesIO(self.to_glb_bytes()), file_type="glb")

    def save(self, path: Union[str, Path], report: bool = True, validator_folder=None) -> GameReport:
        """Write the GLB; unless ``report=False`` also run the Khronos validator on it and write
        ``<name>.report.json`` beside it. Returns the report."""
        path = Path(path)
        if path.suffix.lower() != ".glb":
            raise ValueError(f"{path}: the output file must end in .glb")
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        data = self.to_glb_bytes()
        path.write_bytes(data)
        self.report.timings["write"] = time.perf_counter() - start
        self.report.path, self.report.file_bytes = str(path), len(data)
        if report:
            start = time.perf_counter()
            self.report.validator = run_gltf_validator(path, validator_folder)
            self.report.timings["validate"] = time.perf_counter() - start
            report_path(path).write_text(self.report.to_json())
        return self.report


def report_path(glb_path: Union[str, Path]) -> Path:
    """Where ``GameAsset.save`` writes the report of ``glb_path``: ``<name>.report.json`` beside it."""
    glb_path = Path(glb_path)
    return glb_path.with_name(glb_path.stem + ".report.json")


def _unit32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    length = np.linalg.norm(x, axis=1, keepdims=True)
    fallback = np.zeros_like(x)
    fallback[:, 2] = 1.0
    return np.where(length > 1e-20, x / np.maximum(length, 1e-300), fallback).astype(np.float32)


def _to_bytes(values: torch.Tensor) -> np.ndarray:
    return torch.round(values.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()


# ------------------------------------------------------------------------------------------------ levels of detail


def _chart_affine_uv(points: np.ndarray, uvs: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares ``uv = [p, 1] @ A`` of one chart and its largest residual (UV units)."""
    design = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    matrix, *_ = np.linalg.lstsq(design, uvs, rcond=None)
    return matrix, float(np.abs(design @ matrix - uvs).max())


def _still_a_clean_sheet(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Whether a decimated chart is still manifold and consistently wound (collapses are not checked for it)."""
    problems = closed_manifold_problems(vertices, faces)
    return not (problems["non_manifold_edges"] or problems["non_manifold_vertices"] or problems["inconsistent_edges"]
                or problems["degenerate_faces"])


def coarser_level(level: GameLevel, face_chart: np.ndarray, target_faces: int, texture_size: int
                  ) -> tuple[GameLevel, np.ndarray]:
    """A level with about ``target_faces`` faces in ``level``'s UV atlas: each chart decimated to its share with its
    outline fixed, UVs from the chart's affine map (voxel-atlas charts are axis projections, so the map is exact).

    Returns the new level (normals and tangents computed, no normal map yet) and its face charts.
    """
    split_vertices = level.vertices[level.vmapping].astype(np.float64)
    order = np.argsort(face_chart, kind="stable")
    bounds = np.flatnonzero(np.diff(face_chart[order])) + 1
    ratio = target_faces / max(len(level.uv_faces), 1)
    out_points, out_uvs, out_faces, out_chart, offset = [], [], [], [], 0
    for chart_faces in np.split(order, bounds):
        v, f = meshops.compact(split_vertices, level.uv_faces[chart_faces])
        used = np.unique(level.uv_faces[chart_faces].reshape(-1))
        uv = level.uvs[used].astype(np.float64)
        share = max(1, int(round(len(f) * ratio)))
        if share < len(f) and len(f) > 2:
            matrix, residual = _chart_affine_uv(v, uv)
            if residual * texture_size <= AFFINE_UV_TOLERANCE_TEXELS:
                nv, nf = meshops.decimate(v, f, share, preserve_border=True)
                nv, nf = meshops.compact(nv, meshops.remove_degenerate_faces(nv, nf))
                if len(nf) and _still_a_clean_sheet(nv, nf):
                    v, f = nv, nf
                    uv = np.concatenate([v, np.ones((len(v), 1))], axis=1) @ matrix
        out_points.append(v)
        out_uvs.append(uv)
        out_faces.append(f + offset)
        out_chart.append(np.full(len(f), face_chart[chart_faces[0]]))
        offset += len(v)
    points = np.concatenate(out_points)
    uv_faces = np.concatenate(out_faces).astype(np.int64)
    uvs = np.clip(np.concatenate(out_uvs), 0.0, 1.0).astype(np.float32)
    # Chart outlines kept their exact positions, so seam copies weld back by position.
    welded, vmapping = np.unique(points.astype(np.float32), axis=0, return_inverse=True)
    vmapping = vmapping.reshape(-1).astype(np.int64)
    faces = vmapping[uv_faces]
    normals = vertex_normals(welded, faces)[vmapping]
    tangents = game_normals.vertex_tangents(welded[vmapping], uv_faces, uvs, normals)
    return GameLevel(welded, faces, vmapping, uv_faces, uvs, normals, tangents), np.concatenate(out_chart)


# ------------------------------------------------------------------------------------------------------ the budget


# Growth of the clustering cell per try in `cluster_to_budget` (small steps land close under the budget).
CLUSTER_GROWTH = 1.2


def cluster_to_budget(vertices: np.ndarray, faces: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``budget`` faces by vertex clustering, for surfaces edge collapses cannot bring under the budget.

    Quadric decimation refuses collapses that would fold the surface, and on some inputs (a triangle soup's voxel
    surface: many thin, touching sheets) it stalls well above the target. Clustering always ends under it: vertices
    are merged per cell of a grid whose cell grows by ``CLUSTER_GROWTH`` until the faces that keep three distinct
    clusters (duplicates removed) fit; each cluster sits at the mean of its vertices. Returns the input when it fits.
    """
    if len(faces) <= budget:
        return vertices, faces
    v = np.asarray(vertices, dtype=np.float64)
    lo = v.min(axis=0)
    extent = float(np.ptp(v, axis=0).max()) or 1.0
    cell = meshops.median_edge_length(vertices, faces) or extent / 1024
    while True:
        key = np.floor((v - lo) / cell).astype(np.int64)
        _, cluster = np.unique(key, axis=0, return_inverse=True)
        cluster = cluster.reshape(-1)
        merged = meshops.remove_duplicate_faces(meshops.remove_degenerate_faces(v, cluster[faces]))
        if len(merged) <= budget or cell > extent:
            count = np.bincount(cluster)
            centres = np.zeros((len(count), 3))
            np.add.at(centres, cluster, v)
            centres /= np.maximum(count, 1)[:, None]
            centres = centres.astype(np.float32)
            merged = meshops.remove_degenerate_faces(centres, merged)  # clusters that met at one point
            out_v, out_f = meshops.compact(centres, merged)
            out_f, _ = meshops.orient_faces(out_v, out_f)
            return out_v, out_f
        cell *= CLUSTER_GROWTH


# ---------------------------------------------------------------------------------------------------------- public


def export_game(vertices, faces, coords, attributes, grid: Union[Grid, int, Sequence[int]], *,
                profile: GameProfile = GameProfile(), aabb: AABB = UNIT_AABB, image_format: str = "png",
                alpha_mode: str = "auto", fill_holes: bool = True, hole_max_perimeter: float = 3e-2,
                min_component_area: float = 1e-5, device: Union[str, torch.device, None] = None,
                progress: Optional[Callable[[str, int, int], None]] = None, backend: str = "auto") -> GameAsset:
    """Export an extracted O-Voxel surface and its voxel materials for a game engine.

    Args:
        vertices, faces, coords, attributes, grid, aabb, image_format, alpha_mode, fill_holes, hole_max_perimeter,
            min_component_area: as for ``omnivox.ovoxel.export.to_glb`` (``vertices``/``faces``: the
            full-resolution extracted surface, which the normal map is baked from).
        profile: a `GameProfile` (budget, levels of detail, watertight, which maps, texture size).
        device: torch device for the atlas and every bake (default CPU).
        progress: ``progress("game_export", k, n)`` after each of the ``n`` steps of ``GAME_STEPS`` (k = 0 first).
        backend: for the rasteriser and voxel lookups: "auto", "numba" (CPU) or "torch" (any device).

    Returns:
        `GameAsset`; ``.save(path)`` writes the GLB and ``<name>.report.json``.

    Raises:
        ValueError: bad inputs or options (as ``to_glb``), or nothing left after clean-up.
    """
    if not isinstance(profile, GameProfile):
        raise TypeError(f"profile must be a GameProfile, got {type(profile).__name__}")
    grid = _as_grid(grid, aabb)
    size = int(profile.texture_size)
    _check_options(profile.faces, size, image_format, alpha_mode, hole_max_perimeter, min_component_area)
    v, f, c, a = _check_inputs(vertices, faces, coords, attributes, grid)
    full_faces = len(f)
    device = torch.device(device) if device is not None else torch.device("cpu")
    report = GameReport(profile=asdict(profile), alpha_mode="OPAQUE")
    timings = report.timings
    clock = [time.perf_counter()]

    def done(step: str) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        timings[step] = now - clock[0]
        clock[0] = now
        if progress is not None:
            progress("game_export", GAME_STEPS.index(step) + 1, len(GAME_STEPS))

    if progress is not None:
        progress("game_export", 0, len(GAME_STEPS))

    # 1. The surface of level 0.
    voxel_face = float(np.min(grid.voxel_size)) ** 2
    if profile.watertight:
        low_v, low_f, report.profile["watertight_grid"] = watertight_surface(c, grid, int(profile.faces))
        double_sided = False
    else:
        low_v, low_f, _, _ = prepare_surface(v, f, fill_holes, hole_max_perimeter, min_component_area,
                                             int(profile.faces), device=device)
        low_v, low_f = cluster_to_budget(low_v, low_f, int(profile.faces))
        double_sided = bool((meshops.opening_areas(low_v, low_f) >= OPENING_AREA * voxel_face).any())
    done("surface")

    # 2. Atlas and materials.
    atlas = unwrap_atlas(low_v, low_f, size, method=UvMethod.VOXEL, device=device)
    normals = vertex_normals(low_v, low_f)[atlas.vmapping]
    tangents = game_normals.vertex_tangents(low_v[atlas.vmapping], atlas.faces, atlas.uvs, normals)
    level0 = GameLevel(low_v, low_f, atlas.vmapping, atlas.faces, atlas.uvs, normals, tangents)
    done("unwrap")
    texels = game_normals.surface_texels(low_v[atlas.vmapping], atlas.faces, atlas.uvs, normals, tangents, size,
                                         device, backend)
    values, found = bake.sample_sparse_trilinear(torch.from_numpy(c), torch.from_numpy(a), grid, texels.points,
                                                 backend=backend)
    image = torch.zeros(size * size, a.shape[1], device=device)
    image[texels.covered] = values.to(device)
    valid = torch.zeros(size * size, dtype=torch.bool, device=device)
    valid[texels.covered] = found.to(device)
    material = bake.fill_gutter(image.view(size, size, -1), valid.view(size, size))
    report.alpha_mode, report.alpha_cutoff = resolve_alpha_mode(alpha_mode, a[:, ATTRIBUTE_LAYOUT["alpha"]])
    done("materials")

    # 3. Normal map from the full-resolution surface.
    field_coords = field_normals = None
    if profile.normal_map or profile.occlusion:
        if not meshops.consistently_wound(f):
            f, _ = meshops.orient_faces(v, f)
        field_coords, field_normals = game_normals.voxel_normals(v, f, grid)
    def pays(level_faces: int) -> bool:
        return profile.normal_map and level_faces <= NORMAL_MAP_MAX_FACE_RATIO * full_faces

    if pays(len(low_f)):
        normal_image, report.normal_map_coverage = game_normals.bake_normal_map(texels, field_coords, field_normals,
                                                                                grid, backend)
        level0.normal_map = _to_bytes(normal_image)
    done("normal_map")

    # 4. Occlusion, packed as ORM.
    if profile.occlusion:
        occupancy = game_normals.occupancy_grid(c, int(grid.resolution.max()), device=device)
        visibility = game_normals.bake_occlusion_map(low_v[atlas.vmapping], atlas.faces, atlas.uvs, normals,
                                                     tangents, size, occupancy, grid, field_coords, field_normals,
                                                     device, backend)
    else:
        visibility = torch.ones(size, size, device=device)
    orm = torch.stack([visibility.to(device), material[..., ATTRIBUTE_LAYOUT["roughness"]][..., 0],
                       material[..., ATTRIBUTE_LAYOUT["metallic"]][..., 0]], dim=-1)
    done("occlusion")

    # 5. Coarser levels in the same atlas, each with its own normal map.
    levels, chart = [level0], atlas.face_chart
    for _ in range(int(profile.lods)):
        target = max(16, int(len(levels[-1].uv_faces) * profile.lod_ratio))
        level, chart = coarser_level(levels[-1], chart, target, size)
        if pays(len(level.uv_faces)):
            level_texels = game_normals.surface_texels(level.vertices[level.vmapping], level.uv_faces, level.uvs,
                                                       level.normals, level.tangents, size, device, backend)
            level_map, _ = game_normals.bake_normal_map(level_texels, field_coords, field_normals, grid, backend)
            level.normal_map = _to_bytes(level_map)
        levels.append(level)
    done("lods")

    rgba = torch.cat([material[..., ATTRIBUTE_LAYOUT["base_color"]], material[..., ATTRIBUTE_LAYOUT["alpha"]]], -1)
    asset = GameAsset(levels=levels, base_color=_to_bytes(rgba), orm=_to_bytes(orm), alpha_mode=report.alpha_mode,
                      alpha_cutoff=report.alpha_cutoff, double_sided=double_sided, profile=profile,
                      image_format=image_format, report=report)
    report.double_sided = double_sided
    report.levels = [level_report(level.vertices, level.faces, len(level.vmapping), level.uvs, level.uv_faces, size)
                     for level in levels]
    report.textures = {"base_color": [size, size], "orm": [size, size]}
    report.normal_maps = [level.normal_map is not None for level in levels]
    report.textures.update({f"normal_lod{k}": [size, size] for k, level in enumerate(levels)
                            if level.normal_map is not None})
    done("assemble")
    return asset
