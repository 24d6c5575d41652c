"""O-Voxel: sparse voxels holding a flexible dual grid (geometry) and PBR attributes (material).

Geometry:
    mesh_to_dual_grid     triangle mesh -> (coords, dual vertices, edge flags)
    dual_grid_to_mesh     flexible dual grid -> triangle mesh
    triangle_voxel_pairs  the (triangle, voxel) incidences of the conversion's scan, for attribute voxelization

Material:
    voxelize_materials    textured scene (omnivox.assets) -> PBR attributes on the geometry's voxels

Both from one scan:
    scene_to_ovoxel       textured scene -> one aligned record (geometry + PBR attributes), ready for write_vxz

Asset:
    OVoxel                voxels + dual grid + PBR attributes + mesh: from_vxz / save_vxz / to_glb (asset.py)
"""

from typing import TYPE_CHECKING

from omnivox._lazy import lazy_exports

# Public name -> submodule. Imported on first use (see omnivox._lazy): `omnivox.ovoxel.io` must not pull numba and
# torch in through this package's __init__.
_EXPORTS = {
    "Grid": "grid",
    "OVoxel": "asset",
    "UNIT_AABB": "grid",
    "decode_seq": "serialize",
    "dual_grid_to_mesh": "extract",
    "encode_seq": "serialize",
    "mesh_to_dual_grid": "dual_grid",
    "scene_to_ovoxel": "convert",
    "to_local": "dual_grid",
    "triangle_voxel_pairs": "scan",
    "voxelize_materials": "materials",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:  # what the names are, for readers and type checkers
    from omnivox.ovoxel.asset import OVoxel
    from omnivox.ovoxel.convert import scene_to_ovoxel
    from omnivox.ovoxel.dual_grid import mesh_to_dual_grid, to_local
    from omnivox.ovoxel.extract import dual_grid_to_mesh
    from omnivox.ovoxel.grid import UNIT_AABB, Grid
    from omnivox.ovoxel.materials import voxelize_materials
    from omnivox.ovoxel.scan import triangle_voxel_pairs
    from omnivox.ovoxel.serialize import decode_seq, encode_seq
