"""Shape SC-VAE training on the GPU: throughput of the released architecture at 256, and a short real run.

    python bench/bench_train_vae.py prepare --out /tmp/vae_data      # here: dev assets -> normalised meshes (.npz)
    python bench/bench_train_vae.py throughput --data D --out O     # device: samples/s, voxels/s, peak memory
    python bench/bench_train_vae.py train --data D --out O --minutes 4.5   # device: train, then fidelity on held-out

The device machine has no trimesh, so `prepare` loads the assets here and writes plain arrays; the O-Voxels are
made on the GPU (`mesh_to_dual_grid`, torch path) from randomly rotated copies of the training meshes.
Results are printed as JSON lines and written to ``OUT/*.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

RESOLUTION = 256
# Held out from training: judged by reconstruction fidelity only.
HELD_OUT = ("mesh/spot/spot_triangulated.obj", "mesh/stanford-bunny.obj", "gltf/Avocado/Avocado.gltf",
            "mesh/thingi10k/73340.stl")
# Not used: no surface a dual grid can hold (points/lines), a single quad, or a 1M-triangle stress scene.
SKIPPED = ("gltf/MeshPrimitiveModes/MeshPrimitiveModes.gltf", "gltf/TwoSidedPlane/TwoSidedPlane.gltf",
           "gltf/MetalRoughSpheresNoTextures.glb")


# ------------------------------------------------------------------------------------------------ prepare
def prepare(out: Path, assets: Path) -> None:
    from omnivox.assets import load_asset

    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(p for p in assets.rglob("*") if p.suffix.lower() in (".glb", ".gltf", ".obj", ".stl", ".ply"))
    for path in paths:
        name = str(path.relative_to(assets))
        if name in SKIPPED:
            continue
        try:
            scene = load_asset(path).normalized()
        except Exception as error:  # noqa: BLE001 - report and go on: the set has deliberately broken files
            print(f"skip {name}: {error}")
            continue
        if len(scene.faces) == 0:
            continue
        split = "test" if name in HELD_OUT else "train"
        np.savez_compressed(out / (name.replace("/", "__") + ".npz"), vertices=scene.vertices.astype(np.float32),
                            faces=scene.faces.astype(np.int32), name=name, split=split)
        print(f"{split:5s} {name}: {len(scene.faces)} triangles")


def load_meshes(data: Path, split: str) -> list:
    out = []
    for path in sorted(data.glob("*.npz")):
        with np.load(path) as f:
            if str(f["split"]) == split:
                out.append((str(f["name"]), torch.from_numpy(f["vertices"]), torch.from_numpy(f["faces"]).long()))
    return out


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    q = torch.randn(4, generator=generator, dtype=torch.float64)
    w, x, y, z = (q / q.norm()).tolist()
    return torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]], dtype=torch.float32)


def to_sample(vertices: torch.Tensor, faces: torch.Tensor, device) -> dict:
    """A mesh (already inside the unit box) -> shape O-Voxel sample at 256 (on ``device``), as the dataset gives it."""
    from omnivox.ovoxel import mesh_to_dual_grid, to_local

    v, f = vertices.to(device), faces.to(device)
    coords, dual, flags = mesh_to_dual_grid(v, f, RESOLUTION)
    local = to_local(coords, dual, 1.0 / RESOLUTION)
    local = torch.floor(local.clamp(0, 1) * 255) / 255  # the stored uint8 quantisation
    return {"coords": coords.int(), "vertices": local.float(), "intersected": flags.bool(),
            "mesh": {"vertices": v, "faces": f}}


def augmented_pool(meshes: list, copies: int, device, seed: int = 0) -> list:
    """``copies`` randomly rotated (and re-normalised) versions of each mesh, converted on ``device``."""
    g = torch.Generator().manual_seed(seed)
    pool = []
    for _, v, f in meshes:
        for c in range(copies):
            r = v @ random_rotation(g).T if c else v
            lo, hi = r.min(0).values, r.max(0).values
            r = (r - (lo + hi) / 2) * (0.99999 / float((hi - lo).max()))
            pool.append(to_sample(r, f, device))
    return pool


def collate(samples: list) -> dict:
    from omnivox.sparse.tensor import SparseTensor

    vertices = SparseTensor.from_batch_list([s["coords"] for s in samples], [s["vertices"] for s in samples])
    return {"vertices": vertices, "intersected": vertices.replace(torch.cat([s["intersected"] for s in samples])),
            "mesh": [s["mesh"] for s in samples]}


def build_vae(channels, enc_blocks, device, dtype: torch.dtype):
    """Shape VAE with the blocks' convolutions and Linears in ``dtype`` (norms and the outer Linears float32)."""
    from omnivox.models import (
        FlexiDualGridDecoderConfig,
        FlexiDualGridVaeDecoder,
        FlexiDualGridVaeEncoder,
        VaeEncoderConfig,
    )
    from omnivox.models.sc_vae import SparseConv3d

    encoder = FlexiDualGridVaeEncoder(VaeEncoderConfig(model_channels=channels, num_blocks=enc_blocks,
                                                       use_fp16=dtype == torch.float16))
    decoder = FlexiDualGridVaeDecoder(FlexiDualGridDecoderConfig(
        model_channels=channels[::-1], num_blocks=enc_blocks[::-1], use_fp16=dtype == torch.float16,
        resolution=RESOLUTION))
    for model in (encoder, decoder):
        model.to(device)
        for module in model.blocks.modules():
            if isinstance(module, (torch.nn.Linear, SparseConv3d)):
                module.to(dtype)
    return encoder, decoder


