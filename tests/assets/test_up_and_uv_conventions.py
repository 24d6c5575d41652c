"""Right side up, right texels: every path from a file to voxels, renders and GLBs keeps the top on top.

Truth comes from outside omnivox: the two-tone assets are written by hand (``two_tone.py``), GLBs are read back with
pygltflib + PIL, and real assets are compared with trimesh's reading of the same file.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from omnivox.assets import load_asset
from omnivox.assets.frames import file_up_axis, y_up_to_z_up, z_up_to_y_up
from omnivox.assets.scene import gltf_uv_transform, image_coordinates
from tests.assets.two_tone import (
    is_blue,
    is_red,
    read_glb_independently,
    texel_at,
    write_two_tone_gltf,
    write_two_tone_obj,
)

WRITERS = {"gltf": write_two_tone_gltf, "obj": write_two_tone_obj}


def ovoxel_to_glb(coords, record, resolution, path, texture_size=64):
    """O-Voxel -> GLB the way `omnivox export` does it."""
    from omnivox.ovoxel.export import bake_glb, save_glb
    from omnivox.ovoxel.extract import dual_grid_to_mesh
    from omnivox.ovoxel.grid import Grid
    from omnivox.ovoxel.packing import unpack_geometry

    coords = np.asarray(coords)
    local, flags = unpack_geometry(record)
    vertices, faces = dual_grid_to_mesh(coords, local, flags, resolution)
    attributes = np.concatenate([np.asarray(record[k], np.uint8).reshape(len(coords), -1)
                                 for k in ("base_color", "metallic", "roughness", "alpha")], axis=1)
    mesh, _ = bake_glb(vertices, faces, coords, attributes, Grid.make(resolution), texture_size=texture_size,
                       decimation_target=None)
    save_glb(mesh, path)
    return path


def convert(path, resolution, **load_options):
    from omnivox.ovoxel.convert import scene_to_ovoxel

    scene = load_asset(path, **load_options).normalized()
    record = scene_to_ovoxel(scene, resolution)
    return np.asarray(record.pop("coords")), {k: np.asarray(v) for k, v in record.items()}


# ------------------------------------------------------------------------------------------- conventions
def test_frames_are_inverse_rotations_on_numpy_and_torch():
    points = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    turned = y_up_to_z_up(points)
    np.testing.assert_array_equal(z_up_to_y_up(turned), points)
    np.testing.assert_array_equal(turned[:, 2], points[:, 1])  # file +Y becomes +Z
    assert np.linalg.det(np.stack([y_up_to_z_up(np.eye(3, dtype=np.float32))])[0]) == pytest.approx(1.0)  # proper
    torch.testing.assert_close(y_up_to_z_up(torch.from_numpy(points)), torch.from_numpy(turned))
    assert [file_up_axis(name) for name in ("a.glb", "b.GLTF", "c.obj", "d.stl", "e.ply")] == list("yyyzz")
    assert file_up_axis("a.glb", "z") == "z"
    with pytest.raises(ValueError, match="up axis must be 'y' or 'z'"):
        file_up_axis("a.glb", "x")


def test_gltf_texture_transform_is_rewritten_for_v_up():
    rng = np.random.default_rng(1)
    rotation, (su, sv), (ou, ov) = rng.uniform(-3, 3), rng.uniform(0.2, 3, 2), rng.uniform(-1, 1, 2)
    c, s = math.cos(rotation), math.sin(rotation)
    gltf = np.array([[1, 0, ou], [0, 1, ov], [0, 0, 1]]) @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) \
        @ np.diag([su, sv, 1])
    file_uv = rng.uniform(-2, 3, (100, 2))
    expected = (np.c_[file_uv, np.ones(100)] @ gltf.T)[:, :2]  # where glTF samples, in its own (u, t)
    scene_uv = np.stack([file_uv[:, 0], 1 - file_uv[:, 1]], 1)  # what the loader stores
    image = image_coordinates(scene_uv, gltf_uv_transform(gltf))
    np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-5)  # same texels, glTF's t = image y


@pytest.mark.parametrize("kind", ["gltf", "obj"])
def test_loaders_store_v_up_uvs(tmp_path, kind):
    scene = load_asset(WRITERS[kind](tmp_path))
    assert scene.source_up_axis == "y"
    top = scene.vertices[scene.faces][..., 2] > 0  # (F, 3) corners on the upper edge, Z-up
    v = scene.uvs[0][..., 1]
    np.testing.assert_allclose(v[top], 1.0)  # the image's top row is v = 1 in the scene's convention
    np.testing.assert_allclose(v[~top], 0.0)


# ------------------------------------------------------------------------------------------- voxels
@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("kind", ["gltf", "obj"])
def test_voxelised_texture_is_upright(tmp_path, kind, backend):
    from omnivox.ovoxel.materials import voxelize_materials

    scene = load_asset(WRITERS[kind](tmp_path)).normalized()
    coords, attributes = voxelize_materials(scene, 32, backend=backend)
    height = (coords[:, 2].double() + 0.5) / 32 - 0.5
    colour = attributes["base_color"].numpy()
    upper, lower = (height > 0.05).numpy(), (height < -0.05).numpy()
    assert upper.sum() > 50 and lower.sum() > 50
    assert is_red(colour[upper]).all() and is_blue(colour[lower]).all()


@pytest.mark.parametrize("kind", ["gltf", "obj"])
def test_exported_glb_is_upright_for_an_independent_reader(tmp_path, kind):
    coords, record = convert(WRITERS[kind](tmp_path / "in"), 32)
    positions, uv, triangles, image = read_glb_independently(ovoxel_to_glb(coords, record, 32, tmp_path / "o.glb"))
    centroid = positions[triangles].mean(1)
    colour = texel_at(image, uv[triangles].mean(1))
    up = centroid[:, 1]  # glTF is Y-up: the file's up must come back as +Y
    assert np.ptp(positions[:, 1]) > 5 * np.ptp(positions[:, 2])  # upright, not lying on its back
    assert is_red(colour[up > 0.05]).mean() > 0.97 and is_blue(colour[up < -0.05]).mean() > 0.97


@pytest.mark.parametrize("kind", ["gltf", "obj"])
def test_texture_bakes_into_the_users_uvs_upright(tmp_path, kind):
    """`TexturingPipeline.run` with a stand-in for the models whose material is the asset's own voxelised
    texture: the user's UVs must come back unchanged and read red on the upper half."""
    from omnivox.ovoxel.export import save_glb
    from omnivox.ovoxel.materials import voxelize_materials
    from omnivox.pipelines.texturing import TexturingPipeline

    source = WRITERS[kind](tmp_path / "in")

    class OwnTexture(TexturingPipeline):
        def __init__(self):  # no models: texture_voxels below stands in for them
            self.device = torch.device("cpu")  # where a pipeline bakes its result

        def texture_voxels(self, vertices, faces, *, images, resolution, **_):
            seen.append(np.asarray(vertices))
            scene = load_asset(source).normalized()
            np.testing.assert_array_equal(scene.vertices, vertices)  # the model sees the scene Z-up
            coords, attrs = voxelize_materials(scene, resolution)
            values = torch.cat([attrs[k].float() for k in ("base_color", "metallic", "roughness", "alpha")], 1)
            return coords, (values / 255).numpy(), None

    seen = []
    from PIL import Image

    reference = Image.new("RGBA", (8, 8))  # the stand-in ignores it; run() needs a view to pass on
    mesh = OwnTexture().run(source, image=reference, resolution=256, texture_size=32)
    assert seen and np.ptp(seen[0][:, 2]) > 0.9  # upright in the model's frame
    positions, uv, triangles, image = read_glb_independently(save_glb(mesh, tmp_path / "t.glb") or tmp_path / "t.glb")
    file_positions, file_uv, file_triangles = _file_geometry(source, kind)
    # The user's coordinates (Y-up file -> Y-up GLB) and UVs (glTF t) are kept.
    np.testing.assert_allclose(positions[triangles], file_positions[file_triangles], atol=1e-5)
    np.testing.assert_allclose(uv[triangles], file_uv[file_triangles], atol=1e-6)
    centroid_up = positions[triangles].mean(1)[:, 1]
    colour = texel_at(image, uv[triangles].mean(1))
    assert is_red(colour[centroid_up > 0]).all() and is_blue(colour[centroid_up < 0]).all()


