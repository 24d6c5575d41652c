"""Environment lighting: equirectangular look-ups, SH irradiance, GGX pre-filter, BRDF table, files."""

import math

import numpy as np
import pytest
import torch

from omnivox.render.environment import (
    BUILTIN_ENVIRONMENTS, Environment, compute_brdf_lut, equirect_directions, equirect_solid_angles,
    load_environment_map, prefilter_specular, procedural_environment, project_irradiance_sh, read_radiance_hdr,
    resolve_environment, sample_brdf_lut, sample_equirect, smith_ggx_correlated,
)


def _random_unit(n, generator, dtype=torch.float64):
    d = torch.randn(n, 3, generator=generator, dtype=dtype)
    return d / d.norm(dim=1, keepdim=True)


def test_solid_angles_sum_to_sphere_and_lookups_hit_texels():
    assert abs(float(equirect_solid_angles(16, 32, torch.float64).sum()) - 4 * math.pi) < 1e-12
    g = torch.Generator().manual_seed(1)
    image = torch.rand(8, 16, 3, generator=g, dtype=torch.float64) + 0.1
    dirs = equirect_directions(8, 16, torch.float64)
    torch.testing.assert_close(sample_equirect(image, dirs), image, rtol=1e-9, atol=1e-9)
    # Halfway across the azimuth seam: the mean of the first and last columns.
    theta = (2 + 0.5) * math.pi / 8
    seam = torch.tensor([math.sin(theta) * -1.0, 0.0, math.cos(theta)], dtype=torch.float64)
    torch.testing.assert_close(sample_equirect(image, seam), (image[2, 0] + image[2, -1]) / 2)


def test_irradiance_of_constant_and_linear_maps():
    g = torch.Generator().manual_seed(2)
    a, b = 0.5 + torch.rand(2, generator=g, dtype=torch.float64)
    b = b * 0.5
    dirs = equirect_directions(128, 256, torch.float64)
    constant = torch.full((128, 256, 3), float(a), dtype=torch.float64)
    sh = project_irradiance_sh(constant)
    # Only band 0 survives (up to the texel quadrature of z^2 on a 256 x 128 map, ~1e-5 relative).
    assert float(sh[1:].abs().max()) < 1e-4 * float(sh[0].abs().max())
    normals = _random_unit(50, g)
    env = Environment(constant, [constant, constant], sh, compute_brdf_lut(8, 16))
    torch.testing.assert_close(env.irradiance(normals), torch.full((50, 3), math.pi * float(a), dtype=torch.float64),
                               rtol=1e-4, atol=0)
    # L = a + b z is band-limited to l <= 1, so the SH irradiance is exact: E(n) = pi a + (2 pi / 3) b n_z.
    linear = (a + b * dirs[..., 2:3]).expand(128, 256, 3)
    sh = project_irradiance_sh(linear)
    expected = math.pi * a + 2 * math.pi / 3 * b * normals[:, 2:3]
    relative = (_sh_basis(normals) @ sh - expected).abs() / expected
    assert float(relative.max()) < 1e-4


def _sh_basis(d):
    from omnivox.render.environment import sh9_basis

    return sh9_basis(d)


def test_prefilter_matches_float64_brute_force_with_explicit_half_vectors():
    g = torch.Generator().manual_seed(3)
    radiance = torch.rand(8, 16, 3, generator=g, dtype=torch.float64) * 4
    roughness = 0.7
    out = prefilter_specular(radiance, roughness, out_width=8, source_width=16)
    n = equirect_directions(4, 8, torch.float64).reshape(-1, 3)
    l = equirect_directions(8, 16, torch.float64).reshape(-1, 3)
    omega = equirect_solid_angles(8, 16, torch.float64).reshape(-1)
    h = n[:, None, :] + l[None, :, :]
    h = h / h.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    n_dot_h = (n[:, None, :] * h).sum(-1)
    n_dot_l = (n @ l.T).clamp(min=0)
    alpha2 = roughness ** 4
    d = alpha2 / (math.pi * (n_dot_h ** 2 * (alpha2 - 1) + 1) ** 2)
    w = d * n_dot_l * omega
    expected = (w @ radiance.reshape(-1, 3)) / w.sum(1, keepdim=True)
    torch.testing.assert_close(out.reshape(-1, 3), expected, rtol=1e-9, atol=1e-12)


def test_constant_environment_prefilters_to_itself():
    env = Environment.from_radiance(torch.full((16, 32, 3), 2.5), name="flat", levels=3)
    for level in env.specular:
        torch.testing.assert_close(level, torch.full_like(level, 2.5), rtol=1e-5, atol=0)
    dirs = _random_unit(20, torch.Generator().manual_seed(4), torch.float32)
    rough = torch.rand(20, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(env.specular_radiance(dirs, rough), torch.full((20, 3), 2.5), rtol=1e-5, atol=0)


def _directional_albedo_quadrature(n_dot_v: float, roughness: float, f0: float, steps: int = 400) -> float:
    """Independent float64 midpoint quadrature over half-vector angles of ∫ f cos dl (GGX, correlated Smith)."""
    alpha = roughness * roughness
    theta = (torch.arange(steps, dtype=torch.float64) + 0.5) * (math.pi / 2 / steps)
    phi = (torch.arange(2 * steps, dtype=torch.float64) + 0.5) * (2 * math.pi / (2 * steps))
    theta, phi = torch.meshgrid(theta, phi, indexing="ij")
    h = torch.stack([torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta)], -1)
    v = torch.tensor([math.sqrt(1 - n_dot_v ** 2), 0.0, n_dot_v], dtype=torch.float64)
    v_dot_h = (h @ v).clamp(min=0)
    l_z = 2 * v_dot_h * h[..., 2] - n_dot_v
    d = alpha ** 2 / (math.pi * (h[..., 2] ** 2 * (alpha ** 2 - 1) + 1) ** 2)
    g2 = smith_ggx_correlated(torch.full_like(l_z, n_dot_v), l_z.clamp(min=1e-12), alpha)
    fresnel = f0 + (1 - f0) * (1 - v_dot_h) ** 5
    # dl = 4 (v.h) dh ; f cos = D G F / (4 nv)  ->  integrand D G F (v.h) / nv over dh (= sin theta dtheta dphi)
    integrand = torch.where(l_z > 0, d * g2 * fresnel * v_dot_h / n_dot_v, torch.zeros_like(l_z))
    area = torch.sin(theta) * (math.pi / 2 / steps) * (2 * math.pi / (2 * steps))
    return float((integrand * area).sum())


