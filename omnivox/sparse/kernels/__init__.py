"""Backend dispatch and autograd glue for the sparse kernels (internal; the public API is
`omnivox.sparse.functional`).

Backends: ``"torch"`` runs `kernels.reference` (any device), ``"triton"`` runs `kernels.triton` (CUDA only),
``"auto"`` picks Triton for CUDA tensors when Triton imports and the dtype is supported, else torch.
Triton is imported only when a Triton backend is actually used. The rule and the Triton probe are
`omnivox._backend`'s, shared by every package with kernels.
"""

from __future__ import annotations

import torch

from omnivox._backend import TRITON_BACKENDS, resolve_backend as _resolve, triton_available
from omnivox.sparse.kernels.reference import (
    neighbor_map_reference,
    submanifold_conv3d_backward_reference,
    submanifold_conv3d_reference,
)

__all__ = [
    "BACKENDS",
    "resolve_backend",
    "neighbor_map_reference",
    "submanifold_conv3d_reference",
    "submanifold_conv3d_backward_reference",
    "SubmanifoldConv3dFunction",
]

BACKENDS = TRITON_BACKENDS
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Turn ``backend`` into ``"triton"`` or ``"torch"`` for tensors on ``device`` with ``dtype``.

    Raises:
        ValueError: unknown backend, or ``"triton"`` requested where it cannot run.
    """
    usable = device.type == "cuda" and dtype in TRITON_DTYPES
    requirement = (f"needs CUDA tensors of dtype {TRITON_DTYPES}, got {device} {dtype}" if not usable
                   else "needs the triton package (pip install triton)")
    runs = usable and triton_available()
    return _resolve(backend, BACKENDS, "triton", preferred=runs, possible=runs, requirement=requirement)


def conv_forward(feats, neighbor_map, weight, bias, backend: str):
    """Forward submanifold conv with ``weight (Co, 27, Ci)`` on an already resolved backend."""
    if backend == "triton":
        from omnivox.sparse.kernels.triton.submconv import submanifold_conv3d_triton
        return submanifold_conv3d_triton(feats, neighbor_map, weight, bias)
    return submanifold_conv3d_reference(feats, neighbor_map.table, weight, bias)


def conv_backward(grad_out, feats, neighbor_map, weight, needs_input_grad, needs_weight_grad, bias_dtype,
                  backend: str):
    """Input, weight and bias gradients of `conv_forward` on an already resolved backend.

    ``bias_dtype`` None: no bias gradient. Triton sums it inside the weight-gradient kernel (no extra pass over
    ``grad_out``) and writes the weight gradient in its final dtype and layout; torch sums it in fp32 (fp64 for
    fp64 inputs).

    Returns:
        ``(grad_feats, grad_weight, grad_bias)``, each None where not asked for.
    """
    if backend == "triton":
        from omnivox.sparse.kernels.triton.submconv import submanifold_conv3d_gradients_triton
        return submanifold_conv3d_gradients_triton(grad_out, feats, neighbor_map, weight, needs_input_grad,
                                                   needs_weight_grad, bias_dtype)
    grad_in, grad_w = submanifold_conv3d_backward_reference(grad_out, feats, neighbor_map.table, weight,
                                                            needs_input_grad, needs_weight_grad)
    grad_b = None
    if bias_dtype is not None:
        acc = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
        grad_b = grad_out.sum(0, dtype=acc).to(bias_dtype)
    return grad_in, grad_w, grad_b


class SubmanifoldConv3dFunction(torch.autograd.Function):
    """Autograd wrapper: ``out = conv(feats, weight, bias)`` on a fixed neighbour map and backend.

    Inputs: ``feats (N, Ci)``, ``weight (Co, 27, Ci)``, ``bias (Co,)`` or None, a `NeighborMap`, and a
    resolved backend name. The backward pass uses the same backend as the forward pass.
    """

    @staticmethod
    def forward(ctx, feats, weight, bias, neighbor_map, backend):
        ctx.save_for_backward(feats, weight)
        ctx.neighbor_map = neighbor_map
        ctx.backend = backend
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return conv_forward(feats, neighbor_map, weight, bias, backend)

    @staticmethod
    def backward(ctx, grad_out):
        feats, weight = ctx.saved_tensors
        need_in, need_w, need_b = ctx.needs_input_grad[:3]
        bias_dtype = ctx.bias_dtype if need_b else None
        grad_in, grad_w, grad_b = conv_backward(grad_out, feats, ctx.neighbor_map, weight, need_in, need_w,
                                                bias_dtype, ctx.backend)
        return grad_in, grad_w, grad_b, None, None
