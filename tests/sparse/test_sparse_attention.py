"""Variable-length sparse attention against per-sample dense attention in float64; RoPE; RMSNorm."""

import math

import pytest
import torch

from omnivox.sparse import attention as SA
from sparse_inputs import random_sparse, rel_err

HEADS, HEAD_DIM = 3, 12


def _dense_attention(q, k, v):
    """float64 softmax(q k^T / sqrt(D)) v for (T, H, D) inputs."""
    logits = torch.einsum("qhd,khd->hqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    return torch.einsum("hqk,khd->qhd", logits.softmax(-1), v.double())


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_self_attention_equals_per_sample_dense(dtype, tol):
    g = torch.Generator().manual_seed(30)
    x = random_sparse(g, channels=3 * HEADS * HEAD_DIM, resolution=5)  # items: random, empty, 1 voxel, random
    qkv = x.replace(x.feats.reshape(-1, 3, HEADS, HEAD_DIM).to(dtype))
    out = SA.sparse_self_attention(qkv)
    assert out.feats.shape == (x.num_voxels, HEADS, HEAD_DIM) and out.feats.dtype == dtype
    for sl in x.layout:
        if sl.stop > sl.start:
            q, k, v = qkv.feats[sl].unbind(1)
            assert rel_err(out.feats[sl], _dense_attention(q, k, v)) < tol


def test_single_item_batch_uses_one_call_and_matches():
    g = torch.Generator().manual_seed(31)
    q, k, v = torch.randn(3, 40, HEADS, HEAD_DIM, generator=g, dtype=torch.float64)
    out = SA.varlen_attention(q, k, v, [40], [40])
    assert rel_err(out, _dense_attention(q, k, v)) < 1e-12


def test_cross_attention_per_item():
    g = torch.Generator().manual_seed(32)
    x = random_sparse(g, channels=HEADS * HEAD_DIM, resolution=5)
    q = x.replace(x.feats.reshape(-1, HEADS, HEAD_DIM))
    kv = torch.randn(4, 7, 2, HEADS, HEAD_DIM, generator=g, dtype=torch.float64)
    out = SA.sparse_cross_attention(q, kv)
    for b, sl in enumerate(x.layout):
        if sl.stop > sl.start:
            assert rel_err(out.feats[sl], _dense_attention(q.feats[sl], kv[b, :, 0], kv[b, :, 1])) < 1e-12
    with pytest.raises(ValueError, match="B=4"):
        SA.sparse_cross_attention(q, kv[:2])


def test_varlen_validation():
    q = torch.randn(5, 2, 4)
    with pytest.raises(ValueError, match="sum to"):
        SA.varlen_attention(q, q, q, [2, 2], [2, 3])


def test_rope_phase_layout():
    pos = torch.tensor([[3, 5, 7], [0, 0, 0]])
    phases = SA.rope_3d_phases(pos, head_dim=128)
    assert phases.shape == (2, 64) and phases.dtype == torch.complex64
    f = 1.0 / 10000 ** (torch.arange(21, dtype=torch.float64) / 21)
    angles = torch.angle(phases[0].to(torch.complex128))
    expected = torch.cat([3 * f, 5 * f, 7 * f, torch.zeros(1, dtype=torch.float64)])
    # compare as unit phasors (angles wrap at pi)
    assert torch.allclose(torch.polar(torch.ones(64, dtype=torch.float64), angles),
                          torch.polar(torch.ones(64, dtype=torch.float64), expected), atol=1e-5)
    assert torch.allclose(phases[1], torch.ones(64, dtype=torch.complex64))


def test_apply_rope_rotates_pairs():
    g = torch.Generator().manual_seed(33)
    x = torch.randn(4, 2, 8, generator=g, dtype=torch.float64)
    theta = torch.rand(4, 4, generator=g, dtype=torch.float64) * 6
    out = SA.apply_rope(x, torch.polar(torch.ones_like(theta), theta))
    a, b = x[..., 0::2], x[..., 1::2]
    c, s = theta.cos()[:, None], theta.sin()[:, None]
    assert rel_err(out[..., 0::2], a * c - b * s) < 1e-12
    assert rel_err(out[..., 1::2], a * s + b * c) < 1e-12
    # rotations preserve each pair's norm, so dot products depend only on position differences
    assert rel_err(out.norm(dim=-1), x.norm(dim=-1)) < 1e-12


def test_multi_head_rms_norm():
    g = torch.Generator().manual_seed(34)
    x = torch.randn(5, HEADS, HEAD_DIM, generator=g).bfloat16()
    gamma = torch.rand(HEADS, HEAD_DIM, generator=g) + 0.5
    y = SA.multi_head_rms_norm(x, gamma)
    xd = x.double()
    ref = xd / xd.norm(dim=-1, keepdim=True) * gamma.double() * math.sqrt(HEAD_DIM)
    assert y.dtype == torch.bfloat16 and rel_err(y, ref) < 1e-2
    with pytest.raises(ValueError, match="gamma"):
        SA.multi_head_rms_norm(x, gamma.T)
