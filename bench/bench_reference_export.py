"""GLB export side by side (issue #16): our ``omnivox.ovoxel.export.bake_glb`` against the reference's
``o_voxel.postprocess.to_glb`` (built by ``bench/build_reference.sh``, FOR MEASUREMENT ONLY), same mesh, same voxels.

Inputs: ``.refkit/inputs/*.vxz`` + ``index.json`` (``bench/reference_kit.py inputs``: real assets converted by our
dataset conversion). For each asset the mesh is extracted once (our extraction, on ``--device``), then each
configuration runs ``1 + --repeats`` times: the first call of an implementation in this process is its cold time;
the rest give the warm median. Configurations:

* ``ours`` -- ``bake_glb`` with the product defaults (``DEFAULT_FACE_BUDGET`` faces, ``DEFAULT_SURFACE_TOLERANCE``,
  ``UvMethod.VOXEL``); ``ours-xatlas`` the same with ``UvMethod.XATLAS``; ``ours-500k`` 500K faces, no tolerance
  (the reference app's face target).
* ``ref-app`` -- ``to_glb(decimation_target=500000, remesh=True, remesh_band=1, remesh_project=0)``: TRELLIS.2's
  app.py defaults; ``ref-ovox2glb`` -- ``to_glb(decimation_target=100000)`` (o-voxel/examples/ovox2glb.py).

All at ``--texture-size`` (2048). GLB bytes: both meshes written by trimesh's ``export_glb`` (PNG textures), timed
apart (``write_s``). Our per-stage timings come from ``ExportReport.timings``. JSON to ``--out``, a markdown table
last. The reference part is skipped, and said so, when CUDA or the reference build is missing.

Usage (device): PYTHONPATH=/tmp/refsite:/tmp/site:$PWD python3 bench/bench_reference_export.py --out $OUT
Usage (here):   python bench/bench_reference_export.py --device cpu --smoke
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
REF_CONFIGS = {
    "ref-app": dict(decimation_target=500_000, remesh=True, remesh_band=1, remesh_project=0),
    "ref-ovox2glb": dict(decimation_target=100_000),
}
CORE_CONFIGS = ("ours", "ref-app", "ref-ovox2glb")
FIRST_ASSETS = ("spot_512", "spot_1024")  # issue #16's pair first, then the rest smallest first
PBR_LAYOUT = {"base_color": slice(0, 3), "metallic": slice(3, 4), "roughness": slice(4, 5), "alpha": slice(5, 6)}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def load_reference():
    """``o_voxel.postprocess`` loaded by path (its package ``__init__`` imports ``o_voxel._C``, which to_glb never
    uses and the kit does not build). Returns (module, None) or (None, reason)."""
    if not torch.cuda.is_available():
        return None, "no CUDA device"
    for name in ("flex_gemm", "cumesh", "nvdiffrast.torch", "cv2"):
        try:
            importlib.import_module(name)
        except Exception as error:
            return None, f"not built ({name}: {type(error).__name__}: {str(error)[:160]})"
    for entry in sys.path:
        path = Path(entry or ".") / "o_voxel" / "postprocess.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location("o_voxel_postprocess", path)
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as error:
                return None, f"not built (o_voxel.postprocess: {type(error).__name__}: {str(error)[:160]})"
            return module, None
    return None, "not built (o_voxel/postprocess.py not on sys.path)"


def load_asset(path: Path, resolution: int, device: str):
    """(vertices, faces, coords, attribute matrix (N, 6) float32, extraction seconds) from a ``.vxz``."""
    from omnivox.ovoxel.asset import OVoxel
    from omnivox.ovoxel.io import read_vxz
    from omnivox.ovoxel.packing import PBR_ATTRIBUTES, unpack_geometry

    coords, attrs = read_vxz(path)
    local, flags = unpack_geometry(attrs)
    attributes = {k: np.asarray(attrs[k], np.float32).reshape(len(coords), -1) / 255 for k in PBR_ATTRIBUTES}
    _sync(device)
    start = time.perf_counter()
    asset = OVoxel.from_dual_grid(torch.from_numpy(np.asarray(coords).astype(np.int32)).to(device), local, flags,
                                  attributes, resolution)
    _sync(device)
    extract = time.perf_counter() - start
    return (asset.vertices.numpy(), asset.faces.numpy(), asset.coords.numpy(), asset.attribute_matrix(), extract)


def glb_bytes(mesh) -> tuple[int, float]:
    import trimesh

    start = time.perf_counter()
    data = trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh), include_normals=True)
    return len(data), time.perf_counter() - start


def run_ours(inputs, resolution, device, texture_size, config):
    from omnivox.ovoxel.export import DEFAULT_FACE_BUDGET, DEFAULT_SURFACE_TOLERANCE, UvMethod, bake_glb

    vertices, faces, coords, attributes = inputs
    options = dict(decimation_target=DEFAULT_FACE_BUDGET, surface_tolerance=DEFAULT_SURFACE_TOLERANCE,
                   uv_method=UvMethod.VOXEL)
    if config == "ours-xatlas":
        options["uv_method"] = UvMethod.XATLAS
    elif config == "ours-500k":
        options.update(decimation_target=500_000, surface_tolerance=None)
    _sync(device)
    start = time.perf_counter()
    mesh, report = bake_glb(vertices, faces, coords, attributes, int(resolution), texture_size=texture_size,
                            device=device, **options)
    _sync(device)
    seconds = time.perf_counter() - start
    return mesh, seconds, {"faces": int(report.faces), "vertices": int(report.vertices),
                           "stages": {k: round(v, 4) for k, v in report.timings.items()},
                           "uv_charts": int(report.uv_charts), "uv_utilisation": round(report.uv_utilisation, 4)}


def run_reference(module, inputs, resolution, texture_size, config):
    vertices, faces, coords, attributes = inputs
    torch.cuda.synchronize()
    start = time.perf_counter()
    mesh = module.to_glb(vertices=torch.from_numpy(vertices).float().cuda(),
                         faces=torch.from_numpy(faces.astype(np.int32)).cuda(),
                         attr_volume=torch.from_numpy(attributes).float().cuda(),
                         coords=torch.from_numpy(coords.astype(np.int32)).cuda(), attr_layout=PBR_LAYOUT,
                         grid_size=int(resolution), aabb=[[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]],
                         texture_size=texture_size, **REF_CONFIGS[config])
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return mesh, seconds, {"faces": int(len(mesh.faces)), "vertices": int(len(mesh.vertices))}


def run_config(args, module, config, name, entry, inputs, first_call, began) -> dict:
    vertices, faces, coords, attributes = inputs
    family = config.split("-")[0]
    row = {"asset": name, "config": config, "voxels": int(len(coords)), "resolution": entry["resolution"],
           "input_faces": int(len(faces)), "cold": family not in first_call}
    first_call.add(family)
    times = []
    try:
        for attempt in range(1 + args.repeats):
            if attempt and time.perf_counter() - began > args.budget_s:
                row["repeats_cut"] = "budget"
                break
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            if config.startswith("ref"):
                mesh, seconds, info = run_reference(module, inputs, entry["resolution"], args.texture_size, config)
            else:
                mesh, seconds, info = run_ours(inputs, entry["resolution"], args.device, args.texture_size, config)
            times.append(seconds)
            row.update(info)
            if args.device == "cuda":
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if attempt == 0:
                row["glb_bytes"], row["write_s"] = glb_bytes(mesh)
                row["first_stages"] = row.get("stages")
            del mesh
    except Exception as error:
        row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        traceback.print_exc()
    row["first_s"] = round(times[0], 3) if times else None
    row["warm_median_s"] = round(statistics.median(times[1:]), 3) if len(times) > 1 else None
    row["warm_s"] = [round(t, 3) for t in times[1:]]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", default=str(ROOT / ".refkit" / "inputs"))
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--texture-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="warm runs after the first (median reported)")
    parser.add_argument("--assets", nargs="*", help="names from index.json (default: all, smallest first)")
    parser.add_argument("--configs", nargs="*",
                        default=["ours", "ref-app", "ref-ovox2glb", "ours-500k", "ours-xatlas"])
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="stop starting new warm repeats / configurations after this many seconds")
    parser.add_argument("--smoke", action="store_true", help="smallest asset, 512 texture, 1 run, ours only if no CUDA")
    args = parser.parse_args()
    if args.smoke:
        args.texture_size, args.repeats = 512, 0

    began = time.perf_counter()
    index = json.loads((Path(args.inputs) / "index.json").read_text())
    names = args.assets or ([n for n in FIRST_ASSETS if n in index]
                            + sorted((n for n in index if n not in FIRST_ASSETS), key=lambda n: index[n]["voxels"]))
    if args.smoke:
        names = sorted(names, key=lambda n: index[n]["voxels"])[:1]
    module, why = (None, "not wanted") if not any(c.startswith("ref") for c in args.configs) else load_reference()
    configs = [c for c in args.configs if not c.startswith("ref") or module is not None]
    header = {"host": platform.node(), "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "texture_size": args.texture_size, "repeats": args.repeats,
              "reference": "ok" if module is not None else why, "when": time.strftime("%Y-%m-%d %H:%M")}
    print("# " + json.dumps(header), flush=True)
    if module is None:
        print(f"reference: {why}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, first_call, loaded = [], set(), {}
    core = [c for c in configs if c in CORE_CONFIGS]
    phases = [core, [c for c in configs if c not in core]]  # extras only once every asset has the core ones
    for phase in phases:
        for name in names if phase else []:
            entry = index[name]
            if name not in loaded:
                if time.perf_counter() - began > args.budget_s:
                    rows.append({"asset": name, "config": "all", "skipped": "budget"})
                    continue
                loaded.clear()  # one asset in memory at a time
                loaded[name] = load_asset(Path(args.inputs) / entry["file"], entry["resolution"], args.device)
                v, f, c, _, extract = loaded[name]
                print(f"## {name}: {len(c)} voxels @ {entry['resolution']}^3, {len(f)} faces "
                      f"(extraction {extract:.2f} s)", flush=True)
            vertices, faces, coords, attributes, _ = loaded[name]
            inputs = (vertices, faces, coords, attributes)
            for config in phase:
                if time.perf_counter() - began > args.budget_s:
                    rows.append({"asset": name, "config": config, "skipped": "budget"})
                    continue
                rows.append(run_config(args, module, config, name, entry, inputs, first_call, began))
                print(json.dumps(rows[-1]), flush=True)
                (out / "reference_export.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))

    (out / "reference_export.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    print(f"\n### GLB export, {header['device']}, texture {args.texture_size}; reference: {header['reference']}")
    print("| asset | voxels | faces in | config | first s (cold?) | warm median s | faces out | GLB MB | "
          "peak GiB | our stages (last run, s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r or "error" in r:
            print(f"| {r['asset']} | | | {r['config']} | {r.get('skipped') or r.get('error')} | | | | | |")
            continue
        stages = " ".join(f"{k} {v:.2f}" for k, v in (r.get("stages") or {}).items())
        glb = f"{r['glb_bytes'] / 1e6:.1f}" if "glb_bytes" in r else ""
        print(f"| {r['asset']} | {r['voxels']} | {r['input_faces']} | {r['config']} | {r['first_s']}"
              f"{' (cold)' if r['cold'] else ''} | {r['warm_median_s']} | {r.get('faces')} | {glb} | "
              f"{r.get('peak_gib', '')} | {stages} |")


if __name__ == "__main__":
    main()
