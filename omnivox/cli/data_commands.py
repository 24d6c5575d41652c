"""`omnivox data ...`: the data toolkit stages over a dataset root (see `omnivox.data`).

Every stage takes ``--rank R --world-size W`` (this machine's shard), is resumable (re-running skips what is
done and, unless ``--retry-failed``, what failed) and shows a progress bar with rate and ETA on stderr.
Ctrl-C stops the workers and exits with code 130; re-running then completes the stage.

``index``, ``convert``, ``render`` and ``encode`` take ``--ray ADDRESS`` to run every asset as a task on a Ray
cluster instead of local processes (`omnivox.data.ray_runner`; needs ``pip install "omnivox[ray]"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from omnivox.cli.main import app

data_app = typer.Typer(help="Prepare training data: index -> convert -> render -> encode, plus stats and merge.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

RANK = typer.Option(0, "--rank", help="This machine's shard, 0 <= rank < world size.")
WORLD = typer.Option(1, "--world-size", help="Number of shards (machines).")
RETRY = typer.Option(False, "--retry-failed", help="Also redo assets whose previous attempt failed.")
QUIET = typer.Option(False, "--quiet", help="No progress bar.")
RAY = typer.Option(None, "--ray", metavar="ADDRESS",
                   help="Run each asset as a task on a Ray cluster: auto (RAY_ADDRESS or the cluster of this machine, "
                        "else a private one here), HOST:PORT, or ray://HOST:10001. Workers must see ROOT and the raw "
                        "assets at the same paths. Needs pip install \"omnivox[ray]\".")
TASK_CPUS = typer.Option(None, "--task-cpus", help="With --ray: CPU cores each task declares (default 1).")
TASK_MEMORY = typer.Option(None, "--task-memory", help="With --ray: GiB of memory each task declares "
                           "(default: convert by resolution, others none).")
TASK_GPUS = typer.Option(None, "--task-gpus", help="With --ray: GPUs each render/encode task declares (default 0.5: "
                         "two per GPU; 0 runs them on CPUs).")


def _local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _workers(value: Optional[int]) -> int:
    return _local_cores() if value is None else value


def _devices(value: str) -> List[str]:
    import torch

    if value == "auto":
        count = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(count)] if count else ["cpu"]
    devices = [d.strip() for d in value.split(",") if d.strip()]
    if not devices:
        raise typer.BadParameter(f"no device in {value!r}")
    return devices


def _dataset_root(label: str, root: Path) -> None:
    """A stage after `index` needs the dataset root; say so before the stage's imports (torch, numba) load."""
    if not root.is_dir():
        problem = ("is a file, not a dataset root folder" if root.exists() else
                   "does not exist (run `omnivox data index` first)")
        typer.echo(f"omnivox data {label}: {root} {problem}", err=True)
        raise typer.Exit(code=2)


def _ray_cluster(label: str, address: Optional[str], cpus: Optional[float] = None, memory_gib: Optional[float] = None,
                 gpus: Optional[float] = None):
    """The `RayCluster` of ``--ray`` and ``--task-*`` (None without ``--ray``); one line if Ray is missing."""
    if address is None:
        if cpus is not None or memory_gib is not None or gpus is not None:
            typer.echo(f"omnivox data {label}: --task-cpus/--task-memory/--task-gpus need --ray", err=True)
            raise typer.Exit(code=2)
        return None
    import importlib.util

    from omnivox.data.ray_runner import GIB, INSTALL_HINT, RayCluster

    if importlib.util.find_spec("ray") is None:
        typer.echo(f"omnivox data {label}: {INSTALL_HINT}", err=True)
        raise typer.Exit(code=2)
    if any(value is not None and value < 0 for value in (cpus, memory_gib, gpus)) or cpus == 0:
        typer.echo(f"omnivox data {label}: --task-cpus must be > 0, --task-memory and --task-gpus >= 0", err=True)
        raise typer.Exit(code=2)
    return RayCluster(address=address.strip() or "auto", cpus_per_task=cpus,
                      memory_per_task=None if memory_gib is None else int(memory_gib * GIB), gpus_per_task=gpus)


