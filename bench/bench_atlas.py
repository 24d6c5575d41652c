"""UV atlas: the voxel atlas (``omnivox.ovoxel.atlas.voxel_atlas``) against xatlas, inside the whole GLB export.

For every shared asset and resolution: ``load_asset().normalized()`` -> ``scene_to_ovoxel`` -> ``dual_grid_to_mesh``
(no .vxz round trip: the geometry is the same) -> ``bake_glb`` once per ``UvMethod`` with the command line's
defaults (``--faces 200000 --tolerance 0.5``, 2048^2 textures), on ``--device``. Each row: per-stage seconds of the
export (``timings``; ``unwrap`` is the atlas alone), charts, texel utilisation (fraction of the texture covered by
UV triangles), seam length (world units and share of all edge length), faces, and the machine's load average.

Usage:
    python bench/bench_atlas.py --resolutions 256 --out /tmp/atlas.jsonl        # all assets, both methods
    python bench/bench_atlas.py --table /tmp/atlas.jsonl                        # markdown table and medians
    python bench/bench_atlas.py --device cuda --resolutions 256 512 --out gpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
SUFFIXES = {".glb", ".gltf", ".obj", ".ply", ".stl"}
EXPORT_STAGES = ("clean", "decimate", "unwrap", "rasterize", "lookup", "fill", "assemble")


def asset_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)


def surface_and_materials(rel: str, resolution: int):
    """The exporter's inputs for one asset: extracted surface, voxel coords, (N, 6) attributes in [0, 1]."""
    from omnivox.assets import load_asset
    from omnivox.ovoxel.extract import dual_grid_to_mesh
    from omnivox.ovoxel.materials import scene_to_ovoxel
    from omnivox.ovoxel.packing import unpack_geometry

    scene = load_asset(ASSETS / rel).normalized()
    record = scene_to_ovoxel(scene, resolution)
    coords = record.pop("coords")
    local, flags = unpack_geometry(record)
    vertices, faces = dual_grid_to_mesh(coords, local, flags, resolution)
    attributes = np.concatenate([np.asarray(record[k]).reshape(len(coords), -1) for k in
                                 ("base_color", "metallic", "roughness", "alpha")], axis=1)
    return vertices, faces, coords, attributes


def run_one(rel: str, resolution: int, texture_size: int, faces_budget: int, tolerance: float, device: str,
            methods) -> list[dict]:
    from omnivox.ovoxel.export import UvMethod, bake_glb
    from omnivox.ovoxel.grid import Grid

    start = time.perf_counter()
    vertices, faces, coords, attributes = surface_and_materials(rel, resolution)
    prepare_s = time.perf_counter() - start
    rows = []
    for name in methods:
        load = os.getloadavg()[0]
        start = time.perf_counter()
        _, report = bake_glb(vertices, faces, coords, attributes, Grid.make(resolution), texture_size=texture_size,
                             decimation_target=faces_budget, surface_tolerance=tolerance or None, device=device,
                             uv_method=UvMethod(name))
        rows.append({
            "asset": rel, "resolution": resolution, "uv": name, "device": device, "voxels": int(len(coords)),
            "extracted_faces": int(len(faces)), "faces": report.faces, "vertices": report.vertices,
            "texture_size": texture_size, "charts": report.uv_charts, "utilisation": report.uv_utilisation,
            "seam_length": report.seam_length, "seam_fraction": report.seam_fraction,
            "export_s": round(time.perf_counter() - start, 3), "prepare_s": round(prepare_s, 3),
            "seconds": {k: round(v, 3) for k, v in report.timings.items()}, "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2),
        })
    return rows


def table(rows: list[dict]) -> str:
    by_key = {}
    for r in rows:
        if "error" not in r:
            by_key.setdefault((r["asset"], r["resolution"]), {})[r["uv"]] = r
    head = ("| asset | R | faces | xatlas unwrap s | voxel unwrap s | xatlas export s | voxel export s | "
            "xatlas charts | voxel charts | xatlas util | voxel util | xatlas seam % | voxel seam % | load |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for (asset, resolution), pair in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        x, v = pair.get("xatlas"), pair.get("voxel")

        def cell(r, key, fmt):
            return format(r[key], fmt) if r is not None else "-"

        def unwrap(r):
            return f"{r['seconds']['unwrap']:.2f}" if r is not None else "-"

        ref = v or x
        loads = [r["load_before"] for r in (x, v) if r is not None]
        out.append(f"| {asset} | {resolution} | {ref['faces']:,} | {unwrap(x)} | {unwrap(v)} | "
                   f"{cell(x, 'export_s', '.2f')} | {cell(v, 'export_s', '.2f')} | {cell(x, 'charts', ',')} | "
                   f"{cell(v, 'charts', ',')} | {cell(x, 'utilisation', '.3f')} | {cell(v, 'utilisation', '.3f')} | "
                   f"{100 * x['seam_fraction'] if x else float('nan'):.1f} | "
                   f"{100 * v['seam_fraction'] if v else float('nan'):.1f} | {max(loads):.1f} |")
    for name in ("xatlas", "voxel"):
        chosen = [r for r in rows if r.get("uv") == name and "error" not in r]
        if chosen:
            unwrap = np.array([r["seconds"]["unwrap"] for r in chosen])
            export = np.array([r["export_s"] for r in chosen])
            out.append(f"\n{name}: {len(chosen)} rows; unwrap median {np.median(unwrap):.2f} s, max "
                       f"{unwrap.max():.2f} s; export median {np.median(export):.2f} s, max {export.max():.2f} s; "
                       f"utilisation median {np.median([r['utilisation'] for r in chosen]):.3f}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256])
    parser.add_argument("--texture-size", type=int, default=2048)
    parser.add_argument("--faces", type=int, default=200_000, help="face budget (the command line's default)")
    parser.add_argument("--tolerance", type=float, default=0.5, help="surface tolerance in voxels (0: none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--uv", nargs="+", default=["xatlas", "voxel"], choices=("xatlas", "voxel"))
    parser.add_argument("--assets", nargs="*", help="relative asset paths (default: all)")
    parser.add_argument("--out", type=Path, default=Path("atlas_bench.jsonl"))
    parser.add_argument("--table", type=Path, help="print the markdown table of a results file and exit")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    if not ASSETS.is_dir():
        sys.exit(f"shared assets not found at {ASSETS}")
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load {os.getloadavg()[0]:.1f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for resolution in args.resolutions:
        for rel in args.assets or asset_files(ASSETS):
            try:
                rows = run_one(rel, resolution, args.texture_size, args.faces, args.tolerance, args.device, args.uv)
            except (ValueError, RuntimeError, MemoryError) as error:
                rows = [{"asset": rel, "resolution": resolution, "error": str(error)[:200]}]
            with args.out.open("a") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
