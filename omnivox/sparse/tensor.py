"""`SparseTensor`: features on the active voxels of a batch of sparse 3-D grids.

Data layout (spec models.md 1.1):

* ``coords``: ``(N, 4) int32``, columns ``(batch, x, y, z)``, all non-negative. The rows of one batch item
  are contiguous and batch items appear in increasing order ("batch-major"). Within a batch item the row
  order is free; operations keep it or document the order they produce.
* ``feats``: ``(N, ...)``, row ``i`` belongs to voxel ``coords[i]``. Usually ``(N, C)``; attention reshapes
  it to ``(N, 3, H, D)`` and similar.
* ``batch_size``: ``B``, at least ``max(coords[:, 0]) + 1``. It is stored explicitly so that a batch item
  with no voxels (also the last one) keeps its place.
* ``scale``: voxel size relative to the finest grid, three ``Fraction``s. Space-to-channel multiplies it by
  2, channel-to-space divides it by 2. It is bookkeeping only.

Example:
    >>> import torch
    >>> coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [1, 5, 5, 5]], dtype=torch.int32)
    >>> x = SparseTensor.from_coords(coords, torch.ones(3, 8))
    >>> x.batch_size, x.seq_lens.tolist()
    (2, [2, 1])
    >>> y = x.replace(x.feats * x.broadcast_rows(torch.tensor([[1.0], [2.0]])))
    >>> y.feats[:, 0].tolist()
    [1.0, 1.0, 2.0]

Caches. A `SparseTensor` holds a private `_cache` of values that are pure functions of its coordinates
(batch bookkeeping, the convolution neighbour map). They exist for speed only: dropping them
(`without_cache`) never changes a result. `replace` keeps the cache only when the coordinates stay the
same object, so a cache can never describe other coordinates. Everything with meaning, such as the index
maps of a downsampling step, is an explicit value (`omnivox.sparse.DownsampleMap`), never a cache entry.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, Optional, Sequence, Tuple

import torch

Scale = Tuple[Fraction, Fraction, Fraction]
UNIT_SCALE: Scale = (Fraction(1), Fraction(1), Fraction(1))


class _CoordsCache:
    """Values derived from one coordinate tensor, computed on first use (performance only)."""

    def __init__(self) -> None:
        self._values: dict = {}

    def get(self, key: tuple, compute: Callable[[], object]):
        """Return the value stored under ``key``, computing and storing it on the first request."""
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]

    def keys(self) -> list:
        return list(self._values)

    def peek(self, key: tuple):
        """The value stored under ``key``, or None (computes nothing)."""
        return self._values.get(key)


def _validate_coords(coords: torch.Tensor, name: str = "coords") -> None:
    if not isinstance(coords, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(coords).__name__}")
    if coords.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {coords.dtype}")
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) = (batch, x, y, z), got {tuple(coords.shape)}")


def _check_batch_major(coords: torch.Tensor, batch_size: int, name: str = "coords") -> None:
    """Raise ValueError unless coords are non-negative, batch-major and inside ``[0, batch_size)``."""
    if coords.shape[0] == 0:
        return
    if bool((coords < 0).any()):
        raise ValueError(f"{name} must be non-negative (batch and voxel indices)")
    batch = coords[:, 0]
    if bool((batch[1:] < batch[:-1]).any()):
        raise ValueError(f"{name} must be batch-major: rows of each batch item contiguous, in increasing order")
    last = int(batch[-1])
    if last >= batch_size:
        raise ValueError(f"batch_size={batch_size} is too small for {name} holding batch index {last}")


class SparseTensor:
    """Features on active voxels; see the module docstring for the layout.

    Build one with a named constructor (`from_coords`, `from_batch_list`, `empty`), derive new ones with
    `replace`. Instances are immutable in spirit: operations return new tensors.

    Attributes:
        coords: ``(N, 4) int32`` ``(batch, x, y, z)``, batch-major.
        feats: ``(N, ...)`` features, any float dtype.
        batch_size: number of batch items ``B``.
        scale: voxel size relative to the finest grid (three ``Fraction``s).
    """

    __slots__ = ("coords", "feats", "batch_size", "scale", "_cache")

    def __init__(
        self,
        coords: torch.Tensor,
        feats: torch.Tensor,
        batch_size: int,
        scale: Scale = UNIT_SCALE,
        _cache: Optional[_CoordsCache] = None,
    ) -> None:
        # Internal constructor: no validation. Use the named constructors from outside this package.
        self.coords = coords
        self.feats = feats
        self.batch_size = batch_size
        self.scale = scale
        self._cache = _cache if _cache is not None else _CoordsCache()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_coords(
        cls,
        coords: torch.Tensor,
        feats: torch.Tensor,
        batch_size: Optional[int] = None,
        scale: Scale = UNIT_SCALE,
    ) -> "SparseTensor":
        """Validate and wrap packed coordinates and features.

        Args:
            coords: ``(N, 4) int32`` ``(batch, x, y, z)``, non-negative, batch-major.
            feats: ``(N, ...)`` features on the same device.
            batch_size: ``B``; defaults to ``max(coords[:, 0]) + 1`` (0 when ``N == 0``).
            scale: voxel size relative to the finest grid.

        Raises:
            TypeError: wrong tensor types or dtypes.
            ValueError: wrong shapes, negative or non-batch-major coordinates, too small ``batch_size``.
        """
        _validate_coords(coords)
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"feats must be a torch.Tensor, got {type(feats).__name__}")
        if feats.dim() < 1 or feats.shape[0] != coords.shape[0]:
            raise ValueError(f"feats must have one row per coordinate row ({coords.shape[0]}), "
                             f"got shape {tuple(feats.shape)}")
        if feats.device != coords.device:
            raise ValueError(f"feats ({feats.device}) and coords ({coords.device}) must be on one device")
        if batch_size is None:
            batch_size = int(coords[-1, 0]) + 1 if coords.shape[0] else 0
        if not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
        _check_batch_major(coords, batch_size)
        if len(scale) != 3:
            raise ValueError(f"scale must hold 3 Fractions, got {scale!r}")
        return cls(coords.contiguous(), feats, batch_size, tuple(Fraction(s) for s in scale))

    @classmethod
    def from_batch_list(cls, coords_list: Sequence[torch.Tensor], feats_list: Sequence[torch.Tensor],
                        scale: Scale = UNIT_SCALE) -> "SparseTensor":
        """Pack per-item voxels into one batch.

        Args:
            coords_list: ``B`` tensors of shape ``(N_b, 3)``, integer ``(x, y, z)``; ``N_b`` may be 0.
            feats_list: ``B`` tensors of shape ``(N_b, ...)``.

        Returns:
            A tensor with ``batch_size == B`` whose batch item ``b`` holds ``coords_list[b]`` in order.
        """
        if len(coords_list) != len(feats_list):
            raise ValueError(f"coords_list ({len(coords_list)}) and feats_list ({len(feats_list)}) "
                             "must have the same length")
        if len(coords_list) == 0:
            raise ValueError("from_batch_list needs at least one batch item")
        packed = []
        for b, c in enumerate(coords_list):
            if not isinstance(c, torch.Tensor) or c.dim() != 2 or c.shape[1] != 3:
                raise ValueError(f"coords_list[{b}] must be a (N, 3) tensor of (x, y, z)")
            if c.dtype.is_floating_point or c.dtype == torch.bool:
                raise TypeError(f"coords_list[{b}] must be an integer tensor, got {c.dtype}")
            batch_col = torch.full((c.shape[0], 1), b, dtype=torch.int32, device=c.device)
            packed.append(torch.cat([batch_col, c.to(torch.int32)], dim=1))
        return cls.from_coords(torch.cat(packed), torch.cat(list(feats_list)), len(coords_list), scale)

    @classmethod
    def empty(cls, channels: int, batch_size: int = 1, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> "SparseTensor":
        """A tensor with no voxels, ``(0, channels)`` features."""
        return cls(torch.zeros(0, 4, dtype=torch.int32, device=device),
                   torch.zeros(0, channels, dtype=dtype, device=device), batch_size)

    # ------------------------------------------------------------------ derivation
    def replace(self, feats: torch.Tensor, coords: Optional[torch.Tensor] = None) -> "SparseTensor":
        """A tensor with new features (and optionally new coordinates), same batch size and scale.

        Args:
            feats: ``(N, ...)`` new features, one row per coordinate row.
            coords: optional ``(N, 4) int32`` new coordinates (validated). When given, the coordinate
                cache starts empty.
        """
        if coords is None:
            if not isinstance(feats, torch.Tensor) or feats.dim() < 1 or feats.shape[0] != self.coords.shape[0]:
                got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
                raise ValueError(f"replace: feats must have {self.coords.shape[0]} rows, got {got}")
            return SparseTensor(self.coords, feats, self.batch_size, self.scale, self._cache)
        return SparseTensor.from_coords(coords, feats, self.batch_size, self.scale)

    def without_cache(self) -> "SparseTensor":
        """The same data with an empty performance cache (for tests that prove caches change nothing)."""
        return SparseTensor(self.coords, self.feats, self.batch_size, self.scale, None)

    def to(self, *args, **kwargs) -> "SparseTensor":
        """Apply ``Tensor.to`` to the features only (dtype casts), or to both when the device changes."""
        feats = self.feats.to(*args, **kwargs)
        if feats.device == self.coords.device:
            return self.replace(feats)
        moved = SparseTensor(self.coords.to(feats.device), feats, self.batch_size, self.scale)
        layout = self._cache.peek(("layout",))
        if layout is not None:  # host values, valid on any device; saves the mover a sync
            moved._cache.get(("layout",), lambda: layout)
        return moved

    # ------------------------------------------------------------------ batch bookkeeping (cached)
    @property
    def num_voxels(self) -> int:
        return self.coords.shape[0]

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def seq_lens(self) -> torch.Tensor:
        """``(B,) int64`` number of voxels per batch item."""
        return self._cache.get(("seq_lens",), lambda: torch.bincount(
            self.coords[:, 0].long(), minlength=self.batch_size))

    @property
    def cu_seq_lens(self) -> torch.Tensor:
        """``(B + 1,) int64`` row offsets: item ``b`` owns rows ``cu[b] : cu[b + 1]``."""
        return self._cache.get(("cu_seq_lens",), lambda: torch.nn.functional.pad(
            torch.cumsum(self.seq_lens, 0), (1, 0)))

    @property
    def layout(self) -> list:
        """Per-item row slices (host values; computing them synchronises with the device once)."""
        def compute():
            cu = self.cu_seq_lens.tolist()
            return [slice(cu[b], cu[b + 1]) for b in range(self.batch_size)]
        return self._cache.get(("layout",), compute)

    @property
    def batch_index(self) -> torch.Tensor:
        """``(N,) int64`` batch item of each row (the "batch broadcast map")."""
        return self._cache.get(("batch_index",), lambda: self.coords[:, 0].long())

    def broadcast_rows(self, values: torch.Tensor) -> torch.Tensor:
        """Expand per-sample or per-channel values to one row per voxel.

        Args:
            values: ``(B, ...)`` per batch item, or ``(1, ...)`` / ``(...)`` shared by all rows.

        Returns:
            ``(N, ...)``: row ``i`` holds the values of its batch item.
        """
        if not isinstance(values, torch.Tensor):
            raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
        if values.dim() == 0 or values.dim() < self.feats.dim():
            values = values.reshape(1, *values.shape)
        if values.shape[0] == 1:
            return values.expand(self.num_voxels, *values.shape[1:])
        if values.shape[0] != self.batch_size:
            raise ValueError(f"values must have a leading dim of 1 or batch_size={self.batch_size}, "
                             f"got shape {tuple(values.shape)}")
        return values.index_select(0, self.batch_index)

    # ------------------------------------------------------------------ elementwise arithmetic
    def _operand(self, other):
        if isinstance(other, SparseTensor):
            if other.num_voxels != self.num_voxels:
                raise ValueError(f"sparse operands must have the same rows, got {self.num_voxels} and "
                                 f"{other.num_voxels}")
            return other.feats
        if isinstance(other, torch.Tensor) and other.dim() >= 1:
            return self.broadcast_rows(other)
        return other

    def __add__(self, other):
        return self.replace(self.feats + self._operand(other))

    def __sub__(self, other):
        return self.replace(self.feats - self._operand(other))

    def __mul__(self, other):
        return self.replace(self.feats * self._operand(other))

    def __truediv__(self, other):
        return self.replace(self.feats / self._operand(other))

    __radd__ = __add__
    __rmul__ = __mul__

    def __neg__(self):
        return self.replace(-self.feats)

    def __repr__(self) -> str:
        return (f"SparseTensor(num_voxels={self.num_voxels}, feats={tuple(self.feats.shape)} {self.feats.dtype}, "
                f"batch_size={self.batch_size}, scale={tuple(str(s) for s in self.scale)}, device={self.device})")
