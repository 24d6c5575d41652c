"""The data stages on a local Ray instance (2 CPUs) against the local runner: same root, killed workers, failures.

The Ray instance is started once for the module and shut down after it. Local and Ray runs use the same
dataset root path one after the other (the local result is copied aside), so recorded paths and messages agree.
"""

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from omnivox.data import layout
from omnivox.data.convert import run_convert
from omnivox.data.encode import run_encode
from omnivox.data.index import run_index
from omnivox.data.metadata import RECORDS_DIR, load_table, part_files
from omnivox.data.ray_runner import RayCluster, RayClusterError, _task_body
from omnivox.data.render import run_render
from omnivox.data.runner import WORKER_DIED_TWICE
from omnivox.data.stats import stage_folders
from omnivox.models import FlexiDualGridVaeEncoder, SparseUnetVaeEncoder, save_pretrained
from tests.conftest import HANG_GUARD_S, _assets_dir
from tests.models.helpers import randomize, tiny_encoder_config

RESOLUTION = 64
SOURCES = ["gltf/Fox.glb", "gltf/VertexColorTest.glb", "gltf/OrientationTest.glb", "mesh/joined_tetrahedra.obj",
           "mesh/large_block.STL", "mesh/thingi10k/73340.stl", "mesh/thingi10k/68254.stl", "mesh/featuretype.STL"]
# Indexed, then overwritten with garbage before convert: the convert failure every run must record.
REPO = Path(__file__).resolve().parents[2]
SPOILED = "spoiled.obj"
SPOILED_TEXT = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
# Ray runs: CPU stages at one core per task; GPU stages declared with 0 GPUs so they run here on the CPU.
CLUSTER = RayCluster(address="auto", gpus_per_task=0.0)


@pytest.fixture(scope="module")
def ray_instance():
    if os.environ.get("CI"):
        import ray  # CI installs the test extra, which includes Ray: its absence is a failure there
    else:
        ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray_ckpts")
    save_pretrained(randomize(FlexiDualGridVaeEncoder(tiny_encoder_config()), seed=1), folder / "shape_enc_tiny")
    save_pretrained(randomize(SparseUnetVaeEncoder(tiny_encoder_config()), seed=2), folder / "tex_enc_tiny")
    return folder


def _fill_raw(root: Path, assets: Path, names=SOURCES) -> None:
    raw = root / "raw"
    raw.mkdir(parents=True)
    for name in names:
        shutil.copy(assets / name, raw / Path(name).name)
    (raw / "broken.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")  # fails index
    (raw / SPOILED).write_text(SPOILED_TEXT)


def _all_stages(root: Path, checkpoints: Path, cluster, workers: int = 0) -> dict:
    """index -> (spoil one asset) -> convert -> render -> (spoil one material O-Voxel) -> encode; local when
    ``cluster`` is None (convert in a pool of ``workers`` processes, the rest in-process)."""
    summaries = {"index": run_index(root, progress=False, ray=cluster)}
    (root / "raw" / SPOILED).write_text("f 1 2 999\n")  # no vertices: convert fails to load it
    summaries["convert"] = run_convert(root, [RESOLUTION], progress=False, ray=cluster, workers=workers)
    summaries["render"] = run_render(root, num_views=2, size=32, progress=False, ray=cluster)
    # One asset's material encoding fails while its shape encoding succeeds (one stage runs both encoders); the
    # O-Voxel is restored afterwards, so the converted files stay those of a plain convert.
    material = _spoiled_material(root)
    converted = material.read_bytes()
    material.write_bytes(b"not an O-Voxel")
    summaries["encode"] = run_encode(root, RESOLUTION, checkpoints / "shape_enc_tiny", checkpoints / "tex_enc_tiny",
                                     progress=False, ray=cluster)
    material.write_bytes(converted)
    return {name: vars(summary) for name, summary in summaries.items()}