def _run(label: str, function, **kwargs) -> None:
    cluster = kwargs.get("ray")
    try:
        if cluster is None:
            summary = function(**kwargs)
        else:
            from omnivox.data.ray_runner import RayClusterError, connected

            try:
                with connected(cluster):  # once for the whole stage (encode runs one pass per encoder)
                    summary = function(**kwargs)
            except RayClusterError as error:
                typer.echo(f"omnivox data {label}: {error}", err=True)
                raise typer.Exit(code=2) from error
    except KeyboardInterrupt:
        typer.echo(f"omnivox data {label}: interrupted; re-run the same command to finish", err=True)
        raise typer.Exit(code=130)
    except (ValueError, FileNotFoundError) as error:
        typer.echo(f"omnivox data {label}: {error}", err=True)
        raise typer.Exit(code=2) from error
    typer.echo(f"{label}: {summary.total} assets in shard, {summary.skipped} already handled, "
               f"{summary.done} done, {summary.failed} failed")


@data_app.command("index")
def index_command(
    root: Path = typer.Argument(..., help="Dataset root (created if missing)."),
    source: Optional[Path] = typer.Option(None, "--source", help="Folder of raw assets (default ROOT/raw)."),
    rank: int = RANK, world_size: int = WORLD, retry_failed: bool = RETRY, quiet: bool = QUIET,
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes (default: local cores; 0 = in-process)."),
    ray: Optional[str] = RAY, task_cpus: Optional[float] = TASK_CPUS,
) -> None:
    """Hash and describe every asset file (sizes, triangles, texture channels, licence) into ROOT/metadata.csv.

    With --world-size 1 the records are merged into ROOT/metadata.csv at the end; with several shards, run
    `omnivox data merge ROOT` once every rank has finished (a merge must not run while a rank is writing).
    """
    from omnivox.data.index import run_index
    from omnivox.data.metadata import merge_records

    if root.exists() and not root.is_dir():
        typer.echo(f"omnivox data index: {root} is a file; the dataset root must be a folder", err=True)
        raise typer.Exit(code=2)
    if not (source or root / "raw").is_dir():
        typer.echo(f"omnivox data index: source folder {source or root / 'raw'} does not exist (put the assets in "
                   "ROOT/raw or give --source FOLDER)", err=True)
        raise typer.Exit(code=2)
    cluster = _ray_cluster("index", ray, task_cpus)
    root.mkdir(parents=True, exist_ok=True)
    _run("index", run_index, root=root, source=source, rank=rank, world_size=world_size, workers=_workers(workers),
         retry_failed=retry_failed, progress=not quiet, ray=cluster)
    if world_size == 1:
        rows = merge_records(root)
        typer.echo(f"index: {rows} rows in {root / 'metadata.csv'}")
    else:
        typer.echo(f"index: shard {rank} of {world_size} recorded in {root / 'new_records'}; once every shard is "
                   f"done, run: omnivox data merge {root}")


@data_app.command("convert")
def convert_command(
    root: Path = typer.Argument(..., help="Dataset root (after index)."),
    resolution: str = typer.Option("512", "--resolution", "-r", help="One or more, comma separated: 256,512,1024."),
    mesh_dump: bool = typer.Option(True, "--mesh-dump/--no-mesh-dump", help="Also write mesh_dumps/<sha>.npz."),
    rank: int = RANK, world_size: int = WORLD, retry_failed: bool = RETRY, quiet: bool = QUIET,
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes (default: local cores; 0 = in-process)."),
    ray: Optional[str] = RAY, task_cpus: Optional[float] = TASK_CPUS, task_memory: Optional[float] = TASK_MEMORY,
) -> None:
    """O-Voxels (dual_grid_<R>, pbr_voxels_<R>) of every indexed asset."""
    _dataset_root("convert", root)
    from omnivox.data.convert import run_convert

    try:
        resolutions = [int(r) for r in resolution.split(",") if r.strip()]
    except ValueError as error:
        raise typer.BadParameter(f"--resolution must be integers separated by commas, got {resolution!r}") from error
    _run("convert", run_convert, root=root, resolutions=resolutions, rank=rank, world_size=world_size,
         workers=_workers(workers), retry_failed=retry_failed, mesh_dump=mesh_dump, progress=not quiet,
         ray=_ray_cluster("convert", ray, task_cpus, task_memory))


