"""Backend dispatch for the rasterizer (internal; the public API is `omnivox.render.rasterize`).

``"torch"`` runs `kernels.reference` on any device; ``"triton"`` runs `kernels.triton.raster` (CUDA tensors,
or any device under ``TRITON_INTERPRET=1``, which tests use to compare the two on CPU); ``"auto"`` picks Triton
for CUDA tensors when Triton imports (the rule and the probe: `omnivox._backend`). Triton is imported only
when it is used.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from omnivox._backend import TRITON_BACKENDS, resolve_backend as _resolve, triton_available
from omnivox.render.kernels.reference import (
    EMPTY_KEY,
    TriangleSetup,
    pack_keys,
    rasterize_keys_reference,
    triangle_setup,
    unpack_keys,
)

__all__ = ["BACKENDS", "EMPTY_KEY", "TriangleSetup", "resolve_backend", "rasterize_keys", "rasterize_keys_reference",
           "triangle_setup", "pack_keys", "unpack_keys"]

BACKENDS = TRITON_BACKENDS


def resolve_backend(backend: str, device: torch.device) -> str:
    """``backend`` -> ``"triton"`` or ``"torch"`` for tensors on ``device``; raises ValueError for bad values."""
    # Explicit "triton" is allowed on any device: TRITON_INTERPRET=1 runs the kernel on CPU tensors (tests).
    return _resolve(backend, BACKENDS, "triton", preferred=device.type == "cuda" and triton_available(),
                    possible=triton_available(), requirement="needs the triton package (pip install triton)")


def rasterize_keys(setup: TriangleSetup, num_cameras: int, resolution: Tuple[int, int],
                   previous: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    """Nearest (depth, face) key per pixel with the chosen backend (already resolved)."""
    if backend == "triton":
        from omnivox.render.kernels.triton.raster import rasterize_keys_triton

        return rasterize_keys_triton(setup, num_cameras, resolution, previous)
    return rasterize_keys_reference(setup, num_cameras, resolution, previous)
