"""The GPU exporter's clean-up twins (`omnivox.ovoxel.meshops_torch`) give `meshops`' results exactly, on real
extracted surfaces (with fringes and small components) and on random input. They run here on CPU tensors; the
code is the same on CUDA (`tests/ovoxel/test_collapse.py` runs the exporter's CUDA path)."""

import numpy as np
import pytest
import torch
import trimesh

from omnivox.assets import load_asset
from omnivox.ovoxel import dual_grid_to_mesh, export, mesh_to_dual_grid, meshops, meshops_torch, to_local
from tests.conftest import _assets_dir

ASSETS = ("gltf/Avocado/Avocado.gltf", "gltf/Fox.glb", "mesh/spot/spot_triangulated.obj")


@pytest.fixture(scope="module", params=ASSETS)
def extracted(request):
    """The raw extracted surface of a dev asset at 64^3 (degenerate faces, fringes and specks included)."""
    scene = load_asset(_assets_dir() / request.param).normalized()
    coords, dual, flags = mesh_to_dual_grid(scene.vertices, scene.faces, 64)
    v, f = dual_grid_to_mesh(coords, to_local(coords, dual, 1 / 64), flags, 64)
    return np.asarray(v, np.float32), np.asarray(f, np.int64)


def test_edge_table_and_components_match(extracted):
    v, f = extracted
    table = meshops.edge_table(f)
    ours = meshops_torch.edge_table(torch.from_numpy(f))
    for a, b in zip(ours, table):
        np.testing.assert_array_equal(a.numpy(), b)
    np.testing.assert_array_equal(meshops_torch.face_components(torch.from_numpy(f)).numpy(),
                                  meshops.face_components(f))


def test_clean_and_fringes_match(extracted):
    v, f = extracted
    # What clean removes, added to the real surface: a degenerate face, a duplicate in the other winding, a speck.
    speck = v[:3] + np.float32(1e-3) * np.eye(3, dtype=np.float32)
    v = np.concatenate([v, speck])
    f = np.concatenate([f, [[0, 0, 1]], f[:1, ::-1], [[len(v) - 3, len(v) - 2, len(v) - 1]]])
    expected_v, expected_f = meshops.clean(v, f, 1e-4)
    got_v, got_f = meshops_torch.clean(torch.from_numpy(v), torch.from_numpy(f), 1e-4)
    np.testing.assert_array_equal(got_f.numpy(), expected_f)
    np.testing.assert_array_equal(got_v.numpy(), expected_v)
    assert len(expected_f) <= len(f) - 3  # the three additions went
    width = 1.5 * meshops.median_edge_length(expected_v, expected_f)
    keep = meshops.remove_fringes(expected_v, expected_f, width)
    assert not keep.all()  # these assets have fringes at 64^3
    np.testing.assert_array_equal(meshops_torch.remove_fringes(got_v, got_f, width).numpy(), keep)
    assert meshops_torch.consistently_wound(got_f) == meshops.consistently_wound(expected_f)


def test_exporter_clean_up_on_tensors_equals_the_numpy_steps(extracted):
    v, f = extracted
    edge = meshops.median_edge_length(v, f)
    hole_limit = export.PIN_HOLE_PERIMETER * edge
    expected_v, expected_f = meshops.clean(v, f, 1e-5)
    expected_f = expected_f[export._kept_after_fringes(expected_v, expected_f, edge, hole_limit)]
    got_v, got_f = export._clean_on(torch.device("cpu"), v, f, 1e-5, edge, hole_limit)
    np.testing.assert_array_equal(got_v, expected_v)
    np.testing.assert_array_equal(got_f, expected_f)


def test_components_of_random_graphs_match_union_find():
    rng = np.random.default_rng()
    for nodes, edges in ((1, 0), (50, 10), (400, 380), (2000, 2500)):
        pairs = rng.integers(0, nodes, (edges, 2))
        expected = meshops.connected_components(nodes, pairs)
        t = torch.from_numpy(pairs)
        np.testing.assert_array_equal(meshops_torch.connected_components(nodes, t[:, 0], t[:, 1]).numpy(), expected)


def test_degenerate_duplicate_and_winding_twins_match():
    rng = np.random.default_rng()
    vertices = rng.random((40, 3)).astype(np.float32)
    faces = rng.integers(0, 40, (300, 3))
    faces = np.concatenate([faces, faces[:25, ::-1], faces[5:15], [[1, 1, 2]]])
    expected = meshops.remove_duplicate_faces(meshops.remove_degenerate_faces(vertices, faces))
    got = meshops_torch.drop_degenerate_and_duplicate_faces(torch.from_numpy(vertices), torch.from_numpy(faces))
    np.testing.assert_array_equal(got.numpy(), expected)
    sphere = np.asarray(trimesh.creation.icosphere(2).faces)
    flipped = sphere.copy()
    flipped[7] = flipped[7, ::-1]
    for f in (sphere, flipped):
        assert meshops_torch.consistently_wound(torch.from_numpy(f)) == meshops.consistently_wound(f)
