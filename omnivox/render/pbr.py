"""Metallic-roughness shading with image-based lighting (split-sum), per pixel from G-buffers.

For a surface point with unit normal ``n`` (facing the viewer), unit direction to the camera ``v``, linear base
colour ``c``, metallic ``m`` and perceptual roughness ``r``::

    F0       = lerp(0.04, c, m)                       # dielectrics reflect 4 % at normal incidence
    diffuse  = c (1 - m) * E(n) / pi                  # Lambert under the irradiance E (SH9)
    specular = L_r(reflect(-v, n), r) * (F0 A + B)    # pre-filtered radiance x split-sum BRDF table (A, B)
    radiance = (diffuse + specular) * ao

This is the model nvdiffrec's ``EnvironmentLight`` uses, which the reference's preview renderer relies on (spec
training.md 5.3), with the same lack of energy compensation: the diffuse term is not reduced by the Fresnel
reflectance, so a white dielectric under a uniform white sky returns ``1 + 0.04 A + B`` times the sky
(slightly above 1), and a white metal returns ``A + B <= 1`` (single-scattering GGX loses the energy of
multiple bounces; ``A + B`` is exactly the directional albedo of the microfacet BRDF, 1 for a mirror).

Alpha: `composite_layers` blends depth-peeled layers front to back with the "over" operator.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from omnivox.render.environment import Environment, sample_brdf_lut

DIELECTRIC_F0 = 0.04


def reflect(incoming: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """Mirror the direction towards the viewer about the normal: ``2 (n.v) n - v``."""
    return 2 * (normals * incoming).sum(-1, keepdim=True) * normals - incoming


def shade_pbr(
    environment: Environment,
    normals: torch.Tensor,
    view_dirs: torch.Tensor,
    base_color: torch.Tensor,
    metallic: torch.Tensor,
    roughness: torch.Tensor,
    occlusion: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Linear HDR radiance (..., 3) leaving each G-buffer sample towards the camera.

    Args:
        environment: the pre-filtered light (world space, Z up).
        normals: (..., 3) unit world normals, oriented towards the camera.
        view_dirs: (..., 3) unit world directions from the surface point to the camera.
        base_color: (..., 3) **linear** base colour in [0, 1] (decode sRGB textures first).
        metallic, roughness: (...,) or (..., 1) in [0, 1]; roughness is perceptual (alpha = roughness^2).
        occlusion: optional (...,) or (..., 1) ambient visibility in [0, 1] multiplying the result.
    """
    if normals.shape[-1] != 3 or view_dirs.shape != normals.shape or base_color.shape != normals.shape:
        raise ValueError(f"shade_pbr: normals, view_dirs and base_color must share a (..., 3) shape, got "
                         f"{tuple(normals.shape)}, {tuple(view_dirs.shape)}, {tuple(base_color.shape)}")
    metallic = _channel(metallic, normals, "metallic")
    roughness = _channel(roughness, normals, "roughness")
    n_dot_v = (normals * view_dirs).sum(-1).clamp(1e-4, 1)
    f0 = DIELECTRIC_F0 + (base_color - DIELECTRIC_F0) * metallic[..., None]
    diffuse = base_color * (1 - metallic[..., None]) * environment.irradiance(normals) / torch.pi
    scale_bias = sample_brdf_lut(environment.brdf_lut, n_dot_v, roughness)
    specular = environment.specular_radiance(reflect(view_dirs, normals), roughness) * (
        f0 * scale_bias[..., :1] + scale_bias[..., 1:])
    radiance = diffuse + specular
    if occlusion is not None:
        radiance = radiance * _channel(occlusion, normals, "occlusion")[..., None]
    return radiance


def _channel(value: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.shape == like.shape[:-1] + (1,):
        value = value[..., 0]
    if value.shape != like.shape[:-1]:
        value = value.expand(like.shape[:-1]) if value.ndim == 0 else value
    if value.shape != like.shape[:-1]:
        raise ValueError(f"shade_pbr: {name} must have shape {tuple(like.shape[:-1])} (or with a trailing 1), "
                         f"got {tuple(value.shape)}")
    return value


def composite_layers(colors: torch.Tensor, alphas: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Front-to-back "over" compositing of depth-peeled layers.

    Args:
        colors: (L, ..., C) straight (not premultiplied) colours, layer 0 nearest the camera.
        alphas: (L, ...) opacities in [0, 1]; empty fragments must have alpha 0.

    Returns:
        ``(color, alpha, weights)``: premultiplied colour (..., C) ``= sum_i w_i c_i`` with
        ``w_i = alpha_i prod_{j<i} (1 - alpha_j)``, total coverage (...) ``= sum_i w_i``, and the weights (L, ...).
        Divide colour by coverage for the straight colour, or add ``(1 - coverage) * background``.
    """
    if colors.shape[:-1] != alphas.shape:
        raise ValueError(f"composite_layers: colors (L, ..., C) and alphas (L, ...) disagree: "
                         f"{tuple(colors.shape)} vs {tuple(alphas.shape)}")
    alphas = alphas.clamp(0, 1)
    transmitted = torch.cumprod(torch.cat([torch.ones_like(alphas[:1]), 1 - alphas[:-1]]), dim=0)
    weights = transmitted * alphas
    return (weights[..., None] * colors).sum(0), weights.sum(0), weights
