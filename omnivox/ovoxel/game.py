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
5. **Levels of detail** (``profile.lods`` more), each about ``profile.lod_ratio`` of the previous level's faces.
   A level first tries to keep the previous level's atlas and images: every UV chart is decimated to its share with
   its outline fixed (`coarser_level`). Chart outlines hold a large share of the vertices on voxel atlases, so that
   often keeps 60-95 % of the faces; a level that stays above ``LOD_SLACK`` times its target is instead decimated
   from level 0's surface (rebuilt from the solid where a watertight decimation breaks), unwrapped and baked into a
   texture set of its own, ``texture_size / 2^(k-1)`` on a side for level k (`lod_texture_size`).
   Every level gets its own normal map where it pays (its shading frames differ). They are written as ``MSFT_lod``
   on one node (`omnivox.ovoxel.game_gltf`).

Axes: like ``to_glb``, Z-up data is written Y-up.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field, replace
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
# A coarser level may end this many times above its target (``lod_ratio`` of the previous level's faces): 1.2 at
# the default ratio 0.5 means at most 0.6 of the previous level. A level that keeps the previous atlas but stays
# above it is rebuilt with an atlas and textures of its own.
LOD_SLACK = 1.2
# Smallest side of a coarser level's own texture set (`lod_texture_size`).
MIN_LOD_TEXTURE = 64


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
        normal_map: (S, S, 3) uint8 or None, S the side of its texture set.
        texture_set: index of the `TextureSet` (base colour, ORM) in ``GameAsset.texture_sets`` its UVs address.
    """

    vertices: np.ndarray
    faces: np.ndarray
    vmapping: np.ndarray
    uv_faces: np.ndarray
    uvs: np.ndarray
    normals: np.ndarray
    tangents: np.ndarray
    normal_map: Optional[np.ndarray] = None
    texture_set: int = 0

    def primitive(self) -> GltfPrimitive:
        positions = z_up_to_y_up(self.vertices[self.vmapping].astype(np.float32))
        normals = _unit32(z_up_to_y_up(self.normals))
        tangents = np.concatenate([_unit32(z_up_to_y_up(self.tangents[:, :3])), self.tangents[:, 3:]], axis=1)
        return GltfPrimitive(positions, normals, tangents, self.uvs.astype(np.float32),
                             self.uv_faces.astype(np.uint32))


@dataclass
class TextureSet:
    """The material images one or more levels read through their UVs."""

    base_color: np.ndarray  # (S, S, 4) uint8: base colour RGB, alpha
    orm: np.ndarray  # (S, S, 3) uint8: occlusion, roughness, metallic

    @property
    def size(self) -> int:
        return int(self.base_color.shape[0])


@dataclass
class GameAsset:
    """The result of `export_game`: levels of detail, their texture sets and the material settings.

    ``texture_sets[0]`` is level 0's (``base_color`` and ``orm`` name its images); coarser levels share it or,
    where sharing would not let them shrink, have their own (``GameLevel.texture_set``).
    ``save(path)`` writes the GLB and its report; ``to_glb_bytes()`` gives the file's bytes.
    """

    levels: List[GameLevel]
    texture_sets: List[TextureSet]
    alpha_mode: str
    alpha_cutoff: Optional[float]
    double_sided: bool
    profile: GameProfile
    image_format: str = "png"
    report: GameReport = field(default_factory=GameReport)

    @property
    def base_color(self) -> np.ndarray:
        """Level 0's base colour and alpha image, (S, S, 4) uint8."""
        return self.texture_sets[0].base_color

    @property
    def orm(self) -> np.ndarray:
        """Level 0's occlusion-roughness-metallic image, (S, S, 3) uint8."""
        return self.texture_sets[0].orm

    def transformed(self, scale: float, offset=(0.0, 0.0, 0.0), turn=None) -> "GameAsset":
        """A copy with every level moved by ``p -> scale * turn @ p + offset`` (Z-up, as the levels are).

        ``turn`` is a proper rotation (3x3, default none) and ``scale`` > 0 a uniform scale, so UVs, the texture
        sets and the tangent-space normal maps stay valid as they are; normals and tangents turn with the points.
        The report's levels are measured again (texel density is per world unit). `TexturingPipeline` uses it to
        give the user's mesh back in the user's own units and frame.
        """
        turn = np.eye(3) if turn is None else np.asarray(turn, dtype=np.float64)
        offset = np.asarray(offset, dtype=np.float64)
        if turn.shape != (3, 3) or not np.allclose(turn @ turn.T, np.eye(3), atol=1e-9) or np.linalg.det(turn) < 0:
            raise ValueError(f"turn must be a 3x3 proper rotation matrix, got {turn.tolist()}")
        if isinstance(scale, bool) or not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        if offset.shape != (3,) or not np.all(np.isfinite(offset)):
            raise ValueError(f"offset must be 3 finite numbers, got {offset.tolist()}")
        levels = []
        for level in self.levels:
            points = (level.vertices.astype(np.float64) @ turn.T * float(scale) + offset).astype(np.float32)
            tangents = np.concatenate([_unit32(level.tangents[:, :3] @ turn.T), level.tangents[:, 3:]], axis=1)
            levels.append(replace(level, vertices=points, normals=_unit32(level.normals @ turn.T),
                                  tangents=tangents.astype(np.float32)))
        report = replace(self.report, timings=dict(self.report.timings))
        sides = [self.texture_sets[level.texture_set].size for level in levels]
        report.levels = [level_report(level.vertices, level.faces, len(level.vmapping), level.uvs, level.uv_faces,
                                      side) for level, side in zip(levels, sides)]
        return replace(self, levels=levels, report=report)

    def to_glb_bytes(self) -> bytes:
        levels, image_format = self.levels, self.image_format
        maps = [encode_image(level.normal_map, image_format) if level.normal_map is not None else None
                for level in levels]
        sets = [(encode_image(textures.base_color, image_format), encode_image(textures.orm, image_format))
                for textures in self.texture_sets]
        coverage = [0.5 / 4 ** k for k in range(len(levels) - 1)] + [0.0] if len(levels) > 1 else []
        return write_glb([level.primitive() for level in levels], sets, maps,
                         level_texture_sets=[level.texture_set for level in levels], alpha_mode=self.alpha_mode,
                         alpha_cutoff=self.alpha_cutoff, double_sided=self.double_sided,
                         occlusion=self.profile.occlusion, screen_coverage=coverage, image_format=image_format)

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


