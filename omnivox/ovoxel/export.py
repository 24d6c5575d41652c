"""O-Voxel -> textured GLB: mesh clean-up, UV unwrap, texture baking from the sparse voxel attributes, glTF PBR.

``to_glb`` follows spec ovoxel.md section 7 with ``remesh=False`` and these deliberate differences:

* **No remeshing and no hidden inner shell.** The reference's narrow-band remesh (quirk 14) builds the surface from
  an unsigned distance and keeps an invisible inner offset shell in every closed part; here the extracted surface is
  cleaned and decimated directly, so every exported face is visible geometry.
* **Outward winding.** Thin fringes that the dual grid leaves next to non-manifold edges are dropped where that
  closes a part (``meshops.remove_fringes``, ``_kept_after_fringes``); orientation is made consistent through manifold edges, balanced across non-manifold
  ones, each closed component gets positive signed volume and closed components nested inside an odd number of
  others face inwards (a cavity's wall faces into the cavity; ``meshops.orient_faces``). Open parts keep a
  consistent but heuristic side, and the material is then marked double-sided. Openings one cannot see through
  (area below half a voxel face, ``OPENING_AREA``: zero-width slits left next to non-manifold edges) do not count,
  so a closed, well-formed shape is single-sided.
* **alphaMode** is chosen from the voxel alphas instead of always ``OPAQUE`` (see ``choose_alpha_mode``).
* **Rounding.** Texture bytes are ``round(x * 255)`` rather than the reference's truncation, so a volume made of
  ``byte / 255`` values bakes back to the same bytes.
* **Texel lookup on the exported surface.** Each texel's 3-D point (on the cleaned, possibly decimated mesh) is
  looked up directly in the voxel volume; where decimation moved it off the voxel band, the nearest active voxel
  within 2 voxels is used, and texels with none are filled like the gutter. The reference first projects onto the
  undecimated surface with a BVH, which needs a compiled library.

Axes: O-Voxel data is Z-up (Blender); glTF is Y-up, so positions and normals are mapped ``(x, y, z) -> (x, z, -y)``
(a rotation, so the winding is unchanged).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np
import torch

from omnivox.assets.frames import z_up_to_y_up  # noqa: F401  (also re-exported: export.z_up_to_y_up)
from omnivox.ovoxel import bake, collapse, meshops, meshops_torch
from omnivox.ovoxel.atlas import Atlas, default_padding, describe_atlas, voxel_atlas
from omnivox.ovoxel.forked import call_in_fork, fork_available
from omnivox.ovoxel.grid import AABB, UNIT_AABB, Grid
from omnivox.ovoxel.packing import PBR_SLICES

if TYPE_CHECKING:
    import trimesh

    from omnivox.ovoxel.game import GameProfile

logger = logging.getLogger(__name__)

ATTRIBUTE_LAYOUT = PBR_SLICES  # the attribute matrix columns (one owner: `packing`)
IMAGE_FORMATS = ("png", "webp")
ALPHA_MODES = ("auto", "OPAQUE", "MASK", "BLEND")

# alphaMode rule (see choose_alpha_mode): voxels at or above OPAQUE_ALPHA count as opaque, at or below CLEAR_ALPHA
# as fully transparent; MASK needs at most PARTIAL_FRACTION of the non-opaque voxels to be in between.
OPAQUE_ALPHA = 0.95
CLEAR_ALPHA = 0.05
PARTIAL_FRACTION = 0.2
MASK_CUTOFF = 0.5
# Default face budget of an exported mesh: enough for any viewer and engine import (the reference app's 500k made
# GLBs of tens of MB from small objects), and the surface tolerance below usually ends far under it.
DEFAULT_FACE_BUDGET = 200_000
# Default surface tolerance, in voxels: after the budget, faces are halved while 99.9% of the surface stays within
# half a voxel of the budget's surface (`meshops.decimate_within`), so a file holds what the surface needs. Half a
# voxel is below what the voxel grid itself resolves.
DEFAULT_SURFACE_TOLERANCE = 0.5
# The steps an export reports through ``progress`` (their seconds land in ``ExportReport.timings`` too).
EXPORT_STEPS = ("surface", "unwrap", "rasterize", "lookup", "fill", "assemble")
# Surface clean-up in voxels (the median edge of the extracted surface): fringe strips narrower than FRINGE_WIDTH at
# non-manifold edges are dropped; holes with a shorter perimeter than PIN_HOLE_PERIMETER are always filled.
FRINGE_WIDTH = 1.5
PIN_HOLE_PERIMETER = 8.0
# Openings with a smaller area (in voxel faces) are slits or pin-holes nobody sees through: still single-sided.
OPENING_AREA = 0.5
# No UV chart may cover more than this fraction of the surface (xatlas speed, see _xatlas_unwrap).
MAX_CHART_AREA_DIVISOR = 256.0


class UvMethod(enum.Enum):
    """How ``unwrap_uv`` lays out the texture atlas (values are the command line's ``--uv`` words)."""

    VOXEL = "voxel"  # omnivox.ovoxel.atlas.voxel_atlas: axis-projected charts, shelf-packed; bounded time, any device
    XATLAS = "xatlas"  # xatlas in a forked child (CPU), falling back to triangle_atlas on a crash or timeout


@dataclass
class ExportReport:
    """What ``bake_glb`` did, for logs and benchmarks.

    Attributes:
        input_faces: faces handed in.
        faces, vertices: counts in the returned mesh (vertices include UV-seam duplicates).
        holes_filled: boundary loops closed by hole filling.
        texture_size: side of the square textures.
        alpha_mode, alpha_cutoff: the material's alphaMode and (for MASK) alphaCutoff.
        double_sided: True when an opening of at least ``OPENING_AREA`` voxel faces remains.
        uncovered_texels: texels inside the UV charts whose point had no active voxel within reach (filled like gutter).
        uv_method: the ``UvMethod`` that made the atlas.
        uv_charts: charts in the atlas (groups of faces connected through shared UV vertices).
        uv_utilisation: fraction of the texture covered by UV triangles.
        seam_length, seam_fraction: 3-D length of the UV seams (world units) and its share of all edge length.
        timings: seconds per stage ("clean", "decimate", "unwrap", "rasterize", "lookup", "fill", "assemble").
    """

    input_faces: int = 0
    faces: int = 0
    vertices: int = 0
    holes_filled: int = 0
    texture_size: int = 0
    alpha_mode: str = "OPAQUE"
    alpha_cutoff: Optional[float] = None
    double_sided: bool = False
    uncovered_texels: int = 0
    uv_method: Optional[UvMethod] = None
    uv_charts: int = 0
    uv_utilisation: float = 0.0
    seam_length: float = 0.0
    seam_fraction: float = 0.0
    timings: dict = field(default_factory=dict)


def choose_alpha_mode(alpha: np.ndarray) -> tuple[str, Optional[float]]:
    """Pick the glTF alphaMode from per-voxel alphas in [0, 1].

    * ``OPAQUE`` when every voxel has alpha >= 0.95 (network outputs hover just below 1 on opaque objects);
    * ``MASK`` (cutoff 0.5) when the non-opaque voxels are mostly fully transparent (alpha <= 0.05): cut-outs such
      as leaves, where at most 20 % of them lie in between (voxels on a cut-out's edge average both sides);
    * ``BLEND`` otherwise (glass, fades).

    Args:
        alpha: (N,) float.

    Returns:
        (mode, cutoff): cutoff is 0.5 for MASK and None otherwise.
    """
    alpha = np.asarray(alpha, dtype=np.float64).reshape(-1)
    not_opaque = alpha < OPAQUE_ALPHA
    if not not_opaque.any():
        return "OPAQUE", None
    partial = (alpha[not_opaque] > CLEAR_ALPHA).mean()
    if partial <= PARTIAL_FRACTION:
        return "MASK", MASK_CUTOFF
    return "BLEND", None


# --------------------------------------------------------------------------------------------------- validation


def _to_numpy(name: str, value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as error:  # noqa: BLE001 - numpy raises many types for unconvertible input
        raise TypeError(f"{name} must be an array or tensor, got {type(value).__name__}") from error


def _check_inputs(vertices, faces, coords, attributes, grid: Grid, device: Union[str, torch.device] = "cpu"):
    v = _to_numpy("vertices", vertices)
    f = _to_numpy("faces", faces)
    c = _to_numpy("coords", coords)
    a = _to_numpy("attributes", attributes)
    if v.ndim != 2 or v.shape[1] != 3 or not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype,
                                                                                                    np.integer)):
        raise ValueError(f"vertices must be a numeric (V, 3) array, got shape {v.shape} dtype {v.dtype}")
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"faces must be an integer (F, 3) array of triangles, got shape {f.shape} dtype {f.dtype}")
    if len(f) == 0 or len(v) == 0:
        raise ValueError(f"the mesh is empty ({len(v)} vertices, {len(f)} faces): nothing to export")
    v = v.astype(np.float32)
    if not np.isfinite(v).all():
        raise ValueError("vertices contain NaN or infinite coordinates")
    f = f.astype(np.int64)
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"face indices must lie in [0, {len(v)}), found [{f.min()}, {f.max()}]")
    if c.ndim != 2 or c.shape[1] != 3 or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"coords must be an integer (N, 3) array, got shape {c.shape} dtype {c.dtype}")
    if len(c) == 0:
        raise ValueError("coords is empty: there are no voxels to take the material from")
    c = c.astype(np.int64)
    if (c < 0).any() or (c >= grid.resolution).any():
        raise ValueError(f"coords must lie in [0, resolution) = [0, {grid.resolution.tolist()}), "
                         f"found min {c.min(axis=0).tolist()} max {c.max(axis=0).tolist()}")
    # Sorted where the export runs: on CUDA this takes milliseconds where the CPU needs 0.2 s for 2.9M keys (1024^3).
    keys = torch.from_numpy((c[:, 0] * grid.resolution[1] + c[:, 1]) * grid.resolution[2] + c[:, 2]).to(device)
    keys = torch.sort(keys).values
    duplicates = int(torch.count_nonzero(keys[1:] == keys[:-1]))
    if duplicates:
        raise ValueError(f"coords contains {duplicates} duplicate voxels")
    if a.ndim != 2 or a.shape != (len(c), 6):
        raise ValueError(f"attributes must have shape (N, 6) = ({len(c)}, 6) in the layout base_color 0:3, "
                         f"metallic 3:4, roughness 4:5, alpha 5:6; got {a.shape}")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    elif np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise ValueError("attributes contain NaN or infinite values")
        if a.min() < -1e-3 or a.max() > 1 + 1e-3:
            raise ValueError(f"float attributes must lie in [0, 1], found [{a.min():.4g}, {a.max():.4g}]")
        a = np.clip(a, 0.0, 1.0)
    else:
        raise ValueError(f"attributes must be float in [0, 1] or uint8, got dtype {a.dtype}")
    return v, f, c, a


