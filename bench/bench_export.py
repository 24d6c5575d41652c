"""Per-stage time of ``omnivox.ovoxel.export.bake_glb`` on a synthetic O-Voxel sphere, CPU against CUDA.

The sphere (radius 0.35) is converted with ``mesh_to_dual_grid`` and extracted with the reference's axis-fixed
winding; its attributes vary with position. Stages: clean/decimate/unwrap run on the CPU in both cases (numpy,
fast-simplification, xatlas); rasterize/lookup/fill run on the chosen device.

Usage: python bench/bench_export.py --resolution 256 --texture-size 2048 [--faces 500000]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch


def main() -> None:
    import trimesh

    from omnivox.ovoxel import Grid, dual_grid_to_mesh, mesh_to_dual_grid, to_local
    from omnivox.ovoxel.export import bake_glb

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--texture-size", type=int, default=2048)
    parser.add_argument("--faces", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=2, help="runs per device; the last one is reported")
    args = parser.parse_args()

    grid = Grid.make(args.resolution)
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.35)
    coords, dual, flags = mesh_to_dual_grid(sphere.vertices, sphere.faces, args.resolution)
    vertices, faces = dual_grid_to_mesh(coords, to_local(coords, dual, grid.voxel_size), flags, args.resolution,
                                        orient=False)
    centres = (coords + 0.5) * grid.voxel_size + grid.lo
    attributes = np.concatenate([centres + 0.5, np.full((len(coords), 3), 0.5)], axis=1).astype(np.float32)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"# {platform.node()}, {torch.get_num_threads()} CPU threads, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}; {len(coords)} voxels, {len(faces)} faces")
    for device in devices:
        for _ in range(args.repeats):
            _, report = bake_glb(vertices, faces, coords, attributes, grid, texture_size=args.texture_size,
                                 decimation_target=args.faces, device=device)
        print(json.dumps({"device": device, "faces": report.faces, "texture_size": args.texture_size,
                          "seconds": {k: round(v, 3) for k, v in report.timings.items()}}))


if __name__ == "__main__":
    main()
