"""Rasterizer: analytic sphere (depth, normals, silhouette), watertightness, depth peeling, near-plane clipping,
UV-space rasterization, and PyTorch vs Triton agreement (Triton interpreter on CPU, CUDA on the device)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from tests.conftest import HANG_GUARD_S

import pytest
import torch

from omnivox.render import look_at, intrinsics_from_fov, orbit_cameras, rasterize, rasterize_uv, render_mesh

ROOT = Path(__file__).resolve().parents[2]


def uv_sphere(radius: float = 0.5, rings: int = 48, segments: int = 96, dtype=torch.float32):
    """Closed latitude-longitude sphere with shared pole vertices (watertight)."""
    theta = torch.linspace(0, math.pi, rings + 1, dtype=torch.float64)[1:-1]
    phi = torch.arange(segments, dtype=torch.float64) * (2 * math.pi / segments)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    ring = torch.stack([torch.sin(t) * torch.cos(p), torch.sin(t) * torch.sin(p), torch.cos(t)], -1).reshape(-1, 3)
    vertices = torch.cat([torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64), ring,
                          torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)]) * radius
    faces = []
    south = 1 + (rings - 1) * segments
    for j in range(segments):
        j1 = (j + 1) % segments
        faces.append([0, 1 + j, 1 + j1])
        faces.append([south, 1 + (rings - 2) * segments + j1, 1 + (rings - 2) * segments + j])
    for i in range(rings - 2):
        for j in range(segments):
            j1 = (j + 1) % segments
            a, b = 1 + i * segments + j, 1 + i * segments + j1
            c, d = a + segments, b + segments
            faces += [[a, c, b], [b, c, d]]
    return vertices.to(dtype), torch.tensor(faces, dtype=torch.int64)


def sphere_hits(extrinsics, intrinsics, resolution, radius, center=(0.0, 0.0, 0.0)):
    """Analytic first and second ray-sphere intersection depths (camera z) per pixel, NaN on misses."""
    height, width = resolution
    k = intrinsics[0].double()
    i, j = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    d = torch.stack([((j + 0.5) / width - k[0, 2]) / k[0, 0], ((i + 0.5) / height - k[1, 2]) / k[1, 1],
                     torch.ones_like(i)], -1)
    e = extrinsics[0].double()
    c = e[:3, :3] @ torch.tensor(center, dtype=torch.float64) + e[:3, 3]
    a = (d * d).sum(-1)
    b = -2 * (d * c).sum(-1)
    cc = (c * c).sum() - radius ** 2
    disc = b * b - 4 * a * cc
    root = torch.sqrt(disc.clamp(min=0))
    t0, t1 = (-b - root) / (2 * a), (-b + root) / (2 * a)
    miss = disc < 0
    return torch.where(miss, torch.nan, t0), torch.where(miss, torch.nan, t1), d


def test_sphere_silhouette_depth_and_normals():
    vertices, faces = uv_sphere(0.5, 64, 128)
    extrinsics, intrinsics = orbit_cameras(1, radius=2.0, fov=math.radians(40), elevation=0.3)
    res = (160, 160)
    out = render_mesh(vertices, faces, extrinsics, intrinsics, res, antialias_edges=False)
    t0, _, rays = sphere_hits(extrinsics, intrinsics, res, 0.5)
    mask = out["mask"][0] > 0
    # Silhouette: pi r'^2 with the projected radius of a sphere at distance D: r' = f r / sqrt(D^2 - r^2) (pixels).
    focal = intrinsics[0, 0, 0].item() * res[1]
    projected = focal * 0.5 / math.sqrt(2.0 ** 2 - 0.25)
    area = math.pi * projected ** 2
    assert abs(mask.sum().item() - area) / area < 0.01
    # Coverage agrees with the analytic silhouette away from its 1-pixel rim (the mesh is inscribed).
    analytic = ~torch.isnan(t0)
    assert (mask & ~analytic).sum() == 0
    interior = analytic & torch.nn.functional.max_pool2d((~analytic).float()[None, None], 5, 1, 2)[0, 0].eq(0)
    assert bool(mask[interior].all())
    # Depth of an inscribed polyhedron lies behind the sphere by at most the sagitta.
    depth = out["depth"][0].double()
    err = (depth - t0)[interior]
    sagitta = 0.5 * (1 - math.cos(math.pi / 64))
    assert float(err.min()) > -1e-5 and float(err.max()) < 4 * sagitta
    # Flat normals are close to the analytic ones, flipped to point away from the camera (spec 2.4).
    point = rays * t0.unsqueeze(-1)
    center = extrinsics[0, :3, 3].double()
    analytic_n = torch.nn.functional.normalize(point - center, dim=-1)
    cos = -(out["normal"][0].double() * analytic_n).sum(-1)[interior]
    assert float(cos.min()) > math.cos(math.radians(4))
    assert float((out["normal"][0][..., 2][mask]).min()) >= -1e-6  # away from the camera: n_z >= 0 (z forward)


def test_position_matches_depth_along_the_ray():
    vertices, faces = uv_sphere(0.4, 16, 32)
    extrinsics, intrinsics = orbit_cameras(2, radius=2.5, fov=math.radians(30))
    out = render_mesh(vertices, faces, extrinsics, intrinsics, (40, 48), antialias_edges=False)
    for b in range(2):
        cam = out["position"][b] @ extrinsics[b, :3, :3].T + extrinsics[b, :3, 3]
        mask = out["triangle_id"][b] >= 0
        assert torch.allclose(cam[..., 2][mask], out["depth"][b][mask], rtol=1e-5, atol=1e-5)


def _grid_plane(n: int, half: float):
    """A planar n x n grid of quads at z = 0, spanning [-half, half]^2, with shuffled triangle order."""
    lin = torch.linspace(-half, half, n + 1, dtype=torch.float64)
    y, x = torch.meshgrid(lin, lin, indexing="ij")
    vertices = torch.stack([x, y, torch.zeros_like(x)], -1).reshape(-1, 3).float()
    idx = torch.arange((n + 1) ** 2).view(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    return vertices, faces[torch.randperm(faces.shape[0], generator=torch.Generator().manual_seed(0))]


def test_watertight_grid_with_edges_through_pixel_centres():
    # An orthographic-like head-on view where grid lines and diagonals pass exactly through pixel centres:
    # every pixel must be covered exactly (no pinholes from edges, no cracks).
    size = 32
    vertices, faces = _grid_plane(16, 1.0)
    extrinsics = look_at(torch.tensor([[0.0, 0.0, -4.0]]), torch.zeros(3), up=(0.0, 1.0, 0.0))
    # Choose the focal length so the plane spans exactly [0.5, size - 0.5] in pixel centres.
    intrinsics = intrinsics_from_fov(1.0)
    intrinsics[0, 0, 0] = intrinsics[0, 1, 1] = 4.0 * (size - 1) / (2 * size)
    fragments = rasterize(vertices, faces, extrinsics, intrinsics, (size, size), backend="torch")
    assert bool(fragments.mask.all())
    assert torch.allclose(fragments.depth, torch.full_like(fragments.depth, 4.0))


def test_closed_mesh_has_no_pinholes_from_random_views():
    vertices, faces = uv_sphere(0.5, 24, 48)
    generator = torch.Generator().manual_seed(3)
    from omnivox.render import random_sphere_cameras

    extrinsics, intrinsics = random_sphere_cameras(6, generator, radius_range=(1.5, 4.0))
    fragments = rasterize(vertices, faces, extrinsics, intrinsics, (96, 96), layers=2, backend="torch")
    mask = fragments.mask[:, 0].float()
    # A pinhole is an uncovered pixel whose 4 neighbours are covered.
    pad = torch.nn.functional.pad(mask, (1, 1, 1, 1))
    neighbours = pad[:, :-2, 1:-1] * pad[:, 2:, 1:-1] * pad[:, 1:-1, :-2] * pad[:, 1:-1, 2:]
    assert int(((mask == 0) & (neighbours == 1)).sum()) == 0
    # A closed surface is hit twice by every ray that hits it (second layer = back side).
    assert torch.equal(fragments.mask[:, 1], fragments.mask[:, 0])


def test_depth_peeling_layers_match_both_sphere_intersections():
    vertices, faces = uv_sphere(0.5, 48, 96)
    extrinsics, intrinsics = orbit_cameras(1, radius=2.0, fov=math.radians(40))
    res = (64, 64)
    fragments = rasterize(vertices, faces, extrinsics, intrinsics, res, layers=3, backend="torch")
    t0, t1, _ = sphere_hits(extrinsics, intrinsics, res, 0.5)
    inner = ~torch.isnan(t0) & (t1 - t0 > 0.5)  # away from grazing rays, where facets deviate most
    assert bool((fragments.mask[0, 1] == fragments.mask[0, 0]).all())
    assert not bool(fragments.mask[0, 2].any())  # a sphere has only two surfaces along any ray
    assert float((fragments.depth[0, 0] - t0)[inner].abs().max()) < 3e-3
    assert float((fragments.depth[0, 1] - t1)[inner].abs().max()) < 3e-3
    assert bool((fragments.depth[0, 1][inner] > fragments.depth[0, 0][inner]).all())


def test_near_plane_cuts_through_the_mesh():
    # The spec's SC-VAE cameras put the near plane inside the object: the interior (back faces) shows.
    vertices, faces = uv_sphere(0.5, 48, 96)
    extrinsics, intrinsics = orbit_cameras(1, radius=2.0, fov=math.radians(40))
    res = (64, 64)
    near = 1.9
    fragments = rasterize(vertices, faces, extrinsics, intrinsics, res, near=near, backend="torch")
    t0, t1, _ = sphere_hits(extrinsics, intrinsics, res, 0.5)
    expected = torch.where(t0 >= near, t0, torch.where(t1 >= near, t1, torch.nan))
    hit = fragments.mask[0, 0]
    sure = ~torch.isnan(expected) & ((t0 - near).abs() > 0.01) & ((t1 - near).abs() > 0.01)
    assert bool(hit[sure].all())
    steep = sure & (t1 - t0 > 0.5)
    assert float((fragments.depth[0, 0] - expected)[steep].abs().max()) < 3e-3
    assert float(fragments.depth[0, 0][hit].min()) >= near


def test_near_and_far_per_camera():
    vertices, faces = uv_sphere(0.5, 24, 48)
    extrinsics, intrinsics = orbit_cameras(3, radius=2.0, fov=math.radians(40))
    near = torch.tensor([0.5, 1.8, 1.6])
    far = torch.tensor([100.0, 3.0, 2.2])
    both = rasterize(vertices, faces, extrinsics, intrinsics, (32, 32), near=near, far=far, backend="torch")
    for b in range(3):
        one = rasterize(vertices, faces, extrinsics[b:b + 1], intrinsics[b:b + 1], (32, 32), near=float(near[b]),
                        far=float(far[b]), backend="torch")
        assert torch.equal(both.triangle_id[b:b + 1], one.triangle_id)
        hit = one.triangle_id >= 0
        assert bool((one.depth[hit] >= near[b]).all()) and bool((one.depth[hit] <= far[b]).all())
    assert not torch.equal(both.triangle_id[1], both.triangle_id[2])
    with pytest.raises(ValueError, match="one value per camera"):
        rasterize(vertices, faces, extrinsics, intrinsics, 8, near=torch.tensor([0.1, 0.2]))


def test_batched_vertices_per_camera():
    vertices, faces = uv_sphere(0.3, 12, 24)
    extrinsics, intrinsics = orbit_cameras(2, radius=2.0)
    moved = torch.stack([vertices, vertices + torch.tensor([0.2, 0.0, 0.0])])
    both = rasterize(moved, faces, extrinsics, intrinsics, (32, 32), backend="torch")
    second = rasterize(moved[1], faces, extrinsics[1:], intrinsics[1:], (32, 32), backend="torch")
    assert torch.equal(both.triangle_id[1:], second.triangle_id)
    assert torch.allclose(both.bary[1:], second.bary)


def test_rasterize_uv_covers_texel_centres_exactly():
    uvs = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    fragments = rasterize_uv(uvs, faces, (16, 32), backend="torch")
    assert fragments.triangle_id.shape == (1, 1, 16, 32)
    mask = fragments.mask[0, 0]
    expected = torch.zeros(16, 32, dtype=torch.bool)
    expected[4:12, 8:24] = True  # texel centres (i + 0.5) / size inside [0.25, 0.75]
    assert torch.equal(mask, expected)
    # Barycentric interpolation of the UVs gives back the texel centres.
    from omnivox.render import interpolate

    uv = interpolate(uvs, faces, fragments)[0, 0]
    i, j = torch.meshgrid(torch.arange(16), torch.arange(32), indexing="ij")
    assert torch.allclose(uv[..., 0][mask], ((j + 0.5) / 32)[mask], atol=1e-6)
    assert torch.allclose(uv[..., 1][mask], ((i + 0.5) / 16)[mask], atol=1e-6)


def test_rasterize_uv_of_a_real_asset(assets):
    # Spot's UV atlas: every covered texel centre lies in the UV triangle that claims it, the barycentrics
    # reproduce the texel centre, and the atlas covers a plausible share of the texture.
    from omnivox.assets import load_asset
    from omnivox.render import interpolate_corners

    scene = load_asset(assets / "mesh/spot/spot_triangulated.obj")
    uvs = torch.from_numpy(scene.uvs[0]).float()  # (F, 3, 2)
    corner_faces = torch.arange(uvs.shape[0] * 3).view(-1, 3)
    size = 64
    fragments = rasterize_uv(uvs.reshape(-1, 2), corner_faces, size, backend="torch")
    mask = fragments.mask[0, 0]
    assert 0.2 < float(mask.float().mean()) < 0.95
    bary = fragments.bary[0, 0][mask]
    assert float(bary.min()) > -1e-5 and torch.allclose(bary.sum(-1), torch.ones(bary.shape[0]), atol=1e-5)
    uv = interpolate_corners(uvs, fragments)[0, 0]
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    assert torch.allclose(uv[..., 0][mask], ((j + 0.5) / size)[mask], atol=1e-5)
    assert torch.allclose(uv[..., 1][mask], ((i + 0.5) / size)[mask], atol=1e-5)


def test_empty_and_offscreen_meshes():
    extrinsics, intrinsics = orbit_cameras(1)
    empty = rasterize(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), extrinsics, intrinsics, 8)
    assert bool((empty.triangle_id == -1).all()) and float(empty.depth.abs().sum()) == 0
    behind = torch.tensor([[0.0, 5.0, 0.0], [0.1, 5.0, 0.0], [0.0, 5.0, 0.1]])  # behind the camera at +y
    frag = rasterize(behind, torch.tensor([[0, 1, 2]]), extrinsics, intrinsics, 8)
    assert bool((frag.triangle_id == -1).all())


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=0), "layers"),
    (dict(near=0.0), "near"),
    (dict(backend="cuda"), "backend"),
    (dict(resolution=(0, 4)), "resolution"),
])
def test_rasterize_rejects_bad_arguments(kwargs, message):
    vertices, faces = uv_sphere(0.3, 4, 8)
    extrinsics, intrinsics = orbit_cameras(1)
    args = dict(resolution=(8, 8))
    args.update(kwargs)
    resolution = args.pop("resolution")
    with pytest.raises(ValueError, match=message):
        rasterize(vertices, faces, extrinsics, intrinsics, resolution, **args)


def test_rasterize_rejects_bad_meshes():
    extrinsics, intrinsics = orbit_cameras(1)
    with pytest.raises(ValueError, match="faces index vertices out of range"):
        rasterize(torch.zeros(3, 3), torch.tensor([[0, 1, 3]]), extrinsics, intrinsics, 8)
    with pytest.raises(ValueError, match="vertices must be"):
        rasterize(torch.zeros(3, 2), torch.tensor([[0, 1, 2]]), extrinsics, intrinsics, 8)
    with pytest.raises(ValueError, match="extrinsics"):
        rasterize(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), extrinsics[0], intrinsics, 8)


_COMPARE_SCRIPT = r"""
import json, math, sys, torch
sys.path.insert(0, sys.argv[1])
from tests.render.test_rasterize import uv_sphere, _grid_plane
from omnivox.render import rasterize, random_sphere_cameras
vertices, faces = uv_sphere(0.5, 10, 20)
plane_v, plane_f = _grid_plane(4, 0.6)
faces = torch.cat([faces, plane_f + vertices.shape[0]]); vertices = torch.cat([vertices, plane_v])
g = torch.Generator().manual_seed(1)
extrinsics, intrinsics = random_sphere_cameras(2, g, radius_range=(1.2, 3.0))
near = torch.tensor([1.0, 0.8])
a = rasterize(vertices, faces, extrinsics, intrinsics, (24, 20), layers=2, near=near, backend="torch")
b = rasterize(vertices, faces, extrinsics, intrinsics, (24, 20), layers=2, near=near, backend="triton")
same = (a.triangle_id == b.triangle_id)
both = (a.triangle_id >= 0) & same
print(json.dumps({"same": same.float().mean().item(), "covered": int((a.triangle_id >= 0).sum()),
                  "bary": (a.bary - b.bary)[both].abs().max().item(),
                  "depth": (a.depth - b.depth)[both].abs().max().item()}))
