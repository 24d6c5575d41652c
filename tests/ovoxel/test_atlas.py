"""The voxel UV atlas (omnivox.ovoxel.atlas): charts never share or bleed into texels, never fold, keep the
axis-projection geometry, are deterministic and device-independent, and bake into a correct GLB."""

import functools

import numpy as np
import pytest
import torch
import trimesh

from omnivox.ovoxel import Grid, dual_grid_to_mesh, mesh_to_dual_grid, to_local
from omnivox.ovoxel import atlas as atlas_module
from omnivox.ovoxel.atlas import NORMAL_FLOOR, default_padding, describe_atlas, voxel_atlas
from omnivox.ovoxel.export import UvMethod, bake_glb, prepare_surface, save_glb, unwrap_uv
from tests.conftest import ASSETS

TEXTURE = 512


# ------------------------------------------------------------------------------------------------------ shapes


def _voxel_surface(mesh: trimesh.Trimesh, resolution: int):
    """The exporter's input: a dual-grid surface, cleaned and oriented like ``bake_glb`` does."""
    grid = Grid.make(resolution)
    coords, dual, flags = mesh_to_dual_grid(mesh.vertices, mesh.faces, resolution)
    vertices, faces = dual_grid_to_mesh(coords, to_local(coords, dual, grid.voxel_size), flags, resolution)
    vertices, faces, _, _ = prepare_surface(vertices.astype(np.float32), faces.astype(np.int64))
    return vertices, faces


@functools.lru_cache(maxsize=None)
def voxel_sphere():
    return _voxel_surface(trimesh.creation.icosphere(subdivisions=4, radius=0.35), 64)


@functools.lru_cache(maxsize=None)
def voxel_thin_sheet():
    return _voxel_surface(trimesh.creation.box(extents=(0.7, 0.5, 0.02)), 64)


def cube():
    box = trimesh.creation.box(extents=(0.6, 0.6, 0.6))
    return box.vertices.astype(np.float32), box.faces.astype(np.int64)


def tiny_pieces(count=3000, seed=3):
    """Many small disconnected triangles facing every way (a soup)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-0.4, 0.4, (count, 1, 3))
    corners = centres + rng.normal(0, 0.004, (count, 3, 3))
    return corners.reshape(-1, 3).astype(np.float32), np.arange(3 * count, dtype=np.int64).reshape(-1, 3)


def helical_ramp(turns=3.0, steps=240, rings=6):
    """A spiral ramp: every face leans to +z, yet the surface winds over itself (needs splitting)."""
    theta = np.linspace(0, 2 * np.pi * turns, steps)
    radius = np.linspace(0.15, 0.4, rings)
    t, r = np.meshgrid(theta, radius, indexing="ij")
    vertices = np.stack([r * np.cos(t), r * np.sin(t), 0.02 * t], axis=-1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(steps - 1), np.arange(rings - 1), indexing="ij")
    a = (i * rings + j).reshape(-1)
    b, c, d = a + rings, a + rings + 1, a + 1
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return vertices.astype(np.float32), faces.astype(np.int64)


@functools.lru_cache(maxsize=None)
def real_asset_surface(rel: str, resolution: int):
    from omnivox.assets import load_asset

    scene = load_asset(ASSETS / rel).normalized()
    return _voxel_surface(trimesh.Trimesh(scene.vertices, scene.faces, process=False), resolution)


# --------------------------------------------------------------------------------------- independent checkers


def cross2(a, b):
    """z of the cross product of 2-D vectors (..., 2)."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def texel_claims(uvs, faces, size, strict, limit=1e-7):
    """(face, texel) pairs whose texel centre ``((j + 0.5) / S, (i + 0.5) / S)`` lies in the face's UV triangle
    (``strict``: barycentrics > ``limit``; else on the edges too). Plain numpy, float64."""
    pix = uvs.astype(np.float64)[faces] * size - 0.5  # (F, 3, 2)
    lo = np.clip(np.ceil(pix.min(axis=1)), 0, size - 1).astype(np.int64)
    hi = np.clip(np.floor(pix.max(axis=1)), 0, size - 1).astype(np.int64)
    extent = np.maximum(hi - lo + 1, 0)
    count = extent[:, 0] * extent[:, 1]
    face = np.repeat(np.arange(len(faces)), count)
    rank = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    col = lo[face, 0] + rank % extent[face, 0]
    row = lo[face, 1] + rank // extent[face, 0]
    p = np.stack([col, row], axis=1).astype(np.float64)
    c = pix[face]
    twice_area = cross2(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0])
    w0 = cross2(c[:, 1] - p, c[:, 2] - p) / twice_area
    w1 = cross2(c[:, 2] - p, c[:, 0] - p) / twice_area
    w2 = 1 - w0 - w1
    limit = limit if strict else -1e-9
    inside = (w0 > limit) & (w1 > limit) & (w2 > limit)
    return face[inside], row[inside] * size + col[inside]


