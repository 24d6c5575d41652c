"""Checkpoint layout (NAME.json + NAME.safetensors), strict loading, dtype casting and round trips."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from omnivox.models import (MODEL_CLASSES, FlexiDualGridVaeDecoder, FlexiDualGridVaeEncoder, SLatFlowModel,
                            SparseStructureDecoder, SparseStructureFlowModel, SparseUnetVaeDecoder,
                            SparseUnetVaeEncoder, build_model, from_pretrained, save_pretrained)
from omnivox.sparse import SparseTensor

from .helpers import (random_voxels, randomize, sparse_from, tiny_decoder_config, tiny_encoder_config,
                      tiny_flow_config, tiny_shape_decoder_config, tiny_ss_decoder_config)


def _run(model, seed=0):
    """A deterministic forward pass of any model class on small random inputs; returns a list of tensors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if isinstance(model, SparseStructureFlowModel):
            cfg = model.config
            r = cfg.resolution
            x = torch.randn(1, cfg.in_channels, r, r, r, generator=gen)
            return [model(x, torch.tensor([400.0]), torch.randn(1, 3, cfg.cond_channels, generator=gen))]
        if isinstance(model, SLatFlowModel):
            cfg = model.config
            x = sparse_from(random_voxels(12, 6, seed=seed), cfg.in_channels, seed=seed)
            return [model(x, torch.tensor([400.0]), torch.randn(1, 3, cfg.cond_channels, generator=gen)).feats]
        if isinstance(model, FlexiDualGridVaeEncoder):
            coords = random_voxels(60, 8, seed=seed)
            verts = SparseTensor.from_coords(coords, torch.rand(len(coords), 3, generator=gen))
            flags = verts.replace(torch.rand(len(coords), 3, generator=gen) > 0.5)
            out = model(verts, flags)
            return [out.mean.feats, out.logvar]
        if isinstance(model, SparseUnetVaeEncoder):
            out = model(sparse_from(random_voxels(60, 8, seed=seed), 6, seed=seed))
            return [out.mean.feats, out.logvar]
        if isinstance(model, FlexiDualGridVaeDecoder):
            out = model(sparse_from(random_voxels(6, 3, seed=seed), 4, seed=seed))
            return [out.vertices, out.split_weights, out.intersected] + [s.feats for s in out.subdivision_logits]
        if isinstance(model, SparseUnetVaeDecoder):
            z = sparse_from(random_voxels(6, 3, seed=seed), 4, seed=seed)
            guide = [z.replace(torch.randn(z.num_voxels, 8, generator=gen))]
            guide.append(SparseTensor.from_coords(_children(z.coords, guide[0].feats > 0),
                                                  torch.randn(int((guide[0].feats > 0).sum()), 8, generator=gen)))
            return [model(z, guide_subdivisions=guide).voxels.feats]
        if isinstance(model, SparseStructureDecoder):
            return [model(torch.randn(1, model.config.latent_channels, 4, 4, 4, generator=gen))]
    raise AssertionError(type(model))


def _children(coords, mask):
    parent, child = torch.nonzero(mask, as_tuple=True)
    p, k = coords[parent], child.int()
    return torch.stack([p[:, 0], 2 * p[:, 1] + (k & 1), 2 * p[:, 2] + ((k >> 1) & 1),
                        2 * p[:, 3] + ((k >> 2) & 1)], 1)


TINY_MODELS = {
    "SparseStructureFlowModel": lambda: SparseStructureFlowModel(tiny_flow_config(dtype="bfloat16")),
    "SLatFlowModel": lambda: SLatFlowModel(tiny_flow_config(in_channels=16, out_channels=8, dtype="bfloat16")),
    "FlexiDualGridVaeEncoder": lambda: FlexiDualGridVaeEncoder(tiny_encoder_config(use_fp16=True)),
    "SparseUnetVaeEncoder": lambda: SparseUnetVaeEncoder(tiny_encoder_config()),
    "FlexiDualGridVaeDecoder": lambda: FlexiDualGridVaeDecoder(tiny_shape_decoder_config(use_fp16=True)),
    "SparseUnetVaeDecoder": lambda: SparseUnetVaeDecoder(tiny_decoder_config()),
    "SparseStructureDecoder": lambda: SparseStructureDecoder(tiny_ss_decoder_config(use_fp16=True)),
}


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_save_load_round_trip_is_bit_identical(tmp_path, name):
    model = randomize(TINY_MODELS[name](), seed=3).eval()
    json_path, weights_path = save_pretrained(model, tmp_path / "ckpts" / "tiny_model")
    data = json.loads(json_path.read_text())
    assert data["name"] == name and isinstance(data["args"], dict)
    assert weights_path.name == "tiny_model.safetensors"
    loaded = from_pretrained(tmp_path / "ckpts" / "tiny_model.json")
    assert type(loaded) is type(model) and not loaded.training
    for key, value in model.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == value.dtype and torch.equal(got, value), key
    for a, b in zip(_run(model), _run(loaded)):
        assert torch.equal(a, b)


