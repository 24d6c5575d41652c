"""Mesh clean-up for the GLB exporter: components, duplicates, orientation, hole filling, decimation."""

import numpy as np
import pytest
import trimesh

from omnivox.ovoxel import meshops


def _sphere(radius=0.3, subdivisions=3, centre=(0.0, 0.0, 0.0)):
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return mesh.vertices + np.asarray(centre), mesh.faces.astype(np.int64)


def _scramble_winding(faces, seed):
    rng = np.random.default_rng(seed)
    flip = rng.random(len(faces)) < 0.5
    out = faces.copy()
    out[flip] = out[flip][:, [0, 2, 1]]
    return out


def _is_consistent(faces):
    """Every manifold edge is traversed once in each direction."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    _, counts = np.unique(directed, axis=0, return_counts=True)
    return counts.max() == 1


def test_connected_components_labels_groups():
    labels = meshops.connected_components(6, np.array([[0, 1], [1, 2], [4, 5]]))
    assert labels[0] == labels[1] == labels[2]
    assert labels[4] == labels[5]
    assert len({labels[0], labels[3], labels[4]}) == 3


def test_duplicate_faces_with_either_winding_are_removed():
    faces = np.array([[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 3]])
    assert meshops.remove_duplicate_faces(faces).tolist() == [[0, 1, 2], [0, 2, 3]]


def test_degenerate_faces_are_removed():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 0, 1], [0, 1, 3]])  # repeated index; collinear
    assert meshops.remove_degenerate_faces(vertices, faces).tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("seed", [0, 1])
def test_orientation_makes_closed_parts_outward(seed):
    va, fa = _sphere(0.2, centre=(-0.25, 0, 0))
    vb, fb = _sphere(0.1, centre=(0.25, 0, 0))
    vertices = np.concatenate([va, vb])
    faces = _scramble_winding(np.concatenate([fa, fb + len(va)]), seed)
    oriented, closed = meshops.orient_faces(vertices, faces)
    assert closed.all()
    assert _is_consistent(oriented)
    expected = 4 / 3 * np.pi * (0.2 ** 3 + 0.1 ** 3)
    assert meshops.signed_volume(vertices, oriented) == pytest.approx(expected, rel=0.05)
    # Each part on its own is outward, not just the sum.
    assert meshops.signed_volume(vertices, oriented[: len(fa)]) > 0
    assert meshops.signed_volume(vertices, oriented[len(fa):]) > 0


def test_orientation_of_open_part_is_consistent_and_reported_open():
    vertices, faces = _sphere(0.3)
    centroids = vertices[faces].mean(axis=1)
    cup = _scramble_winding(faces[centroids[:, 2] < 0.1], 3)  # a sphere with its cap cut off
    oriented, closed = meshops.orient_faces(vertices, cup)
    assert not closed.any()
    assert _is_consistent(oriented)
    # Nearly closed: the centroid rule points the normals away from the centre.
    normals = np.cross(vertices[oriented[:, 1]] - vertices[oriented[:, 0]],
                       vertices[oriented[:, 2]] - vertices[oriented[:, 0]])
    assert (np.einsum("ij,ij->i", normals, vertices[oriented].mean(axis=1)) > 0).all()


def test_fill_small_holes_closes_pin_holes_with_neighbour_winding():
    vertices, faces = _sphere(0.3, subdivisions=3)
    holed = np.delete(faces, [5, 100], axis=0)  # two separate one-triangle holes
    assert meshops.boundary_edge_count(holed) == 6
    new_vertices, filled = meshops.fill_small_holes(vertices, holed, max_perimeter=0.5)
    assert meshops.boundary_edge_count(filled) == 0
    assert len(new_vertices) == len(vertices) + 2
    assert _is_consistent(filled)  # the patch continues the (outward) winding of its neighbours
    assert meshops.signed_volume(new_vertices, filled) > 0


def test_fill_small_holes_leaves_large_openings():
    vertices, faces = _sphere(0.3, subdivisions=3)
    centroids = vertices[faces].mean(axis=1)
    cup = faces[centroids[:, 2] < 0.2]
    before = meshops.boundary_edge_count(cup)
    _, filled = meshops.fill_small_holes(vertices, cup, max_perimeter=3e-2)
    assert before > 0 and meshops.boundary_edge_count(filled) == before


def test_small_components_are_removed():
    vertices, faces = _sphere(0.3)
    speck = np.array([[0.4, 0.4, 0.4], [0.401, 0.4, 0.4], [0.4, 0.401, 0.4]])
    all_vertices = np.concatenate([vertices, speck])
    all_faces = np.concatenate([faces, [[len(vertices), len(vertices) + 1, len(vertices) + 2]]])
    kept = meshops.remove_small_components(all_vertices, all_faces, min_area=1e-5)
    assert len(kept) == len(faces) and kept.max() < len(vertices)


def test_decimate_reaches_target_and_keeps_shape():
    vertices, faces = _sphere(0.3, subdivisions=5)
    out_vertices, out_faces = meshops.decimate(vertices, faces, 2000)
    assert len(out_faces) <= 2000
    assert meshops.signed_volume(out_vertices, out_faces) == pytest.approx(
        meshops.signed_volume(vertices, faces), rel=0.03)
    radius = np.linalg.norm(out_vertices, axis=1)
    assert np.abs(radius - 0.3).max() < 0.01


def test_decimate_in_component_batches_keeps_every_part(monkeypatch):
    import fast_simplification

    calls = []
    simplify = fast_simplification.simplify
    monkeypatch.setattr(fast_simplification, "simplify", lambda p, t, **kw: calls.append(len(t)) or simplify(p, t, **kw))
    rng = np.random.default_rng()
    centres = np.arange(5)[:, None] * [0.4, 0.0, 0.0] + rng.uniform(-0.05, 0.05, (5, 3))  # apart: 0.3 > 2 radii
    parts = [_sphere(r, 4, centre) for r, centre in zip(rng.uniform(0.05, 0.12, 5), centres)]
    vertices = np.concatenate([v for v, _ in parts])
    offsets = np.cumsum([0] + [len(v) for v, _ in parts[:-1]])
    faces = np.concatenate([f + o for (_, f), o in zip(parts, offsets)])
    # Batches of about two spheres (5120 faces each): three calls to the library instead of one.
    out_vertices, out_faces = meshops.decimate(vertices, faces, 5000, batch_faces=10_000)
    assert calls == [10240, 10240, 5120]
    assert 4500 <= len(out_faces) <= 5000
    labels = meshops.face_components(out_faces)
    assert labels.max() + 1 == 5
    for radius, centre in ((np.linalg.norm(v - v.mean(0), axis=1).mean(), v.mean(0)) for v, _ in parts):
        near = np.linalg.norm(out_vertices - centre, axis=1)
        mine = near < radius * 1.5
        assert np.abs(near[mine] - radius).max() < 0.05 * radius  # each sphere is still a sphere of its radius
    assert abs(meshops.signed_volume(out_vertices, out_faces) / meshops.signed_volume(vertices, faces) - 1) < 0.03


@pytest.mark.skipif(not meshops.fork_available(), reason="needs fork")
def test_decimate_in_a_child_process_equals_in_process(monkeypatch):
    vertices, faces = _sphere(0.3, subdivisions=5)
    faces = faces[np.random.default_rng().permutation(len(faces))]
    in_process = meshops.decimate(vertices, faces, 3000)
    forks = []
    real = meshops.call_in_fork
    monkeypatch.setattr(meshops, "call_in_fork", lambda fn, args: forks.append(len(args[1])) or real(fn, args))
    in_child = meshops.decimate(vertices, faces, 3000, fork_faces=1000)
    assert forks == [len(faces)]
    np.testing.assert_array_equal(in_child[1], in_process[1])
    np.testing.assert_array_equal(in_child[0], in_process[0])


@pytest.mark.parametrize("bad", [dict(target_faces=0), dict(target_faces=2.5), dict(batch_faces=-1),
                                 dict(fork_faces=True)])
def test_decimate_rejects_bad_sizes(bad):
    vertices, faces = _sphere(0.3)
    args = dict(target_faces=100, **bad) if "target_faces" not in bad else bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        meshops.decimate(vertices, faces, **args)


def test_clean_compacts_vertices():
    vertices, faces = _sphere(0.3)
    extra = np.concatenate([vertices, [[9.0, 9.0, 9.0]]])  # an unused vertex
    out_vertices, out_faces = meshops.clean(extra, np.concatenate([faces, faces[:3]]), 1e-5)
    assert len(out_vertices) == len(vertices) and len(out_faces) == len(faces)


# ------------------------------------------------------------------------------ faces the surface needs
def _independent_deviation(reference: trimesh.Trimesh, other: trimesh.Trimesh, count: int = 4000) -> np.ndarray:
    """Two-sided point-to-surface distances measured by trimesh (not omnivox's metric)."""
    a, _ = trimesh.sample.sample_surface(reference, count, seed=1)
    b, _ = trimesh.sample.sample_surface(other, count, seed=2)
    return np.concatenate([trimesh.proximity.closest_point(other, a)[1],
                           trimesh.proximity.closest_point(reference, b)[1]])


def test_decimate_within_collapses_a_flat_sheet_to_a_few_faces():
    plane = trimesh.Trimesh(*trimesh.remesh.subdivide_to_size(np.asarray([[0, 0, 0], [1, 0, 0], [1, 1, 0],
                                                                          [0, 1, 0]], float),
                                                              np.array([[0, 1, 2], [0, 2, 3]]), 0.02))
    assert len(plane.faces) > 4000
    v, f = meshops.decimate_within(np.asarray(plane.vertices, np.float32), np.asarray(plane.faces), 1e-4)
    boundary_edges = len(trimesh.grouping.group_rows(np.sort(plane.edges, 1), require_count=1))
    # A flat square needs little more than its (kept) outline: far fewer than the input's faces.
    assert len(f) <= 2 * boundary_edges + 64 < len(plane.faces) // 8, (len(f), boundary_edges)
    assert _independent_deviation(plane, trimesh.Trimesh(v, f)).max() < 1e-3


@pytest.mark.parametrize("tolerance", [2e-3, 1e-2])
def test_decimate_within_keeps_a_curved_surface_within_tolerance(tolerance):
    sphere = trimesh.creation.icosphere(subdivisions=5)  # 20,480 faces, radius 1
    v, f = meshops.decimate_within(np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces), tolerance)
    assert 64 < len(f) < len(sphere.faces) // 2
    deviation = _independent_deviation(sphere, trimesh.Trimesh(v, f))
    assert np.quantile(deviation, 0.999) <= 1.2 * tolerance  # the bound it promises, up to sampling noise
    # A tolerance 5x smaller keeps more faces: the count follows the surface's need.
    _, tighter = meshops.decimate_within(np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces),
                                         tolerance / 5)
    assert len(tighter) > len(f)


