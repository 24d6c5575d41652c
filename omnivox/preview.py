"""Pictures people look at: PBR-shaded views, the 2x2 PBR panel, multi-view grids, turntable videos.

Sources: a textured `omnivox.assets.Scene` (per-pixel UV texture look-ups of its glTF materials), or an O-Voxel
(``coords`` + attribute dict, as `omnivox.ovoxel.io.read_vxz` returns it: the surface is extracted with
`dual_grid_to_mesh` and its attributes are read by trilinear look-ups into the sparse voxels). `load_preview_source`
turns a file of either kind into a `PreviewSource`.

Pipeline per camera: depth-peeled rasterization (`omnivox.render.rasterize`) -> per-fragment world position,
normal, base colour / metallic / roughness / alpha -> split-sum PBR shading (`omnivox.render.pbr`) under an
`Environment` -> front-to-back compositing -> optional SSAO -> ACES + sRGB (`omnivox.render.tonemap`).

Frames and axes: everything is rendered Z-up (spec training.md 5.1). Mesh files come through `load_asset`, which
turns them into the Z-up data frame as the data toolkit does (glTF, GLB and OBJ are Y-up files, STL and PLY
Z-up: ``omnivox.assets.frames``); O-Voxel files are Z-up (spec ovoxel.md 1.1). ``up=`` overrides a file's up axis.

Colour spaces (a deliberate choice, see also `omnivox.render.tonemap`): for scenes we follow glTF -- texture
texels are sRGB-encoded and decoded before shading, factors and vertex colours are linear. O-Voxel attributes
are the voxelizer's products of raw texels and factors (spec ovoxel.md 4.7), i.e. sRGB-encoded values, so they
are decoded as a whole, as the reference renderer does (it raises them to the power 2.2).

Normal images are camera-space normals in the usual normal-map convention (x right, y up, z towards the
viewer) mapped by ``n * 0.5 + 0.5``, so surfaces facing the camera are light blue.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from omnivox.assets.loader import SUPPORTED_SUFFIXES
from omnivox.assets.frames import check_up_axis, y_up_to_z_up, z_up_to_y_up
from omnivox.assets.scene import image_coordinates
from omnivox.render.cameras import intrinsics_from_fov, look_at, to_camera, yaw_pitch_eye
from omnivox.render.environment import Environment, resolve_environment
from omnivox.render.interpolate import _gather_pixels, mip_pyramid, sample_sparse_volume, sample_texture
from omnivox.render.kernels.reference import pixel_rays
from omnivox.render.pbr import composite_layers, shade_pbr
from omnivox.render.rasterize import pixel_barycentrics, rasterize
from omnivox.render.ssao import ambient_visibility
from omnivox.render.tonemap import srgb_decode, srgb_encode, to_uint8, tonemap

VOXEL_SUFFIXES = (".vxz",)
MAX_PREVIEW_RESOLUTION = 4096
PANEL_BACKDROP = (0.27, 0.33, 0.45)


@dataclass
class PreviewSource:
    """A triangle surface (Z-up, inside the unit box) with a way to read its PBR attributes.

    Build it with `from_scene`, `from_ovoxel` or `load_preview_source`. Exactly one of ``scene_materials``
    (glTF materials of a Scene) and ``voxels`` (coords, (N, 6) attributes in [0, 1], resolution, whether the
    surface was rotated from Y-up) is set.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    corner_normals: Optional[torch.Tensor] = None
    scene_materials: Optional["_SceneMaterials"] = None
    voxels: Optional[Tuple[torch.Tensor, torch.Tensor, int, bool]] = None  # coords, attrs, resolution, rotated
    name: str = ""

    @classmethod
    def from_scene(cls, scene, up: str = "z", device=None) -> "PreviewSource":
        """A `Scene` (any units); it is fitted into the unit box and turned Z-up when ``up == "y"`` (scenes from
        `load_asset` are Z-up already)."""
        scene = scene.normalized()
        rotate = check_up_axis(up) == "y"
        vertices = torch.from_numpy(scene.vertices).to(device=device, dtype=torch.float32)
        normals = torch.from_numpy(scene.normals).to(device=device, dtype=torch.float32)
        if rotate:
            vertices, normals = y_up_to_z_up(vertices), y_up_to_z_up(normals)
        return cls(vertices=vertices, faces=torch.from_numpy(scene.faces).to(device=device, dtype=torch.int64),
                   corner_normals=normals, scene_materials=_SceneMaterials(scene, device), name=scene.source)

    @classmethod
    def from_ovoxel(cls, coords, attributes: Dict[str, np.ndarray], resolution: Optional[int] = None,
                    up: str = "z", device=None, name: str = "", mesh=None) -> "PreviewSource":
        """An O-Voxel with geometry (``vertices``/``intersected``) and material attributes (uint8), as a file
        holds them (`OVoxel.from_file_attributes`).

        ``mesh``: ``(vertices, faces)`` already extracted from these voxels with `dual_grid_to_mesh` (in the
        voxels' own frame), so that a caller holding it does not pay for a second extraction.
        """
        from omnivox.ovoxel.asset import OVoxel

        if len(coords) == 0:
            raise ValueError(f"{name or 'O-Voxel'}: holds no voxels")
        asset = OVoxel.from_file_attributes(coords, attributes, resolution or None, source=name or "O-Voxel",
                                            mesh=mesh)
        return cls.from_asset(asset, up=up, device=device, name=name)

    @classmethod
    def from_asset(cls, asset, up: str = "z", device=None, name: str = "") -> "PreviewSource":
        """An `omnivox.ovoxel.asset.OVoxel` (a generated asset, or one read with ``OVoxel.from_vxz``)."""
        values = asset.attribute_matrix()
        if values.shape[1] != 6:
            raise ValueError(f"{name or 'O-Voxel'}: expected 3+1+1+1 material channels, got {values.shape[1]}")
        vertices = asset.vertices.to(device=device, dtype=torch.float32)
        faces = asset.faces.to(device=device, dtype=torch.int64)
        values = torch.as_tensor(values, device=device)
        coords_t = asset.coords.to(device=device, dtype=torch.int64)
        if check_up_axis(up) == "y":
            vertices = y_up_to_z_up(vertices)
        return cls(vertices=vertices, faces=faces, voxels=(coords_t, values, asset.resolution, up == "y"),
                   name=name)

    def bounding_radius(self) -> float:
        """Radius of the sphere around the origin holding every vertex (for framing the cameras)."""
        if len(self.vertices) == 0:
            return 0.5
        return float(self.vertices.norm(dim=1).max())


