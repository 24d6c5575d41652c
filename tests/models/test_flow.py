"""Flow transformers against a float64 re-derivation of spec models.md 6, plus layout/plumbing checks."""

import math

import pytest
import torch
import torch.nn.functional as F

from omnivox.models import SLatFlowModel, SparseStructureFlowModel
from omnivox.sparse import SparseTensor

from .helpers import random_voxels, randomize, relative_error, sparse_from, tiny_flow_config


def _reference_sample(p: dict, tokens, positions, t, cond, cfg):
    """One sample of the flow transformer in float64, written directly from spec 6.1-6.5.

    tokens (L, Cin), positions (L, 3) int, t scalar (already x1000), cond (M, Cc).
    """
    c, heads = cfg.model_channels, cfg.num_heads
    d = c // heads
    lin = lambda x, name: x @ p[f"{name}.weight"].T + p[f"{name}.bias"]  # noqa: E731
    ln = lambda x, eps: F.layer_norm(x, x.shape[-1:], eps=eps)  # noqa: E731
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float64) / 128)
    emb = torch.cat([torch.cos(t * freqs), torch.sin(t * freqs)])
    t_emb = lin(F.silu(lin(emb, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    mod = lin(F.silu(t_emb), "adaLN_modulation.1")
    # RoPE: pair p of each head is (2p, 2p+1); angles [x f, y f, z f, 0...]
    per_axis = d // 2 // 3
    f = 1.0 / 10000 ** (torch.arange(per_axis, dtype=torch.float64) / per_axis)
    theta = torch.zeros(tokens.shape[0], d // 2, dtype=torch.float64)
    for axis in range(3):
        theta[:, axis * per_axis:(axis + 1) * per_axis] = positions[:, axis:axis + 1].double() * f

    def rope(x):  # (L, H, D)
        a, b = x[..., 0::2], x[..., 1::2]
        cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
        out = torch.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        return out

    def rms(x, gamma):
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * gamma * math.sqrt(d)

    def attend(q, k, v):  # (L, H, D), (M, H, D) -> (L, H*D)
        w = torch.softmax(torch.einsum("lhd,mhd->hlm", q, k) / math.sqrt(d), dim=-1)
        return torch.einsum("hlm,mhd->lhd", w, v).reshape(q.shape[0], -1)

    h = lin(tokens, "input_layer")
    for i in range(cfg.num_blocks):
        b = f"blocks.{i}"
        shift1, scale1, gate1, shift2, scale2, gate2 = (p[f"{b}.modulation"] + mod).chunk(6)
        x = ln(h, 1e-6) * (1 + scale1) + shift1
        q, k, v = lin(x, f"{b}.self_attn.to_qkv").reshape(-1, 3, heads, d).unbind(1)
        q = rope(rms(q, p[f"{b}.self_attn.q_rms_norm.gamma"]))
        k = rope(rms(k, p[f"{b}.self_attn.k_rms_norm.gamma"]))
        h = h + lin(attend(q, k, v), f"{b}.self_attn.to_out") * gate1
        x = F.layer_norm(h, (c,), p[f"{b}.norm2.weight"], p[f"{b}.norm2.bias"], 1e-6)
        q = rms(lin(x, f"{b}.cross_attn.to_q").reshape(-1, heads, d), p[f"{b}.cross_attn.q_rms_norm.gamma"])
        k, v = lin(cond, f"{b}.cross_attn.to_kv").reshape(-1, 2, heads, d).unbind(1)
        k = rms(k, p[f"{b}.cross_attn.k_rms_norm.gamma"])
        h = h + lin(attend(q, k, v), f"{b}.cross_attn.to_out")
        x = ln(h, 1e-6) * (1 + scale2) + shift2
        mlp = lin(F.gelu(lin(x, f"{b}.mlp.mlp.0"), approximate="tanh"), f"{b}.mlp.mlp.2")
        h = h + mlp * gate2
    return lin(ln(h, 1e-5), "out_layer")


def _state64(model):
    return {k: v.double() for k, v in model.state_dict().items()}


def _grid_positions(r):
    axis = torch.arange(r)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def _inputs(batch, cfg, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = cfg.resolution
    x = torch.randn(batch, cfg.in_channels, r, r, r, generator=gen)
    t = torch.rand(batch, generator=gen) * 1000
    cond = torch.randn(batch, 5, cfg.cond_channels, generator=gen)
    return x, t, cond


@pytest.mark.parametrize("dtype, tolerance", [("float32", 5e-5), ("bfloat16", 5e-2)])
def test_dense_flow_matches_float64_reference(dtype, tolerance):
    cfg = tiny_flow_config(dtype=dtype)
    model = randomize(SparseStructureFlowModel(cfg), seed=1)
    x, t, cond = _inputs(2, cfg, seed=2)
    with torch.no_grad():
        out = model(x, t, cond)
    assert out.shape == x.shape[:1] + (cfg.out_channels,) + x.shape[2:] and out.dtype == torch.float32
    p, positions = _state64(model), _grid_positions(cfg.resolution)
    for b in range(2):
        tokens = x[b].double().reshape(cfg.in_channels, -1).T
        expected = _reference_sample(p, tokens, positions, t[b].double(), cond[b].double(), cfg)
        assert relative_error(out[b].reshape(cfg.out_channels, -1).T, expected) < tolerance


def test_block_dtypes_follow_policy():
    model = SparseStructureFlowModel(tiny_flow_config(dtype="bfloat16"))
    for name, p in model.named_parameters():
        in_block_linear = name.startswith("blocks.") and ("to_" in name or ".mlp.mlp." in name)
        assert p.dtype == (torch.bfloat16 if in_block_linear else torch.float32), name


def test_sparse_flow_matches_reference_per_item_and_ignores_other_items():
    cfg = tiny_flow_config(resolution=8, in_channels=16, out_channels=8)
    model = randomize(SLatFlowModel(cfg), seed=3)
    coords = random_voxels(30, 8, batch=2, seed=4)
    x = sparse_from(coords, 8, seed=5)
    concat = sparse_from(coords, 8, seed=6)
    _, t, cond = _inputs(2, tiny_flow_config(), seed=7)
    with torch.no_grad():
        out = model(x, t, cond, concat_cond=concat)
    assert out.feats.shape == (coords.shape[0], 8) and out.coords is x.coords
    p = _state64(model)
    for b, rows in enumerate(x.layout):
        tokens = torch.cat([x.feats[rows], concat.feats[rows]], 1).double()
        expected = _reference_sample(p, tokens, coords[rows, 1:], t[b].double(), cond[b].double(), cfg)
        assert relative_error(out.feats[rows], expected) < 1e-5
        # the same item alone in a batch gives the same answer: attention never crosses items
        single_coords = coords[rows].clone()
        single_coords[:, 0] = 0
        with torch.no_grad():
            single = model(SparseTensor.from_coords(single_coords, x.feats[rows]), t[b:b + 1], cond[b:b + 1],
                           concat_cond=SparseTensor.from_coords(single_coords, concat.feats[rows]))
        assert relative_error(single.feats, out.feats[rows]) < 1e-6


def test_attention_backends_are_the_models_choice_only_for_inference():
    # The sparse model picks SDPA backends for inference speed; under autograd it must leave the caller's choice
    # alone: activation checkpointing recomputes blocks outside the model's forward (a different backend there
    # saves different tensors and torch.utils.checkpoint raises, as it did on CUDA), and a bit-exact training
    # run may pin the math kernel. A backend CPU lacks makes the caller's choice visible: it must fail under grad.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = tiny_flow_config(resolution=8)
    model = randomize(SLatFlowModel(cfg), seed=3)
    x = sparse_from(random_voxels(20, 8, batch=1, seed=4), 8, seed=5)
    _, t, cond = _inputs(1, tiny_flow_config(), seed=7)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):  # not available for CPU tensors
        with torch.no_grad():
            inference = model(x, t, cond)
        with pytest.raises(RuntimeError, match="(?i)no (available kernel|viable backend)"):
            model(x, t, cond)
    training = model(x, t, cond)
    assert relative_error(training.feats, inference.feats) < 1e-5


def test_sparse_on_full_grid_equals_dense_model():
    cfg = tiny_flow_config()
    dense = randomize(SparseStructureFlowModel(cfg), seed=8)
    sparse = SLatFlowModel(cfg)
    sparse.load_state_dict(dense.state_dict())
    x, t, cond = _inputs(2, cfg, seed=9)
    positions = _grid_positions(cfg.resolution)
    coords = torch.cat([torch.cat([torch.full((len(positions), 1), b), positions], 1) for b in range(2)]).int()
    feats = x.reshape(2, cfg.in_channels, -1).transpose(1, 2).reshape(-1, cfg.in_channels)
    with torch.no_grad():
        expected = dense(x, t, cond).reshape(2, cfg.out_channels, -1).transpose(1, 2).reshape(-1, cfg.out_channels)
        got = sparse(SparseTensor.from_coords(coords, feats), t, cond).feats
    assert relative_error(got, expected) < 1e-6


def test_texture_concat_cond_is_channel_concatenation_and_deterministic():
    cfg = tiny_flow_config(resolution=8, in_channels=12, out_channels=6)
    model = randomize(SLatFlowModel(cfg), seed=10)
    coords = random_voxels(20, 8, seed=11)
    noise, shape_latent = sparse_from(coords, 6, seed=12), sparse_from(coords, 6, seed=13)
    _, t, cond = _inputs(1, tiny_flow_config(), seed=14)
    with torch.no_grad():
        a = model(noise, t, cond, concat_cond=shape_latent).feats
        b = model(noise.replace(torch.cat([noise.feats, shape_latent.feats], 1)), t, cond).feats
        c = model(noise, t, cond, concat_cond=shape_latent).feats
    assert torch.equal(a, b) and torch.equal(a, c)
    other = shape_latent.replace(shape_latent.feats + 1.0)
    with torch.no_grad():
        assert not torch.allclose(model(noise, t, cond, concat_cond=other).feats, a)


def test_flow_input_errors_are_clear():
    cfg = tiny_flow_config()
    dense, sparse = SparseStructureFlowModel(cfg), SLatFlowModel(tiny_flow_config(in_channels=8))
    x, t, cond = _inputs(1, cfg)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 8, 4, 4, 4\)"):
        dense(x[:, :4], t, cond)
    with pytest.raises(ValueError, match=r"t must be a \(1,\) tensor"):
        dense(x, t.repeat(2), cond)
    with pytest.raises(ValueError, match=r"cond must have shape \(1, M, 16\)"):
        dense(x, t, cond[..., :8])
    coords = random_voxels(5, 4)
    with pytest.raises(TypeError, match="x must be a SparseTensor"):
        sparse(torch.zeros(5, 8), t, cond)
    with pytest.raises(ValueError, match=r"must be \(N, 8\)"):
        sparse(sparse_from(coords, 5), t, cond)
    shifted = coords.clone()
    shifted[:, 1] += 1
    with pytest.raises(ValueError, match="same coords"):
        sparse(sparse_from(coords, 4), t, cond, concat_cond=sparse_from(shifted, 4))
    with pytest.raises(ValueError, match="pe_mode"):
        tiny_flow_config(pe_mode="ape")


# ---------------------------------------------------------------------------------- prepared conditions
def _prepared_cases(seed: int):
    """(model, input with 2 samples, input with 4 samples = the 2 twice, read) for the dense and sparse models."""
    gen = torch.Generator().manual_seed(seed)
    dense = randomize(SparseStructureFlowModel(tiny_flow_config()), seed=seed).eval()
    x = torch.randn(2, 8, 4, 4, 4, generator=gen)
    yield dense, x, torch.cat([x, x]), lambda out: out
    sparse = randomize(SLatFlowModel(tiny_flow_config()), seed=seed + 1).eval()
    coords = random_voxels(20, 5, batch=2, seed=seed)
    feats = torch.randn(len(coords), 8, generator=gen)
    doubled = torch.cat([coords, coords + torch.tensor([2, 0, 0, 0], dtype=torch.int32)])
    yield (sparse, SparseTensor.from_coords(coords, feats, 2),
           SparseTensor.from_coords(doubled, torch.cat([feats, feats]), 4), lambda out: out.feats)


def test_prepared_condition_equals_condition_tensors():
    """Prepared keys/values and the zero condition's constant cross-attention give the tensor path's values."""
    seed = int(torch.randint(0, 10_000, ()))
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(2, 5, 16, generator=gen)
    zeros = torch.zeros_like(cond)
    t2, t4 = torch.tensor([700.0, 300.0]), torch.tensor([700.0, 300.0, 700.0, 300.0])
    for model, x, x4, read in _prepared_cases(seed):
        with torch.no_grad():
            cases = [
                (read(model(x, t2, model.prepare_condition(cond))), read(model(x, t2, cond))),
                (read(model(x, t2, model.prepare_condition(None, num_null=2))), read(model(x, t2, zeros))),
                (read(model(x4, t4, model.prepare_condition(cond).with_null(2))),
                 read(model(x4, t4, torch.cat([cond, zeros])))),
            ]
        for got, expected in cases:
            assert expected.abs().max() > 0.1  # informative outputs
            assert relative_error(got, expected) < 1e-5


def test_prepared_condition_is_checked_against_the_call():
    model = SLatFlowModel(tiny_flow_config())
    x = SparseTensor.from_coords(random_voxels(10, 4, batch=2), torch.randn(20, 8), 2)
    prepared = model.prepare_condition(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="prepared condition holds 4 samples"):
        model(x, torch.ones(2), prepared.with_null(2))
    with pytest.raises(ValueError, match="num_null"):
        model.prepare_condition(None, num_null=-1)
    with pytest.raises(ValueError, match="cond must have shape"):
        model.prepare_condition(torch.randn(2, 5, 7))