def _spoiled_material(root: Path) -> Path:
    return sorted((root / layout.pbr_voxels_dir(RESOLUTION)).glob("*.vxz"))[0]


class PoolStarts(logging.Handler):
    """Counts the pools of actors `ray_runner` starts (its log record carrying ``actors_ready_s``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self._logger = logging.getLogger("omnivox.data.ray_runner")

    def emit(self, record: logging.LogRecord) -> None:
        self.count += hasattr(record, "actors_ready_s")

    def __enter__(self) -> "PoolStarts":
        self._level = self._logger.level
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)


def _outputs(root: Path) -> dict:
    """Every file of the root except raw/ and the record part files: relative path -> bytes."""
    files = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and relative.parts[0] != "raw" and RECORDS_DIR not in relative.parts:
            files[relative.as_posix()] = path.read_bytes()
    return files


def _records(root: Path) -> dict:
    """Each stage folder's rows. Excluded on purpose, as run-specific: the part files' names
    (``part_r<rank>_<time_ns>_<pid>.csv``) and the order of rows (the order assets finished in)."""
    return {name: load_table(root / name) for name, _ in stage_folders(root)}


def _rows_per_asset(folder: Path) -> dict:
    """sha256 -> how many rows all part files of ``folder`` hold for it (1 = recorded exactly once)."""
    counts = {}
    for part in part_files(folder):
        for line in part.read_text().splitlines()[1:]:
            sha = line.split(",")[0]
            counts[sha] = counts.get(sha, 0) + 1
    return counts


def _clear_outputs(root: Path) -> None:
    for entry in root.iterdir():
        if entry.name != "raw":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat") as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


class WorkerKiller:
    """Background thread that SIGKILLs this test's Ray workers while they run an asset task (``ray::_task_body``,
    the process title Ray gives a worker executing it), at most ``limit`` times."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.killed = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._title = f"ray::{_task_body.__name__}".encode()

    def __enter__(self) -> "WorkerKiller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set() and len(self.killed) < self.limit:
            for path in glob.glob("/proc/[0-9]*/cmdline"):
                pid = int(path.split("/")[2])
                try:
                    with open(path, "rb") as handle:
                        title = handle.read()
                except OSError:
                    continue
                if title.split(b"\0")[0] == self._title and pid not in self.killed and _descends_from(pid, os.getpid()):
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                    break
            time.sleep(0.005)


# The local reference run: a fresh process on one thread per asset, as each Ray task declaring one CPU (pool
# workers already are). The encoders' float sums depend on the thread counts: torch's is fixed by
# OMP_NUM_THREADS at process start (Ray sets it for its workers; set_num_threads later does not give the same
# bits), numba's by numba.set_num_threads. Only the in-process stages (encode here) need this pinning.
LOCAL_RUN = """
import json, sys
from pathlib import Path
from omnivox.data.runner import limit_threads
from tests.data.test_ray import _all_stages
limit_threads(1)
summaries = _all_stages(Path(sys.argv[1]), Path(sys.argv[2]), None, workers=2)
print(json.dumps({"summaries": summaries, "ray_imported": "ray" in sys.modules}))
"""


@pytest.fixture(scope="module")
def local_and_ray(ray_instance, checkpoints, tmp_path_factory):
    """The same root built by the local runner (copied aside) and then by Ray."""
    base = tmp_path_factory.mktemp("ray_vs_local")
    root = base / "dataset"
    _fill_raw(root, _assets_dir())
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", LOCAL_RUN, str(root), str(checkpoints)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-3000:]
    local_run = json.loads(result.stdout.strip().splitlines()[-1])
    local = base / "local"
    shutil.copytree(root, local)
    _clear_outputs(root)
    (root / "raw" / SPOILED).write_text(SPOILED_TEXT)  # what the local run's index hashed
    with PoolStarts() as pools:
        ray_summaries = _all_stages(root, checkpoints, CLUSTER)
    return {"root": root, "local": local, "local_summaries": local_run["summaries"],
            "local_imported_ray": local_run["ray_imported"], "ray_summaries": ray_summaries,
            "actor_pools": pools.count}