def check_atlas(vertices, faces, atlas, size, padding):
    """Every property of the output contract and of a valid, bleed-free, fold-free atlas."""
    assert atlas.vmapping.dtype == np.int64 and atlas.faces.dtype == np.int64 and atlas.uvs.dtype == np.float32
    assert atlas.faces.shape == faces.shape and atlas.uvs.shape == (len(atlas.vmapping), 2)
    assert (atlas.vmapping[atlas.faces] == faces).all()  # same corners, same face order
    assert len(np.unique(atlas.faces)) == len(atlas.vmapping)  # no unused atlas vertex
    assert (atlas.uvs >= 0).all() and (atlas.uvs <= 1).all()
    # The charts are exactly the groups of faces joined by shared UV vertices (what describe_atlas finds for xatlas).
    generic = describe_atlas(vertices, atlas.vmapping, atlas.faces, atlas.uvs)
    assert np.array_equal(generic.face_chart, atlas.face_chart) and generic.charts == atlas.charts
    assert generic.seam_length == pytest.approx(atlas.seam_length, rel=1e-12)

    uv = atlas.uvs.astype(np.float64)[atlas.faces] * size
    uv_area = 0.5 * cross2(uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0])
    assert (np.abs(uv_area) > 0).all(), "a face has no UV area"
    assert atlas.utilisation == pytest.approx(np.abs(uv_area).sum() / size ** 2, rel=1e-9)
    # Within a chart all faces turn the same way in UV (nothing folds).
    chart = atlas.face_chart
    signs = np.zeros((atlas.charts, 2), bool)
    signs[chart, (uv_area > 0).astype(int)] = True
    assert not (signs[:, 0] & signs[:, 1]).any(), "a chart has faces of both UV orientations"

    # No texel is claimed by two charts.
    face, texel = texel_claims(atlas.uvs, atlas.faces, size, strict=False)
    pairs = np.unique(np.stack([texel, chart[face]], 1), axis=0)
    assert len(np.unique(pairs[:, 0])) == len(pairs), "two charts claim one texel"
    # No chart covers a texel twice (strictly inside two of its faces).
    face_s, texel_s = texel_claims(atlas.uvs, atlas.faces, size, strict=True)
    assert len(np.unique(texel_s)) == len(texel_s), "a chart overlaps itself"
    # Padding: a chart dilated by padding - 1 texels (square, across the texture's wrap-around) meets no other.
    owner = np.full(size * size, -1, np.int64)
    owner[pairs[:, 0]] = pairs[:, 1]
    row, col = np.divmod(pairs[:, 0], size)
    reach = padding - 1
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            other = owner[((row + dy) % size) * size + (col + dx) % size]
            assert ((other == -1) | (other == pairs[:, 1])).all(), f"charts closer than {padding} texels"
    return uv_area


