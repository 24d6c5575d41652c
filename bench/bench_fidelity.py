"""Fidelity of the O-Voxel round trip to a textured GLB, for every shared asset.

asset -> ``load_asset().normalized()`` -> ``scene_to_ovoxel`` (geometry + PBR attributes at R^3) -> ``.vxz`` bytes
-> ``dual_grid_to_mesh`` -> ``bake_glb`` -> ``save_glb``, then against the original surface:

* Chamfer distance x1e6 and normal consistency (``omnivox.ovoxel.metrics.surface_fidelity``: squared distances,
  both directions, exact point-to-triangle, interior surfaces included; omnivox's normalised scene against the GLB
  mapped back to Z-up);
* base colour / metallic / roughness / alpha PSNR (dB, values in [0, 1]) at area-uniform sample points of the
  original surface, with a truth that does not go through omnivox's asset or texture code (below);
* triangle count, texture size, Khronos validator errors, seconds per stage.

Material truth and prediction (independent of omnivox since 2026-12-07; before, the truth was read with the
voxelizer's own channel reader and so could not see the glTF v-flip of issue 26):

* Truth: the asset file is loaded with ``trimesh.load(path, force="scene")``; every triangle geometry of the scene
  graph is placed by its world transform; samples are drawn area-uniformly over those triangles and coloured from
  trimesh's data: UVs (trimesh stores v up; texel column u * W, row (1 - v) * H, bilinear, texel centres at +0.5),
  the material's PIL images (``PBRMaterial.baseColorTexture`` / ``metallicRoughnessTexture``, OBJ
  ``SimpleMaterial.image``), factors, glTF COLOR_0 vertex colours; base colour = texture x factor x vertex colour
  (values as stored, no colour-space conversion), metallic = B, roughness = G of the metal/rough texture x
  factors (glTF defaults 1), alpha after alphaMode (OPAQUE -> 1, MASK -> alpha >= cutoff, BLEND as is).
* What the bench reads itself, from the glTF JSON (standard library, Khronos spec): each texture's sampler wrap
  (default REPEAT) and ``KHR_texture_transform`` (trimesh ignores it; applied here with the ratified formula
  T * R * S in glTF's own (u, t) frame). Rows record ``psnr_base_color_trimesh_only`` (transform not applied) too.
* Conventions shared with omnivox on purpose (no file says otherwise): surfaces without a material (STL, OBJ
  without a readable MTL, glTF primitives without one) get the TRELLIS.2 data toolkit's default (grey 0.8,
  metallic 0, roughness 0.5); OBJ materials map as Blender's importer does (map_Kd else Kd, d, Pm, Pr else
  1 - sqrt(Ns / 1000)); trimesh's placeholder image for an OBJ without MTL is ignored.
* Not read by trimesh, so not in the truth (listed per asset in ``notes``): TEXCOORD_1 and above (trimesh keeps
  set 0 only), non-triangle primitives it drops (MeshPrimitiveModes: 10 of 16 triangles), skinning (trimesh places
  a skinned mesh by its node transforms; on Fox the bounding box agrees with omnivox's bind pose).
  trimesh stores baseColorFactor as uint8 (+-0.5/255).
* Frame: the truth samples are normalised with the spec-1.1 unit-box normalisation computed from trimesh's own
  vertices (float32: center = (min + max) / 2, scale = 0.99999 / max extent) and mapped into the exported GLB's
  axes: the file's own axes for glTF/GLB/OBJ, ``(x, y, z) -> (x, z, -y)`` for STL/PLY (and for every format
  with omnivox before 62ed076, whose loader kept the file's axes). This mapping is the one dependence on omnivox's
  behaviour; it is checked, not assumed: ``frame_check`` is the largest difference between the bounding boxes of
  trimesh's and omnivox's normalised surfaces in the GLB frame (0 to ~1e-8 on every asset but MeshPrimitiveModes,
  where trimesh drops triangles).
* Prediction: the written GLB file is loaded with trimesh the same way (its UVs, PIL textures, factors, sampler
  and alphaMode from its JSON) and read at the nearest of 2M area-uniform samples of its surface (KD-tree).

The number therefore includes the voxel resolution, the uint8 quantisation of the ``.vxz``, the texture bake and
nearest-point mismatch on thin or collapsed parts.

Usage:
    python bench/bench_fidelity.py --resolutions 256 512 --out docs/benchmarks/fidelity_independent.jsonl
    python bench/bench_fidelity.py --table docs/benchmarks/fidelity_independent.jsonl  # print the markdown table
    python bench/bench_fidelity.py --compare OLD.jsonl NEW.jsonl                        # before/after table
    python bench/bench_fidelity.py --resolutions 256 --uv xatlas ...                   # xatlas atlas (default voxel)
    PYTHONPATH=/path/to/other/worktree python bench/bench_fidelity.py ...  # measure another omnivox commit

The Khronos validator runs when ``tests/gltf_validator/node_modules`` exists or ``NODE_PATH`` names an install
(``npm ci`` of tests/gltf_validator/package.json). Each asset/resolution appends one JSON line as soon as it is
done, so a long run can be polled and resumed (``--skip-done``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from omnivox.ovoxel.packing import PBR_ATTRIBUTES

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
VALIDATOR = ROOT / "tests" / "gltf_validator" / "validate.js"
SUFFIXES = {".glb", ".gltf", ".obj", ".ply", ".stl"}


def asset_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)


# --------------------------------------------------------------------------------------------------------------
# Independent material reader: trimesh + PIL + the glTF JSON, no omnivox code.
# --------------------------------------------------------------------------------------------------------------

# Material of surfaces whose file carries none (STL, OBJ without a readable MTL, glTF primitives without a
# material): the TRELLIS.2 data toolkit's convention (spec ovoxel.md 4.7), grey 0.8, metallic 0, roughness 0.5.
DEFAULT_MATERIAL = {"rgba": (0.8, 0.8, 0.8, 1.0), "metallic": 0.0, "roughness": 0.5}
_GL_WRAP = {10497: "repeat", 33071: "clamp", 33648: "mirror"}


def gltf_json(path: Path):
    """The JSON of a .gltf or .glb file (None for other formats), read with the standard library."""
    suffix = path.suffix.lower()
    if suffix == ".gltf":
        return json.loads(path.read_text())
    if suffix == ".glb":
        data = path.read_bytes()
        length, kind = struct.unpack_from("<I4s", data, 12)
        if kind != b"JSON":
            raise ValueError(f"{path}: first GLB chunk is not JSON")
        return json.loads(data[20:20 + length])
    return None


def gltf_texture_info(header) -> tuple[dict, list[str]]:
    """Per material name: sampler wrap and KHR_texture_transform of its base-colour and metal/rough textures.

    Returns ({material name: {slot: {"wrap": (s, t), "transform": dict or None}}}, notes about what trimesh does
    not read). Read straight from the glTF JSON (Khronos spec), not through trimesh or omnivox.
    """
    info, notes = {}, []
    if not header:
        return info, notes
    textures, samplers = header.get("textures", []), header.get("samplers", [])
    for material in header.get("materials", []):
        name = material.get("name")
        pbr = material.get("pbrMetallicRoughness", {})
        slots = {}
        for slot in ("baseColorTexture", "metallicRoughnessTexture"):
            texture_info = pbr.get(slot)
            if texture_info is None:
                continue
            texture = textures[texture_info["index"]]
            sampler = samplers[texture["sampler"]] if "sampler" in texture else {}
            wrap = (_GL_WRAP[sampler.get("wrapS", 10497)], _GL_WRAP[sampler.get("wrapT", 10497)])
            transform = (texture_info.get("extensions") or {}).get("KHR_texture_transform")
            tex_coord = (transform or {}).get("texCoord", texture_info.get("texCoord", 0))
            short = "base" if slot.startswith("base") else "MR"
            if tex_coord != 0:
                notes.append(f"{name}/{short}: TEXCOORD_{tex_coord}, trimesh has only TEXCOORD_0 (read with set 0)")
            if transform and any(k in transform for k in ("offset", "rotation", "scale")):
                notes.append(f"{name}/{short}: KHR_texture_transform not read by trimesh, applied by the bench "
                             "(Khronos formula)")
            if sampler.get("magFilter") == 9728:
                notes.append(f"{name}/{short}: NEAREST filter, read bilinear")
            slots[short] = {"wrap": wrap, "transform": transform}
        if name in info and info[name] != slots:
            notes.append(f"material name {name!r} is not unique: sampler/transform of the first one used")
            continue
        info[name] = slots
    return info, notes


def khr_texture_transform(uv: np.ndarray, transform) -> np.ndarray:
    """Apply KHR_texture_transform (ratified spec: uv' = T(offset) R(rotation) S(scale) uv, in glTF's own (u, t)
    coordinates, t down) to trimesh's v-up uv; returns v-up uv."""
    if not transform:
        return uv
    sx, sy = transform.get("scale", (1.0, 1.0))
    ox, oy = transform.get("offset", (0.0, 0.0))
    r = float(transform.get("rotation", 0.0))
    u, t = uv[:, 0] * sx, (1.0 - uv[:, 1]) * sy
    u2 = np.cos(r) * u + np.sin(r) * t + ox
    t2 = -np.sin(r) * u + np.cos(r) * t + oy
    return np.stack([u2, 1.0 - t2], axis=1)


