"""Flow-matching transformers: the dense sparse-structure DiT and the sparse structured-latent DiT.

All five released flow checkpoints share one architecture (spec models.md 6): a timestep MLP, one
shared adaLN projection plus a learned per-block offset, and 30 blocks of
``self-attention (RMS-normalised q/k, 3-D RoPE) -> cross-attention to image tokens -> MLP``.
The two model classes differ only in how tokens are laid out:

* `SparseStructureFlowModel`: a dense ``(B, 8, 16, 16, 16)`` latent, 4096 tokens per sample.
* `SLatFlowModel`: a `SparseTensor` of active voxels, a variable number of tokens per sample, packed
  row-wise; attention never crosses batch items. The texture variant takes ``in_channels=64``: the
  32-channel noisy latent concatenated with the 32-channel normalised shape latent (``concat_cond``).

Dtype policy (spec models.md 11, ``dtype="bfloat16"`` in the released JSONs): the Linear layers inside
blocks hold ``dtype``; the timestep MLP, the adaLN projection, the per-block ``modulation`` vectors, the
input/output layers, every norm parameter and the RMS gammas stay float32. Norms, RMSNorm and RoPE compute
in float32 and round back; the residual stream is ``dtype``.

Checkpoint keys (640 per model at 30 blocks; the tables of spec 6.9 are reproduced by the tests):
``t_embedder.mlp.{0,2}.*``, ``adaLN_modulation.1.*``, ``input_layer.*``, ``out_layer.*`` and per block
``blocks.{i}.{modulation, norm2.*, self_attn.{to_qkv, q_rms_norm, k_rms_norm, to_out}.*,
cross_attn.{to_q, to_kv, q_rms_norm, k_rms_norm, to_out}.*, mlp.mlp.{0,2}.*}``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from omnivox.models.kernels import REFERENCE_BLOCK_KERNELS, BlockKernels, block_kernels, resolve_backend
from omnivox.models.layers import LayerNorm32, dtype_from_name
from omnivox.sparse.attention import apply_rope, host_seq_lens, rope_3d_phases, varlen_attention
from omnivox.sparse.modules import MultiHeadRMSNorm
from omnivox.sparse.tensor import SparseTensor


@dataclass
class FlowConfig:
    """Constructor arguments of a flow transformer; field names are the checkpoint JSON's ``args`` keys.

    The defaults are the released 1.3B configuration except for ``resolution``/``in_channels``/
    ``out_channels`` (dense SS model: 16/8/8) and ``dtype`` (the released JSONs say ``"bfloat16"``).
    """

    resolution: int = 16
    in_channels: int = 8
    out_channels: int = 8
    model_channels: int = 1536
    cond_channels: int = 1024
    num_blocks: int = 30
    num_heads: Optional[int] = 12
    num_head_channels: int = 64
    mlp_ratio: float = 5.3334
    pe_mode: str = "rope"
    rope_freq: Tuple[float, float] = (1.0, 10000.0)
    dtype: str = "float32"
    share_mod: bool = True
    qk_rms_norm: bool = True
    qk_rms_norm_cross: bool = True
    initialization: str = "scaled"

    def __post_init__(self) -> None:
        if self.num_heads is None:
            self.num_heads = self.model_channels // self.num_head_channels
        if self.model_channels % self.num_heads:
            raise ValueError(f"model_channels={self.model_channels} is not divisible by num_heads={self.num_heads}")
        if self.pe_mode != "rope":
            raise ValueError(f"pe_mode={self.pe_mode!r} is not supported (every released flow model uses 'rope')")
        if not self.share_mod:
            raise ValueError("share_mod=False is not supported (every released flow model shares adaLN)")
        if self.head_dim // 2 // 3 < 1:
            raise ValueError(f"head dim {self.head_dim} is too small for 3-D RoPE (needs at least 6)")
        self.rope_freq = tuple(float(f) for f in self.rope_freq)
        dtype_from_name(self.dtype, "FlowConfig.dtype")

    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        # int(1536 * 5.3334) = 8192: the odd ratio is the reference's way of asking for 8192.
        return int(self.model_channels * self.mlp_ratio)

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)


# ----------------------------------------------------------------------------------------------- pieces
class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of ``1000 * t`` followed by a two-layer MLP, all float32 (spec 6.1).

    Keys: ``mlp.0.weight (C, 256)``, ``mlp.0.bias``, ``mlp.2.weight (C, C)``, ``mlp.2.bias``.
    """

    frequency_dim = 256

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(self.frequency_dim, channels), nn.SiLU(), nn.Linear(channels, channels))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) float32 -> (B, C) float32
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        angles = t.float()[:, None] * freqs[None]
        # The order [cos, sin] is part of the checkpoint's contract (spec 6.1).
        return self.mlp(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1))


