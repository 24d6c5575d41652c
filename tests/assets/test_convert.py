"""`omnivox convert` and `scene_to_ovoxel`: one aligned .vxz with geometry and material."""

import numpy as np
from typer.testing import CliRunner

from omnivox.assets import load_asset
from omnivox.cli import app
from omnivox.ovoxel import mesh_to_dual_grid
from omnivox.ovoxel.io import read_vxz
from omnivox.ovoxel.convert import scene_to_ovoxel


def rows_by_coords(coords):
    return {tuple(c): i for i, c in enumerate(np.asarray(coords).tolist())}


def test_convert_writes_aligned_vxz(tmp_path, assets):
    source = assets / "gltf" / "VertexColorTest.glb"
    output = tmp_path / "out.vxz"
    result = CliRunner().invoke(app, ["convert", str(source), str(output), "--resolution", "48"])
    assert result.exit_code == 0, result.output
    coords, attributes = read_vxz(output)
    assert set(attributes) == {"vertices", "intersected", "base_color", "metallic", "roughness", "alpha"}

    scene = load_asset(source).normalized()
    record = scene_to_ovoxel(scene, 48)
    _, dual_vertices, flags = mesh_to_dual_grid(scene.vertices, scene.faces, 48)
    local = dual_vertices * 48 - record["coords"]  # unit box: voxel size 1/48
    np.testing.assert_allclose(record["vertices"] / 255, np.clip(local, 0, 1), atol=1 / 255 + 1e-5)
    np.testing.assert_array_equal(record["intersected"][:, 0], flags[:, 0] + 2 * flags[:, 1] + 4 * flags[:, 2])
    # The file stores the same rows (in its own canonical order).
    row = rows_by_coords(record["coords"])
    order = np.array([row[tuple(c)] for c in coords.tolist()])
    for name, values in attributes.items():
        np.testing.assert_array_equal(values, record[name][order], err_msg=name)


def test_convert_reports_bad_input(tmp_path):
    broken = tmp_path / "broken.glb"
    broken.write_bytes(b"glTF\x02\x00\x00\x00\xff\xff\x00\x00")
    result = CliRunner().invoke(app, ["convert", str(broken), str(tmp_path / "o.vxz")])
    assert result.exit_code == 1
    assert "broken.glb" in result.output and "truncated" in result.output