def _wrap_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    if mode == "clamp":
        return np.clip(i, 0, n - 1)
    if mode == "mirror":
        m = np.mod(i, 2 * n)
        return np.where(m >= n, 2 * n - 1 - m, m)
    return np.mod(i, n)


def sample_image(image: np.ndarray, uv: np.ndarray, wrap=("repeat", "repeat")) -> np.ndarray:
    """Bilinear sample of an (H, W, C) float image at v-up texture coordinates: column u * W, row (1 - v) * H,
    texel centres at +0.5, wrap per axis."""
    h, w = image.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    xa, xb = _wrap_index(x0, w, wrap[0]), _wrap_index(x0 + 1, w, wrap[0])
    ya, yb = _wrap_index(y0, h, wrap[1]), _wrap_index(y0 + 1, h, wrap[1])
    top = image[ya, xa] * (1 - fx) + image[ya, xb] * fx
    bottom = image[yb, xa] * (1 - fx) + image[yb, xb] * fx
    return top * (1 - fy) + bottom * fy


def _rgba_image(image) -> np.ndarray:
    """PIL image -> (H, W, 4) float64 in [0, 1], values as stored (no colour-space conversion)."""
    return np.asarray(image.convert("RGBA"), dtype=np.float64) / 255.0


def _unit_colors(colors) -> np.ndarray:
    """trimesh colours (uint8 or float, RGB or RGBA) -> (N, 4) float in [0, 1]."""
    colors = np.asarray(colors)
    colors = colors / np.iinfo(colors.dtype).max if colors.dtype.kind in "ui" else colors.astype(np.float64)
    if colors.shape[1] == 3:
        colors = np.concatenate([colors, np.ones((len(colors), 1))], axis=1)
    return colors


