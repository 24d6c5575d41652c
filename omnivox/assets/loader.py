"""`load_asset`: one entry point for every supported 3D file format."""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import replace
from typing import Optional, Union

import numpy as np

from omnivox.assets.frames import file_up_axis, to_data_frame
from omnivox.assets.scene import Scene

SUPPORTED_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl")


def load_asset(path: Union[str, os.PathLike], up_axis: Optional[str] = None,
               allow_outside: bool = False) -> Scene:
    """Load a GLB, glTF, OBJ, PLY or STL file into a `Scene` in world units, Z-up.

    Call ``.normalized()`` on the result to fit it into the unit box as the TRELLIS.2 data toolkit does.

    Args:
        path: the file; external buffers, MTL files and images are resolved relative to its folder.
        up_axis: the file's up axis, ``"y"`` or ``"z"``; None takes the format's (glTF/GLB/OBJ Y-up, STL/PLY
            Z-up, as Blender imports them: ``omnivox.assets.frames``). A Y-up file is rotated into the Z-up data
            frame; ``scene.source_up_axis`` records which it was.
        allow_outside: follow references (glTF buffers/images, ``mtllib``, ``map_Kd``) that leave the file's
            folder; only for trusted files. URLs are never fetched.

    Returns:
        the scene (all node instances, transforms applied, one material list), Z-up.

    Raises:
        TypeError: ``path`` is not a string or path.
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported extension, a reference outside the folder, or a corrupt, truncated or oversized
            file (the message names the file and the problem). Any unexpected error while reading becomes
            ``FILE: cannot read (cause)``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_asset: path must be a str or os.PathLike, got {type(path).__name__}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"load_asset: no such file: {file}")
    suffix = file.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"{file}: unsupported file type {suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    source_up = file_up_axis(file, up_axis)
    allow = bool(allow_outside)
    try:
        if suffix in (".glb", ".gltf"):
            from omnivox.assets.gltf import load_gltf

            scene = load_gltf(file, allow_outside=allow)
        else:
            from omnivox.assets.meshfiles import load_mesh_file

            scene = load_mesh_file(file, allow_outside=allow)
    except (ValueError, OSError):
        raise
    except RecursionError as error:
        raise ValueError(f"{file}: cannot read (nested too deeply)") from error
    except MemoryError as error:
        raise ValueError(f"{file}: cannot read (out of memory)") from error
    except Exception as error:  # one boundary: whatever a parser raises, the caller gets the file and the cause
        raise ValueError(f"{file}: cannot read ({type(error).__name__}: {error})") from error
    if not np.isfinite(scene.vertices).all():
        raise ValueError(f"{file}: vertex positions contain NaN or infinity")
    return replace(scene, vertices=to_data_frame(scene.vertices, source_up),
                   normals=to_data_frame(scene.normals, source_up), source_up_axis=source_up)
