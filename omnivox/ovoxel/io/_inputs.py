"""Validation of the (coords, attrs) pair that every voxel-file writer takes.

Writers accept NumPy arrays or torch tensors (any device) and work on NumPy copies; readers return NumPy.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch


def to_numpy(value, name: str) -> np.ndarray:
    """NumPy view or copy of an array-like or torch tensor (moved to the CPU)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be an array or tensor, got {type(value).__name__} ({error})") from None


def check_coords(coords, max_value: int | None = None) -> np.ndarray:
    """Validate voxel coordinates.

    Args:
        coords: (N, 3) non-negative integers (NumPy, torch or nested sequences).
        max_value: largest value the format can store, if limited.

    Returns:
        (N, 3) int64 array.

    Raises:
        TypeError: not integers.
        ValueError: wrong shape, negative values or values above ``max_value``.
    """
    array = to_numpy(coords, "coords")
    if array.ndim == 1 and array.size == 0:  # an empty list has no shape or dtype to check
        array = np.zeros((0, 3), dtype=np.int64)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"coords must hold integers, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"coords must have shape (N, 3), got {array.shape}")
    if array.size and int(array.min()) < 0:
        raise ValueError(f"coords must be non-negative, got a minimum of {int(array.min())}")
    if array.size and max_value is not None and int(array.max()) > max_value:
        raise ValueError(f"coords must be at most {max_value} for this format, got a maximum of {int(array.max())}")
    return array.astype(np.int64, copy=False)


def check_attrs(attrs: Mapping, num_voxels: int, uint8_only: bool) -> dict:
    """Validate per-voxel attributes.

    Args:
        attrs: mapping of attribute name to an (N, C) or (N,) array/tensor; dict order is kept.
        num_voxels: N, the number of coordinate rows.
        uint8_only: whether every attribute must be uint8 (the `.vxz` format stores bytes only).

    Returns:
        dict name -> NumPy array (N, C) or (N,), in the input order.

    Raises:
        TypeError: ``attrs`` is not a mapping, a name is not a string, or a dtype is not allowed.
        ValueError: an empty name, a row count different from N, or a shape that is neither (N,) nor (N, C>0).
    """
    if not isinstance(attrs, Mapping):
        raise TypeError(f"attrs must be a dict of name -> array, got {type(attrs).__name__}")
    checked = {}
    for name, value in attrs.items():
        if not isinstance(name, str):
            raise TypeError(f"attribute names must be strings, got {name!r}")
        if not name:
            raise ValueError("attribute names must not be empty")
        array = to_numpy(value, f"attrs[{name!r}]")
        if uint8_only and array.dtype != np.uint8:
            raise TypeError(f"attrs[{name!r}] must be uint8, got dtype {array.dtype}")
        if array.ndim not in (1, 2) or array.shape[0] != num_voxels or (array.ndim == 2 and array.shape[1] == 0):
            raise ValueError(
                f"attrs[{name!r}] must have shape ({num_voxels},) or ({num_voxels}, C>0), got {array.shape}"
            )
        checked[name] = array
    return checked
