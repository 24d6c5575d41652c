"""CPU (numba) vs GPU (torch on CUDA) agreement for the O-Voxel geometry core. Runs where CUDA is present.

Needs only numpy and torch (the GPU machine has no trimesh), so the shapes are built here.
"""

import numpy as np
import pytest
import torch

from omnivox.ovoxel import Grid, dual_grid_to_mesh, mesh_to_dual_grid, to_local, triangle_voxel_pairs

pytestmark = pytest.mark.gpu


def torus(major=0.3, minor=0.1, nu=256, nv=128):
    i, j = np.meshgrid(np.arange(nu), np.arange(nv), indexing="ij")
    t, p = i * 2 * np.pi / nu, j * 2 * np.pi / nv
    v = np.stack([(major + minor * np.cos(p)) * np.cos(t), (major + minor * np.cos(p)) * np.sin(t),
                  minor * np.sin(p)], -1).reshape(-1, 3)
    a = i * nv + j
    b = ((i + 1) % nu) * nv + j
    c = ((i + 1) % nu) * nv + (j + 1) % nv
    d = i * nv + (j + 1) % nv
    f = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return v.astype(np.float32), f


def open_sheet():
    v, f = torus(nu=64, nv=32)
    keep = v[f].mean(1)[:, 2] > 0.02  # the upper half: open, with boundaries
    return v, f[keep]


@pytest.mark.parametrize("shape,G", [(torus, 256), (torus, 512), (open_sheet, 128)])
def test_gpu_matches_cpu(shape, G):
    v, f = shape()
    a = mesh_to_dual_grid(v, f, G)
    b = mesh_to_dual_grid(torch.from_numpy(v).cuda(), torch.from_numpy(f).cuda(), G)
    assert b[0].is_cuda
    b = tuple(x.cpu().numpy() for x in b)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])
    err = np.abs(a[1] - b[1]).max(1) * G
    stats = np.quantile(err, [0.5, 0.99, 0.995])
    assert stats[0] < 2e-3 * max(1, G / 256) and stats[1] < 0.02 * max(1, G / 256) and stats[2] < 0.2, stats

    local = to_local(a[0], a[1], 1 / G)
    vc, fc = dual_grid_to_mesh(a[0], local, a[2], G)
    vg, fg = dual_grid_to_mesh(torch.from_numpy(a[0]).cuda(), torch.from_numpy(local).cuda(),
                               torch.from_numpy(a[2]).cuda(), G)
    assert fg.is_cuda and np.allclose(vc, vg.cpu().numpy(), atol=1e-6)
    same = (np.sort(fc, 1) == np.sort(fg.cpu().numpy(), 1)).all(1).mean()
    assert same > 0.999  # diagonal choices may differ on exact cosine ties


def test_gpu_triangle_voxel_pairs_match_cpu():
    v, f = torus(nu=64, nv=32)
    grid = Grid.make(128)
    tris = (v - grid.lo)[f].astype(np.float32)
    ta, ca = triangle_voxel_pairs(tris, grid)
    tb, cb = triangle_voxel_pairs(torch.from_numpy(tris).cuda(), grid)
    assert np.array_equal(ta, tb.cpu().numpy()) and np.array_equal(ca, cb.cpu().numpy())


def _prepared_assets():
    """Normalised real assets as .npz (bench/bench_dual_grid.py prepare), made here from ../shared when missing."""
    from pathlib import Path

    data = Path(__file__).resolve().parents[2] / "bench" / ".data"
    if not (data / "stanford-bunny.npz").exists():
        try:
            from bench.bench_dual_grid import prepare

            prepare(data)
        except (ImportError, FileNotFoundError, OSError) as error:
            pytest.skip(f"no prepared assets in {data} and cannot make them here: {error}")
    return data


@pytest.mark.parametrize("name", ["GlassVaseFlowers", "MetalRoughSpheresNoTextures", "stanford-bunny", "soup"])
def test_gpu_matches_cpu_on_real_assets(name):
    mesh = np.load(_prepared_assets() / f"{name}.npz")
    v, f = mesh["vertices"], mesh["faces"].astype(np.int64)
    a = mesh_to_dual_grid(v, f, 512)
    b = tuple(x.cpu().numpy() for x in mesh_to_dual_grid(torch.from_numpy(v).cuda(), torch.from_numpy(f).cuda(), 512))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])
    err = np.abs(a[1] - b[1]).max(1) * 512
    stats = np.quantile(err, [0.5, 0.99, 0.995])
    assert stats[0] < 4e-3 and stats[1] < 0.04 and stats[2] < 0.2, stats
