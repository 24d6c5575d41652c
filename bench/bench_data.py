"""Benchmark the data toolkit's per-asset stages on the development assets.

Usage:
    python bench/bench_data.py convert [--resolutions 256,512,1024] [--out /tmp/bench_data.jsonl]
    python bench/bench_data.py prepare --out DIR [--resolution 512]   # inputs for the GPU run (.vxz + .npz)
    python bench/bench_data.py gpu --inputs DIR [--views 16 --size 512] [--out FILE]

``convert`` runs exactly what one `omnivox data convert` worker does per asset (load + Blender frame +
normalise, `scene_to_ovoxel`, two `.vxz` files and the mesh dump), with torch and numba limited to one thread
as in the pool, and reports seconds per asset and assets per hour per core. Baseline in the same run: the
same writes at lzma preset 9 (the reference's default) instead of our preset 6, to show what the level costs.

``gpu`` measures per GPU: ``render`` (condition views of each prepared scene, the stage's own functions
without PNG encoding) and ``encode`` (the released shape and material encoder architectures with random
weights, fp16, on each prepared 512^3 O-Voxel), against the same work on the CPU for one asset as baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)
    try:
        import numba

        numba.set_num_threads(1)
    except ImportError:
        pass


def dev_assets() -> list:
    from omnivox.data.index import SUPPORTED, scan_folder

    return [p for p in scan_folder(ASSETS) if p.suffix.lower() in SUPPORTED]


def bench_convert(resolutions, out: Path, only=None) -> None:
    import tempfile

    from omnivox.data.convert import MATERIAL_ATTRS, GEOMETRY_ATTRS, _write_mesh_dump, load_for_dataset
    from omnivox.ovoxel.io import write_vxz
    from omnivox.ovoxel.materials import scene_to_ovoxel

    _single_thread()
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["asset"], row["resolution"]))
    scratch = Path(tempfile.mkdtemp(prefix="bench_data_"))
    # Warm the numba caches so the first asset does not pay the compile.
    scene_to_ovoxel(load_for_dataset(ASSETS / "mesh/soup.stl"), 32)
    for resolution in resolutions:
        for path in dev_assets():
            name = path.relative_to(ASSETS).as_posix()
            if (name, resolution) in done or (only and not any(o in name for o in only)):
                continue
            start = time.perf_counter()
            cpu_start = time.process_time()
            scene = load_for_dataset(path)
            loaded = time.perf_counter()
            record = scene_to_ovoxel(scene, resolution)
            converted = time.perf_counter()
            coords = record.pop("coords")
            sizes = {}
            cpu_lzma9 = 0.0
            for level in (6, 9):
                t0 = time.perf_counter()
                c0 = time.process_time()
                for kind, names in (("geometry", GEOMETRY_ATTRS), ("material", MATERIAL_ATTRS)):
                    file = scratch / f"{kind}_{level}.vxz"
                    write_vxz(file, coords, {n: record[n] for n in names}, compression="lzma", compression_level=level)
                    sizes[f"{kind}_bytes_lzma{level}"] = file.stat().st_size
                sizes[f"write_s_lzma{level}"] = time.perf_counter() - t0
                if level == 9:
                    cpu_lzma9 = time.process_time() - c0
            t0 = time.perf_counter()
            _write_mesh_dump(scratch / "mesh.npz", scene.vertices, scene.faces)
            dump_s = time.perf_counter() - t0
            row = {"asset": name, "resolution": resolution, "triangles": scene.num_faces, "voxels": len(coords),
                   "load_s": loaded - start, "convert_s": converted - loaded, "mesh_dump_s": dump_s, **sizes,
                   # one worker's seconds per asset as the stage runs it (lzma 6)
                   "total_s": (converted - start) + sizes["write_s_lzma6"] + dump_s,
                   # CPU seconds of the same work (the machine is shared, so wall time can include waiting)
                   "cpu_s": time.process_time() - cpu_start - cpu_lzma9}
            print(json.dumps(row), flush=True)
            with open(out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    summarize_convert(out)


def summarize_convert(out: Path) -> None:
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    print(f"\nmachine: {platform.machine()} {platform.processor()}, python {platform.python_version()}, "
          f"{os.cpu_count()} cores, date {time.strftime('%Y-%m-%d')}")
    print("| R | assets | median s/asset | mean s/asset | mean CPU s/asset | max s (asset) | assets/h/core "
          "(wall / CPU) | write s lzma6 / lzma9 | bytes lzma6 / lzma9 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for resolution in sorted({r["resolution"] for r in rows}):
        sub = [r for r in rows if r["resolution"] == resolution]
        totals = [r["total_s"] for r in sub]
        slowest = max(sub, key=lambda r: r["total_s"])
        w6, w9 = sum(r["write_s_lzma6"] for r in sub), sum(r["write_s_lzma9"] for r in sub)
        b6 = sum(r["geometry_bytes_lzma6"] + r["material_bytes_lzma6"] for r in sub)
        b9 = sum(r["geometry_bytes_lzma9"] + r["material_bytes_lzma9"] for r in sub)
        cpu = statistics.mean(r["cpu_s"] for r in sub)
        print(f"| {resolution} | {len(sub)} | {statistics.median(totals):.2f} | {statistics.mean(totals):.2f} | "
              f"{cpu:.2f} | {slowest['total_s']:.1f} ({slowest['asset']}) | "
              f"{3600 / statistics.mean(totals):.0f} / {3600 / cpu:.0f} | "
              f"{w6:.1f} / {w9:.1f} | {b6 / 1e6:.1f} MB / {b9 / 1e6:.1f} MB |")


# ----------------------------------------------------------------------------------------------- GPU part
def prepare(out: Path, resolution: int) -> None:
    """Scenes (geometry + base colour per face corner) and 512^3 O-Voxels of the dev assets, for the GPU run."""
    from omnivox.data.convert import MATERIAL_ATTRS, GEOMETRY_ATTRS, load_for_dataset
    from omnivox.ovoxel.io import write_vxz
    from omnivox.ovoxel.materials import scene_to_ovoxel

    out.mkdir(parents=True, exist_ok=True)
    carried = 0
    for path in dev_assets():
        name = path.relative_to(ASSETS).as_posix().replace("/", "__")
        scene = load_for_dataset(path)
        np.savez(out / f"{name}.scene.npz", vertices=scene.vertices, faces=scene.faces.astype(np.int32))
        carried += (out / f"{name}.scene.npz").stat().st_size
        if scene.num_faces > 200_000 or carried > 45e6:
            continue  # the carried folder must stay under 64 MiB: encode a subset
        record = scene_to_ovoxel(scene, resolution)
        coords = record.pop("coords")
        for kind, names in (("geometry", GEOMETRY_ATTRS), ("material", MATERIAL_ATTRS)):
            write_vxz(out / f"{name}.{kind}.vxz", coords, {n: record[n] for n in names})
            carried += (out / f"{name}.{kind}.vxz").stat().st_size
        print(name, scene.num_faces, len(coords), carried, flush=True)


def bench_gpu(inputs: Path, views: int, size: int, out: Path) -> None:
    import torch

    from omnivox.assets import Scene, default_material
    from omnivox.data.encode import encode_pbr, encode_shape
    from omnivox.data.render import condition_cameras, render_views
    from omnivox.models import FlexiDualGridVaeEncoder, SparseUnetVaeEncoder, VaeEncoderConfig

    device = torch.device("cuda")
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(info), flush=True)
    results = {"info": info, "render": [], "encode": []}

    def scene_of(file: Path) -> Scene:
        data = np.load(file)
        vertices, faces = data["vertices"], data["faces"].astype(np.int64)
        corners = vertices[faces]
        flat = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        flat /= np.linalg.norm(flat, axis=1, keepdims=True) + 1e-20
        normals = np.repeat(flat[:, None].astype(np.float32), 3, axis=1)
        return Scene(vertices=vertices, faces=faces, uvs=[], normals=normals, colors=None,
                     material_ids=np.zeros(len(faces), np.int64), materials=[default_material()], source=file.name)

    def timed(function, device_type: str):
        if device_type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        value = function()
        if device_type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, value

    scenes = sorted(inputs.glob("*.scene.npz"))
    warm = scene_of(scenes[0])
    extrinsics, intrinsics, _ = condition_cameras(views, np.random.default_rng(0))
    render_views(warm, extrinsics, intrinsics, size, np.random.default_rng(0), device)  # compile / warm up
    for file in scenes:
        scene = scene_of(file)
        seconds, _ = timed(lambda: render_views(scene, extrinsics, intrinsics, size, np.random.default_rng(1), device),
                           "cuda")
        row = {"asset": file.name, "triangles": scene.num_faces, "views": views, "size": size, "seconds": seconds}
        results["render"].append(row)
        print(json.dumps(row), flush=True)
    # Baseline: the same render of the first asset on the CPU (torch backend, all cores).
    seconds, _ = timed(lambda: render_views(warm, extrinsics[:2], intrinsics[:2], size, np.random.default_rng(1),
                                            torch.device("cpu")), "cpu")
    results["render_cpu_baseline"] = {"asset": scenes[0].name, "views": 2, "seconds": seconds}
    print(json.dumps(results["render_cpu_baseline"]), flush=True)

    shape = FlexiDualGridVaeEncoder(VaeEncoderConfig()).to(device).eval()
    pbr = SparseUnetVaeEncoder(VaeEncoderConfig()).to(device).eval()
    for module in (shape, pbr):  # random weights with the released architecture, blocks in fp16
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.02)
    geometry = sorted(inputs.glob("*.geometry.vxz"))
    encode_shape(shape, geometry[0], device)
    for file in geometry:
        shape_s, (coords, _) = timed(lambda: encode_shape(shape, file, device), "cuda")
        material = file.with_name(file.name.replace(".geometry.", ".material."))
        pbr_s, _ = timed(lambda: encode_pbr(pbr, material, device), "cuda")
        row = {"asset": file.name, "tokens": len(coords), "shape_s": shape_s, "pbr_s": pbr_s,
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        results["encode"].append(row)
        print(json.dumps(row), flush=True)
    out.write_text(json.dumps(results, indent=1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert")
    convert.add_argument("--resolutions", default="256,512,1024")
    convert.add_argument("--out", type=Path, default=Path("/tmp/bench_data_convert.jsonl"))
    convert.add_argument("--summary-only", action="store_true")
    convert.add_argument("--assets", default="", help="Comma-separated substrings: only matching assets.")
    prep = sub.add_parser("prepare")
    prep.add_argument("--out", type=Path, required=True)
    prep.add_argument("--resolution", type=int, default=512)
    gpu = sub.add_parser("gpu")
    gpu.add_argument("--inputs", type=Path, required=True)
    gpu.add_argument("--views", type=int, default=16)
    gpu.add_argument("--size", type=int, default=512)
    gpu.add_argument("--out", type=Path, default=Path("bench_data_gpu.json"))
    args = parser.parse_args(argv)
    if args.command == "convert":
        if args.summary_only:
            summarize_convert(args.out)
        else:
            only = [a for a in args.assets.split(",") if a]
            bench_convert([int(r) for r in args.resolutions.split(",")], args.out, only)
    elif args.command == "prepare":
        prepare(args.out, args.resolution)
    else:
        bench_gpu(args.inputs, args.views, args.size, args.out)


if __name__ == "__main__":
    sys.exit(main())
