"""O-Voxel -> textured GLB: baking kernels, material, axes, geometry hygiene, glTF validity, CLI, bad input."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from omnivox.ovoxel import Grid, dual_grid_to_mesh, mesh_to_dual_grid, meshops, to_local
from omnivox.ovoxel.bake import fill_gutter, rasterize_uv, sample_sparse_trilinear
from omnivox.ovoxel.export import bake_glb, choose_alpha_mode, save_glb, to_glb
from tests.conftest import HANG_GUARD_S, node_with

VALIDATOR = Path(__file__).resolve().parents[1] / "gltf_validator"
RESOLUTION = 32
TEXTURE = 128


# ------------------------------------------------------------------------------------------------------- fixtures


def _raw_dual_grid_surface(mesh, resolution):
    """Extraction as the reference does it: axis-fixed winding (half the triangles inward), pin-holes kept."""
    grid = Grid.make(resolution)
    coords, dual, flags = mesh_to_dual_grid(mesh.vertices, mesh.faces, resolution)
    vertices, faces = dual_grid_to_mesh(coords, to_local(coords, dual, grid.voxel_size), flags, resolution,
                                        orient=False)
    return grid, coords, vertices, faces


@pytest.fixture(scope="module")
def sphere():
    return _raw_dual_grid_surface(trimesh.creation.icosphere(subdivisions=3, radius=0.35), RESOLUTION)


def _position_colours(coords, grid):
    """Attributes that vary linearly with position: base colour = voxel centre + 0.5, so errors show where."""
    centres = (coords + 0.5) * grid.voxel_size + grid.lo
    n = len(coords)
    return np.concatenate([centres + 0.5, np.full((n, 1), 0.2), np.full((n, 1), 0.7), np.ones((n, 1))],
                          axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def sphere_glb(sphere):
    grid, coords, vertices, faces = sphere
    return bake_glb(vertices, faces, coords, _position_colours(coords, grid), grid, texture_size=TEXTURE)


def _texture(mesh, name):
    return np.asarray(getattr(mesh.visual.material, name))


def _ray_hits(vertices, faces, origin, direction):
    """Number of triangles a line (both directions) crosses (Moller-Trumbore, vectorised)."""
    v0, v1, v2 = (vertices[faces[:, k]].astype(np.float64) for k in range(3))
    e1, e2 = v1 - v0, v2 - v0
    p = np.cross(direction, e2)
    det = np.einsum("ij,ij->i", e1, p)
    ok = np.abs(det) > 1e-15
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origin - v0
    u = np.einsum("ij,ij->i", s, p) * inv
    q = np.cross(s, e1)
    v = (q @ direction) * inv
    return int((ok & (u >= 0) & (v >= 0) & (u + v <= 1)).sum())


def _validate(path):
    """The Khronos validator's report (`npm ci` in tests/gltf_validator on first use; skips without Node)."""
    node = node_with(VALIDATOR, "gltf-validator")
    result = subprocess.run([node, str(VALIDATOR / "validate.js"), str(path)], capture_output=True, text=True,
                            timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ------------------------------------------------------------------------------------------------ baking kernels


def _reference_trilinear(coords, attributes, grid, points):
    """Float64 loop over the 8 neighbours with a dict of active voxels (spec 7 step 8)."""
    table = {tuple(c): a for c, a in zip(coords.tolist(), attributes.astype(np.float64))}
    out = np.zeros((len(points), attributes.shape[1]))
    for row, p in enumerate(points):
        g = (p.astype(np.float64) - grid.lo) / grid.voxel_size
        base = np.floor(g - 0.5).astype(int)
        total, acc = 0.0, 0.0
        for d in np.ndindex(2, 2, 2):
            n = tuple(base + d)
            if n in table:
                w = np.prod(1 - np.abs(g - (np.array(n) + 0.5)))
                total, acc = total + w, acc + w * table[n]
        out[row] = acc / max(total, 1e-12)
    return out


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_sparse_trilinear_matches_float64_reference(backend):
    rng = np.random.default_rng()
    grid = Grid.make(16)
    coords = np.unique(rng.integers(0, 16, (900, 3)), axis=0)
    attributes = rng.random((len(coords), 4)).astype(np.float32) + 0.1
    # Points near active voxels, so most have some active neighbour.
    points = ((coords[rng.integers(0, len(coords), 400)] + rng.random((400, 3)) * 1.4 - 0.2) * grid.voxel_size
              + grid.lo).astype(np.float32)
    values, found = sample_sparse_trilinear(torch.from_numpy(coords), torch.from_numpy(attributes), grid,
                                            torch.from_numpy(points), fallback_radius=0, backend=backend)
    expected = _reference_trilinear(coords, attributes, grid, points)
    has = found.numpy()
    assert has.mean() > 0.9
    rel = np.abs(values.numpy()[has] - expected[has]) / np.abs(expected[has])
    assert rel.max() < 1e-5
    assert (values.numpy()[~has] == 0).all()


def test_sparse_trilinear_backends_agree_with_fallback():
    rng = np.random.default_rng()
    grid = Grid.make(24)
    coords = np.unique(rng.integers(0, 24, (700, 3)), axis=0)
    attributes = torch.from_numpy(rng.random((len(coords), 6)).astype(np.float32))
    points = torch.from_numpy(rng.random((3000, 3)).astype(np.float32) - 0.5)
    a, fa = sample_sparse_trilinear(torch.from_numpy(coords), attributes, grid, points, backend="numba")
    b, fb = sample_sparse_trilinear(torch.from_numpy(coords), attributes, grid, points, backend="torch")
    assert torch.equal(fa, fb) and 0.2 < fa.float().mean() < 1.0
    assert torch.allclose(a, b, atol=1e-6)


def test_sparse_trilinear_interpolates_only_active_voxels():
    grid = Grid.make(8)
    coords = torch.tensor([[3, 3, 3], [4, 3, 3]])
    attributes = torch.tensor([[0.25], [0.75]])
    # Between the two centres along x, with inactive neighbours in y and z: only the two active ones count.
    point = torch.tensor([[(4.0 - 4) / 8, (3.7 - 4) / 8, (3.2 - 4) / 8]])
    values, found = sample_sparse_trilinear(coords, attributes, grid, point)
    assert found.all() and values.item() == pytest.approx(0.5, abs=1e-6)


def test_rasterize_uv_interpolates_linearly_and_covers_interiors():
    rng = np.random.default_rng()
    size = 64
    corners = rng.random((20, 3, 2)).astype(np.float32)
    uvs = torch.from_numpy(corners.reshape(-1, 2))
    faces = torch.arange(60).view(20, 3)
    values = torch.cat([uvs, (uvs[:, :1] * 0.3 + uvs[:, 1:] * 0.6 + 0.05)], dim=1)
    image, mask = rasterize_uv(uvs, faces, values, size)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    u, v = (cols + 0.5) / size, (rows + 0.5) / size
    assert torch.allclose(image[rows, cols, 0], u, atol=1e-5)
    assert torch.allclose(image[rows, cols, 1], v, atol=1e-5)
    assert torch.allclose(image[rows, cols, 2], u * 0.3 + v * 0.6 + 0.05, atol=1e-5)
    # Texels strictly inside a triangle (all barycentrics > 1e-3) must be covered.
    centres = np.stack(np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size), -1)
    inside = np.zeros((size, size), bool)
    for a, b, c in corners.astype(np.float64):
        area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if abs(area) < 1e-9:
            continue
        w0 = ((b[0] - centres[..., 0]) * (c[1] - centres[..., 1]) - (b[1] - centres[..., 1]) * (c[0] - centres[..., 0]))
        w1 = ((c[0] - centres[..., 0]) * (a[1] - centres[..., 1]) - (c[1] - centres[..., 1]) * (a[0] - centres[..., 0]))
        w0, w1 = w0 / area, w1 / area
        inside |= (w0 > 1e-3) & (w1 > 1e-3) & (1 - w0 - w1 > 1e-3)
    assert inside.sum() > 50
    assert mask.numpy()[inside].all()


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_fill_gutter_keeps_covered_texels_and_fills_everything(backend):
    rng = np.random.default_rng()
    image = torch.from_numpy(rng.random((40, 40, 3)).astype(np.float32))
    mask = torch.zeros(40, 40, dtype=torch.bool)
    mask[5:15, 8:20] = True
    mask[30:33, 30:39] = True
    filled = fill_gutter(image, mask, backend=backend)
    assert torch.equal(filled[mask], image[mask])
    assert torch.isfinite(filled).all()
    assert filled.min() >= image[mask].min() - 1e-6 and filled.max() <= image[mask].max() + 1e-6
    constant = fill_gutter(torch.full((40, 40, 2), 0.37), mask, backend=backend)
    assert torch.allclose(constant, torch.full_like(constant, 0.37))


