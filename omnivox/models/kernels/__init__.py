"""The fused flow-block ops (internal; used by `omnivox.models.flow.FlowBlock`): each Triton launcher beside its
PyTorch reference.

``triton.block`` holds the kernels (CUDA tensors, or any device under ``TRITON_INTERPRET=1``, which the tests use
on CPU); ``reference`` holds same-signature PyTorch versions. ``resolve_backend`` applies the one backend rule of
`omnivox._backend`: ``"auto"`` is Triton for CUDA tensors when Triton imports, PyTorch otherwise. Triton is
imported only when it is used.
"""

from __future__ import annotations

import torch

from omnivox._backend import TRITON_BACKENDS, resolve_backend as _resolve, triton_available
from omnivox.models.kernels.reference import gated_add_reference, layer_norm_reference, rms_norm_rope_reference

__all__ = ["BACKENDS", "resolve_backend", "gated_add_reference", "layer_norm_reference", "rms_norm_rope_reference"]

BACKENDS = TRITON_BACKENDS


def resolve_backend(backend: str, device: torch.device) -> str:
    """``backend`` -> ``"triton"`` or ``"torch"`` for tensors on ``device``; raises ValueError for bad values."""
    # Explicit "triton" is allowed on any device: TRITON_INTERPRET=1 runs the kernels on CPU tensors (tests).
    return _resolve(backend, BACKENDS, "triton", preferred=device.type == "cuda" and triton_available(),
                    possible=triton_available(), requirement="needs the triton package (pip install triton)")
