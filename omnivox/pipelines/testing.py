"""Tiny random-weight pipelines in the official folder layout, for tests, demos and apps without downloads.

`make_test_pipeline(dir)` writes what a download of ``microsoft/TRELLIS.2-4B`` looks like, at toy sizes::

    dir/pipeline.json, dir/texturing_pipeline.json     shaped like the released files (spec 10.1)
    dir/ckpts/NAME.json + NAME.safetensors            every model role, written by save_pretrained
    dir/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16.*   the SS decoder, in "another repository"
    dir/dinov3-tiny/config.json + model.safetensors   a 1-layer DINOv3 (Hugging Face layout)

The networks have the released architectures with small widths and depths (the same token grids: a 16^3 SS
latent, 32^3 / 64^3 latent grids, 4 decoder upsamplings) and 2 sampler steps per stage, so a full
``1024_cascade`` generation runs on a CPU in seconds. Random weights would fill the 64^3 occupancy grid
and keep half of all children at every upsampling, so two things are set deliberately: the SS decoder's output
bias puts ~0.02 % of the grid inside the shape (calibrated on sampled latents with random conditions; real
images give a few times more), and the shape decoder's subdivision heads keep one child on the first level and
four on the others. The assets they produce are noise, but every code path (CFG, cascade, decoding, export) runs
with realistic shapes and dtypes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Union

import torch

from omnivox.models import (DINOv3Config, DINOv3ViT, FlexiDualGridDecoderConfig, FlexiDualGridVaeDecoder,
                            FlexiDualGridVaeEncoder, FlowConfig, SLatFlowModel, SparseStructureDecoder,
                            SparseStructureDecoderConfig, SparseStructureFlowModel, SparseUnetVaeDecoder,
                            VaeDecoderConfig, VaeEncoderConfig, save_pretrained)
from omnivox.pipelines.samplers import FlowEulerSampler, SamplerParams

# Appendix A of the spec: the released latent statistics (pipeline.json carries the same numbers).
SHAPE_MEAN = [0.781296, 0.018091, -0.495192, -0.558457, 1.060530, 0.093252, 1.518149, -0.933218,
              -0.732996, 2.604095, -0.118341, -2.143904, 0.495076, -2.179512, -2.130751, -0.996944,
              0.261421, -2.217463, 1.260067, -0.150213, 3.790713, 1.481266, -1.046058, -1.523667,
              -0.059621, 2.220780, 1.621212, 0.877230, 0.567247, -3.175944, -3.186688, 1.578665]
SHAPE_STD = [5.972266, 4.706852, 5.445010, 5.209927, 5.320220, 4.547237, 5.020802, 5.444004,
             5.226681, 5.683095, 4.831436, 5.286469, 5.652043, 5.367606, 5.525084, 4.730578,
             4.805265, 5.124013, 5.530808, 5.619001, 5.103930, 5.417670, 5.269677, 5.547194,
             5.634698, 5.235274, 6.110351, 5.511298, 6.237273, 4.879207, 5.347008, 5.405691]
TEX_MEAN = [3.501659, 2.212398, 2.226094, 0.251093, -0.026248, -0.687364, 0.439898, -0.928075,
            0.029398, -0.339596, -0.869527, 1.038479, -0.972385, 0.126042, -1.129303, 0.455149,
            -1.209521, 2.069067, 0.544735, 2.569128, -0.323407, 2.293000, -1.925608, -1.217717,
            1.213905, 0.971588, -0.023631, 0.106750, 2.021786, 0.250524, -0.662387, -0.768862]
TEX_STD = [2.665652, 2.743913, 2.765121, 2.595319, 3.037293, 2.291316, 2.144656, 2.911822,
           2.969419, 2.501689, 2.154811, 3.163343, 2.621215, 2.381943, 3.186697, 3.021588,
           2.295916, 3.234985, 3.233086, 2.260140, 2.874801, 2.810596, 3.292720, 2.674999,
           2.680878, 2.372054, 2.451546, 2.353556, 2.995195, 2.379849, 2.786195, 2.775190]

MODEL_PATHS = {
    "sparse_structure_flow_model": "ckpts/ss_flow_img_dit_1_3B_64_bf16",
    "sparse_structure_decoder": "microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16",
    "shape_slat_flow_model_512": "ckpts/slat_flow_img2shape_dit_1_3B_512_bf16",
    "shape_slat_flow_model_1024": "ckpts/slat_flow_img2shape_dit_1_3B_1024_bf16",
    "shape_slat_decoder": "ckpts/shape_dec_next_dc_f16c32_fp16",
    "tex_slat_flow_model_512": "ckpts/slat_flow_imgshape2tex_dit_1_3B_512_bf16",
    "tex_slat_flow_model_1024": "ckpts/slat_flow_imgshape2tex_dit_1_3B_1024_bf16",
    "tex_slat_decoder": "ckpts/tex_dec_next_dc_f16c32_fp16",
    "shape_slat_encoder": "ckpts/shape_enc_next_dc_f16c32_fp16",
}
TEXTURING_ROLES = ("shape_slat_encoder", "tex_slat_decoder", "tex_slat_flow_model_512", "tex_slat_flow_model_1024")
IMAGE_ENCODER_NAME = "dinov3-tiny"
SS_OCCUPANCY = 0.0002
TEST_STEPS = 2


def released_samplers(steps: int = 12) -> dict:
    """The released sampler settings (spec 8.4) with ``steps`` steps each."""
    return {"sparse_structure": SamplerParams(steps, 7.5, 0.7, (0.6, 1.0), 5.0),
            "shape_slat": SamplerParams(steps, 7.5, 0.5, (0.6, 1.0), 3.0),
            "tex_slat": SamplerParams(steps, 1.0, 0.0, (0.6, 0.9), 3.0)}


def _randomize(model: torch.nn.Module, generator: torch.Generator, std: float = 0.2) -> None:
    """Random weights everywhere (fresh models zero their output layers and would predict zeros)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * std
            if name.endswith(("gamma", "lambda1")) or ("norm" in name and name.endswith("weight")):
                noise = noise + 1.0
            p.copy_(noise.to(p.dtype))


