"""omnivox.ovoxel.convert: geometry and materials from one scan equal the two public conversions, bit for bit."""

import numpy as np
import pytest
import torch

from omnivox.assets import load_asset
from omnivox.ovoxel import Grid, mesh_to_dual_grid, voxelize_materials
from omnivox.ovoxel.convert import scan_scene, scene_to_ovoxel
from omnivox.ovoxel.dual_grid import dual_grid_from_crossings, shifted_triangles
from omnivox.ovoxel.materials import materials_from_crossings
from omnivox.ovoxel.packing import pack_geometry
from omnivox.ovoxel.scan import scan_triangles

RESOLUTION = 64


@pytest.fixture
def textured(assets):
    return load_asset(assets / "gltf" / "Fox.glb").normalized()


def test_scene_to_ovoxel_equals_geometry_and_materials_apart(textured):
    record = scene_to_ovoxel(textured, RESOLUTION, emissive=True)
    coords, dual, flags = mesh_to_dual_grid(textured.vertices, textured.faces, RESOLUTION)
    material_coords, attributes = voxelize_materials(textured, RESOLUTION, emissive=True)
    assert len(coords) > 1000
    np.testing.assert_array_equal(material_coords.numpy(), coords)  # the public paths line up on their own too
    expected = {"coords": coords, **pack_geometry(coords, dual, flags, Grid.make(RESOLUTION)),
                **{name: value.numpy() for name, value in attributes.items()}}
    assert set(record) == set(expected)
    for name, value in expected.items():
        assert record[name].dtype == value.dtype, name
        np.testing.assert_array_equal(record[name], value, err_msg=name)


def test_scene_to_ovoxel_scans_once(textured, monkeypatch):
    from omnivox.ovoxel.kernels import scan_numba

    calls = []
    original = scan_numba.scan_crossings
    monkeypatch.setattr(scan_numba, "scan_crossings", lambda *a: calls.append(1) or original(*a))
    scene_to_ovoxel(textured, 32)
    assert len(calls) == 1
    mesh_to_dual_grid(textured.vertices, textured.faces, 32)
    voxelize_materials(textured, 32)
    assert len(calls) == 3  # the two public conversions scan once each


def test_torch_scan_feeds_both_halves_like_the_torch_backends(textured):
    """The CUDA path of scene_to_ovoxel (a torch scan shared by both halves), run on the CPU."""
    grid = Grid.make(RESOLUTION)
    scan = scan_scene(textured, grid)
    crossings = scan_triangles(torch.from_numpy(shifted_triangles(scan.vertices, scan.faces, grid)), grid)
    assert crossings.on_torch and len(crossings) == len(scan.crossings)
    coords, dual, flags = dual_grid_from_crossings(crossings, scan.vertices, scan.faces)
    for ours, theirs in zip((coords, dual, flags), mesh_to_dual_grid(textured.vertices, textured.faces, RESOLUTION,
                                                                      backend="torch")):
        np.testing.assert_array_equal(ours.numpy(), theirs)
    material_coords, attributes = materials_from_crossings(textured, crossings, 0.0, False, use_numba=False)
    expected_coords, expected = voxelize_materials(textured, RESOLUTION, backend="torch")
    np.testing.assert_array_equal(material_coords.numpy(), coords.numpy())
    np.testing.assert_array_equal(expected_coords.numpy(), coords.numpy())
    for name in expected:
        np.testing.assert_array_equal(attributes[name].numpy(), expected[name].numpy(), err_msg=name)


def test_deprecated_home_forwards():
    from omnivox.ovoxel import materials

    with pytest.warns(DeprecationWarning, match="omnivox.ovoxel.convert"):
        assert materials.scene_to_ovoxel is scene_to_ovoxel
