"""`load_asset`: one entry point for every supported 3D file format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from omnivox.assets.scene import Scene

SUPPORTED_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl")


def load_asset(path: Union[str, os.PathLike]) -> Scene:
    """Load a GLB, glTF, OBJ, PLY or STL file into a `Scene` in world units.

    Call ``.normalized()`` on the result to fit it into the unit box as the TRELLIS.2 data toolkit does.

    Args:
        path: the file; external buffers, MTL files and images are resolved relative to its folder.

    Returns:
        the scene (all node instances, transforms applied, one material list).

    Raises:
        TypeError: ``path`` is not a string or path.
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported extension, or a corrupt, truncated or oversized file (the message names the
            file and the problem).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_asset: path must be a str or os.PathLike, got {type(path).__name__}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"load_asset: no such file: {file}")
    suffix = file.suffix.lower()
    if suffix in (".glb", ".gltf"):
        from omnivox.assets.gltf import load_gltf

        return load_gltf(file)
    if suffix in (".obj", ".ply", ".stl"):
        from omnivox.assets.meshfiles import load_mesh_file

        return load_mesh_file(file)
    raise ValueError(f"{file}: unsupported file type {suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
