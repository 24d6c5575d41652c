"""Cameras: look-at extrinsics, normalised intrinsics, camera generators and the projection (spec training.md 5.1).

Conventions (the same everywhere in `omnivox.render`):

* **Extrinsics** are (B, 4, 4) world -> camera matrices with OpenCV axes: x right, y down, z forward. A point
  ``p`` is in front of the camera when its camera-space ``z > 0``.
* **Intrinsics** are (B, 3, 3) and **normalised**: the image spans ``[0, 1]`` on both axes, so
  ``fx = 0.5 / tan(fov_x / 2)`` and ``cx = cy = 0.5`` for a centred camera. ``(u, v) = (fx x/z + cx, fy y/z + cy)``
  is the position in units of the image width and height; ``(0, 0)`` is the top-left corner of the image.
* **Pixels**: pixel ``(row i, column j)`` of an ``H x W`` image has its centre at ``u = (j + 0.5) / W``,
  ``v = (i + 0.5) / H``; row 0 is the top of the image (as in PNG files).
* Assets in the TRELLIS.2 data are Z-up (Blender), so the default ``up`` is ``+Z``. glTF files are Y-up: pass
  ``up=(0, 1, 0)`` (and yaw/pitch accordingly) to look at a raw `load_asset` scene the way a glTF viewer would.

Example::

    extrinsics, intrinsics = orbit_cameras(8, radius=2.0, fov=math.radians(40))
    pixels, depth = project(points, extrinsics, intrinsics, (512, 512))
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch

__all__ = [
    "look_at",
    "intrinsics_from_fov",
    "orbit_cameras",
    "random_sphere_cameras",
    "project",
    "projection_matrix",
    "yaw_pitch_eye",
]

Vec3 = Union[torch.Tensor, Sequence[float]]


def _as_points(x: Vec3, name: str, dtype=None, device=None) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=dtype, device=device)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.shape[-1:] != (3,) or t.dim() > 2:
        raise ValueError(f"{name} must have shape (3,) or (B, 3), got {tuple(t.shape)}")
    return t.reshape(-1, 3)


def look_at(eye: Vec3, target: Vec3 = (0.0, 0.0, 0.0), up: Vec3 = (0.0, 0.0, 1.0)) -> torch.Tensor:
    """World -> camera matrices of cameras at ``eye`` looking at ``target`` (OpenCV axes).

    The camera's z axis points from ``eye`` to ``target``, x = z cross up (right), y = z cross x (down), so
    ``up`` appears at the top of the image.

    Args:
        eye: (B, 3) or (3,) camera positions.
        target: (B, 3) or (3,) points looked at.
        up: (3,) or (B, 3) world direction shown upwards; must not be parallel to the viewing direction.

    Returns:
        (B, 4, 4) extrinsics, dtype of ``eye`` (float32 for lists).
    """
    eye = _as_points(eye, "eye")
    target = _as_points(target, "target", eye.dtype, eye.device)
    up = _as_points(up, "up", eye.dtype, eye.device)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up.expand_as(forward), dim=-1)
    norm = right.norm(dim=-1, keepdim=True)
    if bool((norm < 1e-8).any()):
        raise ValueError("look_at: `up` is parallel to the viewing direction (eye - target) for some camera")
    right = right / norm
    down = torch.linalg.cross(forward, right, dim=-1)
    rotation = torch.stack([right, down, forward], dim=1)  # rows: camera axes in world coordinates
    batch = rotation.shape[0]
    extrinsics = torch.zeros(batch, 4, 4, dtype=eye.dtype, device=eye.device)
    extrinsics[:, :3, :3] = rotation
    extrinsics[:, :3, 3] = -(rotation @ eye.expand(batch, 3).unsqueeze(-1)).squeeze(-1)
    extrinsics[:, 3, 3] = 1.0
    return extrinsics


def intrinsics_from_fov(fov_radians: Union[float, torch.Tensor], batch: int = 1) -> torch.Tensor:
    """Normalised intrinsics of centred cameras with field of view ``fov`` on both image axes.

    ``fx = fy = 0.5 / tan(fov / 2)``, ``cx = cy = 0.5`` (spec 5.1). For a non-square image this keeps the same
    angle across the width and across the height (the pixels are then not square).

    Args:
        fov_radians: a float, or a (B,) tensor of per-camera fields of view, in (0, pi).
        batch: number of cameras when ``fov_radians`` is a float.

    Returns:
        (B, 3, 3) float32 (or the tensor's float dtype).
    """
    fov = torch.as_tensor(fov_radians)
    if not fov.is_floating_point():
        fov = fov.to(torch.float32)
    fov = fov.reshape(-1)
    if fov.numel() == 1:
        fov = fov.expand(batch)
    if bool(((fov <= 0) | (fov >= math.pi)).any()):
        raise ValueError(f"fov_radians must lie in (0, pi), got {fov.tolist()[:4]}")
    focal = 0.5 / torch.tan(fov / 2)
    intrinsics = torch.zeros(fov.shape[0], 3, 3, dtype=fov.dtype, device=fov.device)
    intrinsics[:, 0, 0] = focal
    intrinsics[:, 1, 1] = focal
    intrinsics[:, 0, 2] = 0.5
    intrinsics[:, 1, 2] = 0.5
    intrinsics[:, 2, 2] = 1.0
    return intrinsics


def yaw_pitch_eye(yaw: torch.Tensor, pitch: torch.Tensor, radius: Union[float, torch.Tensor]) -> torch.Tensor:
    """Camera positions ``r (sin yaw cos pitch, cos yaw cos pitch, sin pitch)`` (spec 5.1, Z-up), shape (B, 3)."""
    return torch.stack([torch.sin(yaw) * torch.cos(pitch), torch.cos(yaw) * torch.cos(pitch), torch.sin(pitch)],
                       dim=-1) * torch.as_tensor(radius, dtype=yaw.dtype).reshape(-1, 1)


def orbit_cameras(num_views: int, radius: float = 2.0, fov: float = math.radians(40.0),
                  elevation: float = math.radians(20.0), target: Vec3 = (0.0, 0.0, 0.0),
                  yaw_offset: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """A turntable: ``num_views`` cameras at equal yaw steps around ``target``, all at one elevation.

    Yaw ``k`` is ``yaw_offset + 2 pi k / num_views`` and positions follow `yaw_pitch_eye` (Z-up, up = +Z; rotate
    a Y-up scene with ``(x, y, z) -> (x, -z, y)`` first).

    Returns:
        extrinsics (num_views, 4, 4) float32, intrinsics (num_views, 3, 3) float32.
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    yaw = yaw_offset + torch.arange(num_views, dtype=torch.float64) * (2 * math.pi / num_views)
    pitch = torch.full_like(yaw, float(elevation))
    target_t = _as_points(target, "target", torch.float64)
    eye = yaw_pitch_eye(yaw, pitch, radius) + target_t
    extrinsics = look_at(eye, target_t).to(torch.float32)
    return extrinsics, intrinsics_from_fov(float(fov), num_views)


def random_sphere_cameras(num_views: int, generator: torch.Generator | None = None,
                          radius_range: Tuple[float, float] = (2.0, 100.0),
                          fov_range: Tuple[float, float] | None = None,
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random cameras around the origin as the SC-VAE loss draws them (spec training.md 2.4).

    ``k ~ U(1/r_max^2, 1/r_min^2)``, ``r = 1/sqrt(k)``; the direction is uniform on the sphere (a normalised
    Gaussian); the camera looks at the origin with up = +Z. Without ``fov_range`` the field of view is
    ``2 asin(0.5 / r)``, so the sphere of radius 0.5 exactly fills the image; with it, FoV ~ U(fov_range).

    Returns:
        extrinsics (num_views, 4, 4) float32, intrinsics (num_views, 3, 3) float32. The radii are
        ``extrinsics[:, :3, 3].norm(dim=-1)`` (the spec's near plane is ``U(r - 1, r)``).
    """
    r_min, r_max = radius_range
    if not 0 < r_min <= r_max:
        raise ValueError(f"radius_range must satisfy 0 < min <= max, got {radius_range}")
    k = torch.rand(num_views, generator=generator, dtype=torch.float64) * (1 / r_min ** 2 - 1 / r_max ** 2) \
        + 1 / r_max ** 2
    radius = 1 / torch.sqrt(k)
    direction = torch.randn(num_views, 3, generator=generator, dtype=torch.float64)
    direction = torch.nn.functional.normalize(direction, dim=-1)
    # Straight up/down views would make look_at's up vector degenerate; nudge them (probability ~0).
    polar = direction[:, 2].abs() > 0.999999
    direction[polar, 0] += 1e-3
    direction = torch.nn.functional.normalize(direction, dim=-1)
    extrinsics = look_at(direction * radius.unsqueeze(-1), (0.0, 0.0, 0.0)).to(torch.float32)
    if fov_range is None:
        fov = 2 * torch.asin((0.5 / radius).clamp(max=1.0))
    else:
        fov = torch.rand(num_views, generator=generator, dtype=torch.float64) * (fov_range[1] - fov_range[0]) \
            + fov_range[0]
    return extrinsics, intrinsics_from_fov(fov.to(torch.float32))


def projection_matrix(intrinsics: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Clip-space matrices of spec 5.1 for (B, 3, 3) intrinsics: ``NDC x = 2u - 1``, ``NDC y = 2v - 1`` (so NDC y
    follows the image rows downwards, as nvdiffrast's row order does), ``z`` from -1 at ``near`` to 1 at ``far``.
    The rasterizer does not need it (it intersects pixel rays directly); it is here for interoperability."""
    fx, fy, cx, cy = intrinsics[:, 0, 0], intrinsics[:, 1, 1], intrinsics[:, 0, 2], intrinsics[:, 1, 2]
    proj = torch.zeros(intrinsics.shape[0], 4, 4, dtype=intrinsics.dtype, device=intrinsics.device)
    proj[:, 0, 0] = 2 * fx
    proj[:, 0, 2] = 2 * cx - 1
    proj[:, 1, 1] = 2 * fy
    proj[:, 1, 2] = -2 * cy + 1
    proj[:, 2, 2] = (far + near) / (far - near)
    proj[:, 2, 3] = 2 * near * far / (near - far)
    proj[:, 3, 2] = 1.0
    return proj


def to_camera(points: torch.Tensor, extrinsics: torch.Tensor) -> torch.Tensor:
    """(N, 3) or (B, N, 3) world points -> (B, N, 3) camera-space points."""
    if points.dim() == 2:
        points = points.unsqueeze(0)
    rotation = extrinsics[:, :3, :3].to(points.dtype)
    translation = extrinsics[:, :3, 3].to(points.dtype)
    return points @ rotation.transpose(1, 2) + translation.unsqueeze(1)


def project(points: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor,
            resolution: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Project world points into pixel coordinates.

    Args:
        points: (N, 3) shared by all cameras, or (B, N, 3).
        extrinsics: (B, 4, 4) world -> camera.
        intrinsics: (B, 3, 3) normalised.
        resolution: (H, W) image size in pixels.

    Returns:
        pixels: (B, N, 2) ``(x, y)`` in pixels (x along the width; pixel ``(i, j)`` has its centre at
            ``(j + 0.5, i + 0.5)``), differentiable.
        depth: (B, N) camera-space z (positive in front of the camera).
    """
    _check_cameras(extrinsics, intrinsics)
    height, width = resolution
    cam = to_camera(points, extrinsics)
    z = cam[..., 2]
    fx, fy = intrinsics[:, 0, 0].unsqueeze(1), intrinsics[:, 1, 1].unsqueeze(1)
    cx, cy = intrinsics[:, 0, 2].unsqueeze(1), intrinsics[:, 1, 2].unsqueeze(1)
    u = fx * cam[..., 0] / z + cx
    v = fy * cam[..., 1] / z + cy
    return torch.stack([u * width, v * height], dim=-1), z


def _check_cameras(extrinsics: torch.Tensor, intrinsics: torch.Tensor) -> None:
    if not isinstance(extrinsics, torch.Tensor) or extrinsics.dim() != 3 or extrinsics.shape[1:] != (4, 4):
        shape = tuple(extrinsics.shape) if isinstance(extrinsics, torch.Tensor) else type(extrinsics).__name__
        raise ValueError(f"extrinsics must be a (B, 4, 4) tensor, got {shape}")
    if not isinstance(intrinsics, torch.Tensor) or intrinsics.dim() != 3 or intrinsics.shape[1:] != (3, 3):
        shape = tuple(intrinsics.shape) if isinstance(intrinsics, torch.Tensor) else type(intrinsics).__name__
        raise ValueError(f"intrinsics must be a (B, 3, 3) tensor, got {shape}")
    if extrinsics.shape[0] != intrinsics.shape[0]:
        raise ValueError(f"extrinsics and intrinsics must have the same batch size, got {extrinsics.shape[0]} "
                         f"and {intrinsics.shape[0]}")