@pytest.mark.parametrize("size,channels", [(37, 3), (64, 7), (129, 5)])
def test_fill_gutter_numba_matches_the_torch_path(size, channels):
    """The CPU kernel against the PyTorch path (its reference) on fresh random textures with odd sizes, islands,
    specks and a corner chart: the same dilation rounds and pyramid, up to float32 rounding."""
    rng = np.random.default_rng()
    image = torch.from_numpy(rng.random((size, size, channels)).astype(np.float32) + 0.1)
    mask = torch.from_numpy(rng.random((size, size)) > 0.985)
    mask[size // 5:size // 2, size // 4:size // 2 + 3] = True
    mask[size - 3:, :4] = True
    reference = fill_gutter(image, mask, backend="torch")
    fast = fill_gutter(image, mask, backend="numba")
    assert float((fast - reference).abs().max() / reference.abs().max()) < 1e-5
    assert torch.equal(fill_gutter(image, torch.zeros_like(mask), backend="numba"), torch.zeros_like(image))


# -------------------------------------------------------------------------------------------------- end to end


def test_constant_volume_bakes_to_constant_textures(sphere):
    grid, coords, vertices, faces = sphere
    value = np.random.default_rng().uniform(0.1, 0.9, 6).astype(np.float32)
    value[5] = 1.0
    mesh = to_glb(vertices, faces, coords, np.tile(value, (len(coords), 1)), grid, texture_size=TEXTURE)
    base = _texture(mesh, "baseColorTexture")
    mr = _texture(mesh, "metallicRoughnessTexture")
    expected = np.round(value * 255).astype(np.uint8)
    assert base.shape == (TEXTURE, TEXTURE, 4) and mr.shape == (TEXTURE, TEXTURE, 3)
    assert (base[..., :3] == expected[:3]).all() and (base[..., 3] == 255).all()
    assert (mr[..., 0] == 0).all()  # glTF: R unused
    assert (mr[..., 1] == expected[4]).all()  # G = roughness
    assert (mr[..., 2] == expected[3]).all()  # B = metallic


def test_texture_matches_voxel_colours_at_vertices(sphere_glb, sphere):
    """Sampling the baked texture at each vertex's UV gives the colour of the voxels there (UV orientation)."""
    mesh, _ = sphere_glb
    grid = sphere[0]
    base = _texture(mesh, "baseColorTexture").astype(np.float64) / 255
    uv = np.asarray(mesh.visual.uv)
    # trimesh's uv has v up; image row 0 is the top: row = (1 - v_trimesh) * S.
    col = np.clip((uv[:, 0] * TEXTURE).astype(int), 0, TEXTURE - 1)
    row = np.clip(((1 - uv[:, 1]) * TEXTURE).astype(int), 0, TEXTURE - 1)
    sampled = base[row, col, :3]
    z_up = np.stack([mesh.vertices[:, 0], -mesh.vertices[:, 2], mesh.vertices[:, 1]], axis=1)
    error = np.abs(sampled - (z_up + 0.5)).max(axis=1)
    assert np.median(error) < 1.5 * grid.voxel_size[0]
    assert np.quantile(error, 0.95) < 3 * grid.voxel_size[0]


def test_output_is_y_up():
    box = trimesh.creation.box(extents=(0.2, 0.4, 0.8))  # tallest along z (up in the data)
    box.apply_translation((0.05, 0.1, 0.02))
    grid, coords, vertices, faces = _raw_dual_grid_surface(box, RESOLUTION)
    mesh = to_glb(vertices, faces, coords, np.full((len(coords), 6), 0.5, np.float32), grid, texture_size=64)
    used = vertices[np.unique(faces)]
    lo, hi = used.min(axis=0), used.max(axis=0)
    out_lo, out_hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    # (x, y, z) -> (x, z, -y)
    assert np.allclose(out_lo, [lo[0], lo[2], -hi[1]], atol=1e-6)
    assert np.allclose(out_hi, [hi[0], hi[2], -lo[1]], atol=1e-6)
    assert out_hi[1] - out_lo[1] == pytest.approx(0.8, abs=0.05)


def test_closed_sphere_is_outward_without_inner_shell(sphere_glb):
    mesh, report = sphere_glb
    vertices = np.asarray(mesh.vertices)
    faces = np.asarray(mesh.faces)
    # Positive signed volume close to the sphere's: outward winding and no (negative) inner shell.
    assert meshops.signed_volume(vertices, faces) == pytest.approx(4 / 3 * np.pi * 0.35 ** 3, rel=0.05)
    assert not report.double_sided and mesh.visual.material.doubleSided is False
    # Lines through the centre cross the surface exactly twice: one shell, nothing hidden inside.
    rng = np.random.default_rng()
    for direction in rng.normal(size=(10, 3)):
        assert _ray_hits(vertices, faces, np.zeros(3), direction / np.linalg.norm(direction)) == 2
    normals = np.asarray(mesh.vertex_normals)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-5)
    assert (np.einsum("ij,ij->i", normals, vertices) > 0).mean() > 0.99


