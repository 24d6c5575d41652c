"""SC-VAE training on real O-Voxels: teacher forcing, checkpointing, overfitting, the trainers, checkpoints."""

from pathlib import Path

import numpy as np
import pytest
import torch

from omnivox.models import (
    FlexiDualGridDecoderConfig,
    FlexiDualGridVaeDecoder,
    FlexiDualGridVaeEncoder,
    SparseUnetVaeDecoder,
    SparseUnetVaeEncoder,
    VaeDecoderConfig,
    VaeEncoderConfig,
    from_pretrained,
)
from omnivox.sparse.tensor import SparseTensor
from omnivox.train.losses import sample_loss_cameras
from omnivox.train.vae_trainers import (
    MaterialVaeLossConfig,
    PbrVaeTrainer,
    PbrVaeTrainerConfig,
    ShapeVaeLossConfig,
    ShapeVaeTrainer,
    ShapeVaeTrainerConfig,
    child_mask,
    decode_teacher_forced,
    encode,
    material_render_losses,
    material_vae_losses,
    shape_encoder_input,
    shape_vae_losses,
)
from tests.train.tolerances import reordered_sum_tolerance

RESOLUTION = 16
ASSETS = ("mesh/spot/spot_triangulated.obj", "gltf/Avocado/Avocado.gltf", "gltf/Fox.glb")


@pytest.fixture(scope="module")
def samples():
    from tests.conftest import _assets_dir

    return load_samples(Path(_assets_dir()), RESOLUTION)


def load_samples(assets: Path, resolution: int, names=ASSETS) -> list:
    """Real assets as O-Voxel records: shape and material channels plus the normalised mesh."""
    from omnivox.assets import load_asset
    from omnivox.ovoxel.convert import scene_to_ovoxel

    out = []
    for name in names:
        scene = load_asset(assets / name).normalized()
        record = scene_to_ovoxel(scene, resolution)
        bits = record["intersected"].reshape(-1).astype(np.int64)
        flags = np.stack([(bits >> a) & 1 for a in range(3)], axis=1).astype(bool)
        pbr = np.concatenate([record[k].reshape(len(bits), -1) for k in ("base_color", "metallic", "roughness",
                                                                         "alpha")], axis=1)
        out.append({
            "coords": torch.from_numpy(record["coords"].astype(np.int32)),
            "vertices": torch.from_numpy(record["vertices"].astype(np.float32) / 255),
            "intersected": torch.from_numpy(flags),
            "x": torch.from_numpy(pbr.astype(np.float32) / 255 * 2 - 1),
            "mesh": {"vertices": torch.from_numpy(scene.vertices).float(),
                     "faces": torch.from_numpy(scene.faces).long()},
        })
    return out


def _shape_batch(samples):
    vertices = SparseTensor.from_batch_list([s["coords"] for s in samples], [s["vertices"] for s in samples])
    return {"vertices": vertices, "intersected": vertices.replace(torch.cat([s["intersected"] for s in samples])),
            "mesh": [s["mesh"] for s in samples]}


def _material_batch(samples):
    return {"x": SparseTensor.from_batch_list([s["coords"] for s in samples], [s["x"] for s in samples]),
            "mesh": [s["mesh"] for s in samples]}


ENC = {"model_channels": (16, 32, 64), "num_blocks": (0, 1, 1), "latent_channels": 8, "use_fp16": False}
DEC = {"model_channels": (64, 32, 16), "num_blocks": (1, 1, 0), "latent_channels": 8, "use_fp16": False}


def _shape_vae(seed=0):
    torch.manual_seed(seed)
    return (FlexiDualGridVaeEncoder(VaeEncoderConfig(**ENC)),
            FlexiDualGridVaeDecoder(FlexiDualGridDecoderConfig(**DEC, resolution=RESOLUTION)))


def _material_vae(seed=0):
    torch.manual_seed(seed)
    return SparseUnetVaeEncoder(VaeEncoderConfig(**ENC)), SparseUnetVaeDecoder(VaeDecoderConfig(**DEC))


