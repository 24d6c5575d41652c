"""PBR shading from G-buffers: a sphere under a constant environment, layer compositing, SSAO."""

import math

import pytest
import torch

from omnivox.render.environment import Environment, compute_brdf_lut, project_irradiance_sh, sample_brdf_lut
from omnivox.render.pbr import composite_layers, reflect, shade_pbr
from omnivox.render.ssao import ambient_visibility


def _constant_environment(value: float) -> Environment:
    radiance = torch.full((32, 64, 3), value)
    return Environment(radiance, [radiance, radiance[::2, ::2].contiguous(), radiance[::4, ::4].contiguous()],
                       project_irradiance_sh(radiance), compute_brdf_lut())


def _sphere_gbuffer(size=48, radius=0.6, distance=2.5):
    """Analytic G-buffer of a sphere at the origin seen by a pinhole camera on the -y axis (Z up)."""
    fov = math.radians(40)
    focal = 0.5 / math.tan(fov / 2)
    j, i = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="xy")
    x_cam = ((j + 0.5) / size - 0.5) / focal
    y_cam = ((i + 0.5) / size - 0.5) / focal
    # camera axes in world: right = +x, down = -z, forward = +y
    rays = torch.stack([x_cam, torch.ones_like(x_cam), -y_cam], -1)
    rays = rays / rays.norm(dim=-1, keepdim=True)
    eye = torch.tensor([0.0, -distance, 0.0], dtype=torch.float64)
    b = (rays * eye).sum(-1)
    disc = b * b - (eye @ eye - radius * radius)
    mask = disc > 0
    t = -b - torch.sqrt(disc.clamp(min=0))
    points = eye + t[..., None] * rays
    normals = points / radius
    view = -rays
    return mask, normals, view


@pytest.mark.parametrize("roughness", [0.0, 0.45, 1.0])
def test_white_metal_sphere_under_constant_environment(roughness):
    light = 1.7
    env = _constant_environment(light)
    mask, normals, view = _sphere_gbuffer()
    n, v = normals[mask].float(), view[mask].float()
    ones = torch.ones_like(n)
    out = shade_pbr(env, n, v, ones, torch.ones(len(n)), torch.full((len(n),), roughness))
    # F0 = 1: the pre-filtered radiance is exactly `light`; the result is light x (A + B), the directional
    # albedo of the microfacet BRDF, which is <= 1 (equal to 1 for a mirror) -- the split-sum's energy bound.
    n_dot_v = (n * v).sum(-1).clamp(1e-4, 1)
    albedo = sample_brdf_lut(env.brdf_lut, n_dot_v, torch.full_like(n_dot_v, roughness)).sum(-1)
    torch.testing.assert_close(out, light * albedo[:, None].expand(-1, 3), rtol=1e-5, atol=1e-6)
    assert float(out.max()) <= light * (1 + 2e-3)
    if roughness == 0:
        assert float((out - light).abs().max()) < 2e-3 * light
    else:
        assert float(out.min()) < light * 0.999  # rough metal loses energy at grazing angles


def test_white_lambertian_sphere_under_constant_environment():
    light = 0.8
    env = _constant_environment(light)
    mask, normals, view = _sphere_gbuffer()
    n, v = normals[mask].float(), view[mask].float()
    out = shade_pbr(env, n, v, torch.ones_like(n), torch.zeros(len(n)), torch.ones(len(n)))
    # Diffuse: albedo x irradiance / pi = light exactly; plus the dielectric specular light (0.04 A + B).
    ab = sample_brdf_lut(env.brdf_lut, (n * v).sum(-1).clamp(1e-4, 1), torch.ones(len(n)))
    expected = light * (1 + 0.04 * ab[:, 0] + ab[:, 1])
    torch.testing.assert_close(out, expected[:, None].expand(-1, 3), rtol=1e-3, atol=1e-6)  # 32x64 map quadrature
    # and with the specular part taken out by hand, the diffuse term alone equals the light (SH is exact here)
    diffuse = out - light * (0.04 * ab[:, :1] + ab[:, 1:])
    assert float((diffuse - light).abs().max()) < 1e-3 * light