def _mtl_number(kwargs: dict, key: str):
    value = kwargs.get(key)
    if value is None:
        return None
    try:
        return float(np.ravel(np.asarray(value, dtype=np.float64))[0])
    except (TypeError, ValueError):
        return None


class Part:
    """One trimesh geometry instance: world-space triangles and the material channels at (face, barycentric)."""

    def __init__(self, geometry, transform, texture_info: dict, obj_without_mtl: bool):
        import trimesh

        self.vertices = trimesh.transformations.transform_points(geometry.vertices, transform)
        self.faces = np.asarray(geometry.faces, dtype=np.int64)
        self.visual = geometry.visual
        self.uv = getattr(self.visual, "uv", None)
        self.material = getattr(self.visual, "material", None)
        self.texture_info = texture_info
        self.obj_without_mtl = obj_without_mtl  # trimesh invents a placeholder material for such OBJ files
        self.notes = []
        self._images = {}

    def _image(self, key, image):
        if key not in self._images:
            self._images[key] = _rgba_image(image)
        return self._images[key]

    def _interpolate(self, per_vertex, face, bary):
        return np.einsum("pk,pkd->pd", bary, np.asarray(per_vertex, dtype=np.float64)[self.faces[face]])

    def _texture(self, slot, image, face, bary, apply_transform):
        """(P, 4) texture values at the samples, or None without UVs."""
        if self.uv is None or len(self.uv) != len(self.vertices):
            self.notes.append(f"{slot} texture without TEXCOORD_0 in trimesh: ignored")
            return None
        uv = self._interpolate(self.uv, face, bary)
        slot_info = self.texture_info.get(getattr(self.material, "name", None), {}).get(slot, {})
        if apply_transform:
            uv = khr_texture_transform(uv, slot_info.get("transform"))
        return sample_image(self._image(slot, image), uv, slot_info.get("wrap", ("repeat", "repeat")))

    def channels(self, face, bary, apply_transform=True) -> dict:
        import trimesh

        count = len(face)
        rgba = np.ones((count, 4))
        metallic = np.full(count, DEFAULT_MATERIAL["metallic"])
        roughness = np.full(count, DEFAULT_MATERIAL["roughness"])
        alpha_mode, cutoff = "OPAQUE", 0.5
        material = self.material
        if isinstance(material, trimesh.visual.material.PBRMaterial):
            if material.baseColorFactor is not None:
                rgba = rgba * _unit_colors(np.asarray(material.baseColorFactor)[None])[0]
            if material.baseColorTexture is not None:
                texture = self._texture("base", material.baseColorTexture, face, bary, apply_transform)
                if texture is not None:
                    rgba = rgba * texture
            metallic[:] = 1.0 if material.metallicFactor is None else material.metallicFactor
            roughness[:] = 1.0 if material.roughnessFactor is None else material.roughnessFactor
            if material.metallicRoughnessTexture is not None:
                texture = self._texture("MR", material.metallicRoughnessTexture, face, bary, apply_transform)
                if texture is not None:
                    roughness, metallic = roughness * texture[:, 1], metallic * texture[:, 2]
            alpha_mode = material.alphaMode or "OPAQUE"
            cutoff = 0.5 if material.alphaCutoff is None else material.alphaCutoff
            colors = getattr(self.visual, "vertex_attributes", {}).get("color")
            if colors is not None and len(colors) == len(self.vertices):
                rgba = rgba * self._interpolate(_unit_colors(colors), face, bary).clip(0, 1)
        elif isinstance(material, trimesh.visual.material.SimpleMaterial) and not self.obj_without_mtl:
            # OBJ + MTL as Blender imports it: map_Kd if present (Kd then ignored), else Kd; alpha d;
            # metallic Pm else 0; roughness Pr, else 1 - sqrt(Ns / 1000), else 0.5.
            kwargs = getattr(material, "kwargs", {}) or {}
            if material.image is not None:
                texture = self._texture("base", material.image, face, bary, apply_transform)
                rgba = texture if texture is not None else rgba * _unit_colors(np.asarray(material.diffuse)[None])[0]
            else:
                rgba = rgba * _unit_colors(np.asarray(material.diffuse)[None])[0]
            dissolve = _mtl_number(kwargs, "d")
            if dissolve is not None and dissolve < 1:
                rgba[:, 3] *= dissolve
                alpha_mode = "BLEND"
            metallic[:] = _mtl_number(kwargs, "pm") or 0.0
            pr, ns = _mtl_number(kwargs, "pr"), _mtl_number(kwargs, "ns")
            roughness[:] = pr if pr is not None else (1 - np.sqrt(np.clip(ns, 0, 1000) / 1000) if ns is not None
                                                      else DEFAULT_MATERIAL["roughness"])
        elif getattr(self.visual, "kind", None) == "vertex":
            rgba = self._interpolate(_unit_colors(self.visual.vertex_colors), face, bary)
        elif getattr(self.visual, "kind", None) == "face":
            rgba = _unit_colors(self.visual.face_colors)[face]
        else:
            rgba = np.tile(np.asarray(DEFAULT_MATERIAL["rgba"]), (count, 1))
        alpha = rgba[:, 3]
        if alpha_mode == "OPAQUE":
            alpha = np.ones(count)
        elif alpha_mode == "MASK":
            alpha = (alpha >= cutoff).astype(np.float64)
        return {"base_color": rgba[:, :3].clip(0, 1), "alpha": alpha[:, None].clip(0, 1),
                "metallic": metallic[:, None].clip(0, 1), "roughness": roughness[:, None].clip(0, 1)}