# SDPA backends, in order, for the variable-length token sets of the sparse model (see SLatFlowModel.forward):
# short sets, and sets of at least CUDNN_MIN_TOKENS per sample, where cuDNN's per-shape plans cost less than
# flash's slower kernels (the H100 break-even: docs/benchmarks/pipelines.md, "Attention backend by token count").
VARIABLE_LENGTH_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
LONG_SEQUENCE_ATTENTION = [SDPBackend.CUDNN_ATTENTION, *VARIABLE_LENGTH_ATTENTION]
CUDNN_MIN_TOKENS = 6000


# ----------------------------------------------------------------------------------------- token layouts
class DenseTokens:
    """Token layout of the dense model: features ``(B, L, C)``, every sample has the same ``L`` tokens; the blocks
    work on them flattened to rows ``(B * L, C)``.

    Args:
        positions: ``(L, 3)`` integer RoPE positions of the tokens.
        batch_size: ``B``.
    """

    def __init__(self, positions: torch.Tensor, batch_size: int, head_dim: int,
                 rope_freq: Tuple[float, float]) -> None:
        self.phases = rope_3d_phases(positions, head_dim, rope_freq).repeat(batch_size, 1)  # (B*L, D/2)
        self.length = len(positions)
        self._row_tables = None

    def self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # (B * L, H, D) each -> (B * L, H, D)
        q, k, v = (t.unflatten(0, (-1, self.length)) for t in (q, k, v))
        return self._attention(q, k, v).flatten(0, 1)

    def cross_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q (R, H, D): the rows of the first n = len(k) samples; k/v (n, M, H, D) -> (R, H, D)
        return self._attention(q.unflatten(0, (k.shape[0], -1)), k, v).flatten(0, 1)

    @staticmethod
    def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q (B, L, H, D), k/v (B, M, H, D) -> (B, L, H, D)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    def rows_of_items(self, items: int) -> int:
        """Rows (of the flattened ``(B * L, C)`` features) that belong to the first ``items`` samples."""
        return items * self.length

    def row_tables(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row -> sample index, RoPE cos, RoPE sin) of the flattened ``(B * L, C)`` rows, for the block kernels;
        built once per token set."""
        if self._row_tables is None:
            rows = torch.arange(len(self.phases), device=self.phases.device) // self.length
            self._row_tables = (rows, self.phases.real.contiguous(), self.phases.imag.contiguous())
        return self._row_tables


class SparseTokens:
    """Token layout of the sparse model: features ``(N, C)`` packed batch-major, ``B`` variable-length items.

    Self-attention is block-diagonal (each item attends only to its own rows) and cross-attention reaches
    only the item's own condition tokens (spec 6.7), via `omnivox.sparse.attention.varlen_attention`.
    """

    def __init__(self, x: SparseTensor, head_dim: int, rope_freq: Tuple[float, float]) -> None:
        self.phases = rope_3d_phases(x.coords[:, 1:], head_dim, rope_freq)  # (N, D/2)
        self.batch_index = x.batch_index
        # From the coordinate cache: read back from the device once per token set, not in every forward, so a
        # forward issues no host synchronisation (needed for CUDA-graph capture, see `omnivox.pipelines.runtime`).
        self.seq_lens = host_seq_lens(x)
        self._row_tables = None

    def self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # (N, H, D) each -> (N, H, D)
        return varlen_attention(q, k, v, self.seq_lens, self.seq_lens)

    def rows_of_items(self, items: int) -> int:
        """Rows that belong to the first ``items`` samples (rows are batch-major)."""
        return sum(self.seq_lens[:items])

    def cross_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q (R, H, D): the rows of the first n = len(k) samples; k/v (n, M, H, D) -> (R, H, D)
        batch, length = k.shape[:2]
        return varlen_attention(q, k.flatten(0, 1), v.flatten(0, 1), self.seq_lens[:batch], [length] * batch)

    def row_tables(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row -> sample index, RoPE cos, RoPE sin) for the block kernels; built once per token set."""
        if self._row_tables is None:
            self._row_tables = (self.batch_index, self.phases.real.contiguous(), self.phases.imag.contiguous())
        return self._row_tables