def _file_geometry(path, kind):
    """The two-tone file's own positions, glTF-convention UVs and triangles, as written."""
    from tests.assets.two_tone import two_tone_geometry

    positions, uv, triangles = two_tone_geometry("quad")
    return positions.astype(np.float64), uv.astype(np.float64), triangles.astype(np.int64)


# ------------------------------------------------------------------------------------------- renders
def _front_cameras(count=4, elevation=0.2):
    """Cameras around the Z axis, slightly above the equator, +Z up (OpenCV axes)."""
    from omnivox.render import intrinsics_from_fov, look_at

    yaw = np.arange(count) * 2 * math.pi / count + 0.3
    eyes = np.stack([np.cos(yaw), np.sin(yaw), np.full(count, elevation)], 1) * 2.5
    extrinsics = look_at(torch.from_numpy(eyes), (0.0, 0.0, 0.0)).to(torch.float32)
    return extrinsics, intrinsics_from_fov(torch.full((count,), math.radians(40)))


def _red_above_blue(rgb: np.ndarray) -> None:
    rows = np.arange(rgb.shape[0])[:, None].repeat(rgb.shape[1], 1)
    red, blue = is_red(rgb), is_blue(rgb)
    assert red.sum() > 20 and blue.sum() > 20, (red.sum(), blue.sum())
    assert rows[red].mean() < rows[blue].mean() - 3  # image row 0 is the top


