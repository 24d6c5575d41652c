"""`omnivox render` on real assets: PNG panels/grids and turntable videos are written and look plausible."""

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from omnivox.cli import app

runner = CliRunner()


def test_render_panel_png_of_a_textured_asset(assets, tmp_path):
    out = tmp_path / "fox.png"
    result = runner.invoke(app, ["render", str(assets / "gltf" / "Fox.glb"), "-o", str(out), "--panel",
                                 "--resolution", "64", "--no-ssao", "--env", "sky"])
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(out).convert("RGB")).astype(np.float64)
    assert image.shape == (96, 128, 3)
    shaded = image[:64, :64]
    foreground = np.abs(shaded - 255).sum(-1) > 30
    assert 0.02 < foreground.mean() < 0.7  # not blank, not all object
    colour = shaded[foreground].mean(0)
    assert colour[0] > colour[2] + 30  # an orange fox


def test_render_grid_and_video_of_untextured_meshes(assets, tmp_path):
    png = tmp_path / "tetrahedra.png"
    result = runner.invoke(app, ["render", str(assets / "mesh" / "joined_tetrahedra.obj"), "-o", str(png),
                                 "--grid", "--views", "4", "--resolution", "48"])
    assert result.exit_code == 0, result.output
    grid = np.asarray(Image.open(png).convert("RGB"))
    assert grid.shape == (48, 192, 3)
    for k in range(4):
        cell = grid[:, 48 * k:48 * (k + 1)].astype(np.int64)
        assert (np.abs(cell - 255).sum(-1) > 30).mean() > 0.02  # every view shows the object
    mp4 = tmp_path / "soup.mp4"
    result = runner.invoke(app, ["render", str(assets / "mesh" / "soup.stl"), "-o", str(mp4), "--views", "4",
                                 "--resolution", "32", "--no-ssao"])
    assert result.exit_code == 0, result.output
    import imageio.v3 as iio

    video = iio.imread(mp4)
    assert video.shape == (4, 32, 32, 3) and video.std() > 5


def test_render_errors(assets, tmp_path):
    result = runner.invoke(app, ["render", str(assets / "mesh" / "soup.stl"), "-o", str(tmp_path / "x.bmp")])
    assert result.exit_code == 1 and "output must be one of" in result.output
    result = runner.invoke(app, ["render", str(tmp_path / "missing.glb"), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "missing.glb" in result.output
    result = runner.invoke(app, ["render", str(assets / "mesh" / "soup.stl"), "-o", str(tmp_path / "x.png"),
                                 "--env", "moon"])
    assert result.exit_code == 1 and "neither a built-in" in result.output


def test_render_vxz_shaded_and_as_voxels(assets, tmp_path):
    from omnivox.assets import load_asset
    from omnivox.ovoxel.io import write_vxz
    from omnivox.ovoxel.convert import scene_to_ovoxel

    record = scene_to_ovoxel(load_asset(assets / "gltf" / "Fox.glb").normalized(), 32)
    coords = record.pop("coords")
    write_vxz(tmp_path / "fox.vxz", coords, record)
    for extra, name in (([], "shaded.png"), (["--voxels", "--views", "2"], "cubes.png")):
        result = runner.invoke(app, ["render", str(tmp_path / "fox.vxz"), "-o", str(tmp_path / name), "--up", "y",
                                     "--resolution", "48", "--no-ssao", *extra])
        assert result.exit_code == 0, result.output
        image = np.asarray(Image.open(tmp_path / name).convert("RGB")).astype(np.float64)
        foreground = np.abs(image - 255).sum(-1) > 30
        assert foreground.mean() > 0.01
        colour = image[foreground].mean(0)
        assert colour[0] > colour[2] + 20, (name, colour)  # orange voxels
    assert Image.open(tmp_path / "cubes.png").size == (96, 48)
