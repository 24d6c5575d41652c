"""`stats`: what each stage of a dataset root has done, what failed and why; `merge_all` folds records.

`dataset_stats` reads every stage folder's table (merged ``metadata.csv`` + unmerged parts) and returns, per
folder, the number of assets done, failed and the most common failure reasons (the message up to its first
line, with file paths and numbers left as they are). `format_stats` renders it as the text also written to
``<ROOT>/statistics.txt`` (as the reference's ``build_metadata.py`` does).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

from omnivox.data import layout
from omnivox.data.metadata import METADATA_FILE, RECORDS_DIR, as_bool, load_table, merge_records

# Folder (pattern) -> (done flag, error column).
STAGE_COLUMNS: Dict[str, Tuple[str, str]] = {
    ".": ("indexed", "index_error"),
    layout.MESH_DUMPS: ("mesh_dumped", "mesh_dump_error"),
    "dual_grid_*": ("dual_grid_converted", "dual_grid_error"),
    "pbr_voxels_*": ("pbr_voxelized", "pbr_voxels_error"),
    "shape_latents/*": ("shape_latent_encoded", "shape_latent_error"),
    "pbr_latents/*": ("pbr_latent_encoded", "pbr_latent_error"),
    "ss_latents/*": ("ss_latent_encoded", "ss_latent_error"),
    layout.RENDERS_COND: ("cond_rendered", "render_error"),
}


@dataclass
class StageStats:
    folder: str
    done: int = 0
    failed: int = 0
    reasons: List[Tuple[str, int]] = field(default_factory=list)


def stage_folders(root: Path) -> List[Tuple[str, Tuple[str, str]]]:
    """Stage folders present under ``root`` (those with a table or unmerged records), with their columns."""
    found = []
    for pattern, columns in STAGE_COLUMNS.items():
        candidates = [root] if pattern == "." else sorted(root.glob(pattern))
        for folder in candidates:
            if (folder / METADATA_FILE).is_file() or (folder / RECORDS_DIR).is_dir():
                name = "." if folder == root else folder.relative_to(root).as_posix()
                found.append((name, columns))
    return found


def dataset_stats(root: Path, top_reasons: int = 5) -> List[StageStats]:
    root = Path(root)
    result = []
    for name, (flag, error_column) in stage_folders(root):
        _, table = load_table(root / name)
        stats = StageStats(name)
        reasons: Counter = Counter()
        for row in table.values():
            if as_bool(row.get(flag)):
                stats.done += 1
            elif row.get(error_column):
                stats.failed += 1
                reasons[row[error_column].splitlines()[0][:160]] += 1
        stats.reasons = reasons.most_common(top_reasons)
        result.append(stats)
    return result


def format_stats(stats: List[StageStats]) -> str:
    lines = []
    for stage in stats:
        label = "index" if stage.folder == "." else stage.folder
        lines.append(f"{label}: {stage.done} done, {stage.failed} failed")
        for reason, count in stage.reasons:
            lines.append(f"    {count} x {reason}")
    return "\n".join(lines) + "\n"


def write_statistics(root: Path, text: str) -> Path:
    """Write ``statistics.txt`` atomically."""
    import os

    path = Path(root) / "statistics.txt"
    temp = path.with_name(f".statistics.txt.{os.getpid()}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
    return path


def merge_all(root: Path) -> Dict[str, int]:
    """Fold every stage folder's ``new_records`` into its ``metadata.csv``; returns rows per folder.

    Run it when no stage is writing to the root (for example after all ranks finished), as the reference's
    ``build_metadata.py``. Readers do not need it: they overlay unmerged records themselves.
    """
    root = Path(root)
    return {name: merge_records(root / name) for name, _ in stage_folders(root)}