def test_decimate_within_rejects_bad_tolerances_and_leaves_small_meshes():
    box = trimesh.creation.box()
    with pytest.raises(ValueError, match="tolerance"):
        meshops.decimate_within(box.vertices, box.faces, -1.0)
    v, f = meshops.decimate_within(box.vertices, box.faces, 0.1)
    assert f is box.faces or np.array_equal(f, box.faces)


@pytest.mark.skipif(not meshops.fork_available(), reason="needs fork")
def test_decimate_in_blocks_on_several_cores_keeps_the_surface_whole(assets, monkeypatch):
    """A real extracted surface decimated in spatial blocks (`_decimate_in_blocks`): the seams between blocks are
    welded (no new open edges), the target is met and the surface stays as close as the serial decimation's."""
    from omnivox.assets import load_asset
    from omnivox.ovoxel import Grid, dual_grid_to_mesh, mesh_to_dual_grid, to_local

    scene = load_asset(assets / "mesh/spot/spot_triangulated.obj").normalized()
    resolution = 128
    coords, dual, flags = mesh_to_dual_grid(scene.vertices, scene.faces, resolution)
    vertices, faces = meshops.clean(*dual_grid_to_mesh(coords, to_local(coords, dual, Grid.make(resolution).voxel_size),
                                                       flags, resolution), 1e-5)
    target = len(faces) // 6
    serial = meshops.decimate(vertices, faces, target)

    blocks = []
    real = meshops._decimate_in_blocks
    monkeypatch.setattr(meshops, "_decimate_in_blocks", lambda *a: blocks.append(a[3]) or real(*a))
    monkeypatch.setattr(meshops, "decimation_workers", lambda: 5)
    monkeypatch.setattr(meshops, "PARALLEL_DECIMATION_FACES", len(faces) // 2)
    parallel = meshops.decimate(vertices, faces, target)
    assert blocks == [5]
    assert target * 0.9 <= len(parallel[1]) <= target
    # Seams welded: no open edges beyond the input's own few (pin-holes of the extraction, kept by the library).
    assert meshops.boundary_edge_count(parallel[1]) <= meshops.boundary_edge_count(faces) < 200
    voxel = 1.0 / resolution
    deviation = np.quantile(meshops.surface_deviation(vertices, faces, *parallel), 0.999)
    serial_deviation = np.quantile(meshops.surface_deviation(vertices, faces, *serial), 0.999)
    assert deviation < max(1.5 * serial_deviation, 0.25 * voxel)


@pytest.mark.skipif(not meshops.fork_available(), reason="needs fork")
def test_map_in_forks_keeps_job_order_and_redoes_a_crashed_job():
    import os

    from omnivox.ovoxel.forked import map_in_forks

    parent = os.getpid()

    def square_or_crash(x):
        if x == 3 and os.getpid() != parent:
            os._exit(1)  # a child that dies without an answer
        return x * x

    assert map_in_forks(square_or_crash, [(k,) for k in range(7)], workers=3) == [k * k for k in range(7)]


def test_consistently_wound_sees_one_flipped_face():
    vertices, faces = _sphere(0.3, subdivisions=3)
    assert meshops.consistently_wound(faces)
    assert meshops.consistently_wound(faces[:, ::-1])  # all inward is still one winding
    flipped = faces.copy()
    k = np.random.default_rng().integers(len(faces))
    flipped[k] = flipped[k, ::-1]
    assert not meshops.consistently_wound(flipped)
    assert meshops.consistently_wound(meshops.orient_faces(vertices, flipped)[0])


# ------------------------------------------------------------------ shortcuts of the export clean-up (issue 16)


def test_connected_components_are_numbered_by_smallest_node():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_components

    rng = np.random.default_rng()
    nodes = 2000
    pairs = rng.integers(0, nodes, size=(1500, 2))
    labels = meshops.connected_components(nodes, pairs)
    _, reference = scipy_components(coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                                               shape=(nodes, nodes)), directed=False)
    # Same grouping, and labels 0..K-1 in the order of each component's smallest node.
    smallest = {}
    for node, group in enumerate(reference):
        smallest.setdefault(group, node)
    expected = np.argsort(np.argsort([smallest[g] for g in range(reference.max() + 1)]))[reference]
    np.testing.assert_array_equal(labels, expected)