def load_preview_source(path: Union[str, os.PathLike], up: Optional[str] = None, device=None,
                        allow_outside: bool = False, max_voxels: Optional[int] = None) -> PreviewSource:
    """A mesh file (.glb/.gltf/.obj/.ply/.stl) or an O-Voxel file (.vxz) -> `PreviewSource`.

    ``allow_outside`` goes to `load_asset` (references outside the file's folder, trusted files only),
    ``max_voxels`` to `read_vxz`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in VOXEL_SUFFIXES:
        from omnivox.ovoxel.io import read_vxz

        coords, attributes = read_vxz(path, max_voxels=max_voxels)
        return PreviewSource.from_ovoxel(coords, attributes, up=up or "z", device=device, name=str(path))
    if suffix in SUPPORTED_SUFFIXES:
        from omnivox.assets import load_asset

        scene = load_asset(path, up_axis=up, allow_outside=allow_outside)  # Z-up
        if scene.num_faces == 0:
            raise ValueError(f"{path}: the file holds no triangles")
        return PreviewSource.from_scene(scene, device=device)
    raise ValueError(f"{path}: unsupported file type {suffix!r} (use {', '.join(SUPPORTED_SUFFIXES + VOXEL_SUFFIXES)})")


# ----------------------------------------------------------------------------------------------------------
# Cameras


def turntable_cameras(num_frames: int, radius: float = 2.0, fov: float = math.radians(40)):
    """The reference's video path (spec 5.4): yaw a full turn from 90 degrees, pitch ``0.25 + 0.5 sin``."""
    theta = torch.arange(num_frames, dtype=torch.float64) * (2 * math.pi / num_frames)
    eye = yaw_pitch_eye(theta + math.pi / 2, 0.25 + 0.5 * torch.sin(theta), radius)
    return look_at(eye).float(), intrinsics_from_fov(fov, num_frames)