# --------------------------------------------------------------------------------------------- per-level bakes


def lod_texture_size(texture_size: int, level: int) -> int:
    """Side of the own texture set of level ``level`` >= 1: ``texture_size / 2^(level - 1)``, at least
    ``MIN_LOD_TEXTURE`` (never above ``texture_size``).

    The file's ``MSFT_screencoverage`` draws level 0 above 0.5 of the screen's area and level k at most at
    ``0.5 / 4^(k-1)`` of it, so level k is at most ``1 / 2^(k-1)`` of level 0's smallest size on screen: with a side
    of ``texture_size / 2^(k-1)`` its texels are never sparser on screen than level 0's at their sparsest (half that
    side, the plain mip-chain guess, would make them up to 2x sparser where level k takes over).
    """
    return min(int(texture_size), max(MIN_LOD_TEXTURE, int(texture_size) >> (int(level) - 1)))


def _unwrapped_level(vertices: np.ndarray, faces: np.ndarray, size: int, device) -> tuple[GameLevel, np.ndarray]:
    """A level on its own voxel atlas (normals, tangents; no normal map yet) and the chart of each face."""
    atlas = unwrap_atlas(vertices, faces, size, method=UvMethod.VOXEL, device=device)
    normals = vertex_normals(vertices, faces)[atlas.vmapping]
    tangents = game_normals.vertex_tangents(vertices[atlas.vmapping], atlas.faces, atlas.uvs, normals)
    return GameLevel(vertices, faces, atlas.vmapping, atlas.faces, atlas.uvs, normals, tangents), atlas.face_chart


def _level_texels(level: GameLevel, size: int, device, backend: str) -> game_normals.SurfaceTexels:
    return game_normals.surface_texels(level.vertices[level.vmapping], level.uv_faces, level.uvs, level.normals,
                                       level.tangents, size, device, backend)


def _voxel_materials(texels, coords: np.ndarray, attributes: np.ndarray, grid: Grid, size: int, device,
                     backend: str) -> torch.Tensor:
    """(S, S, C) the voxels' attributes at every covered texel's surface point, the gutter filled from them."""
    values, found = bake.sample_sparse_trilinear(torch.from_numpy(coords), torch.from_numpy(attributes), grid,
                                                 texels.points, backend=backend)
    image = torch.zeros(size * size, attributes.shape[1], device=device)
    image[texels.covered] = values.to(device)
    valid = torch.zeros(size * size, dtype=torch.bool, device=device)
    valid[texels.covered] = found.to(device)
    return bake.fill_gutter(image.view(size, size, -1), valid.view(size, size))


def _texture_set(material: torch.Tensor, visibility: torch.Tensor) -> TextureSet:
    rgba = torch.cat([material[..., ATTRIBUTE_LAYOUT["base_color"]], material[..., ATTRIBUTE_LAYOUT["alpha"]]], -1)
    orm = torch.stack([visibility.to(material.device), material[..., ATTRIBUTE_LAYOUT["roughness"]][..., 0],
                       material[..., ATTRIBUTE_LAYOUT["metallic"]][..., 0]], dim=-1)
    return TextureSet(_to_bytes(rgba), _to_bytes(orm))