def test_subset_and_rewound_edge_tables_equal_fresh_tables():
    rng = np.random.default_rng()
    vertices, faces = _sphere(0.3, subdivisions=3)
    faces = _scramble_winding(faces, int(rng.integers(1 << 30)))
    table = meshops.edge_table(faces)
    keep = rng.random(len(faces)) < 0.7
    for got, expected in zip(meshops.subset_edge_table(table, keep), meshops.edge_table(faces[keep])):
        np.testing.assert_array_equal(got, expected)
    # compact renumbers vertices in order, so the subset's table still holds for the compacted faces.
    _, compacted = meshops.compact(vertices, faces[keep])
    for got, expected in zip(meshops.subset_edge_table(table, keep), meshops.edge_table(compacted)):
        np.testing.assert_array_equal(got, expected)
    flipped = rng.random(len(faces)) < 0.5
    rewound = faces.copy()
    rewound[flipped] = rewound[flipped][:, [0, 2, 1]]
    for got, expected in zip(meshops.rewound_edge_table(table, flipped), meshops.edge_table(rewound)):
        np.testing.assert_array_equal(got, expected)
    oriented, closed = meshops.orient_faces(vertices, faces, table)
    np.testing.assert_array_equal(oriented, meshops.orient_faces(vertices, faces)[0])
    assert closed.all()