def test_every_json_name_is_buildable_and_elastic_is_the_sparse_flow():
    for name in MODEL_CLASSES:
        assert build_model(name, {}, device="meta") is not None
    assert MODEL_CLASSES["ElasticSLatFlowModel"] is SLatFlowModel


def test_official_json_args_are_accepted(tmp_path):
    # The released VAE JSONs carry block_args with use_checkpoint flags, the DiTs use_checkpoint: ignored.
    model = randomize(FlexiDualGridVaeDecoder(tiny_shape_decoder_config()))
    save_pretrained(model, tmp_path / "dec")
    data = json.loads((tmp_path / "dec.json").read_text())
    data["args"]["block_args"] = [{"use_checkpoint": True}] * 5
    data["args"]["use_checkpoint"] = True
    data["args"]["block_type"] = ["SparseConvNeXtBlock3d"] * 3
    (tmp_path / "dec.json").write_text(json.dumps(data))
    loaded = from_pretrained(tmp_path / "dec")
    assert loaded.resolution == 16 and torch.equal(_run(loaded)[0], _run(model)[0])


def test_tensors_are_cast_to_their_runtime_dtype(tmp_path):
    # Official files store ~2 bytes per parameter; every tensor goes to the dtype of its parameter.
    model = randomize(SparseStructureFlowModel(tiny_flow_config(dtype="bfloat16")))
    save_pretrained(model, tmp_path / "flow")
    state = load_file(str(tmp_path / "flow.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(tmp_path / "flow.safetensors"))
    loaded = from_pretrained(tmp_path / "flow")
    for key, param in loaded.state_dict().items():
        assert param.dtype == model.state_dict()[key].dtype, key
        assert torch.equal(param, state[key].to(torch.bfloat16).to(param.dtype)), key
    as_fp32 = from_pretrained(tmp_path / "flow", config_overrides={"dtype": "float32"})
    assert all(p.dtype == torch.float32 for p in as_fp32.parameters())


def test_rope_phases_in_a_file_is_ignored(tmp_path):
    model = randomize(SparseStructureFlowModel(tiny_flow_config()))
    save_pretrained(model, tmp_path / "flow")
    state = load_file(str(tmp_path / "flow.safetensors"))
    state["rope_phases"] = torch.zeros(64, 8)
    save_file(state, str(tmp_path / "flow.safetensors"))
    assert torch.equal(_run(from_pretrained(tmp_path / "flow"))[0], _run(model)[0])


def _corrupt(tmp_path, edit):
    model = SparseStructureDecoder(tiny_ss_decoder_config())
    save_pretrained(model, tmp_path / "ss")
    path = tmp_path / "ss.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))
    return tmp_path / "ss"


def test_missing_key_error_names_key_file_and_shape(tmp_path):
    stem = _corrupt(tmp_path, lambda s: s.pop("out_layer.2.weight"))
    with pytest.raises(ValueError, match=r"ss\.safetensors(.|\n)*missing key 'out_layer\.2\.weight' "
                                         r"\(expected shape \[1, 4, 3, 3, 3\]\)"):
        from_pretrained(stem)


def test_unexpected_and_misshaped_keys_are_listed(tmp_path):
    def edit(state):
        state["blocks.9.conv1.weight"] = torch.zeros(2)
        state["input_layer.bias"] = torch.zeros(3)
    stem = _corrupt(tmp_path, edit)
    with pytest.raises(ValueError) as info:
        from_pretrained(stem)
    message = str(info.value)
    assert "unexpected key 'blocks.9.conv1.weight'" in message
    assert "key 'input_layer.bias' has shape [3], expected [16]" in message
    assert "ss.safetensors" in message and "2 problems" in message


def test_lfs_pointer_is_detected(tmp_path):
    save_pretrained(SparseStructureDecoder(tiny_ss_decoder_config()), tmp_path / "ss")
    (tmp_path / "ss.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 147\n")
    with pytest.raises(ValueError, match="Git LFS pointer"):
        from_pretrained(tmp_path / "ss")


def test_other_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.json"):
        from_pretrained(tmp_path / "nothing")
    save_pretrained(SparseStructureDecoder(tiny_ss_decoder_config()), tmp_path / "ss")
    (tmp_path / "ss.json").write_text(json.dumps({"name": "SparseStructureVae", "args": {}}))
    with pytest.raises(ValueError, match="unknown model name 'SparseStructureVae'; known names: "
                                         "SparseStructureFlowModel"):
        from_pretrained(tmp_path / "ss")
    (tmp_path / "ss.json").write_text(json.dumps({"name": "SparseStructureDecoder", "args": {"norm_type": "group"}}))
    with pytest.raises(ValueError, match=r"ss\.json: invalid SparseStructureDecoderConfig: norm_type='group'"):
        from_pretrained(tmp_path / "ss")
    (tmp_path / "ss.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00garbage")
    (tmp_path / "ss.json").write_text(json.dumps({"name": "SparseStructureDecoder", "args": {}}))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        from_pretrained(tmp_path / "ss")
    with pytest.raises(TypeError, match="not a checkpoint class"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "linear")
