"""The user's clock (issue 16): image in, textured GLB on disk, for ``512``, ``1024_cascade`` and ``1536_cascade``.

Each run is what ``omnivox generate IMAGE -o x.glb`` does after loading the weights: ``ImageTo3DPipeline.run``,
then the export (``bake_glb`` on the pipeline's device, default settings: at most 200,000 faces, 0.5-voxel surface
tolerance, 2048^2 textures) and the GLB written to disk. The networks are full size with random weights, run as
``bench/bench_pipelines.py`` runs them (real token counts from Spot; see its docstring).

Random weights decode to no real surface, so the export is timed twice per run:

* ``export_own``: the pipeline's own output, whatever surface the random decoders made (faces listed);
* ``export_real``: the surface a real asset gives at that resolution: ``mesh/spot`` converted to an O-Voxel at
  512, 1024 or 1536 at the start (conversion time listed, not counted) and exported the same way.

The headline ``image_to_glb_s`` is pipeline + ``export_real`` + writing the file. Cold = the first image of the
process (kernels compiled on first use, disk caches warm); warm = the median of the later runs. Each export also
lists its stages (``ExportReport.timings``).

Usage:
    python bench/bench_pipelines.py prepare                                   # once, here: token sets
    PYTHONUNBUFFERED=1 python bench/bench_end_to_end.py run --out results/    # on the GPU machine
    python bench/bench_end_to_end.py run --smoke --out /tmp/e2e               # tiny pipeline on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_models import Report, sync  # noqa: E402
from bench.bench_pipelines import (DATA, MESH, Stages, full_size_models, load_inputs,  # noqa: E402
                                   machine_info, pipeline_with)

OUTPUT_RESOLUTION = {"512": 512, "1024_cascade": 1024, "1536_cascade": 1536}


def convert_real_asset(mesh: Path, resolution: int, device) -> "OVoxel":  # noqa: F821
    """``mesh`` as an O-Voxel at ``resolution`` (geometry and materials from one scan on ``device``), the way a
    ``.vxz`` written by ``omnivox convert`` reads back (uint8 geometry and materials)."""
    from omnivox.assets import load_asset
    from omnivox.ovoxel.asset import OVoxel
    from omnivox.ovoxel.convert import scene_to_ovoxel

    record = scene_to_ovoxel(load_asset(mesh).normalized(), resolution, device=device)
    return OVoxel.from_file_attributes(record.pop("coords"), record, resolution)


def export_to_disk(asset, path: Path, device) -> dict:
    """Bake and write ``asset`` as ``path``; seconds, stage timings and sizes."""
    from omnivox.ovoxel.export import DEFAULT_SURFACE_TOLERANCE, bake_glb, save_glb

    sync(device)
    start = time.perf_counter()
    mesh, report = bake_glb(asset.vertices.numpy(), asset.faces.numpy(), asset.coords.numpy(),
                            asset.attribute_matrix(), asset.grid, surface_tolerance=DEFAULT_SURFACE_TOLERANCE,
                            device=device)
    baked = time.perf_counter() - start
    save_glb(mesh, path)
    total = time.perf_counter() - start
    return dict(s=total, bake_s=baked, write_s=total - baked, faces_in=report.input_faces, faces_out=report.faces,
                bytes=path.stat().st_size, stages={k: round(v, 4) for k, v in report.timings.items()},
                uv=dict(method=str(report.uv_method), charts=report.uv_charts, utilisation=report.uv_utilisation,
                        seam_fraction=report.seam_fraction))


def run_type(report: Report, pipe, tokens: dict, image, pipeline_type: str, real, out: Path, repeats: int,
             device, export_own: bool = True) -> None:
    stages = Stages(pipe, tokens, device)
    stages.sync_stages = False  # totals only: stage syncs would stop the pipeline's own overlap
    runs = []
    for attempt in range(repeats):
        stages.begin_run()
        sync(device)
        start = time.perf_counter()
        (asset,) = pipe.run(image, seed=0, pipeline_type=pipeline_type)
        sync(device)
        pipeline_s = time.perf_counter() - start
        own = export_to_disk(asset, out / f"{pipeline_type}_own.glb", device) if export_own else None
        real_export = export_to_disk(real, out / f"{pipeline_type}_real.glb", device)
        entry = dict(pipeline_s=pipeline_s, export_own=own, export_real=real_export,
                     image_to_glb_s=pipeline_s + real_export["s"],
                     image_to_glb_own_s=pipeline_s + own["s"] if own else None)
        runs.append(entry)
        report.add(f"{pipeline_type}/{'cold' if attempt == 0 else f'warm_{attempt}'}", entry)
    warm = runs[1:] or runs
    report.add(f"{pipeline_type}/summary", dict(
        cold_image_to_glb_s=runs[0]["image_to_glb_s"],
        warm_image_to_glb_s=statistics.median(r["image_to_glb_s"] for r in warm),
        warm_pipeline_s=statistics.median(r["pipeline_s"] for r in warm),
        warm_export_real_s=statistics.median(r["export_real"]["s"] for r in warm),
        warm_export_own_s=statistics.median(r["export_own"]["s"] for r in warm) if export_own else float("nan"),
        real_faces_in=runs[-1]["export_real"]["faces_in"],
        own_faces_in=runs[-1]["export_own"]["faces_in"] if export_own else 0))


@contextlib.contextmanager
def surface_decimation(on_gpu: bool):
    """Inside, exports decimate on the GPU (the product) or, for the same-run baseline, on the CPU: the exporter
    picks the GPU rounds from ``prepare_surface``'s device argument (its last), so leaving it out gives the CPU."""
    import omnivox.ovoxel.export as export

    on_device = export.prepare_surface
    if not on_gpu:
        export.prepare_surface = lambda *args_, **kwargs: on_device(*args_[:8], **kwargs)
    try:
        yield
    finally:
        export.prepare_surface = on_device


