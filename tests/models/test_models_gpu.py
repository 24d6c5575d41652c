"""The models on CUDA (Triton sparse convolution, fused attention) against the CPU path."""

import copy

import pytest
import torch

from omnivox.models import FlexiDualGridVaeDecoder, SLatFlowModel, SparseUnetVaeDecoder, SparseUnetVaeEncoder

from .helpers import (random_voxels, randomize, relative_error, sparse_from, tiny_decoder_config,
                      tiny_encoder_config, tiny_flow_config, tiny_shape_decoder_config)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("use_fp16, tolerance", [(False, 1e-4), (True, 1e-2)])
def test_vaes_on_cuda_match_cpu(use_fp16, tolerance):
    encoder = randomize(SparseUnetVaeEncoder(tiny_encoder_config(use_fp16=use_fp16)), seed=1, std=0.2)
    shape = randomize(FlexiDualGridVaeDecoder(tiny_shape_decoder_config(use_fp16=use_fp16)), seed=2, std=0.2)
    texture = randomize(SparseUnetVaeDecoder(tiny_decoder_config(use_fp16=use_fp16)), seed=3, std=0.2)
    x = sparse_from(random_voxels(300, 16, batch=2, seed=4), 6, seed=5)
    with torch.no_grad():
        cpu_latent = encoder(x)
        cpu_shape = shape(cpu_latent.mean)
        cpu_tex = texture(cpu_latent.mean, downsample_maps=cpu_latent.downsample_maps)
        gpu_latent = copy.deepcopy(encoder).cuda()(x.to("cuda"))
        gpu_tex = copy.deepcopy(texture).cuda()(gpu_latent.mean, downsample_maps=gpu_latent.downsample_maps)
        gpu_logits = copy.deepcopy(shape).cuda()(gpu_latent.mean).subdivision_logits[0]
    assert relative_error(gpu_latent.mean.feats.cpu(), cpu_latent.mean.feats) < tolerance
    assert torch.equal(gpu_tex.voxels.coords.cpu(), x.coords)
    assert relative_error(gpu_tex.voxels.feats.cpu(), cpu_tex.voxels.feats) < tolerance
    assert relative_error(gpu_logits.feats.cpu().float(), cpu_shape.subdivision_logits[0].feats.float()) < tolerance


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_sparse_flow_on_cuda_matches_cpu(dtype, tolerance):
    model = randomize(SLatFlowModel(tiny_flow_config(resolution=8, in_channels=8, dtype=dtype)), seed=6)
    x = sparse_from(random_voxels(40, 8, batch=2, seed=7), 8, seed=8)
    t, cond = torch.tensor([700.0, 20.0]), torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        cpu = model(x, t, cond).feats
        gpu = copy.deepcopy(model).cuda()(x.to("cuda"), t.cuda(), cond.cuda()).feats.cpu()
    assert relative_error(gpu, cpu) < tolerance
