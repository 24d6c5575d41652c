"""Fidelity of the O-Voxel round trip to a textured GLB, for every shared asset.

asset -> ``load_asset().normalized()`` -> ``scene_to_ovoxel`` (geometry + PBR attributes at R^3) -> ``.vxz`` bytes
-> ``dual_grid_to_mesh`` -> ``bake_glb`` -> ``save_glb``, then against the original surface:

* Chamfer distance x1e6 and normal consistency (``omnivox.ovoxel.metrics.surface_fidelity``: squared distances,
  both directions, exact point-to-triangle, interior surfaces included; the GLB is mapped back to Z-up first);
* base colour / metallic / roughness / alpha PSNR (dB, values in [0, 1]) at area-uniform sample points of the
  original surface: the truth is the asset's material there (texture x factor x vertex colour, alpha after its
  alphaMode, as the voxelizer reads it, at the finest mip), the prediction is the GLB's texture (bilinear) at the
  nearest of 2M sample points of the exported surface;
* triangle count, texture size, Khronos validator errors, seconds per stage.

Usage:
    python bench/bench_fidelity.py --resolutions 256 512 --out docs/benchmarks/fidelity.jsonl
    python bench/bench_fidelity.py --table docs/benchmarks/fidelity.jsonl     # print the markdown table
    python bench/bench_fidelity.py --compare OLD.jsonl NEW.jsonl               # before/after table

Each asset/resolution appends one JSON line as soon as it is done, so a long run can be polled and resumed
(``--skip-done``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
VALIDATOR = ROOT / "tests" / "gltf_validator" / "validate.js"
SUFFIXES = {".glb", ".gltf", ".obj", ".ply", ".stl"}


def asset_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)


def material_truth(scene, faces, bary):
    """Material of the scene at (face, barycentric) points, through the voxelizer's own channel reader."""
    from omnivox.ovoxel.grid import Grid
    from omnivox.ovoxel.materials import _PairSamples, _sample_channels

    triangles = torch.from_numpy(scene.vertices[scene.faces].astype(np.float32))
    samples = _PairSamples(*(torch.from_numpy(bary[:, k].astype(np.float32)) for k in range(3)),
                           torch.ones(len(faces)))
    # A very fine grid makes the mip selection pick level 0: the truth is the full-resolution texture.
    values = _sample_channels(scene, triangles, samples, torch.from_numpy(faces), ("base_color", "metallic",
                              "roughness", "alpha"), 0.0, Grid.make(4096), torch.device("cpu"))
    return {k: v.numpy().astype(np.float64).clip(0, 1) for k, v in values.items()}


def sample_with_barycentrics(vertices, faces, count, rng):
    tri = vertices[faces].astype(np.float64)
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = rng.choice(len(faces), size=count, p=area / area.sum())
    r1, r2 = rng.random(count), rng.random(count)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)
    points = np.einsum("pk,pkd->pd", bary, tri[face])
    return points, face, bary