def check_texture_options(texture_size, image_format, alpha_mode) -> None:
    """Validate the texture options shared by ``bake_glb`` and ``uv_layout.bake_to_uv_layout``."""
    if not isinstance(texture_size, (int, np.integer)) or isinstance(texture_size, bool) or not (
            16 <= texture_size <= 16384):
        raise ValueError(f"texture_size must be an int in [16, 16384], got {texture_size!r}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r}")


def resolve_alpha_mode(alpha_mode: str, alpha: np.ndarray) -> tuple[str, Optional[float]]:
    """(mode, cutoff): ``choose_alpha_mode(alpha)`` for "auto", else the forced mode (cutoff 0.5 for MASK)."""
    if alpha_mode == "auto":
        return choose_alpha_mode(alpha)
    return alpha_mode, (MASK_CUTOFF if alpha_mode == "MASK" else None)


def _check_options(decimation_target, texture_size, image_format, alpha_mode, hole_max_perimeter,
                   min_component_area, surface_tolerance=None):
    if decimation_target is not None and (not isinstance(decimation_target, (int, np.integer))
                                          or isinstance(decimation_target, bool) or decimation_target < 4):
        raise ValueError(f"decimation_target must be None or an int >= 4 (a face count), got {decimation_target!r}")
    if surface_tolerance is not None and (isinstance(surface_tolerance, bool)
                                          or not isinstance(surface_tolerance, (int, float))
                                          or not np.isfinite(surface_tolerance) or surface_tolerance < 0):
        raise ValueError(f"surface_tolerance must be None or a finite number of voxels >= 0, "
                         f"got {surface_tolerance!r}")
    check_texture_options(texture_size, image_format, alpha_mode)
    for name, value in (("hole_max_perimeter", hole_max_perimeter), ("min_component_area", min_component_area)):
        if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _as_grid(grid: Union[Grid, int, Sequence[int]], aabb: AABB) -> Grid:
    if isinstance(grid, Grid):
        return grid
    return Grid.make(grid, aabb)


