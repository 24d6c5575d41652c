"""The flow block's PyTorch path is its kernels' references (`omnivox.models.kernels.reference`): one body runs with
the Triton launchers or with them. Here that body, on the references, is compared with the block written out op by
op from its modules (the PyTorch forward as it stood before the kernels had references): the same bits in
inference, the same gradients in training, and no less accurate 16-bit gradients than before."""

import pytest
import torch
import torch.nn.functional as F

from omnivox.models.flow import BlockCondition, DenseTokens, FlowBlock, SparseTokens
from omnivox.models.kernels import REFERENCE_BLOCK_KERNELS, block_kernels, reference
from omnivox.sparse import SparseTensor
from omnivox.sparse.attention import apply_rope, varlen_attention

from .helpers import relative_error, tiny_flow_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _block_and_inputs(layout: str, dtype: str, seed: int, qk_rms_norm: bool = True):
    """A random block, its tokens and an input: 'dense' (2 samples x 27 tokens) or 'sparse' (items of 23 and 9)."""
    gen = torch.Generator().manual_seed(seed)
    config = tiny_flow_config(dtype="float32" if dtype == "float64" else dtype, num_heads=3,
                              qk_rms_norm=qk_rms_norm, qk_rms_norm_cross=qk_rms_norm)
    block = FlowBlock(config)
    with torch.no_grad():  # never zero: norm weights and gammas near 1, everything else N(0, 0.3)
        for name, p in block.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (name.endswith("gamma") or name == "norm2.weight"))
    if dtype == "float64":
        block = block.double()
    c = config.model_channels
    if layout == "dense":
        axis = torch.arange(3)
        positions = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        tokens = DenseTokens(positions, 2, config.head_dim, config.rope_freq)
        x = torch.randn(2, 27, c, generator=gen)
    else:
        cells = [torch.randperm(125, generator=gen)[:n].sort().values for n in (23, 9)]
        coords = torch.cat([torch.stack([torch.full_like(v, b), v // 25, v // 5 % 5, v % 5], 1)
                            for b, v in enumerate(cells)]).int()
        tokens = SparseTokens(SparseTensor.from_coords(coords, torch.zeros(len(coords), 1), 2), config.head_dim,
                              config.rope_freq)
        x = torch.randn(len(coords), c, generator=gen)
    mod = torch.randn(2, 6 * c, generator=gen) * 0.5
    cond = torch.randn(2, 5, config.cond_channels, generator=gen)
    stream = DTYPES[dtype]
    return block, tokens, x.to(stream), mod.to(block.modulation.dtype), cond.to(stream)


def _keys_op_by_op(block: FlowBlock, cond: torch.Tensor):
    cross = block.cross_attn
    k, v = cross.to_kv(cond).unflatten(-1, (2, cross.num_heads, -1)).unbind(-3)
    return (cross.k_rms_norm(k) if cross.k_rms_norm is not None else k), v


def _block_op_by_op(block: FlowBlock, x, mod, cond, tokens):
    """`FlowBlock.forward` written out with the block's modules on ``(B, L, C)`` / ``(N, C)``: the modulation
    broadcast per sample, RoPE from the tokens' complex phases, attention per layout."""
    dense = isinstance(tokens, DenseTokens)
    m = (block.modulation + mod).to(x.dtype)
    per_sample = (lambda v: v[:, None, :]) if dense else (lambda v: v.index_select(0, tokens.batch_index))
    shift1, scale1, gate1, shift2, scale2, gate2 = (per_sample(part) for part in m.chunk(6, dim=-1))

    def rope(t):  # (..., H, D)
        return apply_rope(t.reshape(-1, *t.shape[-2:]), tokens.phases).view_as(t)

    def attend(q, k, v, query_lens, key_lens):
        if dense:  # equal lengths: q (n, L, H, D), k/v (n, M, H, D)
            return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
        return varlen_attention(q, k, v, query_lens, key_lens)

    attn, cross = block.self_attn, block.cross_attn
    h = block.norm1(x) * (1 + scale1) + shift1
    q, k, v = attn.to_qkv(h).unflatten(-1, (3, attn.num_heads, -1)).unbind(-3)
    if attn.q_rms_norm is not None:
        q, k = attn.q_rms_norm(q), attn.k_rms_norm(k)
    lens = None if dense else tokens.seq_lens
    x = x + attn.to_out(attend(rope(q), rope(k), v, lens, lens).flatten(-2)) * gate1

    if not isinstance(cond, BlockCondition):
        cond = BlockCondition(*_keys_op_by_op(block, cond), None)
    rows = x.reshape(-1, x.shape[-1])
    count, length = cond.keys.shape[:2]
    split = tokens.rows_of_items(count)
    parts = []
    if split:
        q = cross.to_q(block.norm2(rows[:split])).unflatten(-1, (cross.num_heads, -1))
        if cross.q_rms_norm is not None:
            q = cross.q_rms_norm(q)
        if dense:
            out = attend(q.unflatten(0, (count, -1)), cond.keys, cond.values, None, None).flatten(0, 1)
        else:
            out = attend(q, cond.keys.flatten(0, 1), cond.values.flatten(0, 1), tokens.seq_lens[:count],
                         [length] * count)
        parts.append(rows[:split] + cross.to_out(out.flatten(-2)))
    if split < len(rows):
        parts.append(rows[split:] + cond.null_output)
    x = torch.cat(parts).view(x.shape)
    h = block.norm3(x) * (1 + scale2) + shift2
    return x + block.mlp.mlp(h) * gate2


def test_the_cpu_path_is_the_references():
    chosen = block_kernels("auto", torch.device("cpu"))
    assert chosen is REFERENCE_BLOCK_KERNELS and chosen.backend == "torch"
    assert (chosen.layer_norm, chosen.gated_add, chosen.rms_norm_rope) == (
        reference.layer_norm_reference, reference.gated_add_reference, reference.rms_norm_rope_reference)
    with pytest.raises(ValueError, match="backend must be one of"):
        block_kernels("cuda", torch.device("cpu"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("condition", ["tensors", "prepared", "no norms"])
def test_block_on_references_is_the_op_by_op_block_bit_for_bit(dtype, layout, condition):
    seed = int(torch.randint(0, 10_000, ()))
    block, tokens, x, mod, cond = _block_and_inputs(layout, dtype, seed, qk_rms_norm=condition != "no norms")
    with torch.no_grad():
        if condition == "prepared":  # sample 0 attends to prepared keys, sample 1 has the zero condition
            keys, values = _keys_op_by_op(block, cond[:1])
            assert all(torch.equal(a, b) for a, b in zip(block.cross_attn.keys_values(cond[:1]), (keys, values)))
            cond = BlockCondition(keys, values, block.cross_attn.null_output())
        expected = _block_op_by_op(block, x, mod, cond, tokens)
        actual = block(x, mod, cond, tokens)
    assert actual.dtype == x.dtype and actual.shape == x.shape
    assert torch.equal(actual, expected), f"seed {seed}: relative error {relative_error(actual, expected):.2e}"
    assert relative_error(actual, x) > 1e-2  # the block did something


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_gradients_equal_the_op_by_op_block(layout):
    """Training runs the same body (out-of-place where autograd keeps a tensor): float32 gradients of the input,
    the adaLN output and every parameter agree up to summation order."""
    seed = int(torch.randint(0, 10_000, ()))
    block, tokens, x, mod, cond = _block_and_inputs(layout, "float32", seed)
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    grads = []
    for forward in (_block_op_by_op, FlowBlock.forward):
        block.zero_grad()
        xs, ms = x.clone().requires_grad_(), mod.clone().requires_grad_()
        (forward(block, xs, ms, cond, tokens) * weight).sum().backward()
        grads.append({"x": xs.grad, "mod": ms.grad, **{n: p.grad.clone() for n, p in block.named_parameters()}})
    expected, actual = grads
    for name in expected:
        assert relative_error(actual[name], expected[name]) < 1e-5, (seed, name)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_16_bit_modulation_gradients_are_as_accurate_as_the_op_by_op_block(layout):
    """The references sum a bfloat16 modulation table's gradient over the rows in float32, as the op-by-op block's
    broadcast does (16-bit sums doubled the error)."""
    errors = {"op by op": [], "references": []}
    for seed in range(3):
        block, tokens, x, mod, cond = _block_and_inputs(layout, "bfloat16", seed)
        exact_block, *_ = _block_and_inputs(layout, "float64", seed)
        weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        exact_mod = mod.double().requires_grad_()
        (_block_op_by_op(exact_block, x.double(), exact_mod, cond.double(), tokens) * weight).sum().backward()
        for name, forward in (("op by op", _block_op_by_op), ("references", FlowBlock.forward)):
            ms = mod.clone().requires_grad_()
            (forward(block, x, ms, cond, tokens).double() * weight).sum().backward()
            errors[name].append(relative_error(ms.grad, exact_mod.grad))
    ours, before = sum(errors["references"]), sum(errors["op by op"])
    assert 0 < ours < 1.05 * before, errors


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_training_keeps_no_more_activations_than_the_op_by_op_block(layout):
    """The per-sample modulation costs what a broadcast costs: the backward pass keeps the (B, C) table, not an
    (R, C) gathered copy per norm and gate (that copy added about a tenth to a block's saved activations)."""
    block, tokens, x, mod, cond = _block_and_inputs(layout, "bfloat16", seed=0)
    saved_bytes = {}
    for name, forward in (("op by op", _block_op_by_op), ("references", FlowBlock.forward)):
        storages = {}

        def keep(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            forward(block, x.clone().requires_grad_(), mod.clone().requires_grad_(), cond, tokens)
        saved_bytes[name] = sum(storages.values())
    rows_bytes = x.numel() * x.element_size()  # one (R, C) tensor of the stream
    assert saved_bytes["references"] < saved_bytes["op by op"] + rows_bytes, saved_bytes


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_token_chunking_gives_the_unchunked_block(layout):
    seed = int(torch.randint(0, 10_000, ()))
    block, tokens, x, mod, cond = _block_and_inputs(layout, "float32", seed)
    with torch.no_grad():
        whole = block(x, mod, cond, tokens)
        chunked = block(x, mod, cond, tokens, token_chunk=10)
    assert relative_error(chunked, whole) < 1e-6
    xs = x.clone().requires_grad_()  # the chunked feed-forward writes slices of its output: autograd follows
    block(xs, mod, cond, tokens, token_chunk=10).sum().backward()
    assert torch.isfinite(xs.grad).all() and xs.grad.abs().sum() > 0