def run(args) -> None:
    with surface_decimation(not args.cpu_decimation):
        _run(args)


def _run(args) -> None:
    out = Path(args.out)
    report = Report(out)
    device = torch.device(args.device)
    data, tokens, image = load_inputs(args.data)
    report.add("machine", machine_info(device, args.smoke, tokens))
    if args.smoke:
        from omnivox.pipelines.image_to_3d import ImageTo3DPipeline
        from omnivox.pipelines.testing import make_test_pipeline

        tokens = {k: v[::25] for k, v in tokens.items()}
        pipe = ImageTo3DPipeline.from_pretrained(make_test_pipeline(out / "tiny"), device=device)
    else:
        pipe = pipeline_with(full_size_models(device), device)
    for pipeline_type in args.types:
        resolution = 64 if args.smoke else OUTPUT_RESOLUTION[pipeline_type]
        start = time.perf_counter()
        real = convert_real_asset(args.mesh, resolution, device)
        sync(device)
        report.add(f"{pipeline_type}/real_asset", dict(resolution=resolution, voxels=len(real.coords),
                                                       faces=len(real.faces), convert_s=time.perf_counter() - start))
        try:
            run_type(report, pipe, tokens, image, pipeline_type, real, out, args.repeats, device, not args.skip_own)
        except Exception as error:  # keep the other types' numbers
            report.add(f"error/{pipeline_type}", f"{type(error).__name__}: {error}")
    rows = ["| type | cold image->GLB s | warm image->GLB s | warm pipeline s | warm export s (real) | "
            "export s (own output) | faces in (real / own) |", "|---|---|---|---|---|---|---|"]
    for pipeline_type in args.types:
        s = report.results.get(f"{pipeline_type}/summary")
        if s:
            rows.append(f"| {pipeline_type} | {s['cold_image_to_glb_s']:.2f} | {s['warm_image_to_glb_s']:.2f} | "
                        f"{s['warm_pipeline_s']:.2f} | {s['warm_export_real_s']:.2f} | {s['warm_export_own_s']:.2f} "
                        f"| {s['real_faces_in']:,} / {s['own_faces_in']:,} |")
    print("\n".join(rows))
    (out / "table.md").write_text("\n".join(rows) + "\n")


def export_only(args) -> None:
    """The export alone on ``mesh`` converted at each resolution, GPU rounds against the CPU decimation (the
    baseline, same machine and run): first and second call each, stages listed."""
    import json

    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(gpu=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), torch=torch.__version__)
    for resolution in args.resolutions:
        real = convert_real_asset(args.mesh, resolution, device)
        for mode in ("gpu_rounds", "cpu_decimation"):
            with surface_decimation(on_gpu=mode == "gpu_rounds"):
                runs = [export_to_disk(real, out / f"spot_{resolution}_{mode}.glb", device) for _ in range(2)]
            results[f"{resolution}/{mode}"] = runs
            print(resolution, mode, [round(r["s"], 2) for r in runs], runs[-1]["faces_in"], runs[-1]["faces_out"],
                  runs[-1]["stages"], flush=True)
            (out / "export_only.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--data", type=Path, default=DATA)
    r.add_argument("--mesh", type=Path, default=MESH)
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--types", nargs="*", default=list(OUTPUT_RESOLUTION))
    r.add_argument("--repeats", type=int, default=3, help="runs per type: one cold, then warm ones")
    r.add_argument("--skip-own", action="store_true", help="do not export the random networks' own output")
    r.add_argument("--smoke", action="store_true", help="tiny test pipeline on a 64^3 asset (checks the script)")
    e = sub.add_parser("export", help="the export alone: GPU rounds against the CPU decimation, same run")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--mesh", type=Path, default=MESH)
    e.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    e.add_argument("--resolutions", type=int, nargs="*", default=[1024, 512])
    r.add_argument("--cpu-decimation", action="store_true",
                   help="baseline: the surface preparation as before the GPU rounds (CPU library), all else alike")
    args = parser.parse_args()
    export_only(args) if args.command == "export" else run(args)


if __name__ == "__main__":
    main()
