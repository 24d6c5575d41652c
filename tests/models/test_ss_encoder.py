"""Sparse-structure encoder: float64 re-derivation, released shapes, loading, and the occupancy helper."""

import pytest
import torch
import torch.nn.functional as F

from omnivox.models import (SparseStructureEncoder, SparseStructureEncoderConfig, build_model, from_pretrained,
                            occupancy_grid, save_pretrained)
from omnivox.models.ss_encoder import DownsampleBlock3d

from .helpers import randomize, relative_error


def tiny_config(**overrides) -> SparseStructureEncoderConfig:
    args = dict(latent_channels=3, channels=(4, 8, 16), num_res_blocks=1, num_res_blocks_middle=1, use_fp16=False)
    return SparseStructureEncoderConfig(**{**args, **overrides})


def _reference(model, x):
    """The module docstring's layout in float64: ResBlocks, stride-2 2^3 convs, ChannelLayerNorm eps 1e-5."""
    s = {k: v.double() for k, v in model.state_dict().items()}
    conv = lambda h, p: F.conv3d(h, s[f"{p}.weight"], s[f"{p}.bias"], padding=1)  # noqa: E731

    def norm(h, p):
        return F.layer_norm(h.movedim(1, -1), h.shape[1:2], s[f"{p}.weight"], s[f"{p}.bias"], 1e-5).movedim(-1, 1)

    def res(h, p):
        return h + conv(F.silu(norm(conv(F.silu(norm(h, f"{p}.norm1")), f"{p}.conv1"), f"{p}.norm2")), f"{p}.conv2")

    h = conv(x.double(), "input_layer")
    for i, block in enumerate(model.blocks):
        if isinstance(block, DownsampleBlock3d):
            h = F.conv3d(h, s[f"blocks.{i}.conv.weight"], s[f"blocks.{i}.conv.bias"], stride=2)
        else:
            h = res(h, f"blocks.{i}")
    for i in range(model.config.num_res_blocks_middle):
        h = res(h, f"middle_block.{i}")
    out = conv(F.silu(norm(h, "out_layer.0")), "out_layer.2")
    return out.chunk(2, dim=1)


@pytest.mark.parametrize("use_fp16, tolerance", [(False, 1e-5), (True, 2e-2)])
def test_ss_encoder_matches_float64_reference(use_fp16, tolerance):
    model = randomize(SparseStructureEncoder(tiny_config(use_fp16=use_fp16)), seed=3, std=0.2)
    occupancy = (torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(4)) < 0.3).float()
    with torch.no_grad():
        posterior = model(occupancy)
    mean, logvar = _reference(model, occupancy)
    assert posterior.mean.shape == (2, 3, 4, 4, 4) and posterior.mean.dtype == torch.float32
    assert relative_error(posterior.mean, mean) < tolerance
    assert relative_error(posterior.logvar, logvar) < tolerance
    sample = posterior.sample(torch.Generator().manual_seed(0))
    assert sample.shape == mean.shape and not torch.equal(sample, posterior.mean)
    with pytest.raises(ValueError, match="multiples of 4"):
        model(occupancy[..., :6])
    with pytest.raises(ValueError, match=r"occupancy must have shape \(B, 1, X, Y, Z\)"):
        model(occupancy[:, :, 0])


def test_released_configuration_shapes_and_round_trip(tmp_path):
    released = build_model("SparseStructureEncoder", dict(in_channels=1, latent_channels=8, num_res_blocks=2,
                                                          num_res_blocks_middle=2, channels=[32, 128, 512],
                                                          use_fp16=True), device="meta")
    shapes = {k: tuple(v.shape) for k, v in released.state_dict().items()}
    assert shapes["input_layer.weight"] == (32, 1, 3, 3, 3)
    assert shapes["blocks.2.conv.weight"] == (128, 32, 2, 2, 2)          # Down 32 -> 128 after two ResBlocks
    assert shapes["blocks.5.conv.weight"] == (512, 128, 2, 2, 2)
    assert shapes["middle_block.1.conv2.weight"] == (512, 512, 3, 3, 3)
    assert shapes["out_layer.2.weight"] == (16, 512, 3, 3, 3)            # mean and log-variance, 8 each
    assert released.blocks[0].conv1.weight.dtype == torch.float16 and released.input_layer.weight.dtype == torch.float32

    model = randomize(SparseStructureEncoder(tiny_config()), seed=5)
    save_pretrained(model, tmp_path / "ss_enc_tiny")
    loaded = from_pretrained(tmp_path / "ss_enc_tiny")
    x = (torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(6)) < 0.5).float()
    with torch.no_grad():
        assert torch.equal(loaded(x).mean, model(x).mean)


def test_occupancy_grid():
    coords = torch.randint(0, 64, (500, 3), generator=torch.Generator().manual_seed(7))
    grid = occupancy_grid(coords, 64)
    assert grid.shape == (1, 1, 64, 64, 64)
    assert int(grid.sum()) == len(torch.unique(coords, dim=0))
    assert torch.equal(grid[0, 0][coords[:, 0], coords[:, 1], coords[:, 2]], torch.ones(500))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        occupancy_grid(torch.tensor([[0, 0, 64]]), 64)
