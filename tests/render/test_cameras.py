"""Cameras: look-at axes, normalised intrinsics, the spec 5.1 projection, and the camera generators."""

import math

import pytest
import torch

from omnivox.render import (
    intrinsics_from_fov,
    look_at,
    orbit_cameras,
    project,
    projection_matrix,
    random_sphere_cameras,
)


def test_look_at_axes_follow_opencv():
    eye = torch.tensor([[0.3, -2.0, 0.5]], dtype=torch.float64)
    target = torch.tensor([0.1, 0.2, -0.1], dtype=torch.float64)
    extrinsics = look_at(eye, target)
    rotation = extrinsics[0, :3, :3]
    assert torch.allclose(rotation @ rotation.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.linalg.det(rotation).item() == pytest.approx(1.0)
    to_cam = lambda p: rotation @ p + extrinsics[0, :3, 3]  # noqa: E731
    assert torch.allclose(to_cam(eye[0]), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    ahead = to_cam(target)
    assert ahead[2] > 0 and torch.allclose(ahead[:2], torch.zeros(2, dtype=torch.float64), atol=1e-12)
    # World up (+Z) points up in the image, which is -y in OpenCV camera space.
    up = rotation @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    assert up[1] < 0 and abs(float(up[0])) < 1e-12
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.tensor([[0.0, 0.0, 2.0]]), torch.zeros(3))


def test_intrinsics_and_projection_agree_with_spec():
    fov = math.radians(40)
    intrinsics = intrinsics_from_fov(fov, batch=2)
    assert intrinsics.shape == (2, 3, 3)
    assert intrinsics[0, 0, 0].item() == pytest.approx(0.5 / math.tan(fov / 2))
    extrinsics = look_at(torch.tensor([[0.0, -3.0, 0.0], [2.0, 0.0, 1.0]]), torch.zeros(3))
    # A point on the edge of the field of view lands on the image border.
    edge = torch.tensor([[3.0 * math.tan(fov / 2), 0.0, 0.0]])
    pixels, depth = project(edge, extrinsics[:1], intrinsics[:1], (60, 80))
    assert pixels[0, 0, 0].item() == pytest.approx(0.0, abs=1e-4) or pixels[0, 0, 0].item() == pytest.approx(80.0)
    assert depth[0, 0].item() == pytest.approx(3.0)
    # The clip-space matrix of spec 5.1 gives NDC x = 2u - 1 and y = 2v - 1 (NDC y follows the image rows).
    points = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) * 0.3
    pixels, z = project(points, extrinsics, intrinsics, (60, 80))
    cam = points @ extrinsics[:, :3, :3].transpose(1, 2) + extrinsics[:, :3, 3].unsqueeze(1)
    clip = torch.cat([cam, torch.ones_like(cam[..., :1])], -1) @ projection_matrix(intrinsics, 0.1, 10).transpose(1, 2)
    ndc = clip[..., :3] / clip[..., 3:]
    assert torch.allclose(ndc[..., 0], pixels[..., 0] / 80 * 2 - 1, atol=1e-5)
    assert torch.allclose(ndc[..., 1], pixels[..., 1] / 60 * 2 - 1, atol=1e-5)
    near_point = torch.tensor([[0.0, 0.0, 0.1]]).expand(2, 1, 3)
    near_ndc = torch.cat([near_point, torch.ones(2, 1, 1)], -1) @ projection_matrix(intrinsics, 0.1, 10).transpose(1, 2)
    assert torch.allclose(near_ndc[..., 2] / near_ndc[..., 3], torch.full((2, 1), -1.0), atol=1e-5)


def test_orbit_cameras_form_a_turntable():
    extrinsics, intrinsics = orbit_cameras(8, radius=2.5, elevation=math.radians(30), target=(0.1, 0.0, 0.2))
    assert extrinsics.shape == (8, 4, 4) and intrinsics.shape == (8, 3, 3)
    centres = -(extrinsics[:, :3, :3].transpose(1, 2) @ extrinsics[:, :3, 3:]).squeeze(-1)
    offset = centres - torch.tensor([0.1, 0.0, 0.2])
    assert torch.allclose(offset.norm(dim=-1), torch.full((8,), 2.5), atol=1e-5)
    assert torch.allclose(offset[:, 2], torch.full((8,), 2.5 * math.sin(math.radians(30))), atol=1e-5)
    yaw = torch.atan2(offset[:, 0], offset[:, 1])
    steps = torch.remainder(yaw.diff(), 2 * math.pi)
    assert torch.allclose(steps, torch.full((7,), 2 * math.pi / 8), atol=1e-5)


def test_random_sphere_cameras_follow_the_loss_recipe():
    generator = torch.Generator().manual_seed(0)
    extrinsics, intrinsics = random_sphere_cameras(500, generator)
    radius = extrinsics[:, :3, 3].norm(dim=-1)
    assert float(radius.min()) >= 2.0 - 1e-4 and float(radius.max()) <= 100.0 + 1e-3
    assert 2.3 < float(radius.median()) < 3.4  # spec: median about 2.8
    # FoV = 2 asin(0.5 / r): the radius-0.5 sphere's silhouette touches the image border.
    fov = 2 * torch.atan(0.5 / intrinsics[:, 0, 0])
    assert torch.allclose(fov, 2 * torch.asin(0.5 / radius), atol=1e-5)
    again, _ = random_sphere_cameras(500, torch.Generator().manual_seed(0))
    assert torch.equal(again, extrinsics)
    # Directions cover the sphere evenly: the mean direction is near zero.
    centres = -(extrinsics[:, :3, :3].transpose(1, 2) @ extrinsics[:, :3, 3:]).squeeze(-1)
    assert float((centres / radius.unsqueeze(-1)).mean(0).norm()) < 0.1


def test_camera_validation():
    with pytest.raises(ValueError, match="fov"):
        intrinsics_from_fov(math.pi)
    with pytest.raises(ValueError, match="extrinsics"):
        project(torch.zeros(2, 3), torch.eye(4), intrinsics_from_fov(1.0), (4, 4))
    with pytest.raises(ValueError, match="batch"):
        project(torch.zeros(2, 3), torch.eye(4).repeat(2, 1, 1), intrinsics_from_fov(1.0), (4, 4))
