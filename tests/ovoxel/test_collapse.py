"""Decimation in rounds of independent quadric collapses (omnivox.ovoxel.collapse), against float64 references,
the sequential library (fast-simplification) and an independent mesh checker (trimesh)."""

import numpy as np
import pytest
import torch
import trimesh

from omnivox.assets import load_asset
from omnivox.ovoxel import dual_grid_to_mesh, mesh_to_dual_grid, meshops, to_local
from omnivox.ovoxel import collapse
from tests.conftest import _assets_dir


@pytest.fixture(scope="module")
def spot_surface():
    scene = load_asset(_assets_dir() / "mesh" / "spot" / "spot_triangulated.obj").normalized()
    resolution = 64
    coords, dual, flags = mesh_to_dual_grid(scene.vertices, scene.faces, resolution)
    v, f = dual_grid_to_mesh(coords, to_local(coords, dual, 1 / resolution), flags, resolution)
    v, f = meshops.clean(np.asarray(v, np.float32), np.asarray(f, np.int64), 0.0)
    return v, f, resolution


def _edge_face_counts(faces):
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return counts


def test_quadrics_sum_area_weighted_squared_plane_distances():
    rng = np.random.default_rng(7)
    vertices = rng.normal(size=(30, 3))
    faces = np.stack([rng.permutation(30)[:3] for _ in range(60)])
    points = rng.normal(size=(30, 3))
    q = collapse.face_quadrics(torch.from_numpy(vertices), torch.from_numpy(faces))
    got = collapse.quadric_cost(q, torch.from_numpy(points)).numpy()
    expected = np.zeros(30)
    for face in faces:  # float64 reference, one face at a time
        p0, p1, p2 = vertices[face]
        normal = np.cross(p1 - p0, p2 - p0)
        area = np.linalg.norm(normal) / 2
        unit = normal / np.linalg.norm(normal)
        for corner in face:
            expected[corner] += area * float(unit @ (points[corner] - p0)) ** 2
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-12


def test_best_position_keeps_a_corner_and_centres_a_flat_patch():
    # A cube corner's three faces: the quadric's minimum is the corner itself.
    vertices = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2]])
    q = collapse.face_quadrics(vertices, faces)[:1]
    corner = collapse.best_positions(q, torch.tensor([[0.4, 0.3, 0.2]], dtype=torch.float64))
    assert torch.allclose(corner, torch.zeros(1, 3, dtype=torch.float64), atol=1e-3)
    # A flat patch constrains only the height: the solve keeps the midpoint in the plane.
    flat = collapse.face_quadrics(vertices, torch.tensor([[0, 1, 2]]))[:1]
    mid = torch.tensor([[0.25, 0.5, 0.3]], dtype=torch.float64)
    position = collapse.best_positions(flat, mid)
    assert torch.allclose(position[0, :2], mid[0, :2], atol=1e-9) and abs(float(position[0, 2])) < 1e-3


def test_best_positions_solve_the_regularised_systems_like_an_lu_solve():
    # The written-out 3x3 solve against torch.linalg.solve on the same regularised systems, float64; the quadrics
    # of random triangle fans, so some are nearly flat (badly conditioned) and some are corners.
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    vertices = torch.rand(400, 3, generator=gen, dtype=torch.float64)
    faces = torch.stack([torch.randperm(400, generator=gen)[:3] for _ in range(900)])
    per_vertex = collapse.face_quadrics(vertices, faces)
    pick = torch.randint(0, 400, (2, 300), generator=gen)
    q = per_vertex[pick[0]] + per_vertex[pick[1]]  # an edge's quadric, as the rounds form it
    midpoint = torch.rand(300, 3, generator=gen, dtype=torch.float64)
    got = collapse.best_positions(q, midpoint)
    a, b, _ = collapse._unpack(q)
    scale = (a.diagonal(dim1=1, dim2=2).sum(1) / 3).clamp_min(1e-300) * collapse.POSITION_REGULARISATION
    expected = torch.linalg.solve(a + scale.view(-1, 1, 1) * torch.eye(3, dtype=torch.float64),
                                  scale.unsqueeze(1) * midpoint - b)
    assert float((got - expected).norm() / expected.norm()) < 1e-9


