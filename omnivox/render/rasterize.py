"""Triangle rasterization: per pixel triangle id, perspective-correct barycentrics and depth, for batches of cameras.

The depth test runs without gradients (`omnivox.render.kernels`: a chunked PyTorch path for any device and a
Triton kernel for CUDA; the coverage test, its watertightness and tie rules are described in
`omnivox/render/kernels/reference.py`). The barycentrics are then recomputed in PyTorch from the pixel rays and
the current vertex positions (spec training.md 5.5), so they and everything interpolated from them are
differentiable with respect to the vertices. Silhouette gradients come from `omnivox.render.antialias`.

Image layout: ``(B, L, H, W)``, row 0 at the top of the image, camera conventions as in
`omnivox.render.cameras`. Layer ``l`` of a depth-peeled result holds the ``l``-th nearest surface at each pixel.

Example::

    fragments = rasterize(vertices, faces, extrinsics, intrinsics, (512, 512))
    mask = fragments.triangle_id[:, 0] >= 0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

import torch

from omnivox.render.cameras import _check_cameras, to_camera
from omnivox.render.kernels import rasterize_keys, resolve_backend, triangle_setup, unpack_keys
from omnivox.render.kernels.reference import pixel_rays

__all__ = ["Fragments", "rasterize", "rasterize_uv", "pixel_barycentrics", "clip_planes", "MAX_RESOLUTION"]

# Bounds the key buffer (8 bytes per pixel per camera) to something a single machine can hold.
MAX_RESOLUTION = 16384


@dataclass
class Fragments:
    """What each pixel sees, for ``B`` cameras and ``L`` depth layers.

    Attributes:
        triangle_id: (B, L, H, W) int64 index into ``faces``, -1 where the ray hits nothing.
        bary: (B, L, H, W, 3) float32 (float64 for float64 vertices) perspective-correct barycentrics of the hit
            point (0 on background), differentiable w.r.t. the vertex positions.
        depth: (B, L, H, W) float32 camera-space z of the hit point (0 on background), differentiable.
    """

    triangle_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """(B, L, H, W) bool, True where a triangle covers the pixel centre."""
        return self.triangle_id >= 0

    @property
    def resolution(self) -> Tuple[int, int]:
        """(H, W)."""
        return tuple(self.triangle_id.shape[-2:])

    def layer(self, index: int) -> "Fragments":
        """The fragments of one depth layer, keeping ``L = 1``."""
        return Fragments(self.triangle_id[:, index:index + 1], self.bary[:, index:index + 1],
                         self.depth[:, index:index + 1])


def _check_resolution(resolution, name: str = "resolution") -> Tuple[int, int]:
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    if len(resolution) != 2 or not all(isinstance(r, int) and 0 < r <= MAX_RESOLUTION for r in resolution):
        raise ValueError(f"{name} must be (H, W) with positive ints <= {MAX_RESOLUTION}, got {resolution!r}")
    return int(resolution[0]), int(resolution[1])


def _check_mesh(vertices: torch.Tensor, faces: torch.Tensor) -> None:
    if not isinstance(vertices, torch.Tensor) or not vertices.is_floating_point() or vertices.shape[-1] != 3 \
            or vertices.dim() not in (2, 3):
        desc = f"{tuple(vertices.shape)} {vertices.dtype}" if isinstance(vertices, torch.Tensor) else type(vertices)
        raise ValueError(f"vertices must be a float (V, 3) or (B, V, 3) tensor, got {desc}")
    if not isinstance(faces, torch.Tensor) or faces.dim() != 2 or faces.shape[1] != 3 \
            or faces.dtype not in (torch.int32, torch.int64):
        desc = f"{tuple(faces.shape)} {faces.dtype}" if isinstance(faces, torch.Tensor) else type(faces)
        raise ValueError(f"faces must be an int32/int64 (F, 3) tensor, got {desc}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[-2]):
        raise ValueError(f"faces index vertices out of range [0, {vertices.shape[-2]})")
    if faces.shape[0] >= 2 ** 31:
        raise ValueError(f"at most 2^31 - 1 faces are supported, got {faces.shape[0]}")


def pixel_barycentrics(camera_vertices: torch.Tensor, faces: torch.Tensor, rays: torch.Tensor,
                       camera: torch.Tensor, triangle: torch.Tensor, px: torch.Tensor, py: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Perspective-correct barycentrics and depth where given pixel rays meet given triangles (differentiable).

    ``b_k = (n_k . d) / sum_j (n_j . d)`` with the edge-plane normals ``n_k`` of the camera-space triangle and
    the pixel ray ``d`` (see `omnivox.render.kernels.reference`); the point need not be inside the triangle
    (``px``/``py`` may be fractional, which gives screen-space derivatives by extrapolation).

    Args:
        camera_vertices: (B, V, 3) camera-space positions.
        faces: (F, 3) int64.
        rays: (B, 4) ``(sx, ox, sy, oy)`` from `pixel_rays`.
        camera, triangle: (K,) int64 camera and face of each query.
        px, py: (K,) pixel column and row (integer or float).

    Returns:
        bary (K, 3) and depth (K,), in the dtype of ``camera_vertices``.
    """
    corners = camera_vertices[camera.unsqueeze(1), faces[triangle]]  # (K, 3, 3)
    # Coverage is already decided, so the plain cross products suffice here (the depth test's lexicographic
    # ordering only matters for watertightness; the two differ by rounding).
    v0, v1, v2 = corners.unbind(1)
    normals = torch.stack([torch.linalg.cross(v1, v2, dim=-1), torch.linalg.cross(v2, v0, dim=-1),
                           torch.linalg.cross(v0, v1, dim=-1)], dim=1)
    ray = rays[camera].to(corners.dtype)
    dx = (px.to(torch.float32) + 0.5).to(corners.dtype) * ray[:, 0] + ray[:, 1]
    dy = (py.to(torch.float32) + 0.5).to(corners.dtype) * ray[:, 2] + ray[:, 3]
    w = normals[..., 0] * dx.unsqueeze(1) + normals[..., 1] * dy.unsqueeze(1) + normals[..., 2]
    total = w.sum(dim=1, keepdim=True)
    total = torch.where(total != 0, total, torch.ones_like(total))
    bary = w / total
    depth = (bary * corners[..., 2]).sum(dim=1)
    return bary, depth


