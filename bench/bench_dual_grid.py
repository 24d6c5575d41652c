"""Benchmark mesh <-> flexible dual grid against the reference's times (issue: O-Voxel geometry core).

Two steps, so the GPU machine (torch, numba, no trimesh, no assets) can run it:

    python bench/bench_dual_grid.py prepare bench/.data          # here: torus + normalised assets -> .npz
    python bench/bench_dual_grid.py run bench/.data --device cpu  # CPU (numba) times
    python bench/bench_dual_grid.py run bench/.data --device cuda # GPU (torch) times + agreement with the CPU path
    python bench/bench_dual_grid.py parity [--reference-module DIR] # ../shared/reference/ovoxel: times and parity

``parity`` converts the reference's own inputs and compares with its outputs (issue 20). With
``--reference-module DIR`` (a folder holding an importable build of the reference's C++ converter as ``refdg``, with
its ``mesh_to_flexible_dual_grid_cpu``; not part of this repository) it also times the reference in the same process,
interleaved with ours, so the ratio is measured under the same machine load.

Reference times: the reference's single-threaded C++ converter on the 2-core development machine (issue #2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

# (case name, resolution, reference seconds on the 2-core dev machine)
CASES = [
    ("torus", 256, 0.29),
    ("torus", 512, 0.82),
    ("torus", 1024, 3.55),
    ("GlassVaseFlowers", 512, 1.58),
    ("MetalRoughSpheresNoTextures", 512, 2.28),
    ("stanford-bunny", 512, 1.40),
    ("soup", 512, 15.6),
]
ASSETS = {
    "GlassVaseFlowers": "gltf/GlassVaseFlowers.glb",
    "MetalRoughSpheresNoTextures": "gltf/MetalRoughSpheresNoTextures.glb",
    "stanford-bunny": "mesh/stanford-bunny.obj",
    "soup": "mesh/soup.stl",
}


def prepare(out: Path) -> None:
    import trimesh

    from omnivox.assets import load_asset
    from omnivox.assets.scene import normalize_vertices

    out.mkdir(parents=True, exist_ok=True)
    torus = trimesh.creation.torus(major_radius=0.3, minor_radius=0.1, major_sections=256, minor_sections=128)
    np.savez_compressed(out / "torus.npz", vertices=torus.vertices.astype(np.float32), faces=torus.faces.astype(np.int32))
    shared = Path(__file__).resolve().parents[2] / "shared" / "assets"
    for name, rel in ASSETS.items():
        scene = load_asset(shared / rel)
        vertices, _, _ = normalize_vertices(scene.vertices)
        np.savez_compressed(out / f"{name}.npz", vertices=vertices, faces=scene.faces.astype(np.int32))


def _time(fn, repeat: int, sync) -> tuple[float, object]:
    result = fn()  # warm-up (JIT / CUDA context / caches)
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def run(data: Path, device: str, repeat: int) -> list[dict]:
    import torch

    from omnivox.ovoxel import dual_grid_to_mesh, mesh_to_dual_grid, to_local

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = []
    for name, res, ref_s in CASES:
        mesh = np.load(data / f"{name}.npz")
        v, f = mesh["vertices"], mesh["faces"].astype(np.int64)
        if cuda:
            vt, ft = torch.from_numpy(v).cuda(), torch.from_numpy(f).cuda()
            conv_s, (c, d, fl) = _time(lambda: mesh_to_dual_grid(vt, ft, res), repeat, sync)
        else:
            conv_s, (c, d, fl) = _time(lambda: mesh_to_dual_grid(v, f, res), repeat, sync)
        local = to_local(c, d, 1.0 / res)
        ext_s, (mv, mf) = _time(lambda: dual_grid_to_mesh(c, local, fl, res, orient=False), repeat, sync)
        ext_o, _ = _time(lambda: dual_grid_to_mesh(c, local, fl, res), max(1, repeat // 2), sync)
        row = dict(case=name, resolution=res, device=device, voxels=int(len(c)), faces=int(len(f)),
                   convert_s=conv_s, reference_s=ref_s, ratio=conv_s / ref_s, extract_s=ext_s, extract_oriented_s=ext_o)
        if cuda:  # agreement with the CPU (numba) path on the same input
            c_cpu, d_cpu, f_cpu = mesh_to_dual_grid(v, f, res)
            same = len(c_cpu) == len(c) and np.array_equal(c_cpu, c.cpu().numpy()) and np.array_equal(f_cpu, fl.cpu().numpy())
            err = np.abs(d_cpu - d.cpu().numpy()).max(1) * res if same else np.array([np.inf])
            row.update(cpu_gpu_same_voxels_order_flags=bool(same), dual_err_p50=float(np.median(err)),
                       dual_err_p99=float(np.quantile(err, 0.99)), dual_err_max=float(err.max()))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def parity(repeat: int, reference_module: Path | None) -> list[dict]:
    import torch

    from omnivox.ovoxel import Grid, mesh_to_dual_grid

    folder = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ovoxel"
    ref_fn = None
    if reference_module is not None:
        import sys

        sys.path.insert(0, str(reference_module))
        import refdg

        def ref_fn(v, f, G):  # the reference's call: shifted vertices, grid range [0, G)
            lo = torch.full((3,), -0.5)
            return refdg.mesh_to_flexible_dual_grid_cpu(
                torch.from_numpy(v) - lo, torch.from_numpy(f.astype(np.int32)), torch.full((3,), 1.0 / G),
                torch.tensor([[0, 0, 0], [G, G, G]], dtype=torch.int32), 1.0, 0.2, 1e-2, False)

    rows = []
    for entry in json.loads((folder / "index.json").read_text()):
        data = np.load(folder / entry["file"])
        v, f, G = data["vertices"], data["faces"], entry["resolution"]
        fns = {"ours": lambda: mesh_to_dual_grid(v, f, G)}
        if ref_fn is not None:
            fns["reference"] = lambda: ref_fn(v, f, G)
        times = {k: [] for k in fns}
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(repeat):  # interleaved, so both see the same load
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        c, d, fl = fns["ours"]()
        same = np.array_equal(c, data["coords"].astype(np.int32)) and np.array_equal(fl, data["intersected"])
        err = np.abs(d - data["dual_vertices"]).max(1) / Grid.make(G).voxel_size.max()
        row = dict(file=entry["file"], resolution=G, voxels=int(len(c)), faces=int(len(f)),
                   convert_s=statistics.median(times["ours"]), same_voxels_order_flags=bool(same),
                   bit_equal=float((d == data["dual_vertices"]).all(1).mean()), err_max=float(err.max()))
        if ref_fn is not None:
            row["reference_s"] = statistics.median(times["reference"])
            row["ratio"] = row["convert_s"] / row["reference_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| case | G | voxels | convert s | reference s | ratio | extract s (axis winding) | extract s (oriented) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['resolution']} | {r['voxels']:,} | {r['convert_s']:.3f} | {r['reference_s']:.2f} | "
                     f"{r['ratio']:.2f} | {r['extract_s']:.3f} | {r['extract_oriented_s']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("out", type=Path)
    r = sub.add_parser("run")
    r.add_argument("data", type=Path)
    r.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    r.add_argument("--repeat", type=int, default=3)
    r.add_argument("--json", type=Path)
    q = sub.add_parser("parity")
    q.add_argument("--repeat", type=int, default=7)
    q.add_argument("--reference-module", type=Path)
    args = parser.parse_args()
    if args.cmd == "prepare":
        prepare(args.out)
        return
    if args.cmd == "parity":
        parity(args.repeat, args.reference_module)
        return
    rows = run(args.data, args.device, args.repeat)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
