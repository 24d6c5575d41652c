"""Assets whose texture tells up from down: the top half of the image is red, the bottom half blue.

The image is mapped so that the upper half of the object (file +Y) is red, whatever reads it: a reader that flips
v, or a loader that lies the object down, gets blue on top. Written by hand (JSON, OBJ text, PIL), so the files
do not depend on omnivox's own writers.

Shapes: ``"quad"`` (one upright square facing the file's +Z) and ``"cube"`` (four side faces mapped like the quad,
the top face on the red half only, the bottom face on the blue half only: red above blue from every side).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def write_two_tone_png(path: Path, size: int = 16) -> Path:
    image = np.zeros((size, size, 3), np.uint8)
    image[: size // 2] = RED  # row 0 is the top of the image
    image[size // 2:] = BLUE
    Image.fromarray(image).save(path)
    return path


def _face(corners, t_top: float, t_bottom: float):
    """Four corners counter-clockwise from outside, the first two at the bottom -> positions, glTF (u, t)."""
    uv = [(0.0, t_bottom), (1.0, t_bottom), (1.0, t_top), (0.0, t_top)]
    return np.asarray(corners, np.float32), np.asarray(uv, np.float32)


def two_tone_geometry(shape: str):
    """``(positions (V, 3), gltf_uv (V, 2) with t = 0 at the image's top row, triangles (F, 3))``, Y-up."""
    faces = []
    if shape == "quad":
        faces.append(_face([(-1, -1, 0), (1, -1, 0), (1, 1, 0), (-1, 1, 0)], 0.0, 1.0))
    elif shape == "cube":
        faces += [
            _face([(-1, -1, 1), (1, -1, 1), (1, 1, 1), (-1, 1, 1)], 0.0, 1.0),  # +Z
            _face([(1, -1, -1), (-1, -1, -1), (-1, 1, -1), (1, 1, -1)], 0.0, 1.0),  # -Z
            _face([(1, -1, 1), (1, -1, -1), (1, 1, -1), (1, 1, 1)], 0.0, 1.0),  # +X
            _face([(-1, -1, -1), (-1, -1, 1), (-1, 1, 1), (-1, 1, -1)], 0.0, 1.0),  # -X
            _face([(-1, 1, 1), (1, 1, 1), (1, 1, -1), (-1, 1, -1)], 0.05, 0.2),  # +Y: red only
            _face([(-1, -1, -1), (1, -1, -1), (1, -1, 1), (-1, -1, 1)], 0.8, 0.95),  # -Y: blue only
        ]
    else:
        raise ValueError(shape)
    positions = np.concatenate([p for p, _ in faces])
    uv = np.concatenate([t for _, t in faces])
    triangles = np.concatenate([np.array([[0, 1, 2], [0, 2, 3]]) + 4 * k for k in range(len(faces))])
    return positions, uv, triangles.astype(np.uint32)


def write_two_tone_gltf(folder: Path, shape: str = "quad") -> Path:
    """A .gltf (embedded buffer) with a separate ``two_tone.png``; the texture is sampled NEAREST."""
    folder.mkdir(parents=True, exist_ok=True)
    write_two_tone_png(folder / "two_tone.png")
    positions, uv, triangles = two_tone_geometry(shape)
    blob = triangles.tobytes() + positions.tobytes() + uv.tobytes()
    n_index, n_pos = triangles.nbytes, positions.nbytes
    document = {
        "asset": {"version": "2.0"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 1, "TEXCOORD_0": 2}, "indices": 0, "material": 0}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "metallicFactor": 0.0,
                                                "roughnessFactor": 0.5}, "doubleSided": True}],
        "textures": [{"source": 0, "sampler": 0}],
        "samplers": [{"magFilter": 9728, "minFilter": 9728, "wrapS": 33071, "wrapT": 33071}],
        "images": [{"uri": "two_tone.png"}],
        "buffers": [{"byteLength": len(blob),
                     "uri": "data:application/octet-stream;base64," + base64.b64encode(blob).decode()}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": n_index, "target": 34963},
            {"buffer": 0, "byteOffset": n_index, "byteLength": n_pos, "target": 34962},
            {"buffer": 0, "byteOffset": n_index + n_pos, "byteLength": uv.nbytes, "target": 34962},
        ],
        "accessors": [
            {"bufferView": 0, "componentType": 5125, "count": int(triangles.size), "type": "SCALAR"},
            {"bufferView": 1, "componentType": 5126, "count": len(positions), "type": "VEC3",
             "min": positions.min(0).tolist(), "max": positions.max(0).tolist()},
            {"bufferView": 2, "componentType": 5126, "count": len(uv), "type": "VEC2"},
        ],
    }
    path = folder / f"two_tone_{shape}.gltf"
    path.write_text(json.dumps(document))
    return path


