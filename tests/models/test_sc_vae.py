"""SC-VAEs against a float64 re-derivation of spec models.md 3-4 and the encoder -> decoder plumbing."""

import pytest
import torch
import torch.nn.functional as F

from omnivox.models import (FlexiDualGridVaeDecoder, FlexiDualGridVaeEncoder, SparseUnetVaeDecoder,
                            SparseUnetVaeEncoder, VaeDecoderConfig)
from omnivox.sparse import SparseTensor

from .helpers import (random_voxels, randomize, relative_error, sparse_from, tiny_decoder_config,
                      tiny_encoder_config, tiny_shape_decoder_config)


# ------------------------------------------------------------------------------ float64 reference (spec 2-4)
def conv_ref(coords, feats, weight, bias):
    """Submanifold conv as a dense Conv3d(padding=1) on a zero-filled grid, read back at the active sites."""
    c = coords.long()
    size = [int(c[:, 0].max()) + 1] + [int(v) + 1 for v in c[:, 1:].amax(0)]
    grid = torch.zeros(size[0], feats.shape[1], *size[1:], dtype=torch.float64)
    grid[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = feats
    out = F.conv3d(grid, weight.double().permute(0, 4, 1, 2, 3), bias.double(), padding=1)
    return out[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


def s2c_ref(coords, feats):
    parents = sorted({(int(b), int(x) // 2, int(y) // 2, int(z) // 2) for b, x, y, z in coords})
    row = {p: i for i, p in enumerate(parents)}
    out = torch.zeros(len(parents), 8, feats.shape[1], dtype=torch.float64)
    for (b, x, y, z), f in zip(coords.tolist(), feats):
        out[row[(b, x // 2, y // 2, z // 2)], x % 2 + 2 * (y % 2) + 4 * (z % 2)] = f
    return torch.tensor(parents, dtype=torch.int32), out.reshape(len(parents), -1)


def c2s_ref(coords, feats, mask):
    slots = feats.reshape(feats.shape[0], 8, -1)
    rows, values = [], []
    for i, (b, x, y, z) in enumerate(coords.tolist()):
        for k in range(8):
            if mask[i, k]:
                rows.append((b, 2 * x + (k & 1), 2 * y + (k >> 1 & 1), 2 * z + (k >> 2 & 1)))
                values.append(slots[i, k])
    return torch.tensor(rows, dtype=torch.int32), torch.stack(values)


def _p(state, key):
    return state[key].double()


def _ln(x, state=None, prefix=None, eps=1e-6):
    w = None if prefix is None else (_p(state, f"{prefix}.weight"), _p(state, f"{prefix}.bias"))
    return F.layer_norm(x, x.shape[-1:], *(w or (None, None)), eps=eps)


def _lin(state, prefix, x):
    return x @ _p(state, f"{prefix}.weight").T + _p(state, f"{prefix}.bias")


def _convnext_ref(s, p, coords, h):
    y = conv_ref(coords, h, s[f"{p}.conv.weight"], s[f"{p}.conv.bias"])
    return h + _lin(s, f"{p}.mlp.2", F.silu(_lin(s, f"{p}.mlp.0", _ln(y, s, f"{p}.norm"))))


def encoder_ref(model, coords, feats):
    s, cfg = model.state_dict(), model.config
    h = _lin(s, "input_layer", feats.double())
    for st, c in enumerate(cfg.model_channels):
        for j in range(cfg.num_blocks[st]):
            h = _convnext_ref(s, f"blocks.{st}.{j}", coords, h)
        if st + 1 < len(cfg.model_channels):
            p, cout = f"blocks.{st}.{cfg.num_blocks[st]}", cfg.model_channels[st + 1]
            y = conv_ref(coords, F.silu(_ln(h, s, f"{p}.norm1")), s[f"{p}.conv1.weight"], s[f"{p}.conv1.bias"])
            coarse, y = s2c_ref(coords, y)
            _, moved = s2c_ref(coords, h)
            y = conv_ref(coarse, F.silu(_ln(y)), s[f"{p}.conv2.weight"], s[f"{p}.conv2.bias"])
            h, coords = y + moved.reshape(len(coarse), cout, -1).mean(-1), coarse
    return coords, _lin(s, "to_latent", _ln(h, eps=1e-5))[:, :cfg.latent_channels]


def decoder_ref(model, coords, z, masks=None):
    """Decoder with predicted subdivisions (``masks`` None) or given per-stage bool masks."""
    s, cfg = model.state_dict(), model.config
    h = _lin(s, "from_latent", z.double())
    for st, c in enumerate(cfg.model_channels):
        for j in range(cfg.num_blocks[st]):
            h = _convnext_ref(s, f"blocks.{st}.{j}", coords, h)
        if st + 1 < len(cfg.model_channels):
            p, cout = f"blocks.{st}.{cfg.num_blocks[st]}", cfg.model_channels[st + 1]
            mask = _lin(s, f"{p}.to_subdiv", h) > 0 if masks is None else masks[st]
            y = conv_ref(coords, F.silu(_ln(h, s, f"{p}.norm1")), s[f"{p}.conv1.weight"], s[f"{p}.conv1.bias"])
            fine, y = c2s_ref(coords, y, mask)
            _, moved = c2s_ref(coords, h, mask)
            y = conv_ref(fine, F.silu(_ln(y)), s[f"{p}.conv2.weight"], s[f"{p}.conv2.bias"])
            h, coords = y + moved.repeat_interleave(8 * cout // c, dim=1), fine
    return coords, _lin(s, "output_layer", _ln(h, eps=1e-5))


# ------------------------------------------------------------------------------------------------ tests
def _input(batch=2, count=70, extent=8, channels=6, seed=0, shuffle=True):
    """Random voxels; rows shuffled within each batch item (only batch-major order is required)."""
    coords = random_voxels(count, extent, batch=batch, seed=seed)
    if shuffle:
        gen = torch.Generator().manual_seed(seed)
        coords = torch.cat([coords[coords[:, 0] == b][torch.randperm(count, generator=gen)] for b in range(batch)])
    return sparse_from(coords, channels, seed=seed + 1)


@pytest.mark.parametrize("use_fp16, tolerance", [(False, 1e-5), (True, 1e-2)])
def test_encoder_matches_float64_reference(use_fp16, tolerance):
    model = randomize(SparseUnetVaeEncoder(tiny_encoder_config(use_fp16=use_fp16)), seed=1, std=0.2)
    x = _input()
    with torch.no_grad():
        out = model(x)
    coords, mean = encoder_ref(model, x.coords, x.feats)
    assert torch.equal(out.mean.coords, coords) and out.mean.feats.dtype == torch.float32
    assert relative_error(out.mean.feats, mean) < tolerance
    assert out.logvar.shape == out.mean.feats.shape and len(out.downsample_maps) == 2


def test_shape_decoder_matches_float64_reference_and_heads():
    model = randomize(FlexiDualGridVaeDecoder(tiny_shape_decoder_config()), seed=2, std=0.25)
    z = sparse_from(random_voxels(5, 3, batch=2, seed=3), 4, seed=4)
    with torch.no_grad():
        out = model(z)
    coords, raw = decoder_ref(model, z.coords, z.feats)
    assert torch.equal(out.coords, coords) and len(out.subdivision_logits) == 2
    margin = model.config.voxel_margin
    assert relative_error(out.vertices, (1 + 2 * margin) * torch.sigmoid(raw[:, :3]) - margin) < 1e-5
    assert torch.equal(out.intersected, raw[:, 3:6] > 0) and out.intersected.dtype == torch.bool
    assert relative_error(out.split_weights, F.softplus(raw[:, 6:7])) < 1e-5
    assert bool((out.vertices > -margin).all() and (out.vertices < 1 + margin).all())
    assert bool((out.split_weights > 0).all()) and out.resolution == 16
    with torch.no_grad():
        again = model(z, resolution=32)
    assert again.resolution == 32 and torch.equal(again.vertices, out.vertices)
    assert model.resolution == 16  # a call argument: the model is unchanged
    with pytest.warns(DeprecationWarning, match="resolution="):
        model.set_resolution(32)  # the deprecated setter still sets the default, for one release
    with torch.no_grad():
        assert model(z).resolution == 32


def test_texture_decoder_follows_shape_decoder_subdivisions():
    shape_decoder = randomize(FlexiDualGridVaeDecoder(tiny_shape_decoder_config()), seed=5)
    texture_decoder = randomize(SparseUnetVaeDecoder(tiny_decoder_config()), seed=6, std=0.2)
    z = sparse_from(random_voxels(6, 3, batch=2, seed=7), 4, seed=8)
    texture_z = z.replace(torch.randn(z.feats.shape, generator=torch.Generator().manual_seed(9)))
    with torch.no_grad():
        shape = shape_decoder(z)
        pbr = texture_decoder(texture_z, guide_subdivisions=shape.subdivision_logits)
    assert torch.equal(pbr.voxels.coords, shape.coords) and pbr.subdivision_logits == ()
    masks = [logits.feats > 0 for logits in shape.subdivision_logits]
    coords, expected = decoder_ref(texture_decoder, z.coords, texture_z.feats, masks)
    assert torch.equal(coords, shape.coords) and relative_error(pbr.voxels.feats, expected) < 1e-5


def test_upsample_returns_the_voxels_of_each_stage():
    model = randomize(FlexiDualGridVaeDecoder(tiny_shape_decoder_config()), seed=10)
    z = sparse_from(random_voxels(6, 3, seed=11), 4, seed=12)
    with torch.no_grad():
        full = model(z)
        assert torch.equal(model.upsample(z, 0), z.coords)
        stage1 = model.upsample(z, 1)
        assert torch.equal(stage1, full.subdivision_logits[1].coords)
        assert torch.equal(model.upsample(z, 2), full.coords)
    parents, mask = z.coords, full.subdivision_logits[0].feats > 0
    assert torch.equal(stage1, c2s_ref(parents, torch.zeros(len(parents), 8, dtype=torch.float64), mask)[0])


def test_decoding_through_encoder_maps_restores_the_input_voxels_in_order():
    encoder = randomize(FlexiDualGridVaeEncoder(tiny_encoder_config()), seed=13)
    decoder = randomize(SparseUnetVaeDecoder(tiny_decoder_config()), seed=14)
    x = _input(channels=3, seed=15)
    flags = x.replace(torch.rand(x.feats.shape, generator=torch.Generator().manual_seed(16)) > 0.5)
    with torch.no_grad():
        latent = encoder(x, flags)
        out = decoder(latent.mean, downsample_maps=latent.downsample_maps)
    assert torch.equal(out.voxels.coords, x.coords)  # the shuffled input order, not a sorted one
    assert out.voxels.feats.shape == (x.num_voxels, 6)
    # the same thing written with explicit masks: each level's children are exactly the encoder's voxels
    levels = [m.fine_coords for m in latent.downsample_maps][::-1]
    parents = latent.mean.coords
    masks = []
    for fine in levels:
        lookup = {tuple(p): i for i, p in enumerate(parents.tolist())}
        mask = torch.zeros(len(parents), 8, dtype=torch.bool)
        for b, xx, yy, zz in fine.tolist():
            mask[lookup[(b, xx // 2, yy // 2, zz // 2)], xx % 2 + 2 * (yy % 2) + 4 * (zz % 2)] = True
        masks.append(mask)
        parents = c2s_ref(parents, torch.zeros(len(parents), 8, dtype=torch.float64), mask)[0]
    coords, expected = decoder_ref(decoder, latent.mean.coords, latent.mean.feats, masks)
    order = {tuple(c): i for i, c in enumerate(coords.tolist())}
    permutation = torch.tensor([order[tuple(c)] for c in x.coords.tolist()])
    assert relative_error(out.voxels.feats, expected[permutation]) < 1e-5


def test_flexi_encoder_features_are_centred_inputs():
    shape_encoder = randomize(FlexiDualGridVaeEncoder(tiny_encoder_config()), seed=17)
    plain = SparseUnetVaeEncoder(tiny_encoder_config())
    plain.load_state_dict(shape_encoder.state_dict())
    x = _input(channels=3, seed=18)
    flags = x.replace(x.feats > 0)
    with torch.no_grad():
        a = shape_encoder(x, flags).mean.feats
        b = plain(x.replace(torch.cat([x.feats - 0.5, flags.feats.float() - 0.5], 1))).mean.feats
    assert torch.equal(a, b)


def test_chunked_rows_match_and_sampling_is_reproducible():
    encoder = randomize(SparseUnetVaeEncoder(tiny_encoder_config()), seed=19)
    decoder = randomize(FlexiDualGridVaeDecoder(tiny_shape_decoder_config()), seed=20)
    x = _input(seed=21)
    with torch.no_grad():
        full, chunked = encoder(x), encoder(x, chunk_rows=7)
        assert relative_error(chunked.mean.feats, full.mean.feats) < 1e-6
        a, b = decoder(full.mean), decoder(full.mean, chunk_rows=5)
    assert torch.equal(a.coords, b.coords) and relative_error(b.vertices, a.vertices) < 1e-6
    s1 = full.sample(torch.Generator().manual_seed(0)).feats
    s2 = full.sample(torch.Generator().manual_seed(0)).feats
    assert torch.equal(s1, s2) and not torch.equal(s1, full.mean.feats)


def test_blocks_run_in_fp16_with_fp32_norms_and_ends():
    model = SparseUnetVaeDecoder(tiny_decoder_config(use_fp16=True, pred_subdiv=True))
    for name, p in model.named_parameters():
        half = name.startswith("blocks.") and ".norm" not in name
        assert p.dtype == (torch.float16 if half else torch.float32), name


def test_decoder_guide_errors_are_clear():
    texture = SparseUnetVaeDecoder(tiny_decoder_config())
    shape = FlexiDualGridVaeDecoder(tiny_shape_decoder_config())
    encoder = SparseUnetVaeEncoder(tiny_encoder_config())
    z = sparse_from(random_voxels(4, 3, seed=22), 4)
    maps = encoder(_input(batch=1)).downsample_maps
    with pytest.raises(ValueError, match="pred_subdiv=False"):
        texture(z)
    with pytest.raises(ValueError, match="not both"):
        texture(z, guide_subdivisions=[z, z], downsample_maps=maps)
    with pytest.raises(ValueError, match="need 2 guides"):
        texture(z, guide_subdivisions=[z.replace(torch.ones(4, 8))])
    with pytest.raises(ValueError, match=r"guide_subdivisions\[0\] must be \(N, 8\) logits"):
        texture(z, guide_subdivisions=[z, z])
    with pytest.raises(ValueError, match="downsample_map"):
        texture(z, downsample_maps=maps)  # maps of another voxel set
    with pytest.raises(ValueError, match="upsample needs"):
        texture.upsample(z, 1)
    with pytest.raises(ValueError, match=r"upsample_times must be an int in \[0, 2\]"):
        shape.upsample(z, 3)
    with pytest.raises(ValueError, match=r"z.feats must be \(N, 4\)"):
        shape(sparse_from(z.coords, 5))
    with pytest.raises(ValueError, match="resolution must be a positive int"):
        shape(z, resolution=0)
    with pytest.raises(ValueError, match="out_channels=7 and pred_subdiv=True"):
        tiny_shape_decoder_config(pred_subdiv=False)
    with pytest.raises(ValueError, match="block_type must be 3"):
        VaeDecoderConfig(model_channels=(32, 16, 8), num_blocks=(1, 1, 0), block_type=["SparseResBlock3d"] * 3)
    flexi = FlexiDualGridVaeEncoder(tiny_encoder_config())
    x = _input(channels=3)
    other = SparseTensor.from_coords(x.coords.flip(0).contiguous()[torch.argsort(x.coords.flip(0)[:, 0],
                                                                                 stable=True)], x.feats > 0)
    with pytest.raises(ValueError, match="same coords"):
        flexi(x, other)
    with pytest.raises(ValueError, match=r"intersected.feats must be \(N, 3\) bool"):
        flexi(x, x)