def clip_planes(near: Union[float, torch.Tensor], far: Union[float, torch.Tensor], num_cameras: int) -> torch.Tensor:
    """Validated (B, 2) float32 ``(near, far)`` per camera from floats or (B,) tensors (on the CPU)."""
    planes = []
    for name, value in (("near", near), ("far", far)):
        t = torch.as_tensor(value, dtype=torch.float32).detach().cpu().reshape(-1)
        if t.numel() == 1:
            t = t.expand(num_cameras)
        if t.numel() != num_cameras:
            raise ValueError(f"{name} must be a float or have one value per camera ({num_cameras}), got {t.numel()}")
        planes.append(t)
    clip = torch.stack(planes, dim=1)
    if not bool(((clip[:, 0] > 0) & (clip[:, 0] < clip[:, 1])).all()):
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    return clip


def rasterize(vertices: torch.Tensor, faces: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor,
              resolution: Union[int, Tuple[int, int]], *, layers: int = 1,
              near: Union[float, torch.Tensor] = 0.01, far: Union[float, torch.Tensor] = 100.0,
              backend: str = "auto") -> Fragments:
    """Rasterize a triangle mesh for a batch of cameras.

    Both faces of every triangle are drawn (no culling). A pixel is covered when the ray through its centre
    hits the triangle at a depth in ``[near, far]``; triangles crossing the near plane are cut by it exactly.

    Args:
        vertices: (V, 3) world positions shared by all cameras, or (B, V, 3) one mesh per camera; float.
        faces: (F, 3) int64 or int32 vertex indices.
        extrinsics: (B, 4, 4) world -> camera (OpenCV axes).
        intrinsics: (B, 3, 3) normalised intrinsics.
        resolution: (H, W) or an int for square images.
        layers: number of depth layers (depth peeling): layer ``l`` is the ``l``-th nearest surface.
        near, far: clipping depths along the camera z axis, ``0 < near < far``: floats, or (B,) tensors with one
            value per camera (the SC-VAE loss draws a near plane per camera, spec training.md 2.4).
        backend: ``"auto"`` (Triton for CUDA tensors when available), ``"torch"`` or ``"triton"``.

    Returns:
        `Fragments` with ``L = layers``.

    Raises:
        ValueError: bad shapes, dtypes, indices, resolution, layers, clipping range or backend.
    """
    _check_mesh(vertices, faces)
    _check_cameras(extrinsics, intrinsics)
    height, width = _check_resolution(resolution)
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be an int >= 1, got {layers!r}")
    num_cameras = extrinsics.shape[0]
    clip = clip_planes(near, far, num_cameras)
    if vertices.dim() == 3 and vertices.shape[0] != num_cameras:
        raise ValueError(f"vertices has batch {vertices.shape[0]} but there are {num_cameras} cameras")
    device = vertices.device
    backend = resolve_backend(backend, device)
    faces = faces.to(device=device, dtype=torch.int64)
    extrinsics = extrinsics.to(device=device, dtype=torch.float32)
    intrinsics = intrinsics.to(device=device, dtype=torch.float32)

    # The depth test runs in float32 on every backend; the differentiable recomputation keeps float64 inputs in
    # float64 (finite-difference tests rely on it).
    work_dtype = torch.float64 if vertices.dtype == torch.float64 else torch.float32
    camera_vertices = to_camera(vertices.to(work_dtype), extrinsics.to(work_dtype))
    if camera_vertices.shape[0] != num_cameras:
        camera_vertices = camera_vertices.expand(num_cameras, -1, -1)
    with torch.no_grad():
        setup = triangle_setup(camera_vertices.detach().to(torch.float32), faces, intrinsics, (height, width),
                               clip.to(device))
        all_keys = []
        previous = None
        for _ in range(layers):
            previous = rasterize_keys(setup, num_cameras, (height, width), previous, backend)
            all_keys.append(previous)
        triangle_id, _ = unpack_keys(torch.stack([k.view(num_cameras, height, width) for k in all_keys], dim=1))

    # Differentiable barycentrics and depth, recomputed only for covered pixels.
    covered = (triangle_id >= 0).reshape(-1).nonzero().squeeze(1)
    n_pixels = triangle_id.numel()
    flat_id = triangle_id.reshape(-1)[covered]
    camera = covered // (layers * height * width)
    py = (covered // width) % height
    px = covered % width
    rays = pixel_rays(intrinsics.to(work_dtype), (height, width)) if work_dtype == torch.float64 else setup.rays
    bary_fg, depth_fg = pixel_barycentrics(camera_vertices, faces, rays, camera, flat_id, px, py)
    bary = torch.zeros(n_pixels, 3, dtype=bary_fg.dtype, device=device).index_copy(0, covered, bary_fg)
    depth = torch.zeros(n_pixels, dtype=depth_fg.dtype, device=device).index_copy(0, covered, depth_fg)
    shape = (num_cameras, layers, height, width)
    return Fragments(triangle_id=triangle_id, bary=bary.view(*shape, 3), depth=depth.view(shape))


def rasterize_uv(uvs: torch.Tensor, faces: torch.Tensor, size: Union[int, Tuple[int, int]], *,
                 backend: str = "auto") -> Fragments:
    """Rasterize a mesh in texture space (for baking attributes into a texture).

    Texture convention (glTF): ``uv = (0, 0)`` is the top-left corner of the image, texel ``(row r, column c)``
    has its centre at ``((c + 0.5) / W, (r + 0.5) / H)``; ``v`` grows downwards. Where UV triangles overlap the
    one with the lowest face id wins. The barycentrics are affine in UV space.

    Args:
        uvs: (V, 2) float texture coordinates (per vertex; for per-corner UVs, pass ``uvs.reshape(-1, 2)`` and
            ``faces = arange(3F).view(F, 3)``).
        faces: (F, 3) int vertex indices.
        size: texture (H, W) or an int.

    Returns:
        `Fragments` with B = L = 1; ``depth`` is 1 on covered texels.
    """
    if not isinstance(uvs, torch.Tensor) or uvs.dim() != 2 or uvs.shape[1] != 2 or not uvs.is_floating_point():
        raise ValueError(f"uvs must be a float (V, 2) tensor, got "
                         f"{tuple(uvs.shape) if isinstance(uvs, torch.Tensor) else type(uvs)}")
    height, width = _check_resolution(size, "size")
    # Points (u, v, 1) seen by an identity camera with fx = fy = 1, cx = cy = 0 project to exactly (u, v).
    points = torch.cat([uvs.to(torch.float32), torch.ones_like(uvs[:, :1], dtype=torch.float32)], dim=1)
    extrinsics = torch.eye(4, device=uvs.device).unsqueeze(0)
    intrinsics = torch.eye(3, device=uvs.device).unsqueeze(0)
    intrinsics[0, 0, 2] = 0.0
    intrinsics[0, 1, 2] = 0.0
    return rasterize(points, faces, extrinsics, intrinsics, (height, width), near=0.5, far=2.0, backend=backend)