def _flow(resolution: int, in_channels: int, cond_channels: int, generator) -> torch.nn.Module:
    config = FlowConfig(resolution=resolution, in_channels=in_channels, out_channels=8 if resolution == 16 else 32,
                        model_channels=48, cond_channels=cond_channels, num_blocks=1, num_heads=2,
                        mlp_ratio=2.0, dtype="float32")
    model = (SparseStructureFlowModel if resolution == 16 else SLatFlowModel)(config)
    _randomize(model, generator)
    return model


def _decoder_config(cls, **overrides):
    args = dict(model_channels=(32, 16, 16, 8, 8), num_blocks=(1, 1, 0, 0, 0), latent_channels=32, use_fp16=False)
    return cls(**{**args, **overrides})


def _shape_decoder(generator) -> FlexiDualGridVaeDecoder:
    model = FlexiDualGridVaeDecoder(_decoder_config(FlexiDualGridDecoderConfig, resolution=1024))
    _randomize(model, generator)
    with torch.no_grad():
        for stage, blocks in enumerate(model.blocks[:-1]):
            head = blocks[-1].to_subdiv
            # Keep child 0 only on the first level and the 4 children of the z = 0 layer on the others: 64x
            # growth in all, and every latent voxel ends as a contiguous 8 x 8 patch (a surface with faces).
            keep = (0,) if stage < 1 else (0, 1, 2, 3)
            bias = torch.full((8,), -3.0)
            bias[list(keep)] = 3.0
            head.weight.mul_(0.05)
            head.bias.copy_(bias.to(head.bias.dtype))
    return model


def _calibrate_ss_decoder(decoder: SparseStructureDecoder, flow: SparseStructureFlowModel, cond_channels: int,
                          generator: torch.Generator) -> None:
    """Shift the output bias so that about `SS_OCCUPANCY` of the 64^3 grid is occupied for sampled latents."""
    cond = torch.randn(2, 1029, cond_channels, generator=generator)
    noise = torch.randn(2, 8, 16, 16, 16, generator=generator)
    params = released_samplers(TEST_STEPS)["sparse_structure"]
    with torch.no_grad():
        latent = FlowEulerSampler().sample(lambda x, t, c: flow(x, torch.full((2,), 1000.0 * t), c), noise, cond,
                                           torch.zeros_like(cond), params)
        logits = decoder(latent)
        threshold = torch.quantile(logits.flatten()[::7], 1 - SS_OCCUPANCY)
        decoder.out_layer[2].bias.sub_(threshold)


