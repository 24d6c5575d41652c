"""Throughput of `omnivox data` stages through Ray next to the local runner, same assets, same cores.

Usage:
    python bench/bench_data_ray.py cpu [--resolutions 256,512] [--cpus 2] [--repeats 2] [--out FILE.json]
    python bench/bench_data_ray.py overhead [--tasks 2000] [--cpus 2]          # each engine's own cost per asset
    python bench/bench_data_ray.py prepare --root DIR [--resolution 256] [--under mesh]  # a root for the GPU run
    python bench/bench_data_ray.py gpu --root DIR [--views 16 --size 512] [--resolution 256] [--repeats 2]
                                       [--out FILE.json]

``cpu``: indexes the development assets (``../shared/assets``) into a scratch root once, then runs `convert`
alternately with the local runner (a pool of ``--cpus`` processes) and on a private Ray instance started with
``num_cpus=--cpus`` (one CPU per task, the default declaration), clearing the outputs before each run. Reported
per run: wall seconds, assets per hour, and CPU seconds per asset summed over every process the engine used
(pool workers; Ray's workers plus its raylet and GCS during the stage). The Ray instance's start-up (``ray.init``)
is timed separately: a cluster pays it once, not per stage. Every Ray run's files are compared with the local
run's (they must be byte-identical).

``overhead``: the same through `run_stage` with work that does nothing, so what is measured is each engine's
own cost per asset (scheduling, shipping the task and its outcome, recording): the driver's ceiling in assets
per second, which bounds how many nodes one driver can keep busy.

``prepare`` / ``gpu``: ``prepare`` (here) copies the assets into ``DIR/raw``, indexes them and converts them at
``--resolution`` (the root to carry to the GPU machine). ``gpu`` (there) renders the condition views and encodes
the O-Voxels with the released encoder architectures (random weights, saved as checkpoints), each with the local
runner (one process on ``cuda:0``) and through Ray on the same machine (``num_gpus=1``; tasks of 0.5 and of 1 GPU).
Ray's `encode` runs on a pool of actors that each load the encoders first: its rows add that start-up
(``actors_ready_s``, from `ray_runner`'s log record) and the rate once the actors run
(``assets_per_hour_after_start``). Each Ray run's output files are compared with the local run's of the same
repeat (``files_identical_to_local``).
``--device cpu`` runs the same code on the CPU with tiny encoders (a smoke test of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _machine() -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "loadavg_start": os.getloadavg()}


def _descendants_cpu_seconds(ancestor: int) -> float:
    """CPU seconds (user + system, including reaped children) of every live process below ``ancestor``."""
    parents, times = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(value) for value in fields[11:15]) / CLOCK_TICKS  # utime stime cutime cstime

    def below(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == ancestor:
                return True
        return False

    return sum(seconds for pid, seconds in times.items() if below(pid))


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _clear(root: Path, keep=("raw", "metadata.csv", "new_records")) -> None:
    for entry in root.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _outputs(root: Path, folders) -> dict:
    return {path.relative_to(root).as_posix(): path.read_bytes()
            for folder in folders for path in sorted((root / folder).glob("*.*")) if path.is_file()}


def _stage_files(root: Path, folder: str) -> dict:
    """Every output file under ``root/folder`` (nested folders too, record part files excluded): path -> bytes."""
    from omnivox.data.metadata import RECORDS_DIR

    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted((root / folder).rglob("*"))
            if path.is_file() and RECORDS_DIR not in path.relative_to(root).parts}


def _copy_assets(raw: Path, under: str = "") -> None:
    """The development assets the index can read (those under ``ASSETS/under``), with the files beside them (glTF
    buffers, textures, .mtl)."""
    from omnivox.data.index import SUPPORTED, scan_folder

    for path in scan_folder(ASSETS / under):
        if path.suffix.lower() not in SUPPORTED:
            continue
        target = raw / path.relative_to(ASSETS)
        target.parent.mkdir(parents=True, exist_ok=True)
        for sibling in path.parent.iterdir():
            if sibling == path or sibling.suffix.lower() in (".bin", ".png", ".jpg", ".jpeg", ".mtl", ".ktx2", ".webp"):
                shutil.copy(sibling, target.parent / sibling.name)


def bench_cpu(resolutions, cpus: int, repeats: int, out: Path) -> None:
    import ray

    from omnivox.data import layout
    from omnivox.data.convert import run_convert
    from omnivox.data.index import run_index
    from omnivox.data.ray_runner import RayCluster

    info = _machine()
    root = Path(tempfile.mkdtemp(prefix="bench_data_ray_"))
    _copy_assets(root / "raw")
    index = run_index(root, workers=0, progress=False)
    assets = index.done
    print(json.dumps({**info, "assets": assets, "index_failed": index.failed}), flush=True)
    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    info["ray_init_s"] = time.perf_counter() - start
    runs = []
    try:
        for resolution in resolutions:
            folders = [layout.dual_grid_dir(resolution), layout.pbr_voxels_dir(resolution)]
            reference = None
            for repeat in range(repeats):
                for engine in ("local", "ray"):
                    _clear(root)
                    cpu_before = _children_cpu_seconds() if engine == "local" else _descendants_cpu_seconds(os.getpid())
                    start = time.perf_counter()
                    if engine == "local":
                        summary = run_convert(root, [resolution], workers=cpus, progress=False)
                    else:
                        summary = run_convert(root, [resolution], progress=False, ray=RayCluster())
                    wall = time.perf_counter() - start
                    cpu = (_children_cpu_seconds() if engine == "local" else _descendants_cpu_seconds(os.getpid())) \
                        - cpu_before
                    files = _outputs(root, folders)
                    if reference is None:
                        reference = files
                    row = {"engine": engine, "resolution": resolution, "repeat": repeat, "done": summary.done,
                           "failed": summary.failed, "wall_s": round(wall, 2),
                           "assets_per_hour": round(3600 * summary.done / wall),
                           "cpu_s_per_asset": round(cpu / max(summary.done, 1), 3),
                           "identical_to_first_run": files == reference, "loadavg": os.getloadavg()}
                    runs.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    summary = {}
    for resolution in resolutions:
        for engine in ("local", "ray"):
            rows = [r for r in runs if r["engine"] == engine and r["resolution"] == resolution]
            summary[f"{engine}_{resolution}"] = {
                "wall_s_median": statistics.median(r["wall_s"] for r in rows),
                "assets_per_hour_median": statistics.median(r["assets_per_hour"] for r in rows),
                "cpu_s_per_asset_median": statistics.median(r["cpu_s_per_asset"] for r in rows)}
    result = {"info": info, "cpus": cpus, "assets": assets, "runs": runs, "summary": summary}
    print(json.dumps(summary, indent=1), flush=True)
    out.write_text(json.dumps(result, indent=1))


def _no_work(task):
    """An asset that costs nothing: what is left is each engine's own cost per asset."""
    from omnivox.data.runner import Outcome

    return Outcome(task.key, rows={"bench": {"sha256": task.key}})