@data_app.command("render")
def render_command(
    root: Path = typer.Argument(..., help="Dataset root (after index)."),
    views: int = typer.Option(16, "--views", help="Condition views per asset."),
    size: int = typer.Option(512, "--size", help="Image side in pixels (1024 for the 1024 fine-tuning stage)."),
    devices: str = typer.Option("auto", "--devices", help="auto (every GPU, else CPU), cpu, or cuda:0,cuda:1,... "
                                "(name a GPU twice for two processes on it: hides the CPU work per asset)"),
    seed: int = typer.Option(0, "--seed", help="Seed mixed with each asset's hash for cameras and lights."),
    rank: int = RANK, world_size: int = WORLD, retry_failed: bool = RETRY, quiet: bool = QUIET,
    workers: Optional[int] = typer.Option(None, "--workers", help="CPU processes when rendering on the CPU."),
    ray: Optional[str] = RAY, task_cpus: Optional[float] = TASK_CPUS, task_memory: Optional[float] = TASK_MEMORY,
    task_gpus: Optional[float] = TASK_GPUS,
) -> None:
    """RGBA condition views (renders_cond/<sha>/NNN.png + transforms.json); one process per GPU."""
    _dataset_root("render", root)
    from omnivox.data.render import run_render

    cluster = _ray_cluster("render", ray, task_cpus, task_memory, task_gpus)
    _run("render", run_render, root=root, num_views=views, size=size, rank=rank, world_size=world_size,
         workers=_workers(workers), devices=["cpu"] if cluster else _devices(devices), retry_failed=retry_failed,
         seed=seed, progress=not quiet, ray=cluster)


@data_app.command("encode")
def encode_command(
    root: Path = typer.Argument(..., help="Dataset root (after convert)."),
    resolution: int = typer.Option(512, "--resolution", "-r", help="O-Voxel resolution to encode."),
    shape_encoder: Optional[Path] = typer.Option(None, "--shape-encoder", help="Shape encoder checkpoint .../NAME."),
    pbr_encoder: Optional[Path] = typer.Option(None, "--pbr-encoder", help="Material encoder checkpoint .../NAME."),
    ss_encoder: Optional[Path] = typer.Option(None, "--ss-encoder",
                                              help="Sparse-structure encoder checkpoint .../NAME (64^3 occupancy)."),
    devices: str = typer.Option("auto", "--devices", help="auto (every GPU, else CPU), cpu, or cuda:0,cuda:1,..."),
    rank: int = RANK, world_size: int = WORLD, retry_failed: bool = RETRY, quiet: bool = QUIET,
    ray: Optional[str] = RAY, task_cpus: Optional[float] = TASK_CPUS, task_memory: Optional[float] = TASK_MEMORY,
    task_gpus: Optional[float] = TASK_GPUS,
) -> None:
    """Shape / material / structure latents (shape_latents/NAME_<R>, pbr_latents/NAME_<R>, ss_latents/NAME_64)."""
    _dataset_root("encode", root)
    from omnivox.data.encode import run_encode

    cluster = _ray_cluster("encode", ray, task_cpus, task_memory, task_gpus)
    _run("encode", run_encode, root=root, resolution=resolution, shape_encoder=shape_encoder,
         pbr_encoder=pbr_encoder, ss_encoder=ss_encoder, rank=rank, world_size=world_size,
         devices=["cpu"] if cluster else _devices(devices), retry_failed=retry_failed, progress=not quiet,
         ray=cluster)


@data_app.command("columns")
def columns_command(
    root: Path = typer.Argument(..., help="Dataset root."),
    table: Path = typer.Argument(..., help="CSV with a sha256 column, e.g. sha256,aesthetic_score."),
    column: Optional[List[str]] = typer.Option(None, "--column", help="Only these columns (repeatable)."),
) -> None:
    """Add columns (aesthetic_score, ...) from a CSV keyed by sha256 to the index, for the datasets' filters."""
    _dataset_root("columns", root)
    from omnivox.data.index import import_columns

    try:
        count = import_columns(root, table, column or None)
    except (ValueError, FileNotFoundError) as error:
        typer.echo(f"omnivox data columns: {error}", err=True)
        raise typer.Exit(code=2) from error
    typer.echo(f"columns: {count} rows from {table}")


@data_app.command("stats")
def stats_command(
    root: Path = typer.Argument(..., help="Dataset root."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Per stage: assets done, failed, and the most common failure reasons (also ROOT/statistics.txt)."""
    import json
    from dataclasses import asdict

    from omnivox.data.stats import dataset_stats, format_stats, write_statistics

    if not root.is_dir():
        typer.echo(f"omnivox data stats: no such folder {root}", err=True)
        raise typer.Exit(code=2)
    stats = dataset_stats(root)
    text = format_stats(stats)
    write_statistics(root, text)
    typer.echo(json.dumps([asdict(s) for s in stats], indent=2) if as_json else text.rstrip("\n"))


@data_app.command("merge")
def merge_command(root: Path = typer.Argument(..., help="Dataset root.")) -> None:
    """Fold every stage's new_records/ into its metadata.csv (run when no stage is writing)."""
    _dataset_root("merge", root)
    from omnivox.data.stats import merge_all

    for name, rows in merge_all(root).items():
        typer.echo(f"{'index' if name == '.' else name}: {rows} rows")