# ----------------------------------------------------------------------------------------------- block
def _normalize_rotate(kernels: BlockKernels, x: torch.Tensor, norm: Optional[MultiHeadRMSNorm],
                      cos: Optional[torch.Tensor] = None, sin: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-head RMSNorm of ``x (R, H, D)`` (where the model has one), then RoPE where ``cos``/``sin`` are given."""
    if norm is not None:
        return kernels.rms_norm_rope(x, norm.gamma, cos, sin)
    return x if cos is None else apply_rope(x, torch.complex(cos, sin))


class SelfAttention(nn.Module):
    """Self-attention with per-head RMS-normalised q/k and 3-D RoPE (spec 6.3)."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        c, h, d, dt = cfg.model_channels, cfg.num_heads, cfg.head_dim, cfg.torch_dtype
        self.num_heads = h
        self.to_qkv = nn.Linear(c, 3 * c, dtype=dt)
        self.q_rms_norm = MultiHeadRMSNorm(h, d) if cfg.qk_rms_norm else None
        self.k_rms_norm = MultiHeadRMSNorm(h, d) if cfg.qk_rms_norm else None
        self.to_out = nn.Linear(c, c, dtype=dt)

    def forward(self, x: torch.Tensor, tokens, kernels: BlockKernels = REFERENCE_BLOCK_KERNELS) -> torch.Tensor:
        """Rows ``x (R, C)`` of every token -> ``(R, C)``."""
        _, cos, sin = tokens.row_tables()
        q, k, v = self.to_qkv(x).unflatten(-1, (3, self.num_heads, -1)).unbind(1)  # (R, H, D) each
        q = _normalize_rotate(kernels, q, self.q_rms_norm, cos, sin)
        k = _normalize_rotate(kernels, k, self.k_rms_norm, cos, sin)
        return self.to_out(tokens.self_attention(q, k, v).flatten(-2))


class CrossAttention(nn.Module):
    """Attention from tokens to the image-condition tokens; q/k RMS-normalised, no RoPE (spec 6.3)."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        c, h, d, dt = cfg.model_channels, cfg.num_heads, cfg.head_dim, cfg.torch_dtype
        self.num_heads = h
        self.to_q = nn.Linear(c, c, dtype=dt)
        self.to_kv = nn.Linear(cfg.cond_channels, 2 * c, dtype=dt)
        self.q_rms_norm = MultiHeadRMSNorm(h, d) if cfg.qk_rms_norm_cross else None
        self.k_rms_norm = MultiHeadRMSNorm(h, d) if cfg.qk_rms_norm_cross else None
        self.to_out = nn.Linear(c, c, dtype=dt)

    def forward(self, x: torch.Tensor, cond: "BlockCondition", tokens,
                kernels: BlockKernels = REFERENCE_BLOCK_KERNELS) -> torch.Tensor:
        """Rows ``x (R, C)`` of the samples that attend to ``cond``'s keys and values -> ``(R, C)``."""
        q = _normalize_rotate(kernels, self.to_q(x).unflatten(-1, (self.num_heads, -1)), self.q_rms_norm)
        return self.to_out(tokens.cross_attention(q, cond.keys, cond.values).flatten(-2))

    def keys_values(self, cond: torch.Tensor,
                    kernels: BlockKernels = REFERENCE_BLOCK_KERNELS) -> Tuple[torch.Tensor, torch.Tensor]:
        """``cond (B, M, Cc)`` -> keys (RMS-normalised) and values, ``(B, M, H, D)`` each."""
        k, v = self.to_kv(cond).unflatten(-1, (2, self.num_heads, -1)).unbind(-3)  # k first
        return _normalize_rotate(kernels, k.flatten(0, 1), self.k_rms_norm).view(k.shape), v

    def null_output(self) -> torch.Tensor:
        """``(C,)``: the output at every token for the all-zero condition (the unconditional pass of CFG).

        Zero tokens give every key the same value (the projection's bias), so the softmax is uniform and each
        query receives the value bias; no query, norm or attention is needed.
        """
        c = self.to_out.in_features
        value = self.to_kv.bias[c:] if self.to_kv.bias is not None else self.to_kv.weight.new_zeros(c)
        return self.to_out(value.to(self.to_out.weight.dtype)[None])[0]


class BlockCondition(NamedTuple):
    """One block's share of a `PreparedCondition` (or of condition tensors, then without zero-condition samples):
    keys and values ``(n, M, H, D)`` of the first ``n`` samples; every later sample has the all-zero condition,
    whose cross-attention output is ``null_output (C,)``."""

    keys: torch.Tensor
    values: torch.Tensor
    null_output: Optional[torch.Tensor]


@dataclass
class PreparedCondition:
    """An image condition with each block's cross-attention keys and values computed once (inference).

    A sampler calls the flow 12-25 times with the same condition; preparing it moves the ``to_kv`` projections
    and key norms of all blocks out of those calls. Samples ``0 .. n-1`` use the prepared tokens, the
    ``num_null`` samples after them the all-zero condition of classifier-free guidance's unconditional pass
    (spec 8.3), whose cross-attention is a constant per block (`CrossAttention.null_output`): a batched CFG
    call then skips the query projection, attention and output projection for half of its rows. Make one with
    `_FlowTransformer.prepare_condition` and pass it as ``cond``; results equal passing the condition tensors.
    """

    keys: list                 # per block, (n, M, H, D)
    values: list               # per block, (n, M, H, D)
    null_outputs: list         # per block, (C,)
    num_null: int = 0

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0] + self.num_null

    def with_null(self, num_null: int) -> "PreparedCondition":
        """The same condition followed by ``num_null`` zero-condition samples (shares the tensors)."""
        return PreparedCondition(self.keys, self.values, self.null_outputs, num_null)

    def block(self, index: int) -> BlockCondition:
        return BlockCondition(self.keys[index], self.values[index], self.null_outputs[index])


