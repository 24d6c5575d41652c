"""GPU stages agree with the CPU: condition renders (Triton rasterizer) and latents (CUDA encoders)."""

import numpy as np
import pytest
import torch

from omnivox.assets import Scene, default_material
from omnivox.data.render import condition_cameras, render_views
from tests.models.helpers import random_voxels, randomize, relative_error, tiny_encoder_config

pytestmark = pytest.mark.gpu


def _sphere_scene(subdivisions: int = 24) -> Scene:
    theta, phi = np.meshgrid(np.linspace(0, np.pi, subdivisions), np.linspace(0, 2 * np.pi, 2 * subdivisions))
    points = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1) * 0.45
    rows, cols = points.shape[:2]
    vertices = points.reshape(-1, 3).astype(np.float32)
    faces = []
    for i in range(rows - 1):
        for j in range(cols - 1):
            a, b, c, d = i * cols + j, i * cols + j + 1, (i + 1) * cols + j, (i + 1) * cols + j + 1
            faces += [[a, b, d], [a, d, c]]
    faces = np.array(faces, np.int64)
    corners = vertices[faces]
    normals = corners / np.linalg.norm(corners, axis=-1, keepdims=True).clip(1e-9)
    material = default_material()
    material.base_color_factor = np.array([0.9, 0.3, 0.1, 1.0], np.float32)
    return Scene(vertices=vertices, faces=faces, uvs=[], normals=normals.astype(np.float32), colors=None,
                 material_ids=np.zeros(len(faces), np.int64), materials=[material])


def test_condition_renders_match_between_cpu_and_cuda():
    scene = _sphere_scene()
    extrinsics, intrinsics, _ = condition_cameras(3, np.random.default_rng(0))
    cpu = render_views(scene, extrinsics, intrinsics, 64, np.random.default_rng(1), torch.device("cpu"))
    gpu = render_views(scene, extrinsics, intrinsics, 64, np.random.default_rng(1), torch.device("cuda"))
    assert cpu.shape == gpu.shape == (3, 64, 64, 4)
    difference = np.abs(cpu.astype(np.int32) - gpu.astype(np.int32))
    # Rasterizer ties on shared edges may flip a few pixels; shading is the same arithmetic.
    assert (difference.max(-1) > 2).mean() < 0.01
    assert (cpu[..., 3] > 0).mean() > 0.05


def test_encoder_latents_match_between_cpu_and_cuda():
    from omnivox.models import FlexiDualGridVaeEncoder
    from omnivox.sparse import SparseTensor

    encoder = randomize(FlexiDualGridVaeEncoder(tiny_encoder_config()), seed=4).eval()
    coords = random_voxels(600, 32, seed=5)
    generator = torch.Generator().manual_seed(6)
    vertices = SparseTensor.from_coords(coords, torch.rand(len(coords), 3, generator=generator))
    intersected = vertices.replace(torch.rand(len(coords), 3, generator=generator) > 0.5)
    # The CPU path is the sparse package's PyTorch reference (itself checked against float64 in tests/sparse).
    with torch.no_grad():
        reference = encoder(vertices, intersected).mean
        fast = encoder.cuda()(vertices.to("cuda"), intersected.to("cuda")).mean
    assert torch.equal(fast.coords.cpu(), reference.coords)
    assert relative_error(fast.feats.cpu(), reference.feats) < 1e-4


def test_sparse_structure_latents_match_between_cpu_and_cuda(tmp_path):
    from omnivox.data.encode import encode_sparse_structure
    from omnivox.models import SparseStructureEncoder, SparseStructureEncoderConfig
    from omnivox.ovoxel.io import write_vxz

    coords = random_voxels(3000, 128, seed=7)[:, 1:].numpy().astype(np.int32)
    path = tmp_path / "shape.vxz"
    write_vxz(path, coords, {"vertices": np.full((len(coords), 3), 128, np.uint8),
                             "intersected": np.zeros((len(coords), 1), np.uint8)})
    config = SparseStructureEncoderConfig(channels=(8, 16, 32), num_res_blocks=1, num_res_blocks_middle=1,
                                          use_fp16=False)
    encoder = randomize(SparseStructureEncoder(config), seed=8, std=0.2).eval()
    cpu_cells, cpu = encode_sparse_structure(encoder, path, 128, torch.device("cpu"))
    gpu_cells, gpu = encode_sparse_structure(encoder.cuda(), path, 128, torch.device("cuda"))
    assert cpu_cells == gpu_cells and cpu.shape == (8, 16, 16, 16)
    assert relative_error(torch.from_numpy(gpu), torch.from_numpy(cpu)) < 1e-3