def test_coloured_shading_scales_with_base_colour_and_occlusion():
    env = _constant_environment(1.0)
    g = torch.Generator().manual_seed(11)
    n = torch.nn.functional.normalize(torch.randn(64, 3, generator=g), dim=-1)
    v = n.clone()
    colour = torch.rand(64, 3, generator=g) * 0.9 + 0.05
    dielectric = shade_pbr(env, n, v, colour, torch.zeros(64), torch.full((64,), 0.5))
    occluded = shade_pbr(env, n, v, colour, torch.zeros(64), torch.full((64,), 0.5), occlusion=torch.full((64,), 0.25))
    torch.testing.assert_close(occluded, dielectric * 0.25)
    # metal tints its reflection by the base colour: red metal reflects red
    red = torch.tensor([0.9, 0.1, 0.1]).expand(64, 3)
    metal = shade_pbr(env, n, v, red, torch.ones(64), torch.zeros(64))
    torch.testing.assert_close(metal, red, rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="metallic must have shape"):
        shade_pbr(env, n, v, colour, torch.zeros(3), torch.zeros(64))


def test_reflect():
    n = torch.tensor([0.0, 0.0, 1.0])
    v = torch.tensor([0.6, 0.0, 0.8])
    torch.testing.assert_close(reflect(v, n), torch.tensor([-0.6, 0.0, 0.8]))


def test_composite_two_layers_by_hand():
    g = torch.Generator().manual_seed(5)
    front, back = torch.rand(2, 3, generator=g, dtype=torch.float64)
    a_front, a_back = 0.3, 0.8
    colors = torch.stack([front, back])[:, None, :]  # (L=2, 1 pixel, 3)
    alphas = torch.tensor([[a_front], [a_back]], dtype=torch.float64)
    color, coverage, weights = composite_layers(colors, alphas)
    torch.testing.assert_close(color[0], a_front * front + (1 - a_front) * a_back * back)
    assert abs(float(coverage[0]) - (a_front + (1 - a_front) * a_back)) < 1e-12
    torch.testing.assert_close(weights[:, 0], torch.tensor([0.3, 0.56], dtype=torch.float64))
    # an opaque front layer hides everything behind it; an empty front layer (alpha 0) shows the back
    opaque, cov, _ = composite_layers(colors, torch.tensor([[1.0], [0.8]], dtype=torch.float64))
    torch.testing.assert_close(opaque[0], front)
    empty, cov, _ = composite_layers(colors, torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    torch.testing.assert_close(empty[0], back)


def _plane_buffers(size, fold: bool):
    """Camera-space positions / normals of a plane at z = 2 facing the camera, or a V-shaped fold into it."""
    focal = 1.0
    j, i = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="xy")
    x = ((j + 0.5) / size - 0.5) / focal
    y = ((i + 0.5) / size - 0.5) / focal
    if not fold:
        z = torch.full_like(x, 2.0)
        normals = torch.tensor([0.0, 0.0, -1.0]).expand(size, size, 3)
    else:
        # z = 2 - |X|: a valley whose crease (farthest from the camera) runs down the middle column
        z = 2.0 / (1 + x.abs())
        sign = torch.sign(x)
        normals = torch.nn.functional.normalize(torch.stack([-sign, torch.zeros_like(x), -torch.ones_like(x)], -1), dim=-1)
    positions = torch.stack([x * z, y * z, z], -1)
    intrinsics = torch.tensor([[focal, 0, 0.5], [0, focal, 0.5], [0, 0, 1.0]])
    return positions, normals.contiguous(), torch.ones(size, size, dtype=torch.bool), intrinsics


def test_ssao_open_plane_versus_crease():
    positions, normals, mask, k = _plane_buffers(64, fold=False)
    flat = ambient_visibility(positions, normals, mask, k, radius=0.2, samples=32)
    assert float(flat.min()) > 0.95
    positions, normals, mask, k = _plane_buffers(64, fold=True)
    crease = ambient_visibility(positions, normals, mask, k, radius=0.2, samples=32)
    assert float(crease[:, 31:33].mean()) < 0.8  # the fold is occluded along its crease
    assert float(crease[:, :4].mean()) > float(crease[:, 31:33].mean()) + 0.15
    empty = ambient_visibility(positions, normals, torch.zeros_like(mask), k)
    assert bool((empty == 1).all())