"""


def test_triton_kernel_matches_torch_in_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", _COMPARE_SCRIPT, str(ROOT)], env=env, capture_output=True,
                            text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["covered"] > 300
    assert stats["same"] > 0.995  # identical except exact ties decided by an ulp
    assert stats["bary"] < 1e-5 and stats["depth"] < 1e-5


@pytest.mark.gpu
def test_render_mesh_on_cuda_matches_cpu_with_gradients():
    vertices, faces = uv_sphere(0.45, 24, 48, dtype=torch.float64)
    generator = torch.Generator().manual_seed(6)
    from omnivox.render import random_sphere_cameras

    extrinsics, intrinsics = random_sphere_cameras(3, generator, radius_range=(1.5, 3.0))
    outputs, grads = [], []
    for device in ("cpu", "cuda"):
        v = vertices.detach().clone().to(device).requires_grad_(True)
        attrs = (vertices * 2).to(device)
        out = render_mesh(v, faces.to(device), extrinsics.to(device), intrinsics.to(device), (48, 40),
                          vertex_attrs=attrs)
        loss = out["mask"].sum() + out["depth"].sum() + (out["normal"] * out["attrs"]).sum()
        loss.backward()
        outputs.append({k: out[k].detach().cpu() for k in ("mask", "depth", "normal", "attrs")})
        grads.append(v.grad.cpu())
    # Exact ties may be decided differently by an ulp (a handful of pixels); everything else agrees closely.
    for key in outputs[0]:
        off = (outputs[0][key] - outputs[1][key]).abs() > 1e-5
        assert float(off.float().mean()) < 2e-3, key
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) < 1e-2


@pytest.mark.gpu
def test_triton_matches_torch_on_cuda():
    vertices, faces = uv_sphere(0.5, 64, 128)
    generator = torch.Generator().manual_seed(5)
    from omnivox.render import random_sphere_cameras

    extrinsics, intrinsics = random_sphere_cameras(4, generator, radius_range=(1.2, 4.0))
    args = (vertices.cuda(), faces.cuda(), extrinsics.cuda(), intrinsics.cuda(), (200, 256))
    near = torch.tensor([1.0, 0.6, 1.3, 0.9])  # per camera, cutting through the sphere for some
    a = rasterize(*args, layers=2, near=near.cuda(), backend="torch")
    b = rasterize(*args, layers=2, near=near.cuda(), backend="triton")
    same = a.triangle_id == b.triangle_id
    assert same.float().mean().item() > 0.999
    both = same & (a.triangle_id >= 0)
    assert (a.bary - b.bary)[both].abs().max().item() < 1e-5
    assert (a.depth - b.depth)[both].abs().max().item() < 1e-5
    cpu = rasterize(vertices, faces, extrinsics, intrinsics, (200, 256), layers=2, near=near, backend="torch")
    assert (cpu.triangle_id == b.triangle_id.cpu()).float().mean().item() > 0.999


def test_every_triton_launcher_has_a_reference():
    """Every Triton launcher has a PyTorch reference with the same name stem (style guide 8.2). (What importing
    the package loads, and that its names resolve: tests/test_import_cost.py.)"""
    from omnivox.render import kernels

    assert "rasterize_keys_reference" in kernels.__all__
    pytest.importorskip("triton")
    from omnivox.render.kernels.triton import raster

    launchers = [name for name in dir(raster) if name.endswith("_triton")]
    assert launchers and all(hasattr(kernels, name[: -len("_triton")] + "_reference") for name in launchers)