def _fringes_by_whole_mesh_rounds(vertices, faces, width, rounds=3):
    """The fringe rule as first written: every round recomputes the manifold parts of the whole kept mesh."""
    num_faces, index = len(faces), np.arange(len(faces))
    for _ in range(rounds):
        order, edge_of, face_count = meshops.edge_table(faces)
        _, part = meshops._manifold_parts(faces, order, edge_of, face_count)
        count = face_count[edge_of].reshape(-1, 3)
        length = np.linalg.norm(vertices[faces[:, [1, 2, 0]]].astype(np.float64) - vertices[faces], axis=2)
        area = np.bincount(part, weights=0.5 * np.linalg.norm(np.cross(
            vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]]), axis=1))
        boundary = np.bincount(part, weights=(length * (count == 1)).sum(axis=1))
        junction = np.bincount(part, weights=(length * (count >= 3)).sum(axis=1))
        fringe = (boundary > 0) & (junction >= 0.5 * boundary) & (area <= width * boundary)
        if not fringe.any():
            break
        faces, index = faces[~fringe[part]], index[~fringe[part]]
    keep = np.zeros(num_faces, bool)
    keep[index] = True
    return keep


def test_fringe_rounds_after_the_first_look_only_where_faces_went(assets):
    """A triangle soup at 32^3 has fringes that only show once others are gone (a second round removes more)."""
    from omnivox.assets import load_asset
    from omnivox.ovoxel import dual_grid_to_mesh, mesh_to_dual_grid, to_local

    scene = load_asset(assets / "mesh/soup.stl").normalized()
    coords, dual, flags = mesh_to_dual_grid(scene.vertices, scene.faces, 32)
    vertices, faces = dual_grid_to_mesh(coords, to_local(coords, dual, 1 / 32), flags, 32)
    vertices, faces = meshops.clean(np.asarray(vertices, np.float64), np.asarray(faces, np.int64), 1e-5)
    width = 1.5 * meshops.median_edge_length(vertices, faces)
    one_round = meshops.remove_fringes(vertices, faces, width, rounds=1)
    keep = meshops.remove_fringes(vertices, faces, width, table=meshops.edge_table(faces))
    assert (~keep).sum() > (~one_round).sum() > 0
    np.testing.assert_array_equal(keep, _fringes_by_whole_mesh_rounds(vertices, faces, width))


