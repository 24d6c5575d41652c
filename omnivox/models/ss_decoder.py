"""Sparse-structure VAE decoder: dense ``(B, 8, 16, 16, 16)`` latent -> ``(B, 1, 64, 64, 64)`` occupancy logits.

This is the TRELLIS (v1) network that TRELLIS.2 reuses unchanged (checkpoint
``microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16``, spec models.md 5). Dense 3-D convolutions
only, layout ``(B, C, X, Y, Z)``:

    input_layer (fp32) -> fp16 -> middle_block: 2 x ResBlock(512)
    -> blocks: Res512, Res512, Up 512->128 (32^3), Res128, Res128, Up 128->32 (64^3), Res32, Res32
    -> fp32 -> out_layer: ChannelLayerNorm -> SiLU -> Conv3d(32 -> 1)

With ``use_fp16`` the convolutions of ``middle_block`` and ``blocks`` hold float16 weights; norms and the
first/last layers stay float32. Occupancy is ``logits > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from omnivox.models.layers import LayerNorm32


@dataclass
class SparseStructureDecoderConfig:
    """Constructor arguments (checkpoint JSON ``args``); defaults are the released configuration."""

    out_channels: int = 1
    latent_channels: int = 8
    num_res_blocks: int = 2
    num_res_blocks_middle: int = 2
    channels: Tuple[int, ...] = (512, 128, 32)
    use_fp16: bool = True
    norm_type: str = "layer"

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.norm_type != "layer":
            raise ValueError(f"norm_type={self.norm_type!r} is not supported (the released decoder uses 'layer')")
        if not self.channels:
            raise ValueError("channels must not be empty")


class ChannelLayerNorm32(LayerNorm32):
    """LayerNorm over the channel dim of a ``(B, C, X, Y, Z)`` volume, float32 compute (eps 1e-5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class ResBlock3d(nn.Module):
    """``x + conv2(silu(norm2(conv1(silu(norm1(x))))))`` with 3x3x3 convolutions, padding 1."""

    def __init__(self, channels: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm32(channels, eps=1e-5, affine=True)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1, dtype=dtype)
        self.norm2 = ChannelLayerNorm32(channels, eps=1e-5, affine=True)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class UpsampleBlock3d(nn.Module):
    """Conv3d to ``8 * Cout`` channels, then a 3-D pixel shuffle that doubles each axis.

    Shuffle order: ``out[c, 2X+i, 2Y+j, 2Z+k] = in[8c + 4i + 2j + k, X, Y, Z]``: channel-major with X as
    the most significant sub-index, the opposite of the sparse channel-to-space order (spec 5).
    """

    def __init__(self, in_channels: int, out_channels: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 8 * out_channels, 3, padding=1, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, X, Y, Z) -> (B, Cout, 2X, 2Y, 2Z)
        h = self.conv(x)
        b, c8, nx, ny, nz = h.shape
        h = h.view(b, c8 // 8, 2, 2, 2, nx, ny, nz).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return h.reshape(b, c8 // 8, 2 * nx, 2 * ny, 2 * nz)


class SparseStructureDecoder(nn.Module):
    """Decoder of the sparse-structure VAE (see the module docstring for layout and dtypes)."""

    config_class = SparseStructureDecoderConfig

    def __init__(self, config: SparseStructureDecoderConfig) -> None:
        super().__init__()
        self.config = config
        blocks_dtype = self.blocks_dtype
        ch = config.channels
        self.input_layer = nn.Conv3d(config.latent_channels, ch[0], 3, padding=1)
        self.middle_block = nn.Sequential(*(ResBlock3d(ch[0], blocks_dtype)
                                            for _ in range(config.num_res_blocks_middle)))
        blocks = []
        for i, c in enumerate(ch):
            blocks += [ResBlock3d(c, blocks_dtype) for _ in range(config.num_res_blocks)]
            if i + 1 < len(ch):
                blocks.append(UpsampleBlock3d(c, ch[i + 1], blocks_dtype))
        self.blocks = nn.Sequential(*blocks)
        self.out_layer = nn.Sequential(ChannelLayerNorm32(ch[-1], eps=1e-5, affine=True), nn.SiLU(),
                                       nn.Conv3d(ch[-1], config.out_channels, 3, padding=1))

    @property
    def blocks_dtype(self) -> torch.dtype:
        return torch.float16 if self.config.use_fp16 else torch.float32

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode occupancy logits.

        Args:
            z: ``(B, latent_channels, X, Y, Z)`` float latent (``16^3`` in the released model).

        Returns:
            ``(B, out_channels, 4X, 4Y, 4Z) float32`` logits (one upsampling per channel stage after the first).
        """
        if not isinstance(z, torch.Tensor) or z.dim() != 5 or z.shape[1] != self.config.latent_channels:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must have shape (B, {self.config.latent_channels}, X, Y, Z), got {got}")
        h = self.input_layer(z.float()).to(self.blocks_dtype)
        h = self.blocks(self.middle_block(h))
        return self.out_layer(h.float())
