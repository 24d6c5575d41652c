"""O-Voxel: sparse voxels holding a flexible dual grid (geometry) and PBR attributes (material).

Geometry:
    mesh_to_dual_grid     triangle mesh -> (coords, dual vertices, edge flags)
    dual_grid_to_mesh     flexible dual grid -> triangle mesh
    triangle_voxel_pairs  the (triangle, voxel) incidences of the conversion's scan, for attribute voxelization

Material:
    voxelize_materials    textured scene (omnivox.assets) -> PBR attributes on the geometry's voxels
"""

from omnivox.ovoxel.dual_grid import mesh_to_dual_grid, to_local
from omnivox.ovoxel.extract import dual_grid_to_mesh
from omnivox.ovoxel.grid import UNIT_AABB, Grid
from omnivox.ovoxel.materials import voxelize_materials
from omnivox.ovoxel.scan import triangle_voxel_pairs
from omnivox.ovoxel.serialize import decode_seq, encode_seq

__all__ = [
    "Grid",
    "UNIT_AABB",
    "decode_seq",
    "dual_grid_to_mesh",
    "encode_seq",
    "mesh_to_dual_grid",
    "to_local",
    "triangle_voxel_pairs",
    "voxelize_materials",
]
