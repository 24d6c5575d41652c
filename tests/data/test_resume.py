"""Crash and Ctrl-C in the middle of a real `omnivox data convert` process, then a re-run completes cleanly."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from omnivox.data import layout
from omnivox.data.convert import run_convert
from omnivox.data.index import run_index
from omnivox.data.metadata import load_table, merge_records
from omnivox.ovoxel.io import read_vxz
from tests.conftest import HANG_GUARD_S

REPO = Path(__file__).resolve().parents[2]
RESOLUTION = 96
SOURCES = ["mesh/spot/spot_triangulated.obj", "gltf/Fox.glb", "mesh/joined_tetrahedra.obj", "mesh/soup.stl",
           "mesh/thingi10k/73340.stl", "mesh/thingi10k/68254.stl", "mesh/featuretype.STL"]


def _start_convert(root: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", "from omnivox.cli import app; app()", "data", "convert", str(root),
               "-r", str(RESOLUTION), "--workers", "1", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # Own process group, like a job under a shell: signals reach the main process and its workers.
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _outputs(root: Path) -> list:
    return sorted((root / layout.dual_grid_dir(RESOLUTION)).glob("*.vxz"))


def _wait_for_outputs(root: Path, process: subprocess.Popen, count: int, timeout: float = HANG_GUARD_S) -> None:
    deadline = time.monotonic() + timeout
    while len(_outputs(root)) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "convert produced no output in time"
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_kill_and_ctrl_c_mid_run_then_rerun_completes_without_duplicates(assets, tmp_path):
    root = tmp_path / "dataset"
    for name in SOURCES:
        (root / "raw").mkdir(parents=True, exist_ok=True)
        shutil.copy(assets / name, root / "raw" / Path(name).name)
    assert run_index(root, progress=False).done == len(SOURCES)

    # 1. A crash: the whole job is killed with SIGKILL right after its first asset is written.
    process = _start_convert(root)
    _wait_for_outputs(root, process, 1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=HANG_GUARD_S)
    # 2. Ctrl-C: SIGINT to the process group; the run stops its worker and exits with 130.
    process = _start_convert(root)
    _wait_for_outputs(root, process, 2)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == 130, stderr.decode()[-2000:]
    assert b"interrupted" in stderr
    deadline = time.monotonic() + 10
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(process.pid), "worker processes outlived the interrupted run"

    done_before = len(_outputs(root))
    assert 2 <= done_before < len(SOURCES), "the interruptions came too late to test anything"
    # 3. The re-run skips what is recorded as done and finishes the rest.
    summary = run_convert(root, [RESOLUTION], progress=False)
    assert summary.failed == 0 and summary.done + summary.skipped == len(SOURCES)
    assert summary.done >= len(SOURCES) - done_before

    for folder in (layout.dual_grid_dir(RESOLUTION), layout.pbr_voxels_dir(RESOLUTION), layout.MESH_DUMPS):
        files = sorted(p.name for p in (root / folder).iterdir() if p.is_file())
        assert len(files) == len(SOURCES) and not [f for f in files if f.startswith(".")], files
    _, index = load_table(root)
    assert merge_records(root / layout.dual_grid_dir(RESOLUTION)) == len(SOURCES)
    _, table = load_table(root / layout.dual_grid_dir(RESOLUTION))
    assert set(table) == set(index)
    for sha, row in table.items():
        coords, attrs = read_vxz(root / layout.dual_grid_dir(RESOLUTION) / f"{sha}.vxz")  # complete files only
        assert row["dual_grid_converted"] == "True" and int(row["dual_grid_size"]) == len(coords) > 0
        assert attrs["vertices"].shape == (len(coords), 3) and np.all(attrs["intersected"] < 8)
    # 4. Nothing left to do.
    again = run_convert(root, [RESOLUTION], progress=False)
    assert (again.skipped, again.done, again.failed) == (len(SOURCES), 0, 0)
