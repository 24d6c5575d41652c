"""Public, stateless operations on `SparseTensor`s: convolution, resampling, normalisation, activations.

Every function validates its arguments here (``TypeError``/``ValueError`` naming the argument) and then
calls the kernels. Attention lives in `omnivox.sparse.attention`.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from omnivox.sparse.kernels import SubmanifoldConv3dFunction, neighbor_map_reference, resolve_backend
from omnivox.sparse.maps import DownsampleMap, NeighborMap
from omnivox.sparse.tensor import SparseTensor

__all__ = [
    "neighbor_map",
    "submanifold_conv3d",
    "space_to_channel",
    "channel_to_space",
    "invert_space_to_channel",
    "linear",
    "layer_norm",
    "group_norm",
    "silu",
    "gelu",
]


def _require_sparse(x, name: str) -> None:
    if not isinstance(x, SparseTensor):
        raise TypeError(f"{name} must be a SparseTensor, got {type(x).__name__}")


def _require_2d_feats(x: SparseTensor, name: str) -> None:
    if x.feats.dim() != 2:
        raise ValueError(f"{name}.feats must be (N, C), got shape {tuple(x.feats.shape)}")


# ----------------------------------------------------------------------------------- convolution
def neighbor_map(x: SparseTensor) -> NeighborMap:
    """The 3x3x3 neighbour map of ``x``'s coordinates, built once per coordinate set and cached on ``x``.

    The map is built on ``x``'s device by sorting voxel keys and binary search (spec models.md 2.2). Every
    tensor derived from ``x`` with `SparseTensor.replace` (same coordinates) reuses it, so all
    convolutions at one scale share one map. The cache is for speed only.

    Raises:
        ValueError: duplicate voxels in ``x.coords``.
    """
    _require_sparse(x, "x")
    return x._cache.get(("neighbor_map_3x3x3",), lambda: NeighborMap(neighbor_map_reference(x.coords)))


def submanifold_conv3d(
    x: SparseTensor,
    weight: torch.Tensor,  # (Co, 3, 3, 3, Ci)
    bias: Optional[torch.Tensor] = None,  # (Co,)
    *,
    backend: str = "auto",
) -> SparseTensor:
    """Submanifold 3x3x3 convolution: outputs on the input's voxels, in the input's row order.

    ``out[p, co] = bias[co] + sum_{a,b,c} sum_ci weight[co, a, b, c, ci] * in[p + (a-1, b-1, c-1), ci]``,
    where inactive neighbours (and voxels of other batch items) contribute zero. The first kernel axis walks
    ``coords[:, 1]`` (x). This is a cross-correlation, equal to a dense ``Conv3d(padding=1)`` with
    ``weight.permute(0, 4, 1, 2, 3)`` evaluated at the active voxels with inactive inputs zeroed
    (spec models.md 2.2; the checkpoint layout ``[Co, 3, 3, 3, Ci]``).

    Numerics: products accumulate in fp32 (fp64 for fp64 inputs), the bias is added to the accumulator,
    and the result is rounded once to the input dtype. fp32 inputs use exact fp32 products (no TF32).

    Args:
        x: input with ``feats (N, Ci)`` in fp16, bf16, fp32 or fp64.
        weight: ``(Co, 3, 3, 3, Ci)``, same dtype as ``x.feats``.
        bias: optional ``(Co,)`` (any float dtype; added in the accumulation dtype).
        backend: ``"auto"`` (Triton for CUDA tensors when available, else torch), ``"triton"`` or ``"torch"``.

    Returns:
        ``SparseTensor`` with ``feats (N, Co)`` in the dtype of ``x.feats``, same coordinates (and cache).
    """
    _require_sparse(x, "x")
    _require_2d_feats(x, "x")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 5 or tuple(weight.shape[1:4]) != (3, 3, 3):
        raise ValueError(f"weight must have shape (Co, 3, 3, 3, Ci), got {tuple(weight.shape)}")
    c_in = x.feats.shape[1]
    if weight.shape[4] != c_in:
        raise ValueError(f"weight expects Ci={weight.shape[4]} input channels but x has {c_in}")
    if not x.feats.is_floating_point():
        raise TypeError(f"x.feats must be floating point, got {x.feats.dtype}")
    if weight.dtype != x.feats.dtype:
        raise TypeError(f"weight dtype {weight.dtype} must match x.feats dtype {x.feats.dtype}")
    if weight.device != x.feats.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.feats.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
            got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {got}")
        if bias.device != x.feats.device:
            raise ValueError(f"bias is on {bias.device} but x is on {x.feats.device}")
    resolved = resolve_backend(backend, x.feats.device, x.feats.dtype)
    nmap = neighbor_map(x)
    w = weight.reshape(weight.shape[0], 27, c_in)
    out = SubmanifoldConv3dFunction.apply(x.feats, w, bias, nmap, resolved)
    return x.replace(out)


# ----------------------------------------------------------------------------------- resampling
def _child_index(coords: torch.Tensor) -> torch.Tensor:
    # Spec 2.3: x is the least significant bit of the child slot.
    return ((coords[:, 1] & 1) + 2 * (coords[:, 2] & 1) + 4 * (coords[:, 3] & 1)).long()


def space_to_channel(x: SparseTensor) -> Tuple[SparseTensor, DownsampleMap]:
    """Downsample 2x by moving each 2x2x2 block of voxels into the channels of its parent voxel.

    Parent of ``(b, x, y, z)`` is ``(b, x//2, y//2, z//2)``; its child slot is
    ``k = (x % 2) + 2 (y % 2) + 4 (z % 2)``. Output row ``r`` holds the 8 child slots of ``C`` channels each:
    ``out[r, k*C:(k+1)*C] = in[child k]``, zeros for absent children. Output rows are the unique parents
    sorted by ``(b, x, y, z)`` (spec models.md 2.3).

    Args:
        x: ``feats (N, C)``.

    Returns:
        ``(coarse, downsample_map)``: ``coarse.feats (N', 8C)`` with scale doubled, and the map that
        `invert_space_to_channel` uses to undo this step exactly. Pass the map on explicitly (for example
        from a VAE encoder to the texture decoder, spec 9.6).
    """
    _require_sparse(x, "x")
    _require_2d_feats(x, "x")
    coords = x.coords
    n, channels = x.feats.shape
    device = coords.device
    if n == 0:
        coarse_coords = torch.zeros(0, 4, dtype=torch.int32, device=device)
        parent = torch.zeros(0, dtype=torch.int64, device=device)
        child = parent
        feats = x.feats.new_zeros(0, 8 * channels)
    else:
        c = coords.long()
        parent_xyz = c[:, 1:] // 2
        extent = (parent_xyz.amax(0) + 1).tolist()
        key = ((c[:, 0] * extent[0] + parent_xyz[:, 0]) * extent[1] + parent_xyz[:, 1]) * extent[2] + parent_xyz[:, 2]
        unique_key, parent = torch.unique(key, sorted=True, return_inverse=True)
        z = unique_key % extent[2]
        rest = unique_key // extent[2]
        y = rest % extent[1]
        rest = rest // extent[1]
        coarse_coords = torch.stack([rest // extent[0], rest % extent[0], y, z], 1).to(torch.int32)
        child = _child_index(coords)
        slots = x.feats.new_zeros(unique_key.shape[0], 8, channels)
        slots = slots.index_put((parent, child), x.feats)
        feats = slots.reshape(-1, 8 * channels)
    scale = tuple(s * 2 for s in x.scale)
    coarse = SparseTensor(coarse_coords, feats, x.batch_size, scale)
    down_map = DownsampleMap(fine_coords=coords, coarse_coords=coarse_coords, parent=parent, child=child,
                             batch_size=x.batch_size)
    return coarse, down_map


def _split_slots(x: SparseTensor, name: str) -> torch.Tensor:
    _require_sparse(x, name)
    _require_2d_feats(x, name)
    channels = x.feats.shape[1]
    if channels % 8:
        raise ValueError(f"{name}.feats must have a multiple of 8 channels (8 child slots), got {channels}")
    return x.feats.reshape(x.num_voxels, 8, channels // 8)


def _halved(scale) -> tuple:
    return tuple(Fraction(s) / 2 for s in scale)


def channel_to_space(x: SparseTensor, subdivision: torch.Tensor) -> SparseTensor:
    """Upsample 2x: split each voxel into the children selected by a subdivision mask.

    ``x.feats (N', 8C)`` is read as 8 child slots of ``C`` channels (slot ``k`` = channels ``kC:(k+1)C``).
    Children are emitted parent-major in ``x``'s row order and, within a parent, in increasing ``k``; child
    ``k`` of ``(b, x, y, z)`` sits at ``(b, 2x + (k & 1), 2y + ((k >> 1) & 1), 2z + ((k >> 2) & 1))`` and
    gets slot ``k`` as its features (spec models.md 2.4). The rows are batch-major but not sorted by
    position within a batch item.

    Args:
        x: coarse tensor, ``feats (N', 8C)``.
        subdivision: ``(N', 8) bool``, row ``r`` aligned with ``x``'s row ``r``; ``True`` keeps that child
            (the decoders pass ``logits > 0``).

    Returns:
        Fine tensor with ``feats (M, C)``, ``M = subdivision.sum()``, scale halved.
    """
    slots = _split_slots(x, "x")
    if not isinstance(subdivision, torch.Tensor):
        raise TypeError(f"subdivision must be a torch.Tensor, got {type(subdivision).__name__}")
    if subdivision.dtype != torch.bool:
        raise TypeError(f"subdivision must be a bool mask (e.g. logits > 0), got {subdivision.dtype}")
    if subdivision.shape != (x.num_voxels, 8):
        raise ValueError(f"subdivision must have shape ({x.num_voxels}, 8), got {tuple(subdivision.shape)}")
    if subdivision.device != x.feats.device:
        raise ValueError(f"subdivision is on {subdivision.device} but x is on {x.feats.device}")
    parent, child = torch.nonzero(subdivision, as_tuple=True)  # row-major: parent-major, child-minor
    p = x.coords.index_select(0, parent)
    k = child.to(torch.int32)
    coords = torch.stack([p[:, 0], 2 * p[:, 1] + (k & 1), 2 * p[:, 2] + ((k >> 1) & 1),
                          2 * p[:, 3] + ((k >> 2) & 1)], 1)
    return SparseTensor(coords, slots[parent, child], x.batch_size, _halved(x.scale))


def invert_space_to_channel(x: SparseTensor, downsample_map: DownsampleMap) -> SparseTensor:
    """Upsample 2x by undoing a recorded `space_to_channel` step.

    Fine row ``i`` gets slot ``downsample_map.child[i]`` of coarse row ``downsample_map.parent[i]``, so the
    output has exactly the fine coordinates, in the fine row order, of the step that produced the map
    (spec models.md 2.4, "inverse of the encoder"; used by texturing, spec 9.6).

    Args:
        x: coarse tensor with ``feats (N', 8C)`` on ``downsample_map.coarse_coords`` (same rows).
        downsample_map: map returned by `space_to_channel`.

    Returns:
        Fine tensor with ``feats (N, C)`` on ``downsample_map.fine_coords``, scale halved.

    Raises:
        ValueError: ``x``'s coordinates are not the map's coarse coordinates.
    """
    slots = _split_slots(x, "x")
    if not isinstance(downsample_map, DownsampleMap):
        raise TypeError(f"downsample_map must be a DownsampleMap, got {type(downsample_map).__name__}")
    if x.coords.shape != downsample_map.coarse_coords.shape or x.coords.device != downsample_map.coarse_coords.device:
        raise ValueError(f"x has {x.num_voxels} voxels but downsample_map expects "
                         f"{downsample_map.coarse_coords.shape[0]} coarse voxels")
    if x.coords is not downsample_map.coarse_coords and not torch.equal(x.coords, downsample_map.coarse_coords):
        raise ValueError("x.coords differ from downsample_map.coarse_coords: the map belongs to another voxel set")
    feats = slots[downsample_map.parent, downsample_map.child]
    return SparseTensor(downsample_map.fine_coords, feats, x.batch_size, _halved(x.scale))


# ----------------------------------------------------------------------------------- per-voxel ops
def linear(x: SparseTensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> SparseTensor:
    """``feats @ weight.T + bias`` on every voxel (``weight (Co, Ci)``)."""
    _require_sparse(x, "x")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != x.feats.shape[-1]:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must be (Co, {x.feats.shape[-1]}), got {got}")
    return x.replace(F.linear(x.feats, weight, bias))


def layer_norm(
    x: SparseTensor,
    weight: Optional[torch.Tensor] = None,  # (C,)
    bias: Optional[torch.Tensor] = None,  # (C,)
    eps: float = 1e-6,
) -> SparseTensor:
    """LayerNorm over the channels of each voxel, computed in fp32 and cast back (spec models.md 3).

    The input is upcast to fp32 (fp64 stays fp64), normalised with the fp32 affine parameters, and the
    result is cast back to the input dtype ("LayerNorm32").
    """
    _require_sparse(x, "x")
    channels = x.feats.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (not isinstance(p, torch.Tensor) or p.shape != (channels,)):
            raise ValueError(f"{name} must have shape ({channels},)")
    compute = torch.float64 if x.feats.dtype == torch.float64 else torch.float32
    h = F.layer_norm(x.feats.to(compute), (channels,),
                     weight.to(compute) if weight is not None else None,
                     bias.to(compute) if bias is not None else None, eps)
    return x.replace(h.to(x.feats.dtype))


def group_norm(
    x: SparseTensor,
    num_groups: int,
    weight: Optional[torch.Tensor] = None,  # (C,)
    bias: Optional[torch.Tensor] = None,  # (C,)
    eps: float = 1e-5,
) -> SparseTensor:
    """GroupNorm per batch item: statistics over all voxels of the item and the channels of each group.

    Equivalent to ``torch.nn.functional.group_norm`` applied to each item's ``(1, C, N_b)`` features.
    Computed in fp32 (fp64 for fp64) and cast back; an empty batch item simply has no rows.
    """
    _require_sparse(x, "x")
    _require_2d_feats(x, "x")
    n, channels = x.feats.shape
    if not isinstance(num_groups, int) or num_groups < 1 or channels % num_groups:
        raise ValueError(f"num_groups must be a positive divisor of C={channels}, got {num_groups!r}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (not isinstance(p, torch.Tensor) or p.shape != (channels,)):
            raise ValueError(f"{name} must have shape ({channels},)")
    compute = torch.float64 if x.feats.dtype == torch.float64 else torch.float32
    h = x.feats.to(compute).reshape(n, num_groups, channels // num_groups)
    batch = x.batch_index
    count = (x.seq_lens.to(compute) * (channels // num_groups)).clamp(min=1)[:, None]  # (B, 1)
    total = h.new_zeros(x.batch_size, num_groups).index_add_(0, batch, h.sum(-1))
    mean = total / count
    centred = h - mean.index_select(0, batch)[:, :, None]
    var = h.new_zeros(x.batch_size, num_groups).index_add_(0, batch, centred.square().sum(-1)) / count
    h = centred * torch.rsqrt(var + eps).index_select(0, batch)[:, :, None]
    h = h.reshape(n, channels)
    if weight is not None:
        h = h * weight.to(compute)
    if bias is not None:
        h = h + bias.to(compute)
    return x.replace(h.to(x.feats.dtype))


def silu(x: SparseTensor) -> SparseTensor:
    """``x * sigmoid(x)`` on the features."""
    _require_sparse(x, "x")
    return x.replace(F.silu(x.feats))


def gelu(x: SparseTensor, approximate: str = "none") -> SparseTensor:
    """GELU on the features; ``approximate="tanh"`` is the variant the flow transformers use."""
    _require_sparse(x, "x")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return x.replace(F.gelu(x.feats, approximate=approximate))
