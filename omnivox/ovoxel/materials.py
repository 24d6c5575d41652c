"""Textured mesh -> per-voxel PBR attributes (spec ovoxel.md section 4).

Two implementations of the same float32 arithmetic: a vectorized PyTorch path (any device, the GPU path and
the reference) and a fused numba kernel for the CPU (``kernels/materials_numba.py``); ``backend="auto"``
picks numba on the CPU and PyTorch elsewhere, and the tests compare the two.

Every (triangle, voxel) incidence of the geometry scan (``scan.triangle_voxel_pairs``) is one sample: the voxel
centre is projected onto the triangle's plane, its **unclamped** barycentrics interpolate UVs and vertex
colours, textures are read with the material's sampler (wrap per axis, NEAREST or trilinear over a mip
pyramid of truncating 2x2 averages, level ``log2(footprint * H) + mip_level_offset``), and each voxel takes
the weighted mean ``sum(value * w) / sum(w)`` with ``w = 1 - signed plane distance`` in float32. Outputs are
``uint8(trunc(clamp(x * 255, 0, 255)))``. The voxels are those of ``mesh_to_dual_grid`` for the same
triangles, in the same (first-touch) order, so attributes and geometry line up row by row.

Decisions on the reference's quirks (spec 4.1-4.6, 12), each tested in tests/ovoxel/test_materials.py:

* Non-square / non-power-of-two LINEAR textures (the reference's trimesh path raises): resized to an
  ``S x S`` square with Lanczos, ``S`` = the power of two nearest to ``max(W, H)`` (ties to the larger), each
  channel separately -- exactly what the reference's Blender path, which made the TRELLIS.2 training data,
  does. NEAREST textures are read at their original size (they have no pyramid and resizing would blur them).
* Emissive textures are sampled with their own pyramid (the reference wrongly uses the roughness one).
* Colour space: none converted, as in the reference and the training data. Texture bytes (sRGB-encoded for
  base colour) are multiplied by the factors and vertex colours (linear in glTF) as if all were linear, so
  a model trained on reference data sees the values it expects.
* Vertex colours (glTF COLOR_0; the reference ignores them) multiply base colour and alpha; each sample's
  interpolated colour is clamped to [0, 1] because unclamped barycentrics extrapolate beyond the corners.
* Weight ``w = 1 - d`` with ``d`` the signed distance in world units, as in the reference (nearly uniform in
  the unit box). It is only positive for voxels smaller than about one world unit, so grids whose voxel
  half-diagonal reaches 0.5 are refused instead of silently averaging with non-positive weights.
* Triangles with a zero-area plane (the reference would divide by zero) sample at their first corner.
* The ``normal`` attribute is not produced (TRELLIS.2 discards it); ``emissive`` is optional.
* Per-sample wrap modes follow the glTF sampler per axis (the reference has one wrap mode per texture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from omnivox._backend import NUMBA_BACKENDS, check_backend, resolve_backend
from omnivox.assets.scene import AlphaMode, FilterMode, Scene, Texture
from omnivox.assets.texture import wrap_texel_index
from omnivox.ovoxel.grid import AABB, UNIT_AABB, Grid, Resolution
from omnivox.ovoxel.packing import PBR_ATTRIBUTES
from omnivox.ovoxel.scan import Crossings, scan_triangles

ATTRIBUTE_CHANNELS = {"base_color": 3, "metallic": 1, "roughness": 1, "alpha": 1, "emissive": 3}
# Spec 4.3: UV parametrisations with |det| below this count as degenerate (footprint -> level 0).
_DEGENERATE_UV_DET = 1e-6


@dataclass
class _PreparedTexture:
    """A texture ready for sampling: all mip levels of an (S x S) or (H x W) image in one flat buffer."""

    texels: torch.Tensor  # (sum of level areas, C) uint8, level 0 first, rows top to bottom
    offsets: torch.Tensor  # (L,) int64 start row of each level in ``texels``
    widths: torch.Tensor  # (L,) int64
    heights: torch.Tensor  # (L,) int64
    num_mips: int  # L - 1 (0 for NEAREST textures)


def voxelize_materials(
    scene: Scene,
    resolution: Resolution,
    aabb: AABB = UNIT_AABB,
    mip_level_offset: float = 0.0,
    emissive: bool = False,
    device: Union[str, torch.device, None] = None,
    backend: str = "auto",
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Voxelize a scene's PBR material onto the voxels of its geometry (spec ovoxel.md section 4).

    Args:
        scene: the triangles and materials, already placed in the box (``load_asset(p).normalized()``
            for the unit box).
        resolution: cells per axis, an int or 3 ints.
        aabb: ((lo_x, lo_y, lo_z), (hi_x, hi_y, hi_z)); geometry outside is clipped.
        mip_level_offset: added to every texture's level of detail (negative = sharper).
        emissive: also return ``emissive`` (3 channels).
        device: where to compute (``"cuda"`` for the GPU path); default CPU.
        backend: ``"torch"`` (vectorized PyTorch, any device; the reference path), ``"numba"`` (fused CPU
            kernel, same arithmetic) or ``"auto"`` (numba on the CPU, torch elsewhere).

    Returns:
        coords: (N, 3) int32 voxel indices, in the order of ``mesh_to_dual_grid``'s coords.
        attributes: name -> (N, C) uint8: ``base_color`` (3), ``metallic`` (1), ``roughness`` (1),
            ``alpha`` (1) and, if requested, ``emissive`` (3). All on ``device``.

    Raises:
        TypeError: ``scene`` is not a Scene.
        ValueError: bad resolution / aabb / offset / backend, or voxels too large for the ``1 - d`` weight.
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"voxelize_materials: scene must be an omnivox.assets.Scene, got {type(scene).__name__}")
    check_backend(backend, NUMBA_BACKENDS, "voxelize_materials: backend")
    grid = Grid.make(resolution, aabb)
    check_material_arguments(grid, mip_level_offset)
    device = torch.device(device) if device is not None else torch.device("cpu")
    use_numba = resolve_backend(backend, NUMBA_BACKENDS, "numba", preferred=device.type == "cpu",
                                possible=device.type == "cpu", requirement=f"runs on the CPU only, got device {device}",
                                name="voxelize_materials: backend") == "numba"

    shifted = (scene.vertices.astype(np.float32) - grid.lo).astype(np.float32)
    triangles = np.ascontiguousarray(shifted[scene.faces])
    # The CPU numbers its pairs from the numba scan; other devices scan and number with torch.
    crossings = scan_triangles(triangles if device.type == "cpu" else torch.from_numpy(triangles).to(device), grid)
    return materials_from_crossings(scene, crossings, mip_level_offset, emissive, use_numba)


def check_material_arguments(grid: Grid, mip_level_offset: float) -> None:
    """Refuse a non-finite ``mip_level_offset`` and voxels too large for the ``1 - d`` sample weight."""
    if isinstance(mip_level_offset, bool) or not isinstance(mip_level_offset, (int, float)) or not math.isfinite(
        mip_level_offset
    ):
        raise ValueError(f"voxelize_materials: mip_level_offset must be a finite number, got {mip_level_offset!r}")
    half_diagonal = float(np.linalg.norm(grid.voxel_size.astype(np.float64))) / 2
    if half_diagonal >= 0.5:
        raise ValueError(
            f"voxelize_materials: voxels of size {grid.voxel_size.tolist()} are too large for the reference's "
            "sample weight 1 - distance (it must stay positive); normalise the scene into a smaller box"
        )


def materials_from_crossings(
    scene: Scene, crossings: Crossings, mip_level_offset: float, emissive: bool, use_numba: bool
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """`voxelize_materials` from the scan of the scene's triangles (`scan.scan_triangles`), arguments checked.

    A numpy scan numbers its pairs with the numba kernel and stays on the CPU; a torch scan numbers them with
    torch on its device. ``use_numba`` (numpy scan only) samples with the fused numba kernel, else with PyTorch.
    Returns ``coords`` (the scan's first-touch voxel order = the geometry's) and the attributes, as
    `voxelize_materials` does.
    """
    grid = crossings.grid
    names = list(PBR_ATTRIBUTES) + (["emissive"] if emissive else [])
    if crossings.on_torch:
        from omnivox.ovoxel.kernels import scan_torch

        triangles = crossings.triangles
        tri_index, pair_coords = scan_torch.crossing_voxel_pairs(crossings)
        voxel_of_pair, coords = _first_touch_voxels(pair_coords, grid)
    else:
        from omnivox.ovoxel.kernels import materials_numba

        triangles = torch.from_numpy(crossings.triangles)
        numbered = materials_numba.number_pairs(crossings.tri, crossings.axis, crossings.owner,
                                                grid.resolution.astype(np.int64))
        tri_index, voxel_of_pair, coords = (torch.from_numpy(a) for a in numbered)
    device = triangles.device
    if tri_index.numel() == 0:
        empty = {name: torch.zeros((0, ATTRIBUTE_CHANNELS[name]), dtype=torch.uint8, device=device) for name in names}
        return torch.zeros((0, 3), dtype=torch.int32, device=device), empty

    if use_numba:
        sums = _voxelize_numba(scene, crossings.triangles, tri_index.numpy(), voxel_of_pair.numpy(), coords.numpy(),
                               grid, float(mip_level_offset), emissive)
        return coords, _quantize(torch.from_numpy(sums), names)
    samples = _PairSamples.compute(triangles, tri_index, coords[voxel_of_pair], grid)
    values = _sample_channels(scene, triangles, samples, tri_index, names, float(mip_level_offset), grid, device)
    return coords, _weighted_means(values, samples.weight, voxel_of_pair, coords.shape[0], names)


def _voxelize_numba(scene, triangles, tri_index, voxel_of_pair, coords, grid, mip_level_offset, emissive):
    """CPU fast path: the fused numba kernel -> (N, 7 or 10) float32 weighted sums (last column: sum of w)."""
    from omnivox.ovoxel.kernels import materials_numba

    tables = _texture_tables(scene.materials, emissive)
    num_sets = max([len(scene.uvs)] + [int(t.uv_set) + 1 for m in scene.materials for t in m.textures()])
    uvs = np.zeros((num_sets, scene.num_faces, 3, 2), dtype=np.float32)
    for index, uv in enumerate(scene.uvs):
        uvs[index] = uv
    colors = scene.colors if scene.colors is not None else np.zeros((0, 3, 4), np.float32)
    return materials_numba.accumulate_pairs(
        triangles, tri_index, voxel_of_pair, coords, grid.voxel_size.astype(np.float32),
        scene.material_ids.astype(np.int64), uvs, np.ascontiguousarray(colors, dtype=np.float32), *tables,
        np.float32(mip_level_offset), bool(emissive), num_voxels=len(coords),
    )


def _texture_tables(materials, emissive: bool):
    """Flatten every texture the materials use into the arrays `materials_numba` reads (see its docstring)."""
    from omnivox.ovoxel.kernels import materials_numba

    slots = [(m.base_color_texture, m.metallic_roughness_texture, m.emissive_texture if emissive else None)
             for m in materials]
    storage: Dict[Tuple[int, int], int] = {}  # (image id, filter) -> index into `prepared`
    prepared: List[Tuple[np.ndarray, np.ndarray, List[int]]] = []  # (texels, level offsets, level sides/dims)
    references: List[Texture] = []
    material_textures = np.full((len(materials), 3), -1, dtype=np.int64)
    for material_id, textures in enumerate(slots):
        for slot, texture in enumerate(textures):
            if texture is None:
                continue
            key = (id(texture.image), int(texture.filter))
            if key not in storage:
                storage[key] = len(prepared)
                if texture.filter == FilterMode.NEAREST:
                    image = np.ascontiguousarray(texture.image)
                    prepared.append((image.reshape(-1, 4), np.zeros(1, np.int64), [image.shape[:2]]))
                else:
                    square = np.ascontiguousarray(resize_to_pot_square(texture.image))
                    texels, offsets = materials_numba.mip_pyramid(square)
                    sides = [(square.shape[0] >> k, square.shape[0] >> k) for k in range(len(offsets))]
                    prepared.append((texels, offsets, sides))
            material_textures[material_id, slot] = len(references)
            references.append(texture)
    max_levels = max([len(p[1]) for p in prepared], default=1)
    starts = np.cumsum([0] + [p[0].shape[0] for p in prepared])
    if len(prepared) == 1:
        texels = prepared[0][0]
    else:
        texels = np.concatenate([p[0] for p in prepared]) if prepared else np.zeros((1, 4), np.uint8)
    count = max(len(references), 1)
    level_offset = np.zeros((count, max_levels), np.int64)
    level_width = np.ones((count, max_levels), np.int64)
    level_height = np.ones((count, max_levels), np.int64)
    texture_info = np.zeros((count, 5), np.int64)
    texture_transform = np.zeros((count, 6), np.float32)
    for index, texture in enumerate(references):
        source = storage[(id(texture.image), int(texture.filter))]
        _, offsets, sides = prepared[source]
        used = len(offsets)
        level_offset[index, :used] = offsets + starts[source]
        level_height[index, :used] = [height for height, _ in sides]
        level_width[index, :used] = [width for _, width in sides]
        texture_info[index] = (used - 1, int(texture.filter), int(texture.wrap_s), int(texture.wrap_t),
                               texture.uv_set)
        texture_transform[index] = np.asarray(texture.uv_transform, np.float32)[:2].reshape(-1)
    factors = np.array(
        [[*m.base_color_factor, m.metallic_factor, m.roughness_factor, *m.emissive_factor, m.alpha_cutoff]
         for m in materials],
        dtype=np.float32,
    )
    alpha_modes = np.array([int(m.alpha_mode) for m in materials], dtype=np.int64)
    return (material_textures, factors, alpha_modes, texels, level_offset, level_width, level_height, texture_info,
            texture_transform)


def _first_touch_voxels(pair_coords: torch.Tensor, grid: Grid) -> Tuple[torch.Tensor, torch.Tensor]:
    """Number voxels in order of first appearance among the pairs (= the geometry converter's order).

    Returns:
        voxel_of_pair: (P,) int64 row of each pair's voxel; coords: (N, 3) int32.
    """
    res = [int(r) for r in grid.resolution]
    c = pair_coords.long()
    keys = (c[:, 0] * res[1] + c[:, 1]) * res[2] + c[:, 2]
    unique_keys, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((unique_keys.numel(),), keys.numel(), dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, torch.arange(keys.numel(), device=keys.device), reduce="amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank[inverse], pair_coords[first[order]].to(torch.int32)


@dataclass
class _PairSamples:
    """Per (triangle, voxel) pair: barycentrics of the projected voxel centre and the sample weight."""

    alpha: torch.Tensor  # (P,) float32, unclamped
    beta: torch.Tensor
    gamma: torch.Tensor
    weight: torch.Tensor  # (P,) float32, 1 - signed distance

    @staticmethod
    def compute(triangles, tri_index, pair_coords, grid: Grid) -> "_PairSamples":
        # Per-triangle terms first (T << P), in the reference's float32 operation order (spec 4.3).
        p0 = triangles[:, 0]
        e1 = triangles[:, 1] - p0
        e2 = triangles[:, 2] - p0
        normal = torch.linalg.cross(e1, e2)
        length = torch.linalg.vector_norm(normal, dim=1, keepdim=True)
        normal = torch.where(length > 0, normal / torch.where(length > 0, length, 1), 0)
        d00 = (e1 * e1).sum(1)
        d01 = (e1 * e2).sum(1)
        d11 = (e2 * e2).sum(1)
        denominator = d00 * d11 - d01 * d01

        vs = torch.as_tensor(grid.voxel_size, device=triangles.device)
        centre = (pair_coords.float() + 0.5) * vs
        p0, e1, e2, normal = p0[tri_index], e1[tri_index], e2[tri_index], normal[tri_index]
        distance = ((centre - p0) * normal).sum(1)
        offset = centre - distance[:, None] * normal - p0
        d20 = (offset * e1).sum(1)
        d21 = (offset * e2).sum(1)
        d00, d01, d11, den = d00[tri_index], d01[tri_index], d11[tri_index], denominator[tri_index]
        safe = den != 0
        den = torch.where(safe, den, 1)
        beta = torch.where(safe, (d11 * d20 - d01 * d21) / den, 0)
        gamma = torch.where(safe, (d00 * d21 - d01 * d20) / den, 0)
        return _PairSamples(1 - beta - gamma, beta, gamma, 1 - distance)

    def interpolate(self, corners: torch.Tensor) -> torch.Tensor:
        """(K, 3, C) per-corner values of the sampled pairs -> (K, C) ``a*c0 + b*c1 + g*c2``."""
        return (
            self.alpha[:, None] * corners[:, 0] + self.beta[:, None] * corners[:, 1] + self.gamma[:, None] * corners[:, 2]
        )

    def subset(self, index: torch.Tensor) -> "_PairSamples":
        return _PairSamples(self.alpha[index], self.beta[index], self.gamma[index], self.weight[index])


def _sample_channels(scene, triangles, samples, tri_index, names, mip_level_offset, grid, device) -> Dict[str, torch.Tensor]:
    """Per-pair channel values before averaging (spec 4.5), as float32 (P, C) tensors."""
    materials = scene.materials
    material_of_tri = torch.from_numpy(scene.material_ids.astype(np.int64)).to(device)
    material_of_pair = material_of_tri[tri_index]

    # Factors of every material gathered per pair; textures multiply into them below.
    base_factor = torch.tensor(np.stack([m.base_color_factor for m in materials]), dtype=torch.float32, device=device)
    scalar = torch.tensor(
        [[m.metallic_factor, m.roughness_factor, float(m.alpha_mode), m.alpha_cutoff] for m in materials],
        dtype=torch.float32,
        device=device,
    )
    emissive_factor = torch.tensor(np.stack([m.emissive_factor for m in materials]), dtype=torch.float32, device=device)
    rgba = base_factor[material_of_pair].clone()  # (P, 4)
    metallic = scalar[material_of_pair, 0].clone()
    roughness = scalar[material_of_pair, 1].clone()
    emission = emissive_factor[material_of_pair].clone() if "emissive" in names else None

    if scene.colors is not None:
        corner_colors = torch.from_numpy(scene.colors).to(device)[tri_index]
        rgba = rgba * samples.interpolate(corner_colors).clamp(0, 1)

    prepared: Dict[Tuple[int, int], _PreparedTexture] = {}
    single_material = len(materials) == 1
    for material_id, material in enumerate(materials):
        if not material.textures():
            continue
        # A boolean scan per textured material is cheaper than sorting all pairs by material.
        pairs = None if single_material else torch.nonzero(material_of_pair == material_id).squeeze(1)
        if pairs is not None and pairs.numel() == 0:
            continue
        pair_samples = samples if pairs is None else samples.subset(pairs)
        pair_tris = tri_index if pairs is None else tri_index[pairs]
        select = slice(None) if pairs is None else pairs

        def read(texture: Texture, channels: Tuple[int, ...]) -> torch.Tensor:
            return _sample_texture(texture, channels, scene, triangles, pair_samples, pair_tris, mip_level_offset,
                                   grid, prepared, device)

        if material.base_color_texture is not None:
            if material.alpha_mode == AlphaMode.OPAQUE:  # texture alpha is ignored: read RGB only
                rgba[select, :3] = rgba[select, :3] * read(material.base_color_texture, (0, 1, 2))
            else:
                rgba[select] = rgba[select] * read(material.base_color_texture, (0, 1, 2, 3))
        if material.metallic_roughness_texture is not None:
            texel = read(material.metallic_roughness_texture, (1, 2))  # glTF: G = roughness, B = metallic
            metallic[select] = metallic[select] * texel[:, 1]
            roughness[select] = roughness[select] * texel[:, 0]
        if emission is not None and material.emissive_texture is not None:
            emission[select] = emission[select] * read(material.emissive_texture, (0, 1, 2))

    mode = scalar[material_of_pair, 2]
    cutoff = scalar[material_of_pair, 3]
    alpha = rgba[:, 3]
    alpha = torch.where(mode == float(AlphaMode.MASK), (alpha >= cutoff).float(), alpha)
    alpha = torch.where(mode == float(AlphaMode.OPAQUE), torch.ones_like(alpha), alpha)
    values = {"base_color": rgba[:, :3], "metallic": metallic[:, None], "roughness": roughness[:, None],
              "alpha": alpha[:, None]}
    if emission is not None:
        values["emissive"] = emission
    return values


def _weighted_means(values, weight, voxel_of_pair, num_voxels, names) -> Dict[str, torch.Tensor]:
    """Spec 4.6: float32 ``sum(v * w) / sum(w)`` per voxel, then ``uint8(trunc(clamp(x * 255, 0, 255)))``."""
    stacked = torch.cat([values[name] * weight[:, None] for name in names] + [weight[:, None]], dim=1)
    sums = torch.zeros((num_voxels, stacked.shape[1]), dtype=torch.float32, device=stacked.device)
    sums.index_add_(0, voxel_of_pair, stacked)
    return _quantize(sums, names)


def _quantize(sums: torch.Tensor, names) -> Dict[str, torch.Tensor]:
    """(N, C + 1) weighted sums (last column: sum of weights) -> name -> (N, c) uint8."""
    means = sums[:, :-1] / sums[:, -1:]
    quantized = (means * 255).clamp(0, 255).to(torch.uint8)
    out, start = {}, 0
    for name in names:
        width = ATTRIBUTE_CHANNELS[name]
        out[name] = quantized[:, start : start + width].contiguous()
        start += width
    return out


# ---------------------------------------------------------------------------------------------- textures
def _sample_texture(texture, channels, scene, triangles, samples, tris, mip_level_offset, grid, prepared, device):
    """Texel values (K, len(channels)) float32 in [0, 1] for the K sampled pairs of one material.

    Only the requested RGBA ``channels`` are prepared and read (the cost is proportional to them).
    """
    if texture.uv_set < len(scene.uvs):
        triangle_uv = torch.from_numpy(scene.uvs[texture.uv_set]).to(device)  # (T, 3, 2)
    else:
        triangle_uv = torch.zeros((triangles.shape[0], 3, 2), dtype=torch.float32, device=device)
    transform = texture.uv_transform
    if not np.array_equal(transform, np.eye(3, dtype=np.float32)):
        matrix = torch.from_numpy(np.ascontiguousarray(transform[:2, :2])).to(device)
        triangle_uv = triangle_uv @ matrix.T + torch.from_numpy(np.ascontiguousarray(transform[:2, 2])).to(device)
    uv = samples.interpolate(triangle_uv[tris])

    key = (id(texture.image), int(texture.filter), channels)
    if key not in prepared:
        prepared[key] = _prepare_texture(texture.image[..., list(channels)], texture.filter, device)
    levels = prepared[key]
    wrap_s, wrap_t = int(texture.wrap_s), int(texture.wrap_t)
    if texture.filter == FilterMode.NEAREST:
        return _nearest(levels, uv[:, 0], uv[:, 1], wrap_s, wrap_t)

    # The level of detail is a per-triangle quantity: compute it for the (few) triangles, then gather.
    lod = _level_of_detail(triangles, triangle_uv, grid, levels, mip_level_offset)[tris]
    level = torch.where(torch.isfinite(lod) & (lod > 0), lod, torch.zeros_like(lod)).clamp(max=levels.num_mips)
    lower = level.floor()
    fraction = (level - lower)[:, None]
    lower = lower.long()
    first = _bilinear(levels, lower, uv[:, 0], uv[:, 1], wrap_s, wrap_t)
    if levels.num_mips == 0:
        return first
    second = _bilinear(levels, (lower + 1).clamp(max=levels.num_mips), uv[:, 0], uv[:, 1], wrap_s, wrap_t)
    return torch.lerp(first, second, fraction)


def _level_of_detail(corners, corner_uv, grid, levels, mip_level_offset) -> torch.Tensor:
    """Spec 4.3/4.4: ``log2(footprint * H) + offset`` with the footprint of one voxel in UV units.

    Args:
        corners: (T, 3, 3) float32 triangles; corner_uv: (T, 3, 2) float32 their (transformed) UVs.

    Returns:
        (T,) float32 level of detail (may be -inf / NaN for degenerate input; the caller maps those to 0).
    """
    e1 = corners[:, 1] - corners[:, 0]
    e2 = corners[:, 2] - corners[:, 0]
    delta1 = corner_uv[:, 1] - corner_uv[:, 0]
    delta2 = corner_uv[:, 2] - corner_uv[:, 0]
    det = delta1[:, 0] * delta2[:, 1] - delta1[:, 1] * delta2[:, 0]
    tangent = delta2[:, 1:2] * e1 - delta1[:, 1:2] * e2
    bitangent = delta1[:, 0:1] * e2 - delta2[:, 0:1] * e1
    degenerate = det.abs() < _DEGENERATE_UV_DET
    safe_det = torch.where(degenerate, torch.ones_like(det), det)
    len_u = torch.where(degenerate, 1e6, torch.linalg.vector_norm(tangent, dim=1) / safe_det)
    len_v = torch.where(degenerate, 1e6, torch.linalg.vector_norm(bitangent, dim=1) / safe_det)
    footprint = float(grid.voxel_size.max()) / torch.sqrt(len_u * len_v)
    height = float(levels.heights[0])
    return torch.log2(footprint * height) + mip_level_offset


def _nearest(levels: _PreparedTexture, u, v, wrap_s, wrap_t) -> torch.Tensor:
    width, height = levels.widths[0], levels.heights[0]
    x = torch.nan_to_num(u * width.float()).floor().long()
    y = torch.nan_to_num((1 - v) * height.float()).floor().long()
    index = wrap_texel_index(y, height, wrap_t) * width + wrap_texel_index(x, width, wrap_s)
    return levels.texels.index_select(0, index).float() / 255


def _bilinear(levels: _PreparedTexture, level, u, v, wrap_s, wrap_t) -> torch.Tensor:
    """Bilinear read with texel centres at +0.5 on per-sample mip ``level`` (K,) int64 -> (K, C) in [0, 1].

    Only for power-of-two square levels (LINEAR textures are resized to those). Not the float
    `omnivox.assets.texture.bilinear`: these texels are the uint8 levels of the reference's truncating mips,
    read per sample from one packed buffer.
    """
    width, height, offset = levels.widths[level], levels.heights[level], levels.offsets[level]
    x = torch.nan_to_num(u * width.float()) - 0.5
    y = torch.nan_to_num((1 - v) * height.float()) - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.long(), y0.long()
    xs = (wrap_texel_index(x0, width, wrap_s, True), wrap_texel_index(x0 + 1, width, wrap_s, True))
    rows = (offset + wrap_texel_index(y0, height, wrap_t, True) * width,
            offset + wrap_texel_index(y0 + 1, height, wrap_t, True) * width)
    texels = levels.texels
    c00 = texels.index_select(0, rows[0] + xs[0]).float()
    c10 = texels.index_select(0, rows[0] + xs[1]).float()
    c01 = texels.index_select(0, rows[1] + xs[0]).float()
    c11 = texels.index_select(0, rows[1] + xs[1]).float()
    return torch.lerp(torch.lerp(c00, c10, fx), torch.lerp(c01, c11, fx), fy) / 255


def _pot_side(width: int, height: int) -> int:
    """The power of two nearest to ``max(width, height)``; ties go to the larger (the Blender path's rule)."""
    side = max(width, height)
    lower = 1 << (side.bit_length() - 1)
    upper = lower if lower == side else lower * 2
    return lower if side - lower < upper - side else upper


def resize_to_pot_square(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> (S, S, C) uint8 with Lanczos per channel, S from `_pot_side` (identity if POT square)."""
    height, width = image.shape[:2]
    side = _pot_side(width, height)
    if height == width == side:
        return image
    from PIL import Image

    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize((side, side), Image.LANCZOS))
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=-1)


def build_mip_pyramid(image: torch.Tensor) -> List[torch.Tensor]:
    """(S, S, C) uint8 square power-of-two -> [level 0, ..., 1x1], each level the truncating 2x2 mean.

    ``(a + b + c + d) // 4`` as in the reference; the sums fit int16 (at most 1020), which halves the memory
    traffic compared with int32.
    """
    levels = [image]
    current = image
    while current.shape[0] > 1:
        total = current[0::2, 0::2].to(torch.int16) + current[0::2, 1::2] + current[1::2, 0::2] + current[1::2, 1::2]
        current = (total >> 2).to(torch.uint8)
        levels.append(current)
    return levels


def _prepare_texture(image: np.ndarray, filter_mode: FilterMode, device) -> _PreparedTexture:
    if filter_mode == FilterMode.NEAREST:
        levels = [torch.from_numpy(np.array(image)).to(device)]
    else:
        square = np.array(resize_to_pot_square(image))  # a writable copy for torch.from_numpy
        levels = build_mip_pyramid(torch.from_numpy(square).to(device))
    sizes = [(level.shape[0], level.shape[1]) for level in levels]
    offsets = np.concatenate([[0], np.cumsum([h * w for h, w in sizes])[:-1]])
    return _PreparedTexture(
        texels=torch.cat([level.reshape(-1, level.shape[2]) for level in levels]),
        offsets=torch.tensor(offsets, dtype=torch.long, device=device),
        widths=torch.tensor([w for _, w in sizes], dtype=torch.long, device=device),
        heights=torch.tensor([h for h, _ in sizes], dtype=torch.long, device=device),
        num_mips=len(levels) - 1,
    )


def __getattr__(name: str):
    # Deprecated (one release): scene_to_ovoxel moved to omnivox.ovoxel.convert.
    if name == "scene_to_ovoxel":
        import warnings

        warnings.warn("omnivox.ovoxel.materials.scene_to_ovoxel moved to omnivox.ovoxel.convert.scene_to_ovoxel",
                      DeprecationWarning, stacklevel=2)
        from omnivox.ovoxel.convert import scene_to_ovoxel

        return scene_to_ovoxel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
