"""Loading real 3D assets (GLB, glTF, OBJ, PLY, STL) into one normalised triangle scene with PBR materials."""

from omnivox.assets.loader import SUPPORTED_SUFFIXES, load_asset
from omnivox.assets.scene import (
    MAX_TEXTURE_SIDE,
    MAX_TRIANGLES,
    AlphaMode,
    FilterMode,
    Material,
    Scene,
    Texture,
    WrapMode,
    default_material,
    normalize_scene,
    normalize_vertices,
)

__all__ = [
    "SUPPORTED_SUFFIXES",
    "MAX_TEXTURE_SIDE",
    "MAX_TRIANGLES",
    "AlphaMode",
    "FilterMode",
    "Material",
    "Scene",
    "Texture",
    "WrapMode",
    "default_material",
    "load_asset",
    "normalize_scene",
    "normalize_vertices",
]
