"""Small layers shared by several model families (norms computed in float32, dtype names).

The released networks run most of their weights in 16-bit but compute every normalisation in float32
and round the result back (spec models.md 3, 11). These helpers make that policy one line at each use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The checkpoint JSONs name dtypes as strings ("dtype": "bfloat16"); this is the only place they are read.
DTYPES_BY_NAME = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_from_name(name: str, argument: str = "dtype") -> torch.dtype:
    """Translate a checkpoint dtype string (``"float32" | "float16" | "bfloat16"``) to a torch dtype.

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    if name not in DTYPES_BY_NAME:
        raise ValueError(f"{argument} must be one of {sorted(DTYPES_BY_NAME)}, got {name!r}")
    return DTYPES_BY_NAME[name]


def layer_norm_fp32(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm over the last dim computed in float32, returned in ``x.dtype``.

    Args:
        x: ``(..., C)`` any float dtype.
        eps: variance epsilon (1e-6 inside blocks, 1e-5 at the ends of networks; spec models.md 11).
        weight, bias: optional ``(C,)`` affine parameters, used in float32.
    """
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), x.shape[-1:], w, b, eps).to(x.dtype)


class LayerNorm32(nn.Module):
    """LayerNorm whose parameters stay float32 and whose arithmetic is float32, whatever ``x.dtype``.

    Keys (when ``affine``): ``weight (C,)``, ``bias (C,)``. Without affine it has no keys.
    """

    def __init__(self, channels: int, eps: float, affine: bool) -> None:
        super().__init__()
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(channels, dtype=torch.float32))
            self.bias = nn.Parameter(torch.zeros(channels, dtype=torch.float32))
        else:
            self.weight = None
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., C), same dtype
        return layer_norm_fp32(x, self.eps, self.weight, self.bias)