def write_two_tone_obj(folder: Path, shape: str = "quad") -> Path:
    """The same shape as an OBJ + MTL + PNG (OBJ's ``vt`` has v up: ``v = 1 - t``)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_two_tone_png(folder / "two_tone.png")
    positions, uv, triangles = two_tone_geometry(shape)
    (folder / "two_tone.mtl").write_text("newmtl two_tone\nKd 1 1 1\nmap_Kd two_tone.png\n")
    lines = ["mtllib two_tone.mtl", "usemtl two_tone"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in positions]
    lines += [f"vt {u:.6f} {1 - t:.6f}" for u, t in uv]
    lines += ["f " + " ".join(f"{i + 1}/{i + 1}" for i in tri) for tri in triangles]
    path = folder / f"two_tone_{shape}.obj"
    path.write_text("\n".join(lines) + "\n")
    return path


def read_glb_independently(path: Path):
    """A GLB read with pygltflib and PIL only (glTF conventions, no omnivox code): the first primitive's
    ``positions (V, 3)`` in the file's Y-up frame, ``uv (V, 2)`` as stored (t = 0 at the image's top row),
    ``triangles (F, 3)`` and its base-colour image ``(H, W, C)`` uint8 (row 0 = top)."""
    import io

    import pygltflib

    gltf = pygltflib.GLTF2().load(str(path))
    blob = gltf.binary_blob()

    def accessor(index):
        acc = gltf.accessors[index]
        view = gltf.bufferViews[acc.bufferView]
        dtype = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}[acc.componentType]
        width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc.type]
        start = (view.byteOffset or 0) + (acc.byteOffset or 0)
        data = np.frombuffer(blob, dtype, acc.count * width, start)
        if view.byteStride and view.byteStride != width * np.dtype(dtype).itemsize:
            raise NotImplementedError("interleaved buffers")
        return data.reshape(acc.count, width) if width > 1 else data

    primitive = gltf.meshes[0].primitives[0]
    positions = accessor(primitive.attributes.POSITION).astype(np.float64)
    uv = accessor(primitive.attributes.TEXCOORD_0).astype(np.float64)
    triangles = accessor(primitive.indices).reshape(-1, 3).astype(np.int64)
    material = gltf.materials[primitive.material]
    image_index = gltf.textures[material.pbrMetallicRoughness.baseColorTexture.index].source
    view = gltf.bufferViews[gltf.images[image_index].bufferView]
    start = view.byteOffset or 0
    image = np.asarray(Image.open(io.BytesIO(blob[start:start + view.byteLength])))
    return positions, uv, triangles, image


def texel_at(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest texel (N, C) at glTF texture coordinates (N, 2) (t = 0 at the top row), clamped to the image."""
    height, width = image.shape[:2]
    column = np.clip(np.floor(uv[:, 0] * width).astype(int), 0, width - 1)
    row = np.clip(np.floor(uv[:, 1] * height).astype(int), 0, height - 1)
    return image[row, column]


def is_red(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.float64)
    return (rgb[..., 0] > 2 * rgb[..., 2] + 20) & (rgb[..., 0] > 60)


def is_blue(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.float64)
    return (rgb[..., 2] > 2 * rgb[..., 0] + 20) & (rgb[..., 2] > 60)
