"""The fused flow-block ops (internal; used by `omnivox.models.flow.FlowBlock`): each Triton launcher beside its
PyTorch reference.

``triton.block`` holds the kernels (CUDA tensors, or any device under ``TRITON_INTERPRET=1``, which the tests use
on CPU); ``reference`` holds same-signature PyTorch versions, which are also the CPU and autograd path.
`block_kernels` picks one set for a call by the one backend rule of `omnivox._backend` (``"auto"`` is Triton for
CUDA tensors when Triton imports, PyTorch otherwise), so the block's fused and unfused forwards are one body with
different kernels. Triton is imported only when it is used.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from omnivox._backend import TRITON_BACKENDS, resolve_backend as _resolve, triton_available
from omnivox.models.kernels.reference import gated_add_reference, layer_norm_reference, rms_norm_rope_reference

__all__ = ["BACKENDS", "BlockKernels", "REFERENCE_BLOCK_KERNELS", "block_kernels", "resolve_backend",
           "gated_add_reference", "layer_norm_reference", "rms_norm_rope_reference"]

BACKENDS = TRITON_BACKENDS


def resolve_backend(backend: str, device: torch.device) -> str:
    """``backend`` -> ``"triton"`` or ``"torch"`` for tensors on ``device``; raises ValueError for bad values."""
    # Explicit "triton" is allowed on any device: TRITON_INTERPRET=1 runs the kernels on CPU tensors (tests).
    return _resolve(backend, BACKENDS, "triton", preferred=device.type == "cuda" and triton_available(),
                    possible=triton_available(), requirement="needs the triton package (pip install triton)")


class BlockKernels(NamedTuple):
    """One backend's flow-block ops; both sets take the same arguments (see `reference`)."""

    backend: str  # "triton" or "torch"
    layer_norm: Callable[..., torch.Tensor]
    gated_add: Callable[..., torch.Tensor]
    rms_norm_rope: Callable[..., torch.Tensor]


REFERENCE_BLOCK_KERNELS = BlockKernels("torch", layer_norm_reference, gated_add_reference, rms_norm_rope_reference)


def block_kernels(backend: str, device: torch.device) -> BlockKernels:
    """The flow-block ops of ``backend`` (``"auto"``, ``"triton"`` or ``"torch"``, see `resolve_backend`) for
    tensors on ``device``. The Triton launchers have no backward: use them for inference only."""
    if resolve_backend(backend, device) == "torch":
        return REFERENCE_BLOCK_KERNELS
    from omnivox.models.kernels.triton import block

    # Looked up on each call (not bound at import), so a test can stand a reference in for one launcher.
    return BlockKernels("triton", block.layer_norm, block.gated_add, block.rms_norm_rope)