# ------------------------------------------------------------------------------------------------------ stages


def _kept_after_fringes(vertices: np.ndarray, faces: np.ndarray, voxel_edge: float, hole_limit: float,
                        keep: Optional[np.ndarray] = None, component: Optional[np.ndarray] = None,
                        table: Optional[tuple] = None) -> np.ndarray:
    """(F,) bool, the faces kept by ``meshops.remove_fringes``, but applied only in components that then have no
    visible opening (after pin-hole filling).

    A component that keeps a real opening stays double-sided anyway, so dropping its fringes would lose surface
    (GlassVaseFlowers' petals, open panels) for nothing. ``keep`` (the fringe rule's verdict) and ``component``
    (face components) may come computed already, by the GPU's twins (`meshops_torch`); ``table`` may pass
    ``meshops.edge_table(faces)`` (one table serves the fringe rule, the components and, subset, the hole test).
    """
    if keep is None:
        table = meshops.edge_table(faces) if table is None else table
        keep = meshops.remove_fringes(vertices, faces, FRINGE_WIDTH * voxel_edge, table=table)
    if keep.all():
        return keep
    component = meshops.face_components(faces, table) if component is None else component
    kept_faces = faces[keep]
    kept_table = None if table is None else meshops.subset_edge_table(table, keep)
    if hole_limit > 0:
        _, _, area, rim_face = meshops.fill_small_holes_with_openings(vertices, kept_faces, hole_limit, kept_table)
    else:
        area, rim_face = meshops.opening_areas(vertices, kept_faces, return_faces=True, table=kept_table)
    rim_face = rim_face[area >= OPENING_AREA * voxel_edge ** 2]  # fan faces of filled holes are never on a rim
    still_open = np.zeros(int(component.max()) + 1, bool)
    still_open[component[np.nonzero(keep)[0][rim_face]]] = True
    return keep | still_open[component]


# Surfaces of more than this many times the first decimation stage (3x the budget) are decimated before the
# full clean-up (see prepare_surface). Measured on the H100 box (docs/benchmarks/export_clock.md): spot's 5.8M
# faces at 1024^3 export in 28.7 s with it against 43.1 s without; its 1.4M faces at 512^3 in 16.8 s against
# 14.5 s, so the factor keeps 512^3 surfaces (about 1.5M faces at the default budget) on the direct path.
EARLY_DECIMATION_FACTOR = 4
# The voxel edge is estimated from at most this many faces (a seeded sample: deterministic).
VOXEL_EDGE_SAMPLE = 1_000_000


