"""The in-memory scene every asset loader produces: triangles, per-corner attributes and PBR materials.

Layout (``F`` triangles, ``V`` vertices, ``M`` materials)::

    vertices      (V, 3) float32   positions in world units (node transforms already applied)
    faces         (F, 3) int64     indices into ``vertices``, counter-clockwise = front
    uvs           list of (F, 3, 2) float32, one entry per UV set (glTF TEXCOORD_n); zeros where a
                  primitive lacks that set; UV convention below
    normals       (F, 3, 3) float32  per-corner shading normals (flat face normals where the file has none)
    colors        (F, 3, 4) float32 per-corner RGBA vertex colours, or None when no primitive has any
    material_ids  (F,) int32        index into ``materials``

Positions and normals are in the Z-up data frame (``omnivox.assets.frames``): loaders rotate Y-up formats into it
and record the file's up axis in ``source_up_axis``.

Example::

    scene = load_asset("Avocado.gltf").normalized()   # fits in the unit box centred at the origin
    tris = scene.triangles()                           # (F, 3, 3) float32

**The UV convention** (one for every loader and every reader): ``(u, v)`` with the origin at the *bottom-left*
of the image and ``v`` growing *upwards*: the convention of OBJ, PLY, OpenGL, Blender and ``trimesh.visual.uv``,
and the one the TRELLIS.2 data toolkit reads (its Blender dumps are v-up). Texture images are stored row 0 = top
(PIL order), so the texel row of ``v`` is ``(1 - v) * height``. Loaders convert into it: the glTF loader stores
``v = 1 - t`` for a file's ``t`` (glTF puts the origin at the top-left) and rewrites ``KHR_texture_transform``
into this frame (`gltf_uv_transform`); OBJ/PLY UVs are stored as written. Readers go from scene UVs to image
positions through `image_coordinates` (rendering, data-toolkit renders) or use ``(1 - v) * height`` directly
(the voxelizer's kernels in ``omnivox.ovoxel.materials``); writers hand ``(u, v)`` to trimesh, which writes
``t = 1 - v`` into glTF files.

Colour values are stored exactly as the file gives them: texture bytes untouched (sRGB-encoded for
base colour / emissive in glTF), factors and vertex colours as floats. Voxelization multiplies them without
any colour-space conversion, as the reference does (see ``omnivox.ovoxel.materials``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import List, Optional

import numpy as np

# Refuse inputs whose size alone would exhaust memory long before anything useful happens. A 16k texture
# is 1 GiB as RGBA with its mip pyramid; 50 M triangles is ~3.6 GB of per-corner attributes.
MAX_TEXTURE_SIDE = 16384
MAX_TRIANGLES = 50_000_000

# Spec ovoxel.md 1.1: the data toolkit scales the largest extent to 0.99999 so that surfaces stay strictly
# inside the unit box (surfaces exactly on the +0.5 faces would be dropped by the voxel scan).
NORMALIZATION_MARGIN = np.float32(0.99999)


class AlphaMode(enum.IntEnum):
    """glTF alpha modes; the integer values are the reference converter's codes."""

    OPAQUE = 0
    MASK = 1
    BLEND = 2


class WrapMode(enum.IntEnum):
    """Texture wrap modes; the integer values are the reference converter's codes."""

    REPEAT = 0
    CLAMP_TO_EDGE = 1
    MIRRORED_REPEAT = 2


class FilterMode(enum.IntEnum):
    """Texture filters: NEAREST reads one texel, LINEAR is bilinear with a mip pyramid."""

    NEAREST = 0
    LINEAR = 1


# (u, t) <-> (u, 1 - t): glTF's v-down texture coordinates <-> the scene's v-up ones (its own inverse).
_FLIP_V = np.array([[1, 0, 0], [0, -1, 1], [0, 0, 1]], dtype=np.float64)


def gltf_uv_transform(matrix: np.ndarray) -> np.ndarray:
    """A (3, 3) UV transform written for glTF's v-down coordinates, rewritten for the scene's v-up ones.

    glTF applies ``M`` to ``(u, t)``; the scene holds ``(u, v) = F (u, t)`` with ``F`` the flip ``t -> 1 - t``,
    so the same mapping in scene coordinates is ``F M F`` (exact: ``F`` has entries 0 and +-1).
    """
    return (_FLIP_V @ np.asarray(matrix, np.float64) @ _FLIP_V).astype(np.float32)


