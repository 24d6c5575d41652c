"""glTF 2.0 / GLB loading into a `Scene`.

pygltflib parses the container and the JSON; this module decodes accessors with NumPy and fills what
general-purpose loaders skip: every primitive of every node instance with its world transform (mirroring
transforms flip the winding back to counter-clockwise), skinned meshes evaluated in their rest pose,
TRIANGLE_STRIP / TRIANGLE_FAN triangulated (POINTS and LINES ignored), COLOR_0, every TEXCOORD_n set,
samplers (wrap per axis, NEAREST / LINEAR), ``KHR_texture_transform`` and
``KHR_materials_emissive_strength``. Morph targets are ignored (the base shape is loaded).

Texture coordinates are brought into the scene's v-up convention (``omnivox.assets.scene``): a file's
``(u, t)`` (origin at the image's top-left) is stored as ``(u, 1 - t)``, and ``KHR_texture_transform`` is
rewritten for that frame, so every reader samples the texel the file means.
"""

from __future__ import annotations

import base64
import json
import struct
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from omnivox.assets.confine import resolve_reference
from omnivox.assets.images import decode_image
from omnivox.assets.scene import (
    MAX_TRIANGLES,
    AlphaMode,
    FilterMode,
    Material,
    Scene,
    Texture,
    WrapMode,
    default_material,
    gltf_uv_transform,
)

_COMPONENT_DTYPES = {
    5120: np.int8,
    5121: np.uint8,
    5122: np.int16,
    5123: np.uint16,
    5125: np.uint32,
    5126: np.float32,
}
_TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
_WRAP_MODES = {10497: WrapMode.REPEAT, 33071: WrapMode.CLAMP_TO_EDGE, 33648: WrapMode.MIRRORED_REPEAT}
_NEAREST = 9728
_MODE_TRIANGLES, _MODE_STRIP, _MODE_FAN = 4, 5, 6
_MAX_UV_SETS = 8
# Compressed geometry would otherwise read as the (empty) fallback accessors: refuse it explicitly.
_UNSUPPORTED_EXTENSIONS = {"KHR_draco_mesh_compression", "EXT_meshopt_compression"}


def load_gltf(path: Path, allow_outside: bool = False) -> Scene:
    """Load a ``.gltf`` (with its external buffers and images) or a ``.glb`` file.

    Args:
        path: the file. External resources are resolved relative to its folder and must lie inside it
            (``omnivox.assets.confine``) unless ``allow_outside``; URLs other than ``data:`` are never fetched.

    Returns:
        the scene in world coordinates (not normalised).

    Raises:
        ValueError: malformed / truncated file, missing buffer, bad index, or too many triangles.
    """
    document, binary_chunk = _parse_document(path)
    return _GltfReader(path, document, binary_chunk, allow_outside).scene()


def _parse_document(path: Path):
    """Return (pygltflib.GLTF2, GLB binary chunk or None), validating the container first."""
    import pygltflib

    data = path.read_bytes()
    binary_chunk = None
    if data[:4] == b"glTF":
        json_bytes, binary_chunk = _split_glb(path, data)
    else:
        json_bytes = data
    try:
        text = json_bytes.decode("utf-8")
        if not isinstance(json.loads(text), dict):
            raise ValueError("the top-level JSON value is not an object")
        document = pygltflib.GLTF2.from_json(text)
    except RecursionError as error:
        raise ValueError(f"{path}: not a valid glTF JSON document (nested too deeply)") from error
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a valid glTF JSON document ({error})") from error
    version = str(getattr(document.asset, "version", "") or "")
    if not version.startswith("2"):
        raise ValueError(f"{path}: only glTF 2.x is supported, the file declares asset.version={version!r}")
    unsupported = sorted(set(document.extensionsRequired or []) & _UNSUPPORTED_EXTENSIONS)
    if unsupported:
        raise ValueError(f"{path}: requires {', '.join(unsupported)}, which this loader cannot decode "
                         "(re-export the file without mesh compression)")
    return document, binary_chunk


