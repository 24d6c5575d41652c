"""Geometry <-> file attributes (spec ovoxel.md 1.4): how `.vxz` files and networks store the dual grid.

``vertices``: uint8 (N, 3) = trunc(clamp(local, 0, 1) * 255), where local = dual / voxel_size - coords (the reference
scripts write ``dual * G - coords``, which equals this only for a unit box; spec quirk 15).
``intersected``: uint8 (N, 1) = x + 2y + 4z.
Materials: uint8 ``base_color`` (N, 3), ``metallic``, ``roughness``, ``alpha`` (N, 1 each) = `PBR_ATTRIBUTES`, in the
exporter's channel order (`PBR_SLICES`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from omnivox.ovoxel.grid import Grid

# The PBR channels of an O-Voxel, in the order the exporter, the material VAE and the data toolkit stack them.
PBR_ATTRIBUTES = ("base_color", "metallic", "roughness", "alpha")
PBR_SLICES = {"base_color": slice(0, 3), "metallic": slice(3, 4), "roughness": slice(4, 5), "alpha": slice(5, 6)}


def pack_geometry(coords: np.ndarray, dual_vertices: np.ndarray, intersected: np.ndarray, grid: Grid) -> dict:
    """File attributes for a flexible dual grid (dual vertices in the shifted world frame, as converted)."""
    local = np.asarray(dual_vertices, np.float32) / grid.voxel_size - np.asarray(coords, np.float32)
    if local.size and (local.min() < -1e-3 or local.max() > 1 + 1e-3):
        raise ValueError(f"dual vertices leave their voxels (local range {local.min():.4f} .. {local.max():.4f})")
    return quantize_geometry(local, intersected)


def quantize_geometry(local: np.ndarray, intersected: np.ndarray) -> dict:
    """File attributes for local dual vertices (voxel units; clamped into the voxel) and (N, 3) edge flags."""
    q = np.trunc(np.clip(np.asarray(local, np.float32), 0, 1) * 255).astype(np.uint8)
    bits = np.asarray(intersected).astype(np.uint8)
    flags = (bits[:, 0] | (bits[:, 1] << 1) | (bits[:, 2] << 2)).astype(np.uint8)[:, None]
    return {"vertices": q, "intersected": flags}


def require_attributes(available, source: str, names: Sequence[str] = PBR_ATTRIBUTES, hint: str = "") -> None:
    """Raise ``ValueError`` naming the attributes of ``names`` (default: the PBR channels) missing from
    ``available`` (the attribute names of a file or record); ``hint`` is appended to the message."""
    missing = [name for name in names if name not in available]
    if missing:
        raise ValueError(f"{source}: no material attributes {missing} (has {sorted(available)}){hint}")


def stack_attributes(attrs: Mapping[str, np.ndarray], count: int, names: Sequence[str] = PBR_ATTRIBUTES
                     ) -> np.ndarray:
    """``(count, C)`` array of the named attributes side by side (default: the exporter's 6 PBR channels), in their
    stored dtype."""
    return np.concatenate([np.asarray(attrs[name]).reshape(count, -1) for name in names], axis=1)


def unpack_geometry(attrs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(local dual vertices (N, 3) float32 in [0, 1], flags (N, 3) bool) from file attributes.

    Accepts the data toolkit's key ``vertices`` and the o-voxel examples' ``dual_vertices``.
    """
    key = "vertices" if "vertices" in attrs else "dual_vertices" if "dual_vertices" in attrs else None
    if key is None or "intersected" not in attrs:
        raise ValueError(f"no geometry in these attributes (need 'vertices' and 'intersected'; have {sorted(attrs)})")
    q = np.asarray(attrs[key])
    bits = np.asarray(attrs["intersected"]).reshape(-1)
    if q.ndim != 2 or q.shape[1] != 3 or len(bits) != len(q):
        raise ValueError(f"bad geometry attribute shapes: {key} {q.shape}, intersected {np.asarray(attrs['intersected']).shape}")
    flags = np.stack([bits & 1, (bits >> 1) & 1, (bits >> 2) & 1], axis=1).astype(bool)
    return q.astype(np.float32) / 255, flags