def check_axis_projection(vertices, faces, atlas, size):
    """Each face's UV triangle is its 3-D triangle projected onto an axis plane, all at one common scale: the
    singular values of the 3-D -> UV map are (s, s |n_axis|) with the same s everywhere and |n_axis| >= floor.
    Float64 reference from the 3-D triangles; faces thinner than 2 texels are left out (float32 UV rounding)."""
    p = vertices.astype(np.float64)[faces]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    normal = np.cross(e1, e2)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    x_axis = e1 / np.linalg.norm(e1, axis=1, keepdims=True)
    y_axis = np.cross(normal, x_axis)
    local = np.stack([np.stack([(e * x_axis).sum(1), (e * y_axis).sum(1)], 1) for e in (e1, e2)], axis=2)
    uv = atlas.uvs.astype(np.float64)[atlas.faces] * size
    uv_edges = np.stack([uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]], axis=2)
    jacobian = uv_edges @ np.linalg.inv(local)  # (F, 2, 2): local 3-D plane -> texels
    sigma = np.linalg.svd(jacobian, compute_uv=False)
    uv_area = np.abs(cross2(uv_edges[:, :, 0], uv_edges[:, :, 1]))
    longest = np.linalg.norm(np.stack([uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 1], uv[:, 0] - uv[:, 2]], 1),
                             axis=2).max(axis=1)
    big = uv_area / longest > 2  # smallest UV altitude above 2 texels
    assert big.sum() > len(faces) // 4
    scale = np.median(sigma[big, 0])
    assert sigma[big, 0] == pytest.approx(np.full(big.sum(), scale), rel=2e-3)
    ratio = sigma[big, 1] / sigma[big, 0]
    assert (ratio > NORMAL_FLOOR * (1 - 2e-3)).all(), "a face is squeezed beyond the normal floor"
    # The squeeze is |n . axis| for one of the three axes (orthographic projection onto that axis plane).
    assert np.abs(ratio[:, None] - np.abs(normal[big])).min(axis=1).max() < 2e-3


# -------------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("shape", ["sphere", "thin_sheet", "cube", "tiny_pieces", "helical_ramp"])
def test_atlas_is_valid(shape):
    vertices, faces = {"sphere": voxel_sphere, "thin_sheet": voxel_thin_sheet, "cube": cube,
                       "tiny_pieces": tiny_pieces, "helical_ramp": helical_ramp}[shape]()
    atlas = voxel_atlas(vertices, faces, TEXTURE)
    check_atlas(vertices, faces, atlas, TEXTURE, default_padding(TEXTURE))
    check_axis_projection(vertices, faces, atlas, TEXTURE)
    if shape == "helical_ramp":  # one label everywhere, three turns: only splitting makes it overlap-free
        assert atlas.charts >= 3
    if shape == "tiny_pieces":
        assert atlas.charts == len(faces)


def test_cube_has_six_charts_and_its_edges_as_seams():
    vertices, faces = cube()
    atlas = voxel_atlas(vertices, faces, 256)
    assert atlas.charts == 6
    edges, diagonals = 12 * 0.6, 6 * 0.6 * np.sqrt(2)
    assert atlas.seam_length == pytest.approx(edges, rel=1e-6)
    assert atlas.seam_fraction == pytest.approx(edges / (edges + diagonals), rel=1e-6)
    # Six equal squares: all faces share the scale, and the packing fills a sizeable part of the texture.
    assert atlas.utilisation > 0.3


def test_real_asset_atlas_is_valid(assets):
    vertices, faces = real_asset_surface("gltf/Fox.glb", 96)
    atlas = voxel_atlas(vertices, faces, TEXTURE)
    check_atlas(vertices, faces, atlas, TEXTURE, default_padding(TEXTURE))
    check_axis_projection(vertices, faces, atlas, TEXTURE)
    assert atlas.charts < len(faces) // 20  # smoothing keeps the charts large


@pytest.mark.parametrize("padding", [1, 3])
def test_padding_is_respected(padding):
    vertices, faces = voxel_sphere()
    atlas = voxel_atlas(vertices, faces, 256, padding=padding)
    check_atlas(vertices, faces, atlas, 256, padding)


def test_atlas_is_deterministic():
    vertices, faces = voxel_sphere()
    first, second = voxel_atlas(vertices, faces, TEXTURE), voxel_atlas(vertices.copy(), faces.copy(), TEXTURE)
    for name in ("vmapping", "faces", "uvs", "face_chart"):
        assert getattr(first, name).tobytes() == getattr(second, name).tobytes()
    assert (first.charts, first.utilisation, first.seam_length) == (second.charts, second.utilisation,
                                                                     second.seam_length)