def _split_glb(path: Path, data: bytes):
    """Split a GLB container into its JSON and BIN chunks, checking every declared length."""
    if len(data) < 20:
        raise ValueError(f"{path}: truncated GLB file ({len(data)} bytes, the header alone needs 20)")
    _, version, declared_length = struct.unpack_from("<4sII", data, 0)
    if version != 2:
        raise ValueError(f"{path}: GLB container version {version} is not supported (expected 2)")
    if declared_length > len(data):
        raise ValueError(f"{path}: truncated GLB file: header declares {declared_length} bytes, file has {len(data)}")
    offset = 12
    json_bytes = binary_chunk = None
    while offset + 8 <= declared_length:
        chunk_length, chunk_type = struct.unpack_from("<II", data, offset)
        start, end = offset + 8, offset + 8 + chunk_length
        if end > declared_length:
            raise ValueError(f"{path}: truncated GLB file: a chunk runs past the end of the file")
        if chunk_type == 0x4E4F534A and json_bytes is None:  # "JSON"
            json_bytes = data[start:end]
        elif chunk_type == 0x004E4942 and binary_chunk is None:  # "BIN\0"
            binary_chunk = data[start:end]
        offset = end
    if json_bytes is None:
        raise ValueError(f"{path}: GLB file has no JSON chunk")
    return json_bytes, binary_chunk


def _triangulate(indices: np.ndarray, mode: int) -> np.ndarray:
    """(K,) vertex indices of one primitive -> (T, 3) triangles per the glTF primitive-mode rules."""
    count = len(indices)
    if mode == _MODE_TRIANGLES:
        return indices[: count - count % 3].reshape(-1, 3)
    if count < 3:
        return np.zeros((0, 3), dtype=indices.dtype)
    i = np.arange(count - 2)
    if mode == _MODE_STRIP:
        # Odd triangles swap their first two corners so every triangle keeps the strip's winding.
        parity = i % 2
        return np.stack([indices[i], indices[i + 1 + parity], indices[i + 2 - parity]], axis=1)
    return np.stack([indices[i + 1], indices[i + 2], np.full_like(i, indices[0])], axis=1)


def _quaternion_matrix(quaternion) -> np.ndarray:
    x, y, z, w = np.asarray(quaternion, dtype=np.float64)
    norm = np.sqrt(x * x + y * y + z * z + w * w)
    if norm == 0:
        return np.eye(3)
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _uv_transform_matrix(extension: dict) -> np.ndarray:
    """KHR_texture_transform in glTF's own v-down coordinates: uv' = T(offset) @ R(rotation) @ S(scale) @ (u, t, 1)."""
    offset_u, offset_v = extension.get("offset", (0.0, 0.0))
    rotation = float(extension.get("rotation", 0.0))
    scale_u, scale_v = extension.get("scale", (1.0, 1.0))
    cos, sin = np.cos(rotation), np.sin(rotation)
    translate = np.array([[1, 0, offset_u], [0, 1, offset_v], [0, 0, 1]], dtype=np.float64)
    rotate = np.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]], dtype=np.float64)
    scale = np.diag([scale_u, scale_v, 1.0])
    return (translate @ rotate @ scale).astype(np.float32)


