"""Rendering: cameras, rasterization, deferred-shading buffers and voxel previews (spec training.md 5).

Pure rendering: no O-Voxel and no file loading here (pictures of assets and `.vxz` files: `omnivox.preview`).

Conventions: OpenCV cameras with normalised intrinsics (`omnivox.render.cameras`); images are (B, H, W, ...)
with row 0 at the top; textures use the glTF UV convention. The rasterizer runs in PyTorch on any device and
as a Triton kernel on CUDA (`backend=`).
"""

from omnivox.render.cameras import (
    intrinsics_from_fov,
    look_at,
    orbit_cameras,
    project,
    projection_matrix,
    random_sphere_cameras,
    yaw_pitch_eye,
)
from omnivox.render.interpolate import (
    WRAP_MODES,
    antialias,
    face_normals,
    interpolate,
    interpolate_corners,
    mip_pyramid,
    render_mesh,
    sample_sparse_volume,
    sample_texture,
    vertex_normals,
)
from omnivox.render.rasterize import Fragments, pixel_barycentrics, rasterize, rasterize_uv
from omnivox.render.voxels import render_voxels, voxel_cubes

__all__ = [
    "look_at",
    "intrinsics_from_fov",
    "orbit_cameras",
    "random_sphere_cameras",
    "project",
    "projection_matrix",
    "yaw_pitch_eye",
    "Fragments",
    "rasterize",
    "rasterize_uv",
    "pixel_barycentrics",
    "interpolate",
    "interpolate_corners",
    "face_normals",
    "vertex_normals",
    "antialias",
    "render_mesh",
    "sample_texture",
    "mip_pyramid",
    "sample_sparse_volume",
    "WRAP_MODES",
    "render_voxels",
    "voxel_cubes",
]
