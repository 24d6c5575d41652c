"""`convert`: raw assets -> O-Voxels (geometry and material) at one or more resolutions, plus mesh dumps.

Per indexed asset (``indexed`` true in ``<ROOT>/metadata.csv``) and resolution R, from one load of the file
(`load_for_dataset`: Blender's axes, the reference's normalisation) and one `scene_to_ovoxel` call:

* ``dual_grid_<R>/<sha>.vxz``: ``vertices`` (3 ch), ``intersected`` (1 ch); records ``dual_grid_converted``,
  ``dual_grid_size`` (voxel count), ``dual_grid_error``;
* ``pbr_voxels_<R>/<sha>.vxz``: ``base_color`` (3), ``metallic``, ``roughness``, ``alpha``; records
  ``pbr_voxelized``, ``num_pbr_voxels``, ``pbr_voxels_error``;
* ``mesh_dumps/<sha>.npz``: the normalised triangles (``vertices`` float32 (V, 3), ``faces`` int32 (F, 3)) the
  shape VAE's render loss compares against; records ``mesh_dumped``, ``mesh_dump_error``.

Decision on axes: TRELLIS.2 data is in Blender's Z-up world, because Blender imported every asset, and its
glTF and OBJ importers turn those formats' Y-up into Z-up with ``(x, y, z) -> (x, -z, y)`` (STL and PLY are
imported unrotated). `load_asset` applies the same mapping (``omnivox.assets.frames``), so our O-Voxels,
mesh dumps and condition renders stand upright exactly like the reference data (and the released models' outputs).

An asset is redone only for the resolutions whose record is missing, false or whose file is gone.

Decision on compression: ``.vxz`` files are written with lzma **preset 6**, not the reference's default 9.
An lzma stream set up at preset 9 allocates a 64 MiB dictionary, which costs about 60 ms per stream; a
small asset has a few streams per chunk, so preset 9 caps small-file writing at a few files per second. Our
streams are far smaller than preset 6's 8 MiB dictionary, so the ratio is unchanged in practice (measured in
``docs/benchmarks/data.md``), and any reference reader decodes the files (the level is not needed to read).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import numpy as np

from omnivox.data import layout
from omnivox.data.metadata import RecordWriter, as_bool, load_table
from omnivox.data.runner import Outcome, StageSummary, Task, atomic_write, in_shard, remove_stale_temps, run_stage
from omnivox.ovoxel.packing import PBR_ATTRIBUTES

VXZ_COMPRESSION = "lzma"
VXZ_LEVEL = 6
GEOMETRY_ATTRS = ("vertices", "intersected")
MATERIAL_ATTRS = PBR_ATTRIBUTES  # the material file holds the PBR channels
DUAL_GRID_COLUMNS = ["sha256", "dual_grid_converted", "dual_grid_size", "dual_grid_error"]
PBR_COLUMNS = ["sha256", "pbr_voxelized", "num_pbr_voxels", "pbr_voxels_error"]
MESH_COLUMNS = ["sha256", "mesh_dumped", "mesh_dump_error"]

if TYPE_CHECKING:
    from omnivox.data.ray_runner import RayCluster, TaskResources


def convert_task_resources(max_resolution: int) -> "TaskResources":
    """What one `convert` task declares on a Ray cluster: one core, and memory for the largest resolution.

    Peak resident memory of one worker on the worst development asset (``mesh/soup.stl``, 100 triangles
    across the whole box) was 0.76 GB at 256 (1.3M voxels) and 1.41 GB at 512 (5.5M voxels): about 0.3 GB of
    libraries plus ~200 bytes per voxel, and voxel counts grow with R^2. Declared: 0.5 GiB + 1.25 GiB x
    (R / 512)^2, rounded up to 0.5 GiB (1 GiB at 256, 2 GiB at 512, 5.5 GiB at 1024); ``--task-memory``
    overrides it for collections of denser assets.
    """
    from omnivox.data.ray_runner import GIB, TaskResources

    half_gib = GIB // 2
    estimate = 0.5 * GIB + 1.25 * GIB * (max_resolution / 512) ** 2
    return TaskResources(num_cpus=1.0, memory=int(-(-estimate // half_gib)) * half_gib)


def load_for_dataset(path):
    """``load_asset`` (which brings the file into Blender's Z-up frame) -> the reference normalisation."""
    from omnivox.assets import load_asset

    return load_asset(path).normalized()


def _write_vxz(path: Path, coords: np.ndarray, attrs: Dict[str, np.ndarray]) -> None:
    from omnivox.ovoxel.io import write_vxz

    write_vxz(path, coords, attrs, compression=VXZ_COMPRESSION, compression_level=VXZ_LEVEL)


def _write_mesh_dump(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, vertices=vertices.astype(np.float32), faces=faces.astype(np.int32))


def convert_asset(task: Task) -> Outcome:
    """Worker: load once, convert at every requested resolution, write files atomically."""
    from omnivox.ovoxel.convert import scene_to_ovoxel

    root, sha, rank = Path(task.payload["root"]), task.key, task.payload["rank"]
    scene = load_for_dataset(task.payload["path"])
    rows: Dict[str, dict] = {}
    if task.payload["mesh_dump"]:
        atomic_write(root / layout.MESH_DUMPS / f"{sha}.npz",
                     lambda temp: _write_mesh_dump(temp, scene.vertices, scene.faces), rank)
        rows[layout.MESH_DUMPS] = {"sha256": sha, "mesh_dumped": True, "mesh_dump_error": ""}
    errors = []
    for resolution in task.payload["resolutions"]:
        try:
            record = scene_to_ovoxel(scene, resolution)
        except (ValueError, RuntimeError, MemoryError) as error:
            # One resolution failing (often memory at 1024) must not discard the others.
            reason = f"{type(error).__name__}: {error}"[:500]
            errors.append(f"{resolution}: {reason}")
            rows[layout.dual_grid_dir(resolution)] = {"sha256": sha, "dual_grid_converted": False,
                                                      "dual_grid_error": reason}
            rows[layout.pbr_voxels_dir(resolution)] = {"sha256": sha, "pbr_voxelized": False,
                                                       "pbr_voxels_error": reason}
            continue
        coords = record.pop("coords")
        geometry = {name: record[name] for name in GEOMETRY_ATTRS}
        material = {name: record[name] for name in MATERIAL_ATTRS}
        atomic_write(root / layout.dual_grid_dir(resolution) / f"{sha}.vxz",
                     lambda temp: _write_vxz(temp, coords, geometry), rank)
        atomic_write(root / layout.pbr_voxels_dir(resolution) / f"{sha}.vxz",
                     lambda temp: _write_vxz(temp, coords, material), rank)
        rows[layout.dual_grid_dir(resolution)] = {"sha256": sha, "dual_grid_converted": True,
                                                  "dual_grid_size": len(coords), "dual_grid_error": ""}
        rows[layout.pbr_voxels_dir(resolution)] = {"sha256": sha, "pbr_voxelized": True,
                                                   "num_pbr_voxels": len(coords), "pbr_voxels_error": ""}
    return Outcome(sha, rows=rows, error="; ".join(errors) if errors else None)


def indexed_assets(root: Path) -> Dict[str, str]:
    """sha256 -> absolute path of every asset the index could load."""
    _, table = load_table(root)
    assets = {}
    for sha, row in table.items():
        if as_bool(row.get("indexed")) and row.get("local_path"):
            path = Path(row["local_path"])
            assets[sha] = str(path if path.is_absolute() else root / path)
    return assets


def paths_workers_read(root: Path, tasks: Sequence[Task]) -> List[str]:
    """The root and the folder of each distinct raw-asset parent a worker must read (checked on every node)."""
    folders = sorted({str(Path(task.payload["path"]).parent) for task in tasks})
    return [str(root.resolve())] + folders[:16]  # a sample is enough to catch a missing mount


def stage_status(root: Path, folder: str, flag: str, error_column: str, suffix: str) -> Dict[str, str]:
    """sha256 -> ``"done"`` (flag true and file present) or ``"failed"`` for one output folder."""
    _, table = load_table(root / folder)
    status = {}
    for sha, row in table.items():
        if as_bool(row.get(flag)) and (root / folder / f"{sha}{suffix}").exists():
            status[sha] = "done"
        elif row.get(error_column):
            status[sha] = "failed"
    return status


def run_convert(root: Path, resolutions: Sequence[int] = (512,), rank: int = 0, world_size: int = 1,
                workers: int = 0, retry_failed: bool = False, mesh_dump: bool = True,
                progress: bool = True, ray: Optional["RayCluster"] = None) -> StageSummary:
    """Convert this shard's indexed assets at ``resolutions``; see the module docstring.

    ``ray``: run each asset as a task on that Ray cluster (`convert_task_resources`) instead of ``workers``.
    """
    root = Path(root).resolve() if ray is not None else Path(root)  # workers on other nodes need absolute paths
    resolutions = sorted({int(r) for r in resolutions})
    if not resolutions or any(r < 2 or r > 4096 for r in resolutions):
        raise ValueError(f"convert: resolutions must be in [2, 4096], got {resolutions}")
    folders = [layout.dual_grid_dir(r) for r in resolutions] + [layout.pbr_voxels_dir(r) for r in resolutions]
    if mesh_dump:
        folders.append(layout.MESH_DUMPS)
    remove_stale_temps([root / f for f in folders], rank)
    status = {r: stage_status(root, layout.dual_grid_dir(r), "dual_grid_converted", "dual_grid_error", ".vxz")
              for r in resolutions}
    pbr_status = {r: stage_status(root, layout.pbr_voxels_dir(r), "pbr_voxelized", "pbr_voxels_error", ".vxz")
                  for r in resolutions}
    mesh_status = stage_status(root, layout.MESH_DUMPS, "mesh_dumped", "mesh_dump_error", ".npz") if mesh_dump else {}
    summary = StageSummary()
    tasks: List[Task] = []
    for sha, path in indexed_assets(root).items():
        if not in_shard(sha, rank, world_size):
            continue
        summary.total += 1
        todo = []
        for r in resolutions:
            states = (status[r].get(sha), pbr_status[r].get(sha))
            if states == ("done", "done"):
                continue
            if "failed" in states and not retry_failed:
                continue
            todo.append(r)
        need_mesh = mesh_dump and mesh_status.get(sha) != "done" and (retry_failed or mesh_status.get(sha) is None)
        if not todo and not need_mesh:
            summary.skipped += 1
            continue
        tasks.append(Task(sha, {"root": str(root), "path": path, "resolutions": todo, "rank": rank,
                                "mesh_dump": need_mesh}))

    def failure_rows(task: Task, error: str) -> dict:
        rows = {}
        for r in task.payload["resolutions"]:
            rows[layout.dual_grid_dir(r)] = {"sha256": task.key, "dual_grid_converted": False, "dual_grid_error": error}
            rows[layout.pbr_voxels_dir(r)] = {"sha256": task.key, "pbr_voxelized": False, "pbr_voxels_error": error}
        if task.payload["mesh_dump"]:
            rows[layout.MESH_DUMPS] = {"sha256": task.key, "mesh_dumped": False, "mesh_dump_error": error}
        return rows

    writers = {}
    for r in resolutions:
        writers[layout.dual_grid_dir(r)] = RecordWriter(root / layout.dual_grid_dir(r), DUAL_GRID_COLUMNS, rank)
        writers[layout.pbr_voxels_dir(r)] = RecordWriter(root / layout.pbr_voxels_dir(r), PBR_COLUMNS, rank)
    if mesh_dump:
        writers[layout.MESH_DUMPS] = RecordWriter(root / layout.MESH_DUMPS, MESH_COLUMNS, rank)
    ray_stage = None
    if ray is not None:
        from omnivox.data.ray_runner import RayStage

        ray_stage = RayStage(ray, ray.resources(convert_task_resources(max(resolutions))),
                             must_see=paths_workers_read(root, tasks))
    result = run_stage(tasks, convert_asset, writers, failure_rows, workers,
                       f"convert {','.join(map(str, resolutions))}", progress=progress, ray=ray_stage)
    summary.done, summary.failed = result.done, result.failed
    return summary
