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


def test_one_failing_resolution_keeps_the_others(assets, tmp_path):
    from omnivox.data import layout
    from omnivox.data.convert import convert_asset
    from omnivox.data.runner import Task

    task = Task("ab" * 32, {"root": str(tmp_path), "path": str(assets / "mesh/joined_tetrahedra.obj"),
                            "resolutions": [1, 8], "rank": 0, "mesh_dump": False})
    outcome = convert_asset(task)  # at 1^3 the voxel is too large for the material weights: ValueError
    assert outcome.error.startswith("1: ValueError")
    assert outcome.rows[layout.dual_grid_dir(1)]["dual_grid_converted"] is False
    assert outcome.rows[layout.dual_grid_dir(8)]["dual_grid_converted"] is True
    assert (tmp_path / layout.dual_grid_dir(8) / f"{task.key}.vxz").is_file()
    assert not (tmp_path / layout.dual_grid_dir(1)).exists()


def test_columns_import_feeds_the_aesthetic_filter(tmp_path):
    from omnivox.data.metadata import load_table

    root = tmp_path / "root"
    root.mkdir()
    good = tmp_path / "scores.csv"
    good.write_text("sha256,aesthetic_score,other\n" + "a" * 64 + ",5.5,x\n" + "B" * 64 + ",3.0,y\n")
    runner = CliRunner()
    result = runner.invoke(app, ["data", "columns", str(root), str(good), "--column", "aesthetic_score"])
    assert result.exit_code == 0 and "2 rows" in result.output, result.output
    columns, table = load_table(root)
    assert columns == ["sha256", "aesthetic_score"] and table["b" * 64]["aesthetic_score"] == "3.0"
    bad = tmp_path / "bad.csv"
    bad.write_text("sha256,aesthetic_score\nnot-a-hash,1\n")
    result = runner.invoke(app, ["data", "columns", str(root), str(bad)])
    assert result.exit_code == 2 and "is not a sha256" in result.output