def test_filling_with_openings_equals_filling_then_measuring_openings():
    vertices, faces = _sphere(0.3, subdivisions=4)
    rng = np.random.default_rng()
    # Pin-holes (one face each, far apart) and one large opening (a cap around a random vertex).
    pins = rng.choice(len(faces), 6, replace=False)
    cap = np.linalg.norm(vertices[faces].mean(axis=1) - vertices[rng.integers(len(vertices))], axis=1) < 0.12
    holed = faces[~(cap | np.isin(np.arange(len(faces)), pins))]
    limit = 4 * meshops.median_edge_length(vertices, faces)
    got_v, got_f, area, rim = meshops.fill_small_holes_with_openings(vertices, holed, limit,
                                                                      meshops.edge_table(holed))
    filled_v, filled_f = meshops.fill_small_holes(vertices, holed, limit)
    np.testing.assert_array_equal(got_f, filled_f)
    np.testing.assert_array_equal(got_v, filled_v)
    assert len(filled_f) > len(holed)  # pin-holes were filled
    expected_area, expected_rim = meshops.opening_areas(filled_v, filled_f, return_faces=True)
    np.testing.assert_array_equal(area, expected_area)
    np.testing.assert_array_equal(rim, expected_rim)
    assert len(area) >= 1 and area.max() > 0.01  # the cap stays open