def test_unwrap_uv_contract_matches_for_both_methods():
    vertices, faces = voxel_sphere()
    for method in UvMethod:
        vmapping, new_faces, uvs = unwrap_uv(vertices, faces, TEXTURE, method=method)
        assert vmapping.dtype == np.int64 and new_faces.dtype == np.int64 and uvs.dtype == np.float32
        assert (vmapping[new_faces] == faces).all()
        assert uvs.min() >= 0 and uvs.max() <= 1
    with pytest.raises(ValueError, match="UvMethod"):
        unwrap_uv(vertices, faces, TEXTURE, method="voxel")


def _random_claim_inputs(rng, count: int, extent: float):
    """Fresh random triangles in pixel coordinates over three charts, with what the claim rasterisers take:
    (pix, chart, first texel, box width, texels per face, twice the signed area, key stride)."""
    pix = torch.from_numpy(rng.uniform(0, extent, (count, 3, 2)))
    chart = torch.from_numpy(rng.integers(0, 3, count))
    first = torch.ceil(pix.amin(dim=1)).clamp(min=0).long()
    last = torch.floor(pix.amax(dim=1)).long()
    width = (last[:, 0] - first[:, 0] + 1).clamp(min=0)
    height = (last[:, 1] - first[:, 1] + 1).clamp(min=0)
    e1, e2 = pix[:, 1] - pix[:, 0], pix[:, 2] - pix[:, 0]
    twice_area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    return pix, chart, first, width, width * height, twice_area, int(last.max()) + 2


def test_torch_and_numba_overlap_rasterisers_agree():
    """The overlap check's CUDA path (torch) and CPU path (numba) claim the same texels, on fresh random
    triangles (two overlapping charts and one clean one)."""
    rng = np.random.default_rng()
    count = 400
    pix, chart, first, width, count_per_face, twice_area, stride = _random_claim_inputs(rng, count, 40)
    by_torch = atlas_module._strict_claims_torch(pix, first, width, count_per_face, twice_area, chart, stride)
    by_numba, _ = atlas_module._strict_claims_numba(pix.numpy(), first.numpy(), width.numpy(), count_per_face.numpy(),
                                                    twice_area.numpy(), chart.numpy(), stride,
                                                    int(count_per_face.sum()))
    assert len(by_torch) > 1000
    assert np.array_equal(np.sort(by_torch.numpy()), np.sort(by_numba))
    # The same claims from this file's own float64 rasteriser (numpy cross products, same 1e-9 strictness).
    uvs = (pix.reshape(-1, 2).numpy() + 0.5) / 64
    face, texel = texel_claims(uvs, np.arange(3 * count).reshape(-1, 3), 64, strict=True, limit=1e-9)
    row, col = np.divmod(texel, 64)
    reference = (chart.numpy()[face] * stride + row) * stride + col
    assert np.array_equal(np.sort(reference), np.sort(by_numba))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", ["sphere", "helical_ramp", "tiny_pieces"])
def test_gpu_and_cpu_atlases_are_identical(shape):
    vertices, faces = {"sphere": voxel_sphere, "helical_ramp": helical_ramp, "tiny_pieces": tiny_pieces}[shape]()
    cpu = voxel_atlas(vertices, faces, TEXTURE, device="cpu")
    gpu = voxel_atlas(torch.from_numpy(vertices).cuda(), torch.from_numpy(faces).cuda(), TEXTURE)
    for name in ("vmapping", "faces", "uvs", "face_chart"):
        assert np.array_equal(getattr(cpu, name), getattr(gpu, name)), name
    assert gpu.charts == cpu.charts
    assert gpu.utilisation == pytest.approx(cpu.utilisation, rel=1e-9)
    assert gpu.seam_length == pytest.approx(cpu.seam_length, rel=1e-9)


