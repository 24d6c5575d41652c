"""`index`: scan a folder of raw assets into the dataset root's metadata table.

One row per distinct file content (key ``sha256`` of the file bytes; for a multi-file glTF, of the
``.gltf`` file itself) in ``<ROOT>/metadata.csv``:

``local_path`` (relative to the root when inside it), ``file_identifier`` (path relative to the scanned
folder), ``file_size`` (bytes), ``num_faces``, ``num_vertices``, ``num_materials``, ``num_basecolor_tex``,
``num_metallic_tex``, ``num_roughness_tex`` (a glTF metallic-roughness texture counts for both),
``num_alpha_tex`` (base colour textures with a non-opaque alpha channel on MASK/BLEND materials),
``license`` (glTF ``asset.copyright`` or the first line of a LICENSE file beside the asset, when present),
``indexed`` (the file loads) and ``index_error`` (why not).

Files with extensions of other 3D formats (FBX, Blender, USD, ...) are recorded as failures ("unsupported
format") so `stats` shows what the folder holds that we cannot read. Files already indexed with the same
path and size are skipped on re-runs. Two files with the same bytes share one row (the later path wins).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

from omnivox.data.metadata import RecordWriter, as_bool, load_table
from omnivox.data.runner import Outcome, StageSummary, Task, in_shard, run_stage

if TYPE_CHECKING:
    from omnivox.data.ray_runner import RayCluster

SUPPORTED = (".glb", ".gltf", ".obj", ".ply", ".stl")
# Recognised as 3D assets so they are reported, but not readable without Blender/assimp.
UNSUPPORTED = (".fbx", ".blend", ".usd", ".usda", ".usdc", ".usdz", ".dae", ".abc", ".3ds", ".off", ".x3d")
COLUMNS = ["sha256", "local_path", "file_identifier", "file_size", "num_faces", "num_vertices", "num_materials",
           "num_basecolor_tex", "num_metallic_tex", "num_roughness_tex", "num_alpha_tex", "license", "indexed",
           "index_error"]
MAX_LICENSE_CHARS = 200


def scan_folder(source: Path) -> List[Path]:
    """Asset files under ``source`` (recursively, sorted), supported and recognised-unsupported alike."""
    if not source.is_dir():
        raise FileNotFoundError(f"index: source folder {source} does not exist")
    files = []
    for folder, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if Path(name).suffix.lower() in SUPPORTED + UNSUPPORTED and not name.startswith("."):
                files.append(Path(folder) / name)
    return files


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gltf_copyright(path: Path) -> str:
    """``asset.copyright`` of a glTF/GLB file without loading its buffers ("" if none)."""
    try:
        with open(path, "rb") as handle:
            if path.suffix.lower() == ".glb":
                head = handle.read(20)
                if len(head) < 20 or head[:4] != b"glTF":
                    return ""
                length, kind = struct.unpack("<II", head[12:20])
                if kind != 0x4E4F534A or length > 64 << 20:
                    return ""
                text = handle.read(length)
            else:
                text = handle.read(64 << 20)
        return str(json.loads(text).get("asset", {}).get("copyright", ""))[:MAX_LICENSE_CHARS]
    except (OSError, ValueError, AttributeError, struct.error):
        return ""


def _license(path: Path) -> str:
    if path.suffix.lower() in (".glb", ".gltf"):
        found = _gltf_copyright(path)
        if found:
            return found
    for name in ("LICENSE.md", "LICENSE.txt", "LICENSE", "license.txt", "README.txt"):
        candidate = path.parent / name
        if candidate.is_file():
            with open(candidate, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    line = line.strip().lstrip("#").strip()
                    if line:
                        return line[:MAX_LICENSE_CHARS]
    return ""


def _material_counts(scene) -> Dict[str, int]:
    from omnivox.assets import AlphaMode

    used = sorted({int(i) for i in scene.material_ids.tolist()}) if scene.num_faces else []
    counts = {"num_basecolor_tex": 0, "num_metallic_tex": 0, "num_roughness_tex": 0, "num_alpha_tex": 0}
    for index in used:
        material = scene.materials[index]
        if material.base_color_texture is not None:
            counts["num_basecolor_tex"] += 1
            if material.alpha_mode != AlphaMode.OPAQUE and (material.base_color_texture.image[..., 3] < 255).any():
                counts["num_alpha_tex"] += 1
        if material.metallic_roughness_texture is not None:
            counts["num_metallic_tex"] += 1
            counts["num_roughness_tex"] += 1
    return counts


def index_file(task: Task) -> Outcome:
    """Worker: hash, load and describe one file."""
    from omnivox.assets import load_asset

    path = Path(task.payload["path"])
    sha = file_sha256(path)
    row = {"sha256": sha, "local_path": task.payload["local_path"], "file_identifier": task.key,
           "file_size": path.stat().st_size, "license": _license(path)}
    if path.suffix.lower() in UNSUPPORTED:
        error = f"unsupported format {path.suffix.lower()} (readable: {', '.join(SUPPORTED)})"
        row.update(indexed=False, index_error=error)
        return Outcome(task.key, rows={".": row}, error=error)
    try:
        scene = load_asset(path)
        if scene.num_faces == 0:
            raise ValueError(f"{path}: no triangles")
    except (ValueError, OSError) as error:
        message = f"{type(error).__name__}: {error}"[:500]
        row.update(indexed=False, index_error=message)
        return Outcome(task.key, rows={".": row}, error=message)
    row.update(num_faces=scene.num_faces, num_vertices=len(scene.vertices), num_materials=len(scene.materials),
               indexed=True, index_error="", **_material_counts(scene))
    return Outcome(task.key, rows={".": row})


def run_index(root: Path, source: Optional[Path] = None, rank: int = 0, world_size: int = 1, workers: int = 0,
              retry_failed: bool = False, progress: bool = True, ray: Optional["RayCluster"] = None) -> StageSummary:
    """Index the assets under ``source`` (default ``<root>/raw``) into the root's table.

    Rows land in ``<root>/new_records`` (every reader sees them); `omnivox.data.metadata.merge_records` folds them
    into ``<root>/metadata.csv``, which `omnivox data index` does at the end of a single-shard run.

    Sharded by file path; a file is skipped when a row with its path and size exists (and, unless
    ``retry_failed``, also when that row records a failure).

    ``ray``: hash and load each file as a task (one core) on that Ray cluster instead of ``workers``.
    """
    root = Path(root)
    source = Path(source) if source is not None else root / "raw"
    if ray is not None:  # workers on other nodes need absolute paths (local_path stays relative to the root)
        root, source = root.resolve(), source.resolve()
    files = scan_folder(source)
    _, table = load_table(root)
    known = {(row.get("local_path"), row.get("file_size")): row for row in table.values()}
    summary = StageSummary()
    tasks = []
    for path in files:
        identifier = path.relative_to(source).as_posix()
        if not in_shard(identifier, rank, world_size):
            continue
        summary.total += 1
        local = _local_path(path, root)
        previous = known.get((local, str(path.stat().st_size)))
        if previous is not None and (as_bool(previous.get("indexed")) or not retry_failed):
            summary.skipped += 1
            continue
        tasks.append(Task(identifier, {"path": str(path), "local_path": local}))

    def failure_rows(task: Task, error: str) -> dict:
        path = Path(task.payload["path"])
        try:
            sha, size = file_sha256(path), path.stat().st_size
        except OSError:  # the file vanished or is unreadable: key the failure by its path instead
            sha, size = hashlib.sha256(f"unreadable:{task.key}".encode()).hexdigest(), ""
        return {".": {"sha256": sha, "local_path": task.payload["local_path"], "file_identifier": task.key,
                      "file_size": size, "indexed": False, "index_error": error}}

    writers = {".": RecordWriter(root, COLUMNS, rank)}
    ray_stage = None
    if ray is not None:
        from omnivox.data.ray_runner import RayStage, TaskResources

        ray_stage = RayStage(ray, ray.resources(TaskResources(num_cpus=1.0)), must_see=[str(root), str(source)])
    result = run_stage(tasks, index_file, writers, failure_rows, workers, "index", progress=progress, ray=ray_stage)
    summary.done, summary.failed = result.done, result.failed
    return summary


MAX_IMPORT_BYTES = 2 << 30


def import_columns(root: Path, table_file: Path, columns: Optional[List[str]] = None) -> int:
    """Add columns from a CSV keyed by ``sha256`` (e.g. ``aesthetic_score``) to the index table; returns rows.

    The values land in ``<root>/new_records`` like any stage's records, so the datasets' filters see them.
    Rows for assets the index does not know are kept too (they are ignored until such an asset is indexed).
    """
    import csv

    from omnivox.data.metadata import KEY

    table_file = Path(table_file)
    if not table_file.is_file():
        raise FileNotFoundError(f"{table_file}: no such file")
    if table_file.stat().st_size > MAX_IMPORT_BYTES:
        raise ValueError(f"{table_file}: larger than {MAX_IMPORT_BYTES >> 30} GiB")
    with open(table_file, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if KEY not in header:
            raise ValueError(f"{table_file}: needs a '{KEY}' column, has {header[:8]}")
        wanted = [c for c in header if c != KEY] if columns is None else list(columns)
        missing = [c for c in wanted if c not in header]
        if missing or not wanted:
            raise ValueError(f"{table_file}: columns {missing or wanted} not found (has {header[:8]})")
        clashes = [c for c in wanted if c in COLUMNS]
        if clashes:
            raise ValueError(f"{table_file}: columns {clashes} are written by the index itself")
        count = 0
        with RecordWriter(root, [KEY] + wanted, rank=0) as writer:
            for row in reader:
                sha = (row.get(KEY) or "").strip().lower()
                if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
                    raise ValueError(f"{table_file}: line {reader.line_num}: {KEY} {sha[:70]!r} is not a sha256")
                writer.write({KEY: sha, **{c: row[c] for c in wanted}})
                count += 1
    return count


def _local_path(path: Path, root: Path) -> str:
    resolved, base = path.resolve(), root.resolve()
    try:
        return resolved.relative_to(base).as_posix()
    except ValueError:
        return str(resolved)
