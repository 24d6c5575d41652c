"""Deferred-shading lookups: texel reads with wrap modes and mip selection, a textured quad rendered through
the rasterizer, trilinear sparse-volume lookups against a dense float64 reference, and normals."""

import math

import pytest
import torch
import torch.nn.functional as F

from omnivox.render import (
    face_normals,
    intrinsics_from_fov,
    look_at,
    mip_pyramid,
    render_mesh,
    sample_sparse_volume,
    sample_texture,
    vertex_normals,
)

from tests.render.test_rasterize import uv_sphere


def _bilinear_reference(texture, uv, wrap):
    """Float64 loop-free reference: OpenGL bilinear with texel centres at (i + 0.5) / size."""
    tex = texture.double()
    h, w = tex.shape[:2]
    x = uv[..., 0].double() * w - 0.5
    y = uv[..., 1].double() * h - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0

    def wrap_index(i, n):
        i = i.long()
        if wrap == "repeat":
            return i % n
        if wrap == "clamp":
            return i.clamp(0, n - 1)
        m = i % (2 * n)
        return torch.where(m < n, m, 2 * n - 1 - m)

    xs = [wrap_index(x0, w), wrap_index(x0 + 1, w)]
    ys = [wrap_index(y0, h), wrap_index(y0 + 1, h)]
    out = 0
    for a, wy in ((0, 1 - fy), (1, fy)):
        for b, wx in ((0, 1 - fx), (1, fx)):
            out = out + (wy * wx).unsqueeze(-1) * tex[ys[a], xs[b]]
    return out


def test_texel_centres_read_exact_texels():
    texture = torch.rand(6, 10, 3, generator=torch.Generator().manual_seed(0))
    i, j = torch.meshgrid(torch.arange(6), torch.arange(10), indexing="ij")
    uv = torch.stack([(j + 0.5) / 10, (i + 0.5) / 6], -1)
    assert torch.allclose(sample_texture(texture, uv, mipmaps=False), texture, atol=1e-6)
    assert torch.equal(sample_texture(texture, uv, filter="nearest"), texture)


@pytest.mark.parametrize("wrap", ["repeat", "clamp", "mirror"])
def test_wrap_modes_match_reference(wrap):
    generator = torch.Generator().manual_seed(1)
    texture = torch.rand(5, 7, 2, generator=generator) + 0.1
    uv = torch.rand(500, 2, generator=generator, dtype=torch.float64) * 5 - 2  # well outside [0, 1]
    got = sample_texture(texture.double(), uv, wrap=wrap, mipmaps=False)
    ref = _bilinear_reference(texture, uv, wrap)
    assert float(((got - ref).abs() / ref.abs()).max()) < 1e-10
    # Spot checks of the wrap semantics with nearest sampling: u = -0.05 on a 10-texel row.
    row = torch.arange(10, dtype=torch.float32).view(1, 10, 1)
    value = sample_texture(row, torch.tensor([[-0.05, 0.5]]), wrap=wrap, filter="nearest").item()
    assert value == {"repeat": 9.0, "clamp": 0.0, "mirror": 0.0}[wrap]
    value = sample_texture(row, torch.tensor([[1.15, 0.5]]), wrap=wrap, filter="nearest").item()
    assert value == {"repeat": 1.0, "clamp": 9.0, "mirror": 8.0}[wrap]


def test_mip_level_selection():
    generator = torch.Generator().manual_seed(2)
    texture = torch.rand(64, 64, 3, generator=generator, dtype=torch.float64)
    levels = mip_pyramid(texture)
    assert [lv.shape[0] for lv in levels] == [64, 32, 16, 8, 4, 2, 1]
    assert torch.allclose(levels[-1][0, 0], texture.mean(dim=(0, 1)))
    uv = torch.rand(200, 2, generator=generator, dtype=torch.float64)
    # A footprint of 4 texels per pixel selects level 2 exactly; 1 texel (or less) selects level 0.
    for texels, level in ((4.0, 2), (1.0, 0), (0.25, 0), (1e6, 6)):
        derivatives = torch.tensor([texels / 64, 0.0, 0.0, texels / 64 * 0.5], dtype=torch.float64).expand(200, 4)
        got = sample_texture(texture, uv, uv_derivatives=derivatives)
        assert torch.allclose(got, _bilinear_reference(levels[level], uv, "repeat"), atol=1e-12)
    # Between levels the two nearest are blended: 2^2.5 texels -> halfway between levels 2 and 3.
    derivatives = torch.tensor([2 ** 2.5 / 64, 0.0, 0.0, 0.0], dtype=torch.float64).expand(200, 4)
    got = sample_texture(texture, uv, uv_derivatives=derivatives)
    expected = 0.5 * (_bilinear_reference(levels[2], uv, "repeat") + _bilinear_reference(levels[3], uv, "repeat"))
    assert torch.allclose(got, expected, atol=1e-12)