def trimesh_parts(path: Path) -> tuple[list[Part], list[str]]:
    """Every triangle geometry instance of ``trimesh.load(path, force="scene")`` with its world transform."""
    import trimesh

    scene = trimesh.load(path, force="scene")
    texture_info, notes = gltf_texture_info(gltf_json(path))
    obj_without_mtl = False
    if path.suffix.lower() == ".obj":
        libraries = [line.split(maxsplit=1)[1].strip() for line in path.read_text(errors="replace").splitlines()
                     if line.startswith("mtllib") and len(line.split()) > 1]
        obj_without_mtl = not any((path.parent / name).is_file() for name in libraries)
        if obj_without_mtl:
            notes.append("OBJ without a readable MTL: default material (trimesh's placeholder image ignored)")
    parts, skipped = [], 0
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        geometry = scene.geometry[name]
        if not isinstance(geometry, trimesh.Trimesh) or len(geometry.faces) == 0:
            skipped += 1
            continue
        parts.append(Part(geometry, transform, texture_info, obj_without_mtl))
    if skipped:
        notes.append(f"{skipped} non-triangle geometries (points/lines) skipped")
    header = gltf_json(path)
    if header and header.get("skins"):
        notes.append("skinned: trimesh places the mesh by its node transforms, no skinning")
    return parts, notes