class _GltfReader:
    """One load of one document: buffers, decoded images and materials are cached per instance."""

    def __init__(self, path: Path, document, binary_chunk: Optional[bytes], allow_outside: bool = False):
        self.path = path
        self.allow_outside = allow_outside
        self.data_size = path.stat().st_size + sum(int(b.byteLength or 0) for b in (document.buffers or [])
                                                    if isinstance(b.byteLength, int) and b.uri is not None
                                                    and b.byteLength <= 2**31)
        self.doc = document
        self.binary_chunk = binary_chunk
        self._buffers: Dict[int, bytes] = {}
        self._images: Dict[int, Optional[np.ndarray]] = {}
        self.missing_files: List[str] = []

    # ----------------------------------------------------------------------------------- raw data
    def _fail(self, message: str) -> ValueError:
        return ValueError(f"{self.path}: {message}")

    def _natural(self, value, pointer: str) -> int:
        """``value`` (at JSON pointer ``pointer``) as a non-negative int, or the error naming the pointer."""
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self._fail(f"{pointer} is {value!r}; it must be a non-negative integer")
        return value

    def _finite(self, values, pointer: str):
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise self._fail(f"{pointer} is not a number or list of numbers") from error
        if not np.isfinite(array).all():
            raise self._fail(f"{pointer} holds NaN or infinity")
        return values

    def _item(self, collection, index, what: str):
        if index is None or not isinstance(index, int) or not 0 <= index < len(collection or []):
            raise self._fail(f"{what} index {index!r} is out of range (the file has {len(collection or [])})")
        return collection[index]

    def _read_uri(self, uri: str, what: str) -> Optional[bytes]:
        """Bytes of a data URI or of a file next to the document; None if the file is missing."""
        if uri.startswith("data:"):
            header, _, payload = uri.partition(",")
            try:
                if header.endswith(";base64"):
                    return base64.b64decode(payload, validate=False)
                from urllib.parse import unquote_to_bytes

                return unquote_to_bytes(payload)
            except ValueError as error:
                raise self._fail(f"{what} has a malformed data URI ({error})") from error
        file = resolve_reference(self.path, uri, what, self.allow_outside, uri=True)
        if not file.is_file():
            return None
        return file.read_bytes()

    def _buffer(self, index: int) -> bytes:
        if index not in self._buffers:
            buffer = self._item(self.doc.buffers, index, "buffer")
            if buffer.uri is None:
                if index != 0 or self.binary_chunk is None:
                    raise self._fail(f"buffer {index} has no uri and there is no GLB binary chunk")
                data = self.binary_chunk
            else:
                data = self._read_uri(buffer.uri, f"buffer {index}")
                if data is None:
                    raise self._fail(f"buffer {index} refers to the missing file {buffer.uri!r}")
            if buffer.byteLength is not None and len(data) < buffer.byteLength:
                raise self._fail(
                    f"buffer {index} is truncated: {len(data)} bytes, the file declares {buffer.byteLength}"
                )
            self._buffers[index] = data
        return self._buffers[index]

    def _view_bytes(self, view_index: int) -> memoryview:
        view = self._item(self.doc.bufferViews, view_index, "bufferView")
        data = self._buffer(view.buffer)
        start = self._natural(view.byteOffset or 0, f"/bufferViews/{view_index}/byteOffset")
        end = start + self._natural(view.byteLength or 0, f"/bufferViews/{view_index}/byteLength")
        if end > len(data):
            raise self._fail(f"bufferView {view_index} reads bytes {start}..{end} of a {len(data)}-byte buffer")
        return memoryview(data)[start:end]

    def _strided(self, view_index, byte_offset, count, dtype, width, what):
        view = self._item(self.doc.bufferViews, view_index, "bufferView")
        data = self._view_bytes(view_index)
        item = np.dtype(dtype).newbyteorder("<")
        element = item.itemsize * width
        stride = view.byteStride or element
        if not isinstance(stride, int) or not element <= stride <= 252:
            raise self._fail(f"/bufferViews/{view_index}/byteStride is {stride!r}; {what} needs {element}..252")
        needed = byte_offset + stride * (count - 1) + element if count else 0
        if needed > len(data):
            raise self._fail(f"{what} needs {needed} bytes of bufferView {view_index}, which has {len(data)}")
        if count == 0:
            return np.zeros((0, width), dtype=item)
        array = np.ndarray((count, width), dtype=item, buffer=data, offset=byte_offset, strides=(stride, item.itemsize))
        return array.copy()

    def accessor(self, index: int, as_float: bool = False) -> np.ndarray:
        """Decode accessor ``index`` into (count, components); normalised integers become floats in [0, 1]."""
        accessor = self._item(self.doc.accessors, index, "accessor")
        what = f"accessor {index}"
        if accessor.componentType not in _COMPONENT_DTYPES or accessor.type not in _TYPE_SIZES:
            raise self._fail(f"{what} has unsupported componentType/type {accessor.componentType}/{accessor.type}")
        dtype = _COMPONENT_DTYPES[accessor.componentType]
        width = _TYPE_SIZES[accessor.type]
        count = accessor.count
        if not isinstance(count, int) or count < 0:
            raise self._fail(f"{what} has an invalid count {count!r}")
        if count > 3 * MAX_TRIANGLES:
            raise self._fail(f"{what} has {count} elements, more than this loader accepts ({3 * MAX_TRIANGLES})")
        if accessor.bufferView is None:
            # Zero-filled (sparse) accessors take no bytes in the file: bound them by what the file holds, so a
            # few hundred bytes cannot ask for gigabytes.
            allowed = max(64 * 2**20, 16 * self.data_size)
            if count * width * np.dtype(dtype).itemsize > allowed:
                raise self._fail(f"/accessors/{index}/count {count} without a bufferView asks for "
                                 f"{count * width * np.dtype(dtype).itemsize} bytes, more than this file may ({allowed})")
            values = np.zeros((count, width), dtype=dtype)
        else:
            offset = self._natural(accessor.byteOffset or 0, f"/accessors/{index}/byteOffset")
            if offset % np.dtype(dtype).itemsize:
                raise self._fail(f"/accessors/{index}/byteOffset {offset} is not a multiple of the component size "
                                 f"{np.dtype(dtype).itemsize}")
            values = self._strided(accessor.bufferView, offset, count, dtype, width, what)
        if accessor.sparse is not None and accessor.sparse.count:
            sparse = accessor.sparse
            index_dtype = _COMPONENT_DTYPES.get(sparse.indices.componentType)
            if index_dtype is None:
                raise self._fail(f"{what} has sparse indices of unsupported type {sparse.indices.componentType}")
            if not isinstance(sparse.count, int) or not 0 < sparse.count <= count:
                raise self._fail(f"/accessors/{index}/sparse/count is {sparse.count!r}; must be in 1..{count}")
            rows = self._strided(sparse.indices.bufferView,
                                 self._natural(sparse.indices.byteOffset or 0,
                                               f"/accessors/{index}/sparse/indices/byteOffset"), sparse.count,
                                 index_dtype, 1, what + " sparse indices")[:, 0].astype(np.int64)
            if rows.size and (rows.min() < 0 or rows.max() >= count):
                raise self._fail(f"{what} has sparse indices outside 0..{count - 1}")
            values = values.copy()
            values[rows] = self._strided(sparse.values.bufferView,
                                         self._natural(sparse.values.byteOffset or 0,
                                                       f"/accessors/{index}/sparse/values/byteOffset"), sparse.count,
                                         dtype, width, what + " sparse values")
        if not as_float:
            return values
        if accessor.normalized and np.issubdtype(values.dtype, np.integer):
            info = np.iinfo(values.dtype)
            floats = values.astype(np.float32) / np.float32(info.max)
            return np.maximum(floats, -1.0) if info.min < 0 else floats
        return values.astype(np.float32)

    # ----------------------------------------------------------------------------------- images
    def _image(self, index: int) -> Optional[np.ndarray]:
        if index not in self._images:
            image = self._item(self.doc.images, index, "image")
            name = image.uri if image.uri and not image.uri.startswith("data:") else (image.name or f"image {index}")
            if image.bufferView is not None:
                data = bytes(self._view_bytes(image.bufferView))
            elif image.uri:
                data = self._read_uri(image.uri, f"image {index}")
                if data is None:
                    self.missing_files.append(image.uri)
            else:
                raise self._fail(f"image {index} has neither a uri nor a bufferView")
            self._images[index] = None if data is None else decode_image(data, f"{self.path}: {name}")
        return self._images[index]

    def _texture(self, info) -> Optional[Texture]:
        """A Texture for a textureInfo, or None when the info is absent or its image file is missing."""
        if info is None or info.index is None:
            return None
        texture = self._item(self.doc.textures, info.index, "texture")
        source = texture.source
        for extension in ("EXT_texture_webp", "KHR_texture_basisu", "MSFT_texture_dds"):
            if source is None and extension in (texture.extensions or {}):
                source = texture.extensions[extension].get("source")
        if source is None:
            return None
        image = self._image(source)
        if image is None:
            return None
        wrap_s = wrap_t = WrapMode.REPEAT
        filter_mode = FilterMode.LINEAR
        if texture.sampler is not None:
            sampler = self._item(self.doc.samplers, texture.sampler, "sampler")
            wrap_s = _WRAP_MODES.get(sampler.wrapS, WrapMode.REPEAT)
            wrap_t = _WRAP_MODES.get(sampler.wrapT, WrapMode.REPEAT)
            if sampler.magFilter == _NEAREST:
                filter_mode = FilterMode.NEAREST
        uv_set = info.texCoord or 0
        uv_transform = np.eye(3, dtype=np.float32)
        transform = (info.extensions or {}).get("KHR_texture_transform")
        if transform:
            uv_transform = gltf_uv_transform(_uv_transform_matrix(transform))
            uv_set = transform.get("texCoord", uv_set)
        if not isinstance(uv_set, int) or not 0 <= uv_set < _MAX_UV_SETS:
            raise self._fail(f"texture {info.index} uses texCoord {uv_set!r}; supported are 0..{_MAX_UV_SETS - 1}")
        name = self.doc.images[source].uri or self.doc.images[source].name or f"image {source}"
        return Texture(image, uv_set, uv_transform, wrap_s, wrap_t, filter_mode, name)

    def material(self, index: int) -> Material:
        gltf_material = self._item(self.doc.materials, index, "material")
        pbr = gltf_material.pbrMetallicRoughness
        base_color = np.asarray(pbr.baseColorFactor if pbr and pbr.baseColorFactor else [1, 1, 1, 1], np.float32)
        emissive = np.asarray(gltf_material.emissiveFactor or [0, 0, 0], np.float32)
        if base_color.shape != (4,) or emissive.shape != (3,):
            raise self._fail(f"material {index} has a malformed baseColorFactor or emissiveFactor")
        strength = (gltf_material.extensions or {}).get("KHR_materials_emissive_strength", {})
        pointer = f"/materials/{index}"
        self._finite(base_color, pointer + "/pbrMetallicRoughness/baseColorFactor")
        self._finite(emissive, pointer + "/emissiveFactor")
        if pbr is not None:
            self._finite(1.0 if pbr.metallicFactor is None else pbr.metallicFactor,
                         pointer + "/pbrMetallicRoughness/metallicFactor")
            self._finite(1.0 if pbr.roughnessFactor is None else pbr.roughnessFactor,
                         pointer + "/pbrMetallicRoughness/roughnessFactor")
        self._finite(0.5 if gltf_material.alphaCutoff is None else gltf_material.alphaCutoff, pointer + "/alphaCutoff")
        if not isinstance(strength, dict):
            raise self._fail(f"{pointer}/extensions/KHR_materials_emissive_strength is not an object")
        self._finite(strength.get("emissiveStrength", 1.0),
                     pointer + "/extensions/KHR_materials_emissive_strength/emissiveStrength")
        emissive = emissive * np.float32(strength.get("emissiveStrength", 1.0))
        alpha_mode = {"MASK": AlphaMode.MASK, "BLEND": AlphaMode.BLEND}.get(gltf_material.alphaMode, AlphaMode.OPAQUE)
        cutoff = gltf_material.alphaCutoff
        return Material(
            name=gltf_material.name or f"material {index}",
            base_color_factor=base_color,
            metallic_factor=float(1.0 if pbr is None or pbr.metallicFactor is None else pbr.metallicFactor),
            roughness_factor=float(1.0 if pbr is None or pbr.roughnessFactor is None else pbr.roughnessFactor),
            emissive_factor=emissive,
            base_color_texture=self._texture(pbr.baseColorTexture if pbr else None),
            metallic_roughness_texture=self._texture(pbr.metallicRoughnessTexture if pbr else None),
            emissive_texture=self._texture(gltf_material.emissiveTexture),
            normal_texture=self._texture(gltf_material.normalTexture),
            alpha_mode=alpha_mode,
            alpha_cutoff=float(0.5 if cutoff is None else cutoff),
            double_sided=bool(gltf_material.doubleSided),
        )

    # ----------------------------------------------------------------------------------- nodes
    def _world_matrices(self) -> List[np.ndarray]:
        nodes = self.doc.nodes or []
        parent = [-1] * len(nodes)
        for index, node in enumerate(nodes):
            for child in node.children or []:
                self._item(nodes, child, "child node")
                if parent[child] != -1:
                    raise self._fail(f"node {child} has two parents; glTF node graphs must be trees")
                parent[child] = index
        local = []
        for number, node in enumerate(nodes):
            for key in ("matrix", "translation", "rotation", "scale"):
                if getattr(node, key, None) is not None:
                    self._finite(getattr(node, key), f"/nodes/{number}/{key}")
            if node.matrix is not None:
                matrix = np.asarray(node.matrix, dtype=np.float64)
                if matrix.shape != (16,):
                    raise self._fail(f"node {node.name!r} has a matrix with {matrix.size} entries, expected 16")
                local.append(matrix.reshape(4, 4).T)  # glTF stores matrices column-major
                continue
            matrix = np.eye(4)
            matrix[:3, :3] = _quaternion_matrix(node.rotation) if node.rotation is not None else np.eye(3)
            if node.scale is not None:
                matrix[:3, :3] = matrix[:3, :3] * np.asarray(node.scale, dtype=np.float64)[None, :]
            if node.translation is not None:
                matrix[:3, 3] = node.translation
            local.append(matrix)
        world: List[Optional[np.ndarray]] = [None] * len(nodes)
        for start in range(len(nodes)):
            chain = []
            index = start
            while index != -1 and world[index] is None:
                chain.append(index)
                if len(chain) > len(nodes):
                    raise self._fail("the node hierarchy contains a cycle")
                index = parent[index]
            above = np.eye(4) if index == -1 else world[index]
            for node_index in reversed(chain):
                above = above @ local[node_index]
                world[node_index] = above
        return world

    def _scene_nodes(self) -> List[int]:
        """Indices of the nodes of the displayed scene, parents before children."""
        nodes = self.doc.nodes or []
        if self.doc.scenes:
            scene = self._item(self.doc.scenes, self.doc.scene or 0, "scene")
            roots = list(scene.nodes or [])
        else:
            children = {child for node in nodes for child in node.children or []}
            roots = [index for index in range(len(nodes)) if index not in children]
        order, stack = [], list(reversed(roots))
        while stack:
            index = stack.pop()
            self._item(nodes, index, "node")
            order.append(index)
            if len(order) > len(nodes):
                raise self._fail("the node hierarchy contains a cycle")
            stack.extend(reversed(nodes[index].children or []))
        return order

    # ----------------------------------------------------------------------------------- geometry
    def scene(self) -> Scene:
        world = self._world_matrices()
        materials: List[Material] = [self.material(i) for i in range(len(self.doc.materials or []))]
        default_id = None
        parts = []
        total = 0
        for node_index in self._scene_nodes():
            node = self.doc.nodes[node_index]
            if node.mesh is None:
                continue
            mesh = self._item(self.doc.meshes, node.mesh, "mesh")
            for primitive in mesh.primitives:
                mode = _MODE_TRIANGLES if primitive.mode is None else primitive.mode
                if mode not in (_MODE_TRIANGLES, _MODE_STRIP, _MODE_FAN):
                    continue  # points and lines have no surface
                part = self._primitive(primitive, mode, node_index, world)
                if part is None:
                    continue
                total += len(part["faces"])
                if total > MAX_TRIANGLES:
                    raise self._fail(f"the scene has more than {MAX_TRIANGLES} triangles")
                if primitive.material is None:
                    if default_id is None:
                        materials.append(default_material())
                        default_id = len(materials) - 1
                    part["material"] = default_id
                else:
                    self._item(self.doc.materials, primitive.material, "material")
                    part["material"] = primitive.material
                parts.append(part)
        if self.missing_files:
            warnings.warn(
                f"{self.path}: missing texture image file(s) {sorted(set(self.missing_files))}; "
                "those textures are ignored and their materials use their factors only",
                stacklevel=3,
            )
        if not parts:
            raise self._fail("the file contains no triangles")
        return _assemble(parts, materials, str(self.path))

    def _primitive(self, primitive, mode, node_index, world) -> Optional[dict]:
        node = self.doc.nodes[node_index]
        attributes = primitive.attributes
        if "KHR_draco_mesh_compression" in (primitive.extensions or {}):
            raise self._fail("a primitive uses KHR_draco_mesh_compression, which this loader cannot decode")
        if attributes.POSITION is None:
            return None
        positions = self.accessor(attributes.POSITION, as_float=True)
        if positions.shape[1] != 3:
            raise self._fail(f"POSITION accessor {attributes.POSITION} is not VEC3")
        if primitive.indices is None:
            indices = np.arange(len(positions), dtype=np.int64)
        else:
            indices = self.accessor(primitive.indices)[:, 0].astype(np.int64)
            if indices.size and (indices.min() < 0 or indices.max() >= len(positions)):
                raise self._fail(
                    f"indices accessor {primitive.indices} refers to vertex {indices.max()} "
                    f"but the primitive has {len(positions)}"
                )
        faces = _triangulate(indices, mode)
        if len(faces) == 0:
            return None
        if len(faces) > MAX_TRIANGLES:
            raise self._fail(f"a primitive has {len(faces)} triangles, more than {MAX_TRIANGLES}")
        normals = self.accessor(attributes.NORMAL, as_float=True) if attributes.NORMAL is not None else None

        skinned = node.skin is not None and attributes.JOINTS_0 is not None and attributes.WEIGHTS_0 is not None
        if skinned:
            positions, normals = self._skin(node.skin, attributes, positions, normals, world)
            flip = False
        else:
            matrix = world[node_index]
            linear = matrix[:3, :3]
            positions = (positions.astype(np.float64) @ linear.T + matrix[:3, 3]).astype(np.float32)
            if normals is not None:
                normals = _transform_normals(normals, linear)
            flip = np.linalg.det(linear) < 0
        if flip:
            faces = faces[:, [0, 2, 1]]  # a mirroring transform turns counter-clockwise into clockwise

        part = {"vertices": positions, "faces": faces, "uvs": {}, "colors": None}
        part["normals"] = normals[faces] if normals is not None and len(normals) == len(positions) else None
        for uv_set in range(_MAX_UV_SETS):
            accessor_index = getattr(attributes, f"TEXCOORD_{uv_set}", None)
            if accessor_index is not None:
                uv = self.accessor(accessor_index, as_float=True)
                if uv.shape != (len(positions), 2):
                    raise self._fail(f"TEXCOORD_{uv_set} accessor {accessor_index} is not VEC2 per vertex")
                uv = np.stack([uv[:, 0], 1 - uv[:, 1]], axis=1)  # glTF t (down) -> scene v (up)
                part["uvs"][uv_set] = uv[faces]
        if attributes.COLOR_0 is not None:
            colors = self.accessor(attributes.COLOR_0, as_float=True)
            if colors.shape[0] != len(positions) or colors.shape[1] not in (3, 4):
                raise self._fail(f"COLOR_0 accessor {attributes.COLOR_0} is not VEC3/VEC4 per vertex")
            if colors.shape[1] == 3:
                colors = np.concatenate([colors, np.ones((len(colors), 1), np.float32)], axis=1)
            part["colors"] = colors[faces]
        return part

    def _skin(self, skin_index, attributes, positions, normals, world):
        """Linear-blend skinning with every joint at its rest transform (the pose a viewer shows unanimated)."""
        skin = self._item(self.doc.skins, skin_index, "skin")
        joints = list(skin.joints or [])
        if not joints:
            raise self._fail(f"skin {skin_index} has no joints")
        if skin.inverseBindMatrices is not None:
            inverse_bind = self.accessor(skin.inverseBindMatrices, as_float=True).astype(np.float64)
            inverse_bind = inverse_bind.reshape(-1, 4, 4).transpose(0, 2, 1)
        else:
            inverse_bind = np.tile(np.eye(4), (len(joints), 1, 1))
        if len(inverse_bind) != len(joints):
            raise self._fail(f"skin {skin_index} has {len(joints)} joints but {len(inverse_bind)} inverse bind matrices")
        for joint in joints:
            self._item(self.doc.nodes, joint, "joint node")
        joint_matrices = np.stack([world[joint] @ inverse_bind[k] for k, joint in enumerate(joints)])
        joint_ids = self.accessor(attributes.JOINTS_0).astype(np.int64)
        weights = self.accessor(attributes.WEIGHTS_0, as_float=True).astype(np.float64)
        if joint_ids.shape != (len(positions), 4) or weights.shape != (len(positions), 4):
            raise self._fail("JOINTS_0 / WEIGHTS_0 must be VEC4 per vertex")
        if joint_ids.size and (joint_ids.min() < 0 or joint_ids.max() >= len(joint_matrices)):
            raise self._fail(f"JOINTS_0 refers to joint {joint_ids.max()} but skin {skin_index} has {len(joints)}")
        total = weights.sum(axis=1, keepdims=True)
        weights = np.where(total > 0, weights / np.where(total > 0, total, 1), np.array([1.0, 0, 0, 0]))
        blended = np.einsum("vk,vkij->vij", weights, joint_matrices[joint_ids])
        homogeneous = np.concatenate([positions.astype(np.float64), np.ones((len(positions), 1))], axis=1)
        skinned = np.einsum("vij,vj->vi", blended, homogeneous)[:, :3].astype(np.float32)
        if normals is not None:
            normals = np.einsum("vij,vj->vi", blended[:, :3, :3], normals.astype(np.float64))
            normals = _unit(normals).astype(np.float32)
        return skinned, normals


