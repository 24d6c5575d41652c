"""SC-VAE loss terms against float64 hand computations, and gradients of the render terms (real meshes)."""

import logging
import math

import numpy as np
import pytest
import torch

from omnivox.train.losses import (
    LPIPS,
    flag_loss,
    gaussian_window,
    kl_divergence,
    load_lpips,
    psnr,
    reconstruction_loss,
    render_loss_maps,
    sample_loss_cameras,
    shape_render_losses,
    ssim,
    subdivision_losses,
    vertex_loss,
)


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ------------------------------------------------------------------------------------------------ KL
def test_kl_matches_closed_form_and_vanishes_at_the_prior():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(37, 8, generator=g)
    logvar = torch.randn(37, 8, generator=g) * 0.7
    m, lv = mean.double().numpy(), logvar.double().numpy()
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2)/2 - 1/2 per element
    expected = np.mean(-0.5 * lv + 0.5 * (np.exp(lv) + m * m) - 0.5)
    assert _rel(kl_divergence(mean, logvar), expected) < 1e-6
    assert float(kl_divergence(torch.zeros(5, 4), torch.zeros(5, 4))) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        kl_divergence(mean, logvar[:3])


# ----------------------------------------------------------------------------------- direct terms
def _bce64(logits, target):
    x, y = logits.double(), target.double()
    p = 1 / (1 + torch.exp(-x))
    return float(-(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean())


def test_direct_terms_match_float64_formulas():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(50, 3, generator=g) * 2
    flags = torch.rand(50, 3, generator=g) > 0.5
    assert _rel(flag_loss(logits, flags), _bce64(logits, flags)) < 1e-6

    pred, target = torch.rand(50, 3, generator=g) * 2 - 0.5, torch.rand(50, 3, generator=g)
    assert _rel(vertex_loss(pred, target), ((pred.double() - target.double()) ** 2).mean()) < 1e-6
    assert _rel(reconstruction_loss(pred, target, "l1"), (pred.double() - target.double()).abs().mean()) < 1e-6
    assert _rel(reconstruction_loss(pred, target, "l2"), ((pred.double() - target.double()) ** 2).mean()) < 1e-6
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        reconstruction_loss(pred, target, "huber")

    levels = [(torch.randn(n, 8, generator=g), torch.rand(n, 8, generator=g) > 0.3) for n in (3, 11)]
    for got, (lg, tg) in zip(subdivision_losses(levels), levels):
        assert _rel(got, _bce64(lg, tg)) < 1e-6
    with pytest.raises(ValueError, match="level 0"):
        subdivision_losses([(torch.zeros(3, 7), torch.zeros(3, 7, dtype=torch.bool))])

    a, b = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    mse = ((a.double() - b.double()) ** 2).mean()
    assert _rel(psnr(a, b), 20 * math.log10(1 / math.sqrt(float(mse)))) < 1e-5


# --------------------------------------------------------------------------------------------- SSIM
def _ssim_direct(a: np.ndarray, b: np.ndarray, size=11, sigma=1.5, c1=0.01 ** 2, c2=0.03 ** 2) -> float:
    """Per pixel, explicit Gaussian-weighted sums over the window (zeros outside the image), float64."""
    r = size // 2
    x = np.arange(size) - r
    g = np.exp(-x * x / (2 * sigma * sigma))
    w = np.outer(g / g.sum(), g / g.sum())
    bsz, ch, h, wd = a.shape
    pad = ((0, 0), (0, 0), (r, r), (r, r))
    ap, bp = np.pad(a, pad), np.pad(b, pad)
    total = 0.0
    for n in range(bsz):
        for c in range(ch):
            for i in range(h):
                for j in range(wd):
                    pa, pb = ap[n, c, i:i + size, j:j + size], bp[n, c, i:i + size, j:j + size]
                    ma, mb = (w * pa).sum(), (w * pb).sum()
                    va = (w * pa * pa).sum() - ma * ma
                    vb = (w * pb * pb).sum() - mb * mb
                    cov = (w * pa * pb).sum() - ma * mb
                    total += ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return total / (bsz * ch * h * wd)


def test_ssim_matches_direct_formula_and_properties():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 13, 15, generator=g)
    b = (a + 0.2 * torch.randn(2, 3, 13, 15, generator=g)).clamp(0, 1)
    expected = _ssim_direct(a.double().numpy(), b.double().numpy())
    assert _rel(ssim(a, b), expected) < 1e-4
    assert _rel(ssim(a.double(), b.double()), expected) < 1e-10
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim(a, b)) == pytest.approx(float(ssim(b, a)), abs=1e-7)
    assert float(gaussian_window(11, 1.5).sum()) == pytest.approx(1.0, abs=1e-6)
    x = a.clone().requires_grad_(True)
    (1 - ssim(x, b)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# -------------------------------------------------------------------------------------------- LPIPS
def _random_lpips_files(tmp_path):
    """VGG16 + linear-head files under the published key names, random values (no download here)."""
    from safetensors.torch import save_file

    torch.manual_seed(4)
    model = LPIPS()
    vgg = {f"features.{k}": v.clone() for k, v in model.features.state_dict().items()}
    lins = {f"lin{i}.model.1.weight": torch.rand_like(lin.weight) for i, lin in enumerate(model.lins)}
    save_file(vgg, str(tmp_path / "vgg16.safetensors"))
    torch.save(lins, tmp_path / "lin.pth")
    return tmp_path / "vgg16.safetensors", tmp_path / "lin.pth", vgg, lins


def test_lpips_loads_local_files_and_is_a_distance(tmp_path, caplog):
    vgg_path, lin_path, vgg, lins = _random_lpips_files(tmp_path)
    model = load_lpips(vgg_path, lin_path)
    assert torch.equal(model.features[0].weight, vgg["features.0.weight"])
    assert torch.equal(model.lins[4].weight, lins["lin4.model.1.weight"])
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1  # small: VGG16 on the CPU
    y = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    assert float(model(x, x)) == 0.0
    assert float(model(x, y)) > 0
    assert float(model(x, y)) == pytest.approx(float(model(y, x)), rel=1e-5)
    xr = x.clone().requires_grad_(True)
    model(xr, y).backward()
    assert torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in model.parameters())

    with caplog.at_level(logging.INFO, logger="omnivox.train.losses"):
        assert load_lpips(None, lin_path) is None
    assert "LPIPS term disabled" in caplog.text
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_lpips(tmp_path / "missing.safetensors", lin_path)
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="lin1.model.1.weight"):
        load_lpips(vgg_path, tmp_path / "short.pth")


