"""Benchmark of the rasterizer (`omnivox.render`): CPU (PyTorch path) and GPU (Triton and PyTorch paths).

Cases (issue #6):
* CPU: 512 x 512, one camera, a ~100K-triangle mesh (target < 2 s on the 2-core CI-class machine).
* GPU: 1024 x 1024, one camera, ~1M triangles, rasterize + shade (target < 20 ms on an H100);
  16 cameras at 512 x 512, ~200K triangles (target < 50 ms).

Meshes are procedural bumpy spheres (closed, every ray hits two or more layers, triangles of mixed sizes), so
the script needs no asset files and runs on the device machine as is. "shade" = G-buffer interpolation
(world position, smooth vertex normal) + Lambert shading; "render_mesh" = the full `render_mesh` with
antialiasing (mask, depth, normal, position).

Usage: ``python bench/bench_render.py --device cpu`` or ``--device cuda [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omnivox.render import orbit_cameras, rasterize, render_mesh, vertex_normals  # noqa: E402
from omnivox.render import interpolate  # noqa: E402


def bumpy_sphere(target_triangles: int, device: str, seed: int = 0):
    """Closed latitude-longitude sphere with ~target_triangles faces and a smooth random bump field."""
    segments = max(8, int(round(math.sqrt(target_triangles))))
    rings = max(4, target_triangles // (2 * segments) + 1)
    theta = torch.linspace(0, math.pi, rings + 1, dtype=torch.float64)[1:-1]
    phi = torch.arange(segments, dtype=torch.float64) * (2 * math.pi / segments)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    g = torch.Generator().manual_seed(seed)
    bumps = torch.zeros_like(t)
    for _ in range(6):
        a, b, c = torch.rand(3, generator=g, dtype=torch.float64)
        bumps += 0.03 * torch.sin((3 + 9 * a) * t + 6 * b) * torch.cos((2 + 7 * c) * p)
    r = 0.5 * (1 + bumps)
    ring = torch.stack([r * torch.sin(t) * torch.cos(p), r * torch.sin(t) * torch.sin(p), r * torch.cos(t)], -1)
    vertices = torch.cat([torch.tensor([[0, 0, 0.5]], dtype=torch.float64), ring.reshape(-1, 3),
                          torch.tensor([[0, 0, -0.5]], dtype=torch.float64)])
    j = torch.arange(segments)
    j1 = (j + 1) % segments
    south = 1 + (rings - 1) * segments
    last = 1 + (rings - 2) * segments
    cap_n = torch.stack([torch.zeros_like(j), 1 + j, 1 + j1], -1)
    cap_s = torch.stack([torch.full_like(j, south), last + j1, last + j], -1)
    i = torch.arange(rings - 2).view(-1, 1)
    a = 1 + i * segments + j
    b = 1 + i * segments + j1
    c, d = a + segments, b + segments
    body = torch.stack([torch.stack([a, c, b], -1), torch.stack([b, c, d], -1)], 2).reshape(-1, 3)
    faces = torch.cat([cap_n, body, cap_s])
    return vertices.float().to(device), faces.to(device)


def timed(fn, device: str, repeats: int):
    """(first-call seconds, median seconds of ``repeats`` further calls)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - start
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), min(times)


def shade(vertices, faces, normals, extrinsics, intrinsics, size, backend):
    fragments = rasterize(vertices, faces, extrinsics, intrinsics, size, backend=backend)
    n = torch.nn.functional.normalize(interpolate(normals, faces, fragments)[:, 0], dim=-1)
    light = torch.tensor([0.3, -0.5, 0.8], device=vertices.device)
    lambert = (n * light).sum(-1).clamp(min=0) * 0.8 + 0.2
    return lambert * (fragments.triangle_id[:, 0] >= 0)


