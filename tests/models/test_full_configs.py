"""The released configurations, built on the meta device: exact parameter counts (spec models.md 6.10) and
the complete key/shape tables of spec 10.3 and 6.9, written out here independently of the model code."""

import pytest
import torch

from omnivox.models import DINOv3Config, DINOv3ViT, build_model

K = (3, 3, 3)

# Each released checkpoint: JSON name, args as in the released JSON (spec 4.1, 5, 6), exact count (6.10).
RELEASED = {
    "ss_flow_img_dit_1_3B_64_bf16": (
        "SparseStructureFlowModel", dict(resolution=16, in_channels=8, out_channels=8, dtype="bfloat16"),
        1_292_179_976),
    "slat_flow_img2shape_dit_1_3B_1024_bf16": (
        "ElasticSLatFlowModel", dict(resolution=64, in_channels=32, out_channels=32, dtype="bfloat16"),
        1_292_253_728),
    "slat_flow_imgshape2tex_dit_1_3B_1024_bf16": (
        "ElasticSLatFlowModel", dict(resolution=64, in_channels=64, out_channels=32, dtype="bfloat16"),
        1_292_302_880),
    "shape_enc_next_dc_f16c32_fp16": ("FlexiDualGridVaeEncoder", {}, 354_385_392),
    "tex_enc_next_dc_f16c32_fp16": ("SparseUnetVaeEncoder", dict(in_channels=6), 354_385_392),
    "shape_dec_next_dc_f16c32_fp16": ("FlexiDualGridVaeDecoder", dict(resolution=256), 474_231_463),
    "tex_dec_next_dc_f16c32_fp16": ("SparseUnetVaeDecoder", dict(out_channels=6, pred_subdiv=False), 474_216_006),
    "ss_dec_conv3d_16l8_fp16": ("SparseStructureDecoder", {}, 73_671_201),
}


def flow_table(cin, cout):
    """Spec 6.9: key -> (shape, runtime dtype)."""
    f32, bf16 = torch.float32, torch.bfloat16
    table = {
        "t_embedder.mlp.0.weight": ((1536, 256), f32), "t_embedder.mlp.0.bias": ((1536,), f32),
        "t_embedder.mlp.2.weight": ((1536, 1536), f32), "t_embedder.mlp.2.bias": ((1536,), f32),
        "adaLN_modulation.1.weight": ((9216, 1536), f32), "adaLN_modulation.1.bias": ((9216,), f32),
        "input_layer.weight": ((1536, cin), f32), "input_layer.bias": ((1536,), f32),
        "out_layer.weight": ((cout, 1536), f32), "out_layer.bias": ((cout,), f32),
    }
    block = {
        "modulation": ((9216,), f32), "norm2.weight": ((1536,), f32), "norm2.bias": ((1536,), f32),
        "self_attn.to_qkv.weight": ((4608, 1536), bf16), "self_attn.to_qkv.bias": ((4608,), bf16),
        "self_attn.q_rms_norm.gamma": ((12, 128), f32), "self_attn.k_rms_norm.gamma": ((12, 128), f32),
        "self_attn.to_out.weight": ((1536, 1536), bf16), "self_attn.to_out.bias": ((1536,), bf16),
        "cross_attn.to_q.weight": ((1536, 1536), bf16), "cross_attn.to_q.bias": ((1536,), bf16),
        "cross_attn.to_kv.weight": ((3072, 1024), bf16), "cross_attn.to_kv.bias": ((3072,), bf16),
        "cross_attn.q_rms_norm.gamma": ((12, 128), f32), "cross_attn.k_rms_norm.gamma": ((12, 128), f32),
        "cross_attn.to_out.weight": ((1536, 1536), bf16), "cross_attn.to_out.bias": ((1536,), bf16),
        "mlp.mlp.0.weight": ((8192, 1536), bf16), "mlp.mlp.0.bias": ((8192,), bf16),
        "mlp.mlp.2.weight": ((1536, 8192), bf16), "mlp.mlp.2.bias": ((1536,), bf16),
    }
    for i in range(30):
        table.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    return table


def _convnext(prefix, c):
    f16, f32 = torch.float16, torch.float32
    return {f"{prefix}.norm.weight": ((c,), f32), f"{prefix}.norm.bias": ((c,), f32),
            f"{prefix}.conv.weight": ((c, *K, c), f16), f"{prefix}.conv.bias": ((c,), f16),
            f"{prefix}.mlp.0.weight": ((4 * c, c), f16), f"{prefix}.mlp.0.bias": ((4 * c,), f16),
            f"{prefix}.mlp.2.weight": ((c, 4 * c), f16), f"{prefix}.mlp.2.bias": ((c,), f16)}