def image_coordinates(uv, uv_transform=None):
    """Scene UVs (..., 2) -> positions in the image, in units of its width and height: ``x`` from the left
    edge, ``y`` from the top edge (row 0), so pixel ``(x * W, y * H)``; texel centres at ``(i + 0.5) / size``.

    Applies ``uv_transform`` (a Texture's, in scene coordinates) first. Works on NumPy arrays and torch tensors
    (the result has the input's type, dtype and device); the transform is affine, so derivatives of ``uv``
    map through its 2x2 part with the sign of ``y`` flipped.
    """
    if uv_transform is not None and not np.array_equal(uv_transform, np.eye(3, dtype=np.float32)):
        matrix = np.asarray(uv_transform, np.float64)
        u = uv[..., 0] * float(matrix[0, 0]) + uv[..., 1] * float(matrix[0, 1]) + float(matrix[0, 2])
        v = uv[..., 0] * float(matrix[1, 0]) + uv[..., 1] * float(matrix[1, 1]) + float(matrix[1, 2])
    else:
        u, v = uv[..., 0], uv[..., 1]
    x, y = u, 1 - v
    if isinstance(uv, np.ndarray):
        return np.stack([x, y], axis=-1)
    import torch

    return torch.stack([x, y], dim=-1)


def _identity_uv_transform() -> np.ndarray:
    return np.eye(3, dtype=np.float32)


@dataclass
class Texture:
    """One texture reference of a material.

    Attributes:
        image: (H, W, 4) uint8 RGBA, row 0 = top of the image (PIL order). Grey images are expanded to
            RGB, missing alpha is 255. Several textures may share one array; treat it as read-only.
        uv_set: which entry of ``Scene.uvs`` the texture reads (glTF ``texCoord``).
        uv_transform: (3, 3) float32 matrix applied to the scene's ``(u, v, 1)`` (v up, module docstring) before
            sampling; identity when absent. glTF's ``KHR_texture_transform`` is defined on its own v-down
            coordinates: `gltf_uv_transform` rewrites it into this frame.
        wrap_s, wrap_t: wrap mode along u and along v.
        filter: NEAREST or LINEAR (glTF ``magFilter``; LINEAR textures are sampled with mipmaps).
        name: file name or image name, for messages.
    """

    image: np.ndarray
    uv_set: int = 0
    uv_transform: np.ndarray = field(default_factory=_identity_uv_transform)
    wrap_s: WrapMode = WrapMode.REPEAT
    wrap_t: WrapMode = WrapMode.REPEAT
    filter: FilterMode = FilterMode.LINEAR
    name: str = ""


@dataclass
class Material:
    """A glTF-style metallic-roughness material.

    Channel rules (glTF 2.0): base colour = texture RGBA x ``base_color_factor`` (x vertex colour);
    metallic = texture B x ``metallic_factor``; roughness = texture G x ``roughness_factor``;
    emissive = texture RGB x ``emissive_factor``.

    Attributes:
        name: material name from the file ("" if none).
        base_color_factor: (4,) float32 RGBA.
        metallic_factor, roughness_factor: floats in [0, 1].
        emissive_factor: (3,) float32 (already multiplied by ``KHR_materials_emissive_strength``).
        base_color_texture, metallic_roughness_texture, emissive_texture, normal_texture: or None.
        alpha_mode: OPAQUE ignores alpha, MASK thresholds it at ``alpha_cutoff``, BLEND keeps it.
        alpha_cutoff: MASK threshold (glTF default 0.5).
        double_sided: glTF ``doubleSided``.
    """

    name: str = ""
    base_color_factor: np.ndarray = field(default_factory=lambda: np.ones(4, dtype=np.float32))
    metallic_factor: float = 1.0
    roughness_factor: float = 1.0
    emissive_factor: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.float32))
    base_color_texture: Optional[Texture] = None
    metallic_roughness_texture: Optional[Texture] = None
    emissive_texture: Optional[Texture] = None
    normal_texture: Optional[Texture] = None
    alpha_mode: AlphaMode = AlphaMode.OPAQUE
    alpha_cutoff: float = 0.5
    double_sided: bool = False

    def textures(self) -> List[Texture]:
        """The textures this material uses (no None entries)."""
        candidates = (
            self.base_color_texture,
            self.metallic_roughness_texture,
            self.emissive_texture,
            self.normal_texture,
        )
        return [t for t in candidates if t is not None]


