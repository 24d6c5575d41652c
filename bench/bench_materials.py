"""Time asset -> O-Voxel conversion (geometry + PBR materials) against the reference's published timings.

Usage:
    python bench/bench_materials.py [--device cpu|cuda] [--resolution 512] [--repeats 3] [--assets DIR]

For each asset: load + normalise once, one warm-up conversion (numba compilation, CUDA start-up), then the
best of ``--repeats`` runs of ``mesh_to_dual_grid`` (geometry) and ``voxelize_materials`` (materials).
The reference column is the reference implementation's material conversion at 512 on the 2-core development
machine (issue #3); the ratio is ours / reference (target <= 0.5 on that machine).
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from pathlib import Path

import torch

from omnivox.assets import load_asset
from omnivox.ovoxel import mesh_to_dual_grid, voxelize_materials

ASSETS = {
    "gltf/Avocado/Avocado.gltf": 1.01,
    "gltf/ToyCar/ToyCar.gltf": 1.25,
    "gltf/GlassVaseFlowers.glb": 1.34,
    "gltf/OrientationTest.glb": 2.04,
}


def best_time(function, repeats: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--assets", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "assets")
    args = parser.parse_args()
    device = torch.device(args.device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  device={device} ({machine})  torch threads={torch.get_num_threads()}"
          f"  resolution={args.resolution}")
    print("| asset | triangles | voxels | load s | geometry s | materials s | geometry + materials s "
          "| reference materials s | materials / reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for relative, reference in ASSETS.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scene = load_asset(args.assets / relative).normalized()
        load = time.perf_counter() - start
        if device.type == "cuda":
            vertices = torch.from_numpy(scene.vertices).to(device)
            faces = torch.from_numpy(scene.faces).to(device)
        else:
            vertices, faces = scene.vertices, scene.faces

        def geometry():
            return mesh_to_dual_grid(vertices, faces, args.resolution)

        def materials():
            return voxelize_materials(scene, args.resolution, device=device)

        coords, _ = materials()  # warm-up (compilation) and voxel count
        geometry()
        geometry_time = best_time(geometry, args.repeats, device)
        material_time = best_time(materials, args.repeats, device)
        print(f"| {relative} | {scene.num_faces} | {len(coords)} | {load:.2f} | {geometry_time:.3f} | "
              f"{material_time:.3f} | {geometry_time + material_time:.3f} | {reference:.2f} | "
              f"{material_time / reference:.2f} |")


if __name__ == "__main__":
    main()
