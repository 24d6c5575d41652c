"""``read`` / ``write`` for any voxel file, choosing the format from the file extension."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Union

import numpy as np

from omnivox.ovoxel.io.npz import read_npz, write_npz
from omnivox.ovoxel.io.ply import read_ply, write_ply
from omnivox.ovoxel.io.vxz import read_vxz, write_vxz

PathLike = Union[str, os.PathLike]

READERS = {".vxz": read_vxz, ".npz": read_npz, ".ply": read_ply}
WRITERS = {".vxz": write_vxz, ".npz": write_npz, ".ply": write_ply}


def read(path: PathLike) -> tuple[np.ndarray, dict]:
    """Read a `.vxz`, `.npz` or `.ply` voxel file.

    Returns:
        coords: (N, 3) int32; attrs: dict name -> NumPy array (see the format's reader).

    Raises:
        ValueError: unknown extension, or a file the format's reader rejects.
    """
    return _pick(path, READERS)(path)


def write(path: PathLike, coords, attrs: Mapping, **options) -> None:
    """Write voxels to a `.vxz`, `.npz` or `.ply` file.

    ``options`` go to the format's writer (:func:`write_vxz`: chunk_size, filter, compression, compression_level,
    attr_interleave; :func:`write_npz`: compressed).

    Raises:
        ValueError: unknown extension, or inputs the format's writer rejects.
    """
    _pick(path, WRITERS)(path, coords, attrs, **options)


def _pick(path: PathLike, table: dict):
    suffix = Path(path).suffix.lower()
    if suffix not in table:
        raise ValueError(f"{os.fspath(path)}: unknown voxel file extension {suffix!r}; expected one of {sorted(table)}")
    return table[suffix]
