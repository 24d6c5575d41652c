"""`omnivox.ovoxel.asset.OVoxel`: the one way from a `.vxz` file (or a generated grid) to a textured asset."""

import warnings

import numpy as np
import pytest
import torch

from omnivox.ovoxel.asset import OVoxel, infer_resolution
from omnivox.ovoxel.dual_grid import mesh_to_dual_grid
from omnivox.ovoxel.extract import dual_grid_to_mesh
from omnivox.ovoxel.grid import Grid
from omnivox.ovoxel.io import read_vxz, write_vxz
from omnivox.ovoxel.packing import PBR_ATTRIBUTES, pack_geometry, require_attributes, stack_attributes, unpack_geometry
from tests.ovoxel import shapes

RESOLUTION = 16


@pytest.fixture
def record():
    """A converted box as a file holds it: coords and uint8 geometry + PBR attributes."""
    box = shapes.box(shapes.TRANSLATION)
    coords, dual, flags = (np.asarray(a) for a in mesh_to_dual_grid(box.vertices, box.faces, RESOLUTION))
    rng = np.random.default_rng(0)
    attrs = {**pack_geometry(coords, dual, flags, Grid.make(RESOLUTION)),
             "base_color": rng.integers(0, 256, (len(coords), 3), dtype=np.uint8),
             "metallic": rng.integers(0, 256, (len(coords), 1), dtype=np.uint8),
             "roughness": rng.integers(0, 256, (len(coords), 1), dtype=np.uint8),
             "alpha": np.full((len(coords), 1), 255, np.uint8)}
    return coords, attrs


def test_infer_resolution_is_the_smallest_power_of_two_above_the_largest_index():
    assert [infer_resolution(m) for m in (0, 1, 2, 3, 4, 511, 512, 1023)] == [1, 2, 4, 4, 8, 512, 1024, 1024]


def test_from_vxz_equals_the_steps_it_replaces(record, tmp_path):
    """Same mesh as `dual_grid_to_mesh` on the file's geometry, same (N, 6) channels as byte / 255."""
    coords, attrs = record
    path = tmp_path / "box.vxz"
    write_vxz(path, coords, attrs)
    asset = OVoxel.from_vxz(path)
    file_coords, file_attrs = read_vxz(path)
    assert asset.resolution == infer_resolution(int(file_coords.max())) == RESOLUTION
    local, flags = unpack_geometry(file_attrs)
    vertices, faces = dual_grid_to_mesh(file_coords, local, flags, RESOLUTION)
    assert np.array_equal(asset.vertices.numpy(), vertices) and np.array_equal(asset.faces.numpy(), faces)
    expected = stack_attributes(file_attrs, len(file_coords)).astype(np.float32) / 255.0
    assert expected.shape == (len(file_coords), 6)
    assert np.array_equal(asset.attribute_matrix(), expected)
    assert np.array_equal(asset.coords.numpy(), file_coords)


def test_save_vxz_writes_back_the_same_bytes(record, tmp_path):
    coords, attrs = record
    write_vxz(tmp_path / "a.vxz", coords, attrs)
    OVoxel.from_vxz(tmp_path / "a.vxz").save_vxz(tmp_path / "b.vxz")
    (coords_a, attrs_a), (coords_b, attrs_b) = read_vxz(tmp_path / "a.vxz"), read_vxz(tmp_path / "b.vxz")
    assert np.array_equal(coords_a, coords_b) and sorted(attrs_a) == sorted(attrs_b)
    for name in attrs_a:
        assert np.array_equal(attrs_a[name], attrs_b[name]), name


def test_missing_pbr_channels_and_empty_files_are_refused(record, tmp_path):
    coords, attrs = record
    geometry_only = {k: v for k, v in attrs.items() if k not in ("metallic", "alpha")}
    with pytest.raises(ValueError, match=r"no material attributes \['metallic', 'alpha'\]"):
        OVoxel.from_file_attributes(coords, geometry_only)
    with pytest.raises(ValueError, match="holds no voxels"):
        OVoxel.from_file_attributes(coords[:0], {k: v[:0] for k, v in attrs.items()})
    with pytest.raises(ValueError, match="; hint$"):
        require_attributes(["vertices"], "f.vxz", hint="; hint")
    require_attributes(PBR_ATTRIBUTES, "f.vxz")  # all there: no error


def test_given_mesh_is_used_instead_of_extracting(record):
    coords, attrs = record
    mesh = (torch.zeros(2, 3), torch.zeros(0, 3, dtype=torch.int64))
    asset = OVoxel.from_file_attributes(coords, attrs, RESOLUTION, mesh=mesh)
    assert asset.vertices.shape == (2, 3) and asset.faces.shape == (0, 3)


def test_old_names_still_work_with_a_deprecation_warning(record, tmp_path):
    import omnivox.pipelines as pipelines
    from omnivox.ovoxel import asset

    with pytest.warns(DeprecationWarning, match="omnivox.ovoxel.asset.OVoxel"):
        from omnivox.pipelines.generated import Generated
    assert Generated is OVoxel
    with pytest.warns(DeprecationWarning):
        from omnivox.pipelines.generated import ATTRIBUTE_NAMES, ATTRIBUTE_SLICES
    assert ATTRIBUTE_NAMES == PBR_ATTRIBUTES and ATTRIBUTE_SLICES is asset.PBR_SLICES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert pipelines.Generated is OVoxel
    coords, attrs = record
    write_vxz(tmp_path / "a.vxz", coords, attrs)
    with pytest.warns(DeprecationWarning, match="from_vxz"):
        old = OVoxel.load_vxz(tmp_path / "a.vxz", RESOLUTION)
    assert torch.equal(old.faces, OVoxel.from_vxz(tmp_path / "a.vxz").faces)


def test_to_glb_with_a_game_profile_writes_the_game_file_and_its_report(record, tmp_path):
    import json

    import trimesh

    from omnivox.ovoxel.game import GameAsset, GameProfile

    coords, attrs = record
    asset = OVoxel.from_file_attributes(coords, attrs, RESOLUTION)
    path = tmp_path / "box.glb"
    game = asset.to_glb(path, profile=GameProfile(faces=64, texture_size=64, normal_map=False, occlusion=False))
    assert isinstance(game, GameAsset)
    report = json.loads((tmp_path / "box.report.json").read_text())
    assert report["profile"]["faces"] == 64
    scene = trimesh.load(path, file_type="glb")  # an independent reader opens it
    assert sum(len(g.faces) for g in scene.geometry.values()) <= 64
    # Without a profile the plain export is unchanged: a trimesh.Trimesh.
    assert isinstance(asset.to_glb(texture_size=64), trimesh.Trimesh)
    # The module-level exporter takes the profile the same way.
    from omnivox.ovoxel.export import to_glb

    direct = to_glb(asset.vertices.numpy(), asset.faces.numpy(), asset.coords.numpy(), asset.attribute_matrix(),
                    asset.grid, profile=GameProfile(faces=64, texture_size=64, normal_map=False, occlusion=False))
    assert isinstance(direct, GameAsset) and direct.to_glb_bytes()[:4] == b"glTF"
