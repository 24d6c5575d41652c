"""`render`: RGBA condition views of each raw asset, without Blender (spec training.md 4.2-11, 4.6).

Per indexed asset, ``renders_cond/<sha>/000.png ... NNN.png`` plus ``transforms.json``; records
``cond_rendered``, ``num_cond_views``, ``render_error`` in ``renders_cond/metadata.csv``. The folder of an asset
is written under a temp name and renamed into place, so it is complete or absent.

What follows the reference exactly:

* the scene is in Blender's Z-up frame and normalised into the unit box (`convert.load_for_dataset`);
* views: a Hammersley point set ``(i / n, radical_inverse_2(i))`` shifted by a random per-asset offset
  (mod 1); the first coordinate sets the latitude, remapped so a quarter of the views lie below the equator
  and three quarters above (uniform in ``sin(pitch)`` within each part), the second the yaw; direction
  ``(cos yaw cos pitch, sin yaw cos pitch, sin pitch)``;
* distance and field of view: ``1 / r^2 ~ U(1 / r_max^2, 1 / r_min^2)`` with ``r_min = (sqrt(3)/2) / sin(35 deg)``
  and ``r_max = (sqrt(3)/2) / sin(5 deg)``, ``fov = 2 asin((sqrt(3)/2) / r)`` (the unit cube's bounding sphere
  fills the frame), camera looking at the origin with up +Z;
* transparent background (alpha = coverage), ``transforms.json`` with ``camera_angle_x`` and camera-to-world
  ``transform_matrix`` in Blender camera axes (x right, y up, z backwards), ``aabb`` +-0.5, ``scale``, ``offset``.

Decisions where we differ (the spec asks for the camera distribution and alpha, not a photometric match,
because inference inputs are real or generated images):

* Rasterised with `omnivox.render.rasterize` (2x2 supersampled, box-filtered, which also antialiases alpha)
  instead of Cycles path tracing: no shadows, inter-reflections or transmission.
* Lighting per view: a white ambient "world" plus 1-3 lights from random upward-biased directions; the
  brightness budget 1.5 is split at random between the world and the lights, as in the reference. Lights
  are directional (the reference's point lights sit 10-100 units away from a unit object, so they are nearly
  directional); shading is Lambert diffuse on ``base_color * (1 - metallic)`` plus a normalised Blinn-Phong
  lobe with exponent ``2 / roughness^4 - 2`` and ``F0 = lerp(0.04, base_color, metallic)``; highlights are
  compressed with an extended Reinhard curve (`compress_highlights`) before sRGB encoding.
* Materials: base colour (texture x factor x vertex colour, textures decoded from sRGB), metallic and
  roughness (glTF B/G channels x factors), bilinear lookups without mipmaps, glTF wrap modes. Alpha follows
  the glTF alpha mode (OPAQUE 1, MASK by cutoff, BLEND kept, composited over the background only).
* Default image size 512 (the reference renders 1024 and the trainers crop and resize to 512; pass
  ``size=1024`` for the 1024 fine-tuning stage).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from omnivox.data import layout
from omnivox.data.convert import indexed_assets, load_for_dataset, paths_workers_read
from omnivox.data.metadata import RecordWriter, as_bool, load_table
from omnivox.data.runner import (Outcome, StageSummary, Task, in_shard, remove_stale_temps, run_per_device,
                                 run_stage, temp_path, temp_tag)

if TYPE_CHECKING:
    from omnivox.data.ray_runner import RayCluster

COLUMNS = ["sha256", "cond_rendered", "num_cond_views", "render_error"]
# On a Ray cluster each render task declares one core and half a GPU by default: two tasks share a GPU, so one
# loads its asset and encodes PNGs on the CPU while the other rasterizes (the CPU work is about 2/3 of an
# asset's time, docs/benchmarks/data.md).
RAY_GPUS_PER_TASK = 0.5
BOUNDING_RADIUS = math.sqrt(3) / 2
MIN_RADIUS = BOUNDING_RADIUS / math.sin(math.radians(35))
MAX_RADIUS = BOUNDING_RADIUS / math.sin(math.radians(5))
BRIGHTNESS_BUDGET = 1.5
SUPERSAMPLING = 2
# Blender camera axes (x right, y up, z back) from OpenCV ones (x right, y down, z forward).
_OPENCV_TO_BLENDER = np.diag([1.0, -1.0, -1.0, 1.0])


def radical_inverse_2(i: int) -> float:
    """Van der Corput sequence in base 2."""
    result, scale = 0.0, 0.5
    while i:
        result += (i & 1) * scale
        i >>= 1
        scale *= 0.5
    return result


def condition_cameras(num_views: int, rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The reference's condition-view cameras (see the module docstring).

    Returns:
        extrinsics (V, 4, 4) float32 world -> camera (OpenCV axes), intrinsics (V, 3, 3) float32 normalised,
        fov (V,) float64 radians.
    """
    from omnivox.render import intrinsics_from_fov, look_at

    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    offset = rng.random(2)
    u = (np.arange(num_views) / num_views + offset[0]) % 1.0
    v = (np.array([radical_inverse_2(i) for i in range(num_views)]) + offset[1]) % 1.0
    # A quarter of the latitude range below the equator, three quarters above, uniform in sin(pitch).
    sin_pitch = np.where(u < 0.25, u / 0.25 - 1.0, (u - 0.25) / 0.75)
    pitch = np.arcsin(np.clip(sin_pitch, -0.999, 0.999))  # keep look_at's +Z up well defined
    yaw = 2 * math.pi * v
    direction = np.stack([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)], axis=1)
    k = rng.uniform(1 / MAX_RADIUS ** 2, 1 / MIN_RADIUS ** 2, num_views)
    radius = 1 / np.sqrt(k)
    fov = 2 * np.arcsin(BOUNDING_RADIUS / radius)
    extrinsics = look_at(torch.from_numpy(direction * radius[:, None]), (0.0, 0.0, 0.0)).to(torch.float32)
    return extrinsics, intrinsics_from_fov(torch.from_numpy(fov).to(torch.float32)), fov