def default_material(name: str = "default") -> Material:
    """The material given to meshes whose file carries none (STL, PLY, OBJ without MTL, glTF without one).

    Grey 0.8 dielectric with roughness 0.5, opaque: the same default the TRELLIS.2 data toolkit assigns to
    faces without a material (spec ovoxel.md 4.7), so such assets voxelize like the training data. (The
    glTF specification's own default, metallic 1 / roughness 1, would turn plain meshes into rough metal.)
    """
    return Material(
        name=name,
        base_color_factor=np.array([0.8, 0.8, 0.8, 1.0], dtype=np.float32),
        metallic_factor=0.0,
        roughness_factor=0.5,
    )


@dataclass
class Scene:
    """A triangle scene with per-corner attributes and materials; see the module docstring for the layout."""

    vertices: np.ndarray
    faces: np.ndarray
    uvs: List[np.ndarray]
    normals: np.ndarray
    colors: Optional[np.ndarray]
    material_ids: np.ndarray
    materials: List[Material]
    source: str = ""
    source_up_axis: str = "z"  # the up axis of the file it came from; the scene itself is Z-up (assets.frames)

    def __post_init__(self) -> None:
        # Internal consistency of what loaders build; user-facing validation happens in the loaders.
        num_faces = len(self.faces)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"Scene.vertices must be (V, 3), got {self.vertices.shape}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"Scene.faces must be (F, 3), got {self.faces.shape}")
        if self.normals.shape != (num_faces, 3, 3):
            raise ValueError(f"Scene.normals must be ({num_faces}, 3, 3), got {self.normals.shape}")
        for index, uv in enumerate(self.uvs):
            if uv.shape != (num_faces, 3, 2):
                raise ValueError(f"Scene.uvs[{index}] must be ({num_faces}, 3, 2), got {uv.shape}")
        if self.colors is not None and self.colors.shape != (num_faces, 3, 4):
            raise ValueError(f"Scene.colors must be ({num_faces}, 3, 4) or None, got {self.colors.shape}")
        if self.material_ids.shape != (num_faces,):
            raise ValueError(f"Scene.material_ids must be ({num_faces},), got {self.material_ids.shape}")
        if num_faces and (self.material_ids.min() < 0 or self.material_ids.max() >= len(self.materials)):
            raise ValueError("Scene.material_ids must index into Scene.materials")
        if num_faces and (self.faces.min() < 0 or self.faces.max() >= len(self.vertices)):
            raise ValueError("Scene.faces must index into Scene.vertices")

    @property
    def num_faces(self) -> int:
        return int(len(self.faces))

    def triangles(self) -> np.ndarray:
        """(F, 3, 3) float32 corner positions."""
        return self.vertices[self.faces]

    def normalized(self) -> "Scene":
        """A copy fitted into the unit box centred at the origin, as the TRELLIS.2 data toolkit does.

        Spec ovoxel.md 1.1, float32 throughout: ``center = (min + max) / 2``,
        ``scale = 0.99999 / max(max - min)``, ``v' = (v - center) * scale``. The geometry and the material
        converters both use this, so they see bit-identical vertices.
        """
        vertices, _, _ = normalize_vertices(self.vertices, source=self.source)
        return replace(self, vertices=vertices)


def normalize_vertices(vertices: np.ndarray, source: str = "vertices"):
    """Spec 1.1 normalisation of (V, 3) positions.

    Args:
        vertices: (V, 3) float positions (cast to float32 first, as the reference does).
        source: name used in error messages.

    Returns:
        (normalized (V, 3) float32, center (3,) float32, scale float32).

    Raises:
        ValueError: no vertices, non-finite values, or all vertices at one point.
    """
    points = np.asarray(vertices, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"{source}: cannot normalise an empty scene (vertices shape {points.shape})")
    if not np.isfinite(points).all():
        raise ValueError(f"{source}: vertex positions contain NaN or infinity")
    low = points.min(axis=0)
    high = points.max(axis=0)
    center = (low + high) / np.float32(2)
    extent = (high - low).max()
    if not extent > 0:
        raise ValueError(f"{source}: all vertices coincide; the scene has no extent to normalise")
    scale = NORMALIZATION_MARGIN / extent
    return ((points - center) * scale).astype(np.float32), center, np.float32(scale)


def normalize_scene(scene: Scene) -> Scene:
    """Same as ``scene.normalized()``."""
    return scene.normalized()
