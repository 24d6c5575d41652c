"""``nn.Module`` wrappers of the sparse operations, with the parameter names and layouts of the checkpoints
(spec models.md 2.1, 3 and 10): a convolution owns ``weight (Co, 3, 3, 3, Ci)`` and ``bias (Co,)``; norms own
``weight``/``bias``; multi-head RMSNorm owns ``gamma (H, D)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from omnivox._backend import TRITON_BACKENDS as BACKENDS, check_backend
from omnivox.sparse import functional as SF
from omnivox.sparse.attention import multi_head_rms_norm
from omnivox.sparse.tensor import SparseTensor

__all__ = ["SubmanifoldConv3d", "SparseLinear", "SparseLayerNorm32", "SparseGroupNorm32", "SparseSiLU",
           "SparseGELU", "MultiHeadRMSNorm"]


class SubmanifoldConv3d(nn.Module):
    """Submanifold 3x3x3 convolution (`omnivox.sparse.functional.submanifold_conv3d`).

    Args:
        in_channels, out_channels: ``Ci``, ``Co``.
        bias: whether to own a ``(Co,)`` bias.
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, backend: str = "auto") -> None:
        super().__init__()
        self.backend = check_backend(backend, BACKENDS)
        self.weight = nn.Parameter(torch.empty(out_channels, 3, 3, 3, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        # Same fan-in scaling as a dense Conv3d's default initialisation.
        bound = 1.0 / math.sqrt(27 * in_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return SF.submanifold_conv3d(x, self.weight, self.bias, backend=self.backend)


class SparseLinear(nn.Linear):
    """``nn.Linear`` applied to every voxel's features."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(super().forward(x.feats))


class SparseLayerNorm32(nn.LayerNorm):
    """LayerNorm over channels computed in fp32, output in the input dtype (spec models.md 3)."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return SF.layer_norm(x, self.weight, self.bias, self.eps)


class SparseGroupNorm32(nn.GroupNorm):
    """GroupNorm per batch item computed in fp32, output in the input dtype."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return SF.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class SparseSiLU(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return SF.silu(x)


class SparseGELU(nn.Module):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: SparseTensor) -> SparseTensor:
        return SF.gelu(x, self.approximate)


class MultiHeadRMSNorm(nn.Module):
    """RMSNorm per head with a learned ``gamma (H, D)`` (init ones), computed in fp32 (spec models.md 6.3)."""

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return multi_head_rms_norm(x, self.gamma)
