"""Tone mapping and colour encoding: linear HDR radiance -> displayable [0, 1] sRGB values.

The reference (spec training.md 5.3) tone-maps with Narkowicz's fit of the ACES filmic curve and then applies
a plain power 1/2.2, and it linearises base colour textures with a power 2.2.

Decision on that **[quirk]** (the pure power instead of the sRGB transfer function): omnivox uses the exact
piecewise sRGB curves (IEC 61966-2-1) in both directions. Textures are stored sRGB-encoded (glTF), so decoding
and encoding with the same exact pair makes an unlit, untone-mapped colour round-trip to its texel value; the
power-law pair differs from the sRGB curves by up to ~0.03 in the darks (value 0.02 encodes to 0.17 with 1/2.2
and 0.15 with sRGB). ``gamma_encode`` / ``gamma_decode`` give the reference's curves for bit-level comparisons.
"""

from __future__ import annotations

import torch

# Narkowicz 2015 fit of the ACES RRT+ODT, as listed in spec training.md 5.3.
ACES_A, ACES_B, ACES_C, ACES_D, ACES_E = 2.51, 0.03, 2.43, 0.59, 0.14


def aces_filmic(radiance: torch.Tensor) -> torch.Tensor:
    """``x (a x + b) / (x (c x + d) + e)`` clamped to [0, 1]; negative inputs count as black."""
    x = radiance.clamp(min=0)
    return (x * (ACES_A * x + ACES_B) / (x * (ACES_C * x + ACES_D) + ACES_E)).clamp(0, 1)


def srgb_encode(linear: torch.Tensor) -> torch.Tensor:
    """Linear [0, 1] -> sRGB-encoded [0, 1] (the exact piecewise curve; inputs are clamped first)."""
    x = linear.clamp(0, 1)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def srgb_decode(encoded: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded [0, 1] -> linear [0, 1], the inverse of `srgb_encode`."""
    x = encoded.clamp(0, 1)
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def gamma_encode(linear: torch.Tensor, gamma: float = 2.2) -> torch.Tensor:
    """The reference's encoding: ``x ** (1 / gamma)`` on [0, 1]."""
    return linear.clamp(0, 1) ** (1 / gamma)


def gamma_decode(encoded: torch.Tensor, gamma: float = 2.2) -> torch.Tensor:
    """The reference's linearisation of base colour: ``x ** gamma`` on [0, 1]."""
    return encoded.clamp(0, 1) ** gamma


def tonemap(radiance: torch.Tensor, exposure: float = 1.0) -> torch.Tensor:
    """Linear HDR radiance -> display sRGB in [0, 1]: exposure scale, ACES filmic, sRGB encoding."""
    return srgb_encode(aces_filmic(radiance * exposure))


def to_uint8(image: torch.Tensor):
    """[0, 1] float image (any leading shape, channels last) -> numpy uint8 with rounding."""
    return (image.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