def test_alpha_mode_rule():
    rng = np.random.default_rng()
    assert choose_alpha_mode(rng.uniform(0.96, 1.0, 100)) == ("OPAQUE", None)
    cutout = np.concatenate([np.ones(80), np.zeros(18), [0.5, 0.6]])
    assert choose_alpha_mode(cutout) == ("MASK", 0.5)
    assert choose_alpha_mode(rng.uniform(0.2, 0.8, 100)) == ("BLEND", None)


def test_alpha_mode_reaches_the_material(sphere):
    grid, coords, vertices, faces = sphere
    attributes = np.full((len(coords), 6), 0.5, np.float32)
    mesh = to_glb(vertices, faces, coords, attributes, grid, texture_size=64)
    assert mesh.visual.material.alphaMode == "BLEND"
    assert (_texture(mesh, "baseColorTexture")[..., 3] == 128).all()
    forced = to_glb(vertices, faces, coords, attributes, grid, texture_size=64, alpha_mode="MASK")
    assert forced.visual.material.alphaMode == "MASK" and forced.visual.material.alphaCutoff == 0.5


def test_unwrap_falls_back_to_triangle_atlas(sphere, monkeypatch, tmp_path):
    from omnivox.ovoxel import export

    grid, coords, vertices, faces = sphere
    value = np.random.default_rng().uniform(0.1, 0.9, 6).astype(np.float32)
    original = export.unwrap_atlas
    monkeypatch.setattr(export, "unwrap_atlas", lambda *a, **k: original(*a, **k, timeout=0.0))
    with pytest.warns(RuntimeWarning, match="one UV chart per triangle"):
        mesh, report = bake_glb(vertices, faces, coords, np.tile(value, (len(coords), 1)), grid, texture_size=256,
                                uv_method=export.UvMethod.XATLAS)
    uv = np.asarray(mesh.visual.uv)
    assert len(uv) == 3 * report.faces and uv.min() > 0 and uv.max() < 1
    assert (_texture(mesh, "baseColorTexture")[..., :3] == np.round(value[:3] * 255)).all()
    assert _validate(save_glb(mesh, tmp_path / "fallback.glb"))["issues"]["numErrors"] == 0


