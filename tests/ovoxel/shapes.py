"""Shapes with known answers (spec ovoxel.md section 11 golden table), shared by the O-Voxel tests."""

import numpy as np
import trimesh


def box(offset=(0.0, 0.0, 0.0)):
    m = trimesh.creation.box(extents=(0.6,) * 3)
    m.apply_translation(offset)
    return m


TRANSLATION = (0.0123, 0.0071, 0.0037)


def icosphere():
    return trimesh.creation.icosphere(subdivisions=3, radius=0.4)


def open_hemisphere():
    ico = icosphere()
    keep = ico.triangles_center[:, 2] > 0.05
    return trimesh.Trimesh(ico.vertices, ico.faces[keep], process=False)


def square():
    v = np.array([[-0.3, -0.3, 0.01], [0.3, -0.3, 0.01], [0.3, 0.3, 0.01], [-0.3, 0.3, 0.01]])
    return trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False)


def fan():
    """Non-manifold: three triangles sharing one edge."""
    # Off-lattice coordinates: no vertex sits exactly on a lattice plane of the test grids.
    v = np.array([[0.013, 0.011, -0.3], [0.013, 0.011, 0.3], [0.3, 0.05, 0.007], [-0.2, 0.25, 0.02], [-0.15, -0.3, -0.01]])
    return trimesh.Trimesh(v, [[0, 1, 2], [0, 1, 3], [0, 1, 4]], process=False)