def run_case(name, triangles, cameras, size, device, backends, repeats, results):
    vertices, faces = bumpy_sphere(triangles, device)
    normals = vertex_normals(vertices, faces)
    extrinsics, intrinsics = orbit_cameras(cameras, radius=2.0, fov=math.radians(40))
    extrinsics, intrinsics = extrinsics.to(device), intrinsics.to(device)
    for backend in backends:
        rows = {
            "rasterize": lambda: rasterize(vertices, faces, extrinsics, intrinsics, size, backend=backend),
            "rasterize+shade": lambda: shade(vertices, faces, normals, extrinsics, intrinsics, size, backend),
            "render_mesh (AA)": lambda: render_mesh(vertices, faces, extrinsics, intrinsics, size, backend=backend),
        }
        for what, fn in rows.items():
            first, median, best = timed(fn, device, repeats)
            row = {"case": name, "triangles": int(faces.shape[0]), "cameras": cameras, "size": size,
                   "backend": backend, "what": what, "first_s": first, "median_s": median, "min_s": best}
            results.append(row)
            print(f"{name:28s} {backend:6s} {what:18s} first {first * 1e3:9.1f} ms   median {median * 1e3:9.2f} ms"
                  f"   min {best * 1e3:9.2f} ms", flush=True)


def tile_sweep(triangles, cameras, size, repeats, results):
    """Time the Triton key kernel alone for several tile sizes and pair-block sizes (to pick the defaults)."""
    from omnivox.render.cameras import to_camera
    from omnivox.render.kernels import triangle_setup
    from omnivox.render.kernels.triton.raster import rasterize_keys_triton

    vertices, faces = bumpy_sphere(triangles, "cuda")
    extrinsics, intrinsics = orbit_cameras(cameras, radius=2.0, fov=math.radians(40))
    cam = to_camera(vertices, extrinsics.cuda())
    clip = torch.tensor([[0.01, 100.0]], device="cuda").expand(cameras, 2)
    setup = triangle_setup(cam, faces, intrinsics.cuda(), (size, size), clip)
    first, median, best = timed(lambda: triangle_setup(cam, faces, intrinsics.cuda(), (size, size), clip), "cuda",
                                repeats)
    print(f"  setup alone: median {median * 1e3:.2f} ms", flush=True)
    results.append({"case": f"setup {triangles} x {cameras} @ {size}", "median_s": median})
    for tile in (4, 8, 16):
        for block in (16, 64):
            fn = lambda: rasterize_keys_triton(setup, cameras, (size, size), tile=tile,  # noqa: E731
                                               block_pairs=block)
            first, median, best = timed(fn, "cuda", repeats)
            results.append({"case": f"keys {triangles} x {cameras} @ {size}", "tile": tile, "block_pairs": block,
                            "median_s": median, "first_s": first})
            print(f"  keys tile {tile:2d} block {block:3d}: median {median * 1e3:.2f} ms (first {first * 1e3:.0f} ms)",
                  flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--sweep", action="store_true", help="also time Triton tile / block sizes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    machine = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpu": platform.processor() or platform.machine(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
        repeats = args.repeats or 20
        # The first call of the first case includes Triton's compilation (the first-call overhead).
        run_case("1 cam 1024^2 1M tris", 1_000_000, 1, 1024, "cuda", ["triton", "torch"], repeats, results)
        run_case("16 cams 512^2 200K tris", 200_000, 16, 512, "cuda", ["triton", "torch"], repeats, results)
        if args.sweep:
            tile_sweep(1_000_000, 1, 1024, repeats, results)
            tile_sweep(200_000, 16, 512, repeats, results)
    else:
        machine["load_avg"] = os.getloadavg()
        repeats = args.repeats or 5
        run_case("1 cam 512^2 100K tris", 100_000, 1, 512, "cpu", ["torch"], repeats, results)
        run_case("1 cam 256^2 20K tris", 20_000, 1, 256, "cpu", ["torch"], repeats, results)
    print(json.dumps(machine))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"bench_render_{args.device}.json").write_text(json.dumps({"machine": machine, "rows": results},
                                                                                indent=1))


if __name__ == "__main__":
    main()