def test_glb_with_voxel_atlas_has_the_voxel_colours(tmp_path):
    """bake_glb with the voxel atlas, read back by pygltflib + PIL: every face's texture colour is the voxel colour
    at its 3-D position (base colour = position + 0.5 on the voxels, so any misplaced chart shows)."""
    from tests.assets.two_tone import read_glb_independently

    resolution, size = 64, 512
    grid = Grid.make(resolution)
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.35)
    coords, dual, flags = mesh_to_dual_grid(mesh.vertices, mesh.faces, resolution)
    vertices, faces = dual_grid_to_mesh(coords, to_local(coords, dual, grid.voxel_size), flags, resolution)
    centres = (coords + 0.5) * grid.voxel_size + grid.lo
    attributes = np.concatenate([centres + 0.5, np.full((len(coords), 2), 0.5), np.ones((len(coords), 1))],
                                axis=1).astype(np.float32)
    glb, report = bake_glb(vertices, faces, coords, attributes, grid, texture_size=size, decimation_target=None)
    assert report.uv_method is UvMethod.VOXEL and report.uv_charts > 0 and 0 < report.uv_utilisation <= 1
    assert 0 < report.seam_fraction < 1 and report.seam_length > 0
    path = save_glb(glb, tmp_path / "sphere.glb")

    positions, uv, triangles, image = read_glb_independently(path)
    z_up = np.stack([positions[:, 0], -positions[:, 2], positions[:, 1]], axis=1)
    centre_uv = uv[triangles].mean(axis=1)
    centre_xyz = z_up[triangles].mean(axis=1)
    texel = np.floor(centre_uv * size).astype(int)
    colour = image[texel[:, 1], texel[:, 0], :3].astype(np.float64) / 255
    error = np.abs(colour - (centre_xyz + 0.5)).max(axis=1) * resolution  # in voxels of colour ramp
    # Trilinear lookups near the surface renormalise over active voxels only (up to a voxel off), the nearest
    # texel to the centroid is up to half a texel (a fraction of a voxel here) away, and bytes round.
    assert np.median(error) < 0.5
    assert np.quantile(error, 0.99) < 1.5


def test_stacked_layers_are_peeled_not_dissolved(monkeypatch):
    """When halving gives up (here at once) on a chart that still overlaps itself, its layers are peeled
    off as connected pieces: the three turns of the ramp stay a few charts instead of one chart per face."""
    monkeypatch.setattr(atlas_module, "SPLIT_ROUNDS", 0)
    vertices, faces = helical_ramp()
    atlas = voxel_atlas(vertices, faces, TEXTURE)
    check_atlas(vertices, faces, atlas, TEXTURE, default_padding(TEXTURE))
    sizes = np.bincount(atlas.face_chart)
    assert atlas.charts <= 20 and (sizes == 1).sum() <= 10


def test_overlap_check_names_the_same_leaving_faces_on_both_paths():
    """The claims with faces (torch on CUDA, numba on the CPU) agree, and the faces that leave an overlapping chart
    are exactly those that share a texel with a lower-ranked face of their chart (float64 reference rasteriser)."""
    rng = np.random.default_rng()
    count = 300
    pix, chart, first, width, count_per_face, twice_area, stride = _random_claim_inputs(rng, count, 30)
    keys_t, faces_t = atlas_module._strict_claims_torch(pix, first, width, count_per_face, twice_area, chart, stride,
                                                        return_faces=True)
    keys_n, faces_n = atlas_module._strict_claims_numba(
        pix.numpy(), first.numpy(), width.numpy(), count_per_face.numpy(), twice_area.numpy(), chart.numpy(),
        stride, int(count_per_face.sum()))
    as_pairs = lambda keys, faces: sorted(zip(np.asarray(keys).tolist(), np.asarray(faces).tolist()))  # noqa: E731
    assert as_pairs(keys_t, faces_t) == as_pairs(keys_n, faces_n) and len(keys_n) > 1000

    # _overlapping_charts in a frame where the "flat" corners are the pixel coordinates (lo = 0, scale 1, + 0.5).
    flat = pix + 0.5
    selected = torch.from_numpy(rng.random(count) < 0.8)
    rank = torch.from_numpy(rng.permutation(count))
    overlapping, leaving = atlas_module._overlapping_charts(flat, chart, 3, torch.zeros(3, 2, dtype=torch.float64),
                                                            1.0, selected, rank)
    face, texel = texel_claims((flat.reshape(-1, 2).numpy()) / 64, np.arange(3 * count).reshape(-1, 3), 64,
                               strict=True, limit=1e-9)
    keep = selected.numpy()[face]
    face, texel = face[keep], texel[keep]
    expected = np.zeros(count, bool)
    first_claim = {}
    for _, f_, key in sorted(zip(rank.numpy()[face].tolist(), face.tolist(),
                                 (chart.numpy()[face] * 64 * 64 + texel).tolist())):
        if key in first_claim:
            expected[f_] = True
        else:
            first_claim[key] = f_
    np.testing.assert_array_equal(leaving.numpy(), expected)
    assert overlapping.numpy().tolist() == [bool(expected[chart.numpy() == k].any()) for k in range(3)]
    assert expected.any()


