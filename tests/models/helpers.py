"""Tiny configurations and random weights shared by the model tests."""

import torch

from omnivox.models import (FlexiDualGridDecoderConfig, FlowConfig, SparseStructureDecoderConfig,
                            VaeDecoderConfig, VaeEncoderConfig)
from omnivox.sparse import SparseTensor


def tiny_flow_config(**overrides) -> FlowConfig:
    args = dict(resolution=4, in_channels=8, out_channels=8, model_channels=48, cond_channels=16, num_blocks=2,
                num_heads=2, mlp_ratio=2.0, dtype="float32")
    return FlowConfig(**{**args, **overrides})


def tiny_encoder_config(**overrides) -> VaeEncoderConfig:
    args = dict(in_channels=6, model_channels=(8, 16, 32), num_blocks=(0, 1, 1), latent_channels=4, use_fp16=False)
    return VaeEncoderConfig(**{**args, **overrides})


def tiny_decoder_config(**overrides) -> VaeDecoderConfig:
    args = dict(out_channels=6, model_channels=(32, 16, 8), num_blocks=(1, 1, 0), latent_channels=4, use_fp16=False)
    return VaeDecoderConfig(**{**args, **overrides})


def tiny_shape_decoder_config(**overrides) -> FlexiDualGridDecoderConfig:
    args = dict(model_channels=(32, 16, 8), num_blocks=(1, 1, 0), latent_channels=4, use_fp16=False, resolution=16)
    return FlexiDualGridDecoderConfig(**{**args, **overrides})


def tiny_ss_decoder_config(**overrides) -> SparseStructureDecoderConfig:
    args = dict(latent_channels=3, channels=(16, 8, 4), num_res_blocks=1, num_res_blocks_middle=1, use_fp16=False)
    return SparseStructureDecoderConfig(**{**args, **overrides})


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Overwrite every parameter with N(1, std) for norms/gammas/scales, N(0, std) otherwise.

    Fresh models zero their output layers (so would predict zeros); tests need non-trivial weights.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
            if name.endswith(("gamma", "lambda1")) or ("norm" in name and name.endswith("weight")):
                noise = noise + 1.0
            p.copy_(noise.to(p.dtype))
    return model


def random_voxels(count: int, extent: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """``(N, 4) int32`` unique batch-major voxels: ``count`` random cells per item inside ``extent^3``."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        cells = torch.randperm(extent ** 3, generator=gen)[:count].sort().values
        xyz = torch.stack([cells // extent ** 2, (cells // extent) % extent, cells % extent], 1)
        rows.append(torch.cat([torch.full((len(cells), 1), b), xyz], 1))
    return torch.cat(rows).to(torch.int32)


def sparse_from(coords: torch.Tensor, channels: int, seed: int = 0, dtype=torch.float32) -> SparseTensor:
    gen = torch.Generator().manual_seed(seed)
    return SparseTensor.from_coords(coords, torch.randn(coords.shape[0], channels, generator=gen).to(dtype))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).norm() / expected.norm())
