"""Exports hold the faces their surface needs: a budget, then halvings while the surface stays within tolerance."""

from __future__ import annotations

import inspect

import numpy as np
import trimesh

from omnivox.ovoxel import export
from tests.assets.test_up_and_uv_conventions import convert
from tests.assets.two_tone import write_two_tone_gltf


def _surface_and_materials(tmp_path, resolution):
    from omnivox.ovoxel.extract import dual_grid_to_mesh
    from omnivox.ovoxel.packing import unpack_geometry

    coords, record = convert(write_two_tone_gltf(tmp_path, shape="cube"), resolution)
    vertices, faces = dual_grid_to_mesh(coords, *unpack_geometry(record), resolution)
    attributes = np.concatenate([record[k].reshape(len(coords), -1)
                                 for k in ("base_color", "metallic", "roughness", "alpha")], axis=1)
    return vertices, faces, coords, attributes


def test_tolerance_export_is_much_smaller_and_stays_on_the_surface(tmp_path):
    resolution = 64
    surface = _surface_and_materials(tmp_path, resolution)
    full, full_report = export.bake_glb(*surface, resolution, texture_size=64, surface_tolerance=None)
    lean, lean_report = export.bake_glb(*surface, resolution, texture_size=64,
                                        surface_tolerance=export.DEFAULT_SURFACE_TOLERANCE)
    assert full_report.faces > 10_000  # a cube at 64^3 extracts to tens of thousands of faces
    assert lean_report.faces * 10 < full_report.faces  # its six flat sides need few of them
    # Measured by trimesh, not omnivox's metric: the lean surface stays within the tolerance of the full one.
    a, _ = trimesh.sample.sample_surface(full, 5000, seed=1)
    b, _ = trimesh.sample.sample_surface(lean, 5000, seed=2)
    deviation = np.concatenate([trimesh.proximity.closest_point(lean, a)[1],
                                trimesh.proximity.closest_point(full, b)[1]]) * resolution  # in voxels
    assert np.quantile(deviation, 0.999) <= 1.2 * export.DEFAULT_SURFACE_TOLERANCE


def test_command_line_defaults_are_the_exporters():
    from omnivox.cli.export_commands import export_glb
    from omnivox.cli.generate_commands import generate

    for command, faces in ((export_glb, "decimation_target"), (generate, "faces")):
        parameters = inspect.signature(command).parameters
        assert parameters[faces].default.default == export.DEFAULT_FACE_BUDGET
        assert parameters["tolerance"].default.default == export.DEFAULT_SURFACE_TOLERANCE


def test_export_and_turntable_report_progress(tmp_path):
    from omnivox.ovoxel.export import EXPORT_STEPS
    from omnivox.preview import load_preview_source, render_turntable

    seen = []
    export.bake_glb(*_surface_and_materials(tmp_path, 32), 32, texture_size=32,
                    progress=lambda *report: seen.append(report))
    assert seen == [("export", k, len(EXPORT_STEPS)) for k in range(len(EXPORT_STEPS) + 1)]
    frames = []
    source = load_preview_source(write_two_tone_gltf(tmp_path / "render", shape="cube"))
    render_turntable(source, 5, 16, batch=2, progress=lambda *report: frames.append(report))
    assert frames == [("render", 2, 5), ("render", 4, 5), ("render", 5, 5)]