# ------------------------------------------------------------------------------------ teacher forcing
def test_child_masks_are_the_true_subdivisions(samples):
    encoder, _ = _shape_vae()
    batch = _shape_batch(samples)
    posterior = encode(encoder, shape_encoder_input(batch["vertices"], batch["intersected"]))
    fine = batch["vertices"].coords
    for down_map in posterior.downsample_maps:
        # Independent computation: children of each parent from the fine coordinates alone.
        expected = {}
        for b, x, y, z in fine.tolist():
            expected.setdefault((b, x // 2, y // 2, z // 2), set()).add(x % 2 + 2 * (y % 2) + 4 * (z % 2))
        mask = child_mask(down_map)
        got = {tuple(c): set(torch.nonzero(m).flatten().tolist())
               for c, m in zip(down_map.coarse_coords.tolist(), mask)}
        assert got == expected
        fine = down_map.coarse_coords


def test_training_passes_equal_the_networks_own_forward(samples):
    batch = _material_batch(samples[:2])
    encoder, decoder = _material_vae()
    with torch.no_grad():
        ours = encode(encoder, batch["x"])
        theirs = encoder(batch["x"])
        assert torch.equal(ours.mean.feats, theirs.mean.feats) and torch.equal(ours.logvar, theirs.logvar)
        decoded = decode_teacher_forced(decoder, ours.mean, ours.downsample_maps)
        reference = decoder(ours.mean, downsample_maps=ours.downsample_maps)
        assert torch.equal(decoded.voxels.coords, batch["x"].coords)  # the input voxels, in input order
        assert torch.allclose(decoded.voxels.feats, reference.voxels.feats, atol=1e-6)
        assert decoded.subdivisions == []

        shape = _shape_batch(samples[:2])
        shape_encoder, shape_decoder = _shape_vae()
        ours = encode(shape_encoder, shape_encoder_input(shape["vertices"], shape["intersected"]))
        theirs = shape_encoder(shape["vertices"], shape["intersected"])
        assert torch.equal(ours.mean.feats, theirs.mean.feats)
        levels = decode_teacher_forced(shape_decoder, ours.mean, ours.downsample_maps).subdivisions
        # The coarsest level's logits are what the free-running decoder predicts from the same latent.
        free = shape_decoder(ours.mean)
        assert torch.allclose(levels[0][0], free.subdivision_logits[0].feats, atol=1e-6)
        assert [lg.shape[0] for lg, _ in levels] == [m.coarse_coords.shape[0] for m in ours.downsample_maps[::-1]]


def test_activation_checkpointing_gives_the_same_loss_and_gradients(samples):
    batch = _shape_batch(samples[:2])
    results = []
    for checkpointed in (False, True):
        encoder, decoder = _shape_vae(seed=1)
        loss, _ = shape_vae_losses(encoder, decoder, batch, generator=torch.Generator().manual_seed(3),
                                   checkpointed=checkpointed)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in [*encoder.parameters(), *decoder.parameters()]]))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------------------- overfitting