def encoder_table():
    """Spec 10.3 (b)."""
    f16, f32 = torch.float16, torch.float32
    table = {"input_layer.weight": ((64, 6), f32), "input_layer.bias": ((64,), f32),
             "to_latent.weight": ((64, 1024), f32), "to_latent.bias": ((64,), f32)}
    channels, counts = [64, 128, 256, 512, 1024], [0, 4, 8, 16, 4]
    for s in range(5):
        for j in range(counts[s]):
            table.update(_convnext(f"blocks.{s}.{j}", channels[s]))
        if s < 4:
            cin, cout, p = channels[s], channels[s + 1], f"blocks.{s}.{counts[s]}"
            table.update({f"{p}.norm1.weight": ((cin,), f32), f"{p}.norm1.bias": ((cin,), f32),
                          f"{p}.conv1.weight": ((cout // 8, *K, cin), f16), f"{p}.conv1.bias": ((cout // 8,), f16),
                          f"{p}.conv2.weight": ((cout, *K, cout), f16), f"{p}.conv2.bias": ((cout,), f16)})
    return table


def decoder_table(out, subdiv):
    """Spec 10.3 (c)."""
    f16, f32 = torch.float16, torch.float32
    table = {"from_latent.weight": ((1024, 32), f32), "from_latent.bias": ((1024,), f32),
             "output_layer.weight": ((out, 64), f32), "output_layer.bias": ((out,), f32)}
    channels, counts = [1024, 512, 256, 128, 64], [4, 16, 8, 4, 0]
    for s in range(5):
        for j in range(counts[s]):
            table.update(_convnext(f"blocks.{s}.{j}", channels[s]))
        if s < 4:
            cin, cout, p = channels[s], channels[s + 1], f"blocks.{s}.{counts[s]}"
            table.update({f"{p}.norm1.weight": ((cin,), f32), f"{p}.norm1.bias": ((cin,), f32),
                          f"{p}.conv1.weight": ((8 * cout, *K, cin), f16), f"{p}.conv1.bias": ((8 * cout,), f16),
                          f"{p}.conv2.weight": ((cout, *K, cout), f16), f"{p}.conv2.bias": ((cout,), f16)})
            if subdiv:
                table.update({f"{p}.to_subdiv.weight": ((8, cin), f16), f"{p}.to_subdiv.bias": ((8,), f16)})
    return table


def ss_decoder_table():
    """Spec 10.3 (d)."""
    f16, f32 = torch.float16, torch.float32
    table = {"input_layer.weight": ((512, 8, *K), f32), "input_layer.bias": ((512,), f32),
             "out_layer.0.weight": ((32,), f32), "out_layer.0.bias": ((32,), f32),
             "out_layer.2.weight": ((1, 32, *K), f32), "out_layer.2.bias": ((1,), f32),
             "blocks.2.conv.weight": ((1024, 512, *K), f16), "blocks.2.conv.bias": ((1024,), f16),
             "blocks.5.conv.weight": ((256, 128, *K), f16), "blocks.5.conv.bias": ((256,), f16)}
    for prefix, c in [("middle_block.0", 512), ("middle_block.1", 512), ("blocks.0", 512), ("blocks.1", 512),
                      ("blocks.3", 128), ("blocks.4", 128), ("blocks.6", 32), ("blocks.7", 32)]:
        for n in ("norm1", "norm2"):
            table.update({f"{prefix}.{n}.weight": ((c,), f32), f"{prefix}.{n}.bias": ((c,), f32)})
        for n in ("conv1", "conv2"):
            table.update({f"{prefix}.{n}.weight": ((c, c, *K), f16), f"{prefix}.{n}.bias": ((c,), f16)})
    return table


EXPECTED_TABLES = {
    "ss_flow_img_dit_1_3B_64_bf16": lambda: flow_table(8, 8),
    "slat_flow_img2shape_dit_1_3B_1024_bf16": lambda: flow_table(32, 32),
    "slat_flow_imgshape2tex_dit_1_3B_1024_bf16": lambda: flow_table(64, 32),
    "shape_enc_next_dc_f16c32_fp16": encoder_table,
    "tex_enc_next_dc_f16c32_fp16": encoder_table,
    "shape_dec_next_dc_f16c32_fp16": lambda: decoder_table(7, True),
    "tex_dec_next_dc_f16c32_fp16": lambda: decoder_table(6, False),
    "ss_dec_conv3d_16l8_fp16": ss_decoder_table,
}
KEY_COUNTS = {"ss_flow_img_dit_1_3B_64_bf16": 640, "shape_enc_next_dc_f16c32_fp16": 284,
              "shape_dec_next_dc_f16c32_fp16": 292, "tex_dec_next_dc_f16c32_fp16": 284,
              "ss_dec_conv3d_16l8_fp16": 74}


@pytest.mark.parametrize("checkpoint", sorted(RELEASED))
def test_released_config_counts_keys_shapes_and_dtypes(checkpoint):
    name, args, count = RELEASED[checkpoint]
    model = build_model(name, args, source=checkpoint, device="meta")
    assert sum(p.numel() for p in model.parameters()) == count
    state = model.state_dict()
    expected = EXPECTED_TABLES[checkpoint]()
    assert set(state) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(state[key].shape) == shape and state[key].dtype == dtype, key
    if checkpoint in KEY_COUNTS:
        assert len(state) == KEY_COUNTS[checkpoint]
    assert not list(model.buffers())  # nothing beyond the checkpoint's keys, nothing left on meta after loading


def test_four_b_total_and_dinov3_count():
    # Spec 6.10: one flow per stage = 3,876,736,584 parameters.
    total = sum(sum(p.numel() for p in build_model(RELEASED[c][0], RELEASED[c][1], device="meta").parameters())
                for c in ("ss_flow_img_dit_1_3B_64_bf16", "slat_flow_img2shape_dit_1_3B_1024_bf16",
                          "slat_flow_imgshape2tex_dit_1_3B_1024_bf16"))
    assert total == 3_876_736_584
    with torch.device("meta"):
        dino = DINOv3ViT(DINOv3Config())
    assert sum(p.numel() for p in dino.parameters()) == 303_129_600
    state = dino.state_dict()
    assert tuple(state["embeddings.register_tokens"].shape) == (1, 4, 1024)
    assert tuple(state["embeddings.patch_embeddings.weight"].shape) == (1024, 3, 16, 16)
    assert "layer.23.attention.k_proj.weight" in state and "layer.23.attention.k_proj.bias" not in state
    assert tuple(state["layer.0.mlp.up_proj.weight"].shape) == (4096, 1024)
    assert len(state) == 5 + 24 * 17 + 2