def test_decimation_reaches_face_target(sphere):
    grid, coords, vertices, faces = sphere
    mesh, report = bake_glb(vertices, faces, coords, _position_colours(coords, grid), grid, texture_size=64,
                            decimation_target=1500)
    assert report.input_faces == len(faces) > 1500 >= report.faces == len(mesh.faces)
    assert meshops.signed_volume(mesh.vertices, mesh.faces) == pytest.approx(4 / 3 * np.pi * 0.35 ** 3, rel=0.06)
    assert set(report.timings) >= {"clean", "decimate", "unwrap", "rasterize", "lookup", "fill", "assemble"}


@pytest.mark.parametrize("image_format", ["png", "webp"])
def test_exported_glb_passes_khronos_validator(sphere_glb, tmp_path, image_format, sphere):
    if image_format == "png":
        mesh = sphere_glb[0]
    else:
        grid, coords, vertices, faces = sphere
        mesh = to_glb(vertices, faces, coords, _position_colours(coords, grid), grid, texture_size=64,
                      image_format="webp")
    path = save_glb(mesh, tmp_path / "out" / "sphere.glb")
    report = _validate(path)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
    loaded = trimesh.load(path)
    geometry = next(iter(loaded.geometry.values()))
    assert len(geometry.faces) == len(mesh.faces)
    data = path.read_bytes()
    assert (b"image/webp" in data) == (image_format == "webp")
    assert (b"EXT_texture_webp" in data) == (image_format == "webp")


