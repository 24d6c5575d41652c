"""Gradients of the rasterizer's outputs: attributes, vertex positions through the barycentrics, and the
antialiased silhouette, each checked against finite differences (float64)."""

import math

import torch

from omnivox.render import antialias, interpolate, look_at, intrinsics_from_fov, rasterize, render_mesh

from tests.render.test_rasterize import uv_sphere


def _camera(distance: float = 3.0):
    extrinsics = look_at(torch.tensor([[0.0, 0.0, -distance]], dtype=torch.float64),
                         torch.zeros(3, dtype=torch.float64), up=(0.0, 1.0, 0.0))
    return extrinsics, intrinsics_from_fov(torch.tensor([math.radians(30)], dtype=torch.float64))


def _triangle():
    return (torch.tensor([[-0.45, -0.3, 0.1], [0.5, -0.4, -0.05], [0.05, 0.52, 0.2]], dtype=torch.float64),
            torch.tensor([[0, 1, 2]]))


def test_attribute_gradient_is_exact():
    vertices, faces = uv_sphere(0.5, 8, 16, dtype=torch.float64)
    extrinsics, intrinsics = _camera()
    fragments = rasterize(vertices, faces, extrinsics, intrinsics, (12, 12), backend="torch")
    attrs = torch.randn(vertices.shape[0], 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: interpolate(a, faces, fragments), (attrs,), eps=1e-6, atol=1e-8)


def test_depth_gradient_wrt_vertices_matches_finite_differences():
    vertices, faces = _triangle()
    extrinsics, intrinsics = _camera()
    weights = torch.rand(1, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5

    def loss(v):
        fragments = rasterize(v, faces, extrinsics, intrinsics, (32, 32), backend="torch")
        attr = interpolate(torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64), faces, fragments)[..., 0]
        return (weights * (fragments.depth + attr)).sum(), fragments.triangle_id

    v = vertices.clone().requires_grad_(True)
    value, ids = loss(v)
    value.backward()
    eps = 1e-6
    for i in range(3):
        for k in range(3):
            plus, minus = vertices.clone(), vertices.clone()
            plus[i, k] += eps
            minus[i, k] -= eps
            (fp, ip), (fm, im) = loss(plus), loss(minus)
            assert torch.equal(ip, ids) and torch.equal(im, ids)  # no pixel changes coverage at this step
            fd = (fp - fm) / (2 * eps)
            assert abs(float(v.grad[i, k]) - float(fd)) <= 1e-5 * max(1.0, abs(float(fd)))


def _aa_mask_sum(v, faces, extrinsics, intrinsics, res, weights=None):
    fragments = rasterize(v, faces, extrinsics, intrinsics, res, backend="torch")
    first = type(fragments)(fragments.triangle_id[:, :1], fragments.bary[:, :1], fragments.depth[:, :1])
    mask = (first.triangle_id[:, 0] >= 0).to(torch.float64).unsqueeze(-1)
    aa = antialias(mask, first, v, faces, extrinsics, intrinsics)[..., 0]
    return (aa if weights is None else aa * weights).sum()


def test_antialiased_mask_area_and_silhouette_gradient():
    """The antialiased coverage sums to the projected area, and its gradient w.r.t. the vertices matches the
    analytic derivative of that area."""
    vertices, faces = _triangle()
    extrinsics, intrinsics = _camera()
    res = (48, 48)
    from omnivox.render import project

    def area(v):
        p, _ = project(v, extrinsics, intrinsics, res)
        p = p[0]
        return 0.5 * ((p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1]) - (p[1, 1] - p[0, 1]) * (p[2, 0] - p[0, 0])).abs()

    v = vertices.clone().requires_grad_(True)
    total = _aa_mask_sum(v, faces, extrinsics, intrinsics, res)
    total.backward()
    exact = area(vertices)
    assert abs(total.item() - exact.item()) / exact.item() < 0.01
    va = vertices.clone().requires_grad_(True)
    area(va).backward()
    rel = (v.grad - va.grad).norm() / va.grad.norm()
    assert float(rel) < 0.05  # measured 0.03: the edge-pair rule approximates coverage near the corners
    # Without antialiasing the (hard) mask has no gradient at all.
    hard = rasterize(v, faces, extrinsics, intrinsics, res, backend="torch").triangle_id >= 0
    assert not hard.requires_grad


def test_antialiased_mask_gradient_matches_finite_differences():
    # The antialiased image is piecewise smooth in the vertex positions (continuous where an edge crosses a
    # pixel centre, with kinks near corners), so small central differences of a weighted mask match autograd.
    vertices, faces = _triangle()
    extrinsics, intrinsics = _camera()
    res = (40, 40)
    weights = torch.rand(1, 40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weights = torch.nn.functional.avg_pool2d(weights.unsqueeze(0), 5, 1, 2)[0]  # smooth weights
    v = vertices.clone().requires_grad_(True)
    _aa_mask_sum(v, faces, extrinsics, intrinsics, res, weights).backward()
    eps = 1e-4  # about 0.0025 px
    for i in range(3):
        for k in range(2):
            plus, minus = vertices.clone(), vertices.clone()
            plus[i, k] += eps
            minus[i, k] -= eps
            fd = (_aa_mask_sum(plus, faces, extrinsics, intrinsics, res, weights)
                  - _aa_mask_sum(minus, faces, extrinsics, intrinsics, res, weights)) / (2 * eps)
            assert abs(float(v.grad[i, k]) - float(fd)) <= 1e-4 * abs(float(fd)) + 1e-3


def test_render_mesh_gradients_flow_to_vertices_and_attributes():
    vertices, faces = uv_sphere(0.4, 8, 16, dtype=torch.float64)
    extrinsics, intrinsics = _camera()
    v = vertices.clone().requires_grad_(True)
    colors = torch.rand(vertices.shape[0], 3, dtype=torch.float64, requires_grad=True)
    out = render_mesh(v, faces, extrinsics, intrinsics, (32, 32), vertex_attrs=colors)
    (out["mask"].sum() + out["depth"].sum() + out["normal"].sum() + out["attrs"].sum()).backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and float(v.grad.abs().sum()) > 0
    assert colors.grad is not None and float(colors.grad.abs().sum()) > 0
    # The mask's gradient pushes silhouette vertices outwards (growing the sphere grows the mask).
    v2 = vertices.clone().requires_grad_(True)
    render_mesh(v2, faces, extrinsics, intrinsics, (32, 32))["mask"].sum().backward()
    radial = (v2.grad * vertices).sum()
    assert float(radial) > 0
