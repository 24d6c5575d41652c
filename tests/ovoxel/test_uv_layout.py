"""Baking O-Voxel materials into a given mesh's own UV layout (bake_to_uv_layout)."""

import numpy as np
import pytest
import torch
from PIL import Image

from omnivox.ovoxel import Grid, mesh_to_dual_grid
from omnivox.ovoxel.bake import rasterize_uv
from omnivox.ovoxel.export import save_glb
from omnivox.ovoxel.uv_layout import BakeReport, bake_to_uv_layout, wrapped_uv_triangles

from .test_export import _validate


def _psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def _covered(uvs, faces, size):
    """Texels the layout covers, with the bottom-left UV origin turned into image rows."""
    image_uv = np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], axis=1).astype(np.float32)
    _, mask = rasterize_uv(torch.from_numpy(image_uv), torch.from_numpy(faces), torch.zeros(len(uvs), 1), size)
    return mask.numpy()


@pytest.fixture(scope="module")
def avocado_bake(assets_dir, tmp_path_factory):
    from omnivox.assets import load_asset
    from omnivox.ovoxel.convert import scene_to_ovoxel

    scene = load_asset(assets_dir / "gltf/Avocado/Avocado.gltf").normalized()
    resolution, size = 128, 512
    record = scene_to_ovoxel(scene, resolution)
    coords = record["coords"]
    attributes = np.concatenate([record[k].reshape(len(coords), -1) for k in ("base_color", "metallic", "roughness",
                                                                              "alpha")], axis=1)
    # The asset's own layout: one vertex per face corner (its UV seams stay seams).
    count = len(scene.faces)
    vertices = scene.vertices[scene.faces].reshape(-1, 3)
    faces = np.arange(3 * count, dtype=np.int64).reshape(count, 3)
    uvs = scene.uvs[0].reshape(-1, 2)
    report = BakeReport()
    mesh = bake_to_uv_layout(vertices, faces, uvs, coords, attributes, resolution, texture_size=size, report=report)
    path = save_glb(mesh, tmp_path_factory.mktemp("uv_layout") / "avocado.glb")
    return scene, vertices, faces, uvs, mesh, report, path, size


@pytest.fixture(scope="module")
def assets_dir():
    from tests.conftest import _assets_dir

    return _assets_dir()


def test_avocado_bakes_back_into_its_own_uvs(avocado_bake):
    scene, _, faces, uvs, mesh, report, _, size = avocado_bake
    material = scene.materials[0]
    mask = _covered(uvs, faces, size)
    assert report.covered_texels == mask.sum() > 0.3 * size * size
    assert report.uncovered_texels == 0
    baked = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), np.float64) / 255
    original = np.asarray(Image.fromarray(material.base_color_texture.image[..., :3]).resize((size, size), Image.BOX),
                          np.float64) / 255
    # At 128^3 a voxel spans ~16 texels of the 2048^2 original: the bake is that blurred copy (32 dB at 256^3).
    assert _psnr(baked[mask], original[mask]) > 26.0
    # The comparison can fail: the image upside down (the wrong UV convention) is far off.
    assert _psnr(baked[mask], original[::-1][mask]) < 16.0
    metallic_roughness = np.asarray(mesh.visual.material.metallicRoughnessTexture, np.float64) / 255
    original_mr = np.asarray(Image.fromarray(material.metallic_roughness_texture.image[..., :3]).resize(
        (size, size), Image.BOX), np.float64) / 255
    assert _psnr(metallic_roughness[mask][:, 1], original_mr[mask][:, 1] * material.roughness_factor) > 35.0
    assert _psnr(metallic_roughness[mask][:, 2], original_mr[mask][:, 2] * material.metallic_factor) > 35.0


def test_avocado_keeps_the_callers_mesh_and_passes_the_validator(avocado_bake):
    _, vertices, faces, uvs, mesh, report, path, _ = avocado_bake
    assert np.array_equal(mesh.faces, faces)
    # Y-up in the file: (x, y, z) -> (x, z, -y); the UVs are the caller's.
    assert np.allclose(mesh.vertices, np.stack([vertices[:, 0], vertices[:, 2], -vertices[:, 1]], axis=1))
    assert np.allclose(mesh.visual.uv, uvs, atol=1e-6)
    assert report.alpha_mode == "OPAQUE" and mesh.visual.material.alphaMode == "OPAQUE"
    result = _validate(path)
    assert result["issues"]["numErrors"] == 0, result["issues"]["messages"]