def test_open_surface_is_double_sided_and_valid(tmp_path):
    plane = trimesh.Trimesh(vertices=[[-0.3, -0.3, 0.01], [0.3, -0.3, 0.01], [0.3, 0.3, 0.01], [-0.3, 0.3, 0.01]],
                            faces=[[0, 1, 2], [0, 2, 3]])
    grid, coords, vertices, faces = _raw_dual_grid_surface(plane, RESOLUTION)
    mesh, report = bake_glb(vertices, faces, coords, _position_colours(coords, grid), grid, texture_size=64)
    assert report.double_sided and mesh.visual.material.doubleSided is True
    path = save_glb(mesh, tmp_path / "plane.glb")
    assert _validate(path)["issues"]["numErrors"] == 0


# ------------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(attributes=a["attributes"][:, :5]), "attributes must have shape"),
        (lambda a: a["attributes"].__setitem__((0, 0), np.nan), "NaN"),
        (lambda a: a["attributes"].__setitem__((0, 0), 3.0), r"\[0, 1\]"),
        (lambda a: a.update(coords=a["coords"] + RESOLUTION), "coords must lie in"),
        (lambda a: a.update(coords=np.concatenate([a["coords"][:1], a["coords"][:-1]])), "duplicate"),
        (lambda a: a.update(coords=a["coords"].astype(np.float32)), "coords must be an integer"),
        (lambda a: a["faces"].__setitem__((0, 0), 10 ** 7), "face indices"),
        (lambda a: a.update(faces=a["faces"][:, :2]), "faces must be"),
        (lambda a: a["vertices"].__setitem__((0, 0), np.inf), "NaN or infinite"),
        (lambda a: a.update(texture_size=10), "texture_size"),
        (lambda a: a.update(image_format="jpg"), "image_format"),
        (lambda a: a.update(alpha_mode="opaque"), "alpha_mode"),
        (lambda a: a.update(decimation_target=2), "decimation_target"),
    ],
)
def test_bad_inputs_raise_value_error(sphere, change, message):
    grid, coords, vertices, faces = sphere
    args = dict(vertices=vertices.copy(), faces=faces.copy(), coords=coords.copy(),
                attributes=_position_colours(coords, grid), grid=grid)
    change(args)
    with pytest.raises(ValueError, match=message):
        to_glb(**args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_duplicate_voxels_are_found_on_the_cuda_path_too(sphere):
    grid, coords, vertices, faces = sphere
    doubled = np.concatenate([coords[:1], coords[:-1]])
    with pytest.raises(ValueError, match="1 duplicate"):
        to_glb(vertices, faces, doubled, _position_colours(doubled, grid), grid, device="cuda")


def test_save_glb_rejects_bad_path_and_mesh(sphere_glb, tmp_path):
    with pytest.raises(ValueError, match=r"\.glb"):
        save_glb(sphere_glb[0], tmp_path / "x.gltf")
    with pytest.raises(ValueError, match="to_glb"):
        save_glb(trimesh.creation.box(), tmp_path / "x.glb")


# ------------------------------------------------------------------------------------------------------------ CLI


def test_cli_export_from_vxz(tmp_path, sphere):
    from typer.testing import CliRunner

    from omnivox.cli import app
    from omnivox.ovoxel.io import write_vxz
    from omnivox.ovoxel.packing import pack_geometry

    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.45)
    grid = Grid.make(RESOLUTION)
    coords, dual, flags = mesh_to_dual_grid(mesh.vertices, mesh.faces, RESOLUTION)
    attributes = np.round(_position_colours(coords, grid) * 255).astype(np.uint8)
    record = pack_geometry(coords, dual, flags, grid)
    record.update(base_color=attributes[:, :3], metallic=attributes[:, 3:4], roughness=attributes[:, 4:5],
                  alpha=attributes[:, 5:6])
    write_vxz(tmp_path / "in.vxz", coords, record)
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(tmp_path / "in.vxz"), str(tmp_path / "out.glb"), "-t", "64"])
    assert result.exit_code == 0, result.output
    assert f"at {RESOLUTION}^3" in result.output and "OPAQUE" in result.output
    assert _validate(tmp_path / "out.glb")["issues"]["numErrors"] == 0

    (tmp_path / "broken.vxz").write_bytes((tmp_path / "in.vxz").read_bytes()[:40])
    result = runner.invoke(app, ["export", str(tmp_path / "broken.vxz"), str(tmp_path / "b.glb")])
    assert result.exit_code == 1 and "broken.vxz" in result.output


