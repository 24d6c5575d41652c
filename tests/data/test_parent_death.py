"""`omnivox data convert` workers exit within seconds when the main process is killed (SIGKILL: no cleanup
runs in it), and leave no partial output."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omnivox.data import layout
from omnivox.data.index import run_index

REPO = Path(__file__).resolve().parents[2]
SOURCES = ["mesh/spot/spot_triangulated.obj", "gltf/Fox.glb", "mesh/thingi10k/73340.stl", "mesh/stanford-bunny.obj"]
HANG_GUARD_S = 240


def _children(pid: int) -> list:
    """Pids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_main_process_is_killed(assets, tmp_path):
    root = tmp_path / "dataset"
    (root / "raw").mkdir(parents=True)
    for name in SOURCES:
        shutil.copy(assets / name, root / "raw" / Path(name).name)
    assert run_index(root, progress=False).done == len(SOURCES)
    command = [sys.executable, "-c", "from omnivox.cli import app; app()", "data", "convert", str(root),
               "-r", "256", "--workers", "2", "--quiet"]
    process = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        workers = []
        while len(workers) < 2:  # the pool's workers (the resource tracker is a child too)
            assert process.poll() is None and time.monotonic() < deadline
            workers = [pid for pid in _children(process.pid)
                       if "spawn_main" in open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
                       and "resource_tracker" not in open(f"/proc/{pid}/cmdline").read()]
            time.sleep(0.1)
        time.sleep(3.0)  # let them import and start converting
        process.kill()
        process.wait()
        killed = time.monotonic()
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() - killed < 30, "workers outlived their parent"
            time.sleep(0.1)
        # Generous guard against a loaded machine; the design bound is the 1 s watch + 3 s grace.
        assert time.monotonic() - killed < 30
    finally:
        if process.poll() is None:
            process.kill()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    folder = root / layout.dual_grid_dir(256)
    from omnivox.ovoxel.io import read_vxz

    for output in folder.glob("*.vxz") if folder.is_dir() else []:  # visible outputs are complete files
        read_vxz(output)