def bench_overhead(tasks: int, cpus: int, out: Path) -> None:
    """Assets per second each engine can schedule and record when the work itself is free (the driver's limit)."""
    import ray

    from omnivox.data.metadata import RecordWriter
    from omnivox.data.ray_runner import RayCluster, RayStage, TaskResources
    from omnivox.data.runner import Task, run_stage

    info = _machine()
    scratch = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    work = [Task(f"{i:064x}") for i in range(tasks)]
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    try:
        for engine in ("local", "ray", "local", "ray"):
            writers = {"bench": RecordWriter(scratch, ["sha256"])}
            stage = RayStage(RayCluster(), TaskResources()) if engine == "ray" else None
            driver_cpu = time.process_time()
            start = time.perf_counter()
            summary = run_stage(work, _no_work, writers, lambda task, error: {}, workers=cpus, progress=False,
                                ray=stage)
            wall = time.perf_counter() - start
            row = {"engine": engine, "tasks": summary.done, "wall_s": round(wall, 2),
                   "assets_per_s": round(summary.done / wall, 1),
                   "driver_cpu_ms_per_asset": round(1000 * (time.process_time() - driver_cpu) / summary.done, 2),
                   "loadavg": os.getloadavg()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    out.write_text(json.dumps({"info": info, "cpus": cpus, "runs": rows}, indent=1))


def prepare(root: Path, resolution: int, under: str) -> None:
    from omnivox.data.convert import run_convert
    from omnivox.data.index import run_index

    _copy_assets(root / "raw", under)
    print("index", vars(run_index(root, workers=os.cpu_count(), progress=False)), flush=True)
    print("convert", vars(run_convert(root, [resolution], workers=os.cpu_count(), mesh_dump=False, progress=False)),
          flush=True)


def _encoders(folder: Path, tiny: bool) -> tuple:
    """Shape and material encoder checkpoints with the released architectures (or tiny ones), random weights."""
    import torch

    from omnivox.models import FlexiDualGridVaeEncoder, SparseUnetVaeEncoder, VaeEncoderConfig, save_pretrained

    config = (VaeEncoderConfig(model_channels=(8, 16, 32), num_blocks=(0, 1, 1), latent_channels=4, use_fp16=False)
              if tiny else VaeEncoderConfig())
    torch.manual_seed(0)
    paths = []
    for name, model in (("shape_enc_bench", FlexiDualGridVaeEncoder(config)),
                        ("tex_enc_bench", SparseUnetVaeEncoder(config))):
        for parameter in model.parameters():
            torch.nn.init.normal_(parameter, std=0.02)
        save_pretrained(model, folder / name)
        paths.append(folder / name)
    return tuple(paths)


class _ActorPoolStarts(logging.Handler):
    """Collects the start-up seconds `ray_runner` logs for each pool of actors it starts (``actors_ready_s``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "actors_ready_s"):
            self.seconds.append(record.actors_ready_s)


def bench_gpu(root: Path, views: int, size: int, resolution: int, device: str, repeats: int, out: Path) -> None:
    import ray
    import torch

    from omnivox.data import layout
    from omnivox.data.encode import run_encode
    from omnivox.data.ray_runner import RayCluster
    from omnivox.data.render import run_render

    on_gpu = device != "cpu"
    info = _machine()
    info["device"] = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    info["torch"] = torch.__version__
    print(json.dumps(info), flush=True)
    checkpoints = Path(tempfile.mkdtemp(prefix="bench_ckpt_"))
    shape, pbr = _encoders(checkpoints, tiny=not on_gpu)
    stage_folders = [layout.RENDERS_COND, "shape_latents", "pbr_latents"]

    def clear() -> None:
        for name in stage_folders:
            shutil.rmtree(root / name, ignore_errors=True)

    gpu_fractions = (0.5, 1.0) if on_gpu else (0.0,)
    engines = [("local", None)] + [(f"ray_{fraction:g}gpu", RayCluster(gpus_per_task=fraction))
                                   for fraction in gpu_fractions]
    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), num_gpus=1 if on_gpu else 0, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    info["ray_init_s"] = time.perf_counter() - start
    pool_starts = _ActorPoolStarts()
    ray_logger = logging.getLogger("omnivox.data.ray_runner")
    ray_logger.addHandler(pool_starts)
    ray_logger.setLevel(logging.INFO)
    runs = []
    local_files = {}  # stage -> the local runner's output files of this repeat
    try:
        for repeat in range(repeats):  # the first pass also compiles Triton kernels and warms the caches
            for engine, cluster in engines:
                clear()
                for stage in ("render", "encode"):
                    pool_starts.seconds.clear()
                    start = time.perf_counter()
                    if stage == "render":
                        summary = run_render(root, num_views=views, size=size, devices=[device], progress=False,
                                             ray=cluster)
                    else:
                        summary = run_encode(root, resolution, shape, pbr, devices=[device], progress=False,
                                             ray=cluster)
                    wall = time.perf_counter() - start
                    assets = summary.done if stage == "render" else summary.done / 2  # two latents per asset
                    row = {"engine": engine, "stage": stage, "repeat": repeat, "done": summary.done,
                           "failed": summary.failed, "wall_s": round(wall, 2),
                           "assets_per_hour": round(3600 * assets / wall)}
                    files = {}
                    for folder in ([layout.RENDERS_COND] if stage == "render" else ["shape_latents", "pbr_latents"]):
                        files.update(_stage_files(root, folder))
                    if engine == "local":
                        local_files[stage] = files
                    else:
                        row["files_identical_to_local"] = files == local_files.get(stage)
                    if pool_starts.seconds:  # Ray actors (encode): their start-up, and the rate once they run
                        starting = sum(pool_starts.seconds)
                        row.update(actor_pools=len(pool_starts.seconds), actors_ready_s=round(starting, 2),
                                   assets_per_hour_after_start=round(3600 * assets / max(wall - starting, 1e-9)))
                    row["loadavg"] = os.getloadavg()  # last: the device log's summary cuts lines at 200 characters
                    runs.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        ray_logger.removeHandler(pool_starts)
        ray.shutdown()
        clear()
        shutil.rmtree(checkpoints, ignore_errors=True)
    out.write_text(json.dumps({"info": info, "views": views, "size": size, "resolution": resolution,
                               "repeats": repeats, "runs": runs}, indent=1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cpu = sub.add_parser("cpu")
    cpu.add_argument("--resolutions", default="256,512")
    cpu.add_argument("--cpus", type=int, default=2)
    cpu.add_argument("--repeats", type=int, default=2)
    cpu.add_argument("--out", type=Path, default=Path("/tmp/bench_data_ray_cpu.json"))
    overhead = sub.add_parser("overhead")
    overhead.add_argument("--tasks", type=int, default=2000)
    overhead.add_argument("--cpus", type=int, default=2)
    overhead.add_argument("--out", type=Path, default=Path("/tmp/bench_data_ray_overhead.json"))
    prep = sub.add_parser("prepare")
    prep.add_argument("--root", type=Path, required=True)
    prep.add_argument("--resolution", type=int, default=256)
    prep.add_argument("--under", default="", help="only the assets under this folder of ../shared/assets")
    gpu = sub.add_parser("gpu")
    gpu.add_argument("--root", type=Path, required=True)
    gpu.add_argument("--views", type=int, default=16)
    gpu.add_argument("--size", type=int, default=512)
    gpu.add_argument("--resolution", type=int, default=256)
    gpu.add_argument("--device", default="cuda:0")
    gpu.add_argument("--repeats", type=int, default=2)
    gpu.add_argument("--out", type=Path, default=Path("bench_data_ray_gpu.json"))
    args = parser.parse_args(argv)
    if args.command == "cpu":
        bench_cpu([int(r) for r in args.resolutions.split(",")], args.cpus, args.repeats, args.out)
    elif args.command == "overhead":
        bench_overhead(args.tasks, args.cpus, args.out)
    elif args.command == "prepare":
        prepare(args.root, args.resolution, args.under)
    else:
        bench_gpu(args.root, args.views, args.size, args.resolution, args.device, args.repeats, args.out)


if __name__ == "__main__":
    sys.exit(main())
