"""`omnivox export --profile game`: a real asset converted and exported with a budget, levels of detail and the
watertight option, its report beside the file, and one-line errors for options that do not fit."""

from __future__ import annotations

import json

import pytest
import trimesh
from typer.testing import CliRunner

from omnivox.cli import app

SPOT = "mesh/spot/spot_triangulated.obj"


@pytest.fixture(scope="module")
def spot_vxz(tmp_path_factory):
    from tests.conftest import _assets_dir

    source = _assets_dir() / SPOT
    vxz = tmp_path_factory.mktemp("game_cli") / "spot.vxz"
    result = CliRunner().invoke(app, ["convert", str(source), str(vxz), "-r", "32"])
    assert result.exit_code == 0, result.output
    return vxz


def test_export_game_profile_writes_file_and_report(spot_vxz, tmp_path):
    glb = tmp_path / "spot_game.glb"
    result = CliRunner().invoke(app, ["export", str(spot_vxz), str(glb), "--profile", "game", "--faces", "500",
                                      "--lods", "1", "--watertight", "--texture-size", "64", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "lod0: " in result.output and "lod1: " in result.output and "watertight" in result.output
    report = json.loads((tmp_path / "spot_game.report.json").read_text())
    assert report["profile"]["faces"] == 500 and report["profile"]["watertight"] is True
    assert report["levels"][0]["triangles"] <= 500 and report["levels"][0]["watertight"]
    scene = trimesh.load(glb, process=False)
    assert len(scene.geometry) == 2  # level 0 in the scene, level 1 named by MSFT_lod
    document = json.loads(glb.read_bytes()[20:20 + int.from_bytes(glb.read_bytes()[12:16], "little")])
    assert document["nodes"][0]["extensions"]["MSFT_lod"]["ids"] == [1]


def test_game_profile_defaults_to_a_game_budget(spot_vxz, tmp_path):
    glb = tmp_path / "default.glb"
    result = CliRunner().invoke(app, ["export", str(spot_vxz), str(glb), "--profile", "game", "--texture-size", "32",
                                      "--no-occlusion", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "default.report.json").read_text())["profile"]["faces"] == 20_000


@pytest.mark.parametrize("extra, message", [
    (["--lods", "2"], "--lods only apply with --profile game"),
    (["--watertight"], "--watertight only apply with --profile game"),
    (["--profile", "fancy"], "--profile must be plain or game"),
    (["--profile", "game", "--uv", "xatlas"], "voxel method"),
    (["--profile", "game", "--faces", "3"], "GameProfile.faces"),
])
def test_options_that_do_not_fit_are_one_line_errors(spot_vxz, tmp_path, extra, message):
    result = CliRunner().invoke(app, ["export", str(spot_vxz), str(tmp_path / "x.glb"), *extra])
    assert result.exit_code != 0
    assert message in result.output
