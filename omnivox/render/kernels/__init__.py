"""Backend dispatch for the rasterizer (internal; the public API is `omnivox.render.rasterize`).

``"torch"`` runs `kernels.reference` on any device; ``"triton"`` runs `kernels.triton.raster` (CUDA tensors,
or any device under ``TRITON_INTERPRET=1``, which tests use to compare the two on CPU); ``"auto"`` picks Triton
for CUDA tensors when Triton imports. Triton is imported only when it is used.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

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

BACKENDS = ("auto", "torch", "triton")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether `triton` imports (checked once; the answer cannot change within a process)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """``backend`` -> ``"triton"`` or ``"torch"`` for tensors on ``device``; raises ValueError for bad values."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton" and not triton_available():
        raise ValueError("backend='triton' needs the triton package (pip install triton)")
    return backend


def rasterize_keys(setup: TriangleSetup, num_cameras: int, resolution: Tuple[int, int],
                   previous: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    """Nearest (depth, face) key per pixel with the chosen backend (already resolved)."""
    if backend == "triton":
        from omnivox.render.kernels.triton.raster import rasterize_keys_triton

        return rasterize_keys_triton(setup, num_cameras, resolution, previous)
    return rasterize_keys_reference(setup, num_cameras, resolution, previous)