class FeedForward(nn.Module):
    """``Linear -> GELU(tanh) -> Linear``; keys ``mlp.0.*`` and ``mlp.2.*``."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        dt = cfg.torch_dtype
        self.mlp = nn.Sequential(nn.Linear(cfg.model_channels, cfg.mlp_hidden, dtype=dt),
                                 nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_hidden, cfg.model_channels, dtype=dt))

    def forward(self, x: torch.Tensor, gemm_epilogue: bool = False) -> torch.Tensor:
        """``x (R, C)`` -> ``(R, C)``. ``gemm_epilogue``: on CUDA, run GELU(tanh) as the first GEMM's epilogue
        (cuBLASLt): no separate pass over the ``(R, hidden)`` activations, and one rounding fewer (GELU of the
        float32 accumulator). The CPU version of that op uses the exact GELU instead, so CPU tensors take the
        module whatever the flag."""
        first, activation, last = self.mlp
        if gemm_epilogue and x.is_cuda and hasattr(torch, "_addmm_activation"):  # private op: keep a way out
            return last(torch._addmm_activation(first.bias, x, first.weight.t(), use_gelu=True))
        return last(activation(first(x)))


class FlowBlock(nn.Module):
    """One modulated transformer block (spec 6.3); the residual stream stays in ``cfg.dtype``.

    The block runs on the stream flattened to rows ``(R, C)``. Its norms with their adaLN modulation, the q/k
    RMSNorm with RoPE and the gated residuals go through one set of `omnivox.models.kernels.BlockKernels`: the
    Triton launchers for CUDA inference, their same-signature PyTorch references everywhere else (CPU, autograd,
    token chunking, ``set_fused_kernels(False)``). One body serves both, so they differ only by rounding inside
    the kernels.
    """

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        c = cfg.model_channels
        self.norm1 = LayerNorm32(c, eps=1e-6, affine=False)
        self.self_attn = SelfAttention(cfg)
        self.norm2 = LayerNorm32(c, eps=1e-6, affine=True)  # the only affine norm of a block
        self.cross_attn = CrossAttention(cfg)
        self.norm3 = LayerNorm32(c, eps=1e-6, affine=False)
        self.mlp = FeedForward(cfg)
        # Learned offset added to the shared adaLN output; float32, like the reference.
        self.modulation = nn.Parameter(torch.randn(6 * c, dtype=torch.float32) / c ** 0.5)
        self.fused_kernels = True  # see _FlowTransformer.set_fused_kernels

    def forward(self, x: torch.Tensor, mod: torch.Tensor, cond: torch.Tensor, tokens,
                token_chunk: Optional[int] = None) -> torch.Tensor:
        """One block: ``x (B, L, C)`` or ``(N, C)`` in the stream dtype, ``mod (B, 6C)`` float32 shared adaLN
        output, ``cond`` condition tensors ``(B, M, Cc)`` or a `BlockCondition`. ``token_chunk``: run the
        feed-forward on at most this many rows at a time (see `_FlowTransformer` ``forward``'s ``token_chunk``)."""
        # The sum runs in float32 (the parameter is float32) and is rounded once to the stream dtype.
        m = (self.modulation + mod).to(x.dtype)
        # The chunked (low-memory) mode keeps the PyTorch ops, so its outputs stay those of that path.
        fused = token_chunk is None and self._can_fuse(x)
        return self._forward(x, m, cond, tokens, block_kernels("triton" if fused else "torch", x.device),
                             token_chunk)

    def _can_fuse(self, x: torch.Tensor) -> bool:
        """Whether the Triton launchers may run this call: CUDA inference (they have no backward)."""
        return (self.fused_kernels and not torch.is_grad_enabled()
                and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
                and self.self_attn.q_rms_norm is not None and self.cross_attn.q_rms_norm is not None
                and resolve_backend("auto", x.device) == "triton")

    def forward_fused(self, x: torch.Tensor, m: torch.Tensor, cond: torch.Tensor, tokens) -> torch.Tensor:
        """`forward` through the Triton launchers on any device (no autograd; ``TRITON_INTERPRET=1`` on CPU, as
        the tests run it); ``m`` is the ``(B, 6C)`` modulation table already in ``x.dtype``."""
        return self._forward(x, m, cond, tokens, block_kernels("triton", x.device), None)

    def _forward(self, x: torch.Tensor, m: torch.Tensor, cond: torch.Tensor, tokens, kernels: BlockKernels,
                 token_chunk: Optional[int]) -> torch.Tensor:
        c = x.shape[-1]
        rows = tokens.row_tables()[0]  # row -> sample: the row of the modulation table m each row reads
        flat = x.reshape(-1, c)
        # m's columns: shift, scale, gate of the self-attention, then of the feed-forward (C each).
        h = kernels.layer_norm(flat, self.norm1.eps, table=m, rows=rows, shift_col=0, scale_col=c)
        flat = kernels.gated_add(flat, self.self_attn(h, tokens, kernels), m, rows, 2 * c)

        if not isinstance(cond, BlockCondition):  # condition tensors: their keys and values, for this call
            cond = BlockCondition(*self.cross_attn.keys_values(cond, kernels), None)
        flat = self._add_cross_attention(flat, cond, tokens, kernels)

        gemm_epilogue = kernels.backend == "triton"
        if token_chunk is None or len(flat) <= token_chunk:
            h = kernels.layer_norm(flat, self.norm3.eps, table=m, rows=rows, shift_col=3 * c, scale_col=4 * c)
            return kernels.gated_add(flat, self.mlp(h, gemm_epilogue), m, rows, 5 * c).view(x.shape)
        # Token chunking (inference memory): the feed-forward is per token, so running it on slices of rows
        # bounds its wide (rows, mlp_hidden) temporaries without changing any value.
        out = torch.empty_like(flat)
        for start in range(0, len(flat), token_chunk):
            part = slice(start, start + token_chunk)
            h = kernels.layer_norm(flat[part], self.norm3.eps, table=m, rows=rows[part], shift_col=3 * c,
                                   scale_col=4 * c)
            out[part] = kernels.gated_add(flat[part], self.mlp(h, gemm_epilogue), m, rows[part], 5 * c)
        return out.view(x.shape)

    def _add_cross_attention(self, flat: torch.Tensor, cond: BlockCondition, tokens,
                             kernels: BlockKernels) -> torch.Tensor:
        """``flat (R, C)`` plus the cross-attention output: the rows of ``cond``'s first samples attend to its keys,
        the later (zero-condition) rows get its constant ``null_output``."""
        split = tokens.rows_of_items(cond.keys.shape[0])
        attended = None
        if split:
            h = kernels.layer_norm(flat[:split], self.norm2.eps, weight=self.norm2.weight, bias=self.norm2.bias)
            attended = self.cross_attn(h, cond, tokens, kernels)
        if flat.requires_grad:  # autograd keeps flat[:split] for the norm's backward: add out of place
            parts = [flat[:split] + attended] if split else []
            if split < len(flat):
                parts.append(flat[split:] + cond.null_output)
            return torch.cat(parts) if len(parts) > 1 else parts[0]
        # Inference: in place (flat is this block's own tensor, from gated_add), no copy of the stream.
        if split < len(flat):
            flat[split:] += cond.null_output
        if split:
            flat[:split] += attended
        return flat


# ---------------------------------------------------------------------------------------------- models
class _FlowTransformer(nn.Module):
    """Parameters and the token-independent parts shared by the dense and the sparse model."""

    config_class = FlowConfig

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        c = config.model_channels
        self.t_embedder = TimestepEmbedder(c)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))
        self.input_layer = nn.Linear(config.in_channels, c)
        self.blocks = nn.ModuleList(FlowBlock(config) for _ in range(config.num_blocks))
        self.out_layer = nn.Linear(c, config.out_channels)
        self._token_chunk: Optional[int] = None  # only the deprecated set_token_chunking changes it
        self.initialize_weights()  # a no-op cost on the meta device, where the loader builds models

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    def initialize_weights(self) -> None:
        """The reference's "scaled" initialisation (spec 6.8); loading a checkpoint overwrites it."""
        c, n = self.config.model_channels, self.config.num_blocks
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=math.sqrt(2.0 / (5.0 * c)))
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for out in (block.self_attn.to_out, block.cross_attn.to_out, block.mlp.mlp[2]):
                nn.init.normal_(out.weight, std=1.0 / math.sqrt(5.0 * n * c))
        nn.init.normal_(self.input_layer.weight, std=1.0 / math.sqrt(self.config.in_channels))
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(linear.weight, std=0.02)
        # Zero adaLN projection and output layer: a fresh model predicts zero velocity.
        for linear in (self.adaLN_modulation[1], self.out_layer):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def set_token_chunking(self, rows: Optional[int]) -> None:
        """Deprecated (kept for one release): pass ``token_chunk=`` to the call. Sets the default of later calls."""
        import warnings

        warnings.warn("set_token_chunking is deprecated; pass token_chunk= to the flow model's call",
                      DeprecationWarning, stacklevel=2)
        self._token_chunk = _check_token_chunk(rows)

    def set_fused_kernels(self, enabled: bool) -> None:
        """Use the Triton block kernels for CUDA inference (default on; see `FlowBlock`).

        Without autograd on a CUDA device with Triton, each block then runs its norms, modulation, q/k RMSNorm,
        RoPE and gated residuals as 9 fused kernels instead of several dozen small ones. Off: always their PyTorch
        references (`omnivox.models.kernels.reference`).
        """
        if not isinstance(enabled, bool):
            raise ValueError(f"enabled must be True or False, got {enabled!r}")
        for block in self.blocks:
            block.fused_kernels = enabled

    @torch.no_grad()
    def prepare_condition(self, cond: Optional[torch.Tensor], num_null: int = 0) -> PreparedCondition:
        """Each block's cross-attention keys and values for ``cond (B, M, cond_channels)`` (None: no samples),
        followed by ``num_null`` samples with the all-zero condition; pass the result as ``cond`` to `forward`
        (see `PreparedCondition`). Inference only: no gradients flow through it."""
        if cond is not None:
            self._check_condition_tensor(cond, None)
        if not isinstance(num_null, int) or num_null < 0:
            raise ValueError(f"num_null must be a non-negative int, got {num_null!r}")
        keys, values, nulls = [], [], []
        dtype = self.config.torch_dtype
        for block in self.blocks:
            attn = block.cross_attn
            if cond is not None:
                k, v = attn.keys_values(cond.to(dtype))
            else:
                k = v = attn.to_q.weight.new_zeros(0, 1, attn.num_heads, self.config.head_dim)
            keys.append(k)
            values.append(v)
            nulls.append(attn.null_output())
        return PreparedCondition(keys, values, nulls, num_null)

    def _check_inputs(self, batch: int, t: torch.Tensor, cond: Union[torch.Tensor, PreparedCondition]) -> None:
        if not isinstance(t, torch.Tensor) or t.shape != (batch,):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be a ({batch},) tensor of 1000*t values, got {got}")
        if not isinstance(cond, PreparedCondition):
            self._check_condition_tensor(cond, batch)
        elif cond.batch_size != batch or len(cond.keys) != len(self.blocks):
            raise ValueError(f"the prepared condition holds {cond.batch_size} samples for {len(cond.keys)} "
                             f"blocks; this call has {batch} samples and the model {len(self.blocks)} blocks")

    def _check_condition_tensor(self, cond: torch.Tensor, batch: Optional[int]) -> None:
        """``cond`` must be ``(batch, M, cond_channels)`` (any batch when None)."""
        cc = self.config.cond_channels
        if (not isinstance(cond, torch.Tensor) or cond.dim() != 3 or cond.shape[2] != cc
                or (batch is not None and cond.shape[0] != batch)):
            got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ValueError(f"cond must have shape ({'B' if batch is None else batch}, M, {cc}), got {got}")

    def _run_blocks(self, h: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, tokens,
                    token_chunk: Optional[int]) -> torch.Tensor:
        """``h`` float32 tokens after the input layer -> float32 output-layer values.

        ``token_chunk``: run each block's feed-forward on at most this many tokens at a time (None: all at once).
        An inference memory option chosen by the pipelines' memory planner: the ``(T, mlp_hidden)`` temporaries
        are the largest per-token tensors of a block (attention goes through memory-efficient SDPA kernels,
        whose memory is already linear in T). Outputs are identical up to GEMM blocking.
        """
        token_chunk = self._token_chunk if token_chunk is None else _check_token_chunk(token_chunk)
        dtype = self.config.torch_dtype
        mod = self.adaLN_modulation(self.t_embedder(t)).to(dtype)
        h = h.to(dtype)
        if isinstance(cond, PreparedCondition):
            for index, block in enumerate(self.blocks):
                h = block(h, mod, cond.block(index), tokens, token_chunk)
        else:
            cond = cond.to(dtype)
            for block in self.blocks:
                h = block(h, mod, cond, tokens, token_chunk)
        h = F.layer_norm(h.float(), h.shape[-1:], eps=1e-5)
        return self.out_layer(h)