# ------------------------------------------------------------------------------------------- cameras
def test_loss_cameras_follow_the_spec_distribution():
    cams = sample_loss_cameras(4000, torch.Generator().manual_seed(6))
    r = cams.radius.double()
    assert torch.allclose(cams.fov.double(), 2 * torch.asin(0.5 / r), atol=1e-5)
    assert bool(((cams.near >= r - 1 - 1e-5) & (cams.near <= r + 1e-5)).all())
    assert torch.allclose(cams.far, cams.near + 2)
    assert float(r.min()) >= 2 - 1e-4 and float(r.max()) <= 100 + 1e-3
    # 1/r^2 uniform on [1/100^2, 1/4]: its mean and quartiles match the uniform's.
    k = (1 / r ** 2).numpy()
    lo, hi = 1e-4, 0.25
    assert abs(k.mean() - (lo + hi) / 2) < 0.01
    assert abs(np.quantile(k, 0.25) - (lo + 0.25 * (hi - lo))) < 0.015
    # Every camera looks at the origin: it maps to (0, 0, r) in camera space.
    origin = cams.extrinsics[:, :3, 3]
    assert torch.allclose(origin[:, :2], torch.zeros_like(origin[:, :2]), atol=1e-4)
    assert torch.allclose(origin[:, 2], cams.radius, rtol=1e-5)
    again = sample_loss_cameras(4000, torch.Generator().manual_seed(6))
    assert torch.equal(again.extrinsics, cams.extrinsics) and torch.equal(again.near, cams.near)