def test_face_measures_and_compact_match_plain_numpy():
    rng = np.random.default_rng()
    vertices = rng.normal(size=(300, 3)).astype(np.float32)
    faces = rng.integers(0, 300, size=(500, 3))
    v = vertices.astype(np.float64)
    np.testing.assert_array_equal(meshops.edge_lengths(vertices, faces),
                                  np.linalg.norm(v[faces[:, [1, 2, 0]]] - v[faces], axis=2))
    np.testing.assert_array_equal(meshops.face_areas(vertices, faces), 0.5 * np.linalg.norm(
        np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]]), axis=1))
    used, inverse = np.unique(faces[:200], return_inverse=True)
    got_v, got_f = meshops.compact(vertices, faces[:200])
    np.testing.assert_array_equal(got_v, vertices[used])
    np.testing.assert_array_equal(got_f, inverse.reshape(-1, 3))


# ------------------------------------------------- numba kernels (kernels/meshops_numba.py) against numpy (issue 16)
# The numpy formulations below are the ones the kernels replaced; the kernels must give their results bit for bit.


def _numpy_subset_edge_table(table, keep):
    order, edge_of, face_count = table
    keep_half_edge = np.repeat(np.asarray(keep, bool), 3)
    new_id = np.cumsum(keep_half_edge) - 1
    sub_edge = edge_of[keep_half_edge]
    count = np.bincount(sub_edge, minlength=len(face_count))
    present = count > 0
    return new_id[order[keep_half_edge[order]]], (np.cumsum(present) - 1)[sub_edge], count[present]


def _numpy_rewound_edge_table(table, flipped):
    order, edge_of, face_count = table
    corner = np.arange(len(edge_of)) % 3
    permutation = np.arange(len(edge_of)) + np.where(np.repeat(flipped, 3), 2 - 2 * corner, 0)
    return permutation[order], edge_of[permutation], face_count