def normalization(vertices: np.ndarray):
    """Spec 1.1 unit-box normalisation, float32 as the data toolkit does: (center, scale)."""
    points = np.asarray(vertices, dtype=np.float32)
    low, high = points.min(axis=0), points.max(axis=0)
    center = (low + high) / np.float32(2)
    scale = np.float32(0.99999) / np.float32((high - low).max())
    return center, scale


def file_to_glb_frame(points: np.ndarray, suffix: str, new_frames: bool) -> np.ndarray:
    """Normalised file coordinates -> the exported GLB's coordinates.

    Since 62ed076 (``omnivox.assets.frames`` exists) glTF/GLB/OBJ come back in the file's own axes and STL/PLY
    as ``(x, y, z) -> (x, z, -y)`` of the file; before it, every format came back as ``(x, z, -y)`` (the loader
    kept the file's axes, the writer turned its "Z-up" into Y-up)."""
    if new_frames and suffix in (".glb", ".gltf", ".obj"):
        return points
    return np.stack([points[:, 0], points[:, 2], -points[:, 1]], axis=1)


def sample_parts(parts: list[Part], count: int, rng):
    """Area-uniform samples over all parts: (part index, face, barycentrics, world points)."""
    triangles = np.concatenate([p.vertices[p.faces] for p in parts]).astype(np.float64)
    offsets = np.cumsum([0] + [len(p.faces) for p in parts])
    area = np.linalg.norm(np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=1)
    index = rng.choice(len(triangles), size=count, p=area / area.sum())
    r1, r2 = rng.random(count), rng.random(count)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)
    points = np.einsum("pk,pkd->pd", bary, triangles[index])
    part = np.searchsorted(offsets, index, side="right") - 1
    return part, index - offsets[part], bary, points


