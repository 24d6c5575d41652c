"""Previews: real assets render with sensible coverage and colours, up stays up, O-Voxels match their meshes."""

import math

import numpy as np
import pytest
import torch

from omnivox.assets.scene import Material, Scene
from omnivox.render.environment import Environment
from omnivox.render.tonemap import srgb_encode
from omnivox.preview import (
    PreviewSource, grid_image, load_preview_source, pbr_panel, render_pbr, render_turntable, save_video,
    snapshot_cameras,
)


@pytest.fixture(scope="module")
def studio():
    return Environment.builtin("studio", width=64)


def _front_camera(distance=2.4, fov=math.radians(36)):
    from omnivox.render.cameras import intrinsics_from_fov, look_at

    return look_at([0.0, -distance, 0.0]), intrinsics_from_fov(fov, 1)


def _two_colour_scene() -> Scene:
    """A Y-up quad in the x-y plane facing +z: red top half (y > 0), blue bottom half, via two materials."""
    v = np.array([[-1, -1, 0], [1, -1, 0], [1, 0, 0], [-1, 0, 0], [1, 1, 0], [-1, 1, 0]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3], [3, 2, 4], [3, 4, 5]], np.int64)
    red = Material("red", base_color_factor=np.array([0.9, 0.05, 0.05, 1], np.float32), metallic_factor=0.0,
                   roughness_factor=0.9)
    blue = Material("blue", base_color_factor=np.array([0.05, 0.05, 0.9, 1], np.float32), metallic_factor=0.0,
                    roughness_factor=0.9)
    normals = np.tile(np.array([0, 0, 1], np.float32), (4, 3, 1))
    return Scene(vertices=v, faces=f, uvs=[np.zeros((4, 3, 2), np.float32)], normals=normals, colors=None,
                 material_ids=np.array([1, 1, 0, 0], np.int32), materials=[red, blue], source="quad")


def test_up_is_up_and_colours_follow_materials(studio):
    source = PreviewSource.from_scene(_two_colour_scene(), up="y")
    extrinsics, intrinsics = _front_camera()
    out = render_pbr(source, extrinsics, intrinsics, 48, studio, ssao=False)
    image = out["shaded"][0]
    top, bottom = image[8:20, 16:32].mean((0, 1)), image[28:40, 16:32].mean((0, 1))
    assert float(top[0]) > float(top[2]) + 0.2, top  # red on top
    assert float(bottom[2]) > float(bottom[0]) + 0.2, bottom  # blue below
    base = out["base_color"][0]
    # the base colour image is display-encoded: glTF factors are linear, so the panel shows srgb_encode(factor)
    torch.testing.assert_close(base[12, 24], srgb_encode(torch.tensor([0.9, 0.05, 0.05])), atol=1e-3, rtol=0)
    assert float(out["alpha"][0].mean()) > 0.3 and float(out["mask"][0, 0, 0]) == 0


def test_fox_renders_orange_with_sensible_coverage(assets, studio):
    source = load_preview_source(assets / "gltf" / "Fox.glb")
    fov = math.radians(36)
    extrinsics, intrinsics = snapshot_cameras(2, 2.0, fov, yaw_offset=math.pi / 2)  # side views
    out = render_pbr(source, extrinsics, intrinsics, 64, studio)
    coverage = out["alpha"][..., 0] > 0.5
    assert 0.03 < float(coverage.float().mean()) < 0.6
    colour = out["base_color"][coverage[..., None].expand(-1, -1, -1, 3)].view(-1, 3).mean(0)
    assert float(colour[0]) > float(colour[2]) + 0.2  # orange fur: red well above blue
    shaded = out["shaded"][coverage[..., None].expand(-1, -1, -1, 3)].view(-1, 3).mean(0)
    assert float(shaded[0]) > float(shaded[2]) + 0.1
    assert 0.05 < float(shaded.mean()) < 0.95  # neither black nor blown out
    # the fox stands on its feet: more coverage in the upper-middle than in the top rows (Z-up after rotation)
    rows = coverage.float().mean((0, 2))
    assert float(rows[:8].sum()) < float(rows[24:40].sum())
    panel = pbr_panel(out, 0)
    assert panel.shape == (96, 128, 3) and panel.dtype == np.uint8


def test_ovoxel_preview_matches_the_mesh(assets, studio):
    from omnivox.assets import load_asset
    from omnivox.ovoxel.convert import scene_to_ovoxel

    scene = load_asset(assets / "gltf" / "Fox.glb")
    record = scene_to_ovoxel(scene.normalized(), 64)
    coords = record.pop("coords")
    coords = coords.numpy() if isinstance(coords, torch.Tensor) else coords
    attrs = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in record.items()}
    voxel = PreviewSource.from_ovoxel(coords, attrs, resolution=64)  # load_asset's scenes are Z-up
    mesh = load_preview_source(assets / "gltf" / "Fox.glb")
    fov = math.radians(36)
    extrinsics, intrinsics = snapshot_cameras(1, 2.0, fov, yaw_offset=math.pi / 2)
    a = render_pbr(mesh, extrinsics, intrinsics, 64, studio, ssao=False)
    b = render_pbr(voxel, extrinsics, intrinsics, 64, studio, ssao=False)
    ma, mb = a["alpha"][..., 0] > 0.5, b["alpha"][..., 0] > 0.5
    iou = float((ma & mb).sum()) / float((ma | mb).sum())
    assert iou > 0.75, iou
    both = (ma & mb)[..., None].expand(-1, -1, -1, 3)
    # The mean base colour agrees: voxels average texels over 1/64 of the box, the mesh reads them per pixel. (Up to
    # 2026-12 the voxels read the glTF texture upside down and the red channel came out ~0.6 against ~0.83.)
    mean_a, mean_b = a["base_color"][both].view(-1, 3).mean(0), b["base_color"][both].view(-1, 3).mean(0)
    assert float((mean_a - mean_b).abs().max()) < 0.03, (mean_a, mean_b)
    assert float(mean_b[0]) > float(mean_b[2]) + 0.2  # still an orange fox