def test_brdf_lut_against_independent_quadrature_and_energy_bound():
    lut = compute_brdf_lut()
    size = lut.shape[0]
    for i, j in [(size - 1, size // 2), (size // 2, size - 1), (size // 3, size // 4), (size - 1, size - 1)]:
        n_dot_v, roughness = i / (size - 1), j / (size - 1)
        a, b = lut[i, j].double().tolist()
        for f0 in (1.0, 0.04):
            expected = _directional_albedo_quadrature(n_dot_v, roughness, f0)
            assert abs(f0 * a + b - expected) < 0.01 * expected + 2e-3, (n_dot_v, roughness, f0)
    total = lut.sum(-1)
    # Directional albedo of a white (F0 = 1) single-scattering GGX surface: <= 1, exactly 1 for a mirror.
    assert float(total.max()) <= 1.0 + 2e-3
    assert float((total[:, 0] - 1).abs().max()) < 2e-3
    assert float(total[-1, -1]) < 0.7  # rough surfaces lose visible energy to masking
    # Bilinear lookup reproduces grid points.
    nv = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    assert torch.allclose(sample_brdf_lut(lut, *nv)[0], lut[-1, 0])


def test_builtin_environments_and_resolution(tmp_path):
    for name in BUILTIN_ENVIRONMENTS:
        image = procedural_environment(name, 64)
        assert image.shape == (32, 64, 3) and bool(torch.isfinite(image).all()) and float(image.min()) > 0
    sky = procedural_environment("sky", 64)
    assert float(sky[:8].mean()) > float(sky[-8:].mean())  # brighter above than below
    with pytest.raises(ValueError, match="unknown environment 'moon'"):
        procedural_environment("moon")
    with pytest.raises(ValueError, match="neither a built-in"):
        resolve_environment(str(tmp_path / "missing.hdr"))


def _write_hdr(path, rgbe: np.ndarray, run_length: bool):
    h, w, _ = rgbe.shape
    out = bytearray(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {h} +X {w}\n".encode())
    for row in rgbe:
        if not run_length:
            out += row.tobytes()
            continue
        out += bytes([2, 2, w >> 8, w & 255])
        for c in range(4):
            values = row[:, c]
            # first two texels as a run of 2 (run code 130), the rest as literals of <= 128
            out += bytes([130, values[0]]) if values[0] == values[1] else bytes([2, values[0], values[1]])
            rest = values[2:]
            for s in range(0, len(rest), 128):
                chunk = rest[s:s + 128]
                out += bytes([len(chunk)]) + chunk.tobytes()
    path.write_bytes(bytes(out))


@pytest.mark.parametrize("run_length", [False, True])
def test_radiance_hdr_reader(tmp_path, run_length):
    g = np.random.default_rng(7)
    rgbe = g.integers(0, 256, size=(5, 12, 4), dtype=np.uint8)
    rgbe[..., 3] = g.integers(120, 140, size=(5, 12))
    rgbe[0, 0, 3] = 0
    rgbe[1, 0] = rgbe[1, 1]
    path = tmp_path / "env.hdr"
    _write_hdr(path, rgbe, run_length)
    image = read_radiance_hdr(path)
    expected = rgbe[..., :3].astype(np.float64) * np.ldexp(1.0, rgbe[..., 3:].astype(np.int32) - 136)
    expected[0, 0] = 0
    np.testing.assert_allclose(image, expected, rtol=1e-6)
    env = Environment.from_file(path)
    assert env.name == "env" and env.radiance.shape == (5, 12, 3)


def test_environment_file_validation(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, -np.ones((4, 8, 3), np.float32))
    with pytest.raises(ValueError, match="bad.npy: the environment map holds negative radiance"):
        load_environment_map(bad)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.ones((4, 8), np.float32))
    with pytest.raises(ValueError, match=r"flat.npy: an environment map must be \(H, W, 3\)"):
        load_environment_map(flat)
    notes = tmp_path / "notes.hdr"
    notes.write_bytes(b"hello\n\n-Y 1 +X 1\n0000")
    with pytest.raises(ValueError, match="notes.hdr: not a Radiance"):
        load_environment_map(notes)
    truncated = tmp_path / "cut.hdr"
    truncated.write_bytes(b"#?RADIANCE\n\n-Y 4 +X 4\n\x01\x02")
    with pytest.raises(ValueError, match="cut.hdr: pixel data is truncated"):
        load_environment_map(truncated)
    with pytest.raises(ValueError, match="unsupported environment map type '.txt'"):
        (tmp_path / "a.txt").write_text("x")
        load_environment_map(tmp_path / "a.txt")