def random_lights(rng: np.random.Generator) -> Tuple[float, np.ndarray, np.ndarray]:
    """(world strength, light directions (K, 3) towards the lights, light strengths (K,)); K in 1..3."""
    count = int(rng.integers(1, 4))
    shares = rng.dirichlet(np.ones(count + 1))
    directions = rng.normal(size=(count, 3)) + np.array([0.0, 0.0, 1.0])  # biased upwards
    directions /= np.linalg.norm(directions, axis=1, keepdims=True) + 1e-12
    return BRIGHTNESS_BUDGET * shares[0], directions, BRIGHTNESS_BUDGET * shares[1:]


# ------------------------------------------------------------------------------------------- materials
def sample_texture(texture, uv: torch.Tensor, image: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bilinear RGBA lookup (N, 4) float in [0, 1] at scene UVs (N, 2) (v up, ``omnivox.assets.scene``; the
    texture's UV transform applied, wrap per axis).

    ``image``: the texture as an (H, W, 4) float tensor in [0, 1] on the UVs' device, if already converted.
    """
    from omnivox.assets.scene import image_coordinates
    from omnivox.assets.texture import bilinear

    if image is None:
        image = torch.from_numpy(np.array(texture.image, dtype=np.float32) / 255).to(uv.device)
    return bilinear(image, image_coordinates(uv, texture.uv_transform), int(texture.wrap_s), int(texture.wrap_t))


def surface_materials(scene, face: torch.Tensor, bary: torch.Tensor,
                      images: Optional[Dict[int, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """Per-sample linear base colour (N, 3), alpha, metallic, roughness (N,) and the shading normal (N, 3).

    ``images`` caches textures converted to tensors (keyed by ``id`` of the image array) across views.
    """
    from omnivox.assets import AlphaMode
    from omnivox.render.tonemap import srgb_decode

    images = {} if images is None else images

    def lookup(texture, uv: torch.Tensor) -> torch.Tensor:
        key = id(texture.image)
        if key not in images:
            images[key] = torch.from_numpy(np.array(texture.image, dtype=np.float32) / 255).to(uv.device)
        return sample_texture(texture, uv, images[key])

    device = bary.device
    count = face.shape[0]
    normals = torch.as_tensor(scene.normals, device=device)[face]
    normal = torch.nn.functional.normalize((normals * bary[..., None]).sum(1), dim=-1)
    color = torch.ones(count, 4, device=device)
    metallic = torch.zeros(count, device=device)
    roughness = torch.ones(count, device=device)
    material_ids = torch.as_tensor(scene.material_ids, device=device)[face]
    for index in torch.unique(material_ids).tolist():
        material = scene.materials[index]
        rows = (material_ids == index).nonzero().squeeze(1)
        rows_face, rows_bary = face[rows], bary[rows]

        def uv_of(texture) -> torch.Tensor:
            corner_uv = torch.as_tensor(scene.uvs[texture.uv_set], device=device)[rows_face]
            return (corner_uv * rows_bary[..., None]).sum(1)

        value = torch.as_tensor(material.base_color_factor, device=device).float().expand(len(rows), 4).clone()
        if material.base_color_texture is not None and material.base_color_texture.uv_set < len(scene.uvs):
            texel = lookup(material.base_color_texture, uv_of(material.base_color_texture))
            value = value * torch.cat([srgb_decode(texel[:, :3]), texel[:, 3:]], dim=1)
        m = torch.full((len(rows),), float(material.metallic_factor), device=device)
        r = torch.full((len(rows),), float(material.roughness_factor), device=device)
        texture = material.metallic_roughness_texture
        if texture is not None and texture.uv_set < len(scene.uvs):
            texel = lookup(texture, uv_of(texture))
            m, r = m * texel[:, 2], r * texel[:, 1]
        if material.alpha_mode == AlphaMode.OPAQUE:
            value[:, 3] = 1
        elif material.alpha_mode == AlphaMode.MASK:
            value[:, 3] = (value[:, 3] >= material.alpha_cutoff).float()
        color[rows], metallic[rows], roughness[rows] = value, m, r
    if scene.colors is not None:
        colors = torch.as_tensor(scene.colors, device=device)[face]
        color = color * (colors * bary[..., None]).sum(1).clamp(0, 1)
    return {"base_color": color[:, :3], "alpha": color[:, 3], "metallic": metallic.clamp(0, 1),
            "roughness": roughness.clamp(0.02, 1), "normal": normal}


def shade(surface: Dict[str, torch.Tensor], view_dirs: torch.Tensor, world: float, light_dirs: torch.Tensor,
          light_strengths: torch.Tensor) -> torch.Tensor:
    """Linear radiance (N, 3): ambient world + directional lights (see the module docstring)."""
    normal = surface["normal"]
    # Shading normals face the viewer (both sides of every triangle are drawn).
    normal = torch.where(((normal * view_dirs).sum(-1, keepdim=True) < 0), -normal, normal)
    base, metallic, roughness = surface["base_color"], surface["metallic"][:, None], surface["roughness"][:, None]
    diffuse_color = base * (1 - metallic)
    f0 = 0.04 + (base - 0.04) * metallic
    radiance = (diffuse_color + f0) * world
    shininess = (2 / roughness.clamp(min=0.05) ** 4 - 2).clamp(1, 4096)
    for direction, strength in zip(light_dirs, light_strengths):
        n_dot_l = (normal * direction).sum(-1, keepdim=True).clamp(min=0)
        half = torch.nn.functional.normalize(direction + view_dirs, dim=-1)
        n_dot_h = (normal * half).sum(-1, keepdim=True).clamp(min=0)
        specular = f0 * (shininess + 8) / (8 * math.pi) * n_dot_h ** shininess
        radiance = radiance + strength * n_dot_l * (diffuse_color + specular)
    return radiance


def compress_highlights(radiance: torch.Tensor, white: float = 2.0) -> torch.Tensor:
    """Extended Reinhard curve ``x (1 + x / white^2) / (1 + x)``: maps ``white`` to 1, keeps dark tones.

    Blender renders through a highlight-compressing view transform by default; without one the reference's
    brightness budget of 1.5 would clip most light-coloured surfaces to white.
    """
    return radiance * (1 + radiance / white ** 2) / (1 + radiance)


def render_views(scene, extrinsics: torch.Tensor, intrinsics: torch.Tensor, size: int,
                 rng: np.random.Generator, device: torch.device, views_per_batch: int = 4) -> np.ndarray:
    """(V, size, size, 4) uint8 RGBA images of a Z-up normalised scene, one light set per view.

    Views are rasterized ``views_per_batch`` at a time (one rasterizer call per batch of cameras).
    """
    from omnivox.render import rasterize
    from omnivox.render.tonemap import srgb_encode

    vertices = torch.as_tensor(scene.vertices, device=device).float()
    faces = torch.as_tensor(scene.faces, device=device).long()
    full = size * SUPERSAMPLING
    images, textures = [], {}
    for first in range(0, extrinsics.shape[0], views_per_batch):
        extr = extrinsics[first:first + views_per_batch].to(device)
        intr = intrinsics[first:first + views_per_batch].to(device)
        with torch.no_grad():
            fragments = rasterize(vertices, faces, extr, intr, (full, full), near=0.1, far=100.0)
        for view in range(extr.shape[0]):
            triangle = fragments.triangle_id[view, 0]
            covered = triangle >= 0
            rgba = torch.zeros(full, full, 4, device=device)
            world, light_dirs, strengths = random_lights(rng)
            if bool(covered.any()):
                face = triangle[covered]
                bary = fragments.bary[view, 0][covered]
                points = (vertices[faces[face]] * bary[..., None]).sum(1)
                eye = torch.linalg.inv(extr[view])[:3, 3]
                view_dirs = torch.nn.functional.normalize(eye - points, dim=-1)
                surface = surface_materials(scene, face, bary, textures)
                radiance = shade(surface, view_dirs, world, torch.as_tensor(light_dirs, device=device).float(),
                                 torch.as_tensor(strengths, device=device).float())
                rgba[covered] = torch.cat([srgb_encode(compress_highlights(radiance)),
                                           surface["alpha"][:, None]], dim=1)
            images.append(_downsample(rgba))
    return np.stack(images)


def _downsample(rgba: torch.Tensor) -> np.ndarray:
    """Box filter: premultiply, average SUPERSAMPLING^2 samples, un-premultiply (antialiased alpha)."""
    premultiplied = torch.cat([rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]], dim=-1)
    pooled = torch.nn.functional.avg_pool2d(premultiplied.permute(2, 0, 1)[None], SUPERSAMPLING)[0].permute(1, 2, 0)
    alpha = pooled[..., 3:]
    color = torch.where(alpha > 0, pooled[..., :3] / alpha.clamp(min=1e-6), torch.zeros_like(pooled[..., :3]))
    image = torch.cat([color, alpha], dim=-1)
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def transforms_json(extrinsics: torch.Tensor, fov: np.ndarray) -> dict:
    frames = []
    for view in range(extrinsics.shape[0]):
        camera_to_world = np.linalg.inv(extrinsics[view].double().numpy()) @ _OPENCV_TO_BLENDER
        frames.append({"file_path": f"{view:03d}.png", "camera_angle_x": float(fov[view]),
                       "transform_matrix": camera_to_world.tolist()})
    return {"aabb": [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]], "scale": 1.0, "offset": [0.0, 0.0, 0.0],
            "frames": frames}


def render_asset(task: Task) -> Outcome:
    """Worker: render one asset's views into a temp folder, then rename it into place."""
    from PIL import Image

    payload = task.payload
    device = torch.device(payload["device"])
    rng = np.random.default_rng([payload["seed"], int(task.key[:15], 16)])
    scene = load_for_dataset(payload["path"])
    extrinsics, intrinsics, fov = condition_cameras(payload["num_views"], rng)
    images = render_views(scene, extrinsics, intrinsics, payload["size"], rng, device)
    if not (images[..., 3] > 0).any():
        raise ValueError("every view is empty (nothing in front of the cameras)")
    final = Path(payload["out"]) / task.key
    temp = temp_path(final, payload["tag"])
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir(parents=True)
    for view, image in enumerate(images):
        Image.fromarray(image, "RGBA").save(temp / f"{view:03d}.png", compress_level=6)
    with open(temp / "transforms.json", "w", encoding="utf-8") as handle:
        json.dump(transforms_json(extrinsics, fov), handle, indent=1)
    if final.exists():
        shutil.rmtree(final)  # only on --retry-failed or after a lost record: replace, never mix views
    temp.rename(final)
    return Outcome(task.key, rows={layout.RENDERS_COND: {"sha256": task.key, "cond_rendered": True,
                                                          "num_cond_views": len(images), "render_error": ""}})


def run_render(root: Path, num_views: int = 16, size: int = 512, rank: int = 0, world_size: int = 1,
               workers: int = 0, devices: Sequence[str] = ("cpu",), retry_failed: bool = False, seed: int = 0,
               progress: bool = True, device_slot: Tuple[int, int] = (0, 1),
               ray: Optional["RayCluster"] = None) -> StageSummary:
    """Render this shard's indexed assets; see the module docstring.

    Args:
        root: dataset root.
        num_views: views per asset (16 in the reference).
        size: image side in pixels.
        rank / world_size: this machine's shard.
        workers: CPU processes (``devices == ["cpu"]``); with CUDA devices, one process per device instead.
        devices: ``["cpu"]`` or CUDA devices, one process each; naming a device twice runs two processes on
            it, which overlaps one's CPU work (loading, PNG encoding) with the other's GPU work.
        retry_failed: redo assets whose previous attempt failed.
        seed: mixed with each asset's hash to draw its cameras and lights (re-renders are identical).
        ray: run each asset as a task on that Ray cluster instead (``devices`` and ``workers`` unused): one
            core and `RAY_GPUS_PER_TASK` GPU each unless the cluster options say otherwise; with 0 GPUs per
            task the tasks render on their CPU.
    """
    root = Path(root).resolve() if ray is not None else Path(root)  # workers on other nodes need absolute paths
    if not 16 <= size <= 4096 or not 1 <= num_views <= 1000:
        raise ValueError(f"render: need 16 <= size <= 4096 and 1 <= num_views <= 1000, got {size}, {num_views}")
    kwargs = dict(root=root, num_views=num_views, size=size, rank=rank, world_size=world_size, workers=workers,
                  retry_failed=retry_failed, seed=seed, progress=progress)
    ray_stage = None
    if ray is not None:
        from omnivox.data.ray_runner import RayStage, TaskResources

        resources = ray.resources(TaskResources(num_cpus=1.0, num_gpus=RAY_GPUS_PER_TASK))
        devices = ["cuda" if resources.num_gpus else "cpu"]  # inside a task, Ray's CUDA_VISIBLE_DEVICES picks the GPU
    elif len(devices) > 1:
        return run_per_device(run_render, kwargs, list(devices))
    out = root / layout.RENDERS_COND
    tag = temp_tag(rank, device_slot)
    remove_stale_temps([out], tag)
    _, table = load_table(out)
    summary = StageSummary()
    tasks: List[Task] = []
    for sha, path in indexed_assets(root).items():
        if not in_shard(sha, rank, world_size) or not in_shard(sha, *device_slot, salt="device"):
            continue
        summary.total += 1
        row = table.get(sha, {})
        done = as_bool(row.get("cond_rendered")) and (out / sha / "transforms.json").is_file()
        if done or (row.get("render_error") and not retry_failed):
            summary.skipped += 1
            continue
        tasks.append(Task(sha, {"path": path, "out": str(out), "tag": tag, "device": devices[0], "seed": seed,
                                "num_views": num_views, "size": size}))

    def failure_rows(task: Task, error: str) -> Dict[str, dict]:
        return {layout.RENDERS_COND: {"sha256": task.key, "cond_rendered": False, "render_error": error}}

    if ray is not None:
        ray_stage = RayStage(ray, resources, must_see=paths_workers_read(root, tasks))
    writers = {layout.RENDERS_COND: RecordWriter(out, COLUMNS, rank)}
    on_gpu = torch.device(devices[0]).type != "cpu"
    result = run_stage(tasks, render_asset, writers, failure_rows, workers=0 if on_gpu else workers,
                       desc=f"render {num_views}x{size}", progress=progress, ray=ray_stage)
    summary.done, summary.failed = result.done, result.failed
    return summary
