"""Scene -> one O-Voxel record: geometry and material from ONE scan (spec ovoxel.md sections 2 and 4).

``scene_to_ovoxel`` scans the scene's triangles against the lattice once (`scan.scan_triangles`) and hands the same
`Crossings` to the geometry (`dual_grid.dual_grid_from_crossings`) and to the materials
(`materials.materials_from_crossings`). Both number the voxels around the crossings in first-touch order, so the
attribute rows are the geometry's rows by construction: there is no second scan and nothing to re-align.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Union

import numpy as np
import torch

from omnivox.assets.scene import Scene
from omnivox.ovoxel.dual_grid import (_check_overlaps_box, dual_grid_from_crossings, scan_threads, shifted_triangles,
                                      validate_mesh)
from omnivox.ovoxel.grid import AABB, UNIT_AABB, Grid, Resolution
from omnivox.ovoxel.materials import check_material_arguments, materials_from_crossings
from omnivox.ovoxel.packing import pack_geometry
from omnivox.ovoxel.scan import Crossings, scan_triangles


def scene_to_ovoxel(
    scene: Scene,
    resolution: Resolution,
    aabb: AABB = UNIT_AABB,
    mip_level_offset: float = 0.0,
    emissive: bool = False,
    device: Union[str, torch.device, None] = None,
) -> Dict[str, np.ndarray]:
    """Geometry and material of a scene as one aligned O-Voxel record, ready for ``write_vxz``.

    The same result as ``mesh_to_dual_grid`` (weights 1.0 / 0.2 / 1e-2) and ``voxelize_materials`` on the scene,
    from one scan: the CPU runs the numba kernels, other devices the torch ones.

    Args:
        scene: already placed in ``aabb`` (e.g. ``load_asset(path).normalized()``).
        resolution, aabb, mip_level_offset, emissive, device: as for ``voxelize_materials``.

    Returns:
        ``coords`` (N, 3) int32 and uint8 arrays: ``vertices`` (N, 3) = ``trunc(clamp(v_local, 0, 1) * 255)``,
        ``intersected`` (N, 1) = ``x + 2y + 4z`` edge flags, ``base_color`` (N, 3), ``metallic``,
        ``roughness``, ``alpha`` (N, 1) each, and ``emissive`` (N, 3) if requested. NumPy, on the CPU.

    Raises:
        TypeError: ``scene`` is not a Scene.
        ValueError: non-finite material factors, or what ``mesh_to_dual_grid`` / ``voxelize_materials`` refuse.
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene_to_ovoxel: scene must be an omnivox.assets.Scene, got {type(scene).__name__}")
    grid = Grid.make(resolution, aabb)
    check_material_arguments(grid, mip_level_offset)
    scan = scan_scene(scene, grid, device)
    coords, dual_vertices, flags = (np.asarray(torch.as_tensor(a).cpu())
                                    for a in dual_grid_from_crossings(scan.crossings, scan.vertices, scan.faces))
    _, attributes = materials_from_crossings(scene, scan.crossings, mip_level_offset, emissive,
                                             use_numba=not scan.crossings.on_torch)
    record = {"coords": coords, **pack_geometry(coords, dual_vertices, flags, grid)}
    record.update({name: value.cpu().numpy() for name, value in attributes.items()})
    return record


@dataclass(frozen=True)
class SceneScan:
    """A scene's validated mesh and the one scan of its triangles that geometry and materials share."""

    vertices: np.ndarray  # (V, 3) float32 (`validate_mesh`)
    faces: np.ndarray  # (F, 3) int64
    crossings: Crossings


def scan_scene(scene: Scene, grid: Grid, device: Union[str, torch.device, None] = None) -> SceneScan:
    """Validate a scene's mesh (and its material factors) and scan its triangles once: numba on the CPU (the
    default), torch on any other device. `scene_to_ovoxel` is this plus the two consumers of the scan."""
    _check_finite_factors(scene)
    vertices, faces = validate_mesh(scene.vertices, scene.faces)
    _check_overlaps_box(vertices, faces, grid)
    device = torch.device(device) if device is not None else torch.device("cpu")
    triangles = shifted_triangles(vertices, faces, grid)
    if device.type == "cpu":
        crossings = scan_triangles(triangles, grid, threads=scan_threads(len(triangles)))
    else:
        crossings = scan_triangles(torch.from_numpy(triangles).to(device), grid)
    return SceneScan(vertices, faces, crossings)


def _check_finite_factors(scene: Scene) -> None:
    """Non-finite material factors would bake as black or garbage without a word: refuse them, naming them."""
    for material in scene.materials:
        for name in ("base_color_factor", "metallic_factor", "roughness_factor", "emissive_factor", "alpha_cutoff"):
            value = getattr(material, name, None)
            if value is not None and not np.isfinite(np.asarray(value, dtype=np.float64)).all():
                raise ValueError(f"{scene.source}: material {material.name!r} has a non-finite {name} ({value})")
