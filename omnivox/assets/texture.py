"""Texture addressing: the glTF wrap rule and the float bilinear read, for every reader of a `Texture`'s texels.

One vocabulary: `WrapMode` (``REPEAT``, ``CLAMP_TO_EDGE``, ``MIRRORED_REPEAT``, the reference converter's codes).
The renderer's public API also takes the names ``"repeat"``, ``"clamp"`` and ``"mirror"`` (`WRAP_NAMES`);
`wrap_mode` turns either into a `WrapMode`.

Readers: the material voxelizer (`omnivox.ovoxel.materials`, uint8 texels with the reference's truncating
mips, which is why it keeps its own bilinear), the renderer (`omnivox.render.interpolate.sample_texture`) and the
data toolkit's renders (`omnivox.data.render`). Imported on use: torch is not loaded by ``import omnivox.assets``.
"""

from __future__ import annotations

from typing import Union

import torch

from omnivox.assets.scene import WrapMode

WRAP_NAMES = {"repeat": WrapMode.REPEAT, "clamp": WrapMode.CLAMP_TO_EDGE, "mirror": WrapMode.MIRRORED_REPEAT}


def wrap_mode(wrap: Union[str, int]) -> WrapMode:
    """A `WrapMode` from a `WrapMode`/int code or one of the `WRAP_NAMES`; ValueError otherwise."""
    if isinstance(wrap, str):
        if wrap not in WRAP_NAMES:
            raise ValueError(f"wrap must be one of {tuple(WRAP_NAMES)}, got {wrap!r}")
        return WRAP_NAMES[wrap]
    try:
        return WrapMode(int(wrap))
    except (TypeError, ValueError):
        raise ValueError(f"wrap must be one of {tuple(WRAP_NAMES)} or a WrapMode, got {wrap!r}") from None


def wrap_texel_index(index: torch.Tensor, size: Union[int, torch.Tensor], wrap: Union[str, int],
                     power_of_two: bool = False) -> torch.Tensor:
    """The glTF wrap of integer texel indices into ``[0, size)`` (spec ovoxel.md 4.4); ``size`` may be a tensor
    that broadcasts against ``index``.

    ``power_of_two``: every size is a power of two, so the two's-complement ``index & (period - 1)`` equals the
    mathematical modulo and is much cheaper than an integer division.
    """
    mode = wrap_mode(wrap)
    if mode == WrapMode.CLAMP_TO_EDGE:
        low = index.clamp(min=0)
        return torch.minimum(low, size - 1) if isinstance(size, torch.Tensor) else low.clamp(max=size - 1)
    if mode == WrapMode.MIRRORED_REPEAT:  # 0..size-1, size-1..0, ...
        period = index & (2 * size - 1) if power_of_two else torch.remainder(index, 2 * size)
        return torch.where(period < size, period, 2 * size - 1 - period)
    return index & (size - 1) if power_of_two else torch.remainder(index, size)


def bilinear(image: torch.Tensor, position: torch.Tensor, wrap_s: Union[str, int], wrap_t: Union[str, int]
             ) -> torch.Tensor:
    """Bilinear read of an ``(H, W, C)`` float image at image coordinates ``position`` (..., 2) (``(0, 0)`` the
    top-left corner, ``v`` down, texel centres at ``(i + 0.5) / size``), wrapping x by ``wrap_s`` and y by
    ``wrap_t``. Differentiable in the image and the positions."""
    height, width = image.shape[:2]
    x = position[..., 0] * width - 0.5
    y = position[..., 1] * height - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)
    x0, y0 = x0.long(), y0.long()
    xs = (wrap_texel_index(x0, width, wrap_s), wrap_texel_index(x0 + 1, width, wrap_s))
    ys = (wrap_texel_index(y0, height, wrap_t), wrap_texel_index(y0 + 1, height, wrap_t))
    c00, c01 = image[ys[0], xs[0]], image[ys[0], xs[1]]
    c10, c11 = image[ys[1], xs[0]], image[ys[1], xs[1]]
    return (c00 * (1 - fx) + c01 * fx) * (1 - fy) + (c10 * (1 - fx) + c11 * fx) * fy