def test_ray_and_local_runs_give_identical_roots(local_and_ray):
    root, local = local_and_ray["root"], local_and_ray["local"]
    assert local_and_ray["local_imported_ray"] is False  # the local runner needs no Ray
    assert local_and_ray["ray_summaries"] == local_and_ray["local_summaries"]
    assert local_and_ray["ray_summaries"]["convert"] == {"total": 9, "skipped": 0, "done": 8, "failed": 1}
    ray_files, local_files = _outputs(root), _outputs(local)
    assert sorted(ray_files) == sorted(local_files)
    kinds = {Path(name).suffix for name in ray_files}
    assert {".vxz", ".npz", ".png", ".json"} <= kinds  # O-Voxels, mesh dumps and latents, views, transforms
    different = [name for name in ray_files if ray_files[name] != local_files[name]]
    assert different == []
    assert _records(root) == _records(local)


def test_one_pool_of_actors_encodes_shape_and_material(local_and_ray):
    """Ray's encode starts its actors (a fresh process each, loading the models) once for both encoders."""
    assert local_and_ray["actor_pools"] == 1
    assert local_and_ray["ray_summaries"]["encode"] == {"total": 16, "skipped": 0, "done": 15, "failed": 1}


def test_failures_are_recorded_with_their_reason(local_and_ray):
    root = local_and_ray["root"]
    _, index = load_table(root)
    rows = {row["file_identifier"]: row for row in index.values()}
    assert rows["broken.glb"]["indexed"] == "False" and "broken.glb" in rows["broken.glb"]["index_error"]
    spoiled = rows[SPOILED]["sha256"]
    _, converted = load_table(root / layout.dual_grid_dir(RESOLUTION))
    assert converted[spoiled]["dual_grid_converted"] == "False"
    assert converted[spoiled]["dual_grid_error"].startswith(("ValueError", "IndexError"))
    assert not (root / layout.dual_grid_dir(RESOLUTION) / f"{spoiled}.vxz").exists()
    # The spoiled material O-Voxel: its material latent failed, its shape latent was written.
    material = _spoiled_material(root).stem
    _, pbr = load_table(root / layout.pbr_latents_dir("tex_enc_tiny", RESOLUTION))
    assert pbr[material]["pbr_latent_encoded"] == "False" and pbr[material]["pbr_latent_error"]
    assert sum(row["pbr_latent_encoded"] == "True" for row in pbr.values()) == len(SOURCES) - 1
    _, shape = load_table(root / layout.shape_latents_dir("shape_enc_tiny", RESOLUTION))
    assert shape[material]["shape_latent_encoded"] == "True" and len(shape) == len(SOURCES)


def test_killed_worker_is_retried_and_a_rerun_has_nothing_left(ray_instance, local_and_ray, assets, tmp_path):
    root = tmp_path / "dataset"
    _fill_raw(root, assets)
    assert run_index(root, progress=False, ray=CLUSTER).done == len(SOURCES) + 1
    (root / "raw" / SPOILED).write_text("f 1 2 999\n")
    with WorkerKiller(limit=1) as killer:
        summary = run_convert(root, [RESOLUTION], progress=False, ray=CLUSTER)
    assert len(killer.killed) == 1
    assert (summary.done, summary.failed) == (len(SOURCES), 1)  # the killed asset was retried, not lost
    for folder in (layout.dual_grid_dir(RESOLUTION), layout.pbr_voxels_dir(RESOLUTION), layout.MESH_DUMPS):
        counts = _rows_per_asset(root / folder)
        assert len(counts) == len(SOURCES) + 1 and set(counts.values()) == {1}  # every asset recorded exactly once
        assert not [p for p in (root / folder).iterdir() if p.name.endswith(".tmp")]
    # The outputs are those of the undisturbed runs.
    reference = local_and_ray["local"]
    for path in (root / layout.dual_grid_dir(RESOLUTION)).glob("*.vxz"):
        assert path.read_bytes() == (reference / path.relative_to(root)).read_bytes()
    again = run_convert(root, [RESOLUTION], progress=False, ray=CLUSTER)
    assert (again.total, again.skipped, again.done, again.failed) == (len(SOURCES) + 1, len(SOURCES) + 1, 0, 0)
    assert set(_rows_per_asset(root / layout.dual_grid_dir(RESOLUTION)).values()) == {1}