def _unit(vectors: np.ndarray) -> np.ndarray:
    length = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(length > 0, length, 1)


def _transform_normals(normals: np.ndarray, linear: np.ndarray) -> np.ndarray:
    try:
        normal_matrix = np.linalg.inv(linear).T
    except np.linalg.LinAlgError:
        normal_matrix = linear  # a singular transform squashes the mesh flat; any normal is as good
    return _unit(normals.astype(np.float64) @ normal_matrix.T).astype(np.float32)


def flat_normals(triangles: np.ndarray) -> np.ndarray:
    """(F, 3, 3) corners -> (F, 3, 3) face normal repeated per corner (zero for degenerate triangles)."""
    cross = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    return np.repeat(_unit(cross.astype(np.float64)).astype(np.float32)[:, None, :], 3, axis=1)


def _assemble(parts: List[dict], materials: List[Material], source: str) -> Scene:
    """Concatenate per-primitive parts into one Scene, filling absent attributes with defaults."""
    offsets = np.cumsum([0] + [len(p["vertices"]) for p in parts])
    vertices = np.concatenate([p["vertices"] for p in parts]).astype(np.float32)
    faces = np.concatenate([p["faces"] + offsets[i] for i, p in enumerate(parts)]).astype(np.int64)
    normals = []
    for part in parts:
        if part["normals"] is None:
            part["normals"] = flat_normals(part["vertices"][part["faces"]])
        normals.append(part["normals"])
    num_sets = max([max(p["uvs"], default=-1) + 1 for p in parts] + [1])
    num_sets = max([num_sets] + [t.uv_set + 1 for m in materials for t in m.textures()])
    uvs = [
        np.concatenate([p["uvs"].get(s, np.zeros((len(p["faces"]), 3, 2), np.float32)) for p in parts])
        for s in range(num_sets)
    ]
    colors = None
    if any(p["colors"] is not None for p in parts):
        colors = np.concatenate(
            [p["colors"] if p["colors"] is not None else np.ones((len(p["faces"]), 3, 4), np.float32) for p in parts]
        )
    material_ids = np.concatenate([np.full(len(p["faces"]), p["material"], np.int32) for p in parts])
    return Scene(vertices, faces, uvs, np.concatenate(normals), colors, material_ids, materials, source)