def _numpy_face_components(faces, table):
    order, edge_of, _ = table
    sorted_edges = edge_of[order]
    same = sorted_edges[1:] == sorted_edges[:-1]
    return meshops.connected_components(len(faces), np.stack([order[:-1][same] // 3, order[1:][same] // 3], axis=1))


def _numpy_manifold_adjacency(faces, table):
    order, edge_of, face_count = table
    sorted_edges = edge_of[order]
    manifold = (sorted_edges[1:] == sorted_edges[:-1]) & (face_count[sorted_edges[1:]] == 2)
    he_a, he_b = order[:-1][manifold], order[1:][manifold]
    same = (faces.reshape(-1)[he_a] == faces.reshape(-1)[he_b]).astype(np.int8)
    src = np.concatenate([he_a // 3, he_b // 3])
    by_src = np.argsort(src, kind="stable")
    start = np.zeros(len(faces) + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=len(faces)), out=start[1:])
    return start, np.concatenate([he_b // 3, he_a // 3])[by_src], np.concatenate([same, same])[by_src]


def _numpy_remove_fringes(vertices, faces, width, table, rounds=3):
    """remove_fringes as numpy passes: parts by connected_components, sums by bincount."""
    v = vertices.astype(np.float64)
    length = np.linalg.norm(v[faces[:, [1, 2, 0]]] - v[faces], axis=2)
    areas = 0.5 * np.linalg.norm(np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]]), axis=1)
    order, edge_of, face_count = table
    face_count = face_count.copy()
    edge_of_face = edge_of.reshape(-1, 3)
    keep = np.ones(len(faces), bool)
    part = np.zeros(len(faces), np.int64)
    next_label, looked_at = 0, keep.copy()
    for _ in range(rounds):
        faces_in = np.flatnonzero(looked_at)
        local = np.cumsum(looked_at) - 1
        sorted_half_edges = order[looked_at[order // 3]]
        sorted_edges = edge_of[sorted_half_edges]
        manifold = (sorted_edges[1:] == sorted_edges[:-1]) & (face_count[sorted_edges[1:]] == 2)
        pairs = np.stack([local[sorted_half_edges[:-1][manifold] // 3],
                          local[sorted_half_edges[1:][manifold] // 3]], axis=1)
        local_part = meshops.connected_components(len(faces_in), pairs)
        part[faces_in] = local_part + next_label
        num_parts = int(local_part.max()) + 1
        next_label += num_parts
        count = face_count[edge_of_face[faces_in]]
        edge_length = length[faces_in]
        boundary = np.bincount(local_part, weights=(edge_length * (count == 1)).sum(axis=1), minlength=num_parts)
        junction = np.bincount(local_part, weights=(edge_length * (count >= 3)).sum(axis=1), minlength=num_parts)
        area = np.bincount(local_part, weights=areas[faces_in], minlength=num_parts)
        fringe = (boundary > 0) & (junction >= 0.5 * boundary) & (area <= width * boundary)
        if not fringe.any():
            break
        removed = faces_in[fringe[local_part]]
        keep[removed] = False
        removed_edges = edge_of_face[removed].reshape(-1)
        face_count -= np.bincount(removed_edges, minlength=len(face_count))
        touched_edge = np.zeros(len(face_count), bool)
        touched_edge[removed_edges] = True
        touched_part = np.zeros(next_label, bool)
        touched_part[part[touched_edge[edge_of_face].any(axis=1) & keep]] = True
        looked_at = touched_part[part] & keep
        if not looked_at.any():
            break
    return keep


@pytest.fixture(scope="module")
def soup_surface():
    """The extracted surface of the triangle soup at 32^3, cleaned: crossing sheets, fringes, non-manifold edges."""
    from omnivox.assets import load_asset
    from omnivox.ovoxel import dual_grid_to_mesh, mesh_to_dual_grid, to_local
    from tests.conftest import _assets_dir

    scene = load_asset(_assets_dir() / "mesh/soup.stl").normalized()
    coords, dual, flags = mesh_to_dual_grid(scene.vertices, scene.faces, 32)
    vertices, faces = dual_grid_to_mesh(coords, to_local(coords, dual, 1 / 32), flags, 32)
    return meshops.clean(np.asarray(vertices, np.float32), np.asarray(faces, np.int64), 1e-5)


def _tangled_mesh(rng):
    """Random triangles on few vertices (non-manifold edges, both windings, open borders) beside a sphere whose
    winding is scrambled and which has a few faces cut out."""
    tangle = rng.integers(0, 40, size=(300, 3))
    tangle = tangle[(tangle[:, 0] != tangle[:, 1]) & (tangle[:, 1] != tangle[:, 2]) & (tangle[:, 2] != tangle[:, 0])]
    sphere_v, sphere_f = _sphere(0.3, subdivisions=2)
    sphere_f = _scramble_winding(sphere_f, int(rng.integers(1 << 30)))[rng.random(len(sphere_f)) < 0.97]
    vertices = np.concatenate([rng.normal(size=(40, 3)), sphere_v]).astype(np.float32)
    return vertices, np.concatenate([tangle, sphere_f + 40])


def _assert_tables_equal(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("source", ["random", "soup"])
def test_numba_edge_table_kernels_match_numpy(source, request):
    rng = np.random.default_rng()
    vertices, faces = _tangled_mesh(rng) if source == "random" else request.getfixturevalue("soup_surface")
    table = meshops.edge_table(faces)
    keep = rng.random(len(faces)) < 0.8
    flipped = rng.random(len(faces)) < 0.5
    _assert_tables_equal(meshops.subset_edge_table(table, keep), _numpy_subset_edge_table(table, keep))
    # Edge ids that do not ascend along the order (no table of meshops has them) take the kernel's ranking path.
    relabel = rng.permutation(len(table[2]))
    shuffled = (table[0], relabel[table[1]], table[2][np.argsort(relabel)])
    _assert_tables_equal(meshops.subset_edge_table(shuffled, keep), _numpy_subset_edge_table(shuffled, keep))
    _assert_tables_equal(meshops.rewound_edge_table(table, flipped), _numpy_rewound_edge_table(table, flipped))
    np.testing.assert_array_equal(meshops.face_components(faces, table), _numpy_face_components(faces, table))
    from omnivox.ovoxel.kernels import meshops_numba

    _assert_tables_equal(meshops_numba.manifold_adjacency(faces, *table), _numpy_manifold_adjacency(faces, table))
    half_edges, start, end = meshops._boundary_half_edges(faces, table)
    assert len(half_edges) > 0
    np.testing.assert_array_equal(end, faces[:, [1, 2, 0]].reshape(-1)[half_edges])
    for wound in (faces, meshops.orient_faces(vertices, faces, table)[0]):
        wound_table = meshops.edge_table(wound)
        sorted_edges = wound_table[1][wound_table[0]]
        starts = np.ones(len(sorted_edges), bool)
        starts[1:] = sorted_edges[1:] != sorted_edges[:-1]
        pair = np.flatnonzero(starts & (wound_table[2][sorted_edges] == 2))
        expected = (wound.reshape(-1)[wound_table[0][pair]] != wound.reshape(-1)[wound_table[0][pair + 1]]).all()
        assert meshops.consistently_wound(wound, wound_table) == expected


@pytest.mark.parametrize("source", ["random", "soup"])
def test_numba_fringe_rule_matches_numpy(source, request):
    rng = np.random.default_rng()
    vertices, faces = _tangled_mesh(rng) if source == "random" else request.getfixturevalue("soup_surface")
    table = meshops.edge_table(faces)
    width = 1.5 * float(np.median(np.linalg.norm(vertices[faces[:, 1]] - vertices[faces[:, 0]], axis=1)))
    if source == "random":
        width *= float(rng.uniform(0.5, 20.0))  # random triangles are long: some parts must count as fringes
    keep = meshops.remove_fringes(vertices, faces, width, table=table)
    np.testing.assert_array_equal(keep, _numpy_remove_fringes(vertices, faces, width, table))
    if source == "soup":
        assert 0 < (~keep).sum() < len(faces) // 10


def _numpy_edge_table(faces):
    start, end = faces.reshape(-1), faces[:, [1, 2, 0]].reshape(-1)
    keys = np.minimum(start, end) * (int(faces.max()) + 1) + np.maximum(start, end)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    first = np.ones(len(order), bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    edge_of = np.empty(len(order), np.int64)
    edge_of[order] = np.cumsum(first) - 1
    return order, edge_of, np.diff(np.append(np.flatnonzero(first), len(first)))


def _numpy_remove_duplicate_faces(faces):
    corners = np.sort(faces, axis=1)
    order = np.lexsort((corners[:, 2], corners[:, 1], corners[:, 0]))  # stable: lowest face index first
    sorted_corners = corners[order]
    first = np.ones(len(order), bool)
    first[1:] = (sorted_corners[1:] != sorted_corners[:-1]).any(axis=1)
    return faces[np.sort(order[first])]


@pytest.mark.parametrize("source", ["random", "soup"])
def test_numba_edge_table_and_duplicates_match_numpy(source, request):
    rng = np.random.default_rng()
    if source == "random":
        _, faces = _tangled_mesh(rng)
        # A fan of 200 faces round vertex 0 (runs longer than the insertion sort's) with repeated faces in it.
        rim = rng.integers(1, 60, size=200)
        fan = np.stack([np.zeros(200, np.int64), rim, rng.integers(1, 60, size=200)], axis=1)
        fan = fan[(fan[:, 1] != fan[:, 2])]
        faces = np.concatenate([faces, fan, faces[rng.integers(len(faces), size=50)][:, ::-1]])
        faces = faces[rng.permutation(len(faces))]
    else:
        faces = request.getfixturevalue("soup_surface")[1]
        faces = np.concatenate([faces, faces[rng.integers(len(faces), size=500)][:, [2, 1, 0]]])
    _assert_tables_equal(meshops.edge_table(faces), _numpy_edge_table(faces))
    deduplicated = meshops.remove_duplicate_faces(faces)
    np.testing.assert_array_equal(deduplicated, _numpy_remove_duplicate_faces(faces))
    assert len(deduplicated) < len(faces)
