"""The `omnivox demo` and `omnivox info` commands, run as a user would (in-process through typer's runner)."""

import json

from typer.testing import CliRunner

from omnivox.cli import app

runner = CliRunner()


def test_demo_writes_outputs_and_reports_fidelity(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--resolution", "64"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    names = [s["name"] for s in metrics["shapes"]]
    assert names == ["torus", "sheet", "fins"]
    for shape in metrics["shapes"]:
        assert (tmp_path / f"{shape['name']}.vxz").stat().st_size > 0
        assert (tmp_path / f"{shape['name']}.ply").stat().st_size > 0
        glb = tmp_path / f"{shape['name']}.glb"
        assert glb.read_bytes()[:4] == b"glTF" and shape["glb_bytes"] == glb.stat().st_size
        assert shape["voxels"] > 0
        assert _not_blank(tmp_path / f"{shape['name']}_pbr.png")  # the PBR panel rendered from the .vxz
        # Round trip within a fraction of a voxel (1/64): Chamfer (squared) well below one voxel squared.
        assert shape["chamfer_x1e6"] < 0.05 * (1e6 / 64**2)
        assert shape["normal_consistency"] > 0.97
    assert "Chamfer" in result.output and "torus" in result.output

    info = runner.invoke(app, ["info", str(tmp_path / "torus.vxz"), "--json"])
    assert info.exit_code == 0, info.output
    header = json.loads(info.output)
    assert header["num_voxel"] == metrics["shapes"][0]["voxels"]
    assert header["attributes"] == {"vertices": 3, "intersected": 1, "base_color": 3, "metallic": 1,
                                    "roughness": 1, "alpha": 1}
    text = runner.invoke(app, ["info", str(tmp_path / "torus.vxz")])
    assert text.exit_code == 0 and "voxels" in text.output


def _not_blank(png) -> bool:
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return image.shape[1] > image.shape[0] and (abs(image - 255).sum(-1) > 30).mean() > 0.05


def test_info_rejects_a_file_that_is_not_vxz(tmp_path):
    bad = tmp_path / "bad.vxz"
    bad.write_bytes(b"not a voxel file at all")
    result = runner.invoke(app, ["info", str(bad)])
    assert result.exit_code == 1
    assert "bad.vxz" in result.output and "not a .vxz file" in result.output
