"""What commands leave behind is what they say (issue 25, part 5): sample files, resumed runs, the index table,
strict JSON."""

import json
import shutil

from typer.testing import CliRunner

from omnivox.cli import app
from tests.cli.conftest import RGBA_IMAGE

runner = CliRunner()
FAST = ["--pipeline", "512", "--texture-size", "64", "--faces", "2000", "--device", "cpu", "--quiet"]


def _glb_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".glb")


def test_samples_go_to_numbered_files_and_resume_exports_every_sample(tiny_weights, assets, tmp_path):
    steps = tmp_path / "steps"
    result = runner.invoke(app, ["generate", str(assets / RGBA_IMAGE), "-w", str(tiny_weights), "-o",
                                 str(tmp_path / "chair.glb"), "--samples", "2", "--seed", "3",
                                 "--save-intermediates", str(steps), *FAST])
    assert result.exit_code == 0, result.output
    assert _glb_files(tmp_path) == ["chair_0.glb", "chair_1.glb"]  # files, not a folder named chair.glb
    assert all((tmp_path / name).read_bytes()[:4] == b"glTF" for name in _glb_files(tmp_path))
    assert json.loads((steps / "run.json").read_text())["num_samples"] == 2

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    result = runner.invoke(app, ["generate", "-", "-w", str(tiny_weights), "-o", str(resumed / "again.glb"),
                                 "--resume", str(steps), *FAST])
    assert result.exit_code == 0, result.output
    assert _glb_files(resumed) == ["again_0.glb", "again_1.glb"]
    for k in range(2):  # the resumed samples are the saved ones: the same meshes
        assert (resumed / f"again_{k}.glb").stat().st_size == (tmp_path / f"chair_{k}.glb").stat().st_size

    folder = tmp_path / "into_folder"
    result = runner.invoke(app, ["generate", "-", "-w", str(tiny_weights), "-o", str(folder), "--resume",
                                 str(steps / "material_latent.safetensors"), *FAST])
    assert result.exit_code == 0, result.output
    assert _glb_files(folder) == ["resumed_0.glb", "resumed_1.glb"]

    result = runner.invoke(app, ["generate", "-", "-w", str(tiny_weights), "-o", str(tmp_path / "x.glb"),
                                 "--resume", str(steps), "--samples", "3", *FAST])
    assert result.exit_code == 1 and "has 2 sample(s)" in result.output
    assert not (tmp_path / "x.glb").exists() and not (tmp_path / "x_0.glb").exists()


def test_data_index_leaves_the_metadata_table_the_readme_names(assets, tmp_path):
    from omnivox.data.metadata import load_table

    root = tmp_path / "root"
    (root / "raw").mkdir(parents=True)
    shutil.copy(assets / "mesh/joined_tetrahedra.obj", root / "raw")
    shutil.copy(assets / "mesh/soup.stl", root / "raw")
    result = runner.invoke(app, ["data", "index", str(root), "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    table = (root / "metadata.csv").read_text().splitlines()
    assert table[0].startswith("sha256,local_path") and len(table) == 3
    assert not list((root / "new_records").glob("*.csv"))
    assert sorted(row["file_identifier"] for row in load_table(root)[1].values()) == [
        "joined_tetrahedra.obj", "soup.stl"]

    # One shard of several: merging while other ranks write is unsafe, so the command says what to run.
    sharded = tmp_path / "sharded"
    shutil.copytree(root / "raw", sharded / "raw")
    result = runner.invoke(app, ["data", "index", str(sharded), "--world-size", "2", "--workers", "0", "--quiet"])
    assert result.exit_code == 0 and f"omnivox data merge {sharded}" in result.output
    assert not (sharded / "metadata.csv").exists()

    result = runner.invoke(app, ["data", "index", str(tmp_path / "nothing"), "--quiet"])
    assert result.exit_code == 2 and "does not exist" in result.output and not (tmp_path / "nothing").exists()


def test_demo_metrics_are_strict_json(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--resolution", "24"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "metrics.json").read_text()

    def refuse(constant):
        raise ValueError(f"metrics.json holds {constant}, which is not JSON")

    metrics = json.loads(text, parse_constant=refuse)
    # The demo stores exact colours, so the PSNR is infinite: null in the file.
    assert [shape["base_color_psnr"] for shape in metrics["shapes"]] == [None, None, None]
    assert all(shape["voxels"] > 0 for shape in metrics["shapes"])
