"""Attention over variable-length sparse batches, 3-D rotary position embedding and multi-head RMSNorm.

Tokens of all batch items are packed row-wise as in a `SparseTensor`; self-attention is block-diagonal
(each item attends only to its own rows), cross-attention lets each item's tokens attend to that item's
dense condition tokens (spec models.md 6.7 and 7). All of it is plain softmax attention with scale
``1/sqrt(D)``, computed by ``torch.nn.functional.scaled_dot_product_attention`` (SDPA), which picks a
flash / memory-efficient kernel on CUDA and a fused CPU kernel on CPU. Variable lengths are handled by one
SDPA call per batch item (for batch size 1, or items of equal lengths, a single call); this is exact and adds
one launch per item. Sequence lengths are host lists: callers that run many times on one token set read them
once (`SparseTensor.layout` caches them), so a forward pass never waits on the device.
The released models use only full attention, so windowed attention is not implemented.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from omnivox.sparse.tensor import SparseTensor

__all__ = [
    "rope_3d_phases",
    "apply_rope",
    "multi_head_rms_norm",
    "varlen_attention",
    "host_seq_lens",
    "sparse_self_attention",
    "sparse_cross_attention",
]


def rope_3d_phases(
    positions: torch.Tensor,  # (N, 3)
    head_dim: int = 128,
    freq_range: Tuple[float, float] = (1.0, 10000.0),
) -> torch.Tensor:
    """Per-token rotary phases for 3-D integer positions (spec models.md 6.4).

    With ``F = head_dim // 2 // 3`` frequencies ``f[j] = freq_range[0] / freq_range[1] ** (j / F)``, the
    ``head_dim // 2`` phases of a token at ``(x, y, z)`` are ``[x f, y f, z f, 0 ...]``: x, y, z blocks of
    ``F`` each, then zero phases (identity rotation) for the leftover pairs (one pair for ``head_dim=128``).

    Args:
        positions: ``(N, 3)`` integer or float positions (sparse: ``coords[:, 1:]``).
        head_dim: even head dimension ``D``.
        freq_range: ``(numerator, base)`` of the frequencies.

    Returns:
        ``(N, D // 2) complex64`` unit phasors ``exp(i theta)``, computed in fp32.
    """
    if not isinstance(positions, torch.Tensor) or positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError("positions must be a (N, 3) tensor of (x, y, z)")
    if not isinstance(head_dim, int) or head_dim < 6 or head_dim % 2:
        raise ValueError(f"head_dim must be an even int >= 6, got {head_dim!r}")
    num_pairs = head_dim // 2
    freq_dim = num_pairs // 3
    j = torch.arange(freq_dim, dtype=torch.float32, device=positions.device)
    freqs = freq_range[0] / (freq_range[1] ** (j / freq_dim))
    angles = (positions.to(torch.float32)[:, :, None] * freqs).reshape(positions.shape[0], 3 * freq_dim)
    angles = F.pad(angles, (0, num_pairs - 3 * freq_dim))
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2p, 2p + 1)`` of every head by ``phases[:, p]``, in fp32.

    ``(a + ib) exp(i theta) = (a cos - b sin) + i (a sin + b cos)``.

    Args:
        x: ``(N, H, D)`` queries or keys.
        phases: ``(N, D // 2) complex64`` from `rope_3d_phases`.

    Returns:
        ``(N, H, D)`` in the dtype of ``x``.
    """
    if x.dim() != 3 or phases.shape != (x.shape[0], x.shape[2] // 2) or not phases.is_complex():
        raise ValueError(f"apply_rope needs x (N, H, D) and complex phases (N, D/2); got {tuple(x.shape)} and "
                         f"{tuple(phases.shape)} {phases.dtype}")
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    pairs = torch.view_as_complex(x.to(compute).reshape(*x.shape[:2], -1, 2).contiguous())
    phases = phases.to(torch.complex128 if compute == torch.float64 else torch.complex64)
    rotated = torch.view_as_real(pairs * phases[:, None, :]).reshape(x.shape)
    return rotated.to(x.dtype)


def multi_head_rms_norm(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``x / max(||x||, 1e-12) * gamma * sqrt(D)`` per head, in fp32, cast back (spec models.md 6.3).

    Args:
        x: ``(..., H, D)``.
        gamma: ``(H, D)`` learned scale.
    """
    if gamma.shape != x.shape[-2:]:
        raise ValueError(f"gamma must have shape {tuple(x.shape[-2:])} (heads, head_dim), got {tuple(gamma.shape)}")
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = F.normalize(x.to(compute), dim=-1) * gamma.to(compute) * math.sqrt(x.shape[-1])
    return y.to(x.dtype)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    # (T, H, D) -> (1, H, T, D) for SDPA and back.
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                         v.transpose(0, 1)[None], scale=scale)
    return out[0].transpose(0, 1)


def varlen_attention(
    q: torch.Tensor,  # (Tq, H, D)
    k: torch.Tensor,  # (Tk, H, D)
    v: torch.Tensor,  # (Tk, H, Dv)
    q_seq_lens: Sequence[int],
    kv_seq_lens: Sequence[int],
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Softmax attention where query segment ``b`` attends only to key/value segment ``b``.

    Args:
        q, k, v: packed segments; segment ``b`` of ``q`` has ``q_seq_lens[b]`` rows, of ``k``/``v``
            ``kv_seq_lens[b]`` rows. A segment may be empty.
        scale: softmax scale, default ``1 / sqrt(D)``.

    Returns:
        ``(Tq, H, Dv)`` in the dtype of ``q``. Queries whose key segment is empty get zeros.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a (T, H, D) tensor")
    if k.shape[:2] != v.shape[:2] or q.shape[1] != k.shape[1] or q.shape[2] != k.shape[2]:
        raise ValueError(f"incompatible q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    q_lens = [int(n) for n in q_seq_lens]
    kv_lens = [int(n) for n in kv_seq_lens]
    if len(q_lens) != len(kv_lens):
        raise ValueError(f"q_seq_lens ({len(q_lens)}) and kv_seq_lens ({len(kv_lens)}) must have one entry per item")
    if sum(q_lens) != q.shape[0] or sum(kv_lens) != k.shape[0]:
        raise ValueError(f"sequence lengths sum to {sum(q_lens)} / {sum(kv_lens)} but q has {q.shape[0]} and "
                         f"k has {k.shape[0]} rows")
    scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else scale
    if len(q_lens) == 1 and kv_lens[0] > 0:
        return _sdpa(q, k, v, scale)
    if len(set(q_lens)) == 1 and len(set(kv_lens)) == 1 and q_lens[0] > 0 and kv_lens[0] > 0:
        # Equal segments (a batch of copies of one token set, e.g. both CFG passes): one batched SDPA call
        # instead of one call per item plus the scatter into `out`.
        batch = len(q_lens)
        out = F.scaled_dot_product_attention(
            q.unflatten(0, (batch, -1)).transpose(1, 2), k.unflatten(0, (batch, -1)).transpose(1, 2),
            v.unflatten(0, (batch, -1)).transpose(1, 2), scale=scale)
        return out.transpose(1, 2).flatten(0, 1)
    out = q.new_zeros(q.shape[0], q.shape[1], v.shape[2])
    q_start = kv_start = 0
    for nq, nk in zip(q_lens, kv_lens):
        if nq and nk:
            out[q_start:q_start + nq] = _sdpa(q[q_start:q_start + nq], k[kv_start:kv_start + nk],
                                              v[kv_start:kv_start + nk], scale)
        q_start += nq
        kv_start += nk
    return out


def host_seq_lens(x: SparseTensor) -> list:
    """Tokens per batch item as Python ints, from the coordinate cache (`SparseTensor.layout`): only the first
    call on a coordinate set reads back from the device, so forwards stay free of host synchronisation."""
    return [rows.stop - rows.start for rows in x.layout]


def sparse_self_attention(qkv: SparseTensor, scale: Optional[float] = None) -> SparseTensor:
    """Block-diagonal self-attention over a packed sparse batch.

    Args:
        qkv: ``feats (N, 3, H, D)`` holding q, k, v of every token (apply RMSNorm and RoPE beforehand).

    Returns:
        ``SparseTensor`` with ``feats (N, H, D)`` on the same coordinates.
    """
    if not isinstance(qkv, SparseTensor):
        raise TypeError(f"qkv must be a SparseTensor, got {type(qkv).__name__}")
    if qkv.feats.dim() != 4 or qkv.feats.shape[1] != 3:
        raise ValueError(f"qkv.feats must be (N, 3, H, D), got {tuple(qkv.feats.shape)}")
    lens = host_seq_lens(qkv)
    q, k, v = qkv.feats.unbind(1)
    return qkv.replace(varlen_attention(q, k, v, lens, lens, scale))


def sparse_cross_attention(q: SparseTensor, kv: torch.Tensor, scale: Optional[float] = None) -> SparseTensor:
    """Each batch item's tokens attend to that item's dense condition tokens.

    Args:
        q: ``feats (N, H, D)`` queries.
        kv: ``(B, L, 2, H, D)`` keys (index 0) and values (index 1) of the condition tokens.

    Returns:
        ``SparseTensor`` with ``feats (N, H, D)``.
    """
    if not isinstance(q, SparseTensor):
        raise TypeError(f"q must be a SparseTensor, got {type(q).__name__}")
    if q.feats.dim() != 3:
        raise ValueError(f"q.feats must be (N, H, D), got {tuple(q.feats.shape)}")
    if not isinstance(kv, torch.Tensor) or kv.dim() != 5 or kv.shape[2] != 2 or kv.shape[0] != q.batch_size:
        got = tuple(kv.shape) if isinstance(kv, torch.Tensor) else type(kv).__name__
        raise ValueError(f"kv must be (B={q.batch_size}, L, 2, H, D), got {got}")
    batch, length = kv.shape[:2]
    k, v = kv.reshape(batch * length, 2, *kv.shape[3:]).unbind(1)
    return q.replace(varlen_attention(q.feats, k, v, host_seq_lens(q), [length] * batch, scale))