# --------------------------------------------------------------------------------------- render terms
@pytest.fixture(scope="module")
def spot_mesh():
    from pathlib import Path

    from omnivox.assets import load_asset
    from tests.conftest import _assets_dir

    scene = load_asset(Path(_assets_dir()) / "mesh" / "spot" / "spot_triangulated.obj").normalized()
    return torch.from_numpy(scene.vertices).float(), torch.from_numpy(scene.faces).long()


def _near_cameras(n: int, seed: int):
    """Loss cameras drawn close (r in [2, 3]) so the mesh covers many pixels at a small image size."""
    return sample_loss_cameras(n, torch.Generator().manual_seed(seed), radius_range=(2.0, 3.0))


def test_render_maps_follow_the_loss_conventions(spot_mesh):
    vertices, faces = spot_mesh
    cams = _near_cameras(1, 7)
    maps = render_loss_maps(vertices, faces, cams[0], 48)
    covered = maps["mask"] > 0.999
    background = maps["mask"] == 0
    assert covered.sum() > 50 and background.sum() > 50
    # Normals in [0, 1]; mapped back they are unit vectors (antialiasing blends neighbouring faces' normals at
    # triangle edges, which only shortens them); 0.5 (the zero normal) on the background.
    n = maps["normal"][covered] * 2 - 1
    norms = n.norm(dim=-1)
    assert float(norms.max()) < 1 + 1e-4 and float(norms.min()) > 0.5
    assert float((norms > 1 - 1e-4).float().mean()) > 0.1  # pixels away from triangle edges: exactly unit
    assert bool((n[:, 2] >= -1e-4).all())  # pointing away from the camera (spec 2.4): camera-space z >= 0
    assert torch.allclose(maps["normal"][background], torch.full_like(maps["normal"][background], 0.5))
    # Depth is the camera z inside the near/far range, 0 on the background.
    depth = maps["depth"][covered]
    assert bool((depth >= float(cams.near[0]) - 1e-4).all()) and bool((depth <= float(cams.far[0]) + 1e-4).all())
    assert float(maps["depth"][background].abs().max()) == 0.0
    empty = render_loss_maps(vertices, faces[:0], cams[0], 8)
    assert float(empty["mask"].abs().sum()) == 0 and torch.allclose(empty["normal"], torch.full((8, 8, 3), 0.5))


def test_render_losses_vanish_for_the_truth_and_reach_vertex_positions(spot_mesh):
    vertices, faces = spot_mesh
    cams = _near_cameras(2, 8)
    truth = [(vertices, faces), (vertices, faces)]
    total, terms = shape_render_losses(truth, truth, cams, 40, render_loss_maps)
    assert float(total) == pytest.approx(0.0, abs=1e-6)
    assert set(terms) == {"render/mask", "render/depth", "render/normal/l1", "render/normal/ssim"}

    g = torch.Generator().manual_seed(9)
    moved = (vertices * 1.04 + 0.01 * torch.randn(vertices.shape, generator=g)).requires_grad_(True)
    total, terms = shape_render_losses([(moved, faces), (moved, faces)], truth, cams, 40, render_loss_maps)
    assert all(float(v.detach()) > 0 for v in terms.values())
    for name in ("render/mask", "render/depth", "render/normal/l1"):
        moved.grad = None
        terms[name].backward(retain_graph=True)
        assert torch.isfinite(moved.grad).all(), name
        assert float(moved.grad.abs().sum()) > 0, f"{name} does not reach the vertex positions"
    # A small step against the gradient of the whole render loss lowers it (same cameras).
    moved.grad = None
    total.backward()
    with torch.no_grad():
        stepped = moved - 1e-3 * moved.grad / moved.grad.abs().max()
    lower, _ = shape_render_losses([(stepped, faces), (stepped, faces)], truth, cams, 40, render_loss_maps)
    assert float(lower) < float(total.detach())