def test_shelf_height_and_root_ranks_match_plain_references():
    rng = np.random.default_rng()
    heights = np.sort(rng.integers(1, 40, 3000))[::-1].copy()
    widths = rng.integers(1, 60, 3000)
    for capacity in (59, 200, 1000):
        expected, row, tallest = 0, 0, None
        for w, h in zip(widths.tolist(), heights.tolist()):  # rows in order, closed when the next does not fit
            if tallest is None or row + w > capacity:
                expected, row, tallest = expected + h, 0, h
            row += w
        assert atlas_module._shelf_height(widths, heights, capacity) == expected
    assert atlas_module._shelf_height(widths, heights, 30) > 10 ** 18  # a rectangle wider than a row
    root = torch.from_numpy(rng.integers(0, 2000, 2000))  # any node indices naming groups
    assert torch.equal(atlas_module._rank_of_roots(root), torch.unique(root, return_inverse=True)[1])


def test_numba_twins_of_components_boxes_and_placement_match_torch():
    """The CPU's numba twins give the torch path's results exactly, on fresh random inputs."""
    rng = np.random.default_rng()
    nodes = 3000
    a, b = (torch.from_numpy(rng.integers(0, nodes, 2500)) for _ in range(2))
    expected = atlas_module._components_torch(nodes, a, b)
    assert torch.equal(atlas_module._components(nodes, a, b), expected)
    assert 1 < len(torch.unique(expected)) < nodes

    count, charts = 2000, 40
    flat = torch.from_numpy(rng.normal(size=(count, 3, 2)))
    chart = torch.from_numpy(rng.integers(0, charts, count))
    lo, hi = atlas_module._chart_boxes(flat, chart, charts)
    lo_t, hi_t = atlas_module._chart_boxes_torch(flat, chart, charts)
    assert torch.equal(lo, lo_t) and torch.equal(hi, hi_t)

    for texture_size in (1000, 2048):  # a size that is no power of two divides inexactly
        scale = float(rng.uniform(50, 300))
        origin = rng.integers(0, texture_size // 2, (charts, 2))
        turned = rng.random(charts) < 0.5
        placed = atlas_module._placed_corners_numba(flat.numpy(), chart.numpy(), lo.numpy(), hi.numpy(), scale,
                                                    origin.astype(np.float64), turned, float(texture_size))
        expected = atlas_module._placed_corners_torch(flat, chart, lo, hi, scale, origin, turned, texture_size)
        np.testing.assert_array_equal(placed, expected.numpy())


def test_real_asset_atlas_is_the_same_through_the_torch_passes(assets, monkeypatch):
    """voxel_atlas on a real asset on the CPU (numba twins) equals the atlas made with the torch passes there."""
    vertices, faces = real_asset_surface("gltf/Fox.glb", 96)
    with_numba = voxel_atlas(vertices, faces, TEXTURE)
    for name in ("_components", "_chart_boxes", "_group_components", "_split_in_two", "_overlapping_placed_faces",
                 "_overlapping_charts"):
        monkeypatch.setattr(atlas_module, name, getattr(atlas_module, name + "_torch"))

    def placed_by_torch(flat, chart, lo, hi, scale, origin, turned, texture_size):
        return atlas_module._placed_corners_torch(torch.from_numpy(flat), torch.from_numpy(chart), torch.from_numpy(lo),
                                                  torch.from_numpy(hi), scale, origin, turned, texture_size).numpy()

    monkeypatch.setattr(atlas_module, "_placed_corners_numba", placed_by_torch)
    with_torch = voxel_atlas(vertices, faces, TEXTURE)
    for name in ("vmapping", "faces", "uvs", "face_chart"):
        np.testing.assert_array_equal(getattr(with_numba, name), getattr(with_torch, name))


def test_numba_overlapping_faces_match_torch():
    """The packed-layout check on the CPU (boxes, areas and an owner image in numba) names the faces the torch
    path's sorted claims name, on fresh random triangles (some off the texture's edges, some without area)."""
    rng = np.random.default_rng()
    size = 64
    pix = torch.from_numpy(rng.uniform(-8, size + 8, (600, 1, 2)) + rng.normal(0, 3, (600, 3, 2)))
    pix[:20, 2] = pix[:20, 1]  # no area
    got = torch.from_numpy(atlas_module._overlapping_faces_numba(pix.numpy(), size))
    expected = atlas_module._overlapping_faces_torch(pix, size)
    assert torch.equal(got, expected) and 0 < int(expected.sum()) < 600
    # From placed UVs (float32 rounding first), among selected faces only.
    corner_uv = (pix + 0.5) / size
    selected = torch.from_numpy(rng.random(600) < 0.7)
    got = atlas_module._overlapping_placed_faces(corner_uv, selected, size)
    expected = atlas_module._overlapping_placed_faces_torch(corner_uv, selected, size)
    assert torch.equal(got, expected) and 0 < int(expected.sum()) and not bool(got[~selected].any())


def test_numba_twins_of_grouping_and_halving_match_torch():
    """Chart grouping (with and without charts to redo) and the split across the longest extent agree with the
    torch passes on fresh random graphs."""
    rng = np.random.default_rng()
    faces, charts = 3000, 50
    pair_a, pair_b = (torch.from_numpy(rng.integers(0, faces, 2000)) for _ in range(2))
    chart = torch.from_numpy(rng.integers(0, charts, faces))
    group = chart * 2 + torch.from_numpy(rng.integers(0, 2, faces))
    redo = torch.from_numpy(rng.random(charts) < 0.5)
    assert torch.equal(atlas_module._group_components(group, pair_a, pair_b),
                       atlas_module._group_components_torch(group, pair_a, pair_b))
    regrouped = atlas_module._group_components(group, pair_a, pair_b, chart, redo)
    assert torch.equal(regrouped, atlas_module._group_components_torch(group, pair_a, pair_b, chart, redo))
    assert charts < int(regrouped.max()) + 1 < faces
    centroid = torch.from_numpy(rng.normal(size=(faces, 3)))
    centroid[:100, 0] = centroid[:100, 1]  # ties between extents exist too
    flagged = torch.from_numpy(rng.random(charts + 5) < 0.6)  # charts without faces as well
    side = atlas_module._split_in_two(chart, flagged, centroid, charts + 5)
    assert torch.equal(side, atlas_module._split_in_two_torch(chart, flagged, centroid, charts + 5))
    assert 0 < int(side.sum()) < faces


def test_numba_chart_overlap_check_matches_torch():
    """The coarse self-overlap check of charts (and the faces that leave them) agrees with the torch passes, on
    fresh random triangles in three charts, some selected."""
    rng = np.random.default_rng()
    count, charts = 500, 3
    flat = torch.from_numpy(rng.uniform(0, 1, (count, 1, 2)) + rng.normal(0, 0.05, (count, 3, 2)))
    chart = torch.from_numpy(rng.integers(0, charts, count))
    lo, _ = atlas_module._chart_boxes_torch(flat, chart, charts)
    selected = torch.from_numpy(rng.random(count) < 0.8)
    rank = torch.from_numpy(rng.permutation(count))
    scale = float(rng.uniform(20, 60))
    got = atlas_module._overlapping_charts(flat, chart, charts, lo, scale, selected)
    assert torch.equal(got, atlas_module._overlapping_charts_torch(flat, chart, charts, lo, scale, selected))
    got, leaving = atlas_module._overlapping_charts(flat, chart, charts, lo, scale, selected, rank)
    expected, expected_leaving = atlas_module._overlapping_charts_torch(flat, chart, charts, lo, scale, selected, rank)
    assert torch.equal(got, expected) and torch.equal(leaving, expected_leaving)
    assert bool(got.any()) and 0 < int(leaving.sum()) < count
