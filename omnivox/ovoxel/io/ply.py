"""`.ply` voxel files: one ``vertex`` element, ``x, y, z`` = voxel coordinates (spec ovoxel.md 5.5).

Each attribute channel is a vertex property named ``f"{name}_{channel}"``. Property types follow the attribute
dtype: u1, u2, u4, i1, i2, i4, f4, f8 (uint8 ... float64); other dtypes are rejected rather than converted.
Coordinates are stored as float32, which is exact up to 2**24. Reading rounds ``x, y, z`` to integers and groups
properties by the text before their last ``_<int>`` suffix; a property without such a suffix becomes a
one-channel attribute of its own name. Needs ``plyfile`` (a dependency of omnivox).
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Union

import numpy as np

from omnivox.ovoxel.io._inputs import check_attrs, check_coords

PathLike = Union[str, os.PathLike]

MAX_COORD = 2**24  # largest range where every integer is exact in float32
PLY_TYPES = {
    np.dtype(np.uint8): "u1",
    np.dtype(np.uint16): "u2",
    np.dtype(np.uint32): "u4",
    np.dtype(np.int8): "i1",
    np.dtype(np.int16): "i2",
    np.dtype(np.int32): "i4",
    np.dtype(np.float32): "f4",
    np.dtype(np.float64): "f8",
}
_CHANNEL_SUFFIX = re.compile(r"^(?P<name>.+)_(?P<channel>\d+)$")


def write_ply(path: PathLike, coords, attrs: Mapping) -> None:
    """Write voxels to a binary little-endian `.ply` file.

    Args:
        path: destination.
        coords: (N, 3) integers in [0, 2**24].
        attrs: name -> (N, C) or (N,) array/tensor of a PLY-representable dtype (see module docstring).

    Raises:
        TypeError: non-integer coordinates or an unsupported attribute dtype.
        ValueError: bad shapes, coordinates out of range, names with whitespace or clashing with ``x, y, z``.
    """
    from plyfile import PlyData, PlyElement

    points = check_coords(coords, max_value=MAX_COORD)
    attributes = check_attrs(attrs, points.shape[0], uint8_only=False)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    columns = [points[:, 0], points[:, 1], points[:, 2]]
    for name, value in attributes.items():
        if value.dtype not in PLY_TYPES:
            raise TypeError(
                f"attrs[{name!r}] has dtype {value.dtype}, which PLY cannot store; use one of "
                f"{sorted(str(d) for d in PLY_TYPES)}"
            )
        if re.search(r"\s", name):
            raise ValueError(f"attribute name {name!r} contains whitespace, which PLY property names cannot")
        value = value[:, None] if value.ndim == 1 else value
        for channel in range(value.shape[1]):
            fields.append((f"{name}_{channel}", "<" + PLY_TYPES[value.dtype]))
            columns.append(value[:, channel])
    names = [field for field, _ in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"PLY property names clash: {names}")
    table = np.empty(points.shape[0], dtype=fields)
    for (field, _), column in zip(fields, columns, strict=True):
        table[field] = column
    with open(path, "wb") as handle:
        PlyData([PlyElement.describe(table, "vertex")], text=False, byte_order="<").write(handle)


def read_ply(path: PathLike) -> tuple[np.ndarray, dict]:
    """Read a `.ply` voxel file.

    Returns:
        coords: (N, 3) int32, the rounded vertex positions.
        attrs: dict name -> (N, C) array, channels ordered by their suffix.

    Raises:
        ValueError: unreadable PLY, no ``vertex`` element with ``x, y, z``, non-finite positions, or channel
            suffixes that are not ``0 .. C-1``; the message names the file.
    """
    from plyfile import PlyData, PlyParseError

    source = os.fspath(path)
    with open(path, "rb") as handle:
        try:
            vertices = PlyData.read(handle)["vertex"].data
        except KeyError:
            raise ValueError(f"{source}: no 'vertex' element") from None
        except (PlyParseError, ValueError, EOFError, IndexError, TypeError) as error:
            raise ValueError(f"{source}: not a readable PLY file ({error})") from None
    names = vertices.dtype.names or ()
    if not {"x", "y", "z"} <= set(names):
        raise ValueError(f"{source}: the vertex element lacks x, y, z (has {list(names)})")
    positions = np.stack([vertices[axis].astype(np.float64) for axis in "xyz"], axis=1)
    if not np.isfinite(positions).all():
        raise ValueError(f"{source}: vertex positions must be finite")
    if positions.size and (positions.min() < -(2**31) or positions.max() > 2**31 - 1):
        raise ValueError(f"{source}: vertex positions exceed the int32 range")
    coords = np.rint(positions).astype(np.int32)

    groups: dict[str, dict[int, np.ndarray]] = {}
    for name in names:
        if name in ("x", "y", "z"):
            continue
        match = _CHANNEL_SUFFIX.match(name)
        base, channel = (match["name"], int(match["channel"])) if match else (name, 0)
        if channel in groups.setdefault(base, {}):
            raise ValueError(f"{source}: property {name!r} repeats channel {channel} of attribute {base!r}")
        groups[base][channel] = vertices[name]
    attrs = {}
    for base, channels in groups.items():
        if sorted(channels) != list(range(len(channels))):
            raise ValueError(f"{source}: attribute {base!r} has channels {sorted(channels)}, expected 0..C-1")
        attrs[base] = np.stack([channels[c] for c in range(len(channels))], axis=1)
    return coords, attrs