def parts_channels(parts: list[Part], part, face, bary, apply_transform=True) -> dict:
    out = {}
    for k in np.unique(part):
        sel = np.nonzero(part == k)[0]
        values = parts[k].channels(face[sel], bary[sel], apply_transform)
        for name, value in values.items():
            out.setdefault(name, np.zeros((len(part), value.shape[1])))[sel] = value
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def validate(path: Path):
    node = shutil.which("node")
    # node_modules next to validate.js (npm ci there), or an install elsewhere named by NODE_PATH.
    if node is None or not ((VALIDATOR.parent / "node_modules").is_dir() or os.environ.get("NODE_PATH")):
        return None
    out = subprocess.run([node, str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return -1
    return json.loads(out.stdout)["issues"]["numErrors"]


def independent_truth(path: Path, scene, samples: int, rng):
    """Material truth at area-uniform samples of the original surface as trimesh reads it, in the GLB's frame.

    ``scene`` (omnivox's normalised scene) is used only to check the frame mapping: the largest difference of the
    two bounding boxes in the GLB's frame (``frame_check``), and the triangle counts in the notes.
    """
    import importlib.util

    parts, notes = trimesh_parts(path)
    new_frames = importlib.util.find_spec("omnivox.assets.frames") is not None
    suffix = path.suffix.lower()
    used = np.concatenate([p.vertices[np.unique(p.faces)] for p in parts])
    center, scale = normalization(used)
    part, face, bary, points = sample_parts(parts, samples, rng)
    points = file_to_glb_frame((points - center) * scale, suffix, new_frames)
    ours = file_to_glb_frame((used.astype(np.float32) - center) * scale, suffix, new_frames)
    theirs = np.stack([scene.vertices[:, 0], scene.vertices[:, 2], -scene.vertices[:, 1]], axis=1)  # Z-up -> GLB
    frame_check = float(max(np.abs(ours.min(0) - theirs.min(0)).max(), np.abs(ours.max(0) - theirs.max(0)).max()))
    if frame_check > 1e-4:
        notes.append(f"bounding boxes of trimesh's and omnivox's surfaces differ by {frame_check:.3g} (unit box)")
    triangles = int(sum(len(p.faces) for p in parts))
    if triangles != scene.num_faces:
        notes.append(f"trimesh reads {triangles:,} triangles, omnivox {scene.num_faces:,}")
    truth = parts_channels(parts, part, face, bary)
    truth["base_color_trimesh_only"] = parts_channels(parts, part, face, bary, apply_transform=False)["base_color"]
    truth["points"] = points
    return truth, sorted(set(notes)), frame_check, triangles


def omnivox_commit() -> str:
    """The commit of the omnivox package imported (it may be another worktree than this script's)."""
    import omnivox

    package = Path(omnivox.__file__).resolve().parent
    out = subprocess.run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--", "."], capture_output=True,
                           text=True).stdout.strip()
    return out.stdout.strip() + ("+local changes" if dirty else "")


def run_one(rel: str, resolution: int, texture_size: int, decimation_target: int, samples: int, workdir: Path,
            uv: str = "voxel"):
    from omnivox.assets import load_asset
    from omnivox.ovoxel.export import UvMethod, bake_glb, save_glb
    from omnivox.ovoxel.extract import dual_grid_to_mesh
    from omnivox.ovoxel.grid import Grid
    from omnivox.ovoxel.io import decode_vxz, encode_vxz
    from omnivox.ovoxel.convert import scene_to_ovoxel
    from omnivox.ovoxel.metrics import surface_fidelity
    from omnivox.ovoxel.packing import stack_attributes, unpack_geometry
    from scipy.spatial import cKDTree

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
    attributes = stack_attributes(attrs, len(coords))
    mesh, report = bake_glb(vertices, faces, coords, attributes, Grid.make(resolution), texture_size=texture_size,
                            decimation_target=decimation_target, uv_method=UvMethod(uv))
    timings.update(report.timings)
    start = time.perf_counter()
    path = save_glb(mesh, workdir / f"{Path(rel).stem}_{resolution}.glb")
    timings["save"] = time.perf_counter() - start
    errors = validate(path)

    # Chamfer / normal consistency as before: omnivox's normalised scene against the GLB mapped back to Z-up.
    out_vertices = np.stack([mesh.vertices[:, 0], -mesh.vertices[:, 2], mesh.vertices[:, 1]], axis=1)
    out_faces = np.asarray(mesh.faces)
    rng = np.random.default_rng(0)
    fidelity = surface_fidelity(scene.vertices, scene.faces, out_vertices, out_faces, samples=samples, rng=rng)

    # Materials: truth from trimesh (original file), prediction from trimesh (the written GLB), in the GLB's frame.
    start = time.perf_counter()
    truth, notes, frame_check, truth_triangles = independent_truth(ASSETS / rel, scene, samples, rng)
    glb_parts, glb_notes = trimesh_parts(path)
    notes += [f"GLB: {n}" for n in glb_notes]
    dense_part, dense_face, dense_bary, dense = sample_parts(glb_parts, 2_000_000, rng)
    _, nearest = cKDTree(dense).query(truth.pop("points"), workers=-1)
    predicted = parts_channels(glb_parts, dense_part[nearest], dense_face[nearest], dense_bary[nearest])
    timings["material_metric"] = time.perf_counter() - start
    return {
        "asset": rel, "resolution": resolution, "voxels": int(len(coords)), "input_triangles": scene.num_faces,
        "extracted_faces": int(len(faces)), "faces": report.faces, "texture_size": texture_size,
        "alpha_mode": report.alpha_mode, "double_sided": report.double_sided, "holes_filled": report.holes_filled,
        "uv": uv, "uv_charts": report.uv_charts, "uv_utilisation": report.uv_utilisation,
        "seam_fraction": report.seam_fraction,
        "validator_errors": errors, "chamfer_x1e6": fidelity.chamfer * 1e6,
        "normal_consistency": fidelity.normal_consistency,
        **{f"psnr_{k}": psnr(truth[k], predicted[k]) for k in PBR_ATTRIBUTES},
        "psnr_base_color_trimesh_only": psnr(truth["base_color_trimesh_only"], predicted["base_color"]),
        "truth": "trimesh", "truth_triangles": truth_triangles, "frame_check": frame_check, "notes": notes,
        "omnivox_commit": omnivox_commit(),
        "glb_bytes": path.stat().st_size, "seconds": {k: round(v, 3) for k, v in timings.items()},
    }


def short_notes(r: dict) -> str:
    """One table cell for a row's truth notes (where trimesh does not read what omnivox reads)."""
    out = []
    notes = r.get("notes") or []
    if any("KHR_texture_transform" in n for n in notes):
        out.append(f"KHR_texture_transform applied by the bench (trimesh ignores it; without: "
                   f"{r['psnr_base_color_trimesh_only']:.1f} dB)")
    out += [n for n in notes if "TEXCOORD_" in n or "trimesh reads" in n or "bounding boxes" in n
            or "non-triangle" in n or "NEAREST" in n or "not unique" in n or n.startswith("GLB")]
    if any("without a readable MTL" in n for n in notes):
        out.append("no MTL: default grey")
    if r.get("seconds", {}).get("unwrap", 0) >= 299:
        out.append("xatlas hit its 300 s wall-clock limit: one UV chart per triangle (coarser texture)")
    if any("skinned" in n for n in notes):
        out.append(f"skinned, read unskinned by trimesh (bbox agrees to {r.get('frame_check', 0):.0e})")
    return "; ".join(out)


def table(lines: list[dict]) -> str:
    head = ("| asset | R | voxels | GLB tris | Chamfer x1e6 | NC | PSNR base | PSNR metal | PSNR rough | PSNR alpha "
            "| alphaMode | validator errors | convert s | extract s | export s | of which unwrap s | truth notes |")
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
            f"{s['convert']:.1f} | {s['extract']:.1f} | {export:.1f} | {s['unwrap']:.1f} | {short_notes(r)} |")
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
    parser.add_argument("--uv", choices=("voxel", "xatlas"), default="voxel", help="UV atlas (export.UvMethod)")
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
                    result = run_one(rel, resolution, args.texture_size, args.faces, args.samples, Path(tmp), args.uv)
                except (ValueError, RuntimeError) as error:
                    result = {"asset": rel, "resolution": resolution, "error": str(error)[:200]}
                result["wall_s"] = round(time.perf_counter() - start, 1)
                with args.out.open("a") as f:
                    f.write(json.dumps(result) + "\n")
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