def _check_token_chunk(rows) -> Optional[int]:
    if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 1):
        raise ValueError(f"token_chunk must be a positive int or None (rows per feed-forward call), got {rows!r}")
    return rows


class SparseStructureFlowModel(_FlowTransformer):
    """Dense DiT over the ``16^3`` sparse-structure latent (checkpoint ``ss_flow_img_dit_1_3B_64_bf16``).

    Token ``n`` is grid position ``(X, Y, Z)`` with ``n = X*R*R + Y*R + Z`` (dims 2, 3, 4 of the input),
    which is also its RoPE position. The reference registers the RoPE table as a buffer
    ``rope_phases`` absent from the released file; here it is recomputed each call and never loaded.
    """

    ignored_checkpoint_keys = ("rope_phases",)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                token_chunk: Optional[int] = None) -> torch.Tensor:
        """Predict the flow velocity.

        Args:
            x: ``(B, in_channels, R, R, R)`` float noisy latent, ``R = config.resolution``.
            t: ``(B,)`` float timesteps already multiplied by 1000.
            cond: ``(B, M, cond_channels)`` image tokens (M = 1029 for DINOv3 at 512 px).
            token_chunk: feed-forward on at most this many tokens at a time (memory; same values).

        Returns:
            ``(B, out_channels, R, R, R) float32``.
        """
        r, cin = self.config.resolution, self.config.in_channels
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1:] != (cin, r, r, r):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {cin}, {r}, {r}, {r}), got {got}")
        batch = x.shape[0]
        self._check_inputs(batch, t, cond)
        axis = torch.arange(r, device=x.device)
        positions = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        tokens = DenseTokens(positions, batch, self.config.head_dim, self.config.rope_freq)
        h = self.input_layer(x.float().reshape(batch, cin, -1).transpose(1, 2))
        h = self._run_blocks(h, t, cond, tokens, token_chunk)
        return h.transpose(1, 2).reshape(batch, self.config.out_channels, r, r, r)


