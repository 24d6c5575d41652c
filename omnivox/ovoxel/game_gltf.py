"""A binary glTF 2.0 writer for game export: tangents, texture sets shared by levels, ORM packing and ``MSFT_lod``.

trimesh's exporter writes neither ``TANGENT`` nor an occlusion texture that shares the metallic-roughness image, nor
``MSFT_lod``, so the game profile writes its file itself. Layout of what is written:

* images: per texture set a ``base_color`` (RGBA: base colour, alpha) and an ``orm`` image (RGB: occlusion,
  roughness, metallic, read by both ``metallicRoughnessTexture`` and ``occlusionTexture``), then one tangent-space
  ``normal`` image per level of detail that has one; levels sharing a texture set address the same two images;
* one material per level (its texture set and its normal map), one mesh per level, one node per level;
* node 0 (in the scene) holds level 0 and, when there are more levels, ``extensions.MSFT_lod.ids`` naming the nodes
  of the coarser ones (outside the scene, as the extension asks) and ``extras.MSFT_screencoverage``.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

FLOAT, UNSIGNED_INT = 5126, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
LINEAR, LINEAR_MIPMAP_LINEAR, REPEAT = 9729, 9987, 10497
MIME_TYPES = {"png": "image/png", "webp": "image/webp"}


@dataclass
class GltfPrimitive:
    """One level of detail as glTF wants it (Y-up, metres): float32 positions, unit normals, tangents (xyz, w),
    UVs (t down the image) and uint32 triangles."""

    positions: np.ndarray
    normals: np.ndarray
    tangents: Optional[np.ndarray]
    uvs: np.ndarray
    faces: np.ndarray


def encode_image(pixels: np.ndarray, image_format: str = "png") -> bytes:
    """uint8 (H, W, C) -> PNG or lossless WebP bytes."""
    from PIL import Image

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"an image must be (H, W, 3) or (H, W, 4) uint8, got {pixels.shape}")
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, mode="RGB" if pixels.shape[2] == 3 else "RGBA")
    if image_format == "webp":
        image.save(buffer, format="WEBP", lossless=True)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


class _Builder:
    def __init__(self):
        self.binary = bytearray()
        self.views: list = []
        self.accessors: list = []

    def view(self, data: bytes, target: Optional[int] = None) -> int:
        while len(self.binary) % 4:
            self.binary.append(0)
        entry = {"buffer": 0, "byteOffset": len(self.binary), "byteLength": len(data)}
        if target is not None:
            entry["target"] = target
        self.binary.extend(data)
        self.views.append(entry)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, kind: str, component: int, target: int, bounds: bool = False) -> int:
        dtype = np.float32 if component == FLOAT else np.uint32
        array = np.ascontiguousarray(array, dtype=dtype)
        entry = {"bufferView": self.view(array.tobytes(), target), "componentType": component,
                 "count": int(array.shape[0]), "type": kind}
        if bounds:
            flat = array.reshape(array.shape[0], -1)
            entry["min"] = [v.item() for v in flat.min(axis=0)]
            entry["max"] = [v.item() for v in flat.max(axis=0)]
        self.accessors.append(entry)
        return len(self.accessors) - 1


def write_glb(levels: Sequence[GltfPrimitive], texture_sets: Sequence[tuple[bytes, bytes]],
              normal_maps: Sequence[Optional[bytes]], *, level_texture_sets: Optional[Sequence[int]] = None,
              alpha_mode: str, alpha_cutoff: Optional[float], double_sided: bool, occlusion: bool,
              screen_coverage: Sequence[float] = (), image_format: str = "png") -> bytes:
    """The GLB bytes of ``levels`` (finest first).

    ``texture_sets`` holds encoded ``(base_color, orm)`` image pairs; level i reads pair ``level_texture_sets[i]``
    (default: every level the first). ``normal_maps[i]`` is level i's encoded normal image, or None for no normal
    map on that level. ``screen_coverage`` gives, per level, the screen fraction above which it is used
    (``MSFT_screencoverage``).
    """
    if image_format not in MIME_TYPES:
        raise ValueError(f"image_format must be one of {tuple(MIME_TYPES)}, got {image_format!r}")
    if len(normal_maps) != len(levels):
        raise ValueError(f"one normal map (or None) per level: {len(levels)} levels, {len(normal_maps)} maps")
    level_texture_sets = [0] * len(levels) if level_texture_sets is None else [int(i) for i in level_texture_sets]
    if len(level_texture_sets) != len(levels) or not all(0 <= i < len(texture_sets) for i in level_texture_sets):
        raise ValueError(f"one texture set index in [0, {len(texture_sets)}) per level, got {level_texture_sets}")
    builder = _Builder()
    images, textures = [], []

    def texture(data: bytes) -> int:
        images.append({"bufferView": builder.view(data), "mimeType": MIME_TYPES[image_format]})
        if image_format == "webp":
            textures.append({"sampler": 0, "extensions": {"EXT_texture_webp": {"source": len(images) - 1}}})
        else:
            textures.append({"sampler": 0, "source": len(images) - 1})
        return len(textures) - 1

    set_textures = [(texture(base_color), texture(orm)) for base_color, orm in texture_sets]
    materials, meshes, nodes = [], [], []
    for level, (primitive, normal_map) in enumerate(zip(levels, normal_maps)):
        base_texture, orm_texture = set_textures[level_texture_sets[level]]
        material = {
            "name": f"omnivox_lod{level}",
            "pbrMetallicRoughness": {"baseColorTexture": {"index": base_texture},
                                     "metallicRoughnessTexture": {"index": orm_texture},
                                     "metallicFactor": 1.0, "roughnessFactor": 1.0},
            "alphaMode": alpha_mode,
            "doubleSided": bool(double_sided),
        }
        if alpha_mode == "MASK" and alpha_cutoff is not None:
            material["alphaCutoff"] = float(alpha_cutoff)
        if occlusion:
            material["occlusionTexture"] = {"index": orm_texture}
        attributes = {
            "POSITION": builder.accessor(primitive.positions, "VEC3", FLOAT, ARRAY_BUFFER, bounds=True),
            "NORMAL": builder.accessor(primitive.normals, "VEC3", FLOAT, ARRAY_BUFFER),
            "TEXCOORD_0": builder.accessor(primitive.uvs, "VEC2", FLOAT, ARRAY_BUFFER),
        }
        if normal_map is not None:
            material["normalTexture"] = {"index": texture(normal_map)}
            attributes["TANGENT"] = builder.accessor(primitive.tangents, "VEC4", FLOAT, ARRAY_BUFFER)
        materials.append(material)
        indices = builder.accessor(primitive.faces.reshape(-1), "SCALAR", UNSIGNED_INT, ELEMENT_ARRAY_BUFFER)
        meshes.append({"name": f"lod{level}", "primitives": [{"attributes": attributes, "indices": indices,
                                                              "material": level, "mode": 4}]})
        nodes.append({"name": f"lod{level}", "mesh": level})
    document = {
        "asset": {"version": "2.0", "generator": "omnivox game export"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": nodes,
        "meshes": meshes,
        "materials": materials,
        "samplers": [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR, "wrapS": REPEAT, "wrapT": REPEAT}],
        "images": images,
        "textures": textures,
        "accessors": builder.accessors,
        "bufferViews": builder.views,
        "buffers": [{"byteLength": 0}],
    }
    used = []
    if len(levels) > 1:
        nodes[0]["extensions"] = {"MSFT_lod": {"ids": list(range(1, len(levels)))}}
        if screen_coverage:
            nodes[0]["extras"] = {"MSFT_screencoverage": [float(c) for c in screen_coverage]}
        used.append("MSFT_lod")
    if image_format == "webp":
        used.append("EXT_texture_webp")
        document["extensionsRequired"] = ["EXT_texture_webp"]
    if used:
        document["extensionsUsed"] = used
    while len(builder.binary) % 4:
        builder.binary.append(0)
    document["buffers"][0]["byteLength"] = len(builder.binary)
    text = json.dumps(document, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(builder.binary)
    return b"".join([struct.pack("<III", 0x46546C67, 2, total), struct.pack("<II", len(text), 0x4E4F534A), text,
                     struct.pack("<II", len(builder.binary), 0x004E4942), bytes(builder.binary)])
