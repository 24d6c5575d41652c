"""Where each stage of the data toolkit writes, relative to a dataset root (spec training.md 4.1).

The names follow the reference toolkit, so a ``--data_dir`` JSON written for it points at the same folders:

    <ROOT>/metadata.csv                      index: sha256, local_path, file size, triangle and texture counts
    <ROOT>/mesh_dumps/<sha>.npz              normalised triangles (vertices f32 (V, 3), faces i32 (F, 3))
    <ROOT>/dual_grid_<R>/<sha>.vxz           shape O-Voxel: vertices (3 ch), intersected (1 ch)
    <ROOT>/pbr_voxels_<R>/<sha>.vxz          material O-Voxel: base_color (3), metallic, roughness, alpha
    <ROOT>/shape_latents/<enc>_<R>/<sha>.npz feats f32 (L, C), coords u8 (L, 3)
    <ROOT>/pbr_latents/<enc>_<R>/<sha>.npz   same
    <ROOT>/ss_latents/<enc>_64/<sha>.npz     z f32 (8, 16, 16, 16)
    <ROOT>/renders_cond/<sha>/000.png ...    RGBA condition views + transforms.json

Each of these folders has its own ``metadata.csv`` (+ ``new_records/``) with that stage's columns.
"""

from __future__ import annotations

MESH_DUMPS = "mesh_dumps"
RENDERS_COND = "renders_cond"
DEFAULT_SHAPE_ENCODER = "shape_enc_next_dc_f16c32_fp16"
DEFAULT_PBR_ENCODER = "tex_enc_next_dc_f16c32_fp16"
DEFAULT_SS_ENCODER = "ss_enc_conv3d_16l8_fp16"


def dual_grid_dir(resolution: int) -> str:
    return f"dual_grid_{int(resolution)}"


def pbr_voxels_dir(resolution: int) -> str:
    return f"pbr_voxels_{int(resolution)}"


def shape_latents_dir(encoder_name: str, resolution: int) -> str:
    return f"shape_latents/{encoder_name}_{int(resolution)}"


def pbr_latents_dir(encoder_name: str, resolution: int) -> str:
    return f"pbr_latents/{encoder_name}_{int(resolution)}"


def ss_latents_dir(encoder_name: str, resolution: int = 64) -> str:
    return f"ss_latents/{encoder_name}_{int(resolution)}"