def _closed(vertices: np.ndarray, faces: np.ndarray) -> bool:
    return len(faces) > 0 and not any(closed_manifold_problems(vertices, faces).values())


def _lod_surface(level0: GameLevel, target: int, watertight: bool, coords: np.ndarray, grid: Grid
                 ) -> tuple[np.ndarray, np.ndarray]:
    """About ``target`` faces of level 0's surface for a level with its own atlas: quadric decimation (from level
    0, so errors do not pile up level after level). A watertight level whose decimation opened or pinched the
    surface, or stalled above ``LOD_SLACK`` times the target, is rebuilt from the voxels' solid instead; any other
    decimation that stalls there is finished by vertex clustering (`cluster_to_budget`)."""
    v, f = meshops.decimate(level0.vertices, level0.faces, target)
    v, f = meshops.compact(v, meshops.remove_degenerate_faces(v, f))
    if watertight:
        if len(f) > LOD_SLACK * target or not _closed(v, f):
            v, f, _ = watertight_surface(coords, grid, target)
        return v, f
    return cluster_to_budget(v, f, int(LOD_SLACK * target))


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
        # Hole filling fans a loop around its centroid; on a user's mesh a loop can be flat (a slit along collinear
        # vertices) and its fan has no area, which no atlas can lay out.
        low_v, low_f = meshops.compact(low_v, meshops.remove_degenerate_faces(low_v, low_f))
        double_sided = bool((meshops.opening_areas(low_v, low_f) >= OPENING_AREA * voxel_face).any())
    done("surface")

    # 2. Atlas and materials.
    level0, face_chart = _unwrapped_level(low_v, low_f, size, device)
    done("unwrap")
    texels = _level_texels(level0, size, device, backend)
    material = _voxel_materials(texels, c, a, grid, size, device, backend)
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
    occupancy = None
    if profile.occlusion:
        occupancy = game_normals.occupancy_grid(c, int(grid.resolution.max()), device=device)

    def occlusion_of(level: GameLevel, side: int) -> torch.Tensor:
        if occupancy is None:
            return torch.ones(side, side, device=device)
        return game_normals.bake_occlusion_map(level.vertices[level.vmapping], level.uv_faces, level.uvs,
                                               level.normals, level.tangents, side, occupancy, grid, field_coords,
                                               field_normals, device, backend)

    texture_sets = [_texture_set(material, occlusion_of(level0, size))]
    done("occlusion")

    # 5. Coarser levels: in the previous level's atlas where that halves them, else in an atlas of their own.
    levels, charts = [level0], [face_chart]
    for k in range(1, int(profile.lods) + 1):
        previous = levels[-1]
        target = max(16, int(len(previous.uv_faces) * profile.lod_ratio))
        side = texture_sets[previous.texture_set].size
        level, chart = coarser_level(previous, charts[-1], target, side)
        level.texture_set = previous.texture_set
        level_texels = None
        if len(level.uv_faces) > LOD_SLACK * target:
            side = lod_texture_size(size, k)
            lod_v, lod_f = _lod_surface(level0, target, profile.watertight, c, grid)
            level, chart = _unwrapped_level(lod_v, lod_f, side, device)
            level_texels = _level_texels(level, side, device, backend)
            level_material = _voxel_materials(level_texels, c, a, grid, side, device, backend)
            level.texture_set = len(texture_sets)
            texture_sets.append(_texture_set(level_material, occlusion_of(level, side)))
        if pays(len(level.uv_faces)):
            if level_texels is None:
                level_texels = _level_texels(level, side, device, backend)
            level_map, _ = game_normals.bake_normal_map(level_texels, field_coords, field_normals, grid, backend)
            level.normal_map = _to_bytes(level_map)
        levels.append(level)
        charts.append(chart)
    done("lods")

    asset = GameAsset(levels=levels, texture_sets=texture_sets, alpha_mode=report.alpha_mode,
                      alpha_cutoff=report.alpha_cutoff, double_sided=double_sided, profile=profile,
                      image_format=image_format, report=report)
    report.double_sided = double_sided
    sides = [texture_sets[level.texture_set].size for level in levels]
    report.levels = [level_report(level.vertices, level.faces, len(level.vmapping), level.uvs, level.uv_faces, side)
                     for level, side in zip(levels, sides)]
    report.textures = {}
    for index, textures in enumerate(texture_sets):
        suffix = f"_{index}" if index else ""
        report.textures.update({f"base_color{suffix}": [textures.size] * 2, f"orm{suffix}": [textures.size] * 2})
    report.level_texture_sets = [level.texture_set for level in levels]
    report.normal_maps = [level.normal_map is not None for level in levels]
    report.textures.update({f"normal_lod{k}": [side, side] for k, (level, side) in enumerate(zip(levels, sides))
                            if level.normal_map is not None})
    done("assemble")
    return asset
