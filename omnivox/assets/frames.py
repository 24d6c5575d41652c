"""Axis frames: which way is up, in one place.

omnivox works in one frame, the **data frame**: right-handed, +Z up, the Blender world frame in which TRELLIS.2's
training data was made (spec ovoxel.md 1.1). Every loader brings its file into it the way the reference's
Blender import did, so that what we convert, render and texture stands exactly as the released models learned it:

============  =========  ============================================================================
format        file up    why
============  =========  ============================================================================
glTF / GLB    +Y         the glTF specification; Blender's glTF importer turns it to +Z
OBJ           +Y         Blender's OBJ importer default (forward -Z, up +Y)
STL / PLY     +Z         Blender's STL and PLY importers take them as stored (CAD, 3D printing, scans)
============  =========  ============================================================================

Y-up -> Z-up is the proper rotation ``(x, y, z) -> (x, -z, y)`` (+90 degrees about X: glTF's front, +Z, faces
Blender's -Y), so windings and normals stay valid; `z_up_to_y_up` undoes it and is what the GLB writer applies,
so a file converted and exported comes back the way it went in. Callers override a file's up axis with
``up_axis="y"`` or ``"z"`` (``--up`` on the command line).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

DATA_UP = "z"
UP_AXES = ("y", "z")
Y_UP_SUFFIXES = (".glb", ".gltf", ".obj")


def check_up_axis(up_axis: str) -> str:
    """``up_axis`` if it is ``"y"`` or ``"z"``; a ValueError naming the choices otherwise."""
    if up_axis not in UP_AXES:
        raise ValueError(f"up axis must be 'y' or 'z', got {up_axis!r}")
    return up_axis


def file_up_axis(path: Union[str, os.PathLike], up_axis: Optional[str] = None) -> str:
    """The up axis of an asset file: ``up_axis`` when given, else its format's (module table)."""
    if up_axis is not None:
        return check_up_axis(up_axis)
    return "y" if Path(path).suffix.lower() in Y_UP_SUFFIXES else "z"


def y_up_to_z_up(points):
    """(..., 3) Y-up -> Z-up: ``(x, y, z) -> (x, -z, y)``. NumPy arrays or torch tensors, same type out."""
    return _stack(points, (points[..., 0], -points[..., 2], points[..., 1]))


def z_up_to_y_up(points):
    """(..., 3) Z-up -> Y-up: ``(x, y, z) -> (x, z, -y)``, the inverse of `y_up_to_z_up`."""
    return _stack(points, (points[..., 0], points[..., 2], -points[..., 1]))


def y_up_to_z_up_voxels(coords, resolution: int):
    """(N, 3) integer voxel indices of a Y-up grid of ``resolution`` cells per side -> the Z-up grid's indices:
    `y_up_to_z_up` on the cell centres, ``(x, y, z) -> (x, resolution - 1 - z, y)``. NumPy, a new array."""
    coords = np.asarray(coords)[:, [0, 2, 1]].copy()
    coords[:, 1] = resolution - 1 - coords[:, 1]
    return coords


def to_data_frame(points, up_axis: str):
    """Points of a file whose up axis is ``up_axis`` in the Z-up data frame."""
    return y_up_to_z_up(points) if check_up_axis(up_axis) == "y" else points


def from_data_frame(points, up_axis: str):
    """Points of the data frame back in the frame of a file whose up axis is ``up_axis``."""
    return z_up_to_y_up(points) if check_up_axis(up_axis) == "y" else points


def _stack(like, columns):
    if isinstance(like, np.ndarray):
        return np.stack(columns, axis=-1).astype(like.dtype, copy=False)
    import torch

    return torch.stack(columns, dim=-1)
