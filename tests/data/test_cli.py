"""`omnivox data` commands on a two-asset folder (in-process, no pool)."""

import shutil

from typer.testing import CliRunner

from omnivox.cli import app


def test_index_convert_stats_merge_from_the_command_line(assets, tmp_path):
    root = tmp_path / "root"
    (root / "raw").mkdir(parents=True)
    shutil.copy(assets / "mesh/joined_tetrahedra.obj", root / "raw")
    shutil.copy(assets / "mesh/soup.stl", root / "raw")
    (root / "raw" / "notes.usdz").write_bytes(b"PK")
    runner = CliRunner()
    result = runner.invoke(app, ["data", "index", str(root), "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "3 assets in shard, 0 already handled, 2 done, 1 failed" in result.output
    result = runner.invoke(app, ["data", "convert", str(root), "-r", "16,32", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "2 done, 0 failed" in result.output
    result = runner.invoke(app, ["data", "stats", str(root)])
    assert result.exit_code == 0, result.output
    assert "index: 2 done, 1 failed" in result.output and "unsupported format .usdz" in result.output
    assert "dual_grid_16: 2 done, 0 failed" in result.output and "pbr_voxels_32: 2 done" in result.output
    assert (root / "statistics.txt").read_text().startswith("index: 2 done, 1 failed")
    result = runner.invoke(app, ["data", "merge", str(root)])
    assert result.exit_code == 0 and "dual_grid_32: 2 rows" in result.output
    assert not list(root.glob("**/new_records/*.csv"))
    result = runner.invoke(app, ["data", "convert", str(root), "-r", "16,x"])
    assert result.exit_code != 0 and "--resolution" in result.output
    result = runner.invoke(app, ["data", "convert", str(root), "-r", "1", "--workers", "0"])
    assert result.exit_code == 2 and "resolutions must be in [2, 4096]" in result.output
