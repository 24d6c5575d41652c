"""The SC-VAE training passes are the networks' own forward (``checkpoint=`` / ``downsample_maps=``).

``_copy_encode`` and ``_copy_decode_teacher_forced`` below are, verbatim, the training copy of the network forward
that ``omnivox/train/vae_losses.py`` held before issue #18 (blocks run in the dtype of their weights, ConvNeXt blocks
optionally checkpointed, subdivision logits collected while upsampling on the encoder's maps). They stay here as
the independent re-derivation the models' forward is compared against, bit for bit, values and gradients.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from omnivox.models import (
    FlexiDualGridDecoderConfig,
    FlexiDualGridVaeDecoder,
    FlexiDualGridVaeEncoder,
    SparseUnetVaeDecoder,
    SparseUnetVaeEncoder,
    VaeDecoderConfig,
    VaeEncoderConfig,
)
from omnivox.models.sc_vae import ConvNeXtBlock, DownsampleBlock, UpsampleBlock
from omnivox.sparse.tensor import SparseTensor
from omnivox.train.vae_losses import child_mask, decode_teacher_forced, encode

ENC = {"model_channels": (16, 32, 64), "num_blocks": (1, 1, 1), "latent_channels": 8}
DEC = {"model_channels": (64, 32, 16), "num_blocks": (1, 1, 1), "latent_channels": 8}


# ------------------------------------------------------------------- the pre-#18 training copy, verbatim
def _copy_blocks_dtype(blocks):
    for module in blocks.modules():
        if isinstance(module, ConvNeXtBlock):
            return module.conv.weight.dtype
    return next(blocks.parameters()).dtype


def _copy_run_convnext(block, h, checkpointed):
    if not checkpointed or not torch.is_grad_enabled():
        return block(h)
    return h.replace(activation_checkpoint(lambda f: block(h.replace(f)).feats, h.feats, use_reentrant=False))


def _copy_encode(encoder, x, checkpointed=False):
    h = x.replace(encoder.input_layer(x.feats.float()).to(_copy_blocks_dtype(encoder.blocks)))
    maps = []
    for stage in encoder.blocks:
        for block in stage:
            if isinstance(block, DownsampleBlock):
                h, down_map = block(h)
                maps.append(down_map)
            else:
                h = _copy_run_convnext(block, h, checkpointed)
    feats = F.layer_norm(h.feats.float(), h.feats.shape[-1:], eps=1e-5)
    mean, logvar = encoder.to_latent(feats).chunk(2, dim=-1)
    return h.replace(mean), logvar, tuple(maps)


def _copy_decode_teacher_forced(decoder, z, downsample_maps, checkpointed=False):
    maps = list(downsample_maps)[::-1]
    h = z.replace(decoder.from_latent(z.feats.float()).to(_copy_blocks_dtype(decoder.blocks)))
    levels = []
    for s, stage in enumerate(decoder.blocks):
        for block in stage:
            if isinstance(block, UpsampleBlock):
                if block.to_subdiv is not None:
                    levels.append((block.to_subdiv(h.feats), child_mask(maps[s])))
                h = block(h, downsample_map=maps[s])
            else:
                h = _copy_run_convnext(block, h, checkpointed)
    out = decoder.output_layer(F.layer_norm(h.feats.float(), h.feats.shape[-1:], eps=1e-5))
    return h.replace(out), levels


# --------------------------------------------------------------------------------------------- inputs
def _random_input(channels, seed=0, voxels=600, size=16):
    generator = torch.Generator().manual_seed(seed)
    coords = []
    for _ in range(2):  # two samples of one batch
        flat = torch.randperm(size ** 3, generator=generator)[:voxels]
        coords.append(torch.stack([flat // size ** 2, flat // size % size, flat % size], 1).int())
    feats = [torch.rand(len(c), channels, generator=generator) * 2 - 1 for c in coords]
    return SparseTensor.from_batch_list(coords, feats)


def _vae(shape: bool, use_fp16: bool, seed=0):
    torch.manual_seed(seed)
    if shape:
        return (FlexiDualGridVaeEncoder(VaeEncoderConfig(**ENC, use_fp16=use_fp16)),
                FlexiDualGridVaeDecoder(FlexiDualGridDecoderConfig(**DEC, use_fp16=use_fp16, resolution=16)))
    return (SparseUnetVaeEncoder(VaeEncoderConfig(**ENC, use_fp16=use_fp16)),
            SparseUnetVaeDecoder(VaeDecoderConfig(**DEC, use_fp16=use_fp16)))


def _grads(module):
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


@pytest.mark.parametrize("use_fp16", [False, True])
@pytest.mark.parametrize("checkpointed", [False, True])
@pytest.mark.parametrize("shape", [False, True])
def test_model_forward_equals_the_training_copy(shape, checkpointed, use_fp16):
    """Values and gradients: the copy (dtype from the weights) and the forward (dtype from the config) agree
    because models are built with weights in their config's dtype, as the trainers build them."""
    x = _random_input(6)
    results = []
    for run in ("copy", "model"):
        encoder, decoder = _vae(shape, use_fp16)
        for network in (encoder, decoder):
            assert _copy_blocks_dtype(network.blocks) == (torch.float16 if use_fp16 else torch.float32)
        if run == "copy":
            mean, logvar, maps = _copy_encode(encoder, x, checkpointed)
            voxels, levels = _copy_decode_teacher_forced(decoder, mean, maps, checkpointed)
            logits = [lg for lg, _ in levels]
        else:
            posterior = SparseUnetVaeEncoder.forward(encoder, x, checkpoint=checkpointed)
            mean, logvar, maps = posterior.mean, posterior.logvar, posterior.downsample_maps
            out = SparseUnetVaeDecoder.forward(decoder, mean, downsample_maps=maps, checkpoint=checkpointed)
            voxels, logits = out.voxels, [lg.feats for lg in out.subdivision_logits]
        loss = voxels.feats.float().square().mean() + logvar.float().mean() + sum(lg.float().mean() for lg in logits)
        loss.backward()
        results.append((mean.feats, logvar, voxels.coords, voxels.feats, logits, _grads(encoder), _grads(decoder)))
    (m0, lv0, c0, v0, l0, ge0, gd0), (m1, lv1, c1, v1, l1, ge1, gd1) = results
    assert torch.equal(m0, m1) and torch.equal(lv0, lv1)
    assert torch.equal(c0, c1) and torch.equal(c0, x.coords)  # the input voxels, in input order
    assert torch.equal(v0, v1)
    assert len(l0) == len(l1) == (2 if shape else 0)
    assert all(torch.equal(a, b) for a, b in zip(l0, l1))
    assert len(ge0) == len(ge1) > 0 and all(torch.equal(a, b) for a, b in zip(ge0, ge1))
    assert len(gd0) == len(gd1) > 0 and all(torch.equal(a, b) for a, b in zip(gd0, gd1))


@pytest.mark.parametrize("shape", [False, True])
def test_training_helpers_are_the_forward(shape):
    """``encode`` / ``decode_teacher_forced`` (what the losses call) return what the copy returns."""
    x = _random_input(6, seed=1)
    encoder, decoder = _vae(shape, use_fp16=False)
    with torch.no_grad():
        posterior = encode(encoder, x)
        mean, logvar, maps = _copy_encode(encoder, x)
        assert torch.equal(posterior.mean.feats, mean.feats) and torch.equal(posterior.logvar, logvar)
        forced = decode_teacher_forced(decoder, posterior.mean, posterior.downsample_maps)
        voxels, levels = _copy_decode_teacher_forced(decoder, mean, maps)
    assert torch.equal(forced.voxels.feats, voxels.feats) and torch.equal(forced.voxels.coords, voxels.coords)
    assert len(forced.subdivisions) == len(levels)
    for (logits, target), (expected_logits, expected_target) in zip(forced.subdivisions, levels):
        assert torch.equal(logits, expected_logits) and torch.equal(target, expected_target)
