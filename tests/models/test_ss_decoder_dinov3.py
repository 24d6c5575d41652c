"""Sparse-structure decoder (spec models.md 5) and DINOv3 (spec 9.2, against transformers.DINOv3ViTModel)."""

import pytest
import torch
import torch.nn.functional as F

from omnivox.models import DINOv3Config, DINOv3ViT, SparseStructureDecoder, from_pretrained, save_pretrained
from omnivox.models.ss_decoder import UpsampleBlock3d

from .helpers import randomize, relative_error, tiny_ss_decoder_config


def test_pixel_shuffle_order_is_x_major():
    block = UpsampleBlock3d(1, 2, torch.float64)
    with torch.no_grad():
        block.conv.weight.zero_()
        block.conv.bias.copy_(torch.arange(16, dtype=torch.float64))  # output channel = its own index
    out = block(torch.zeros(1, 1, 1, 1, 1, dtype=torch.float64))
    for c in range(2):
        for i in range(2):
            for j in range(2):
                for k in range(2):
                    assert out[0, c, i, j, k] == c * 8 + 4 * i + 2 * j + k


def _reference(model, z):
    """Spec 5 in float64: ResBlocks, conv upsampling with the X-major shuffle, ChannelLayerNorm eps 1e-5."""
    s = {k: v.double() for k, v in model.state_dict().items()}
    conv = lambda x, p: F.conv3d(x, s[f"{p}.weight"], s[f"{p}.bias"], padding=1)  # noqa: E731

    def norm(x, p):
        return F.layer_norm(x.movedim(1, -1), x.shape[1:2], s[f"{p}.weight"], s[f"{p}.bias"], 1e-5).movedim(-1, 1)

    def res(x, p):
        return x + conv(F.silu(norm(conv(F.silu(norm(x, f"{p}.norm1")), f"{p}.conv1"), f"{p}.norm2")), f"{p}.conv2")

    h = conv(z.double(), "input_layer")
    for i in range(model.config.num_res_blocks_middle):
        h = res(h, f"middle_block.{i}")
    for i, block in enumerate(model.blocks):
        if isinstance(block, UpsampleBlock3d):
            y = conv(h, f"blocks.{i}.conv")
            b, c8, x, yy, zz = y.shape
            out = torch.empty(b, c8 // 8, 2 * x, 2 * yy, 2 * zz, dtype=torch.float64)
            for sub in range(8):
                i_, j_, k_ = sub >> 2, (sub >> 1) & 1, sub & 1
                out[:, :, i_::2, j_::2, k_::2] = y[:, sub::8]
            h = out
        else:
            h = res(h, f"blocks.{i}")
    return conv(F.silu(norm(h, "out_layer.0")), "out_layer.2")


@pytest.mark.parametrize("use_fp16, tolerance", [(False, 1e-5), (True, 1e-2)])
def test_ss_decoder_matches_float64_reference(use_fp16, tolerance):
    model = randomize(SparseStructureDecoder(tiny_ss_decoder_config(use_fp16=use_fp16)), seed=1, std=0.2)
    z = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(z)
    assert logits.shape == (2, 1, 16, 16, 16) and logits.dtype == torch.float32
    assert relative_error(logits, _reference(model, z)) < tolerance
    with pytest.raises(ValueError, match=r"z must have shape \(B, 3, X, Y, Z\)"):
        model(z[:, :2])


# ------------------------------------------------------------------------------------------------ DINOv3
def _tiny_dinov3_hf(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.DINOv3ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=96, num_register_tokens=4, layerscale_value=0.5)
    torch.manual_seed(0)
    hf = transformers.DINOv3ViTModel(config).eval()
    with torch.no_grad():  # HF initialises biases/layer-scales to constants; make every weight informative
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path / "dinov3", safe_serialization=True)
    return hf


def test_dinov3_matches_transformers(tmp_path):
    hf = _tiny_dinov3_hf(tmp_path)
    ours = from_pretrained(tmp_path / "dinov3")
    assert isinstance(ours, DINOv3ViT)
    images = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))  # non-square: 4x3 patches
    with torch.no_grad():
        reference = hf(pixel_values=images, output_hidden_states=True).hidden_states[-1]
        reference = F.layer_norm(reference, reference.shape[-1:], eps=1e-5)  # TRELLIS.2's final norm
        tokens = ours(images)
    assert tokens.shape == (2, 5 + 12, 48)
    assert relative_error(tokens, reference) < 1e-5
    save_pretrained(ours, tmp_path / "copy")
    with torch.no_grad():
        assert torch.equal(from_pretrained(tmp_path / "copy")(images), tokens)


def test_dinov3_token_counts_at_512_and_1024():
    # Appendix B: 1029 tokens at 512 px, 4101 at 1024 px (4 registers + CLS + (H/16)^2 patches).
    model = DINOv3ViT(DINOv3Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    with torch.no_grad():
        assert model(torch.rand(1, 3, 512, 512)).shape == (1, 1029, 16)
        assert model(torch.rand(1, 3, 1024, 1024)).shape == (1, 4101, 16)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.rand(1, 3, 100, 96))
    with pytest.raises(ValueError, match="model_type must be 'dinov3_vit'"):
        DINOv3Config.from_hf_config({"model_type": "vit"})
    with pytest.raises(ValueError, match="head dim divisible by 4"):
        DINOv3Config(hidden_size=12, num_attention_heads=2)
    with pytest.raises(ValueError, match="plain GELU MLP"):
        DINOv3Config.from_hf_config({"model_type": "dinov3_vit", "use_gated_mlp": True})
