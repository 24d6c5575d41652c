"""Texturing pipeline and the `omnivox generate` / `omnivox texture` commands end to end (tiny pipeline, CPU)."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from omnivox.cli import app
from omnivox.ovoxel.dual_grid import mesh_to_dual_grid
from omnivox.pipelines.texturing import TexturingPipeline
from tests.conftest import HANG_GUARD_S, node_with

from .conftest import RGBA_IMAGE, RGBA_IMAGE_2

VALIDATOR = Path(__file__).resolve().parents[1] / "gltf_validator"
AVOCADO = "gltf/Avocado/Avocado.gltf"


def validate(path: Path) -> dict:
    """Khronos glTF validator report (`npm ci` in tests/gltf_validator on first use; skips without Node)."""
    node = node_with(VALIDATOR, "gltf-validator")
    result = subprocess.run([node, str(VALIDATOR / "validate.js"), str(path)], capture_output=True, text=True,
                            timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["issues"]["numErrors"] == 0, report["issues"]
    return report


@pytest.fixture(scope="module")
def texturing(tiny_weights):
    return TexturingPipeline.from_pretrained(tiny_weights, device="cpu")


def test_material_decoder_lands_on_the_encoded_voxels(texturing, assets):
    from omnivox.assets import load_asset

    scene = load_asset(assets / AVOCADO).normalized()
    vertices = scene.vertices  # Z-up, as the model expects
    coords, attributes, plan = texturing.texture_voxels(vertices, scene.faces, assets / RGBA_IMAGE, seed=1,
                                                        resolution=256)
    expected, _, _ = mesh_to_dual_grid(vertices, scene.faces, 256)
    np.testing.assert_array_equal(coords.numpy(), np.asarray(expected))  # same voxels, same order (spec 9.6)
    assert attributes.shape == (len(coords), 6) and attributes.min() >= 0 and attributes.max() <= 1
    assert attributes.std(0).min() > 0
    np.testing.assert_array_equal(attributes, texturing.texture_voxels(
        vertices, scene.faces, assets / RGBA_IMAGE, seed=1, resolution=256)[1])
    import torch  # a caller's generator draws the same noise as the seed it was seeded with

    np.testing.assert_array_equal(attributes, texturing.texture_voxels(
        vertices, scene.faces, assets / RGBA_IMAGE, seed=7, generator=torch.Generator().manual_seed(1),
        resolution=256)[1])
    assert [s.name for s in plan.stages] == ["condition", "encode", "tex_slat", "decode"]


def test_texture_keeps_the_users_coordinates(texturing, assets):
    from omnivox.assets import load_asset

    scene = load_asset(assets / AVOCADO, up_axis="z")  # as stored in the file
    mesh = texturing.run(assets / AVOCADO, assets / RGBA_IMAGE, seed=0, resolution=256, texture_size=128,
                         keep_uvs=False)
    np.testing.assert_allclose(np.asarray(mesh.bounds), np.stack([scene.vertices.min(0), scene.vertices.max(0)]),
                               atol=1e-6)
    material = mesh.visual.material
    assert material.baseColorTexture.size == (128, 128) and mesh.visual.uv.shape == (len(mesh.vertices), 2)


def test_texture_with_uvs_bakes_into_them(texturing, assets):
    from omnivox.assets import load_asset

    scene = load_asset(assets / AVOCADO, up_axis="z")  # as stored in the file
    mesh = texturing.run(assets / AVOCADO, assets / RGBA_IMAGE, resolution=256, texture_size=64)
    assert len(mesh.faces) == scene.num_faces
    # The user's triangles (same order, same corners, original coordinates) and the user's UVs.
    corners = np.asarray(mesh.vertices)[np.asarray(mesh.faces)]
    np.testing.assert_allclose(corners, scene.triangles(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(mesh.visual.uv)[np.asarray(mesh.faces)], scene.uvs[0], atol=1e-6)
    assert mesh.visual.material.baseColorTexture.size == (64, 64)


def test_cli_generate_and_texture_write_valid_glbs(tiny_weights, assets, tmp_path):
    runner = CliRunner()
    out = tmp_path / "asset.glb"
    result = runner.invoke(app, ["generate", str(assets / RGBA_IMAGE), "--weights", str(tiny_weights), "-o", str(out),
                                 "--pipeline", "512", "--seed", "2", "--texture-size", "128", "--faces", "4000",
                                 "--device", "cpu", "--max-memory", "8GB", "--show-plan",
                                 "--save-intermediates", str(tmp_path / "steps"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "memory plan on cpu" in result.output and out.is_file()
    report = validate(out)
    assert report["info"]["totalTriangleCount"] > 0
    # Re-export from the saved material latent: no image needed.
    again = tmp_path / "again.glb"
    result = runner.invoke(app, ["generate", "-", "--weights", str(tiny_weights), "-o", str(again), "--resume",
                                 str(tmp_path / "steps" / "material_latent.safetensors"), "--texture-size", "128",
                                 "--faces", "4000", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert validate(again)["info"]["totalTriangleCount"] == report["info"]["totalTriangleCount"]
    # The same asset as a game-ready file (--profile game): a budget, one more level, the report beside it.
    game = tmp_path / "game.glb"
    result = runner.invoke(app, ["generate", "-", "--weights", str(tiny_weights), "-o", str(game), "--resume",
                                 str(tmp_path / "steps" / "material_latent.safetensors"), "--texture-size", "64",
                                 "--profile", "game", "--faces", "600", "--lods", "1", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    game_report = validate(game)
    assert game_report["issues"]["numErrors"] == 0
    assert (tmp_path / "game.report.json").is_file()
    assert "MSFT_lod" in game_report["info"].get("extensionsUsed", [])
    result = runner.invoke(app, ["generate", "-", "--weights", str(tiny_weights), "-o", str(game), "--resume",
                                 str(tmp_path / "steps"), "--lods", "2", "--device", "cpu", "--quiet"])
    assert result.exit_code != 0 and "--lods only apply with --profile game" in result.output

    textured = tmp_path / "avocado.glb"
    result = runner.invoke(app, ["texture", str(assets / AVOCADO), str(assets / RGBA_IMAGE_2), "--weights",
                                 str(tiny_weights), "-o", str(textured), "--resolution", "256", "--texture-size",
                                 "128", "--unwrap", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    validate(textured)


def test_cli_generate_a_folder_loads_models_once(tiny_weights, assets, tmp_path, monkeypatch):
    from omnivox.pipelines import image_to_3d

    images = tmp_path / "images"
    images.mkdir()
    for name in (RGBA_IMAGE, RGBA_IMAGE_2):
        (images / Path(name).name).symlink_to(assets / name)
    loads = []
    original = image_to_3d.ImageTo3DPipeline.from_pretrained.__func__
    monkeypatch.setattr(image_to_3d.ImageTo3DPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(1) or original(cls, *a, **k)))
    result = CliRunner().invoke(app, ["generate", str(images), "--weights", str(tiny_weights), "-o",
                                      str(tmp_path / "out"), "--pipeline", "512", "--texture-size", "64",
                                      "--faces", "2000", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        Path(n).stem + ".glb" for n in (RGBA_IMAGE, RGBA_IMAGE_2))
    assert loads == [1]


def test_cli_errors_are_clear(tiny_weights, assets, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(assets / "images" / "ToyCar_screenshot_large.jpg"), "--weights",
                                 str(tiny_weights), "-o", str(tmp_path / "x.glb"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 1 and "background" in result.output
    result = runner.invoke(app, ["generate", str(assets / RGBA_IMAGE), "--weights", str(tmp_path / "nowhere"), "-o",
                                 str(tmp_path / "x.glb"), "--device", "cpu"])
    assert result.exit_code == 1 and "not found" in result.output
    result = runner.invoke(app, ["generate", str(assets / RGBA_IMAGE), "--weights", str(tiny_weights), "-o",
                                 str(tmp_path / "x.glb"), "--pipeline", "2048"])
    assert result.exit_code == 1 and "--pipeline must be one of" in result.output


def test_preview_video_of_a_glb(assets, tmp_path):
    imageio = pytest.importorskip("imageio.v3")
    from omnivox.cli.generate_commands import write_preview

    video = tmp_path / "turntable.mp4"
    write_preview(assets / AVOCADO, video, frames=3, resolution=32)
    frames = imageio.imread(video)
    assert frames.shape[0] == 3 and frames.shape[-1] == 3
    assert frames.std() > 0  # something was drawn