def test_turntable_video_files(assets, tmp_path, studio):
    import imageio.v3 as iio

    source = load_preview_source(assets / "mesh" / "soup.stl")
    frames = render_turntable(source, num_frames=3, resolution=32, environment=studio, ssao=False)
    assert len(frames) == 3 and frames[0].shape == (32, 32, 3)
    assert not np.array_equal(frames[0], frames[1])  # the camera moves
    save_video(frames, tmp_path / "t.mp4", fps=5)
    video = iio.imread(tmp_path / "t.mp4")
    assert video.shape[0] == 3 and video.shape[1:3] == (32, 32)
    assert abs(float(video.astype(np.float64).mean()) - float(np.mean(frames))) < 6
    save_video(frames, tmp_path / "t.gif", fps=5)
    assert iio.imread(tmp_path / "t.gif").shape[0] == 3
    with pytest.raises(ValueError, match="videos are written as .mp4 or .gif"):
        save_video(frames, tmp_path / "t.avi")


def test_grid_layout():
    images = torch.rand(5, 4, 6, 3, generator=torch.Generator().manual_seed(0))
    grid = grid_image(images, columns=3)
    assert grid.shape == (8, 18, 3)
    assert (grid[4:, 12:] == 255).all()  # the sixth cell is empty (white)
    assert np.array_equal(grid[4:8, 0:6], (images[3] * 255 + 0.5).to(torch.uint8).numpy())


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load_preview_source(tmp_path / "a.txt")
    with pytest.raises(ValueError, match="up axis must be 'y' or 'z'"):
        PreviewSource.from_scene(_two_colour_scene(), up="x")


@pytest.mark.gpu
def test_cuda_render_matches_cpu():
    source_cpu = PreviewSource.from_scene(_two_colour_scene(), up="y")
    source_gpu = PreviewSource.from_scene(_two_colour_scene(), up="y", device="cuda")
    extrinsics, intrinsics = _front_camera()
    env = Environment.builtin("sky", width=64)
    a = render_pbr(source_cpu, extrinsics, intrinsics, 64, env)
    b = render_pbr(source_gpu, extrinsics, intrinsics, 64, env.to("cuda"))
    for key in ("shaded", "normal", "base_color", "alpha"):
        diff = (a[key] - b[key].cpu()).abs()
        assert float(diff.mean()) < 2e-3 and float((diff > 0.05).float().mean()) < 0.01, key


def test_ovoxel_source_accepts_an_already_extracted_mesh(assets):
    from omnivox.assets import load_asset
    from omnivox.ovoxel.extract import dual_grid_to_mesh
    from omnivox.ovoxel.convert import scene_to_ovoxel
    from omnivox.ovoxel.packing import unpack_geometry

    record = scene_to_ovoxel(load_asset(assets / "gltf" / "Fox.glb").normalized(), 32)
    coords = np.asarray(record.pop("coords"))
    attrs = {k: np.asarray(v) for k, v in record.items()}
    extracted = PreviewSource.from_ovoxel(coords, attrs, resolution=32, up="y")
    vertices, faces = dual_grid_to_mesh(coords, *unpack_geometry(attrs), 32)
    given = PreviewSource.from_ovoxel(coords, attrs, resolution=32, up="y", mesh=(vertices, faces))
    assert len(given.faces) > 100
    assert torch.equal(given.faces, extracted.faces)
    assert torch.equal(given.vertices, extracted.vertices)
    assert torch.equal(given.voxels[1], extracted.voxels[1])
    # The given surface is used as is, not re-extracted.
    assert len(PreviewSource.from_ovoxel(coords, attrs, resolution=32, mesh=(vertices, faces[:100])).faces) == 100


def test_environment_background_shows_sky_above_and_ground_below():
    source = PreviewSource.from_scene(_two_colour_scene(), up="y")
    extrinsics, intrinsics = _front_camera()  # level camera: the image's top rows look above the horizon
    out = render_pbr(source, extrinsics, intrinsics, 48, Environment.builtin("sky", width=64), ssao=False,
                     background="environment")
    image, alpha = out["shaded"][0], out["alpha"][0, ..., 0]
    assert float(alpha[0].max()) == 0 and float(alpha[-1].max()) == 0  # the quad leaves both edges uncovered
    sky, ground = image[0].mean(0), image[-1].mean(0)
    assert float(sky[2]) > float(sky[0]) + 0.05, sky  # blue sky
    assert float(ground[0]) > float(ground[2]) + 0.02, ground  # brownish ground
    assert float(sky.mean()) > float(ground.mean()) + 0.1


def test_the_old_render_preview_module_forwards_with_a_deprecation_warning():
    import omnivox.preview
    from omnivox.render import preview as old

    with pytest.warns(DeprecationWarning, match="omnivox.preview.render_panel"):
        assert old.render_panel is omnivox.preview.render_panel
    with pytest.raises(AttributeError):
        old.no_such_name
