"""Space-filling-curve codes for voxel coordinates: Z-order (Morton) and Hilbert.

A code turns a coordinate ``(x, y, z)`` with 10 bits per axis into one 30-bit integer, so that sorting voxels by
code puts spatial neighbours close together in memory. Both curves use the same bit layout at the end: bit
``3k + 2`` holds bit ``k`` of the first (permuted) axis, bit ``3k + 1`` the second and bit ``3k`` the third
(spec ovoxel.md 6). Golden values::

    (x, y, z)          Z-order      Hilbert
    (1, 0, 0)          4            7
    (3, 5, 7)          239          391
    (1023,1023,1023)   1073741823   766958445

Both functions accept NumPy arrays or torch tensors (CPU or CUDA) and return the same kind, on the same device.
They are built from elementwise integer operators only (``&``, ``|``, ``^``, shifts, products), which NumPy and
torch share, so one code path serves both libraries and runs on the GPU unchanged.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]

MODES = ("z_order", "hilbert")

BITS_PER_AXIS = 10
MAX_COORD = (1 << BITS_PER_AXIS) - 1  # 1023
NUM_CODES = 1 << (3 * BITS_PER_AXIS)  # codes lie in [0, 2**30)


def encode_seq(coords: Array, permute: Sequence[int] = (0, 1, 2), mode: str = "z_order") -> Array:
    """Curve codes of voxel coordinates.

    Args:
        coords: (N, 3) integer array or tensor, every value in [0, 1023]. The reference silently corrupts codes
            outside that range; here they raise.
        permute: order in which the columns of ``coords`` enter the curve: axis ``permute[0]`` becomes the most
            significant bit of each bit triple.
        mode: ``"z_order"`` or ``"hilbert"``.

    Returns:
        (N,) int32 codes in [0, 2**30), NumPy in -> NumPy out, torch in -> torch out on the same device.

    Raises:
        TypeError: ``coords`` is not an integer NumPy array / torch tensor.
        ValueError: wrong shape, a coordinate outside [0, 1023], a bad ``permute`` or ``mode``.
    """
    _check_mode(mode)
    order = _check_permute(permute)
    _check_integer_array(coords, "coords")
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must have shape (N, 3), got {tuple(coords.shape)}")
    _check_range(coords, 0, MAX_COORD, "coords")

    wide = _to_int64(coords)
    axes = [wide[:, axis] for axis in order]
    if mode == "hilbert":
        axes = _hilbert_transpose_from_axes(axes)
    code = _interleave(axes[0], axes[1], axes[2])
    return _to_int32(code)


def decode_seq(codes: Array, permute: Sequence[int] = (0, 1, 2), mode: str = "z_order") -> Array:
    """Voxel coordinates of curve codes; the inverse of :func:`encode_seq` for the same ``permute`` and ``mode``.

    Args:
        codes: (N,) integer array or tensor, every value in [0, 2**30).
        permute: the permutation used when encoding.
        mode: ``"z_order"`` or ``"hilbert"``.

    Returns:
        (N, 3) int32 coordinates in [0, 1023], of the same kind and device as ``codes``.

    Raises:
        TypeError: ``codes`` is not an integer NumPy array / torch tensor.
        ValueError: wrong shape, a code outside [0, 2**30), a bad ``permute`` or ``mode``.
    """
    _check_mode(mode)
    order = _check_permute(permute)
    _check_integer_array(codes, "codes")
    if codes.ndim != 1:
        raise ValueError(f"codes must have shape (N,), got {tuple(codes.shape)}")
    _check_range(codes, 0, NUM_CODES - 1, "codes")

    wide = _to_int64(codes)
    axes = [_compact(wide >> 2), _compact(wide >> 1), _compact(wide)]
    if mode == "hilbert":
        axes = _hilbert_axes_from_transpose(axes)
    # Undo the permutation: curve axis k came from input column order[k].
    columns = [None, None, None]
    for curve_axis, column in enumerate(order):
        columns[column] = axes[curve_axis]
    if isinstance(wide, torch.Tensor):
        out = torch.stack(columns, dim=1)
    else:
        out = np.stack(columns, axis=1)
    return _to_int32(out)


# --------------------------------------------------------------------------------------------------------------
# Bit interleaving


def _spread(v):
    """Move bit k of a 10-bit value to bit 3k (classic magic-number bit spreading)."""
    v = (v | (v << 16)) & 0x030000FF
    v = (v | (v << 8)) & 0x0300F00F
    v = (v | (v << 4)) & 0x030C30C3
    v = (v | (v << 2)) & 0x09249249
    return v


def _compact(v):
    """Inverse of :func:`_spread`: gather bits 0, 3, 6, ... of ``v`` into a 10-bit value."""
    v = v & 0x09249249
    v = (v | (v >> 2)) & 0x030C30C3
    v = (v | (v >> 4)) & 0x0300F00F
    v = (v | (v >> 8)) & 0x030000FF
    v = (v | (v >> 16)) & 0x000003FF
    return v


def _interleave(x, y, z):
    return (_spread(x) << 2) | (_spread(y) << 1) | _spread(z)


# --------------------------------------------------------------------------------------------------------------
# Hilbert curve: Skilling, "Programming the Hilbert curve" (AIP Conf. Proc. 707, 2004), 3 axes x 10 bits.
# The "transposed index" keeps the Hilbert index spread over the three axes; interleaving it gives the code.
# Every conditional of the original loops is written as arithmetic on a 0/1 bit so it runs elementwise.


def _swap_or_invert(axes, axis: int, level_bit: int) -> None:
    """One step of Skilling's loop at bit ``level_bit``, in place on the list ``axes``.

    If ``axes[axis]`` has that bit set, invert the lower bits of axis 0, otherwise exchange the lower bits of axis 0
    and ``axes[axis]``.
    """
    low_mask = (1 << level_bit) - 1
    is_set = (axes[axis] >> level_bit) & 1
    invert = is_set * low_mask
    exchange = ((axes[0] ^ axes[axis]) & low_mask) * (1 - is_set)
    axes[0] = axes[0] ^ invert ^ exchange
    if axis != 0:  # for axis 0 the exchange term is zero and must not be applied twice
        axes[axis] = axes[axis] ^ exchange


def _hilbert_transpose_from_axes(axes):
    axes = list(axes)
    for level_bit in range(BITS_PER_AXIS - 1, 0, -1):
        for axis in range(3):
            _swap_or_invert(axes, axis, level_bit)
    # Gray encode.
    axes[1] = axes[1] ^ axes[0]
    axes[2] = axes[2] ^ axes[1]
    flip = axes[2] * 0
    for level_bit in range(BITS_PER_AXIS - 1, 0, -1):
        flip = flip ^ (((axes[2] >> level_bit) & 1) * ((1 << level_bit) - 1))
    return [a ^ flip for a in axes]


def _hilbert_axes_from_transpose(axes):
    axes = list(axes)
    # Gray decode.
    flip = axes[2] >> 1
    axes[2] = axes[2] ^ axes[1]
    axes[1] = axes[1] ^ axes[0]
    axes[0] = axes[0] ^ flip
    for level_bit in range(1, BITS_PER_AXIS):
        for axis in (2, 1, 0):
            _swap_or_invert(axes, axis, level_bit)
    return axes


# --------------------------------------------------------------------------------------------------------------
# Validation and NumPy/torch plumbing


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _check_permute(permute: Sequence[int]) -> tuple:
    try:
        order = tuple(int(p) for p in permute)
    except (TypeError, ValueError):
        raise ValueError(f"permute must be a permutation of (0, 1, 2), got {permute!r}") from None
    if sorted(order) != [0, 1, 2]:
        raise ValueError(f"permute must be a permutation of (0, 1, 2), got {permute!r}")
    return order


def _check_integer_array(values, name: str) -> None:
    if isinstance(values, torch.Tensor):
        if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got dtype {values.dtype}")
    elif isinstance(values, np.ndarray):
        if not np.issubdtype(values.dtype, np.integer):
            raise TypeError(f"{name} must be an integer array, got dtype {values.dtype}")
    else:
        raise TypeError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(values).__name__}")


def _check_range(values, low: int, high: int, name: str) -> None:
    count = values.numel() if isinstance(values, torch.Tensor) else values.size
    if count == 0:
        return
    smallest, largest = int(values.min()), int(values.max())
    if smallest < low or largest > high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got values in [{smallest}, {largest}]")


def _to_int64(values):
    if isinstance(values, torch.Tensor):
        return values.to(torch.int64)
    return values.astype(np.int64, copy=False)


def _to_int32(values):
    if isinstance(values, torch.Tensor):
        return values.to(torch.int32)
    return values.astype(np.int32)