def test_an_asset_whose_worker_dies_twice_is_recorded_and_retried_on_request(ray_instance, assets, tmp_path):
    root = tmp_path / "dataset"
    raw = root / "raw"
    raw.mkdir(parents=True)
    shutil.copy(assets / "gltf/Fox.glb", raw)
    run_index(root, progress=False, ray=CLUSTER)
    with WorkerKiller(limit=2) as killer:
        summary = run_convert(root, [RESOLUTION], progress=False, ray=CLUSTER)
    assert len(killer.killed) == 2 and (summary.done, summary.failed) == (0, 1)
    _, rows = load_table(root / layout.dual_grid_dir(RESOLUTION))
    (row,) = rows.values()
    assert row["dual_grid_converted"] == "False" and row["dual_grid_error"] == WORKER_DIED_TWICE
    assert run_convert(root, [RESOLUTION], progress=False, ray=CLUSTER).skipped == 1
    retried = run_convert(root, [RESOLUTION], progress=False, ray=CLUSTER, retry_failed=True)
    assert (retried.done, retried.failed) == (1, 0)


def test_gpu_stages_declare_half_a_gpu_per_task(ray_instance, local_and_ray, checkpoints, tmp_path):
    """The module's cluster has no GPU: the default declaration (0.5 GPU) must be refused before any task runs."""
    root = tmp_path / "dataset"
    shutil.copytree(local_and_ray["local"], root)
    shutil.rmtree(root / layout.RENDERS_COND)
    shutil.rmtree(root / "shape_latents")
    with pytest.raises(RayClusterError, match=r"needing 1 CPU, 0.5 GPU .*0 GPU"):
        run_render(root, num_views=2, size=32, progress=False, ray=RayCluster())
    assert not part_files(root / layout.RENDERS_COND)  # nothing ran, nothing recorded
    with pytest.raises(RayClusterError, match=r"needing 1 CPU, 0.5 GPU"):
        run_encode(root, RESOLUTION, checkpoints / "shape_enc_tiny", progress=False, ray=RayCluster())
    assert not part_files(root / layout.shape_latents_dir("shape_enc_tiny", RESOLUTION))


def test_workers_that_cannot_see_the_root_stop_the_stage_before_any_asset(ray_instance, tmp_path):
    from omnivox.data.ray_runner import RayStage, TaskResources, check_workers

    missing = tmp_path / "not_mounted"
    with pytest.raises(RayClusterError, match=f"cannot read {missing}: mount the shared filesystem"):
        check_workers(ray_instance, RayStage(CLUSTER, TaskResources(), must_see=[str(tmp_path), str(missing)]))
    assert len(check_workers(ray_instance, RayStage(CLUSTER, TaskResources(), must_see=[str(tmp_path)]))) == 1