def _params(*models):
    return sum(p.numel() for m in models for p in m.parameters())


# --------------------------------------------------------------------------------------------- throughput
def throughput(data: Path, out: Path, batch_size: int, steps: int, device: str = "cuda") -> list:
    from omnivox.train.losses import render_loss_maps
    from omnivox.train.precision import MixedPrecision
    from omnivox.train.vae_trainers import ShapeVaeLossConfig, shape_vae_losses

    device = torch.device(device)
    meshes = load_meshes(data, "train")
    pool = augmented_pool(meshes[: batch_size * 2], 1, device)
    pool.sort(key=lambda s: -len(s["coords"]))
    batches = [collate(pool[i:i + batch_size]) for i in range(0, batch_size * 2, batch_size)]
    rows = []
    cases = [("bf16", torch.bfloat16, False, 0.0), ("bf16", torch.bfloat16, True, 0.0),
             ("bf16", torch.bfloat16, False, 1.0), ("bf16", torch.bfloat16, True, 1.0),
             ("fp16", torch.float16, True, 1.0)]
    for name, dtype, checkpointed, render in cases:
        torch.manual_seed(0)
        encoder, decoder = build_vae((64, 128, 256, 512, 1024), (0, 4, 8, 16, 4), device, dtype)
        params = [p for m in (encoder, decoder) for p in m.parameters()]
        dtype_name = "float16" if dtype == torch.float16 else "bfloat16"
        precision = MixedPrecision("inflat_all", dtype_name, params, device.type)
        optimizer = torch.optim.AdamW(precision.master_params, lr=1e-4, weight_decay=0.0)
        config = ShapeVaeLossConfig(lambda_render=render, render_resolution=1024)
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times, voxels = [], []
        try:
            for step in range(steps + 2):
                batch = batches[step % len(batches)]
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for p in params:
                    p.grad = None
                loss, _ = shape_vae_losses(encoder, decoder, batch, config,
                                           render=render_loss_maps if render else None,
                                           generator=torch.Generator().manual_seed(step), checkpointed=checkpointed)
                (loss.float() * precision.loss_scale).backward()
                finite = precision.unscale_to_master()
                if finite:
                    optimizer.step()
                precision.after_step(finite)
                if cuda:
                    torch.cuda.synchronize()
                if step >= 2:
                    times.append(time.perf_counter() - start)
                    voxels.append(batch["vertices"].num_voxels)
            seconds = float(np.median(times))
            row = {"case": name, "activation_checkpointing": checkpointed, "render_1024": bool(render),
                   "batch": batch_size, "voxels_per_batch": int(np.mean(voxels)), "step_s": round(seconds, 4),
                   "samples_per_s": round(batch_size / seconds, 3),
                   "voxels_per_s": round(float(np.mean(voxels)) / seconds),
                   "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                   "params_m": round(_params(encoder, decoder) / 1e6, 1), "loss": round(float(loss), 5)}
        except torch.OutOfMemoryError:
            row = {"case": name, "activation_checkpointing": checkpointed, "render_1024": bool(render),
                   "batch": batch_size, "error": "out of memory"}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del encoder, decoder, precision, optimizer
        if cuda:
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    (out / "throughput.json").write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    return rows


# ------------------------------------------------------------------------------------------------ train
class _Pool(torch.utils.data.Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from omnivox.sparse.tensor import SparseTensor

        s = self.samples[i]
        coords = torch.cat([torch.zeros(len(s["coords"]), 1, dtype=torch.int32), s["coords"].cpu()], 1)
        v = SparseTensor.from_coords(coords, s["vertices"].cpu())
        return {"vertices": v, "intersected": v.replace(s["intersected"].cpu()),
                "mesh": {"vertices": s["mesh"]["vertices"].cpu(), "faces": s["mesh"]["faces"].cpu()}}


def reconstruct(encoder, decoder, sample: dict, device):
    """Encode (posterior mean) and decode freely (predicted subdivisions and flags) -> mesh; None if it blows up."""
    from omnivox.ovoxel.extract import dual_grid_to_mesh
    from omnivox.sparse.tensor import SparseTensor
    from omnivox.train.vae_trainers import encode, shape_encoder_input

    coords = torch.cat([torch.zeros(len(sample["coords"]), 1, dtype=torch.int32, device=device),
                        sample["coords"].to(device)], 1)
    v = SparseTensor.from_coords(coords, sample["vertices"].to(device))
    with torch.no_grad():
        z = encode(encoder, shape_encoder_input(v, v.replace(sample["intersected"].to(device)))).mean
        tokens = z.num_voxels
        decoded = decoder(z)
    if decoded.coords.shape[0] == 0:
        return None, tokens, 0
    verts, faces = dual_grid_to_mesh(decoded.coords[:, 1:], decoded.vertices, decoded.intersected, RESOLUTION,
                                     split_weight=decoded.split_weights)
    return (verts.cpu().numpy(), faces.cpu().numpy()), tokens, decoded.coords.shape[0]


def train(data: Path, out: Path, minutes: float, batch_size: int, copies: int, device: str = "cuda",
          render_resolution: int = 512) -> dict:
    from omnivox.models import from_pretrained
    from omnivox.ovoxel.extract import dual_grid_to_mesh
    from omnivox.ovoxel.metrics import surface_fidelity
    from omnivox.train.vae_trainers import ShapeVaeTrainer, ShapeVaeTrainerConfig

    device = torch.device(device)
    started = time.perf_counter()
    train_meshes, test_meshes = load_meshes(data, "train"), load_meshes(data, "test")
    pool = augmented_pool(train_meshes, copies, device)
    prep_s = time.perf_counter() - started
    print(json.dumps({"train_assets": len(train_meshes), "pool": len(pool), "prep_s": round(prep_s, 1),
                      "pool_voxels_mean": int(np.mean([len(s["coords"]) for s in pool]))}), flush=True)
    channels, blocks = (32, 64, 128, 256, 512), (0, 1, 1, 2, 1)
    encoder, decoder = build_vae(channels, blocks, device, torch.bfloat16)
    config = ShapeVaeTrainerConfig(
        max_steps=10**6, batch_size=batch_size, optimizer={"name": "AdamW", "args": {"lr": 5e-4, "weight_decay": 0.0}},
        mix_precision_mode="inflat_all", mix_precision_dtype="bfloat16", ema_rate=0.99,
        grad_clip={"name": "AdaptiveGradClipper", "args": {"max_norm": 1.0, "clip_percentile": 95}},
        render_resolution=render_resolution, num_workers=0, i_log=50, i_save=10**9, i_sample=10**9, i_ddpcheck=10**9)
    trainer = ShapeVaeTrainer({"encoder": encoder, "decoder": decoder}, _Pool(pool), config, out / "run",
                              device=device, tensorboard=False, progress=False)
    history = []
    deadline = started + minutes * 60
    while time.perf_counter() < deadline:
        logs = trainer.train_step(trainer.stream.next())
        trainer.step += 1
        if trainer.step % 25 == 0 or trainer.step == 1:
            row = {"step": trainer.step, "t": round(time.perf_counter() - started, 1),
                   **{k: round(v, 5) for k, v in logs.items() if k.startswith("loss")}}
            history.append(row)
            print(json.dumps(row), flush=True)
    train_s = time.perf_counter() - started - prep_s
    trainer.save()
    tag = f"step{trainer.step:07d}"
    results = {"steps": trainer.step, "train_s": round(train_s, 1), "batch": batch_size,
               "samples_seen": trainer.step * batch_size, "channels": channels, "blocks": blocks,
               "params_m": round(_params(encoder, decoder) / 1e6, 2), "history": history, "assets": []}
    # Evaluate the EMA weights as released checkpoints (official layout, loaded back with from_pretrained).
    ema_tag = f"ema0.99_{tag}"
    enc = from_pretrained(out / "run" / "ckpts" / f"encoder_{ema_tag}", device=device)
    dec = from_pretrained(out / "run" / "ckpts" / f"decoder_{ema_tag}", device=device)
    for split, meshes in (("test", test_meshes), ("train", train_meshes[:4])):
        for name, v, f in meshes:
            sample = to_sample(v, f, device)
            gt = (v.numpy(), f.numpy())
            ovoxel = dual_grid_to_mesh(sample["coords"], sample["vertices"], sample["intersected"], RESOLUTION)
            base = surface_fidelity(ovoxel[0].cpu().numpy(), ovoxel[1].cpu().numpy(), *gt, samples=50_000)
            mesh, tokens, voxels = reconstruct(enc, dec, sample, device)
            row = {"split": split, "asset": name, "voxels": len(sample["coords"]), "tokens": tokens,
                   "decoded_voxels": voxels, "ovoxel_chamfer_e6": round(base.chamfer * 1e6, 3),
                   "ovoxel_nc": round(base.normal_consistency, 4)}
            if mesh is not None and len(mesh[1]):
                fid = surface_fidelity(mesh[0], mesh[1], *gt, samples=50_000)
                row.update(vae_chamfer_e6=round(fid.chamfer * 1e6, 3), vae_nc=round(fid.normal_consistency, 4))
            print(json.dumps(row), flush=True)
            results["assets"].append(row)
    (out / "train.json").write_text(json.dumps(results, indent=1))
    return results


def main() -> None:
    global RESOLUTION
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--assets", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "assets")
    p = sub.add_parser("throughput")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p = sub.add_parser("train")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=4.5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--copies", type=int, default=6)
    p.add_argument("--render-resolution", type=int, default=512)
    for p in sub.choices.values():
        p.add_argument("--device", default="cuda")
        p.add_argument("--resolution", type=int, default=256, help="O-Voxel grid (256; lower for smoke tests)")
    args = parser.parse_args()
    RESOLUTION = args.resolution
    if args.command == "prepare":
        prepare(args.out, args.assets)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "throughput":
        throughput(args.data, args.out, args.batch, args.steps, args.device)
    else:
        train(args.data, args.out, args.minutes, args.batch, args.copies, args.device, args.render_resolution)


if __name__ == "__main__":
    main()