def test_textured_quad_shows_its_texels():
    # A quad filling the view head-on, 1 texel per pixel: the rendered texture is the texture itself.
    size = 16
    texture = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(3))
    vertices = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    # Camera on -z looking at +z with up = +y: image x = world x, image y (down) = world -y.
    uvs = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    extrinsics = look_at(torch.tensor([[0.0, 0.0, -2.0]]), torch.zeros(3), up=(0.0, 1.0, 0.0))
    intrinsics = intrinsics_from_fov(2 * math.atan(0.5))  # exactly spans [-1, 1] at distance 2
    out = render_mesh(vertices, faces, extrinsics, intrinsics, (size, size), uvs=uvs, texture=texture,
                      antialias_edges=False)
    # The camera's x axis is world -x here (looking along +z with y up), so the image is mirrored in u.
    assert torch.allclose(out["texture"][0], texture.flip(1), atol=1e-5)
    assert torch.allclose(out["uv_grad"][0][..., 0].abs(), torch.full((size, size), 1 / size), atol=1e-5)
    # Four times farther the quad covers 4 x 4 pixels, 4 texels per pixel: mip level 2, read at its texel centres.
    extrinsics_far = look_at(torch.tensor([[0.0, 0.0, -8.0]]), torch.zeros(3), up=(0.0, 1.0, 0.0))
    far = render_mesh(vertices, faces, extrinsics_far, intrinsics, (size, size), uvs=uvs, texture=texture,
                      antialias_edges=False)
    level2 = mip_pyramid(texture)[2]
    assert torch.allclose(far["texture"][0][6:10, 6:10], level2.flip(1), atol=1e-5)


def test_sparse_volume_matches_dense_trilinear():
    generator = torch.Generator().manual_seed(4)
    res = 8
    occupancy = torch.rand(res, res, res, generator=generator) < 0.4
    coords = occupancy.nonzero()
    attributes = torch.randn(coords.shape[0], 3, generator=generator, dtype=torch.float64) + 2.0
    dense = torch.zeros(3, res, res, res, dtype=torch.float64)
    dense[:, coords[:, 0], coords[:, 1], coords[:, 2]] = attributes.T
    points = torch.rand(400, 3, generator=generator, dtype=torch.float64) * 1.1 - 0.55
    got = sample_sparse_volume(points, coords, attributes, res)
    # grid_sample (align_corners=False) over the unit box: its grid coordinate order is (x=W, y=H, z=D).
    grid = (points * 2).flip(-1).view(1, 1, 1, -1, 3)
    ref = F.grid_sample(dense.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0, :, 0, 0].T
    assert float((got - ref).abs().max()) < 1e-12
    # Gradients reach the attributes.
    attrs = attributes.clone().requires_grad_(True)
    sample_sparse_volume(points, coords, attrs, res).sum().backward()
    assert float(attrs.grad.abs().sum()) > 0
    # normalize=True: a constant field reads back the constant wherever any neighbour is active.
    const = torch.full((coords.shape[0], 1), 0.7, dtype=torch.float64)
    values = sample_sparse_volume(points, coords, const, res, normalize=True)[:, 0]
    found = sample_sparse_volume(points, coords, torch.ones_like(const), res)[:, 0] > 0
    assert torch.allclose(values[found], torch.full_like(values[found], 0.7))


def test_sphere_normals():
    vertices, faces = uv_sphere(1.0, 16, 32)
    normals = vertex_normals(vertices, faces)
    assert float((normals * vertices).sum(-1).min()) > 0.99
    fn = face_normals(vertices, faces)
    centroid = vertices[faces].mean(1)
    assert float((fn * F.normalize(centroid, dim=-1)).sum(-1).min()) > 0.98  # outward, counter-clockwise front


def test_sample_texture_rejects_bad_arguments():
    with pytest.raises(ValueError, match="wrap"):
        sample_texture(torch.rand(2, 2, 3), torch.rand(4, 2), wrap="border")
    with pytest.raises(ValueError, match="texture"):
        sample_texture(torch.rand(2, 2), torch.rand(4, 2))


def test_normalized_volume_lookup_agrees_with_the_bake_sampler():
    # `omnivox.ovoxel.bake.sample_sparse_trilinear` renormalises over active neighbours too (and adds a
    # nearest-voxel fallback, disabled here): where its stencil finds voxels, both give the same values.
    from omnivox.ovoxel.bake import sample_sparse_trilinear
    from omnivox.ovoxel.grid import Grid

    generator = torch.Generator().manual_seed(7)
    res = 16
    coords = (torch.rand(res, res, res, generator=generator) < 0.3).nonzero()
    attributes = torch.rand(coords.shape[0], 4, generator=generator)
    points = torch.rand(300, 3, generator=generator) - 0.5
    ours = sample_sparse_volume(points, coords, attributes, res, normalize=True)
    theirs, found = sample_sparse_trilinear(coords, attributes, Grid.make(res), points, fallback_radius=0,
                                            backend="torch")
    assert int(found.sum()) > 100
    assert torch.allclose(ours[found], theirs[found], atol=1e-5)
    assert float(ours[~found].abs().max()) == 0.0


def test_interpolate_rejects_mismatched_batches():
    from omnivox.render import interpolate, orbit_cameras, rasterize

    vertices, faces = uv_sphere(0.4, 6, 12)
    extrinsics, intrinsics = orbit_cameras(2)
    fragments = rasterize(vertices, faces, extrinsics, intrinsics, 8)
    with pytest.raises(ValueError, match="batch 3 but the fragments have 2 cameras"):
        interpolate(torch.zeros(3, vertices.shape[0], 1), faces, fragments)
