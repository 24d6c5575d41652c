"""`omnivox texture --profile game` end to end on dev assets (tiny random-weight pipeline, CPU): the user's mesh
decimated to the budget with a normal map from its full surface, levels of detail, the watertight option, the
validity report beside the file, and the user's own coordinates kept as the plain texture command keeps them."""

import json

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from omnivox.cli import app
from omnivox.pipelines.texturing import TexturingPipeline

from .conftest import RGBA_IMAGE
from .test_texturing_and_cli import validate

SPOT = "mesh/spot/spot_triangulated.obj"  # Y-up OBJ, 5856 faces, split along its UV seams
FEATURETYPE = "mesh/featuretype.STL"  # Z-up STL: every triangle stored apart


def texture_game(tiny_weights, assets, rel, output, *extra):
    result = CliRunner().invoke(app, ["texture", str(assets / rel), str(assets / RGBA_IMAGE), "--weights",
                                      str(tiny_weights), "-o", str(output), "--resolution", "256", "--texture-size",
                                      "128", "--profile", "game", "--faces", "1500", "--device", "cpu", "--quiet",
                                      *extra])
    assert result.exit_code == 0, result.output
    report = json.loads(output.with_name(output.stem + ".report.json").read_text())
    assert report["profile"]["faces"] == 1500 and "Khronos validator" in result.output
    return report


def assert_same_bounds(glb, source, tolerance=0.03):
    """The file's vertices span the user's mesh as stored in its file, axis by axis (no turn, same units)."""
    original = trimesh.load(source, force="mesh", process=False).bounds
    written = trimesh.load(glb, force="mesh", process=False).bounds
    np.testing.assert_allclose(written, original, atol=tolerance * float(np.ptp(original, axis=0).max()))


def test_texture_game_profile_decimates_bakes_normals_and_writes_lods(tiny_weights, assets, tmp_path):
    glb = tmp_path / "spot.glb"
    report = texture_game(tiny_weights, assets, SPOT, glb, "--lods", "1")
    levels = [level["triangles"] for level in report["levels"]]
    assert len(levels) == 2 and levels[0] <= 1500 and levels[1] <= 0.6 * levels[0]
    # The welded mesh is one closed sheet again (the file split it along its UV seams).
    assert report["levels"][0]["watertight"] and report["levels"][0]["degenerate_faces"] == 0
    # 1500 of 5856 faces: the normal map of the full-resolution input pays on level 0 (under 0.3 of the faces).
    assert report["normal_maps"][0] is True and report["textures"]["normal_lod0"] == [128, 128]
    assert report["validator"].get("errors", 0) == 0
    independent = validate(glb)
    assert independent["info"]["totalTriangleCount"] == sum(levels)  # both levels are in the file
    assert "MSFT_lod" in independent["info"].get("extensionsUsed", [])
    assert_same_bounds(glb, assets / SPOT)


def test_texture_game_profile_watertight_stl_keeps_its_coordinates(tiny_weights, assets, tmp_path):
    glb = tmp_path / "featuretype.glb"
    report = texture_game(tiny_weights, assets, FEATURETYPE, glb, "--watertight", "--no-occlusion")
    assert report["levels"][0]["triangles"] <= 1500 and report["levels"][0]["watertight"]
    validate(glb)
    mesh = trimesh.load(glb, force="mesh", process=False)
    closed = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)  # merges the atlas's seam copies
    assert closed.is_watertight and closed.is_winding_consistent and closed.volume > 0
    # A Z-up STL keeps its Z-up coordinates, as the plain `omnivox texture` writes them.
    assert_same_bounds(glb, assets / FEATURETYPE)


@pytest.mark.parametrize("extra, message", [
    (["--lods", "1"], "--lods only apply with --profile game"),
    (["--profile", "game", "--keep-uvs"], "the mesh's UVs cannot be kept"),
    (["--profile", "game", "--faces", "3"], "GameProfile.faces"),
    (["--faces", "0"], "--faces must be >= 1"),
])
def test_texture_options_that_do_not_fit_are_one_line_errors(tiny_weights, assets, tmp_path, extra, message):
    result = CliRunner().invoke(app, ["texture", str(assets / SPOT), str(assets / RGBA_IMAGE), "--weights",
                                      str(tiny_weights), "-o", str(tmp_path / "x.glb"), "--device", "cpu", *extra])
    assert result.exit_code == 1 and message in result.output


def test_run_with_a_profile_rejects_what_does_not_apply(tiny_weights, assets):
    from omnivox.ovoxel.game import GameProfile

    texturing = TexturingPipeline.from_pretrained(tiny_weights, device="cpu")
    with pytest.raises(TypeError, match="GameProfile"):
        texturing.run(assets / SPOT, assets / RGBA_IMAGE, profile={"faces": 1000})
    with pytest.raises(ValueError, match="decimation_target does not apply"):
        texturing.run(assets / SPOT, assets / RGBA_IMAGE, profile=GameProfile(faces=1000), decimation_target=500)