def bilinear(image: np.ndarray, u: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Sample an (H, W, C) uint8 image at glTF texture coordinates (u, t), t = 0 at the top row."""
    h, w = image.shape[:2]
    x = np.clip(u * w - 0.5, 0, w - 1)
    y = np.clip(t * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    img = image.astype(np.float64) / 255
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def validate(path: Path):
    node = shutil.which("node")
    if node is None or not (VALIDATOR.parent / "node_modules").is_dir():
        return None
    out = subprocess.run([node, str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return -1
    return json.loads(out.stdout)["issues"]["numErrors"]


def run_one(rel: str, resolution: int, texture_size: int, decimation_target: int, samples: int, workdir: Path):
    from omnivox.assets import load_asset
    from omnivox.ovoxel.export import bake_glb, save_glb
    from omnivox.ovoxel.extract import dual_grid_to_mesh
    from omnivox.ovoxel.grid import Grid
    from omnivox.ovoxel.io import decode_vxz, encode_vxz
    from omnivox.ovoxel.materials import scene_to_ovoxel
    from omnivox.ovoxel.metrics import surface_fidelity
    from omnivox.ovoxel.packing import unpack_geometry

    timings = {}
    start = time.perf_counter()
    scene = load_asset(ASSETS / rel).normalized()
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    record = scene_to_ovoxel(scene, resolution)
    timings["convert"] = time.perf_counter() - start
    coords = record.pop("coords")
    start = time.perf_counter()
    coords, attrs = decode_vxz(encode_vxz(coords, record))
    timings["vxz"] = time.perf_counter() - start
    del record  # at 1024^3 every copy of the voxel attributes counts
    start = time.perf_counter()
    local, flags = unpack_geometry(attrs)
    vertices, faces = dual_grid_to_mesh(coords, local, flags, resolution)
    timings["extract"] = time.perf_counter() - start
    del local, flags
    attributes = np.concatenate([attrs[k].reshape(len(coords), -1) for k in ("base_color", "metallic", "roughness",
                                                                             "alpha")], axis=1)
    mesh, report = bake_glb(vertices, faces, coords, attributes, Grid.make(resolution), texture_size=texture_size,
                            decimation_target=decimation_target)
    timings.update(report.timings)
    start = time.perf_counter()
    path = save_glb(mesh, workdir / f"{Path(rel).stem}_{resolution}.glb")
    timings["save"] = time.perf_counter() - start
    errors = validate(path)

    # Back to the data's Z-up frame: glTF (x, y, z) came from (x, z, -y).
    out_vertices = np.stack([mesh.vertices[:, 0], -mesh.vertices[:, 2], mesh.vertices[:, 1]], axis=1)
    out_faces = np.asarray(mesh.faces)
    rng = np.random.default_rng(0)
    fidelity = surface_fidelity(scene.vertices, scene.faces, out_vertices, out_faces, samples=samples, rng=rng)

    from scipy.spatial import cKDTree

    points, face, bary = sample_with_barycentrics(scene.vertices, scene.faces, samples, rng)
    truth = material_truth(scene, face, bary)
    dense, dense_face, dense_bary = sample_with_barycentrics(out_vertices, out_faces, 2_000_000, rng)
    _, nearest = cKDTree(dense).query(points, workers=-1)
    uv = np.asarray(mesh.visual.uv)[out_faces[dense_face[nearest]]]  # (P, 3, 2) trimesh uv, v up
    uv = np.einsum("pk,pkd->pd", dense_bary[nearest], uv)
    u, t = uv[:, 0], 1.0 - uv[:, 1]
    base = bilinear(np.asarray(mesh.visual.material.baseColorTexture), u, t)
    mr = bilinear(np.asarray(mesh.visual.material.metallicRoughnessTexture), u, t)
    predicted = {"base_color": base[:, :3], "alpha": base[:, 3:4], "roughness": mr[:, 1:2], "metallic": mr[:, 2:3]}
    return {
        "asset": rel, "resolution": resolution, "voxels": int(len(coords)), "input_triangles": scene.num_faces,
        "extracted_faces": int(len(faces)), "faces": report.faces, "texture_size": texture_size,
        "alpha_mode": report.alpha_mode, "double_sided": report.double_sided, "holes_filled": report.holes_filled,
        "validator_errors": errors, "chamfer_x1e6": fidelity.chamfer * 1e6,
        "normal_consistency": fidelity.normal_consistency,
        **{f"psnr_{k}": psnr(truth[k], predicted[k]) for k in ("base_color", "metallic", "roughness", "alpha")},
        "glb_bytes": path.stat().st_size, "seconds": {k: round(v, 3) for k, v in timings.items()},
    }


def table(lines: list[dict]) -> str:
    head = ("| asset | R | voxels | GLB tris | Chamfer x1e6 | NC | PSNR base | PSNR metal | PSNR rough | PSNR alpha "
            "| alphaMode | validator errors | convert s | extract s | export s | of which unwrap s |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in lines:
        if "error" in r:
            rows.append(f"| {r['asset']} | {r['resolution']} | failed: {r['error']} |")
            continue
        s = r["seconds"]
        export = sum(v for k, v in s.items() if k in ("clean", "decimate", "unwrap", "rasterize", "lookup", "fill",
                                                      "assemble", "save"))
        rows.append(
            f"| {r['asset']} | {r['resolution']} | {r['voxels']:,} | {r['faces']:,} | {r['chamfer_x1e6']:.4g} | "
            f"{r['normal_consistency']:.4f} | {r['psnr_base_color']:.1f} | {r['psnr_metallic']:.1f} | "
            f"{r['psnr_roughness']:.1f} | {r['psnr_alpha']:.1f} | {r['alpha_mode']} | {r['validator_errors']} | "
            f"{s['convert']:.1f} | {s['extract']:.1f} | {export:.1f} | {s['unwrap']:.1f} |")
    return "\n".join(rows)


def read_results(path: Path) -> list[dict]:
    """The JSON lines of a results file (blank lines skipped)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare(before: list[dict], after: list[dict]) -> str:
    """Markdown table of the rows of ``after`` against the same asset/resolution in ``before``."""
    old = {(r["asset"], r["resolution"]): r for r in before if "error" not in r}
    head = ("| asset | R | double-sided before | after | GLB tris before | after | Chamfer x1e6 before | after "
            "| NC before | after | PSNR base before | after |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in after:
        b = old.get((r["asset"], r["resolution"]))
        if b is None or "error" in r:
            continue
        rows.append(
            f"| {r['asset']} | {r['resolution']} | {'yes' if b['double_sided'] else 'no'} | "
            f"{'yes' if r['double_sided'] else 'no'} | {b['faces']:,} | {r['faces']:,} | {b['chamfer_x1e6']:.4g} | "
            f"{r['chamfer_x1e6']:.4g} | {b['normal_consistency']:.4f} | {r['normal_consistency']:.4f} | "
            f"{b['psnr_base_color']:.1f} | {r['psnr_base_color']:.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--texture-size", type=int, default=2048)
    parser.add_argument("--faces", type=int, default=500_000, help="decimation target")
    parser.add_argument("--samples", type=int, default=100_000, help="surface samples per metric")
    parser.add_argument("--assets", nargs="*", help="relative asset paths (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "fidelity.jsonl")
    parser.add_argument("--skip-done", action="store_true", help="skip asset/resolution pairs already in --out")
    parser.add_argument("--table", type=Path, help="print the markdown table of a results file and exit")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"),
                        help="print a before/after table of two results files and exit")
    args = parser.parse_args()
    if args.compare:
        print(compare(*map(read_results, args.compare)))
        return
    if args.table:
        print(table(read_results(args.table)))
        return
    if not ASSETS.is_dir():
        sys.exit(f"shared assets not found at {ASSETS}")
    done = set()
    if args.skip_done and args.out.exists():
        done = {(r["asset"], r["resolution"]) for r in map(json.loads, args.out.read_text().splitlines())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for resolution in args.resolutions:
            for rel in args.assets or asset_files(ASSETS):
                if (rel, resolution) in done:
                    continue
                start = time.perf_counter()
                try:
                    result = run_one(rel, resolution, args.texture_size, args.faces, args.samples, Path(tmp))
                except (ValueError, RuntimeError) as error:
                    result = {"asset": rel, "resolution": resolution, "error": str(error)[:200]}
                result["wall_s"] = round(time.perf_counter() - start, 1)
                with args.out.open("a") as f:
                    f.write(json.dumps(result) + "\n")
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