def _as_released(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in the released dtypes (bf16 flows, fp16 VAEs), so the JSONs look like the release.

    The models are built and calibrated in float32 (fast on CPUs); the pipeline runs them in float32 on a CPU.
    """
    config = copy.deepcopy(model.config)
    if isinstance(config, FlowConfig):
        config.dtype = "bfloat16"
    else:
        config.use_fp16 = True
    released = type(model)(config)
    released.load_state_dict(model.state_dict())
    return released


def make_test_pipeline(directory: Union[str, Path], *, texturing: bool = False, seed: int = 0) -> Path:
    """Write a tiny random-weight TRELLIS.2 weights folder (module docstring) and return its path.

    Args:
        directory: folder to create (or fill).
        texturing: also write ``texturing_pipeline.json`` and the shape encoder.
        seed: weights seed.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    dino_config = DINOv3Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    dino = DINOv3ViT(dino_config)
    _randomize(dino, generator, std=0.1)
    save_pretrained(dino, root / IMAGE_ENCODER_NAME)
    cond = dino_config.hidden_size

    models = {
        "sparse_structure_flow_model": _flow(16, 8, cond, generator),
        "shape_slat_flow_model_512": _flow(32, 32, cond, generator),
        "shape_slat_flow_model_1024": _flow(64, 32, cond, generator),
        "tex_slat_flow_model_512": _flow(32, 64, cond, generator),
        "tex_slat_flow_model_1024": _flow(64, 64, cond, generator),
        "shape_slat_decoder": _shape_decoder(generator),
        "tex_slat_decoder": SparseUnetVaeDecoder(_decoder_config(VaeDecoderConfig, out_channels=6)),
    }
    _randomize(models["tex_slat_decoder"], generator)
    ss_decoder = SparseStructureDecoder(SparseStructureDecoderConfig(latent_channels=8, channels=(16, 8, 4),
                                                                     num_res_blocks=1, num_res_blocks_middle=1,
                                                                     use_fp16=False))
    _randomize(ss_decoder, generator)
    _calibrate_ss_decoder(ss_decoder, models["sparse_structure_flow_model"], cond, generator)
    models["sparse_structure_decoder"] = ss_decoder
    if texturing:
        encoder = FlexiDualGridVaeEncoder(VaeEncoderConfig(model_channels=(8, 8, 16, 16, 32),
                                                           num_blocks=(0, 1, 0, 0, 1), latent_channels=32,
                                                           use_fp16=False))
        _randomize(encoder, generator)
        models["shape_slat_encoder"] = encoder
    for role, model in models.items():
        path = MODEL_PATHS[role]
        if role == "sparse_structure_decoder":
            path = path.split("/", 1)[1]  # "TRELLIS-image-large/ckpts/...": found beside as another repository
        save_pretrained(_as_released(model), root / path)

    samplers = released_samplers(TEST_STEPS)
    common = {
        "tex_slat_sampler": samplers["tex_slat"].to_json(),
        "shape_slat_normalization": {"mean": SHAPE_MEAN, "std": SHAPE_STD},
        "tex_slat_normalization": {"mean": TEX_MEAN, "std": TEX_STD},
        "image_cond_model": {"name": "DinoV3FeatureExtractor", "args": {"model_name": IMAGE_ENCODER_NAME}},
        "rembg_model": {"name": "BiRefNet", "args": {"model_name": "briaai/RMBG-2.0"}},
        "low_vram": True,
    }
    pipeline = {"name": "Trellis2ImageTo3DPipeline", "args": {
        "models": {role: MODEL_PATHS[role] for role in MODEL_PATHS if role != "shape_slat_encoder"},
        "sparse_structure_sampler": samplers["sparse_structure"].to_json(),
        "shape_slat_sampler": samplers["shape_slat"].to_json(),
        **common, "default_pipeline_type": "1024_cascade"}}
    (root / "pipeline.json").write_text(json.dumps(pipeline, indent=2))
    if texturing:
        tex = {"name": "Trellis2TexturingPipeline", "args": {
            "models": {role: MODEL_PATHS[role] for role in TEXTURING_ROLES}, **common}}
        (root / "texturing_pipeline.json").write_text(json.dumps(tex, indent=2))
    return root
