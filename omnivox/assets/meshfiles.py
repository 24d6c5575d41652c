"""OBJ (+ MTL + images), PLY and STL loading into a `Scene`, with trimesh as the geometry reader.

trimesh parses the geometry (and splits OBJ files per material); the MTL files are parsed here so that
every material statement maps to PBR the same way Blender's OBJ importer (the TRELLIS.2 data toolkit's
reader) does it:

* base colour: ``map_Kd`` texture if present (then ``Kd`` is ignored, as in Blender), else ``Kd``;
* alpha: ``d`` (dissolve); ``d < 1`` gives BLEND. ``Tr`` is ignored on purpose: exporters disagree whether
  it means transparency or opacity (trimesh's own ``capsule.mtl`` writes ``Tr 1`` for an opaque surface);
* metallic: ``Pm`` if present, else 0; roughness: ``Pr`` if present, else ``1 - sqrt(Ns / 1000)`` from the
  specular exponent (Blender's mapping), else 0.5; emissive: ``Ke``;
* ``-clamp on`` on ``map_Kd`` selects CLAMP_TO_EDGE, otherwise REPEAT; textures are LINEAR.

Missing MTL or image files give the default material / factor-only material and exactly one warning per
load. Meshes without any material (STL, PLY, OBJ without ``mtllib``) get `default_material()`; if they carry
vertex colours the base colour factor is 1 so that the colours show unchanged.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from omnivox.assets.confine import resolve_reference
from omnivox.assets.gltf import flat_normals
from omnivox.assets.images import decode_image
from omnivox.assets.scene import MAX_TRIANGLES, AlphaMode, Material, Scene, Texture, WrapMode, default_material

# Errors trimesh and its parsers raise on malformed input; anything else is a bug and should surface.
_PARSE_ERRORS = (ValueError, IndexError, KeyError, TypeError, struct.error, UnicodeDecodeError, EOFError,
                 AttributeError, OverflowError, ZeroDivisionError, RecursionError, NotImplementedError)


def load_mesh_file(path: Path, allow_outside: bool = False) -> Scene:
    """Load an ``.obj``, ``.ply`` or ``.stl`` file (world units, not normalised).

    ``mtllib``, ``map_Kd`` and a PLY ``TextureFile`` must name files inside the asset's folder unless
    ``allow_outside`` (``omnivox.assets.confine``). Text is read as UTF-8, else Latin-1.

    Raises:
        ValueError: unreadable or truncated file, a reference outside the folder, no triangles, or more than
            ``MAX_TRIANGLES``.
    """
    import trimesh

    suffix = path.suffix.lower()
    data = path.read_bytes()
    if suffix == ".stl":
        _check_binary_stl(path, data)
    elif suffix == ".obj":
        data = decode_text(data).encode("utf-8")  # trimesh would guess other encodings with an optional package
        _check_obj_counts(path, data)
    elif suffix == ".ply":
        _check_ply_counts(path, data)
    resolver = _ConfinedResolver(path, allow_outside)
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=suffix[1:], resolver=resolver, process=False,
                              force="scene")
    except _PARSE_ERRORS as error:
        raise ValueError(f"{path}: cannot parse {suffix[1:].upper()} file ({type(error).__name__}: {error})") from error

    missing: List[str] = []
    mtl_materials = _obj_materials(path, data.decode("utf-8"), missing, allow_outside) if suffix == ".obj" else {}
    parts = []
    materials: List[Material] = []
    material_index: Dict[str, int] = {}
    total = 0
    for mesh in loaded.dump():
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            continue
        total += len(mesh.faces)
        if total > MAX_TRIANGLES:
            raise ValueError(f"{path}: the scene has more than {MAX_TRIANGLES} triangles")
        part = _mesh_part(mesh, path)
        key, material = _material_for(mesh, mtl_materials, part["colors"] is not None, suffix, resolver, path)
        if key not in material_index:
            material_index[key] = len(materials)
            materials.append(material)
        part["material"] = material_index[key]
        parts.append(part)
    if missing:
        warnings.warn(
            f"{path}: missing file(s) {sorted(set(missing))}; affected materials fall back to their factors "
            "or to the default material",
            stacklevel=3,
        )
    if not parts:
        raise ValueError(f"{path}: the file contains no triangles")
    return _concatenate(parts, materials, str(path))


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without a byte-order mark), else Latin-1, which decodes any byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


class _ConfinedResolver:
    """A trimesh resolver that reads only what `resolve_reference` allows, and remembers what it read."""

    def __init__(self, asset: Path, allow_outside: bool):
        self.asset = asset
        self.allow_outside = allow_outside
        self.read: Dict[str, bytes] = {}

    def get(self, name: str) -> bytes:
        try:
            file = resolve_reference(self.asset, name, "a reference", self.allow_outside)
        except ValueError as error:
            raise OSError(str(error)) from None  # trimesh treats OSError as "material file not available"
        data = file.read_bytes()
        self.read[name] = data
        return data

    __getitem__ = get

    def write(self, name, data):
        raise OSError("read-only resolver")

    def namespaced(self, namespace):
        raise OSError("namespaced references are not supported")

    def keys(self):
        return iter(())

    def __contains__(self, name) -> bool:
        return False


def _check_obj_counts(path: Path, data: bytes) -> None:
    """Bound the elements of an OBJ before trimesh allocates them (each ``f`` line is at least one triangle)."""
    faces = data.count(b"\nf ") + data.startswith(b"f ")
    if faces > MAX_TRIANGLES:
        raise ValueError(f"{path}: the file has {faces} faces, more than {MAX_TRIANGLES}")


def _check_ply_counts(path: Path, data: bytes) -> None:
    """Declared PLY element counts against ``MAX_TRIANGLES`` and the file size, before trimesh allocates."""
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file (no ply ... end_header header)")
    for line in data[:end].split(b"\n"):
        words = line.split()
        if len(words) == 3 and words[0] == b"element":
            try:
                count = int(words[2])
            except ValueError:
                raise ValueError(f"{path}: malformed PLY element line {line.decode('latin-1').strip()!r}") from None
            if count < 0 or count > 3 * MAX_TRIANGLES:
                raise ValueError(f"{path}: PLY element {words[1].decode('latin-1')!r} declares {count} items, "
                                 f"more than this loader accepts ({3 * MAX_TRIANGLES})")
            if count > len(data) - end:  # every item takes at least one byte, in ASCII or binary
                raise ValueError(f"{path}: truncated PLY file: element {words[1].decode('latin-1')!r} declares "
                                 f"{count} items but {len(data) - end} bytes follow the header")


def _check_binary_stl(path: Path, data: bytes) -> None:
    """A binary STL declares its triangle count; check it against the file size before trimesh reads it."""
    size = len(data)
    head = data[:84]
    if head[:5].lower() == b"solid" and b"facet" in data[:4096]:
        return  # ASCII STL
    if len(head) < 84:
        raise ValueError(f"{path}: truncated STL file ({size} bytes; a binary STL header needs 84)")
    (count,) = struct.unpack_from("<I", head, 80)
    if count > MAX_TRIANGLES:
        raise ValueError(f"{path}: STL declares {count} triangles, more than {MAX_TRIANGLES}")
    if size < 84 + 50 * count:
        raise ValueError(f"{path}: truncated STL file: it declares {count} triangles ({84 + 50 * count} bytes) "
                         f"but has {size} bytes")


def _mesh_part(mesh, path: Path) -> dict:
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"{path}: a face refers to a vertex that does not exist")
    if not np.isfinite(vertices).all():
        raise ValueError(f"{path}: vertex positions contain NaN or infinity")
    part = {"vertices": vertices, "faces": faces, "uv": None, "colors": None}
    visual = mesh.visual
    uv = getattr(visual, "uv", None)
    if uv is not None and len(uv) == len(vertices):
        part["uv"] = np.asarray(uv, dtype=np.float32)[faces]
    if getattr(visual, "kind", None) == "vertex":
        colors = np.asarray(visual.vertex_colors, dtype=np.float32)[:, :4] / 255.0
        part["colors"] = colors[faces]
    elif getattr(visual, "kind", None) == "face":
        colors = np.asarray(visual.face_colors, dtype=np.float32)[:, :4] / 255.0
        part["colors"] = np.repeat(colors[:, None, :], 3, axis=1)
    # trimesh returns the file's normals when it has them and area-weighted vertex normals otherwise.
    normals = np.asarray(mesh.vertex_normals, dtype=np.float32)
    part["normals"] = normals[faces] if len(normals) == len(vertices) else flat_normals(vertices[faces])
    return part


def _material_for(mesh, mtl_materials, has_colors: bool, suffix: str, resolver: _ConfinedResolver, path: Path):
    """(dedup key, Material) for one trimesh geometry."""
    visual_material = getattr(mesh.visual, "material", None)
    name = getattr(visual_material, "name", None)
    if name in mtl_materials:
        return "mtl:" + name, mtl_materials[name]
    image = getattr(visual_material, "image", None)
    if image is not None and suffix == ".ply":
        # A texture named by a PLY "TextureFile" comment. (For OBJ files trimesh invents a placeholder
        # image when there is no MTL, so OBJ textures come only from the MTL parsed here.)
        material = default_material("texture")
        material.base_color_factor = np.ones(4, dtype=np.float32)
        # Decoded again through decode_image, so that its size limits apply (trimesh opened it unchecked).
        name, data = next(iter(resolver.read.items()), (None, None))
        if data is None:
            return "default", default_material()
        material.base_color_texture = Texture(decode_image(data, f"{path}: {name}"), name="texture")
        return "texture:" + str(id(image)), material
    if has_colors:
        material = default_material("vertex colors")
        material.base_color_factor = np.ones(4, dtype=np.float32)
        return "vertex colors", material
    return "default", default_material()


def _obj_materials(path: Path, text: str, missing: List[str], allow_outside: bool) -> Dict[str, Material]:
    """Parse every ``mtllib`` the OBJ names; missing files are appended to ``missing``."""
    libraries = []
    for line in text.splitlines():
        if line.startswith("mtllib"):
            libraries.extend(line.split()[1:])
    materials: Dict[str, Material] = {}
    for library in libraries:
        file = resolve_reference(path, library, "mtllib", allow_outside)
        if not file.is_file():
            missing.append(library)
            continue
        materials.update(_parse_mtl(file, missing, path, allow_outside))
    return materials


def _parse_mtl(file: Path, missing: List[str], asset: Path, allow_outside: bool) -> Dict[str, Material]:
    statements: Dict[str, Dict[str, List[str]]] = {}
    current: Optional[Dict[str, List[str]]] = None
    for raw in decode_text(file.read_bytes()).splitlines():
        tokens = raw.strip().split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if tokens[0] == "newmtl":
            current = statements.setdefault(" ".join(tokens[1:]), {})
        elif current is not None:
            current[tokens[0]] = tokens[1:]
    for values in statements.values():  # every map_* names a file: each must stay inside the asset's folder
        for key, arguments in values.items():
            if key.lower().startswith("map_") and arguments:
                resolve_reference(asset, arguments[-1], key, allow_outside, base=file.parent, referrer=file)
    return {name: _mtl_to_pbr(name, values, file, missing, asset, allow_outside) for name, values in statements.items()}


def _floats(values: Optional[List[str]], count: int, file: Path, key: str) -> Optional[np.ndarray]:
    if values is None:
        return None
    try:
        numbers = [float(v) for v in values[:count]]
    except ValueError as error:
        raise ValueError(f"{file}: malformed {key} statement {' '.join(values)!r}") from error
    if not numbers:
        raise ValueError(f"{file}: empty {key} statement")
    if not np.isfinite(numbers).all():
        raise ValueError(f"{file}: {key} statement {' '.join(values)!r} holds NaN or infinity")
    if len(numbers) < count:  # "Kd 0.5" means grey
        numbers = numbers + [numbers[-1]] * (count - len(numbers))
    return np.clip(np.asarray(numbers, dtype=np.float32), 0.0, None)


def _mtl_to_pbr(name: str, values: Dict[str, List[str]], file: Path, missing: List[str], asset: Path,
                allow_outside: bool) -> Material:
    material = Material(name=name, metallic_factor=0.0, roughness_factor=0.5)
    diffuse = _floats(values.get("Kd"), 3, file, "Kd")
    texture = None
    if "map_Kd" in values and values["map_Kd"]:
        arguments = values["map_Kd"]
        image_file = resolve_reference(asset, arguments[-1], "map_Kd", allow_outside, base=file.parent, referrer=file)
        if image_file.is_file():
            clamp = "-clamp" in arguments and arguments[arguments.index("-clamp") + 1:][:1] == ["on"]
            wrap = WrapMode.CLAMP_TO_EDGE if clamp else WrapMode.REPEAT
            image = decode_image(image_file.read_bytes(), str(image_file))
            texture = Texture(image, wrap_s=wrap, wrap_t=wrap, name=arguments[-1])
        else:
            missing.append(arguments[-1])
    material.base_color_texture = texture
    if texture is not None:
        base = np.ones(3, np.float32)
    elif diffuse is not None:
        base = diffuse
    else:
        base = np.full(3, 0.8, np.float32)
    dissolve = _floats(values.get("d"), 1, file, "d")
    alpha = float(min(dissolve[0], 1.0)) if dissolve is not None else 1.0
    material.base_color_factor = np.concatenate([np.minimum(base, 1.0), [alpha]]).astype(np.float32)
    material.alpha_mode = AlphaMode.BLEND if alpha < 1.0 else AlphaMode.OPAQUE
    metallic = _floats(values.get("Pm"), 1, file, "Pm")
    if metallic is not None:
        material.metallic_factor = float(min(metallic[0], 1.0))
    roughness = _floats(values.get("Pr"), 1, file, "Pr")
    shininess = _floats(values.get("Ns"), 1, file, "Ns")
    if roughness is not None:
        material.roughness_factor = float(min(roughness[0], 1.0))
    elif shininess is not None:
        material.roughness_factor = float(1.0 - np.sqrt(min(shininess[0], 1000.0) / 1000.0))
    emissive = _floats(values.get("Ke"), 3, file, "Ke")
    if emissive is not None:
        material.emissive_factor = emissive
    return material


def _concatenate(parts: List[dict], materials: List[Material], source: str) -> Scene:
    offsets = np.cumsum([0] + [len(p["vertices"]) for p in parts])
    faces = np.concatenate([p["faces"] + offsets[i] for i, p in enumerate(parts)])
    uvs = [np.concatenate([p["uv"] if p["uv"] is not None else np.zeros((len(p["faces"]), 3, 2), np.float32)
                           for p in parts])]
    colors = None
    if any(p["colors"] is not None for p in parts):
        colors = np.concatenate([p["colors"] if p["colors"] is not None else np.ones((len(p["faces"]), 3, 4),
                                                                                     np.float32) for p in parts])
    return Scene(
        vertices=np.concatenate([p["vertices"] for p in parts]),
        faces=faces.astype(np.int64),
        uvs=uvs,
        normals=np.concatenate([p["normals"] for p in parts]),
        colors=colors.astype(np.float32) if colors is not None else None,
        material_ids=np.concatenate([np.full(len(p["faces"]), p["material"], np.int32) for p in parts]),
        materials=materials,
        source=source,
    )