# ------------------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
def test_gpu_baking_matches_cpu():
    rng = np.random.default_rng()
    grid = Grid.make(32)
    coords = torch.from_numpy(np.unique(rng.integers(0, 32, (4000, 3)), axis=0))
    attributes = torch.from_numpy(rng.random((len(coords), 6)).astype(np.float32))
    points = torch.from_numpy(rng.random((20000, 3)).astype(np.float32) - 0.5)
    cpu_values, cpu_found = sample_sparse_trilinear(coords, attributes, grid, points)
    gpu_values, gpu_found = sample_sparse_trilinear(coords.cuda(), attributes.cuda(), grid, points.cuda())
    assert torch.equal(cpu_found, gpu_found.cpu())
    assert torch.allclose(cpu_values, gpu_values.cpu(), atol=1e-5)
    uvs = torch.from_numpy(rng.random((300, 2)).astype(np.float32))
    faces = torch.arange(300).view(100, 3)
    cpu_image, cpu_mask = rasterize_uv(uvs, faces, uvs, 128)
    gpu_image, gpu_mask = rasterize_uv(uvs.cuda(), faces.cuda(), uvs.cuda(), 128)
    assert torch.equal(cpu_mask, gpu_mask.cpu())
    assert torch.allclose(cpu_image, gpu_image.cpu(), atol=1e-5)


def test_rasterize_uv_numba_matches_the_torch_path():
    """The CPU kernel against the PyTorch path on a fresh jittered grid of UV triangles (shared edges, both
    windings, triangles partly outside the texture): the same texels covered, the same values."""
    rng = np.random.default_rng()
    n, size = 40, 256
    grid = np.stack(np.meshgrid(np.linspace(-0.05, 1.05, n + 1), np.linspace(-0.05, 1.05, n + 1), indexing="ij"), -1)
    uvs = grid.reshape(-1, 2) + rng.uniform(-0.3, 0.3, ((n + 1) ** 2, 2)) / n
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    a = (i * (n + 1) + j).reshape(-1)
    b = a + n + 1
    faces = np.concatenate([np.stack([a, b, b + 1], 1), np.stack([a, a + 1, b + 1], 1)])  # two windings
    values = rng.random((len(uvs), 4)).astype(np.float32) + 0.5
    args = (torch.from_numpy(uvs), torch.from_numpy(faces), torch.from_numpy(values), size)
    reference_image, reference_mask = rasterize_uv(*args, backend="torch")
    image, mask = rasterize_uv(*args, backend="numba")
    assert reference_mask.sum() > 0.9 * size * size and torch.equal(mask, reference_mask)
    # A texel on a shared edge may take either triangle's value (equal up to rounding): a relative bound.
    assert float((image - reference_image).abs().max() / reference_image.abs().max()) < 1e-5


def test_bake_kernels_name_their_backends_in_errors():
    image, mask = torch.rand(8, 8, 3), torch.ones(8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="backend must be one of .*got 'cuda'"):
        fill_gutter(image, mask, backend="cuda")
    uvs, faces = torch.rand(3, 2), torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match="backend must be one of .*got 'numpy'"):
        rasterize_uv(uvs, faces, torch.rand(3, 2), 8, backend="numpy")


