"""Screen-space ambient occlusion from a camera-space position buffer (a preview effect, not physics).

For each covered pixel, ``samples`` points are placed in the hemisphere around its normal within ``radius``
(world units), projected into the image, and counted as occluded when the surface stored at that pixel is
in front of them (by more than a small bias, and by less than ``radius`` so that distant foreground objects
do not darken the background: the usual range check). Visibility is ``1 - intensity * occluded / samples``,
clamped to [0, 1]. The defaults are the reference's (64 samples, radius 0.1, intensity 1.5; spec 5.3).

The sample kernel comes from ``generator`` (fixed seed by default), so the same inputs give the same image.
"""

from __future__ import annotations

from typing import Optional

import torch


def ambient_visibility(
    positions: torch.Tensor,
    normals: torch.Tensor,
    mask: torch.Tensor,
    intrinsics: torch.Tensor,
    radius: float = 0.1,
    samples: int = 64,
    intensity: float = 1.5,
    bias: float = 0.002,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """(H, W) ambient visibility in [0, 1] (1 = unoccluded; 1 outside the mask).

    Args:
        positions: (H, W, 3) camera-space points (OpenCV: x right, y down, z forward).
        normals: (H, W, 3) unit camera-space normals facing the camera.
        mask: (H, W) bool coverage.
        intrinsics: (3, 3) normalised intrinsics (the image spans [0, 1]).
    """
    height, width, _ = positions.shape
    if normals.shape != positions.shape or mask.shape != positions.shape[:2]:
        raise ValueError(f"ambient_visibility: positions {tuple(positions.shape)}, normals {tuple(normals.shape)} "
                         f"and mask {tuple(mask.shape)} disagree")
    if samples < 1 or radius <= 0:
        raise ValueError(f"ambient_visibility: need samples >= 1 and radius > 0, got {samples}, {radius}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    # Points in the unit ball, denser near the centre (so near occluders count more), on the CPU generator.
    kernel = torch.randn(samples, 3, generator=generator, dtype=torch.float64)
    kernel = kernel / kernel.norm(dim=1, keepdim=True)
    lengths = torch.rand(samples, generator=generator, dtype=torch.float64)
    kernel = kernel * (0.1 + 0.9 * lengths * lengths)[:, None]
    kernel = kernel.to(positions)

    valid = mask.reshape(-1)
    p = positions.reshape(-1, 3)[valid]
    n = normals.reshape(-1, 3)[valid]
    visibility = torch.ones(height * width, dtype=positions.dtype, device=positions.device)
    if len(p) == 0:
        return visibility.reshape(height, width)
    depth_image = torch.where(mask, positions[..., 2], torch.full_like(positions[..., 2], float("inf"))).reshape(-1)
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    occluded = torch.zeros(len(p), dtype=positions.dtype, device=positions.device)
    for offset in kernel:
        direction = offset.expand_as(n)
        flip = torch.where((direction * n).sum(-1, keepdim=True) < 0, -1.0, 1.0)
        q = p + radius * direction * flip
        z = q[:, 2].clamp(min=1e-6)
        px = ((fx * q[:, 0] / z + cx) * width).floor().long().clamp(0, width - 1)
        py = ((fy * q[:, 1] / z + cy) * height).floor().long().clamp(0, height - 1)
        scene_depth = depth_image[py * width + px]
        in_front = scene_depth < q[:, 2] - bias
        in_range = (q[:, 2] - scene_depth) < radius
        occluded += (in_front & in_range).to(positions.dtype)
    visibility[valid] = (1 - intensity * occluded / samples).clamp(0, 1)
    return visibility.reshape(height, width)
