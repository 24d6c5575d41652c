"""Sparse-structure VAE encoder: dense ``(B, 1, 64, 64, 64)`` occupancy -> ``(B, 8, 16, 16, 16)`` latent.

The mirror of `omnivox.models.ss_decoder.SparseStructureDecoder` (TRELLIS v1's dense 3-D conv VAE, reused by
TRELLIS.2; checkpoint ``microsoft/TRELLIS-image-large/ckpts/ss_enc_conv3d_16l8_fp16``, args ``in_channels=1,
latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2, channels=[32,128,512], use_fp16=true``). Only the
data toolkit needs it: the sparse-structure flow trains on the posterior mean of the 64^3 occupancy of each
asset's shape-latent coordinates (spec training.md 4.2 step 10). Layout ``(B, C, X, Y, Z)``:

    input_layer (fp32) -> fp16 -> blocks: Res32, Res32, Down 32->128 (32^3), Res128, Res128, Down 128->512 (16^3),
    Res512, Res512 -> middle_block: 2 x ResBlock(512) -> fp32 -> out_layer: ChannelLayerNorm -> SiLU
    -> Conv3d(512 -> 2 * latent_channels), split into mean and log-variance

A downsampling block is a stride-2, 2x2x2 convolution. The spec (models.md 5) documents only the decoder; the
key names here follow the same scheme (``input_layer``, ``blocks.<i>.{norm1,conv1,norm2,conv2}``,
``blocks.<i>.conv`` for downsampling, ``middle_block``, ``out_layer.{0,2}``); strict loading reports any
mismatch with a released file by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from omnivox.models.ss_decoder import ChannelLayerNorm32, ResBlock3d


@dataclass
class SparseStructureEncoderConfig:
    """Constructor arguments (checkpoint JSON ``args``); defaults are the released configuration."""

    in_channels: int = 1
    latent_channels: int = 8
    num_res_blocks: int = 2
    num_res_blocks_middle: int = 2
    channels: Tuple[int, ...] = (32, 128, 512)
    use_fp16: bool = True
    norm_type: str = "layer"

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.norm_type != "layer":
            raise ValueError(f"norm_type={self.norm_type!r} is not supported (the released encoder uses 'layer')")
        if not self.channels:
            raise ValueError("channels must not be empty")


@dataclass
class SparseStructurePosterior:
    """Diagonal Gaussian over the dense latent; ``mean`` is what the data toolkit stores."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise


class DownsampleBlock3d(nn.Module):
    """Halves each axis with a 2x2x2 convolution of stride 2."""

    def __init__(self, in_channels: int, out_channels: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SparseStructureEncoder(nn.Module):
    """Encoder of the sparse-structure VAE (see the module docstring for layout and dtypes)."""

    config_class = SparseStructureEncoderConfig

    def __init__(self, config: SparseStructureEncoderConfig) -> None:
        super().__init__()
        self.config = config
        dtype = self.blocks_dtype
        ch = config.channels
        self.input_layer = nn.Conv3d(config.in_channels, ch[0], 3, padding=1)
        blocks = []
        for i, c in enumerate(ch):
            blocks += [ResBlock3d(c, dtype) for _ in range(config.num_res_blocks)]
            if i + 1 < len(ch):
                blocks.append(DownsampleBlock3d(c, ch[i + 1], dtype))
        self.blocks = nn.Sequential(*blocks)
        self.middle_block = nn.Sequential(*(ResBlock3d(ch[-1], dtype) for _ in range(config.num_res_blocks_middle)))
        self.out_layer = nn.Sequential(ChannelLayerNorm32(ch[-1], eps=1e-5, affine=True), nn.SiLU(),
                                       nn.Conv3d(ch[-1], 2 * config.latent_channels, 3, padding=1))

    @property
    def blocks_dtype(self) -> torch.dtype:
        return torch.float16 if self.config.use_fp16 else torch.float32

    def forward(self, occupancy: torch.Tensor) -> SparseStructurePosterior:
        """Encode a dense occupancy volume.

        Args:
            occupancy: ``(B, in_channels, X, Y, Z)``, 0/1 (any float or bool dtype); ``64^3`` in the released model.

        Returns:
            the posterior, ``mean`` and ``logvar`` of shape ``(B, latent_channels, X / 4, Y / 4, Z / 4)`` float32.
        """
        expected = self.config.in_channels
        if not isinstance(occupancy, torch.Tensor) or occupancy.dim() != 5 or occupancy.shape[1] != expected:
            got = tuple(occupancy.shape) if isinstance(occupancy, torch.Tensor) else type(occupancy).__name__
            raise ValueError(f"occupancy must have shape (B, {expected}, X, Y, Z), got {got}")
        factor = 2 ** (len(self.config.channels) - 1)
        if any(s % factor for s in occupancy.shape[2:]):
            raise ValueError(f"occupancy sides must be multiples of {factor}, got {tuple(occupancy.shape[2:])}")
        h = self.input_layer(occupancy.float()).to(self.blocks_dtype)
        h = self.middle_block(self.blocks(h))
        mean, logvar = self.out_layer(h.float()).chunk(2, dim=1)
        return SparseStructurePosterior(mean=mean, logvar=logvar)


def occupancy_grid(coords: torch.Tensor, resolution: int = 64) -> torch.Tensor:
    """``(N, 3)`` integer voxel coordinates -> ``(1, 1, R, R, R)`` float32 occupancy (1 where a voxel is)."""
    coords = torch.as_tensor(coords).long()
    if coords.dim() != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must have shape (N, 3), got {tuple(coords.shape)}")
    if coords.numel() and (coords.min() < 0 or coords.max() >= resolution):
        raise ValueError(f"coords must lie in [0, {resolution}), got range [{coords.min()}, {coords.max()}]")
    grid = torch.zeros(1, 1, resolution, resolution, resolution, device=coords.device)
    grid[0, 0, coords[:, 0], coords[:, 1], coords[:, 2]] = 1.0
    return grid
