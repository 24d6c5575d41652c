"""`omnivox convert` -> `omnivox info` / `omnivox export` keep a file right side up (issue 25, part 1)."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from omnivox.cli import app
from tests.assets.two_tone import is_blue, is_red, read_glb_independently, texel_at, write_two_tone_gltf


def test_convert_info_export_round_trip_is_upright(tmp_path):
    runner = CliRunner()
    source = write_two_tone_gltf(tmp_path / "in")
    vxz, glb = tmp_path / "quad.vxz", tmp_path / "quad.glb"
    result = runner.invoke(app, ["convert", str(source), str(vxz), "-r", "32"])
    assert result.exit_code == 0, result.output
    assert "Y-up file" in result.output
    info = runner.invoke(app, ["info", str(vxz), "--json"])
    assert info.exit_code == 0 and json.loads(info.output)["source_up_axis"] == "y"
    assert "converted from a Y-up file" in runner.invoke(app, ["info", str(vxz)]).output
    result = runner.invoke(app, ["export", str(vxz), str(glb), "--texture-size", "32", "--faces", "0"])
    assert result.exit_code == 0, result.output
    positions, uv, triangles, image = read_glb_independently(glb)
    assert np.ptp(positions[:, 1]) > 5 * np.ptp(positions[:, 2])  # standing, as in the file (glTF +Y up)
    up = positions[triangles].mean(1)[:, 1]
    colour = texel_at(image, uv[triangles].mean(1))
    assert is_red(colour[up > 0.05]).mean() > 0.97 and is_blue(colour[up < -0.05]).mean() > 0.97


def test_up_override_and_bad_value(tmp_path):
    runner = CliRunner()
    source = write_two_tone_gltf(tmp_path / "in")
    vxz = tmp_path / "lying.vxz"
    result = runner.invoke(app, ["convert", str(source), str(vxz), "-r", "16", "--up", "z"])
    assert result.exit_code == 0, result.output
    from omnivox.ovoxel.io import read_vxz

    coords, _ = read_vxz(vxz)
    assert np.ptp(coords[:, 2]) <= 1 < np.ptp(coords[:, 1])  # taken as Z-up: the quad lies flat
    bad = runner.invoke(app, ["convert", str(source), str(tmp_path / "x.vxz"), "--up", "x"])
    assert bad.exit_code == 1 and "--up must be y or z" in bad.output


def test_device_default_is_cuda_when_present(monkeypatch):
    import torch

    from omnivox.cli.checks import compute_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute_device(None) == "cpu" and compute_device("cpu") == "cpu"
    import pytest

    with pytest.raises(ValueError, match="no CUDA device"):
        compute_device("cuda")
    with pytest.raises(ValueError, match="--device must be cpu or cuda"):
        compute_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compute_device(None) == "cuda"
