"""The numba hash table's edge numbering against a numpy computation of the same thing."""

import numpy as np
import pytest

from omnivox.ovoxel.kernels import hashtable


def _number_edges_numpy(faces, num_vertices):
    a = faces.reshape(-1)
    b = faces[:, [1, 2, 0]].reshape(-1)
    keys = np.minimum(a, b) * num_vertices + np.maximum(a, b)
    unique, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    rank = np.empty(len(unique), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(unique))  # ids in order of first use
    order = np.argsort(first, kind="stable")
    return rank[inverse].reshape(-1, 3), unique[order], counts[order]


@pytest.mark.parametrize("kind", ["closed", "soup", "mixed"])
def test_number_edges_matches_numpy_and_grows_its_table(kind):
    rng = np.random.default_rng()
    if kind == "soup":  # every half-edge its own edge: 3F edges, twice the initial sizing, so the table grows
        faces = np.arange(3 * 4000, dtype=np.int64).reshape(-1, 3)
        num_vertices = 3 * 4000
    else:
        import trimesh

        mesh = trimesh.creation.icosphere(subdivisions=5)
        faces = mesh.faces.astype(np.int64)
        num_vertices = len(mesh.vertices)
        if kind == "mixed":
            faces = faces[rng.random(len(faces)) < 0.6]  # open, with many boundary edges
    faces = faces[rng.permutation(len(faces))]
    edge_of, keys, counts = hashtable.number_edges(faces, num_vertices)
    expected = _number_edges_numpy(faces, num_vertices)
    np.testing.assert_array_equal(edge_of, expected[0])
    np.testing.assert_array_equal(keys, expected[1])
    np.testing.assert_array_equal(counts, expected[2])
    if kind == "closed":
        assert len(keys) == 3 * len(faces) // 2 and (counts == 2).all()