def _train(loss_fn, params, steps, lr=3e-3):
    optimizer = torch.optim.Adam(params, lr=lr)
    history = []
    for step in range(steps):
        loss, terms = loss_fn(torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
    return history


def test_shape_vae_overfits_real_assets(samples):
    """30 Adam steps on 3 real assets at 16^3 (direct + KL terms): the loss falls at least 4x."""
    batch = _shape_batch(samples)
    encoder, decoder = _shape_vae()
    config = ShapeVaeLossConfig(lambda_render=0.0)
    history = _train(lambda g: shape_vae_losses(encoder, decoder, batch, config, generator=g),
                     [*encoder.parameters(), *decoder.parameters()], steps=30)
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"] / 4, (first, last)
    for key in ("direct/intersected", "direct/vertice", "bce_sub0", "bce_sub1"):
        assert last[key] < first[key], key


def test_material_vae_overfits_real_assets(samples):
    """40 Adam steps on the PBR voxels of 3 textured assets: the L1 reconstruction falls at least 3x."""
    batch = _material_batch(samples)
    encoder, decoder = _material_vae()
    history = _train(lambda g: material_vae_losses(encoder, decoder, batch, generator=g),
                     [*encoder.parameters(), *decoder.parameters()], steps=40)
    assert history[-1]["rec"] < history[0]["rec"] / 3, (history[0], history[-1])


def test_material_render_term_reaches_the_decoder(samples):
    batch = _material_batch(samples[:2])
    encoder, decoder = _material_vae()
    config = MaterialVaeLossConfig(lambda_render=1.0, render_resolution=24, radius_range=(2.0, 3.0))
    _, terms = material_vae_losses(encoder, decoder, batch, config, resolution=RESOLUTION,
                                   generator=torch.Generator().manual_seed(0))
    assert {"render/bc/ssim", "render/mra/ssim"} <= set(terms)
    assert all(0 < float(terms[k].detach()) < 2 for k in ("render/bc/ssim", "render/mra/ssim"))
    terms["render/bc/ssim"].backward()
    grad = decoder.output_layer.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and float(grad[:3].abs().sum()) > 0
    assert float(grad[3:].abs().sum()) == 0  # base colour only depends on the first 3 outputs

    # Decision (docstring of material_render_losses): the target image samples the ground-truth voxels, so a
    # perfect reconstruction scores exactly zero (a textured-mesh target would not).
    x = batch["x"]
    meshes = [(m["vertices"], m["faces"]) for m in batch["mesh"]]
    cameras = sample_loss_cameras(2, torch.Generator().manual_seed(1), (2.0, 3.0))
    total, terms = material_render_losses(x.coords, x.feats, x.feats, meshes, cameras, RESOLUTION, config)
    assert float(total) == pytest.approx(0.0, abs=1e-6)
    noisy = x.feats + 0.3 * torch.randn(x.feats.shape, generator=torch.Generator().manual_seed(2))
    total, _ = material_render_losses(x.coords, noisy, x.feats, meshes, cameras, RESOLUTION, config)
    assert float(total) > 0.01


# -------------------------------------------------------------------------------------- the trainers
class _InMemory(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _trainer_items(samples, keys):
    out = []
    for s in samples:
        coords = torch.cat([torch.zeros(len(s["coords"]), 1, dtype=torch.int32), s["coords"]], 1)
        item = {k: SparseTensor.from_coords(coords, s[k]) for k in keys}
        item["mesh"] = s["mesh"]
        out.append(item)
    return out


def test_shape_trainer_runs_with_render_terms_and_its_checkpoint_loads(samples, tmp_path):
    encoder, decoder = _shape_vae()
    config = ShapeVaeTrainerConfig(max_steps=2, batch_size=2, render_resolution=24, radius_range=(2.0, 3.0),
                                   optimizer={"name": "AdamW", "args": {"lr": 1e-3}}, mix_precision_mode=None,
                                   i_log=1, activation_checkpointing=True, num_workers=0)
    trainer = ShapeVaeTrainer({"encoder": encoder, "decoder": decoder},
                              _InMemory(_trainer_items(samples, ("vertices", "intersected"))), config, tmp_path,
                              device="cpu", tensorboard=False, progress=False)
    assert trainer.lpips is None  # no local weights configured: the LPIPS term is dropped
    trainer.run()
    log = (tmp_path / "log.txt").read_text()
    for key in ("render/mask", "render/depth", "render/normal/ssim", "bce_sub1", "direct/vertice"):
        assert key in log, key
    # Snapshot: normal maps, rows ground truth / teacher-forced / free reconstruction, one column per sample.
    image = trainer.snapshot(trainer.step)["normals"]
    assert image.shape == (3 * 256, 3 * 256, 3) and image.dtype == np.uint8  # 3 samples (< snapshot_batch_size)
    truth = image[:256].astype(float)
    assert (np.abs(truth - 128) > 20).any(axis=-1).mean() > 0.02  # the ground-truth meshes are visible
    assert not np.array_equal(image[256:512], truth.astype(np.uint8))  # an untrained VAE is not the truth
    # The trainer writes the official layout; it loads back with from_pretrained into the same network.
    loaded = from_pretrained(tmp_path / "ckpts" / "decoder_step0000002")
    assert isinstance(loaded, FlexiDualGridVaeDecoder) and loaded.resolution == RESOLUTION
    for (name, a), (_, b) in zip(decoder.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    batch = _shape_batch(samples[:1])
    with torch.no_grad():
        z = encode(from_pretrained(tmp_path / "ckpts" / "encoder_step0000002"),
                   shape_encoder_input(batch["vertices"], batch["intersected"])).mean
        out_loaded, out_live = loaded(z), decoder.eval()(z)
    assert torch.equal(out_loaded.coords, out_live.coords) and torch.equal(out_loaded.vertices, out_live.vertices)


def test_pbr_trainer_runs_and_lowers_its_loss(samples, tmp_path):
    encoder, decoder = _material_vae()
    config = PbrVaeTrainerConfig(max_steps=12, batch_size=3, optimizer={"name": "Adam", "args": {"lr": 3e-3}},
                                 mix_precision_mode=None, i_log=1, num_workers=0)
    trainer = PbrVaeTrainer({"encoder": encoder, "decoder": decoder}, _InMemory(_trainer_items(samples, ("x",))),
                            config, tmp_path, device="cpu", tensorboard=False, progress=False)
    trainer.run()
    import json
    lines = (tmp_path / "log.txt").read_text().splitlines()
    losses = [json.loads(line.split(":", 1)[1])["loss"] for line in lines]
    assert len(losses) == 12 and losses[-1] < losses[0] / 2, losses
    assert isinstance(from_pretrained(tmp_path / "ckpts" / "encoder_step0000012"), SparseUnetVaeEncoder)


def test_experiment_file_builds_a_shape_trainer_whose_checkpoint_loads_at_release_dtypes(samples, tmp_path):
    """The experiment JSON path (`omnivox.train.build`): released-style args (``use_fp16``), float32 training,
    checkpoints written with the file's args, so `from_pretrained` gives the fp16-block network."""
    from omnivox.train.build import build_trainer
    from omnivox.train.config import experiment_from_dict

    experiment = experiment_from_dict({
        "models": {"encoder": {"name": "FlexiDualGridVaeEncoder", "args": {**ENC, "use_fp16": True}},
                   "decoder": {"name": "FlexiDualGridVaeDecoder",
                               "args": {**DEC, "use_fp16": True, "resolution": RESOLUTION}}},
        "dataset": {"name": "FlexiDualGridDataset", "args": {"resolution": RESOLUTION}},
        "trainer": {"name": "ShapeVaeTrainer", "args": {
            "max_steps": 2, "batch_size": 3, "lambda_render": 0, "mix_precision_mode": None, "num_workers": 0,
            "optimizer": {"name": "AdamW", "args": {"lr": 1e-3, "weight_decay": 0.0}}}},
    })
    dataset = _InMemory(_trainer_items(samples, ("vertices", "intersected")))
    trainer = build_trainer(experiment, tmp_path, dataset, device="cpu", tensorboard=False, progress=False)
    assert isinstance(trainer, ShapeVaeTrainer)
    trainer.run()
    loaded = from_pretrained(tmp_path / "ckpts" / "decoder_step0000002")
    assert loaded.config.use_fp16 and loaded.blocks[0][0].conv.weight.dtype == torch.float16
    trained = trainer.unwrap("decoder").blocks[0][0].conv.weight
    assert torch.equal(loaded.blocks[0][0].conv.weight, trained.detach().half())


def test_trainers_reject_missing_models(samples, tmp_path):
    encoder, _ = _material_vae()
    config = PbrVaeTrainerConfig(max_steps=1, batch_size=1)
    with pytest.raises(ValueError, match="'encoder' and 'decoder'"):
        PbrVaeTrainer({"encoder": encoder}, _InMemory([]), config, tmp_path, device="cpu")


# ------------------------------------------------------------------------------------------------ DDP
def _ddp_worker(rank: int, port: int, assets: str, out: str) -> None:
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        samples = load_samples(Path(assets), RESOLUTION, names=ASSETS[:2])
        encoder, decoder = _shape_vae()
        config = ShapeVaeLossConfig(lambda_render=0.0)
        # The wrappers must outlive backward (their reducers do the all-reduce), as the trainer keeps them.
        wrapped = DistributedDataParallel(encoder), DistributedDataParallel(decoder)
        loss, _ = shape_vae_losses(*wrapped, _shape_batch([samples[rank]]), config,
                                   generator=torch.Generator().manual_seed(rank))
        loss.backward()
        torch.save([p.grad for p in [*encoder.parameters(), *decoder.parameters()]], f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_synchronises_the_teacher_forced_pass(samples, tmp_path):
    """The losses run the networks through ``call_as_forward``, so DDP's gradient all-reduce still happens: two
    processes with one sample each end with the mean of the two single-process gradients."""
    import socket

    import torch.multiprocessing as mp

    from tests.conftest import _assets_dir

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(_assets_dir()), str(tmp_path)), nprocs=2)
    grads = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    config = ShapeVaeLossConfig(lambda_render=0.0)
    # Each process's gradient, made here with the workers' arithmetic (one intra-op thread), halved as DDP does.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        terms = []
        for rank in range(2):
            encoder, decoder = _shape_vae()
            loss, _ = shape_vae_losses(encoder, decoder, _shape_batch([samples[rank]]), config,
                                       generator=torch.Generator().manual_seed(rank))
            loss.backward()
            terms.append([p.grad / 2 for p in [*encoder.parameters(), *decoder.parameters()]])
    finally:
        torch.set_num_threads(threads)
    for a, b, t0, t1 in zip(grads[0], grads[1], *terms, strict=True):
        assert torch.equal(a, b)  # both processes step with the same gradient
        # The all-reduce adds the same two terms, perhaps in another order: the derived bound, not a guess.
        tolerance = reordered_sum_tolerance(t0.abs() + t1.abs(), 2, torch.float32)
        assert ((a - (t0 + t1)).abs() <= tolerance).all()
        assert ((2 * a - (t0 + t1)).abs() > tolerance).any() or not a.any()  # a missing average would fail it
