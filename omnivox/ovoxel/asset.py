"""`OVoxel`: one O-Voxel asset -- voxels, flexible dual grid, PBR attributes, grid resolution and extracted mesh.

The one place that turns a ``.vxz`` file (or a generated grid) into a textured asset and back: the image-to-3D
pipeline returns `OVoxel` objects, ``omnivox export`` / ``render`` / the previews and the demo read files through
`OVoxel.from_vxz` / `OVoxel.from_file_attributes`. The file layout itself (uint8 geometry and PBR channels,
`PBR_ATTRIBUTES`) belongs to `omnivox.ovoxel.packing`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Union

import numpy as np
import torch

from omnivox.ovoxel.export import DEFAULT_FACE_BUDGET, DEFAULT_SURFACE_TOLERANCE
from omnivox.ovoxel.grid import Grid
from omnivox.ovoxel.packing import PBR_ATTRIBUTES, PBR_SLICES, quantize_geometry, require_attributes

if TYPE_CHECKING:
    import trimesh

__all__ = ["OVoxel", "PBR_ATTRIBUTES", "PBR_SLICES", "infer_resolution", "orient_mesh", "unoriented_mesh"]


def infer_resolution(max_coord: int) -> int:
    """The smallest power of two above the largest voxel index (files do not store the grid size).

    Exact for assets normalised into the unit box (spec 1.1): their longest side spans the whole grid.
    """
    resolution = 1
    while resolution <= max_coord:
        resolution *= 2
    return resolution


def _grid_tensors(coords, dual_vertices, intersected, split_weights):
    """The dual grid as the extraction takes it: int32 coords, float32 vertices, bool flags, (N, 1) weights."""
    coords = torch.as_tensor(coords).to(torch.int32)
    device = coords.device
    dual_vertices = torch.as_tensor(dual_vertices, dtype=torch.float32).to(device)
    intersected = torch.as_tensor(intersected).bool().to(device)
    if split_weights is not None:
        split_weights = torch.as_tensor(split_weights, dtype=torch.float32).to(device).reshape(-1, 1)
    return coords, dual_vertices, intersected, split_weights


def unoriented_mesh(coords, dual_vertices, intersected, resolution: int, split_weights=None) -> tuple:
    """The first part of `OVoxel.from_dual_grid`'s extraction, where ``coords`` lives: ``(vertices, faces,
    hint)`` on the CPU, before orientation (`omnivox.ovoxel.extract.dual_grid_to_unoriented_mesh`)."""
    from omnivox.ovoxel.extract import dual_grid_to_unoriented_mesh

    coords, dual_vertices, intersected, split_weights = _grid_tensors(coords, dual_vertices, intersected,
                                                                      split_weights)
    if not len(coords):
        return torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, dtype=torch.bool)
    vertices, faces, hint = dual_grid_to_unoriented_mesh(coords, dual_vertices, intersected, int(resolution),
                                                         split_weight=split_weights)
    return vertices.float().cpu(), faces.cpu(), hint.cpu()


def orient_mesh(vertices: torch.Tensor, faces: torch.Tensor, hint: torch.Tensor) -> tuple:
    """The second part: ``(vertices, faces)`` with consistent, outward winding (CPU; releases the GIL)."""
    from omnivox.ovoxel.extract import orient_faces

    return vertices, orient_faces(faces, vertices, hint)


@dataclass
class OVoxel:
    """One O-Voxel asset on a ``resolution^3`` grid over the unit box ``[-0.5, 0.5]^3`` (Z-up).

    Attributes:
        coords: ``(N, 3) int32`` active voxels.
        attributes: ``name -> (N, k) float32`` in ``[0, 1]``: ``base_color`` (3), ``metallic``, ``roughness``,
            ``alpha`` (1 each), on the rows of ``coords``.
        resolution: grid size (512, 1024, up to 1536 for generated assets).
        dual_vertices: ``(N, 3) float32`` dual vertex inside each voxel, voxel units (decoder output; may
            leave ``[0, 1]`` by the decoder's margin).
        intersected: ``(N, 3) bool`` edge flags.
        split_weights: ``(N, 1) float32`` quad-split weights, or None.
        vertices, faces: the extracted triangle mesh (world units, Z-up), float32 / int64.
    """

    coords: torch.Tensor
    attributes: dict
    resolution: int
    dual_vertices: torch.Tensor
    intersected: torch.Tensor
    split_weights: Optional[torch.Tensor]
    vertices: torch.Tensor
    faces: torch.Tensor

    @property
    def grid(self) -> Grid:
        return Grid.make(int(self.resolution))

    @property
    def mesh(self) -> tuple:
        """``(vertices, faces)`` of the extracted surface (world units, Z-up)."""
        return self.vertices, self.faces

    @classmethod
    def from_dual_grid(cls, coords, dual_vertices, intersected, attributes: dict, resolution: int,
                       split_weights=None, mesh: Optional[tuple] = None) -> "OVoxel":
        """Build one from a flexible dual grid and its attributes, extracting the mesh (unless ``mesh``, the
        ``(vertices, faces)`` that `unoriented_mesh` + `orient_mesh` made from the same grid, is given).

        The mesh is extracted where ``coords`` lives (a CUDA tensor: on the GPU); everything kept is moved to the CPU.
        """
        coords, dual_vertices, intersected, split_weights = _grid_tensors(coords, dual_vertices, intersected,
                                                                          split_weights)
        if mesh is None:
            mesh = orient_mesh(*unoriented_mesh(coords, dual_vertices, intersected, resolution, split_weights))
        vertices, faces = (torch.as_tensor(a) for a in mesh)  # tensors, or numpy from `dual_grid_to_mesh`
        attributes = {k: torch.as_tensor(v, dtype=torch.float32).cpu().reshape(len(coords), -1)
                      for k, v in attributes.items()}
        return cls(coords.cpu(), attributes, int(resolution), dual_vertices.cpu(), intersected.cpu(),
                   None if split_weights is None else split_weights.cpu(), vertices.float().cpu(), faces.long().cpu())

    @classmethod
    def from_file_attributes(cls, coords, attrs: Mapping[str, np.ndarray], resolution: Optional[int] = None,
                             source: str = "O-Voxel", mesh: Optional[tuple] = None) -> "OVoxel":
        """Build one from a file's ``coords`` and uint8 attributes (`omnivox.ovoxel.io.read_vxz`'s result).

        ``resolution``: the grid size; default: `infer_resolution` of the largest index. ``mesh``: ``(vertices,
        faces)`` already extracted from these voxels, so a caller holding it does not pay for a second extraction.
        """
        from omnivox.ovoxel.packing import unpack_geometry

        coords = np.asarray(coords)
        require_attributes(attrs, source)
        if resolution is None:
            if len(coords) == 0:
                raise ValueError(f"{source}: holds no voxels")
            resolution = infer_resolution(int(coords.max()))
        local, flags = unpack_geometry(attrs)
        attributes = {k: np.asarray(attrs[k], np.float32).reshape(len(coords), -1) / 255 for k in PBR_ATTRIBUTES}
        return cls.from_dual_grid(coords, local, flags, attributes, resolution, mesh=mesh)

    @classmethod
    def from_vxz(cls, path: Union[str, os.PathLike], resolution: Optional[int] = None,
                 max_voxels: Optional[int] = None) -> "OVoxel":
        """Read a ``.vxz`` with geometry and PBR attributes (written by `save_vxz` or ``omnivox convert``),
        extracting the mesh. ``max_voxels`` goes to `read_vxz`."""
        from omnivox.ovoxel.io import read_vxz

        coords, attrs = read_vxz(path, max_voxels=max_voxels)
        return cls.from_file_attributes(coords, attrs, resolution, source=str(path))

    @classmethod
    def load_vxz(cls, path: Union[str, os.PathLike], resolution: int) -> "OVoxel":
        """Deprecated name of `from_vxz` (kept for one release)."""
        import warnings

        warnings.warn("OVoxel.load_vxz is deprecated; use OVoxel.from_vxz", DeprecationWarning, stacklevel=2)
        return cls.from_vxz(path, resolution)

    def attribute_matrix(self) -> np.ndarray:
        """``(N, 6) float32`` in the exporter's layout (base_color, metallic, roughness, alpha)."""
        return np.concatenate([self.attributes[k].numpy() for k in PBR_ATTRIBUTES], axis=1).astype(np.float32)

    def file_attributes(self) -> dict:
        """The ``.vxz`` attributes: uint8 geometry (spec ovoxel 1.4) and uint8 materials."""
        attrs = quantize_geometry(self.dual_vertices.numpy(), self.intersected.numpy())
        for name in PBR_ATTRIBUTES:
            attrs[name] = np.round(self.attributes[name].clamp(0, 1).numpy() * 255).astype(np.uint8)
        return attrs

    def save_vxz(self, path: Union[str, Path]) -> Path:
        """Write geometry and materials as a ``.vxz`` file (uint8 attributes: dual vertices are quantised to
        1/255 voxel and clamped into their voxel, materials rounded to bytes)."""
        from omnivox.ovoxel.io import write_vxz

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_vxz(path, self.coords.numpy().astype(np.int64), self.file_attributes())
        return path

    def to_glb(self, path: Union[str, Path, None] = None, *, decimation_target: Optional[int] = DEFAULT_FACE_BUDGET,
               surface_tolerance: Optional[float] = DEFAULT_SURFACE_TOLERANCE, texture_size: int = 2048, device=None,
               progress=None, profile: Optional["GameProfile"] = None, **options):  # noqa: F821
        """Export a textured mesh (``omnivox.ovoxel.export.to_glb``) and write it when ``path`` is given.

        At most ``decimation_target`` faces, then fewer while the surface stays within ``surface_tolerance``
        voxels (``export.DEFAULT_FACE_BUDGET`` / ``DEFAULT_SURFACE_TOLERANCE``; None keeps the budget's faces).
        ``progress``: a ``callback(stage, step, total)`` as the pipelines take, told ``("export", k, n)``.
        ``options`` go to ``to_glb`` (``image_format``, ``alpha_mode``, ``fill_holes`` ...).

        With ``profile`` (an ``omnivox.ovoxel.game.GameProfile``) the export is the game-ready one instead
        (``game.export_game``: the profile's triangle budget, levels of detail, normal and occlusion maps,
        optionally watertight; ``decimation_target``, ``surface_tolerance`` and ``texture_size`` are the profile's
        then); it returns the ``GameAsset`` and, with ``path``, also writes ``<name>.report.json`` beside the file.
        Without it, the returned value is the ``trimesh.Trimesh``.
        """
        from omnivox.ovoxel.export import save_glb, to_glb

        if len(self.faces) == 0:
            raise ValueError("the generated shape has no surface (no faces were extracted)")
        exported = to_glb(self.vertices.numpy(), self.faces.numpy(), self.coords.numpy(), self.attribute_matrix(),
                          self.grid, decimation_target=decimation_target, texture_size=texture_size, device=device,
                          surface_tolerance=surface_tolerance, progress=progress, profile=profile, **options)
        if path is not None:  # a GameAsset writes itself and its report; a mesh goes through save_glb
            exported.save(path) if profile is not None else save_glb(exported, path)
        return exported
