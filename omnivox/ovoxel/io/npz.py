"""`.npz` voxel files: a NumPy zip archive with ``coord`` and one array per attribute (spec ovoxel.md 5.5).

``coord`` is stored as (N, 3) **uint16**, as the reference does, so coordinates must lie in [0, 65535]; the
writer checks this instead of letting the cast wrap around. Attributes keep their dtype and shape.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import Mapping, Union

import numpy as np

from omnivox.ovoxel.io._inputs import check_attrs, check_coords

PathLike = Union[str, os.PathLike]

COORD_KEY = "coord"
MAX_COORD = np.iinfo(np.uint16).max


def write_npz(path: PathLike, coords, attrs: Mapping, compressed: bool = True) -> None:
    """Write voxels to an `.npz` file.

    Args:
        path: destination (written as given; NumPy's habit of appending ".npz" is bypassed).
        coords: (N, 3) integers in [0, 65535] (NumPy or torch).
        attrs: name -> (N, ...) numeric array/tensor; the name ``"coord"`` is reserved.
        compressed: ``np.savez_compressed`` (True, the reference default) or ``np.savez``.

    Raises:
        TypeError: non-integer coordinates or a non-numeric attribute.
        ValueError: bad shapes, coordinates outside [0, 65535], or an attribute named ``"coord"``.
    """
    points = check_coords(coords, max_value=MAX_COORD)
    attributes = check_attrs(attrs, points.shape[0], uint8_only=False)
    for name, value in attributes.items():
        if name == COORD_KEY:
            raise ValueError(f"attribute name {COORD_KEY!r} is reserved for the coordinates in .npz files")
        if value.dtype.kind not in "biuf":
            raise TypeError(f"attrs[{name!r}] must be numeric, got dtype {value.dtype}")
    save = np.savez_compressed if compressed else np.savez
    with open(path, "wb") as handle:
        save(handle, **{COORD_KEY: points.astype(np.uint16)}, **attributes)


def read_npz(path: PathLike) -> tuple[np.ndarray, dict]:
    """Read an `.npz` voxel file.

    Returns:
        coords: (N, 3) int32.
        attrs: dict name -> array as stored, every other array of the archive, in archive order.

    Raises:
        ValueError: not a readable `.npz` archive, no ``coord`` array, or arrays of mismatched length; the
            message names the file.
    """
    source = os.fspath(path)
    with open(path, "rb") as handle:
        try:
            with np.load(handle, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
            raise ValueError(f"{source}: not a readable .npz archive ({error})") from None
    if COORD_KEY not in arrays:
        raise ValueError(f"{source}: no {COORD_KEY!r} array (found {sorted(arrays)})")
    coords = arrays.pop(COORD_KEY)
    if coords.ndim != 2 or coords.shape[1] != 3 or not np.issubdtype(coords.dtype, np.integer):
        raise ValueError(f"{source}: {COORD_KEY!r} must be (N, 3) integers, got {coords.shape} {coords.dtype}")
    for name, value in arrays.items():
        if value.ndim == 0 or value.shape[0] != coords.shape[0]:
            raise ValueError(f"{source}: attribute {name!r} has shape {value.shape}, expected {coords.shape[0]} rows")
    return coords.astype(np.int32), arrays