def test_rounds_reach_the_target_keep_borders_and_stay_close(spot_surface):
    v, f, resolution = spot_surface
    target = len(f) // 6
    out_v, out_f = collapse.decimate_in_rounds(torch.from_numpy(v), torch.from_numpy(f), target)
    out_v, out_f = out_v.numpy(), out_f.numpy()
    assert len(out_f) <= target
    # One winding, no edge gained a third face, no degenerate face: an independent checker agrees.
    assert meshops.consistently_wound(out_f)
    assert _edge_face_counts(out_f).max() <= _edge_face_counts(f).max()
    mesh = trimesh.Trimesh(out_v, out_f, process=False)
    assert mesh.is_winding_consistent
    assert (mesh.area_faces > 0).all()
    # Open borders stay exactly where they were.
    assert meshops.boundary_edge_count(out_f) == meshops.boundary_edge_count(f)
    border_before = np.unique(v[np.unique(meshops._boundary_half_edges(f)[1])], axis=0)
    border_after = np.unique(out_v[np.unique(meshops._boundary_half_edges(out_f)[1])], axis=0)
    np.testing.assert_array_equal(border_before, border_after)
    # As close to the input as the sequential library at the same face count (99.9 % of two-sided distances).
    seq_v, seq_f = meshops._simplify(v.astype(np.float64), f, len(out_f), True)
    ours = np.quantile(meshops.surface_deviation(v, f, out_v, out_f), 0.999) * resolution
    theirs = np.quantile(meshops.surface_deviation(v, f, seq_v, seq_f), 0.999) * resolution
    assert ours <= max(1.5 * theirs, 0.05), (ours, theirs)
    # Deterministic.
    again_v, again_f = collapse.decimate_in_rounds(torch.from_numpy(v), torch.from_numpy(f), target)
    np.testing.assert_array_equal(again_f.numpy(), out_f)
    np.testing.assert_array_equal(again_v.numpy(), out_v)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="target_faces"):
        collapse.decimate_in_rounds(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), 0)
    with pytest.raises(ValueError, match="expected vertices"):
        collapse.decimate_in_rounds(torch.zeros(3, 2), torch.tensor([[0, 1, 2]]), 1)


@pytest.mark.gpu
def test_gpu_rounds_agree_with_the_cpu(spot_surface):
    v, f, resolution = spot_surface
    target = len(f) // 6
    cpu_v, cpu_f = collapse.decimate_in_rounds(torch.from_numpy(v), torch.from_numpy(f), target)
    gpu_v, gpu_f = collapse.decimate_in_rounds(torch.from_numpy(v).cuda(), torch.from_numpy(f).cuda(), target)
    assert gpu_f.is_cuda and len(gpu_f) <= target
    gpu_v, gpu_f = gpu_v.cpu().numpy(), gpu_f.cpu().numpy()
    assert meshops.consistently_wound(gpu_f)
    cpu_dev = np.quantile(meshops.surface_deviation(v, f, cpu_v.numpy(), cpu_f.numpy()), 0.999)
    gpu_dev = np.quantile(meshops.surface_deviation(v, f, gpu_v, gpu_f), 0.999)
    assert abs(len(gpu_f) - len(cpu_f)) <= 0.02 * len(cpu_f)
    assert gpu_dev * resolution <= max(1.25 * cpu_dev * resolution, 0.05)


@pytest.mark.gpu
def test_prepare_surface_on_cuda_takes_the_gpu_early_step(spot_surface):
    from omnivox.ovoxel.export import prepare_surface

    v, f, _ = spot_surface
    timings = {}
    out_v, out_f, closed, _ = prepare_surface(v, f, decimation_target=len(f) // 8, timings=timings,
                                              tolerance=0.5 / 64, device="cuda")
    assert "early_decimate" in timings and len(out_f) <= len(f) // 8
    assert meshops.consistently_wound(out_f)


def test_gpu_decimation_falls_back_to_the_cpu_library_when_memory_runs_out(spot_surface, monkeypatch, caplog):
    from omnivox.ovoxel import export

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(collapse, "decimate_in_rounds", out_of_memory)
    v, f, _ = spot_surface
    decimate = export._decimate_on_gpu(torch.device("cpu"))  # the device only says where tensors would go
    out_v, out_f = decimate(v, f, len(f) // 4)
    expected_v, expected_f = meshops.decimate(v, f, len(f) // 4, preserve_border=True)
    np.testing.assert_array_equal(out_f, expected_f)
    assert "ran out of GPU memory" in caplog.text
