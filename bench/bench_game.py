"""Game-ready export (``omnivox.ovoxel.game``): what the normal map buys at each triangle budget, and what it costs.

For every shared dev asset: convert at ``--resolution`` (``scene_to_ovoxel``), then for budgets of 5K, 20K and 100K
triangles export with and without the normal map, and render a turntable of the result and of the full-resolution
asset with the same cameras and lights (our rasterizer, ``omnivox.render``):

* reference: the full-resolution extracted surface with its area-weighted vertex normals, base colour looked up in
  the voxels at each pixel's point;
* export: level 0 of the GameAsset, base colour from its texture, shading normal from the interpolated vertex
  normal, or, with the normal map, ``normalize(m.x t + m.y b + m.z n)`` from the map and the written tangents (the
  glTF shading model).

Shading is Lambert under three lights fixed to the camera plus an ambient term, in linear space, sRGB-encoded and
composited over white. Metrics per export: PSNR of the shaded turntable against the reference (all pixels) and the
mean angle between the shading normals where both cover a pixel. Also recorded: export seconds (``export_game``,
without writing), and at 20K faces the Khronos validator's errors of the normal-mapped file and of the
``--watertight`` file, whose closure is checked independently with trimesh (``is_watertight`` and
``is_winding_consistent`` after merging vertices).

Usage: python bench/bench_game.py --resolution 256 --out docs/benchmarks/raw/game_export.jsonl
       python bench/bench_game.py --table docs/benchmarks/raw/game_export.jsonl
       python bench/bench_game.py --timing mesh/spot/spot_triangulated.obj --resolution 256 --texture-size 2048
       python bench/bench_game.py --sweep --resolution 256 --texture-size 1024
       python bench/bench_game.py --lod-sweep --resolution 256 --out docs/benchmarks/raw/game_export_lods.jsonl
       python bench/bench_game.py --lod-table docs/benchmarks/raw/game_export_lods.jsonl
       python bench/bench_game.py --texture-sweep --resolution 256 --out docs/benchmarks/raw/game_export_texture.jsonl

``--texture-sweep``: ``TexturingPipeline.run(profile=GameProfile(...))`` (``omnivox texture --profile game``) on every
dev asset as the user's mesh, with and without ``watertight``, 5K faces and 2 coarser levels, texture 256, no
occlusion. The models are replaced by a stand-in (the mesh's own dual-grid voxels, seeded random materials), so
this checks what the game path makes of users' meshes (welding, budget, levels, closure, validator), not texture
quality. Per run: triangles per level, closed per level, texture set per level, validator errors, seconds.

``--lod-sweep``: levels of detail. For every asset the full game profile at 20K faces with ``--lods`` coarser
levels, written and validated, twice in the same process: as shipped, and with ``game.LOD_SLACK`` set to infinity,
which keeps every level in level 0's atlas (the behaviour before levels could get their own atlas: the baseline).
Per level: triangles, ratio to the previous level, texture set, and the PSNR / mean normal angle of its turntable
against the full-resolution asset (same renders as above, each level with its own texture set and normal map).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
SUFFIXES = {".glb", ".gltf", ".obj", ".ply", ".stl"}
BUDGETS = (5_000, 20_000, 100_000)
# Lights in camera space (OpenCV axes: x right, y down, z forward), pointing from the surface to the light.
LIGHTS = ((np.array([-0.5, -0.7, -0.6]), 0.75), (np.array([0.7, -0.2, -0.5]), 0.35), (np.array([0.1, 0.8, -0.3]), 0.2))
AMBIENT = 0.12
# The console script, as a user runs it (pyproject's entry point, without needing it on PATH).
OMNIVOX = [sys.executable, "-c", "from omnivox.cli import app; app()"]


def asset_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


class Turntable:
    """Cameras and lights shared by every render of one asset."""

    def __init__(self, views: int, resolution: int, device):
        from omnivox.preview import turntable_cameras

        self.extrinsics, self.intrinsics = turntable_cameras(views, radius=2.2)
        self.extrinsics, self.intrinsics = self.extrinsics.to(device), self.intrinsics.to(device)
        self.resolution, self.device = resolution, device
        rotation_to_world = self.extrinsics[:, :3, :3].transpose(1, 2)  # camera -> world
        self.lights = [(torch.einsum("bij,j->bi", rotation_to_world,
                                     torch.tensor(d / np.linalg.norm(d), dtype=torch.float32, device=device)), w)
                       for d, w in LIGHTS]
        self.eyes = torch.linalg.inv(self.extrinsics)[:, :3, 3]

    def render(self, vertices, faces, attributes, shade_inputs):
        """Rasterise, interpolate ``attributes`` (V, C), and call ``shade_inputs(pixel_attrs, points, camera)`` ->
        (normals (K, 3) world, base colour (K, 3) linear). Returns shaded sRGB (B, H, W, 3), normals, mask."""
        from omnivox.render import interpolate, rasterize

        frags = rasterize(vertices, faces, self.extrinsics, self.intrinsics, self.resolution)
        mask = frags.triangle_id[:, 0] >= 0  # (B, H, W)
        values = interpolate(torch.cat([vertices, attributes], 1), faces, frags)[:, 0]  # (B, H, W, C)
        camera = torch.arange(mask.shape[0], device=self.device)[:, None, None].expand_as(mask)[mask]
        pixel = values[mask]
        points = pixel[:, :3]
        tri = frags.triangle_id[:, 0][mask]
        corners = vertices[faces[tri]]
        geometric = F.normalize(torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]),
                                dim=1)
        view = F.normalize(self.eyes[camera] - points, dim=1)
        facing = torch.where((geometric * view).sum(1, keepdim=True) < 0, -1.0, 1.0)
        normals, base = shade_inputs(pixel[:, 3:], points, facing)
        normals = F.normalize(normals, dim=1)
        normals = torch.where((normals * view).sum(1, keepdim=True) < 0, -normals, normals)  # two-sided
        light = torch.full_like(points[:, :1], AMBIENT)
        for direction, weight in self.lights:
            light = light + weight * (normals * direction[camera]).sum(1, keepdim=True).clamp(min=0)
        colour = linear_to_srgb(base * light)
        image = torch.ones(*mask.shape, 3, device=self.device)
        image[mask] = colour
        normal_image = torch.zeros(*mask.shape, 3, device=self.device)
        normal_image[mask] = normals
        return image, normal_image, mask


def reference_render(table: Turntable, asset):
    from omnivox.ovoxel.export import vertex_normals
    from omnivox.render import sample_sparse_volume

    v, f = asset.vertices.numpy(), asset.faces.numpy()
    normals = torch.from_numpy(vertex_normals(v, f)).to(table.device)
    coords = asset.coords.to(table.device).long()
    colours = torch.as_tensor(asset.attribute_matrix()[:, :3], device=table.device)

    def shade(attrs, points, facing):
        base = sample_sparse_volume(points, coords, colours, asset.resolution, normalize=True)
        return attrs[:, :3], srgb_to_linear(base.clamp(0, 1))

    return table.render(torch.from_numpy(v).to(table.device), torch.from_numpy(f).to(table.device), normals, shade)


def export_render(table: Turntable, level, base_color: np.ndarray, normal_map):
    from omnivox.render import sample_texture

    dev = table.device
    vertices = torch.from_numpy(level.vertices[level.vmapping]).float().to(dev)
    faces = torch.from_numpy(level.uv_faces).long().to(dev)
    t = torch.from_numpy(level.tangents).float().to(dev)
    n = torch.from_numpy(level.normals).float().to(dev)
    b = torch.linalg.cross(n, t[:, :3], dim=1) * t[:, 3:4]
    attrs = torch.cat([torch.from_numpy(level.uvs).float().to(dev), n, t[:, :3], b], 1)
    base_texture = torch.from_numpy(base_color[..., :3]).float().to(dev) / 255
    normal_texture = None if normal_map is None else torch.from_numpy(normal_map).float().to(dev) / 255

    def shade(pixel, points, facing):
        uv = pixel[:, :2]
        base = srgb_to_linear(sample_texture(base_texture, uv, mipmaps=False))
        normal = F.normalize(pixel[:, 2:5], dim=1)
        if normal_texture is not None:
            m = sample_texture(normal_texture, uv, mipmaps=False) * 2 - 1
            normal = (m[:, :1] * F.normalize(pixel[:, 5:8], dim=1) + m[:, 1:2] * F.normalize(pixel[:, 8:11], dim=1)
                      + m[:, 2:3] * normal)
        return normal, base

    return table.render(vertices, faces, attrs, shade)


def compare(reference, exported) -> dict:
    ref_image, ref_normal, ref_mask = reference
    image, normal, mask = exported
    mse = float(((ref_image - image) ** 2).mean())
    both = ref_mask & mask
    cos = (ref_normal[both] * normal[both]).sum(1).clamp(-1, 1)
    return {"psnr": round(10 * math.log10(1.0 / max(mse, 1e-12)), 3),
            "normal_angle_deg": round(float(torch.rad2deg(torch.acos(cos)).mean()), 3) if both.any() else None}


def independent_closure(path: Path) -> dict:
    """trimesh's own verdict on the file's surface (vertices merged by position)."""
    import trimesh

    mesh = trimesh.load(path, force="mesh", process=False)
    mesh = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)  # merges coincident vertices
    return {"is_watertight": bool(mesh.is_watertight), "is_winding_consistent": bool(mesh.is_winding_consistent),
            "volume_positive": bool(mesh.is_watertight and mesh.volume > 0)}


def run_asset(rel: str, args, device) -> dict:
    from omnivox.assets import load_asset
    from omnivox.ovoxel.asset import OVoxel
    from omnivox.ovoxel.convert import scene_to_ovoxel
    from omnivox.ovoxel.game import GameProfile, export_game

    start = time.perf_counter()
    scene = load_asset(ASSETS / rel).normalized()
    record = scene_to_ovoxel(scene, args.resolution, device=device)
    asset = OVoxel.from_file_attributes(record["coords"], {k: v for k, v in record.items() if k != "coords"},
                                        args.resolution)
    row = {"asset": rel, "resolution": args.resolution, "voxels": len(asset.coords), "full_faces": len(asset.faces),
           "convert_s": round(time.perf_counter() - start, 2), "runs": []}
    inputs = (asset.vertices.numpy(), asset.faces.numpy(), asset.coords.numpy(), asset.attribute_matrix(), asset.grid)
    table = Turntable(args.views, args.image_size, device)
    reference = reference_render(table, asset)
    with tempfile.TemporaryDirectory() as folder:
        for budget in BUDGETS:
            for normal_map in (False, True):
                # Occlusion is not part of the comparison (the renderer does not read it): off in these runs.
                profile = GameProfile(faces=budget, normal_map=normal_map, occlusion=False,
                                      texture_size=args.texture_size)
                start = time.perf_counter()
                game = export_game(*inputs, profile=profile, device=device)
                seconds = time.perf_counter() - start
                level = game.levels[0]
                row["runs"].append({"faces": budget, "normal_map": normal_map, "export_s": round(seconds, 2),
                                    "triangles": len(level.uv_faces),
                                    "timings": {k: round(v, 3) for k, v in game.report.timings.items()},
                                    **compare(reference, export_render(table, level, game.base_color,
                                                                       level.normal_map))})
        # The full game profile at 20K (normal map and occlusion), written and validated.
        start = time.perf_counter()
        game = export_game(*inputs, profile=GameProfile(faces=20_000, texture_size=args.texture_size), device=device)
        seconds = time.perf_counter() - start
        report = game.save(Path(folder) / "game.glb")
        row["game"] = {"export_s": round(seconds, 2), "triangles": report.levels[0].triangles,
                       "validator_errors": report.validator_errors,
                       "validator_warnings": report.validator.get("warnings"),
                       "normal_map_coverage": round(report.normal_map_coverage, 4),
                       "timings": {k: round(v, 3) for k, v in report.timings.items()}}
        start = time.perf_counter()
        game = export_game(*inputs, profile=GameProfile(faces=20_000, watertight=True, lods=args.lods,
                                                        texture_size=args.texture_size), device=device)
        seconds = time.perf_counter() - start
        path = Path(folder) / "watertight.glb"
        report = game.save(path)
        row["watertight"] = {"export_s": round(seconds, 2), "triangles": report.levels[0].triangles,
                             "lod_triangles": [level.triangles for level in report.levels],
                             "validator_errors": report.validator_errors,
                             "report_watertight": [level.watertight for level in report.levels],
                             **independent_closure(path)}
    return row


def device_timing(args) -> None:
    """Seconds of ``export_game`` per stage at 20K faces, the plain profile (no maps) against the full game profile
    (normal map + occlusion), on CUDA and on the CPU of the same machine, after a small warm-up run on each."""
    from omnivox.assets import load_asset
    from omnivox.ovoxel.asset import OVoxel
    from omnivox.ovoxel.convert import scene_to_ovoxel
    from omnivox.ovoxel.game import GameProfile, export_game

    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    record = scene_to_ovoxel(load_asset(ASSETS / args.timing).normalized(), args.resolution, device=devices[0])
    asset = OVoxel.from_file_attributes(record["coords"], {k: v for k, v in record.items() if k != "coords"},
                                        args.resolution)
    inputs = (asset.vertices.numpy(), asset.faces.numpy(), asset.coords.numpy(), asset.attribute_matrix(), asset.grid)
    print(json.dumps({"asset": args.timing, "resolution": args.resolution, "voxels": len(asset.coords),
                      "full_faces": len(asset.faces)}), flush=True)
    for device in devices:
        export_game(*inputs, profile=GameProfile(faces=2000, texture_size=256), device=device)  # warm-up
        for name, profile in (("no maps", GameProfile(faces=20_000, normal_map=False, occlusion=False,
                                                      texture_size=args.texture_size)),
                              ("game", GameProfile(faces=20_000, texture_size=args.texture_size))):
            start = time.perf_counter()
            game = export_game(*inputs, profile=profile, device=device)
            print(json.dumps({"device": device, "profile": name, "texture_size": args.texture_size,
                              "seconds": round(time.perf_counter() - start, 3),
                              "stages": {k: round(v, 3) for k, v in game.report.timings.items()}}), flush=True)


def command_line_sweep(args) -> None:
    """The done-when check through the command line: for every asset ``omnivox convert -r R``, then
    ``omnivox export --profile game --faces 20000`` with and without ``--watertight``; prints one JSON line per asset
    with both reports' verdicts and trimesh's closure check of the watertight file."""
    import subprocess

    with tempfile.TemporaryDirectory() as folder:
        for rel in args.assets or asset_files(ASSETS):
            vxz, row = Path(folder) / "asset.vxz", {"asset": rel, "resolution": args.resolution}
            subprocess.run([*OMNIVOX, "convert", str(ASSETS / rel), str(vxz), "-r",
                            str(args.resolution)], check=True, capture_output=True)
            for name, extra in (("game", []), ("watertight", ["--watertight"])):
                glb = Path(folder) / f"{name}.glb"
                start = time.perf_counter()
                result = subprocess.run([*OMNIVOX, "export", str(vxz), str(glb),
                                         "--profile", "game", "--faces", "20000", "--texture-size",
                                         str(args.texture_size), *extra], capture_output=True, text=True)
                if result.returncode != 0:
                    row[name] = {"failed": result.stdout[-500:] + result.stderr[-500:]}
                    continue
                report = json.loads((Path(folder) / f"{name}.report.json").read_text())
                level = report["levels"][0]
                row[name] = {"seconds": round(time.perf_counter() - start, 1), "triangles": level["triangles"],
                             "manifold": level["manifold"], "watertight": level["watertight"],
                             "validator_errors": report["validator"].get("errors"),
                             "validator_warnings": report["validator"].get("warnings")}
                if extra:
                    row[name].update(independent_closure(glb))
            row["date"] = time.strftime("%Y-%m-%d %H:%M")
            print(json.dumps(row), flush=True)


def lod_sweep_asset(rel: str, args, device) -> dict:
    """One asset of ``--lod-sweep``: the shipped levels against the shared-atlas-only baseline."""
    from omnivox.assets import load_asset
    from omnivox.ovoxel import game as game_module
    from omnivox.ovoxel.asset import OVoxel
    from omnivox.ovoxel.convert import scene_to_ovoxel
    from omnivox.ovoxel.game import GameProfile, export_game

    record = scene_to_ovoxel(load_asset(ASSETS / rel).normalized(), args.resolution, device=device)
    asset = OVoxel.from_file_attributes(record["coords"], {k: v for k, v in record.items() if k != "coords"},
                                        args.resolution)
    inputs = (asset.vertices.numpy(), asset.faces.numpy(), asset.coords.numpy(), asset.attribute_matrix(), asset.grid)
    table = Turntable(args.views, args.image_size, device)
    reference = reference_render(table, asset)
    row = {"asset": rel, "resolution": args.resolution, "full_faces": len(asset.faces), "lods": args.lods}
    shipped_slack = game_module.LOD_SLACK
    with tempfile.TemporaryDirectory() as folder:
        for name, slack in (("shared_atlas_only", math.inf), ("shipped", shipped_slack)):
            game_module.LOD_SLACK = slack
            try:
                start = time.perf_counter()
                game = export_game(*inputs, profile=GameProfile(faces=20_000, lods=args.lods,
                                                                texture_size=args.texture_size), device=device)
                seconds = time.perf_counter() - start
            finally:
                game_module.LOD_SLACK = shipped_slack
            report = game.save(Path(folder) / f"{name}.glb")
            levels = []
            for level in game.levels:
                textures = game.texture_sets[level.texture_set]
                levels.append({"triangles": len(level.uv_faces), "texture_set": level.texture_set,
                               "texture_size": textures.size, "normal_map": level.normal_map is not None,
                               **compare(reference, export_render(table, level, textures.base_color,
                                                                  level.normal_map))})
            row[name] = {"export_s": round(seconds, 2), "file_bytes": report.file_bytes,
                         "validator_errors": report.validator_errors, "levels": levels}
    return row


def texture_sweep_asset(rel: str, args, device) -> dict:
    """One asset of ``--texture-sweep`` (module docstring): the user's mesh through the texturing game path."""
    from omnivox.ovoxel.dual_grid import mesh_to_dual_grid
    from omnivox.ovoxel.game import GameProfile
    from omnivox.pipelines.texturing import TexturingPipeline

    class StandInModels(TexturingPipeline):
        """The texturing pipeline without models: the mesh's voxels with seeded random materials."""

        def __init__(self):
            self.device = torch.device(device)

        def texture_voxels(self, vertices, faces, *, resolution, **_):
            coords, _, _ = mesh_to_dual_grid(vertices, faces, resolution)
            materials = np.random.default_rng(0).random((len(coords), 6)).astype(np.float32)
            return torch.as_tensor(np.asarray(coords), dtype=torch.int32), materials, None

    image = next(p for p in sorted((ASSETS / "images").iterdir()) if p.suffix == ".webp")
    row = {"asset": rel, "resolution": args.resolution, "image": image.name, "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        for watertight in (False, True):
            start = time.perf_counter()
            try:
                game = StandInModels().run(ASSETS / rel, image, resolution=args.resolution, preprocess=False,
                                           profile=GameProfile(faces=5000, lods=2, watertight=watertight,
                                                               occlusion=False, texture_size=256))
                report = game.save(Path(folder) / "textured.glb")
            except (ValueError, RuntimeError) as error:
                row["runs"].append({"watertight": watertight, "failed": f"{type(error).__name__}: {error}"})
                continue
            row["runs"].append({"watertight": watertight, "triangles": [level.triangles for level in report.levels],
                                "closed": [level.watertight for level in report.levels],
                                "texture_sets": report.level_texture_sets,
                                "validator_errors": report.validator_errors,
                                "seconds": round(time.perf_counter() - start, 1)})
    return row


def texture_markdown(rows: list[dict]) -> str:
    lines = ["| asset | triangles per level | closed per level | texture sets | validator errors | s | "
             "watertight: triangles per level | closed per level | texture sets | validator errors | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row["asset"]]
        for run in row["runs"]:
            if "failed" in run:
                cells += ["failed: " + run["failed"][:80], "", "", "", ""]
                continue
            cells += [str(run["triangles"]), str(run["closed"]), str(run["texture_sets"]),
                      str(run["validator_errors"]), f"{run['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lod_markdown(rows: list[dict]) -> str:
    lines = ["| asset | triangles per level, shared atlas only | ratios | triangles per level, shipped | ratios | "
             "texture sets (sizes) | PSNR per level, shared only | PSNR per level, shipped | MB shared only | "
             "MB shipped | validator errors |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row["asset"]]
        for name in ("shared_atlas_only", "shipped"):
            faces = [level["triangles"] for level in row[name]["levels"]]
            cells += [str(faces), str([round(b / a, 2) for a, b in zip(faces, faces[1:])])]
        cells.append(str([f"{level['texture_set']} ({level['texture_size']})" for level in row["shipped"]["levels"]]
                         ).replace("'", ""))
        for name in ("shared_atlas_only", "shipped"):
            cells.append(str([round(level["psnr"], 1) for level in row[name]["levels"]]))
        cells += [f"{row[name]['file_bytes'] / 1e6:.2f}" for name in ("shared_atlas_only", "shipped")]
        cells.append(f"{row['shared_atlas_only']['validator_errors']} / {row['shipped']['validator_errors']}")
        lines.append("| " + " | ".join(cells) + " |")
    ratios = [b["triangles"] / a["triangles"] for row in rows
              for a, b in zip(row["shipped"]["levels"], row["shipped"]["levels"][1:])]
    old = [b["triangles"] / a["triangles"] for row in rows
           for a, b in zip(row["shared_atlas_only"]["levels"], row["shared_atlas_only"]["levels"][1:])]
    lines += ["", f"Level-to-level triangle ratio over {len(rows)} assets: shipped median {np.median(ratios):.2f}, "
                  f"max {max(ratios):.2f}; shared atlas only median {np.median(old):.2f}, max {max(old):.2f}."]
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    lines = ["| asset | budget | tris | PSNR flat | PSNR normal map | angle flat (deg) | angle normal map (deg) | "
             "export s flat | export s game |", "|---|---|---|---|---|---|---|---|---|"]
    gains, wins, angle_wins = [], 0, 0
    for row in rows:
        runs = {(r["faces"], r["normal_map"]): r for r in row["runs"]}
        for budget in BUDGETS:
            flat, mapped = runs[budget, False], runs[budget, True]
            lines.append(f"| {row['asset']} | {budget // 1000}K | {mapped['triangles']} | {flat['psnr']:.2f} | "
                         f"{mapped['psnr']:.2f} | {flat['normal_angle_deg']} | {mapped['normal_angle_deg']} | "
                         f"{flat['export_s']:.1f} | {mapped['export_s']:.1f} |")
            gains.append(mapped["psnr"] - flat["psnr"])
        wins += runs[20_000, True]["psnr"] > runs[20_000, False]["psnr"]
        angle_wins += runs[20_000, True]["normal_angle_deg"] < runs[20_000, False]["normal_angle_deg"]
    lines.append("")
    lines.append(f"At 20K the normal map raises PSNR on {wins} and lowers the mean normal angle on {angle_wins} of "
                 f"{len(rows)} assets; mean PSNR change over all budgets and assets {np.mean(gains):+.2f} dB.")
    lines += ["", "| asset | game tris | validator errors | warnings | normal-map coverage | game export s | "
                  "watertight tris | LOD tris | validator errors | trimesh watertight | winding consistent | "
                  "volume > 0 | watertight export s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        game, w = row["game"], row["watertight"]
        lines.append(f"| {row['asset']} | {game['triangles']} | {game['validator_errors']} | "
                     f"{game['validator_warnings']} | {game['normal_map_coverage']} | {game['export_s']:.1f} | "
                     f"{w['triangles']} | {w['lod_triangles']} | {w['validator_errors']} | {w['is_watertight']} | "
                     f"{w['is_winding_consistent']} | {w['volume_positive']} | {w['export_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--lods", type=int, default=2, help="levels of detail of the watertight export and of --lod-sweep")
    parser.add_argument("--assets", nargs="*", help="paths under ../shared/assets (default: all)")
    parser.add_argument("--out", type=Path, help="append one JSON line per asset here")
    parser.add_argument("--table", type=Path, help="print the markdown table of a JSONL file and exit")
    parser.add_argument("--timing", help="only time the profiles on this asset, on CUDA and the CPU")
    parser.add_argument("--sweep", action="store_true", help="only the command-line done-when check of every asset")
    parser.add_argument("--lod-sweep", action="store_true", help="only the levels of detail against the "
                                                                 "shared-atlas-only baseline (--lods levels)")
    parser.add_argument("--lod-table", type=Path, help="print the markdown table of a --lod-sweep JSONL file")
    parser.add_argument("--texture-table", type=Path, help="print the markdown table of a --texture-sweep JSONL")
    parser.add_argument("--texture-sweep", action="store_true", help="only the texturing game path on every asset "
                                                                     "(stand-in models)")
    args = parser.parse_args()
    if args.table:
        print(markdown([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    if args.texture_table:
        print(texture_markdown([json.loads(line) for line in args.texture_table.read_text().splitlines()
                                if line.strip()]))
        return
    if args.lod_table:
        print(lod_markdown([json.loads(line) for line in args.lod_table.read_text().splitlines() if line.strip()]))
        return
    if not ASSETS.is_dir():
        sys.exit(f"shared assets not found at {ASSETS}")
    if args.timing:
        device_timing(args)
        return
    if args.sweep:
        command_line_sweep(args)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    done = set()
    if args.out and args.out.exists():
        done = {json.loads(line)["asset"] for line in args.out.read_text().splitlines() if line.strip()}
    print(f"# {platform.node()}, {torch.get_num_threads()} CPU threads, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, resolution {args.resolution}, textures {args.texture_size}",
          flush=True)
    for rel in args.assets or asset_files(ASSETS):
        if rel in done:
            continue
        if args.lod_sweep:
            row = lod_sweep_asset(rel, args, device)
        elif args.texture_sweep:
            row = texture_sweep_asset(rel, args, device)
        else:
            row = run_asset(rel, args, device)
        row["machine"] = f"{platform.node()} {torch.get_num_threads()} threads {device}"
        row["date"] = time.strftime("%Y-%m-%d %H:%M")
        print(json.dumps(row), flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