def _voxel_edge(vertices: np.ndarray, faces: np.ndarray, device: torch.device) -> float:
    """Median edge length of the extracted surface, about one voxel: on CUDA over every face (a sort of a few
    million lengths takes milliseconds there), elsewhere from a fixed sample of faces when large."""
    if device.type == "cuda":
        v = torch.from_numpy(np.ascontiguousarray(vertices)).to(device, torch.float64)
        f = torch.from_numpy(faces).to(device)
        lengths = (v[f[:, [1, 2, 0]]] - v[f]).norm(dim=2).reshape(-1).sort().values
        middle = len(lengths) // 2  # numpy's median: the mean of the two middle values of an even count
        return float((lengths[middle] + lengths[(len(lengths) - 1) // 2]) / 2)
    if len(faces) > VOXEL_EDGE_SAMPLE:
        sample = np.random.default_rng(0).choice(len(faces), VOXEL_EDGE_SAMPLE, replace=False)
        faces = faces[np.sort(sample)]  # same median; faces in mesh order read the vertices with far fewer misses
    return meshops.median_edge_length(vertices, faces)


def _decimate_in_rounds(vertices: torch.Tensor, faces: torch.Tensor, target: int) -> tuple[np.ndarray, np.ndarray]:
    """`collapse.decimate_in_rounds` on the tensors' device (open borders kept), then the CPU library for whatever
    the rounds could not reach (rare: every remaining collapse would fold or tear) or, out of GPU memory (a small
    GPU still holding the models), for all of it."""
    try:
        tv, tf = collapse.decimate_in_rounds(vertices, faces, int(target))
    except torch.OutOfMemoryError:
        logger.warning("decimation of %d faces ran out of GPU memory; decimating on the CPU", len(faces))
        tv, tf = vertices, faces
    v, f = tv.cpu().numpy(), tf.cpu().numpy()
    return meshops.decimate(v, f, target, preserve_border=True) if len(f) > target else (v, f)


def _decimate_on_gpu(device: torch.device):
    """`meshops.decimate` (numpy in and out) by `_decimate_in_rounds` on ``device``."""
    def decimate(vertices: np.ndarray, faces: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
        if len(faces) <= target:
            return vertices, faces
        return _decimate_in_rounds(torch.from_numpy(np.ascontiguousarray(vertices)).to(device),
                                   torch.from_numpy(faces).to(device), target)
    return decimate


def _early_decimation_on(device: torch.device, vertices: np.ndarray, faces: np.ndarray, target: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    tv = torch.from_numpy(np.ascontiguousarray(vertices)).to(device)
    tf = meshops_torch.drop_degenerate_and_duplicate_faces(tv, torch.from_numpy(faces).to(device))
    if not meshops_torch.consistently_wound(tf):  # extracted surfaces are; anything else is oriented on the CPU first
        oriented, _ = meshops.orient_faces(vertices, tf.cpu().numpy())
        tf = torch.from_numpy(oriented).to(device)
    return _decimate_in_rounds(tv, tf, target)


def _clean_on(device: torch.device, vertices: np.ndarray, faces: np.ndarray, min_component_area: float,
              voxel_edge: float, hole_limit: float) -> tuple[np.ndarray, np.ndarray]:
    """`meshops.clean` and `_kept_after_fringes` with their whole-mesh passes (edge tables, components, the fringe rule)
    on ``device`` (`meshops_torch`, same results); the hole test of the rare components that had fringes stays
    on the CPU."""
    tv, tf = meshops_torch.clean(torch.from_numpy(np.ascontiguousarray(vertices)).to(device),
                                 torch.from_numpy(faces).to(device), min_component_area)
    keep = meshops_torch.remove_fringes(tv, tf, FRINGE_WIDTH * voxel_edge)
    fringes = not bool(keep.all())
    component = meshops_torch.face_components(tf).cpu().numpy() if fringes else None
    v, f = tv.cpu().numpy(), tf.cpu().numpy()
    return v, (f[_kept_after_fringes(v, f, voxel_edge, hole_limit, keep.cpu().numpy(), component)] if fringes
               else f)


def prepare_surface(vertices: np.ndarray, faces: np.ndarray, fill_holes: bool = True,
                    hole_max_perimeter: float = 3e-2, min_component_area: float = 1e-5,
                    decimation_target: Optional[int] = None, timings: Optional[dict] = None,
                    tolerance: Optional[float] = None, device: Union[str, torch.device, None] = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Clean, orient, optionally fill small holes and decimate an extracted surface (spec 7 steps 1 and 3).

    Order: [on a CUDA ``device``, a surface of more than ``target`` faces: degenerate/duplicate faces -> decimate
    to ``target`` in rounds of independent collapses on the GPU (`collapse.decimate_in_rounds`), open borders
    and non-manifold edges kept] [elsewhere, a surface of more than ``EARLY_DECIMATION_FACTOR`` times
    ``3 * target`` faces: degenerate/duplicate faces -> orient -> decimate to ``3 * target`` keeping open borders] -> clean (degenerate/duplicate faces,
    specks, fringes up to ``FRINGE_WIDTH`` voxels wide at non-manifold edges) -> orient -> fill holes -> decimate
    to ``3 * target`` ->
    clean -> fill holes -> decimate to ``target`` -> clean -> [halve while within ``tolerance``
    (`meshops.decimate_within`) -> clean] -> orient. Orienting before decimation keeps the
    collapses' normal-flip checks meaningful; the final orientation repairs anything decimation disturbed.

    Args:
        vertices: (V, 3) float32.
        faces: (F, 3) int64, any winding.
        fill_holes: close boundary loops shorter than ``hole_max_perimeter`` or ``PIN_HOLE_PERIMETER`` voxels.
        hole_max_perimeter: world units (3 % of the unit box in the reference). Pin-holes from lattice ties (about
            4-8 voxel edges round) are closed at every resolution, also where 3 % of the box is less than that.
        min_component_area: parts with less total area (world units squared) are dropped.
        decimation_target: face count to decimate to, or None to keep every face.
        timings: optional dict receiving seconds for "clean" and "decimate" (and "early_decimate").
        tolerance: world units; after the budget, keep halving the faces while the surface stays this close
            to the budget's surface (None: stop at the budget).
        device: on CUDA every decimation runs on the GPU (`collapse.decimate_in_rounds`, open borders kept), and
            so do the first clean-up's whole-mesh passes (`meshops_torch`) and the tolerance search's deviations;
            elsewhere the CPU library (`meshops.decimate`) and `meshops`.

    Returns:
        vertices (V', 3) float32, faces (F', 3) int64 oriented, closed (F',) bool per face, holes filled count.
    """
    timings = {} if timings is None else timings
    start = time.perf_counter()
    holes = 0

    def fill(v, f, table=None):  # -> (v, f, the edge table of f where still known)
        nonlocal holes
        if not fill_holes:
            return v, f, table
        before = len(f)
        v, f = meshops.fill_small_holes(v, f, hole_limit, table)
        if len(f) == before:
            return v, f, table
        # A loop along collinear vertices (a slit, as on wallhole.obj) fans into faces without area, which no atlas
        # can lay out: those fan faces go, and the slit stays open.
        fans = meshops.remove_degenerate_faces(v, f[before:])
        holes += len(np.unique(fans[:, 2]))
        if len(fans) < len(f) - before:
            v, f = meshops.compact(v, np.concatenate([f[:before], fans]))
        return v, f, None  # fans of filled holes are new edges

    device = torch.device(device) if device is not None else torch.device("cpu")
    voxel_edge = _voxel_edge(vertices, faces, device)  # before any decimation, about one voxel
    if device.type == "cuda" and decimation_target is not None and len(faces) > decimation_target:
        # On the GPU the early decimation of millions of faces takes a second or two, while the CPU clean-up below
        # costs about a second per 200K faces (H100 box, docs/benchmarks/export_clock.md), so every surface above
        # the budget goes straight to it, open borders and non-manifold edges in place: the pin-holes and fringes
        # the clean-up looks for are made of those, so they are still found and treated afterwards.
        v, f = _early_decimation_on(device, vertices, faces, decimation_target)
        timings["early_decimate"] = _elapsed(start, device)
        start = time.perf_counter()
    elif decimation_target is not None and len(faces) > EARLY_DECIMATION_FACTOR * 3 * decimation_target:
        # A surface many times the budget (5.8M faces from a 1024^3 asset) would spend most of the export in the
        # full-detail clean-up below. Decimate it first to the first stage's 3x budget, with only the clean-up the
        # collapses need (no degenerate or duplicate faces, one winding); open borders stay where they are, so
        # pin-holes and fringes are still found and treated afterwards, on a mesh a fraction of the size.
        v, f = meshops.clean(vertices, faces, min_component_area=0.0)  # no component pass on the full mesh
        if not meshops.consistently_wound(f):  # extracted surfaces already are: checking costs a quarter of orienting
            f, _ = meshops.orient_faces(v, f)
        v, f = meshops.decimate(v, f, 3 * decimation_target, preserve_border=True)
        timings["early_decimate"] = time.perf_counter() - start
        start = time.perf_counter()
    else:
        v, f = vertices, faces
    hole_limit = max(hole_max_perimeter, PIN_HOLE_PERIMETER * voxel_edge)
    table = None  # the edge table of the current faces, where known (sorting 3F half-edges is the costly part)
    if device.type == "cuda":
        v, f = _clean_on(device, v, f, min_component_area, voxel_edge, hole_limit if fill_holes else 0.0)
    else:
        v, f, table = meshops.clean(v, f, min_component_area, return_table=True)
        kept = _kept_after_fringes(v, f, voxel_edge, hole_limit if fill_holes else 0.0, table=table)
        if not kept.all():
            f, table = f[kept], meshops.subset_edge_table(table, kept)
    v, f = meshops.compact(v, f)  # renumbers vertices in order: the edge table stays valid
    table = meshops.edge_table(f) if table is None else table
    if not meshops.consistently_wound(f, table):  # one winding is what decimation needs; the last step turns parts
        oriented, _ = meshops.orient_faces(v, f, table)  # outward
        table = meshops.rewound_edge_table(table, oriented[:, 1] != f[:, 1])  # re-wound faces swap corners 1, 2
        f = oriented
    v, f, table = fill(v, f, table)
    timings["clean"] = time.perf_counter() - start
    start = time.perf_counter()
    # On CUDA every decimation runs in rounds on the GPU, open borders kept; on the CPU the sequential library.
    gpu_decimate = _decimate_on_gpu(device) if device.type == "cuda" else None

    def clean(v, f):  # after each decimation: where the decimation ran; (v, f, edge table or None)
        if device.type != "cuda":
            return meshops.clean(v, f, min_component_area, return_table=True)
        tv, tf = meshops_torch.clean(torch.from_numpy(v).to(device), torch.from_numpy(f).to(device),
                                     min_component_area)
        return tv.cpu().numpy(), tf.cpu().numpy(), None

    if decimation_target is not None and len(f) > decimation_target:
        for target in (3 * decimation_target, decimation_target):
            v, f = meshops.decimate(v, f, target) if gpu_decimate is None else gpu_decimate(v, f, target)
            v, f, table = clean(v, f)
            if target != decimation_target:
                v, f, table = fill(v, f, table)
    if tolerance is not None and tolerance > 0:
        smaller = meshops.decimate_within(v, f, tolerance, halve=gpu_decimate, device=device)
        if smaller[1] is not f:
            v, f, table = clean(*smaller)
    timings["decimate"] = time.perf_counter() - start
    start = time.perf_counter()
    f, closed = meshops.orient_faces(v, f, table)
    timings["orient"] = time.perf_counter() - start
    if len(f) == 0:
        raise ValueError("nothing is left of the mesh after removing degenerate faces and components smaller than "
                         f"min_component_area={min_component_area}")
    return v.astype(np.float32), f, closed, holes


def _xatlas_unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding: int):
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    chart_options = xatlas.ChartOptions()
    # xatlas's time is dominated by parameterising very large charts (75k faces of a sphere: 21 s as 7 charts,
    # 2 s when no chart may exceed 1/256 of the area); a few hundred charts pack fine into one texture.
    chart_options.max_chart_area = float(meshops.face_areas(vertices, faces).sum()) / MAX_CHART_AREA_DIVISOR
    pack_options = xatlas.PackOptions()
    pack_options.padding = padding
    pack_options.resolution = texture_size
    pack_options.bilinear = True
    pack_options.rotate_charts = True
    atlas.generate(chart_options, pack_options)
    vmapping, indices, uvs = atlas[0]
    return (np.asarray(vmapping, np.int64), np.asarray(indices, np.int64).reshape(-1, 3),
            np.asarray(uvs, np.float32), int(atlas.atlas_count))


def triangle_atlas(faces: np.ndarray, texture_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chart per triangle, two triangles per square cell of a regular grid: the fallback when xatlas fails.

    Always valid and fast, but every triangle becomes a right isosceles UV triangle (texel density follows the face
    count, not the area) and every edge is a seam. Each corner moves up to 0.75 texel inwards so that the two
    triangles of a cell do not share texels.

    Returns:
        vmapping (3F,) int64, faces (F, 3) int64, uvs (3F, 2) float32, like ``unwrap_uv``.
    """
    count = len(faces)
    cells = int(np.ceil(np.sqrt((count + 1) // 2)))
    cell = texture_size / cells  # texels per cell side
    shift = min(0.75, cell / 8) / texture_size  # inward move of each corner
    pair = np.arange(count) // 2
    origin = np.stack([pair % cells, pair // cells], axis=1) / cells
    size = 1.0 / cells
    lower = np.array([[0, 0], [1, 0], [0, 1]], np.float64)  # the cell's lower-left half
    upper = np.array([[1, 1], [0, 1], [1, 0]], np.float64)  # and its upper-right half
    corners = np.where((np.arange(count) % 2 == 0)[:, None, None], lower, upper)  # (F, 3, 2) in cell units
    centre = corners.mean(axis=1, keepdims=True)
    direction = centre - corners
    direction /= np.linalg.norm(direction, axis=2, keepdims=True)
    uvs = origin[:, None, :] + corners * size + direction * shift
    return faces.reshape(-1).astype(np.int64), np.arange(3 * count).reshape(count, 3), uvs.reshape(-1, 2).astype(
        np.float32)


def unwrap_uv(vertices: np.ndarray, faces: np.ndarray, texture_size: int, isolate: bool = True,
              timeout: Optional[float] = 300.0, *, method: UvMethod = UvMethod.VOXEL,
              device: Union[str, torch.device, None] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UV-unwrap into one square atlas (spec 7 step 5): ``unwrap_atlas`` without the statistics.

    Returns:
        vmapping: (V',) int64, original vertex of each unwrapped vertex (vertices are split along seams).
        faces: (F, 3) int64 into the unwrapped vertices.
        uvs: (V', 2) float32 in [0, 1].
    """
    atlas = unwrap_atlas(vertices, faces, texture_size, isolate, timeout, method=method, device=device)
    return atlas.vmapping, atlas.faces, atlas.uvs


def unwrap_atlas(vertices: np.ndarray, faces: np.ndarray, texture_size: int, isolate: bool = True,
                 timeout: Optional[float] = 300.0, *, method: UvMethod = UvMethod.VOXEL,
                 device: Union[str, torch.device, None] = None) -> Atlas:
    """UV-unwrap into one square atlas with ``texture_size // 512 + 2`` texels of padding between charts.

    ``UvMethod.VOXEL`` (default) projects axis-dominated charts (``omnivox.ovoxel.atlas.voxel_atlas``) on
    ``device``. ``UvMethod.XATLAS`` runs xatlas on the CPU, charts rotated to fit, UVs normalised by the atlas
    size. xatlas occasionally crashes the whole process (a segmentation fault in its packer on some very regular
    meshes) and can take very long on thousands of tiny disconnected pieces, so by default it runs in a forked child
    process; a crash, a run longer than ``timeout`` seconds or a multi-atlas result falls back to one chart per
    triangle with a warning.

    Args:
        vertices: (V, 3) float32.
        faces: (F, 3) int64.
        texture_size: the texture side the charts are packed for.
        isolate: xatlas only: run it in a child process (on platforms with ``fork``); without it there is no
            timeout.
        timeout: xatlas only: seconds to wait for the child process (None waits forever).
        method: a ``UvMethod``.
        device: where ``UvMethod.VOXEL`` computes (default CPU).

    Returns:
        ``omnivox.ovoxel.atlas.Atlas``: vmapping (V',) int64, faces (F, 3) int64, uvs (V', 2) float32 in [0, 1],
        and chart count, utilisation, seam length, seconds.
    """
    import warnings

    if not isinstance(method, UvMethod):
        raise ValueError(f"method must be a UvMethod ({', '.join(m.name for m in UvMethod)}), got {method!r}")
    if method is UvMethod.VOXEL:
        return voxel_atlas(vertices, faces, texture_size, device=device)
    start = time.perf_counter()
    padding = default_padding(texture_size)
    problem = None
    if isolate and fork_available():
        result, problem = call_in_fork(_xatlas_unwrap, (vertices, faces, texture_size, padding), timeout)
    else:
        result = _xatlas_unwrap(vertices, faces, texture_size, padding)
    if result is not None and result[3] != 1:
        problem, result = f"packed the charts into {result[3]} atlases", None
    if result is None:
        warnings.warn(f"xatlas {problem} while unwrapping {len(faces)} faces; using one UV chart per triangle "
                      "(lower texture detail)", RuntimeWarning, stacklevel=2)
        result = triangle_atlas(faces, texture_size)
    return describe_atlas(vertices, *result[:3], start_time=start)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) float32 unit area-weighted vertex normals; vertices without faces get +Z."""
    v = vertices.astype(np.float64)
    face_normal = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])  # length = 2 * area
    normals = np.zeros_like(v)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_normal)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.where(length > 1e-20, normals / np.maximum(length, 1e-300), np.array([0.0, 0.0, 1.0]))
    return normals.astype(np.float32)


def _elapsed(start: float, device: torch.device) -> float:
    """Seconds since ``start``, after the device's queued work has finished (honest per-stage GPU timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _to_bytes(values: torch.Tensor) -> np.ndarray:
    return torch.round(values.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()


def textured_mesh(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, normals: np.ndarray,
                  texels: torch.Tensor, *, alpha_mode: str, alpha_cutoff: Optional[float], double_sided: bool,
                  image_format: str = "png") -> "trimesh.Trimesh":
    """Assemble the glTF-ready mesh: Z-up data -> Y-up, textures from baked (S, S, 6) texels, a PBR material.

    ``uvs`` follow glTF (texel row = v * S, row 0 at the top of the image); ``texels`` hold the attribute layout of
    ``ATTRIBUTE_LAYOUT`` and are packed into baseColorTexture RGBA (base colour, alpha) and metallicRoughnessTexture
    RGB (0, roughness, metallic).
    """
    import trimesh
    from PIL import Image

    rgba = torch.cat([texels[..., ATTRIBUTE_LAYOUT["base_color"]], texels[..., ATTRIBUTE_LAYOUT["alpha"]]], dim=-1)
    metallic_roughness = torch.cat([torch.zeros_like(texels[..., :1]), texels[..., ATTRIBUTE_LAYOUT["roughness"]],
                                    texels[..., ATTRIBUTE_LAYOUT["metallic"]]], dim=-1)
    base_image = Image.fromarray(_to_bytes(rgba), mode="RGBA")
    mr_image = Image.fromarray(_to_bytes(metallic_roughness), mode="RGB")
    for image in (base_image, mr_image):
        image.format = image_format.upper()  # read back by save_glb to choose PNG or EXT_texture_webp
    material = trimesh.visual.material.PBRMaterial(
        name="omnivox_material", baseColorTexture=base_image, metallicRoughnessTexture=mr_image,
        baseColorFactor=[255, 255, 255, 255], metallicFactor=1.0, roughnessFactor=1.0,
        alphaMode=alpha_mode, alphaCutoff=alpha_cutoff, doubleSided=double_sided,
    )
    # trimesh stores v with the origin at the bottom and writes t = 1 - v to glTF; our texel rows run with v, and
    # the image is written row 0 first (top), so hand trimesh 1 - v to end up with t = v in the file.
    uv_trimesh = np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], axis=1)
    return trimesh.Trimesh(
        vertices=z_up_to_y_up(vertices), faces=faces, vertex_normals=z_up_to_y_up(normals),
        visual=trimesh.visual.TextureVisuals(uv=uv_trimesh, material=material), process=False,
    )


# ------------------------------------------------------------------------------------------------------ public


def bake_glb(vertices, faces, coords, attributes, grid: Union[Grid, int, Sequence[int]], *,
             aabb: AABB = UNIT_AABB, decimation_target: Optional[int] = DEFAULT_FACE_BUDGET, texture_size: int = 2048,
             fill_holes: bool = True, image_format: str = "png", alpha_mode: str = "auto",
             hole_max_perimeter: float = 3e-2, min_component_area: float = 1e-5,
             device: Union[str, torch.device, None] = None, surface_tolerance: Optional[float] = None,
             progress: Optional[Callable[[str, int, int], None]] = None,
             uv_method: UvMethod = UvMethod.VOXEL) -> tuple["trimesh.Trimesh", ExportReport]:
    """``to_glb`` that also returns an ``ExportReport`` (counts, chosen alphaMode, atlas statistics, per-stage
    timings)."""
    grid = _as_grid(grid, aabb)
    _check_options(decimation_target, texture_size, image_format, alpha_mode, hole_max_perimeter,
                   min_component_area, surface_tolerance)
    start = time.perf_counter()
    device = torch.device(device) if device is not None else torch.device("cpu")
    v, f, c, a = _check_inputs(vertices, faces, coords, attributes, grid, device)
    report = ExportReport(input_faces=len(f), texture_size=int(texture_size))
    timings = report.timings
    timings["check"] = time.perf_counter() - start

    def done(step: str) -> None:  # progress("export", k, len(EXPORT_STEPS)) after step k
        if progress is not None:
            progress("export", EXPORT_STEPS.index(step) + 1, len(EXPORT_STEPS))

    if progress is not None:
        progress("export", 0, len(EXPORT_STEPS))

    tolerance = None if surface_tolerance is None else float(surface_tolerance) * float(np.min(grid.voxel_size))
    v, f, _, report.holes_filled = prepare_surface(v, f, fill_holes, hole_max_perimeter, min_component_area,
                                                   decimation_target, timings, tolerance, device)
    done("surface")
    start = time.perf_counter()
    atlas = unwrap_atlas(v, f, int(texture_size), method=uv_method, device=device)
    vmapping, uv_faces, uvs = atlas.vmapping, atlas.faces, atlas.uvs
    report.uv_method, report.uv_charts, report.uv_utilisation = uv_method, atlas.charts, atlas.utilisation
    report.seam_length, report.seam_fraction = atlas.seam_length, atlas.seam_fraction
    timings["unwrap"] = _elapsed(start, device)
    done("unwrap")

    start = time.perf_counter()
    positions, mask = bake.rasterize_uv(torch.from_numpy(uvs).to(device), torch.from_numpy(uv_faces).to(device),
                                        torch.from_numpy(v[vmapping]).to(device), int(texture_size))
    timings["rasterize"] = _elapsed(start, device)
    done("rasterize")

    start = time.perf_counter()
    covered = torch.nonzero(mask.view(-1)).squeeze(1)
    values, found = bake.sample_sparse_trilinear(torch.from_numpy(c), torch.from_numpy(a), grid,
                                                 positions.view(-1, 3)[covered])
    texels = torch.zeros(mask.numel(), a.shape[1], dtype=torch.float32, device=device)
    texels[covered] = values.to(device)
    valid = torch.zeros(mask.numel(), dtype=torch.bool, device=device)
    valid[covered] = found.to(device)
    report.uncovered_texels = int((~found).sum())
    timings["lookup"] = _elapsed(start, device)
    done("lookup")

    start = time.perf_counter()
    size = int(texture_size)
    filled = bake.fill_gutter(texels.view(size, size, -1), valid.view(size, size))
    timings["fill"] = _elapsed(start, device)
    done("fill")

    start = time.perf_counter()
    report.alpha_mode, report.alpha_cutoff = resolve_alpha_mode(alpha_mode, a[:, ATTRIBUTE_LAYOUT["alpha"]])
    voxel_face = float(np.min(grid.voxel_size)) ** 2
    report.double_sided = bool((meshops.opening_areas(v, f) >= OPENING_AREA * voxel_face).any())
    normals = vertex_normals(v, f)[vmapping]
    mesh = textured_mesh(v[vmapping], uv_faces, uvs, normals, filled, alpha_mode=report.alpha_mode,
                         alpha_cutoff=report.alpha_cutoff, double_sided=report.double_sided,
                         image_format=image_format)
    report.faces, report.vertices = len(uv_faces), len(vmapping)
    timings["assemble"] = time.perf_counter() - start
    done("assemble")
    logger.info("to_glb: %d -> %d faces, %s, timings %s", report.input_faces, report.faces, report.alpha_mode,
                {k: round(t, 3) for k, t in timings.items()})
    return mesh, report


def to_glb(vertices, faces, coords, attributes, grid: Union[Grid, int, Sequence[int]], *,
           aabb: AABB = UNIT_AABB, decimation_target: Optional[int] = DEFAULT_FACE_BUDGET, texture_size: int = 2048,
           fill_holes: bool = True, image_format: str = "png", alpha_mode: str = "auto",
           hole_max_perimeter: float = 3e-2, min_component_area: float = 1e-5,
           device: Union[str, torch.device, None] = None, surface_tolerance: Optional[float] = None,
           progress: Optional[Callable[[str, int, int], None]] = None,
           uv_method: UvMethod = UvMethod.VOXEL, profile: Optional["GameProfile"] = None):
    """Turn an extracted O-Voxel surface and its voxel materials into a textured, glTF-ready mesh.

    Args:
        vertices: (V, 3) float, world units, Z-up (from ``dual_grid_to_mesh``; any winding).
        faces: (F, 3) int triangles.
        coords: (N, 3) int voxel indices of the active voxels (unique).
        attributes: (N, 6) float in [0, 1] (or uint8) per voxel: base_color 0:3, metallic 3:4, roughness 4:5,
            alpha 5:6.
        grid: an ``omnivox.ovoxel.grid.Grid``, or a resolution (int or 3 ints) used with ``aabb``.
        aabb: box of the grid when ``grid`` is a resolution; ignored for a ``Grid``.
        decimation_target: decimate to at most this many faces (None: no budget). Unwrap time grows with the face
            count (xatlas's steeply); the reference app's default is 500k, ours ``DEFAULT_FACE_BUDGET``.
        texture_size: side of the square base-colour and metallic-roughness textures.
        fill_holes: close boundary loops shorter than ``hole_max_perimeter`` (pin-holes of the extraction).
        image_format: "png" or "webp" (written by ``save_glb``; WebP uses ``EXT_texture_webp``).
        alpha_mode: "auto" (rule in ``choose_alpha_mode``) or a glTF alphaMode to force.
        hole_max_perimeter: world units.
        min_component_area: connected parts with less total area (world units squared) are removed.
        device: torch device for the voxel UV atlas, rasterisation, lookup and gutter filling (default CPU).
        surface_tolerance: in voxels; after the budget, halve the faces while 99.9% of the surface stays this
            close to the extracted one (``meshops.decimate_within``); None or 0 stops at the budget. The command
            line, the app and ``Generated.to_glb`` pass ``DEFAULT_SURFACE_TOLERANCE``.
        progress: ``progress("export", k, n)`` after each of the ``n`` steps of ``EXPORT_STEPS`` (and k = 0 first),
            the pipelines' stage-callback shape.
        uv_method: ``UvMethod.VOXEL`` (axis-projected charts, on ``device``) or ``UvMethod.XATLAS``.
        profile: an ``omnivox.ovoxel.game.GameProfile`` for a game-ready export (docs/game_export.md): the budget,
            texture size, levels of detail, normal map, occlusion and watertight option come from it
            (``decimation_target``, ``texture_size``, ``surface_tolerance`` and ``uv_method`` are not used).

    Returns:
        ``trimesh.Trimesh`` in glTF's Y-up frame, with UVs, unit vertex normals and a ``PBRMaterial``:
        baseColorTexture RGBA (base colour, alpha), metallicRoughnessTexture RGB (0, roughness, metallic).
        With ``profile``: an ``omnivox.ovoxel.game.GameAsset`` (``.save(path)`` writes the GLB and
        ``<name>.report.json``).

    Raises:
        ValueError: bad shapes, dtypes, ranges, indices, options, or nothing left after clean-up.
    """
    if profile is not None:
        from omnivox.ovoxel.game import export_game

        return export_game(vertices, faces, coords, attributes, grid, profile=profile, aabb=aabb,
                           image_format=image_format, alpha_mode=alpha_mode, fill_holes=fill_holes,
                           hole_max_perimeter=hole_max_perimeter, min_component_area=min_component_area,
                           device=device, progress=progress)
    mesh, _ = bake_glb(vertices, faces, coords, attributes, grid, aabb=aabb, decimation_target=decimation_target,
                       texture_size=texture_size, fill_holes=fill_holes, image_format=image_format,
                       alpha_mode=alpha_mode, hole_max_perimeter=hole_max_perimeter,
                       min_component_area=min_component_area, device=device, surface_tolerance=surface_tolerance,
                       progress=progress, uv_method=uv_method)
    return mesh


def save_glb(mesh: "trimesh.Trimesh", path: Union[str, Path]) -> Path:
    """Write a mesh from ``to_glb`` as a binary glTF file.

    Textures are written as PNG, or as WebP with the ``EXT_texture_webp`` extension when ``to_glb`` was called
    with ``image_format="webp"``.

    Args:
        mesh: the mesh returned by ``to_glb``.
        path: output file; must end in ``.glb``. Parent folders are created.

    Returns:
        The path written.

    Raises:
        ValueError: the path does not end in ``.glb``, or the mesh has no texture material.
    """
    import trimesh

    path = Path(path)
    if path.suffix.lower() != ".glb":
        raise ValueError(f"{path}: the output file must end in .glb")
    if not isinstance(mesh, trimesh.Trimesh) or not isinstance(getattr(mesh.visual, "material", None),
                                                               trimesh.visual.material.PBRMaterial):
        raise ValueError("mesh must be the textured trimesh.Trimesh returned by to_glb")
    textures = (mesh.visual.material.baseColorTexture, mesh.visual.material.metallicRoughnessTexture)
    webp = any(getattr(t, "format", None) == "WEBP" for t in textures)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh), include_normals=True, extension_webp=webp)
    path.write_bytes(data)
    return path
