"""How a ``backend=`` is picked, for every package with compiled kernels: one Triton probe, one rule, one message.

A function with a ``backend=`` argument takes ``"auto"``, ``"torch"`` (the PyTorch reference, any device) or its
compiled kernel: ``"triton"`` (CUDA: sparse convolution, the rasterizer, the fused flow blocks) or ``"numba"``
(CPU: the O-Voxel scan, material voxelization, sparse-volume sampling). ``"auto"`` takes the kernel where the
caller prefers it (where it runs and is faster), else ``"torch"``; asking for the kernel where it cannot run is a
ValueError that says what it needs. Kernel and reference give the same results, so the choice is about speed.
"""

from __future__ import annotations

import functools
from typing import Sequence

TRITON_BACKENDS = ("auto", "triton", "torch")
NUMBA_BACKENDS = ("auto", "numba", "torch")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether `triton` imports (checked once; the answer cannot change within a process)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def check_backend(backend: str, choices: Sequence[str], name: str = "backend") -> str:
    """``backend`` if it is one of ``choices``; a ValueError naming them otherwise (``name``: how the message
    calls the argument)."""
    if backend not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {backend!r}")
    return backend


def resolve_backend(backend: str, choices: Sequence[str], kernel: str, *, preferred: bool, possible: bool = True,
                    requirement: str = "", name: str = "backend") -> str:
    """``backend`` (one of ``choices``) -> ``kernel`` or ``"torch"``.

    Args:
        kernel: the compiled backend of ``choices`` (``"triton"`` or ``"numba"``).
        preferred: ``"auto"`` takes the kernel (it can run here and is the faster path).
        possible: the kernel can run here at all; asking for it where it cannot raises ValueError.
        requirement: what the kernel needs, for that message (``"needs the triton package"``).
    """
    check_backend(backend, choices, name)
    if backend == "auto":
        return kernel if preferred else "torch"
    if backend == kernel and not possible:
        raise ValueError(f"{name}={kernel!r} {requirement}")
    return backend