def snapshot_cameras(num_views: int, radius: float = 2.0, fov: float = math.radians(36),
                     pitch: float = math.radians(20), yaw_offset: float = math.radians(-16)):
    """Views evenly around the object at one pitch (the reference's ``render_snapshot`` layout)."""
    yaw = yaw_offset + torch.arange(num_views, dtype=torch.float64) * (2 * math.pi / num_views)
    eye = yaw_pitch_eye(yaw, torch.full_like(yaw, pitch), radius)
    return look_at(eye).float(), intrinsics_from_fov(fov, num_views)


def framing_radius(source: PreviewSource, fov: float, minimum: float = 2.0) -> float:
    """Camera distance that keeps the whole object in view (at least ``minimum``, the reference's 2)."""
    return max(minimum, 1.08 * source.bounding_radius() / math.sin(fov / 2))


# ----------------------------------------------------------------------------------------------------------
# Rendering


def render_pbr(
    source: PreviewSource,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    resolution: int,
    environment: Union[None, str, Environment] = None,
    layers: Optional[int] = None,
    ssao: bool = True,
    background: Union[str, Sequence[float]] = (1.0, 1.0, 1.0),
    exposure: float = 1.0,
) -> Dict[str, torch.Tensor]:
    """Render ``source`` for a batch of cameras.

    Args:
        source: what to render (`load_preview_source`).
        extrinsics, intrinsics: (B, 4, 4), (B, 3, 3) cameras (`omnivox.render.cameras`).
        resolution: square image side in pixels.
        environment: an `Environment`, a built-in name or an HDR file (default "studio").
        layers: depth layers for transparency (default: 4 if any material is not opaque, else 1).
        ssao: darken creases with screen-space ambient occlusion.
        background: an RGB colour in [0, 1] (display space) or ``"environment"``.
        exposure: multiplies the radiance before tone mapping.

    Returns:
        dict of (B, H, W, C) float images in [0, 1]: ``shaded`` (display sRGB, composited over the background),
        ``alpha`` (coverage), ``normal`` (camera-space, x0.5+0.5), ``base_color`` (display sRGB),
        ``metallic``, ``roughness``, ``alpha_material`` (first layer's material alpha), ``mask`` (first layer
        hit), ``ambient`` (SSAO visibility).
    """
    if not isinstance(resolution, int) or not 1 <= resolution <= MAX_PREVIEW_RESOLUTION:
        raise ValueError(f"resolution must be an int in [1, {MAX_PREVIEW_RESOLUTION}], got {resolution!r}")
    device = source.vertices.device
    env = resolve_environment(environment, device=device)
    if layers is None:
        layers = 4 if _has_transparency(source) else 1
    extrinsics = extrinsics.to(device=device, dtype=torch.float32)
    intrinsics = intrinsics.to(device=device, dtype=torch.float32)
    batch = extrinsics.shape[0]
    size = (resolution, resolution)
    fragments = rasterize(source.vertices, source.faces, extrinsics, intrinsics, size, layers=layers)
    num_pixels = batch * layers * resolution * resolution
    covered, camera, tri = _gather_pixels(fragments)
    bary = fragments.bary.reshape(-1, 3)[covered].detach()
    py = (covered // resolution) % resolution
    px = covered % resolution

    corners = source.vertices[source.faces[tri]]  # (K, 3, 3)
    points = (bary[..., None] * corners).sum(1)
    camera_to_world = torch.linalg.inv(extrinsics)
    eyes = camera_to_world[:, :3, 3]
    view = F.normalize(eyes[camera] - points, dim=-1)
    geometric = F.normalize(torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1),
                            dim=-1)
    geometric = torch.where((geometric * view).sum(-1, keepdim=True) < 0, -geometric, geometric)
    normals = geometric
    if source.corner_normals is not None:
        shading = F.normalize((bary[..., None] * source.corner_normals[tri]).sum(1), dim=-1)
        shading = torch.where((shading * geometric).sum(-1, keepdim=True) < 0, -shading, shading)
        usable = torch.isfinite(shading).all(-1, keepdim=True) & (shading.norm(dim=-1, keepdim=True) > 0.5)
        normals = torch.where(usable, shading, geometric)

    if source.scene_materials is not None:
        cam_vertices = to_camera(source.vertices, extrinsics)
        rays = pixel_rays(intrinsics, size)
        base, metallic, roughness, alpha = source.scene_materials.lookup(
            tri, bary, lambda dx, dy: pixel_barycentrics(cam_vertices, source.faces, rays, camera, tri,
                                                         px + dx, py + dy)[0].detach())
    else:
        coords, values, grid, rotated = source.voxels
        lookup_points = z_up_to_y_up(points) if rotated else points
        attrs = sample_sparse_volume(lookup_points, coords, values, grid, normalize=True)
        base = srgb_decode(attrs[:, :3])
        metallic, roughness, alpha = attrs[:, 3], attrs[:, 4], attrs[:, 5]

    radiance = shade_pbr(env, normals, view, base, metallic, roughness)

    def image(values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        channels = values.shape[-1] if values.dim() > 1 else 1
        out = torch.full((num_pixels, channels), fill, dtype=values.dtype, device=device)
        out.index_copy_(0, covered, values.reshape(len(covered), channels))
        return out.view(batch, layers, resolution, resolution, channels).transpose(0, 1)  # (L, B, H, W, C)

    alpha_layers = image(alpha)[..., 0]
    color, coverage, weights = composite_layers(image(radiance), alpha_layers)
    # Camera-space normals and positions of the highest-weight layer (for SSAO and the normal image).
    best = weights.argmax(0)  # (B, H, W)
    normal_cam = torch.einsum("bij,kbpj->kbpi", extrinsics[:, :3, :3], image(normals).reshape(layers, batch, -1, 3))
    normal_cam = normal_cam.reshape(layers, batch, resolution, resolution, 3)
    position_cam = torch.einsum("bij,kbpj->kbpi", extrinsics[:, :3, :3], image(points).reshape(layers, batch, -1, 3))
    position_cam = position_cam.reshape(layers, batch, resolution, resolution, 3) + extrinsics[None, :, None, None, :3, 3]
    pick = best[None, ..., None].expand(1, batch, resolution, resolution, 3)
    normal_best = normal_cam.gather(0, pick)[0]
    position_best = position_cam.gather(0, pick)[0]
    hit = coverage > 1e-4
    ambient = torch.ones(batch, resolution, resolution, device=device)
    if ssao:
        for b in range(batch):
            ambient[b] = ambient_visibility(position_best[b], normal_best[b], hit[b], intrinsics[b])
    color = color * ambient[..., None]

    shaded = tonemap(color / coverage.clamp(min=1e-6)[..., None], exposure)
    if isinstance(background, str):
        if background != "environment":
            raise ValueError(f"background must be an RGB colour or 'environment', got {background!r}")
        directions = _view_directions(extrinsics, intrinsics, resolution)
        back = tonemap(env.background(directions), exposure)
    else:
        back = torch.as_tensor(background, dtype=torch.float32, device=device).expand(batch, resolution, resolution, 3)
    cov = coverage[..., None]
    shaded = shaded * cov + back * (1 - cov)

    first_hit = (fragments.triangle_id[:, 0] >= 0).float()
    normal_vis = normal_best * torch.tensor([1.0, -1.0, -1.0], device=device) * 0.5 + 0.5
    normal_vis = torch.where(hit[..., None], normal_vis, torch.ones_like(normal_vis))
    first = image(torch.cat([srgb_encode(base), metallic[:, None], roughness[:, None], alpha[:, None]], -1))[0]
    return {
        "shaded": shaded.clamp(0, 1),
        "alpha": coverage.clamp(0, 1)[..., None],
        "normal": normal_vis,
        "base_color": first[..., :3],
        "metallic": first[..., 3:4],
        "roughness": first[..., 4:5],
        "alpha_material": first[..., 5:6],
        "mask": first_hit[..., None],
        "ambient": ambient[..., None],
    }


def _view_directions(extrinsics, intrinsics, resolution):
    """(B, H, W, 3) world directions of the pixel rays."""
    coords = (torch.arange(resolution, device=extrinsics.device, dtype=torch.float32) + 0.5) / resolution
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    fx, fy = intrinsics[:, 0, 0, None, None], intrinsics[:, 1, 1, None, None]
    cx, cy = intrinsics[:, 0, 2, None, None], intrinsics[:, 1, 2, None, None]
    x, y = (u - cx) / fx, (v - cy) / fy
    cam = torch.stack([x, y, torch.ones_like(x)], -1)
    return torch.einsum("bji,bhwj->bhwi", extrinsics[:, :3, :3], cam)


def _has_transparency(source: PreviewSource) -> bool:
    if source.scene_materials is not None:
        return source.scene_materials.any_transparent
    return bool((source.voxels[1][:, 5] < 0.999).any())


# ----------------------------------------------------------------------------------------------------------
# Scene materials


class _SceneMaterials:
    """The glTF material model of a `Scene`, evaluated per fragment (textures sampled with mipmaps)."""

    def __init__(self, scene, device=None):
        self.materials = scene.materials
        self.material_ids = torch.from_numpy(scene.material_ids.astype(np.int64)).to(device)
        self.uvs = [torch.from_numpy(uv).to(device) for uv in scene.uvs]
        self.colors = None if scene.colors is None else torch.from_numpy(scene.colors).to(device)
        self.device = device
        self._textures: Dict[int, Tuple[torch.Tensor, list]] = {}
        self.any_transparent = any(int(m.alpha_mode) != 0 for m in scene.materials)

    def _texture(self, texture):
        key = id(texture.image)
        if key not in self._textures:  # a read-only, recomputable cache of this call's textures
            image = torch.from_numpy(np.array(texture.image, copy=True)).to(self.device).float() / 255
            self._textures[key] = (image, mip_pyramid(image))
        return self._textures[key]

    def _sample(self, texture, tri, bary, neighbour_bary) -> torch.Tensor:
        image, levels = self._texture(texture)
        if texture.uv_set >= len(self.uvs):
            return torch.ones(len(tri), 4, device=self.device)
        corner_uv = self.uvs[texture.uv_set][tri]  # (K, 3, 2) scene UVs, v up

        def uv_at(b):  # image coordinates, v down, as sample_texture reads them
            return image_coordinates((b[..., None] * corner_uv).sum(1), texture.uv_transform)

        uv = uv_at(bary)
        derivatives = torch.cat([uv_at(neighbour_bary[0]) - uv, uv_at(neighbour_bary[1]) - uv], -1)
        return sample_texture(image, uv, wrap=texture.wrap_s,  # one mode for both axes: sample_texture takes one
                              uv_derivatives=derivatives, levels=levels,
                              filter="nearest" if int(texture.filter) == 0 else "linear")

    def lookup(self, tri, bary, neighbour_barycentrics):
        """Linear base colour (K, 3), metallic, roughness, alpha (K,) for fragments on triangles ``tri``."""
        k = len(tri)
        base = torch.ones(k, 4, device=self.device)
        metallic = torch.ones(k, device=self.device)
        roughness = torch.ones(k, device=self.device)
        alpha = torch.ones(k, device=self.device)
        material = self.material_ids[tri]
        neighbours = None
        for index, m in enumerate(self.materials):
            sel = (material == index).nonzero().squeeze(1)
            if len(sel) == 0:
                continue
            if neighbours is None and m.textures():
                neighbours = (neighbour_barycentrics(1, 0), neighbour_barycentrics(0, 1))
            near = None if neighbours is None else (neighbours[0][sel], neighbours[1][sel])
            colour = torch.as_tensor(m.base_color_factor, dtype=torch.float32, device=self.device).expand(len(sel), 4)
            if m.base_color_texture is not None:
                texel = self._sample(m.base_color_texture, tri[sel], bary[sel], near)
                texel = torch.cat([srgb_decode(texel[:, :3]), texel[:, 3:]], -1)
                colour = colour * texel
            if self.colors is not None:
                colour = colour * (bary[sel, :, None] * self.colors[tri[sel]]).sum(1)
            base[sel] = colour
            met = torch.full((len(sel),), float(m.metallic_factor), device=self.device)
            rough = torch.full((len(sel),), float(m.roughness_factor), device=self.device)
            if m.metallic_roughness_texture is not None:
                texel = self._sample(m.metallic_roughness_texture, tri[sel], bary[sel], near)
                met, rough = met * texel[:, 2], rough * texel[:, 1]
            metallic[sel], roughness[sel] = met, rough
            if int(m.alpha_mode) == 1:  # MASK
                alpha[sel] = (colour[:, 3] >= m.alpha_cutoff).float()
            elif int(m.alpha_mode) == 2:  # BLEND
                alpha[sel] = colour[:, 3]
        return base[:, :3].clamp(0, 1), metallic.clamp(0, 1), roughness.clamp(0, 1), alpha.clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------
# Layouts and files


def pbr_panel(views: Dict[str, torch.Tensor], index: int = 0) -> np.ndarray:
    """The reference's PBR visualisation frame (spec 5.4 ``make_pbr_vis_frames``) as (1.5 R, 2 R, 3) uint8:
    shaded and normals on top at full size; base colour, metallic, roughness and alpha below at half size."""
    top = torch.cat([views["shaded"][index], views["normal"][index]], 1)
    small = [views["base_color"][index], views["metallic"][index].expand(-1, -1, 3),
             views["roughness"][index].expand(-1, -1, 3), views["alpha_material"][index].expand(-1, -1, 3)]
    mask = views["mask"][index]
    # A coloured backdrop: white or black would hide alpha = 1 or metallic = 0 against it.
    backdrop = torch.tensor(PANEL_BACKDROP, dtype=mask.dtype, device=mask.device)
    small = [s * mask + backdrop * (1 - mask) for s in small]
    half = [F.interpolate(s.permute(2, 0, 1)[None], scale_factor=0.5, mode="area")[0].permute(1, 2, 0) for s in small]
    bottom = torch.cat(half, 1)
    width = top.shape[1]
    if bottom.shape[1] != width:  # odd resolutions: pad the half-size row to the full width
        bottom = F.pad(bottom, (0, 0, 0, width - bottom.shape[1]), value=1.0)
    return to_uint8(torch.cat([top, bottom], 0))


def grid_image(images: torch.Tensor, columns: int = 4) -> np.ndarray:
    """(N, H, W, 3) images in [0, 1] -> one uint8 grid, ``columns`` per row (white padding)."""
    n, h, w, c = images.shape
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    canvas = torch.ones(rows * h, columns * w, c, dtype=images.dtype, device=images.device)
    for k in range(n):
        r, q = divmod(k, columns)
        canvas[r * h:(r + 1) * h, q * w:(q + 1) * w] = images[k]
    return to_uint8(canvas)


def multiview_grid(source: PreviewSource, views: int = 8, resolution: int = 256, columns: int = 4,
                   environment=None, **options) -> np.ndarray:
    """``views`` PBR-shaded views around the object (reference snapshot layout) in one uint8 image."""
    fov = math.radians(36)
    extrinsics, intrinsics = snapshot_cameras(views, framing_radius(source, fov), fov)
    out = render_pbr(source, extrinsics, intrinsics, resolution, environment, **options)
    return grid_image(out["shaded"], columns)


def render_panel(source: PreviewSource, resolution: int = 256, environment=None, yaw: float = math.radians(164),
                 pitch: float = math.radians(20), **options) -> np.ndarray:
    """The PBR panel of one view (default: from -Y, the front of a Y-up glTF asset, 16 degrees off-axis)."""
    fov = math.radians(36)
    eye = yaw_pitch_eye(torch.tensor([yaw], dtype=torch.float64), torch.tensor([pitch], dtype=torch.float64),
                        framing_radius(source, fov))
    out = render_pbr(source, look_at(eye).float(), intrinsics_from_fov(fov, 1), resolution, environment, **options)
    return pbr_panel(out)


def render_turntable(source: PreviewSource, num_frames: int = 48, resolution: int = 256, panel: bool = False,
                     environment=None, batch: int = 8, progress=None, **options) -> List[np.ndarray]:
    """Frames of a turntable (the reference's video path), PBR-shaded or as PBR panels; uint8 arrays.

    ``progress``: a ``callback(stage, step, total)``, told ``("render", frames done, num_frames)`` per batch.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    fov = math.radians(40)
    env = resolve_environment(environment, device=source.vertices.device)
    extrinsics, intrinsics = turntable_cameras(num_frames, framing_radius(source, fov), fov)
    frames = []
    for start in range(0, num_frames, batch):
        out = render_pbr(source, extrinsics[start:start + batch], intrinsics[start:start + batch], resolution, env,
                         **options)
        for k in range(out["shaded"].shape[0]):
            frames.append(pbr_panel(out, k) if panel else to_uint8(out["shaded"][k]))
        if progress is not None:
            progress("render", len(frames), num_frames)
    return frames


def render_voxel_preview(coords, colors, resolution: int, image_size: int = 256, views: int = 4,
                         columns: int = 4) -> np.ndarray:
    """Voxels as coloured cubes (sRGB colours in [0, 1], unlit) from ``views`` snapshot cameras, as a grid."""
    from omnivox.render.voxels import render_voxels

    coords = torch.as_tensor(np.asarray(coords), dtype=torch.int64)
    colors = torch.as_tensor(colors, dtype=torch.float32)
    fov = math.radians(36)
    extrinsics, intrinsics = snapshot_cameras(views, max(2.0, 1.08 * math.sqrt(3) / 2 / math.sin(fov / 2)), fov)
    out = render_voxels(coords, colors, resolution, extrinsics, intrinsics, image_size, background=1.0)
    return grid_image(out["rgb"][..., :3].clamp(0, 1), columns)


def save_image(image: np.ndarray, path: Union[str, os.PathLike]) -> None:
    """Write a uint8 image (PNG/JPEG by suffix)."""
    from PIL import Image

    Image.fromarray(np.asarray(image)).save(path)


def save_video(frames: Sequence[np.ndarray], path: Union[str, os.PathLike], fps: int = 15) -> None:
    """Write uint8 frames as ``.mp4`` (H.264 through the imageio-ffmpeg wheel) or ``.gif`` (Pillow)."""
    path = Path(path)
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    suffix = path.suffix.lower()
    if suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(np.asarray(f)) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return
    if suffix != ".mp4":
        raise ValueError(f"{path}: videos are written as .mp4 or .gif, got {suffix!r}")
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (provides the ffmpeg binary)
    except ImportError as error:
        raise ImportError("writing .mp4 needs imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg); "
                          "or write a .gif") from error
    # H.264 with yuv420p needs even sides; pad with white instead of letting ffmpeg rescale.
    padded = []
    for frame in frames:
        frame = np.asarray(frame)
        h, w = frame.shape[:2]
        padded.append(np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255))
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                            ffmpeg_log_level="error") as writer:
        for frame in padded:
            writer.append_data(frame)