def test_command_line_runs_a_stage_on_the_cluster(ray_instance, local_and_ray, tmp_path):
    from typer.testing import CliRunner

    from omnivox.cli import app

    root = tmp_path / "dataset"
    shutil.copytree(local_and_ray["local"], root)
    result = CliRunner().invoke(app, ["data", "convert", str(root), "-r", "32", "--ray", "auto", "--task-memory",
                                      "0.5", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"{len(SOURCES) + 1} assets in shard, 0 already handled, {len(SOURCES)} done, 1 failed" in result.output
    assert len(list((root / layout.dual_grid_dir(32)).glob("*.vxz"))) == len(SOURCES)


def test_ray_options_without_ray_installed_or_without_ray_say_what_to_do(tmp_path, monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from omnivox.cli import app

    root = tmp_path / "dataset"
    root.mkdir()
    result = CliRunner().invoke(app, ["data", "convert", str(root), "--task-memory", "2"])
    assert result.exit_code == 2 and "--task-cpus/--task-memory/--task-gpus need --ray" in result.output
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "ray" else
                        find_spec(name, *args))
    result = CliRunner().invoke(app, ["data", "convert", str(root), "--ray", "auto"])
    assert result.exit_code == 2
    assert result.output.strip() == 'omnivox data convert: Ray is not installed: pip install "omnivox[ray]"'


def test_killed_driver_loses_nothing_and_the_same_command_finishes(ray_instance, local_and_ray, tmp_path):
    """A driver SIGKILLed after its first recorded asset: the re-run does the rest, each asset recorded once."""
    root = tmp_path / "dataset"
    shutil.copytree(local_and_ray["local"], root)
    converted = [layout.dual_grid_dir(RESOLUTION), layout.pbr_voxels_dir(RESOLUTION), layout.MESH_DUMPS]
    for folder in converted:
        shutil.rmtree(root / folder)
    address = ray_instance.get_runtime_context().gcs_address
    command = [sys.executable, "-c", "from omnivox.cli import app; app()", "data", "convert", str(root),
               "-r", str(RESOLUTION), "--ray", address, "--quiet"]
    driver = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + HANG_GUARD_S
    while not _rows_per_asset(root / layout.dual_grid_dir(RESOLUTION)):
        assert driver.poll() is None, driver.communicate()
        assert time.monotonic() < deadline, "the Ray driver recorded nothing"
        time.sleep(0.01)
    driver.kill()
    driver.wait()
    recorded = len(_rows_per_asset(root / layout.dual_grid_dir(RESOLUTION)))
    assert 1 <= recorded < len(SOURCES) + 1  # killed mid-run
    again = run_convert(root, [RESOLUTION], progress=False, ray=CLUSTER)
    assert again.skipped == recorded and again.done + again.failed == len(SOURCES) + 1 - recorded
    for folder in converted:
        counts = _rows_per_asset(root / folder)
        assert len(counts) == len(SOURCES) + 1 and set(counts.values()) == {1}
        assert not [p for p in (root / folder).iterdir() if p.name.endswith(".tmp")]
        for path in (root / folder).glob("*.*"):
            assert path.read_bytes() == (local_and_ray["local"] / path.relative_to(root)).read_bytes()


def test_convert_declares_memory_by_resolution_and_the_cluster_counts_slots_by_every_resource(ray_instance):
    from omnivox.data.convert import convert_task_resources
    from omnivox.data.ray_runner import GIB, TaskResources, cluster_slots

    assert [convert_task_resources(r).memory / GIB for r in (256, 512, 1024)] == [1.0, 2.0, 5.5]
    assert RayCluster(memory_per_task=3 * GIB).resources(convert_task_resources(1024)).memory == 3 * GIB
    assert RayCluster(cpus_per_task=2).resources(convert_task_resources(256)) == TaskResources(2, GIB, 0)
    assert cluster_slots(ray_instance, TaskResources(num_cpus=1)) == 2
    assert cluster_slots(ray_instance, TaskResources(num_cpus=2)) == 1
    memory = ray_instance.cluster_resources()["memory"]
    assert cluster_slots(ray_instance, TaskResources(num_cpus=1, memory=int(memory * 0.6))) == 1  # memory-bound
    with pytest.raises(RayClusterError, match="needing 3 CPU"):
        cluster_slots(ray_instance, TaskResources(num_cpus=3))
