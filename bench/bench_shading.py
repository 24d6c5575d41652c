"""Cost of the PBR preview path on top of the rasterizer: environment build, shading, SSAO, tone mapping, and a
full `render_pbr` of a real asset split into rasterize vs. the rest.

    python bench/bench_shading.py --device cpu [--threads 2] [--asset ../shared/assets/mesh/stanford-bunny.obj]
    python bench/bench_shading.py --device cuda

Prints a markdown table. Times are medians of ``--repeats`` calls after one warm-up; "first" is the first call.
The baseline in the same run is `rasterize` alone for the same mesh, cameras and resolution.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from omnivox.render.environment import Environment
from omnivox.render.pbr import shade_pbr
from omnivox.preview import framing_radius, load_preview_source, render_pbr, snapshot_cameras
from omnivox.render.rasterize import rasterize
from omnivox.render.ssao import ambient_visibility
from omnivox.render.tonemap import tonemap

DEFAULT_ASSET = Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "mesh" / "stanford-bunny.obj"


def timed(fn, device, repeats):
    def once():
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = once()
    return first, statistics.median(once() for _ in range(repeats))


def _load(path: Path, device):
    """An asset file, or an ``.npz`` with Z-up ``vertices``/``faces`` (for machines without the asset folder)."""
    if path.suffix != ".npz":
        return load_preview_source(path, device=device)
    import numpy as np

    from omnivox.assets.scene import Scene, default_material
    from omnivox.preview import PreviewSource

    data = np.load(path, allow_pickle=False)
    vertices, faces = data["vertices"].astype(np.float32), data["faces"].astype(np.int64)
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    scene = Scene(vertices=vertices, faces=faces, uvs=[], normals=np.repeat(normal[:, None], 3, 1).astype(np.float32),
                  colors=None, material_ids=np.zeros(len(faces), np.int32), materials=[default_material()],
                  source=path.name)
    return PreviewSource.from_scene(scene, up="z", device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--asset", type=Path, default=DEFAULT_ASSET)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    res = args.resolution
    rows = []

    first, warm = timed(lambda: Environment.builtin("studio", device=device), device, args.repeats)
    rows.append(("Environment.builtin('studio') (256 x 128, 6 levels, SH9, BRDF table)", first, warm))
    env = Environment.builtin("studio", device=device)

    g = torch.Generator().manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(res * res, 3, generator=g), dim=-1).to(device)
    v = torch.nn.functional.normalize(n + 0.5 * torch.randn(res * res, 3, generator=g).to(device), dim=-1)
    base = torch.rand(res * res, 3, generator=g).to(device)
    met, rough = torch.rand(2, res * res, generator=g).to(device)
    first, warm = timed(lambda: shade_pbr(env, n, v, base, met, rough), device, args.repeats)
    rows.append((f"shade_pbr, {res} x {res} samples", first, warm))
    first, warm = timed(lambda: tonemap(base.view(res, res, 3) * 3), device, args.repeats)
    rows.append((f"tonemap (ACES + sRGB), {res} x {res}", first, warm))

    z = 2 + 0.1 * torch.rand(res, res, generator=g)
    j, i = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="xy")
    positions = torch.stack([((j + 0.5) / res - 0.5) * z, ((i + 0.5) / res - 0.5) * z, z], -1).to(device)
    normals = torch.tensor([0.0, 0.0, -1.0], device=device).expand(res, res, 3).contiguous()
    mask = torch.ones(res, res, dtype=torch.bool, device=device)
    k = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]], device=device)
    first, warm = timed(lambda: ambient_visibility(positions, normals, mask, k), device, args.repeats)
    rows.append((f"SSAO (64 samples), {res} x {res}", first, warm))

    source = _load(args.asset, device)
    fov = math.radians(36)
    extrinsics, intrinsics = snapshot_cameras(1, framing_radius(source, fov), fov)
    faces = len(source.faces)
    first, warm = timed(lambda: rasterize(source.vertices, source.faces, extrinsics.to(device), intrinsics.to(device),
                                          (res, res)), device, args.repeats)
    rows.append((f"baseline: rasterize only, {args.asset.name} ({faces:,} triangles), {res} x {res}", first, warm))
    raster_warm = warm
    for ssao in (False, True):
        first, warm = timed(lambda: render_pbr(source, extrinsics, intrinsics, res, env, ssao=ssao), device,
                            args.repeats)
        rows.append((f"render_pbr, same ({'with' if ssao else 'no'} SSAO)", first, warm))
        rows.append(("  of which shading etc. (render_pbr - rasterize)", float("nan"), warm - raster_warm))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| step | first call | median |")
    print("|---|---:|---:|")
    for label, first, warm in rows:
        first_text = "" if math.isnan(first) else f"{first * 1000:.1f} ms"
        print(f"| {label} | {first_text} | {warm * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
