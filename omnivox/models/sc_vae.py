"""Sparse compression VAEs (SC-VAE): O-Voxel features <-> 32-channel structured latents, 16x downsampling.

Both released SC-VAE pairs share one U-Net-like design (spec models.md 3-4):

* encoder: ``input_layer`` (Linear in -> 64) then five stages at channels 64, 128, 256, 512, 1024; each stage
  is a run of `ConvNeXtBlock` followed (stages 0-3) by a `DownsampleBlock` (space-to-channel 2x), then a
  non-affine LayerNorm and ``to_latent`` (Linear 1024 -> 2 * 32: mean and log-variance);
* decoder: ``from_latent`` (Linear 32 -> 1024), stages at 1024, 512, 256, 128, 64 whose last block is an
  `UpsampleBlock` (channel-to-space 2x), then a non-affine LayerNorm and ``output_layer``.

An upsampling step must choose which of the 8 children of each voxel exist. Three sources are possible:

1. the decoder predicts them (``pred_subdiv``, the shape decoder): logits ``to_subdiv(x) > 0``;
2. another decoder's predictions guide it (image-to-3D: the texture decoder follows the shape decoder);
3. the encoder's own downsampling maps are inverted (texturing an existing mesh, spec 9.6), which
   reproduces the encoder's voxel sets exactly, ending on the input voxels in their input row order.

The reference finds (3) through a hidden cache shared between tensors; here the encoder returns its
`DownsampleMap`s and the caller passes them to the decoder explicitly.

Classes: `SparseUnetVaeEncoder` / `SparseUnetVaeDecoder` (material, 6 PBR channels) and
`FlexiDualGridVaeEncoder` / `FlexiDualGridVaeDecoder` (shape: dual vertices, edge flags, split weights).

Dtype policy with ``use_fp16`` (spec 3.4): convolutions and Linears inside ``blocks`` are float16, every
LayerNorm parameter and the four top-level Linears are float32; the residual stream is float16 and norms
compute in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from omnivox.models.layers import LayerNorm32
from omnivox.models.sc_vae_chunks import check_chunk_voxels, decode_tail_in_chunks
from omnivox.sparse.functional import (channel_to_space, invert_space_to_channel, space_to_channel,
                                       submanifold_conv3d)
from omnivox.sparse.maps import DownsampleMap
from omnivox.sparse.tensor import SparseTensor

ENCODER_CHANNELS = (64, 128, 256, 512, 1024)
ENCODER_BLOCKS = (0, 4, 8, 16, 4)
# The only block types of the released configs; the JSONs name them, and any other name is rejected.
CONVNEXT = "SparseConvNeXtBlock3d"
DOWN_BLOCK = "SparseResBlockS2C3d"
UP_BLOCK = "SparseResBlockC2S3d"


def _check_block_types(types: Optional[Sequence[str]], expected: str, count: int, argument: str) -> Tuple[str, ...]:
    types = (expected,) * count if types is None else tuple(types)
    if len(types) != count or any(t != expected for t in types):
        raise ValueError(f"{argument} must be {count} x {expected!r} (the released configuration), got {types}")
    return types


@dataclass
class VaeEncoderConfig:
    """Constructor arguments of the SC-VAE encoders (checkpoint JSON ``args``; defaults = released)."""

    in_channels: int = 6
    model_channels: Tuple[int, ...] = ENCODER_CHANNELS
    latent_channels: int = 32
    num_blocks: Tuple[int, ...] = ENCODER_BLOCKS
    block_type: Optional[Tuple[str, ...]] = None  # None: the released type at every stage
    down_block_type: Optional[Tuple[str, ...]] = None
    use_fp16: bool = True

    def __post_init__(self) -> None:
        self.model_channels, self.num_blocks = tuple(self.model_channels), tuple(self.num_blocks)
        stages = len(self.model_channels)
        if len(self.num_blocks) != stages:
            raise ValueError(f"num_blocks needs {stages} entries (one per stage), got {self.num_blocks}")
        self.block_type = _check_block_types(self.block_type, CONVNEXT, stages, "block_type")
        self.down_block_type = _check_block_types(self.down_block_type, DOWN_BLOCK, stages - 1, "down_block_type")


@dataclass
class VaeDecoderConfig:
    """Constructor arguments of the SC-VAE decoders (checkpoint JSON ``args``; defaults = texture decoder).

    ``resolution`` and ``voxel_margin`` matter only to the shape decoder's output head.
    """

    out_channels: int = 6
    model_channels: Tuple[int, ...] = ENCODER_CHANNELS[::-1]
    latent_channels: int = 32
    num_blocks: Tuple[int, ...] = ENCODER_BLOCKS[::-1]
    block_type: Optional[Tuple[str, ...]] = None  # None: the released type at every stage
    up_block_type: Optional[Tuple[str, ...]] = None
    use_fp16: bool = True
    pred_subdiv: bool = False
    resolution: Optional[int] = None
    voxel_margin: float = 0.5

    def __post_init__(self) -> None:
        self.model_channels, self.num_blocks = tuple(self.model_channels), tuple(self.num_blocks)
        stages = len(self.model_channels)
        if len(self.num_blocks) != stages:
            raise ValueError(f"num_blocks needs {stages} entries (one per stage), got {self.num_blocks}")
        self.block_type = _check_block_types(self.block_type, CONVNEXT, stages, "block_type")
        self.up_block_type = _check_block_types(self.up_block_type, UP_BLOCK, stages - 1, "up_block_type")


@dataclass
class FlexiDualGridDecoderConfig(VaeDecoderConfig):
    """The shape decoder: 7 output channels and predicted subdivisions are fixed by the architecture."""

    out_channels: int = 7
    pred_subdiv: bool = True
    resolution: Optional[int] = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.out_channels != 7 or not self.pred_subdiv:
            raise ValueError("FlexiDualGridVaeDecoder has out_channels=7 and pred_subdiv=True, got "
                             f"out_channels={self.out_channels}, pred_subdiv={self.pred_subdiv}")


# ---------------------------------------------------------------------------------------------- layers
def _rowwise(fn: Callable[[torch.Tensor], torch.Tensor], feats: torch.Tensor, chunk_rows: Optional[int]):
    """Apply a per-row function to ``feats (N, C)``, at most ``chunk_rows`` rows at a time.

    Bounding the rows bounds the wide temporaries (the 4C ConvNeXt MLP hidden layer, float32 norm copies).
    Results equal the unchunked ones up to GEMM rounding (a GEMM may pick another kernel for another row count).
    """
    if chunk_rows is None or feats.shape[0] <= chunk_rows:
        return fn(feats)
    return torch.cat([fn(part) for part in feats.split(chunk_rows)])


class SparseConv3d(nn.Module):
    """Submanifold 3x3x3 convolution; keys ``weight (Co, 3, 3, 3, Ci)`` and ``bias (Co,)`` (spec 2.1)."""

    def __init__(self, in_channels: int, out_channels: int, dtype: torch.dtype) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(27 * in_channels)
        self.weight = nn.Parameter(torch.empty(out_channels, 3, 3, 3, in_channels, dtype=dtype).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels, dtype=dtype).uniform_(-bound, bound))

    def forward(self, x: SparseTensor) -> SparseTensor:
        return submanifold_conv3d(x, self.weight, self.bias)


class ConvNeXtBlock(nn.Module):
    """``x + mlp(norm(conv(x)))`` with a 4x SiLU MLP; no activation before the norm, no layer scale."""

    def __init__(self, channels: int, dtype: torch.dtype, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.conv = SparseConv3d(channels, channels, dtype)
        self.norm = LayerNorm32(channels, eps=1e-6, affine=True)
        self.mlp = nn.Sequential(nn.Linear(channels, mlp_ratio * channels, dtype=dtype), nn.SiLU(),
                                 nn.Linear(mlp_ratio * channels, channels, dtype=dtype))

    def forward(self, x: SparseTensor, chunk_rows: Optional[int] = None) -> SparseTensor:
        h = self.conv(x).feats
        return x.replace(x.feats + _rowwise(lambda f: self.mlp(self.norm(f)), h, chunk_rows))


class DownsampleBlock(nn.Module):
    """Residual space-to-channel 2x block, ``Cin -> Cout = 2 Cin`` (reference ``SparseResBlockS2C3d``).

    Main path: ``conv1`` at the fine level to ``Cout / 8`` channels, space-to-channel (8 slots -> ``Cout``),
    non-affine norm, ``conv2``. Skip: the input moved to channels (``8 Cin``), then the mean of each run of
    ``8 Cin / Cout`` consecutive channels; each run lies inside one child slot.
    """

    def __init__(self, in_channels: int, out_channels: int, dtype: torch.dtype) -> None:
        super().__init__()
        if out_channels % 8 or (8 * in_channels) % out_channels:
            raise ValueError(f"DownsampleBlock needs Cout divisible by 8 and dividing 8*Cin, got {in_channels}->"
                             f"{out_channels}")
        self.norm1 = LayerNorm32(in_channels, eps=1e-6, affine=True)
        self.conv1 = SparseConv3d(in_channels, out_channels // 8, dtype)
        self.norm2 = LayerNorm32(out_channels, eps=1e-6, affine=False)
        self.conv2 = SparseConv3d(out_channels, out_channels, dtype)
        self.out_channels = out_channels

    def forward(self, x: SparseTensor, chunk_rows: Optional[int] = None) -> Tuple[SparseTensor, DownsampleMap]:
        h = self.conv1(x.replace(_rowwise(lambda f: F.silu(self.norm1(f)), x.feats, chunk_rows)))
        h, down_map = space_to_channel(h)
        moved, _ = space_to_channel(x)  # same coordinates, hence the same map
        h = self.conv2(h.replace(_rowwise(lambda f: F.silu(self.norm2(f)), h.feats, chunk_rows)))
        skip = moved.feats.reshape(moved.num_voxels, self.out_channels, -1).mean(-1)
        return h.replace(h.feats + skip), down_map


class UpsampleBlock(nn.Module):
    """Residual channel-to-space 2x block, ``Cin -> Cout = Cin / 2`` (reference ``SparseResBlockC2S3d``).

    Main path: ``conv1`` at the coarse level to ``8 Cout`` channels (child slot ``k`` = channels
    ``k Cout:(k+1) Cout``), channel-to-space, non-affine norm, ``conv2``. Skip: the input split into 8 slots of
    ``Cin / 8`` channels, each channel repeated ``8 Cout / Cin`` times. With ``pred_subdiv`` the block also
    predicts its subdivision logits ``to_subdiv(x)`` from its raw input.
    """

    def __init__(self, in_channels: int, out_channels: int, dtype: torch.dtype, pred_subdiv: bool) -> None:
        super().__init__()
        if in_channels % 8 or (8 * out_channels) % in_channels:
            raise ValueError(f"UpsampleBlock needs Cin divisible by 8 and dividing 8*Cout, got {in_channels}->"
                             f"{out_channels}")
        self.norm1 = LayerNorm32(in_channels, eps=1e-6, affine=True)
        self.conv1 = SparseConv3d(in_channels, 8 * out_channels, dtype)
        self.norm2 = LayerNorm32(out_channels, eps=1e-6, affine=False)
        self.conv2 = SparseConv3d(out_channels, out_channels, dtype)
        self.to_subdiv = nn.Linear(in_channels, 8, dtype=dtype) if pred_subdiv else None
        self.repeats = 8 * out_channels // in_channels

    def forward(self, x: SparseTensor, subdivision: Optional[torch.Tensor] = None,
                downsample_map: Optional[DownsampleMap] = None, chunk_rows: Optional[int] = None) -> SparseTensor:
        """Upsample with a ``(N, 8) bool`` subdivision mask, or by inverting ``downsample_map``."""
        h = self.conv1(x.replace(_rowwise(lambda f: F.silu(self.norm1(f)), x.feats, chunk_rows)))
        if downsample_map is not None:
            h, moved = invert_space_to_channel(h, downsample_map), invert_space_to_channel(x, downsample_map)
        else:
            h, moved = channel_to_space(h, subdivision), channel_to_space(x, subdivision)
        h = self.conv2(h.replace(_rowwise(lambda f: F.silu(self.norm2(f)), h.feats, chunk_rows)))
        return h.replace(h.feats + moved.feats.repeat_interleave(self.repeats, dim=1))


def _blocks_dtype(use_fp16: bool) -> torch.dtype:
    return torch.float16 if use_fp16 else torch.float32


def _run_block(block: nn.Module, h: SparseTensor, chunk_rows: Optional[int], checkpoint: bool) -> SparseTensor:
    """One ConvNeXt block; with ``checkpoint`` (and autograd on) its activations are recomputed in backward.

    Non-reentrant checkpoint: the block re-runs in backward on the same coords (and neighbour map cache).
    """
    if not checkpoint or not torch.is_grad_enabled():
        return block(h, chunk_rows)
    return h.replace(activation_checkpoint(lambda f: block(h.replace(f), chunk_rows).feats, h.feats,
                                           use_reentrant=False))


# --------------------------------------------------------------------------------------------- encoders
@dataclass
class EncoderOutput:
    """What an SC-VAE encoder returns.

    Attributes:
        mean: `SparseTensor` ``(N', latent_channels) float32`` on the latent grid (scale 16), rows sorted by
            ``(b, x, y, z)``. This is the latent used at inference.
        logvar: ``(N', latent_channels) float32`` log-variance of the posterior, same rows.
        downsample_maps: the four space-to-channel maps, finest first; pass them to a decoder to
            upsample back onto exactly the encoder's voxels (spec 9.6).
    """

    mean: SparseTensor
    logvar: torch.Tensor
    downsample_maps: Tuple[DownsampleMap, ...] = field(default_factory=tuple)

    def sample(self, generator: Optional[torch.Generator] = None) -> SparseTensor:
        """A posterior sample ``mean + exp(logvar / 2) * noise`` (training)."""
        noise = torch.randn(self.logvar.shape, generator=generator, device="cpu").to(self.logvar.device)
        return self.mean.replace(self.mean.feats + torch.exp(0.5 * self.logvar) * noise)


class SparseUnetVaeEncoder(nn.Module):
    """SC-VAE encoder of per-voxel features (material: 6 PBR channels, each ``uint8 / 255 * 2 - 1``)."""

    config_class = VaeEncoderConfig

    def __init__(self, config: VaeEncoderConfig) -> None:
        super().__init__()
        self.config = config
        dtype, ch = _blocks_dtype(config.use_fp16), config.model_channels
        self.input_layer = nn.Linear(config.in_channels, ch[0])
        self.blocks = nn.ModuleList()
        for s, c in enumerate(ch):
            stage = [ConvNeXtBlock(c, dtype) for _ in range(config.num_blocks[s])]
            if s + 1 < len(ch):
                stage.append(DownsampleBlock(c, ch[s + 1], dtype))
            self.blocks.append(nn.ModuleList(stage))
        self.to_latent = nn.Linear(ch[-1], 2 * config.latent_channels)

    def forward(self, x: SparseTensor, chunk_rows: Optional[int] = None, checkpoint: bool = False) -> EncoderOutput:
        """Encode.

        Args:
            x: `SparseTensor` with ``(N, in_channels)`` float features at the O-Voxel resolution.
            chunk_rows: if set, run per-voxel work (norms, MLPs) at most this many rows at a time (lower
                peak memory).
            checkpoint: activation checkpointing (training): recompute every ConvNeXt block in backward instead
                of storing its activations. No effect without autograd.

        Returns:
            `EncoderOutput` (latent mean, log-variance, downsampling maps).
        """
        if not isinstance(x, SparseTensor):
            raise TypeError(f"x must be a SparseTensor, got {type(x).__name__}")
        if x.feats.dim() != 2 or x.feats.shape[1] != self.config.in_channels:
            raise ValueError(f"x.feats must be (N, {self.config.in_channels}), got {tuple(x.feats.shape)}")
        h = x.replace(self.input_layer(x.feats.float()).to(_blocks_dtype(self.config.use_fp16)))
        maps = []
        for stage in self.blocks:
            for block in stage:
                if isinstance(block, DownsampleBlock):
                    h, down_map = block(h, chunk_rows)
                    maps.append(down_map)
                else:
                    h = _run_block(block, h, chunk_rows, checkpoint)
        feats = F.layer_norm(h.feats.float(), h.feats.shape[-1:], eps=1e-5)
        mean, logvar = self.to_latent(feats).chunk(2, dim=-1)
        return EncoderOutput(mean=h.replace(mean), logvar=logvar, downsample_maps=tuple(maps))


class FlexiDualGridVaeEncoder(SparseUnetVaeEncoder):
    """Shape SC-VAE encoder: inputs are the O-Voxel dual vertices and edge-intersection flags.

    Features are ``[vertices - 0.5, intersected - 0.5]`` (6 channels, spec 4.2).
    """

    def __init__(self, config: VaeEncoderConfig) -> None:
        if config.in_channels != 6:
            raise ValueError(f"FlexiDualGridVaeEncoder has in_channels=6, got {config.in_channels}")
        super().__init__(config)

    def forward(self, vertices: SparseTensor, intersected: SparseTensor,
                chunk_rows: Optional[int] = None, checkpoint: bool = False) -> EncoderOutput:
        """Encode a flexible dual grid.

        Args:
            vertices: ``(N, 3)`` float dual-vertex position inside its voxel, in voxel units (nominally [0, 1]).
            intersected: ``(N, 3) bool`` on the same coords: the voxel's x/y/z edge crosses the surface.
            chunk_rows, checkpoint: see `SparseUnetVaeEncoder.forward`.
        """
        for name, t, dtype_ok in (("vertices", vertices, lambda d: d.is_floating_point),
                                  ("intersected", intersected, lambda d: d == torch.bool)):
            if not isinstance(t, SparseTensor):
                raise TypeError(f"{name} must be a SparseTensor, got {type(t).__name__}")
            if t.feats.dim() != 2 or t.feats.shape[1] != 3 or not dtype_ok(t.feats.dtype):
                raise ValueError(f"{name}.feats must be (N, 3) {'float' if name == 'vertices' else 'bool'}, "
                                 f"got {tuple(t.feats.shape)} {t.feats.dtype}")
        if intersected.coords is not vertices.coords and not torch.equal(intersected.coords, vertices.coords):
            raise ValueError("vertices and intersected must have the same coords in the same row order")
        feats = torch.cat([vertices.feats.float() - 0.5, intersected.feats.float() - 0.5], dim=1)
        return super().forward(vertices.replace(feats), chunk_rows, checkpoint)


# --------------------------------------------------------------------------------------------- decoders
@dataclass
class DecoderOutput:
    """What `SparseUnetVaeDecoder` returns.

    Attributes:
        voxels: `SparseTensor` ``(M, out_channels) float32`` at full resolution (raw output; the material
            decoder's PBR values are ``voxels * 0.5 + 0.5``).
        subdivision_logits: with ``pred_subdiv``, the four ``(N_s, 8)`` logit tensors (coarsest first) on
            the coordinates they subdivided; pass them as ``guide_subdivisions`` to another decoder.
            Empty otherwise.
    """

    voxels: SparseTensor
    subdivision_logits: Tuple[SparseTensor, ...] = ()


class SparseUnetVaeDecoder(nn.Module):
    """SC-VAE decoder (material: 6 PBR channels, ``pred_subdiv=False``)."""

    config_class = VaeDecoderConfig

    def __init__(self, config: VaeDecoderConfig) -> None:
        super().__init__()
        self.config = config
        dtype, ch = _blocks_dtype(config.use_fp16), config.model_channels
        self.from_latent = nn.Linear(config.latent_channels, ch[0])
        self.blocks = nn.ModuleList()
        for s, c in enumerate(ch):
            stage = [ConvNeXtBlock(c, dtype) for _ in range(config.num_blocks[s])]
            if s + 1 < len(ch):
                stage.append(UpsampleBlock(c, ch[s + 1], dtype, config.pred_subdiv))
            self.blocks.append(nn.ModuleList(stage))
        self.output_layer = nn.Linear(ch[-1], config.out_channels)

    @property
    def num_upsamplings(self) -> int:
        return len(self.config.model_channels) - 1

    def _check_latent(self, z: SparseTensor) -> None:
        if not isinstance(z, SparseTensor):
            raise TypeError(f"z must be a SparseTensor, got {type(z).__name__}")
        if z.feats.dim() != 2 or z.feats.shape[1] != self.config.latent_channels:
            raise ValueError(f"z.feats must be (N, {self.config.latent_channels}), got {tuple(z.feats.shape)}")

    def _guides(self, guide_subdivisions, downsample_maps) -> list:
        """One guide per upsampling step: None (predict), a ``(N, 8)`` logits SparseTensor, or a map."""
        n = self.num_upsamplings
        if guide_subdivisions is not None and downsample_maps is not None:
            raise ValueError("pass guide_subdivisions or downsample_maps, not both")
        given = guide_subdivisions if guide_subdivisions is not None else downsample_maps
        if given is None:
            if not self.config.pred_subdiv:
                raise ValueError("this decoder does not predict subdivisions (pred_subdiv=False): pass "
                                 "guide_subdivisions (from the shape decoder) or downsample_maps (from an encoder)")
            return [None] * n
        if self.config.pred_subdiv and guide_subdivisions is not None:
            raise ValueError("this decoder predicts its own subdivisions (pred_subdiv=True); do not pass "
                             "guide_subdivisions (downsample_maps teacher-force it)")
        if len(given) != n:
            raise ValueError(f"need {n} guides (one per upsampling), got {len(given)}")
        if downsample_maps is not None:
            if not all(isinstance(m, DownsampleMap) for m in given):
                raise TypeError("downsample_maps must hold DownsampleMap values (EncoderOutput.downsample_maps)")
            return list(given)[::-1]  # the encoder lists them finest first; the decoder needs coarsest first
        if not all(isinstance(g, SparseTensor) for g in given):
            raise TypeError("guide_subdivisions must hold SparseTensors of (N, 8) logits")
        return list(given)

    @staticmethod
    def _check_guide(h: SparseTensor, guide, stage: int) -> None:
        """Raise ValueError unless a logits or map guide belongs to ``h``'s voxels (None passes)."""
        if isinstance(guide, DownsampleMap):
            coarse = guide.coarse_coords
            if coarse.shape != h.coords.shape or (coarse is not h.coords and not torch.equal(coarse, h.coords)):
                raise ValueError(f"downsample_maps: the map for upsampling stage {stage} expects "
                                 f"{coarse.shape[0]} coarse voxels that differ from the decoder's "
                                 f"{h.num_voxels} voxels at that stage: the map belongs to another voxel set")
        elif guide is not None and (guide.feats.shape != (h.num_voxels, 8)
                                    or (guide.coords is not h.coords and not torch.equal(guide.coords, h.coords))):
            raise ValueError(f"guide_subdivisions[{stage}] must be (N, 8) logits on the decoder's coords at that "
                             f"stage ({h.num_voxels} voxels, same row order), got {tuple(guide.feats.shape)}")

    def _upsample(self, block: UpsampleBlock, h: SparseTensor, guide, stage: int, chunk_rows: Optional[int]):
        """Run one upsampling block; returns ``(output, predicted logits or None)``."""
        if guide is None:
            logits = h.replace(block.to_subdiv(h.feats))
            return block(h, subdivision=logits.feats > 0, chunk_rows=chunk_rows), logits
        if isinstance(guide, DownsampleMap):  # teacher forcing: a pred_subdiv block still predicts its logits
            logits = h.replace(block.to_subdiv(h.feats)) if block.to_subdiv is not None else None
            return block(h, downsample_map=guide, chunk_rows=chunk_rows), logits
        self._check_guide(h, guide, stage)
        return block(h, subdivision=guide.feats > 0, chunk_rows=chunk_rows), None

    def _head(self, feats: torch.Tensor, chunk_rows: Optional[int]) -> torch.Tensor:
        """Final non-affine LayerNorm and ``output_layer``: ``(M, C)`` -> ``(M, out_channels) float32``."""
        return _rowwise(lambda f: self.output_layer(F.layer_norm(f.float(), f.shape[-1:], eps=1e-5)), feats,
                        chunk_rows)

    def _run_stages(self, z: SparseTensor, guides: list, num_stages: int, chunk_rows: Optional[int],
                    checkpoint: bool = False):
        h = z.replace(self.from_latent(z.feats.float()).to(_blocks_dtype(self.config.use_fp16)))
        return self._run_stages_from(h, guides, 0, chunk_rows, stop=num_stages, checkpoint=checkpoint)

    def _run_stages_from(self, h: SparseTensor, guides: list, start: int, chunk_rows: Optional[int],
                         stop: Optional[int] = None, checkpoint: bool = False):
        """Run stages ``start .. stop - 1`` (default: to the end); returns ``(h, predicted logits tuple)``."""
        logits = []
        for s in range(start, len(self.blocks) if stop is None else stop):
            for block in self.blocks[s]:
                if isinstance(block, UpsampleBlock):
                    h, predicted = self._upsample(block, h, guides[s], s, chunk_rows)
                    if predicted is not None:
                        logits.append(predicted)
                else:
                    h = _run_block(block, h, chunk_rows, checkpoint)
        return h, tuple(logits)

    def forward(self, z: SparseTensor, guide_subdivisions: Optional[Sequence[SparseTensor]] = None,
                downsample_maps: Optional[Sequence[DownsampleMap]] = None,
                chunk_rows: Optional[int] = None, chunk_voxels: Optional[int] = None,
                checkpoint: bool = False) -> DecoderOutput:
        """Decode a structured latent to full-resolution voxels.

        Args:
            z: `SparseTensor` ``(N, latent_channels)`` float (denormalised latent), on the latent grid.
            guide_subdivisions: four ``(N_s, 8)`` logit tensors from a ``pred_subdiv`` decoder run on a latent
                with the same coords and row order (children kept where logits > 0).
            downsample_maps: the four maps of `EncoderOutput` (finest first): upsample onto exactly the
                encoder's voxels; the output rows are then the encoder input's rows, in order. On a
                ``pred_subdiv`` decoder this is teacher forcing (training, spec training.md 2.2): each
                upsampling block still predicts its logits (in ``subdivision_logits``) but follows the map.
            chunk_rows: if set, run per-voxel work (norms, activations, MLPs, output layer) at most this many
                rows at a time (bounds the wide per-voxel temporaries; equal up to GEMM rounding).
                Convolutions and resampling still see all rows.
            chunk_voxels: low-memory mode. If set, the last two stages (where most voxels live: the blocks
                of the second-to-last stage, the last upsampling, the last stage and the output head) run on
                spatial groups of this many voxels of the second-to-last level, each with the halo of
                neighbours that makes it exact (`omnivox.models.sc_vae_chunks`). Same voxels, same row
                order and same values up to GEMM rounding; lower peak memory, some halo work repeated.
                Combine with ``chunk_rows`` for the lowest peak.
            checkpoint: activation checkpointing (training): recompute every ConvNeXt block in backward.
                Not with ``chunk_voxels``.

        Returns:
            `DecoderOutput`.
        """
        self._check_latent(z)
        check_chunk_voxels(chunk_voxels, len(self.blocks))
        if checkpoint and chunk_voxels is not None:
            raise ValueError("checkpoint (training) and chunk_voxels (low-memory inference) do not combine")
        if chunk_voxels is not None and downsample_maps is not None and self.config.pred_subdiv:
            raise ValueError("teacher forcing (downsample_maps on a pred_subdiv decoder) does not combine with "
                             "chunk_voxels")
        guides = self._guides(guide_subdivisions, downsample_maps)
        if chunk_voxels is None:
            h, logits = self._run_stages(z, guides, len(self.blocks), chunk_rows, checkpoint)
            return DecoderOutput(voxels=h.replace(self._head(h.feats, chunk_rows)), subdivision_logits=logits)
        tail_stage = len(self.blocks) - 2
        h, logits = self._run_stages(z, guides, tail_stage, chunk_rows)
        self._check_guide(h, guides[tail_stage], tail_stage)
        if h.num_voxels <= chunk_voxels:  # one group would be the whole set: the plain path is the same
            h, last = self._run_stages_from(h, guides, tail_stage, chunk_rows)
            return DecoderOutput(voxels=h.replace(self._head(h.feats, chunk_rows)), subdivision_logits=logits + last)
        voxels, last_logits = decode_tail_in_chunks(self, h, guides[tail_stage], chunk_voxels, chunk_rows)
        if last_logits is not None:
            logits = logits + (last_logits,)
        return DecoderOutput(voxels=voxels, subdivision_logits=logits)

    def upsample(self, z: SparseTensor, upsample_times: int, chunk_rows: Optional[int] = None) -> torch.Tensor:
        """Predicted active voxels after ``upsample_times`` stages (cascade generation, spec 4.3).

        Only for ``pred_subdiv`` decoders. Runs ``from_latent`` and whole stages ``0 .. upsample_times - 1``.

        Returns:
            ``(M, 4) int32`` coordinates ``(b, x, y, z)`` on the grid ``2**upsample_times`` times finer.
        """
        self._check_latent(z)
        if not self.config.pred_subdiv:
            raise ValueError("upsample needs a decoder that predicts subdivisions (pred_subdiv=True)")
        if not isinstance(upsample_times, int) or not 0 <= upsample_times <= self.num_upsamplings:
            raise ValueError(f"upsample_times must be an int in [0, {self.num_upsamplings}], got {upsample_times!r}")
        h, _ = self._run_stages(z, [None] * self.num_upsamplings, upsample_times, chunk_rows)
        return h.coords


@dataclass
class FlexiDualGridOutput:
    """What the shape decoder returns: a flexible dual grid at ``resolution`` plus subdivision logits.

    Attributes:
        coords: ``(M, 4) int32`` voxels ``(b, x, y, z)`` at full resolution.
        vertices: ``(M, 3) float32`` dual-vertex offset inside its voxel in voxel units, in
            ``(-margin, 1 + margin)``; world position ``(xyz + vertices) / resolution - 0.5``.
        intersected: ``(M, 3) bool``: the voxel's x / y / z edge is crossed by the surface.
        split_weights: ``(M, 1) float32`` positive quad-split weights.
        subdivision_logits: four ``(N_s, 8)`` logit tensors, coarsest first (guide for the material decoder).
        resolution: grid size the vertices refer to (``FlexiDualGridVaeDecoder.forward(..., resolution=)``).
    """

    coords: torch.Tensor
    vertices: torch.Tensor
    intersected: torch.Tensor
    split_weights: torch.Tensor
    subdivision_logits: Tuple[SparseTensor, ...]
    resolution: Optional[int]


class FlexiDualGridVaeDecoder(SparseUnetVaeDecoder):
    """Shape SC-VAE decoder: predicts its own subdivisions and a flexible dual grid (spec 4.4)."""

    config_class = FlexiDualGridDecoderConfig

    def __init__(self, config: FlexiDualGridDecoderConfig) -> None:
        super().__init__(config)
        self.resolution = config.resolution  # the default of forward's ``resolution``: the checkpoint's

    def set_resolution(self, resolution: int) -> None:
        """Deprecated (kept for one release): pass ``resolution=`` to `forward` instead. Sets the default."""
        import warnings

        warnings.warn("FlexiDualGridVaeDecoder.set_resolution is deprecated; pass resolution= to the call",
                      DeprecationWarning, stacklevel=2)
        self.resolution = _check_resolution(resolution)

    def forward(self, z: SparseTensor, chunk_rows: Optional[int] = None,
                chunk_voxels: Optional[int] = None, resolution: Optional[int] = None) -> FlexiDualGridOutput:
        """Decode a (denormalised) shape latent.

        Args:
            z: `SparseTensor` ``(N, 32)`` float on the latent grid.
            chunk_rows: see `SparseUnetVaeDecoder.forward`.
            chunk_voxels: low-memory mode, see `SparseUnetVaeDecoder.forward`.
            resolution: the grid size the output refers to (512 / 1024 / 1536; the network is the same for
                all); default the checkpoint's ``resolution``.

        Returns:
            `FlexiDualGridOutput`.
        """
        resolution = self.resolution if resolution is None else _check_resolution(resolution)
        out = super().forward(z, chunk_rows=chunk_rows, chunk_voxels=chunk_voxels)
        h, margin = out.voxels.feats, self.config.voxel_margin
        return FlexiDualGridOutput(
            coords=out.voxels.coords,
            vertices=(1 + 2 * margin) * torch.sigmoid(h[:, 0:3]) - margin,
            intersected=h[:, 3:6] > 0,
            split_weights=F.softplus(h[:, 6:7]),
            subdivision_logits=out.subdivision_logits,
            resolution=resolution,
        )


def _check_resolution(resolution) -> int:
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution <= 0:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    return resolution
