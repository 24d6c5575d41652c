"""Commands answer `--help`, `info` and argument errors without importing torch or numba (issue 25, part 3).

Each case runs the command in a fresh interpreter, as a user's shell would. The robust assertion is that neither
torch nor numba was imported; the wall-clock bound is the generous one the issue asks for (5x the targets of
0.5 s for `--help` and 1 s for `info` and argument errors), so a loaded machine does not fail it.
"""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from omnivox.cli import checks

# Runs the `omnivox` console entry point in-process, then reports what it imported.
DRIVER = """
import sys, json
from omnivox.cli import app
code = 0
try:
    app(sys.argv[1:], prog_name="omnivox")
except SystemExit as exit:
    code = exit.code or 0
heavy = sorted(name for name in ("torch", "numba") if name in sys.modules)
print("\\n@@" + json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""
HELP_TARGET_S, LIGHT_TARGET_S = 0.5, 1.0
BOUND = 5  # the issue asks for a test bound; 5x the target leaves room for a loaded machine


def _omnivox(*args, cwd=None):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", DRIVER, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=120)
    seconds = time.perf_counter() - start
    before, _, report = done.stderr.rpartition("\n@@")
    assert report, done.stderr[-3000:]
    return json.loads(report), done.stdout + before, seconds


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """A small `.vxz` file, an existing folder, an image and a folder named like a GLB."""
    from omnivox.ovoxel.io import write_vxz

    root = tmp_path_factory.mktemp("light")
    coords = np.array([[0, 0, 0], [1, 0, 0], [3, 2, 1]])
    write_vxz(root / "small.vxz", coords, {"base_color": np.full((3, 3), 200, np.uint8)})
    (root / "folder").mkdir()
    (root / "x.glb").mkdir()  # what `-o x.glb --samples 2` used to create
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return root


def test_help_imports_neither_torch_nor_numba():
    for args in (["--help"], ["convert", "--help"], ["data", "--help"]):
        report, output, seconds = _omnivox(*args)
        assert report == {"code": 0, "heavy": []}, (args, report)
        assert "Usage" in output
        assert seconds < BOUND * HELP_TARGET_S, f"{args}: {seconds:.2f} s"


def test_info_reads_the_header_without_torch_or_numba(paths):
    report, output, seconds = _omnivox("info", paths / "small.vxz", "--json")
    assert report == {"code": 0, "heavy": []}, output
    header = json.loads(output)
    assert header["num_voxel"] == 3 and header["attributes"] == {"base_color": 3}
    assert seconds < BOUND * LIGHT_TARGET_S, f"{seconds:.2f} s"


@pytest.mark.parametrize("args, message", [
    (["info", "{root}/missing.vxz"], "missing.vxz: no such file"),
    (["info", "{root}/folder"], "is a folder"),
    (["convert", "{root}/missing.glb", "{root}/out.vxz"], "missing.glb: no such file"),
    (["convert", "{root}/folder", "{root}/out.vxz"], "folder is a folder"),
    (["convert", "{root}/image.png", "{root}/out.vxz"], "must be one of .glb"),
    (["convert", "{assets}/mesh/soup.stl", "{root}/folder"], "folder is a folder"),
    (["convert", "{assets}/mesh/soup.stl", "{root}/out.glb"], "must be .vxz"),
    (["convert", "{assets}/mesh/soup.stl", "{root}/out.vxz", "--compression", "brotli"], "compression must be"),
    (["export", "{root}/small.vxz", "{root}/folder"], "folder is a folder"),
    (["export", "{root}/small.vxz", "{root}/out.glb"], "no material attributes"),
    (["export", "{root}/folder", "{root}/out.glb"], "folder is a folder"),
    (["export", "{root}/small.vxz", "{root}/out.glb", "--uv", "lscm"], "--uv must be voxel or xatlas"),
    (["render", "{root}/folder", "-o", "{root}/x.png"], "folder is a folder"),
    (["render", "{root}/small.vxz", "-o", "{root}/folder"], "folder is a folder"),
    (["render", "{root}/small.vxz", "-o", "{root}/x.bmp"], "output must be one of"),
    (["generate", "{root}/image.png", "-w", "{root}/folder", "-o", "{root}/x.glb"], "x.glb is a folder"),
    (["generate", "{root}/image.png", "-w", "{root}/folder", "-o", "{root}/out.glb"], "no pipeline.json"),
    (["generate", "{root}/missing.png", "-w", "{root}/folder", "-o", "{root}/out.glb"], "missing.png: no such file"),
    (["generate", "{root}/folder", "-w", "{root}/folder", "-o", "{root}/out.glb"], "no images"),
    (["generate", "-", "--resume", "{root}/folder", "-w", "{root}/folder", "-o", "{root}/out.glb"], "no run.json"),
    (["texture", "{assets}/mesh/soup.stl", "{root}/image.png", "-w", "{root}/folder", "-o", "{root}/folder"],
     "folder is a folder"),
    (["texture", "{root}/folder", "{root}/image.png", "-w", "{root}/folder", "-o", "{root}/t.glb"],
     "folder is a folder"),
    (["train", "-c", "{root}/missing.json", "-o", "{root}/run", "-d", "{root}/folder"], "missing.json not found"),
    (["demo", "--out", "{root}/small.vxz"], "small.vxz is a file"),
    (["data", "convert", "{root}/nowhere"], "nowhere does not exist"),
    (["data", "render", "{root}/small.vxz"], "small.vxz is a file"),
])
def test_argument_errors_come_before_heavy_imports(paths, assets, args, message):
    args = [a.format(root=paths, assets=assets) for a in args]
    report, output, seconds = _omnivox(*args)
    assert report["code"] not in (0, None) and report["heavy"] == [], (args, report, output)
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], output  # one line, saying what is wrong
    assert seconds < BOUND * LIGHT_TARGET_S, f"{args}: {seconds:.2f} s"


def test_light_import_paths_keep_the_public_names():
    """The lazy package attributes still resolve to the objects of their modules."""
    import omnivox.ovoxel as ovoxel
    import omnivox.ovoxel.io as io
    import omnivox.pipelines as pipelines
    import omnivox.train as train
    from omnivox.ovoxel.dual_grid import mesh_to_dual_grid
    from omnivox.ovoxel.io.vxz import read_vxz

    for package in (ovoxel, io, pipelines, train):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
            assert name in dir(package)
    assert ovoxel.mesh_to_dual_grid is mesh_to_dual_grid and io.read_vxz is read_vxz
    with pytest.raises(AttributeError):
        ovoxel.no_such_name  # noqa: B018


def test_cli_lists_match_the_libraries():
    """The suffix and filter lists the light paths keep agree with the libraries they stand in for."""
    from omnivox.assets import SUPPORTED_SUFFIXES
    from omnivox.ovoxel.io import filters, vxz

    assert checks.ASSET_SUFFIXES == SUPPORTED_SUFFIXES
    assert vxz.FILTERS == filters.FILTERS