def test_slits_filled_without_area_are_dropped_not_exported():
    """wallhole.obj at 256^3 without decimation: some of its small boundary loops run along collinear vertices, and
    filling them made faces without area, which the atlas refused (bench_fidelity found it). They are dropped."""
    from omnivox.assets import load_asset
    from omnivox.ovoxel.asset import OVoxel
    from omnivox.ovoxel.convert import scene_to_ovoxel
    from omnivox.ovoxel.export import prepare_surface
    from tests.conftest import _assets_dir

    # As a .vxz reads back (8-bit dual vertices: what puts a loop's vertices exactly on one line).
    record = scene_to_ovoxel(load_asset(_assets_dir() / "mesh" / "wallhole.obj").normalized(), 256)
    asset = OVoxel.from_file_attributes(record.pop("coords"), record, 256)
    v, f = asset.vertices.numpy(), asset.faces.numpy()
    out_v, out_f, _, holes = prepare_surface(v, f)
    assert holes > 0 and len(out_f) > 0.9 * len(f)
    assert meshops.face_areas(out_v, out_f).min() > 0
    assert np.array_equal(np.unique(out_f), np.arange(len(out_v)))  # no vertex left without a face


def _prepare_surface_step_by_step(v, f, target):
    """prepare_surface's CPU path as first written, every pass building its own edge table (the reference for the
    exporter's shared tables)."""
    from omnivox.ovoxel import export

    edge = export._voxel_edge(v, f, torch.device("cpu"))
    hole_limit = max(3e-2, export.PIN_HOLE_PERIMETER * edge)
    holes = 0

    def fill(v, f):
        nonlocal holes
        before = len(f)
        v, f = meshops.fill_small_holes(v, f, hole_limit)
        fans = meshops.remove_degenerate_faces(v, f[before:])
        holes += len(np.unique(fans[:, 2]))
        return meshops.compact(v, np.concatenate([f[:before], fans])) if len(fans) < len(f) - before else (v, f)

    v, f = meshops.clean(v, f, 1e-5)
    keep = meshops.remove_fringes(v, f, export.FRINGE_WIDTH * edge)
    if not keep.all():
        component = meshops.face_components(f)
        filled_v, filled = meshops.fill_small_holes(v, f[keep], hole_limit)
        area, rim = meshops.opening_areas(filled_v, filled, return_faces=True)
        rim = rim[(area >= export.OPENING_AREA * edge ** 2) & (rim < keep.sum())]
        still_open = np.zeros(component.max() + 1, bool)
        still_open[component[np.nonzero(keep)[0][rim]]] = True
        f = f[keep | still_open[component]]
    v, f = meshops.compact(v, f)
    if not meshops.consistently_wound(f):
        f = meshops.orient_faces(v, f)[0]
    v, f = fill(v, f)
    for stage in (3 * target, target):
        v, f = meshops.clean(*meshops.decimate(v, f, stage), 1e-5)
        if stage != target:
            v, f = fill(v, f)
    f, closed = meshops.orient_faces(v, f)
    return v.astype(np.float32), f, closed, holes


def test_prepare_surface_with_shared_edge_tables_equals_the_step_by_step_passes(assets):
    """A triangle soup at 64^3 takes every branch of the CPU clean-up (fringes in several rounds, inconsistent
    winding, holes, two decimation stages): sharing one edge table between the passes changes no face."""
    from omnivox.assets import load_asset
    from omnivox.ovoxel.export import prepare_surface

    scene = load_asset(assets / "mesh/soup.stl").normalized()
    coords, dual, flags = mesh_to_dual_grid(scene.vertices, scene.faces, 64)
    v, f = dual_grid_to_mesh(coords, to_local(coords, dual, 1 / 64), flags, 64)
    v, f = np.asarray(v, np.float32), np.asarray(f, np.int64)
    assert not meshops.consistently_wound(meshops.clean(v, f, 1e-5)[1])
    target = len(f) // 8
    got = prepare_surface(v, f, decimation_target=target)
    expected = _prepare_surface_step_by_step(v, f, target)
    for a, b in zip(got[:3], expected[:3]):
        np.testing.assert_array_equal(a, b)
    assert got[3] == expected[3] > 0