def _plane(resolution=32, cells=8):
    """A flat square at z = 0.01 (off the lattice), its voxels and colours that vary linearly with x."""
    grid = Grid.make(resolution)
    xs = np.linspace(-0.4, 0.4, cells + 1)
    x, y = np.meshgrid(xs, xs, indexing="xy")
    vertices = np.stack([x.ravel(), y.ravel(), np.full(x.size, 0.01)], axis=1).astype(np.float32)
    index = np.arange(x.size).reshape(cells + 1, cells + 1)
    a, b, c, d = index[:-1, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, 1:].ravel(), index[1:, :-1].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]).astype(np.int64)
    coords, _, _ = mesh_to_dual_grid(vertices, faces, resolution)
    centres = (coords + 0.5) * grid.voxel_size + grid.lo
    rng = np.random.default_rng(0)
    colour = np.stack([centres[:, 0] + 0.5, rng.uniform(0.2, 0.8, len(coords)), np.full(len(coords), 0.3)], 1)
    attributes = np.concatenate([colour, np.full((len(coords), 1), 0.1), np.full((len(coords), 1), 0.6),
                                 np.ones((len(coords), 1))], axis=1).astype(np.float32)
    uvs = np.stack([(vertices[:, 0] + 0.4) / 0.8, (vertices[:, 1] + 0.4) / 0.8], axis=1)
    return grid, vertices, faces, coords, attributes, uvs


def test_uvs_outside_the_unit_square_wrap_like_repeat():
    grid, vertices, faces, coords, attributes, uvs = _plane()
    size = 64

    def texture(layout):
        mesh = bake_to_uv_layout(vertices, faces, layout, coords, attributes, grid, texture_size=size)
        return np.asarray(mesh.visual.material.baseColorTexture, np.float64)[..., :3] / 255

    reference = texture(uvs)
    mask = _covered(uvs, faces, size)
    # Whole-unit shifts change nothing.
    assert np.abs(texture(uvs + np.array([3.0, -2.0]))[mask] - reference[mask]).max() <= 1.5 / 255
    # A quarter shift makes triangles cross u = 1: the layout wraps round and every texel is still baked.
    wrapped = texture(uvs + np.array([0.25, 0.0]))
    rolled = np.roll(reference, size // 4, axis=1)
    assert np.abs(wrapped[mask] - rolled[mask]).max() <= 1.5 / 255
    assert np.ptp(reference[mask][:, 0]) > 0.5  # the colours vary, so the roll is really tested


def test_wrapped_triangles_cover_both_sides_of_the_seam():
    uvs = np.array([[0.8, 0.2], [1.3, 0.2], [0.8, 0.6]])
    corners, owner = wrapped_uv_triangles(uvs, np.array([[0, 1, 2]]))
    assert owner.tolist() == [0, 0]
    assert np.allclose(corners[0], uvs) and np.allclose(corners[1], uvs - [1.0, 0.0])
    far = wrapped_uv_triangles(uvs + [5.0, 7.0], np.array([[0, 1, 2]]))[0]
    assert np.allclose(far, corners)


@pytest.mark.parametrize("change, message", [
    ({"uvs": np.zeros((3, 2))}, "uvs must be"),
    ({"uvs": "nan"}, "NaN"),
    ({"texture_size": 8}, "texture_size"),
    ({"alpha_mode": "CLEAR"}, "alpha_mode"),
])
def test_bad_inputs_raise_value_error(change, message):
    grid, vertices, faces, coords, attributes, uvs = _plane(resolution=16, cells=2)
    kwargs = {"uvs": uvs, "texture_size": 32}
    kwargs.update(change)
    if isinstance(kwargs["uvs"], str):
        kwargs["uvs"] = np.full_like(uvs, np.nan)
    layout = kwargs.pop("uvs")
    with pytest.raises(ValueError, match=message):
        bake_to_uv_layout(vertices, faces, layout, coords, attributes, grid, **kwargs)