@pytest.mark.parametrize("kind", ["gltf", "obj"])
def test_preview_render_is_upright(tmp_path, kind):
    from omnivox.render.environment import resolve_environment
    from omnivox.preview import load_preview_source, render_pbr

    source = load_preview_source(WRITERS[kind](tmp_path, shape="cube"))
    extrinsics, intrinsics = _front_cameras()
    views = render_pbr(source, extrinsics, intrinsics, 48, resolve_environment("constant"), ssao=False)
    for base_colour in views["base_color"].numpy():
        _red_above_blue(base_colour * 255)


@pytest.mark.parametrize("kind", ["gltf", "obj"])
def test_data_toolkit_condition_render_is_upright(tmp_path, kind):
    from omnivox.data.convert import load_for_dataset
    from omnivox.data.render import render_views

    scene = load_for_dataset(WRITERS[kind](tmp_path, shape="cube"))
    extrinsics, intrinsics = _front_cameras()
    images = render_views(scene, extrinsics, intrinsics, 48, np.random.default_rng(0), torch.device("cpu"))
    for image in images:
        _red_above_blue(image[..., :3])


# ------------------------------------------------------------------------------------------- real assets
def _trimesh_extents(path):
    import trimesh

    loaded = trimesh.load(path, force="scene").to_geometry()
    extents = np.asarray(loaded.bounds[1] - loaded.bounds[0], np.float64)
    return extents / extents.max()


@pytest.mark.parametrize("relative", ["gltf/Fox.glb", "mesh/spot/spot_triangulated.obj", "mesh/featuretype.STL",
                                      "ply"])
def test_convert_export_round_trip_keeps_orientation(assets, tmp_path, relative):
    """A file converted and exported stands in the GLB as it stood in the file (Y-up files: same axes; Z-up STL
    and PLY: their +Z becomes the GLB's +Y), compared with trimesh's reading of the file."""
    if relative == "ply":  # a Z-up PLY made from the STL by trimesh
        import trimesh

        source = tmp_path / "featuretype.ply"
        trimesh.load(assets / "mesh/featuretype.STL").export(source)
    else:
        source = assets / relative
    coords, record = convert(source, 64)
    glb = ovoxel_to_glb(coords, record, 64, tmp_path / "out.glb", texture_size=32)
    positions = read_glb_independently(glb)[0]
    exported = np.ptp(positions, axis=0)
    exported = exported / exported.max()
    expected = _trimesh_extents(source)
    if file_up_axis(source) == "z":
        expected = np.abs(z_up_to_y_up(expected[None]))[0]
    np.testing.assert_allclose(exported, expected, atol=3 / 64)  # within a few voxels
    assert np.argmax(exported) == np.argmax(expected) and np.argmin(exported) == np.argmin(expected)


def test_up_axis_override_and_known_points(assets):
    fox = assets / "gltf/Fox.glb"
    as_stored = load_asset(fox, up_axis="z")
    turned = load_asset(fox)
    np.testing.assert_array_equal(turned.vertices, y_up_to_z_up(as_stored.vertices))
    np.testing.assert_array_equal(turned.normals, y_up_to_z_up(as_stored.normals))
    assert (as_stored.source_up_axis, turned.source_up_axis) == ("z", "y")
    # The fox stands on its feet: its top (ears) is at +Z after loading, where the file had +Y.
    top = int(np.argmax(as_stored.vertices[:, 1]))
    assert int(np.argmax(turned.vertices[:, 2])) == top