class SLatFlowModel(_FlowTransformer):
    """Sparse DiT over structured latents (shape: ``in_channels=32``; texture: ``in_channels=64``).

    The texture model sees ``[x_t (in_channels - 32) | normalised shape latent (32)]`` per voxel: pass the
    shape latent as ``concat_cond`` on the same coordinates and row order as ``x``.
    """

    ignored_checkpoint_keys = ()

    def forward(self, x: SparseTensor, t: torch.Tensor, cond: torch.Tensor,
                concat_cond: Optional[SparseTensor] = None, token_chunk: Optional[int] = None) -> SparseTensor:
        """Predict the flow velocity on the active voxels of ``x``.

        Args:
            x: `SparseTensor` with ``(N, C_x)`` float features, ``C_x = in_channels`` or, with
                ``concat_cond``, ``in_channels - concat_cond channels``.
            t: ``(B,)`` float timesteps already multiplied by 1000.
            cond: ``(B, M, cond_channels)`` image tokens.
            concat_cond: optional `SparseTensor` with the same coords (same rows, same order) as ``x``.
            token_chunk: feed-forward on at most this many tokens at a time (memory; same values).

        Returns:
            `SparseTensor` on ``x``'s coordinates with ``(N, out_channels) float32`` features.
        """
        if not isinstance(x, SparseTensor):
            raise TypeError(f"x must be a SparseTensor, got {type(x).__name__}")
        feats = x.feats
        if concat_cond is not None:
            if not isinstance(concat_cond, SparseTensor):
                raise TypeError(f"concat_cond must be a SparseTensor, got {type(concat_cond).__name__}")
            if concat_cond.coords is not x.coords and not torch.equal(concat_cond.coords, x.coords):
                raise ValueError("concat_cond must have the same coords, in the same row order, as x")
            feats = torch.cat([feats, concat_cond.feats.to(feats.dtype)], dim=1)
        if feats.dim() != 2 or feats.shape[1] != self.config.in_channels:
            raise ValueError(f"x features (with concat_cond) must be (N, {self.config.in_channels}), "
                             f"got {tuple(feats.shape)}")
        self._check_inputs(x.batch_size, t, cond)
        tokens = SparseTokens(x, self.config.head_dim, self.config.rope_freq)
        # Token counts change with every generated shape. cuDNN attention, SDPA's first choice on Hopper, builds
        # a plan per sequence length (100-150 ms each on an H100); flash attention needs none but its kernels are
        # slower. Attention grows with the square of the count, so below CUDNN_MIN_TOKENS per sample (the 512
        # stages) flash costs less per run, above it (the 1024 and 1536 stages) the plans do (measured:
        # docs/benchmarks/pipelines.md). Inference only: under autograd the caller's SDPA settings hold, because
        # activation checkpointing recomputes a block outside this forward, where a different backend would save
        # different tensors (torch.utils.checkpoint raises), and a training run may ask for deterministic kernels.
        backends = None
        if not torch.is_grad_enabled():
            longest = max(tokens.seq_lens, default=0)
            backends = VARIABLE_LENGTH_ATTENTION if longest < CUDNN_MIN_TOKENS else LONG_SEQUENCE_ATTENTION
        with sdpa_kernel(backends, set_priority=True) if backends else contextlib.nullcontext():
            h = self._run_blocks(self.input_layer(feats.float()), t, cond, tokens, token_chunk)
        return x.replace(h)
