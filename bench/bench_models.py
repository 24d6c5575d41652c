"""Benchmark the full-size TRELLIS.2 networks (random weights) on one GPU: speed, memory, precision, loading.

What it measures (see docs/benchmarks/models.md for results):

* the matmul rate of the machine (bf16 / fp16 / fp32 GEMM), used as the compute floor of every model:
  floor = FLOPs of the forward pass / measured GEMM rate; the ratio time / floor says how far we are from it;
* one step of each 1.3B flow model at batch 2 (CFG): dense 4096 tokens, and sparse token sets taken from a
  real asset (the Stanford bunny converted to an O-Voxel at 1024, coarsened to the latent grids of the
  512 / 1024 / 1536 pipelines), bf16 as released, no NaN/inf, and float32-vs-bf16 relative error;
* the shape encoder (O-Voxel 1024 -> latent), the shape decoder (latent -> 1024, predicted subdivisions), the
  material decoder (guided by the shape decoder, and through the encoder's maps), fp16 as released, with
  float32-vs-fp16 errors; the sparse-structure decoder; DINOv3 ViT-L/16 at 512 and 1024 px;
* the decoders' low-memory mode (``chunk_voxels``, section ``lowmem``, not run by default): peak memory and
  time against the plain decoding, and that the outputs agree;
* load time of each checkpoint written by `save_pretrained` (to the GPU and to host memory, with the peak
  host memory that loading added).

Usage:
    python bench/bench_models.py prepare            # once, on a machine with numba + trimesh: real voxel data
    PYTHONUNBUFFERED=1 python bench/bench_models.py run --out results/   # on the GPU machine
    python bench/bench_models.py run --sections lowmem --out results/  # decoders' low-memory mode only
    python bench/bench_models.py run --smoke --out /tmp/smoke            # tiny models on CPU (checks the script)

Weights are random: timings and memory do not depend on the values, but subdivision predictions do; the
subdivision heads get zero bias so that about half of the children survive, as on real surfaces.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omnivox.models import DINOv3Config, DINOv3ViT, build_model, from_pretrained, save_pretrained  # noqa: E402
from omnivox.models.sc_vae import SparseConv3d  # noqa: E402
from omnivox.sparse import SparseTensor  # noqa: E402
from omnivox.sparse.functional import neighbor_map  # noqa: E402

DATA = Path(__file__).resolve().parent / ".models_data" / "bunny_1024_voxels.npz"
MESH = Path(__file__).resolve().parents[2] / "shared" / "assets" / "mesh" / "stanford-bunny.obj"

FLOW = dict(model_channels=1536, cond_channels=1024, num_blocks=30, num_heads=12, mlp_ratio=5.3334)
SMOKE_FLOW = dict(model_channels=96, cond_channels=64, num_blocks=2, num_heads=2, mlp_ratio=2.0)
VAE_SMOKE = dict(model_channels=[8, 16, 16, 32, 32], num_blocks=[0, 1, 1, 1, 1])


# ------------------------------------------------------------------------------------------------ utilities
class Report:
    """Collects results; rewrites results.json and a log after every entry so a cut-off run keeps its data."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.results: dict = {}
        self.log_file = open(out / "log.txt", "a", encoding="utf-8")

    def log(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def add(self, key: str, value) -> None:
        self.results[key] = value
        self.log(f"{key}: {json.dumps(value)}")
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1))


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup: int = 1, iters: int = 3):
    """Run ``fn`` warmup + iters times; return (last output, median ms, peak GiB allocated above the start)."""
    out = None
    for _ in range(warmup):
        out = fn()
        del out
    cuda = torch.device(device).type == "cuda"
    if cuda:
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(iters):
        out = None
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else float("nan")
    return out, float(np.median(times)), peak


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def matmul_rate(dtype, device, n: int) -> float:
    """Measured dense GEMM rate in TFLOP/s for ``n x n x n`` products."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    _, ms, _ = timed(lambda: a @ b, device, warmup=2, iters=5)
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def rss_anon_bytes() -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_host_during(fn):
    """Run ``fn``; return (result, seconds, peak extra anonymous host memory in GiB) sampled every 2 ms."""
    base, peak, done = rss_anon_bytes(), [0], [False]

    def sample():
        while not done[0]:
            peak[0] = max(peak[0], rss_anon_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    done[0] = True
    thread.join()
    return result, seconds, max(0, peak[0] - base) / 2**30


def drop_page_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def make_informative(model: torch.nn.Module, seed: int) -> None:
    """Give zero-initialised layers (adaLN, output layers) small random values so outputs are non-trivial."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().max() == 0 and not name.endswith("bias"):
                p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.dtype))
            if name.endswith("to_subdiv.bias"):
                p.zero_()


def checkpoint_roundtrip(report: Report, model, name: str, workdir: Path, device, overrides=None):
    """Save ``model``, then time loading it to the GPU and to host memory; returns the GPU-loaded model."""
    stem = workdir / name
    save_pretrained(model, stem)
    weights = stem / "model.safetensors" if isinstance(model, DINOv3ViT) else workdir / f"{name}.safetensors"
    size = weights.stat().st_size
    cold = drop_page_cache()
    loaded, seconds, _ = peak_host_during(lambda: from_pretrained(stem, device=device))
    sync(device)
    host, host_seconds, host_peak = peak_host_during(lambda: from_pretrained(stem, device="cpu"))
    host_bytes = sum(p.numel() * p.element_size() for p in host.parameters())
    del host
    report.add(f"load/{name}", dict(file_GB=size / 1e9, page_cache_dropped=cold, to_device_s=seconds,
                                    to_host_s=host_seconds, host_peak_extra_GiB=host_peak,
                                    model_host_GiB=host_bytes / 2**30))
    return loaded


# ------------------------------------------------------------------------------------------------ data
def prepare(args) -> None:
    """Convert the bunny to an O-Voxel at 1024 and store its voxels (coords + edge flags) compactly."""
    import trimesh

    from omnivox.ovoxel import mesh_to_dual_grid

    mesh = trimesh.load(str(args.mesh), force="mesh")
    v = np.asarray(mesh.vertices, dtype=np.float64)
    lo, hi = v.min(0), v.max(0)
    v = (v - (lo + hi) / 2) * (0.99999 / (hi - lo).max())  # the pipelines' normalisation (spec 9.6)
    coords, _, flags = mesh_to_dual_grid(v, np.asarray(mesh.faces), 1024)
    coords = np.asarray(coords).astype(np.int64)
    key = (coords[:, 0] * 1024 + coords[:, 1]) * 1024 + coords[:, 2]
    order = np.argsort(key, kind="stable")
    DATA.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(DATA, key_delta=np.diff(key[order], prepend=0).astype(np.uint32),
                        intersected=np.packbits(np.asarray(flags)[order], axis=None),
                        count=np.int64(len(order)), resolution=np.int64(1024))
    print(f"wrote {DATA}: {len(order)} voxels")


def load_voxels(path: Path):
    """(N, 3) int64 voxel coords at 1024 (sorted) and (N, 3) bool edge flags."""
    data = np.load(path)
    key = np.cumsum(data["key_delta"].astype(np.int64))
    coords = np.stack([key // (1024 * 1024), (key // 1024) % 1024, key % 1024], 1)
    flags = np.unpackbits(data["intersected"])[:3 * int(data["count"])].reshape(-1, 3).astype(bool)
    return torch.from_numpy(coords), torch.from_numpy(flags)


def latent_coords(voxels: torch.Tensor, resolution: int, batch: int, device) -> torch.Tensor:
    """Token set of the latent grid ``resolution / 16`` for ``batch`` copies of the shape, (N, 4) int32."""
    cells = torch.unique((voxels * resolution // 1024) // 16, dim=0)
    rows = [torch.cat([torch.full((len(cells), 1), b), cells], 1) for b in range(batch)]
    return torch.cat(rows).to(torch.int32).to(device)


# ------------------------------------------------------------------------------------------------ sections
def flow_flops(tokens: list, cond_tokens: int, c: int, hidden: int, blocks: int, cond_c: int) -> float:
    """Forward FLOPs of a flow transformer for per-sample token counts ``tokens``."""
    total = 0.0
    for t in tokens:
        per_block = 2 * t * (6 * c * c + 2 * c * hidden)  # qkv, 2 x out, q, mlp
        per_block += 2 * cond_tokens * cond_c * 2 * c  # condition k/v projection
        per_block += 4 * t * t * c + 4 * t * cond_tokens * c  # self- and cross-attention products
        total += blocks * per_block
    return total


def bench_flows(report: Report, args, voxels, rates, workdir: Path) -> None:
    device, smoke = args.device, args.smoke
    arch = SMOKE_FLOW if smoke else FLOW
    c, cond_c = arch["model_channels"], arch["cond_channels"]
    hidden = int(c * arch["mlp_ratio"])
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(2, 1029, cond_c, generator=gen).to(device)
    rate = rates["bfloat16"]

    # dense sparse-structure flow, batch 2, 16^3 = 4096 tokens
    model = build_model("SparseStructureFlowModel", dict(resolution=16, in_channels=8, out_channels=8,
                                                         dtype="bfloat16", **arch), device=device)
    make_informative(model, 1)
    model = checkpoint_roundtrip(report, model, "ss_flow", workdir, device)
    x = torch.randn(2, 8, 16, 16, 16, generator=gen).to(device)
    t = torch.tensor([1000.0, 600.0], device=device)
    with torch.no_grad():
        out, ms, peak = timed(lambda: model(x, t, cond), device)
        flops = flow_flops([4096, 4096], 1029, c, hidden, arch["num_blocks"], cond_c)
        fp32 = from_pretrained(workdir / "ss_flow", device=device, config_overrides={"dtype": "float32"})
        ref = fp32(x, t, cond)
    report.add("flow/ss_dense_4096x2", dict(ms=ms, peak_GiB=peak, TFLOP=flops / 1e12,
                                           floor_ms=flops / (rate * 1e12) * 1e3, ratio=ms / (flops / (rate * 1e9)),
                                           finite=finite(out), rel_err_bf16_vs_fp32=rel_error(out, ref)))
    del model, fp32, out, ref
    if device == "cuda":
        torch.cuda.empty_cache()

    # sparse flows: shape (32 in) at every token set, texture (64 in) at the 1024 set
    shape = build_model("SLatFlowModel", dict(resolution=64, in_channels=32, out_channels=32, dtype="bfloat16",
                                              **arch), device=device)
    make_informative(shape, 2)
    shape = checkpoint_roundtrip(report, shape, "shape_flow", workdir, device)
    for resolution in args.resolutions:
        coords = latent_coords(voxels, resolution, 2, device)
        x = SparseTensor.from_coords(coords, torch.randn(len(coords), 32, generator=gen).to(device))
        per_item = [len(coords) // 2] * 2
        with torch.no_grad():
            out, ms, peak = timed(lambda: shape(x, t, cond), device)
        flops = flow_flops(per_item, 1029, c, hidden, arch["num_blocks"], cond_c)
        report.add(f"flow/shape_sparse_{resolution}", dict(
            tokens_per_item=per_item[0], batch=2, ms=ms, peak_GiB=peak, TFLOP=flops / 1e12,
            floor_ms=flops / (rate * 1e12) * 1e3, ratio=ms / (flops / (rate * 1e9)), finite=finite(out.feats)))
        del out
    coords = latent_coords(voxels, args.resolutions[1], 1, device)
    x = SparseTensor.from_coords(coords, torch.randn(len(coords), 32, generator=gen).to(device))
    with torch.no_grad():
        out = shape(x, t[:1], cond[:1]).feats
        fp32 = from_pretrained(workdir / "shape_flow", device=device, config_overrides={"dtype": "float32"})
        report.add(f"flow/shape_sparse_{args.resolutions[1]}_precision", dict(
            tokens=len(coords), rel_err_bf16_vs_fp32=rel_error(out, fp32(x, t[:1], cond[:1]).feats)))
    del shape, fp32, out
    texture = build_model("SLatFlowModel", dict(resolution=64, in_channels=64, out_channels=32, dtype="bfloat16",
                                                **arch), device=device)
    make_informative(texture, 3)
    coords = latent_coords(voxels, args.resolutions[1], 2, device)
    x = SparseTensor.from_coords(coords, torch.randn(len(coords), 32, generator=gen).to(device))
    shape_latent = x.replace(torch.randn(len(coords), 32, generator=gen).to(device))
    with torch.no_grad():
        out, ms, peak = timed(lambda: texture(x, t, cond, concat_cond=shape_latent), device)
    flops = flow_flops([len(coords) // 2] * 2, 1029, c, hidden, arch["num_blocks"], cond_c)
    report.add(f"flow/texture_sparse_{args.resolutions[1]}", dict(
        tokens_per_item=len(coords) // 2, batch=2, ms=ms, peak_GiB=peak, floor_ms=flops / (rate * 1e12) * 1e3,
        ratio=ms / (flops / (rate * 1e9)), finite=finite(out.feats)))
    del texture, out


class FlopCounter:
    """Forward hooks counting GEMM FLOPs of sparse convs (active neighbour pairs only) and Linears."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.flops = 0.0
        self.handles = []
        for module in model.modules():
            if isinstance(module, SparseConv3d):
                self.handles.append(module.register_forward_hook(self._conv))
            elif isinstance(module, torch.nn.Linear):
                self.handles.append(module.register_forward_hook(self._linear))

    def _conv(self, module, inputs, output):
        pairs = int((neighbor_map(inputs[0]).table >= 0).sum())
        self.flops += 2.0 * pairs * module.weight.shape[4] * module.weight.shape[0]

    def _linear(self, module, inputs, output):
        self.flops += 2.0 * inputs[0].numel() / module.in_features * module.in_features * module.out_features

    def close(self) -> float:
        for handle in self.handles:
            handle.remove()
        return self.flops


def bench_vaes(report: Report, args, voxels, flags, rates, workdir: Path) -> None:
    device = args.device
    rate = rates["float16"]
    vae_args = VAE_SMOKE if args.smoke else {}
    gen = torch.Generator().manual_seed(4)
    coords = torch.cat([torch.zeros(len(voxels), 1, dtype=torch.int64), voxels], 1).to(torch.int32).to(device)
    vertices = SparseTensor.from_coords(coords, (0.5 + 0.25 * torch.randn(len(coords), 3, generator=gen)).to(device))
    intersected = vertices.replace(flags.to(device))

    encoder = build_model("FlexiDualGridVaeEncoder", dict(vae_args), device=device)
    encoder = checkpoint_roundtrip(report, encoder, "shape_enc", workdir, device)
    with torch.no_grad():
        counter = FlopCounter(encoder)
        encoder(vertices, intersected)
        flops = counter.close()
        latent, ms, peak = timed(lambda: encoder(vertices, intersected), device, warmup=0, iters=2)
    report.add("vae/shape_encoder_1024", dict(voxels=len(coords), latent_tokens=latent.mean.num_voxels, ms=ms,
                                              peak_GiB=peak, floor_ms=flops / (rate * 1e12) * 1e3,
                                              ratio=ms / (flops / (rate * 1e9)), finite=finite(latent.mean.feats)))
    del encoder

    decoder = build_model("FlexiDualGridVaeDecoder", dict(resolution=1024, **vae_args), device=device)
    make_informative(decoder, 5)
    decoder = checkpoint_roundtrip(report, decoder, "shape_dec", workdir, device)
    z = latent.mean
    with torch.no_grad():
        counter = FlopCounter(decoder)
        decoder(z)
        flops = counter.close()
        shape, ms, peak = timed(lambda: decoder(z), device, warmup=0, iters=2)
        _, ms_chunked, peak_chunked = timed(lambda: decoder(z, chunk_rows=1 << 18), device, warmup=0, iters=1)
        fp32 = from_pretrained(workdir / "shape_dec", device=device, config_overrides={"use_fp16": False})
        ref = fp32(z)
        agree = float(((ref.subdivision_logits[0].feats > 0) == (shape.subdivision_logits[0].feats > 0)).float().mean())
        err0 = rel_error(shape.subdivision_logits[0].feats, ref.subdivision_logits[0].feats)
    report.add("vae/shape_decoder_to_1024", dict(
        latent_tokens=z.num_voxels, out_voxels=len(shape.coords), ms=ms, peak_GiB=peak,
        chunked_ms=ms_chunked, chunked_peak_GiB=peak_chunked, floor_ms=flops / (rate * 1e12) * 1e3,
        ratio=ms / (flops / (rate * 1e9)), finite=finite(shape.vertices) and finite(shape.split_weights),
        fp32_out_voxels=len(ref.coords), stage0_logits_rel_err_fp16_vs_fp32=err0, stage0_mask_agreement=agree))
    del decoder, fp32, ref

    material = build_model("SparseUnetVaeDecoder", dict(out_channels=6, pred_subdiv=False, **vae_args), device=device)
    make_informative(material, 6)
    material = checkpoint_roundtrip(report, material, "tex_dec", workdir, device)
    texture_z = z.replace(torch.randn(z.feats.shape, generator=gen).to(device))
    with torch.no_grad():
        guided, ms, peak = timed(lambda: material(texture_z, guide_subdivisions=shape.subdivision_logits), device,
                                 warmup=1, iters=2)
        report.add("vae/material_decoder_guided_to_1024", dict(out_voxels=guided.voxels.num_voxels, ms=ms,
                                                               peak_GiB=peak, finite=finite(guided.voxels.feats)))
        del guided
        maps = latent.downsample_maps
        counter = FlopCounter(material)
        material(texture_z, downsample_maps=maps)
        flops = counter.close()
        out, ms, peak = timed(lambda: material(texture_z, downsample_maps=maps), device, warmup=0, iters=2)
        fp32 = from_pretrained(workdir / "tex_dec", device=device, config_overrides={"use_fp16": False})
        ref = fp32(texture_z, downsample_maps=maps)
    report.add("vae/material_decoder_encoder_maps_to_1024", dict(
        out_voxels=out.voxels.num_voxels, same_coords_as_input=bool(torch.equal(out.voxels.coords, coords)),
        ms=ms, peak_GiB=peak, floor_ms=flops / (rate * 1e12) * 1e3, ratio=ms / (flops / (rate * 1e9)),
        finite=finite(out.voxels.feats), rel_err_fp16_vs_fp32=rel_error(out.voxels.feats, ref.voxels.feats)))
    del material, fp32, ref, out


def bench_low_memory(report: Report, args, voxels, flags) -> None:
    """Peak memory and time of the decoders with and without ``chunk_voxels`` (low-memory mode, issue #5).

    Every low-memory output is compared with the plain output of the same model: same voxels (in the same
    order) and the relative error of the features.
    """
    device = args.device
    vae_args = VAE_SMOKE if args.smoke else {}
    sizes = [64, 256] if args.smoke else [262144, 131072, 65536]
    gen = torch.Generator().manual_seed(4)
    coords = torch.cat([torch.zeros(len(voxels), 1, dtype=torch.int64), voxels], 1).to(torch.int32).to(device)
    vertices = SparseTensor.from_coords(coords, (0.5 + 0.25 * torch.randn(len(coords), 3, generator=gen)).to(device))
    with torch.no_grad():
        encoder = build_model("FlexiDualGridVaeEncoder", dict(vae_args), device=device)
        latent = encoder(vertices, vertices.replace(flags.to(device)))
        del encoder
        z, maps = latent.mean, latent.downsample_maps
        decoder = build_model("FlexiDualGridVaeDecoder", dict(resolution=1024, **vae_args), device=device)
        make_informative(decoder, 5)
        material = build_model("SparseUnetVaeDecoder", dict(out_channels=6, pred_subdiv=False, **vae_args),
                               device=device)
        make_informative(material, 6)
        texture_z = z.replace(torch.randn(z.feats.shape, generator=gen).to(device))
        shape = decoder(z)
        guides = shape.subdivision_logits
        report.add("lowmem/sizes", dict(latent_tokens=z.num_voxels, tail_input_voxels=guides[-1].num_voxels,
                                        out_voxels=len(shape.coords), encoder_voxels=len(coords)))
        cases = [
            ("shape_decoder", lambda **kw: decoder(z, **kw), lambda o: (o.coords, o.vertices)),
            ("material_guided", lambda **kw: material(texture_z, guide_subdivisions=guides, **kw),
             lambda o: (o.voxels.coords, o.voxels.feats)),
            ("material_maps", lambda **kw: material(texture_z, downsample_maps=maps, **kw),
             lambda o: (o.voxels.coords, o.voxels.feats)),
        ]
        for name, call, unpack in cases:
            plain, ms, peak = timed(call, device, warmup=1, iters=2)
            plain_coords, plain_feats = unpack(plain)
            del plain
            report.add(f"lowmem/{name}/plain", dict(ms=ms, peak_GiB=peak))
            options = [dict(chunk_rows=1 << 18)] + [dict(chunk_voxels=n) for n in sizes] + \
                      [dict(chunk_voxels=n, chunk_rows=1 << 18) for n in sizes[-1:]]
            for option in options:
                out, ms_c, peak_c = timed(lambda: call(**option), device, warmup=1, iters=2)
                out_coords, out_feats = unpack(out)
                del out
                label = ",".join(f"{k}={v}" for k, v in option.items())
                report.add(f"lowmem/{name}/{label}", dict(
                    ms=ms_c, peak_GiB=peak_c, peak_ratio_vs_plain=peak / peak_c if peak_c == peak_c else None,
                    same_coords=bool(torch.equal(out_coords, plain_coords)),
                    rel_err_vs_plain=rel_error(out_feats, plain_feats) if out_feats.shape == plain_feats.shape
                    else None))
                del out_coords, out_feats
        del decoder, material


def bench_ss_decoder_and_dino(report: Report, args, rates, workdir: Path) -> None:
    device = args.device
    small = dict(channels=[16, 8, 4], use_fp16=False) if args.smoke else {}  # CPU fp16 conv3d is very slow
    decoder = build_model("SparseStructureDecoder", small, device=device)
    decoder = checkpoint_roundtrip(report, decoder, "ss_dec", workdir, device)
    z = torch.randn(1, 8, 16, 16, 16, generator=torch.Generator().manual_seed(7)).to(device)
    with torch.no_grad():
        out, ms, peak = timed(lambda: decoder(z), device)
        ref = from_pretrained(workdir / "ss_dec", device=device, config_overrides={"use_fp16": False})(z)
    ch = decoder.config.channels
    flops = 2 * 27 * (16 ** 3 * (8 * ch[0] + 8 * ch[0] ** 2 + ch[0] * 8 * ch[1])
                      + 32 ** 3 * (4 * ch[1] ** 2 + ch[1] * 8 * ch[2]) + 64 ** 3 * (4 * ch[2] ** 2 + ch[2]))
    report.add("ss_decoder_16_to_64", dict(ms=ms, peak_GiB=peak, floor_ms=flops / (rates["float16"] * 1e12) * 1e3,
                                           ratio=ms / (flops / (rates["float16"] * 1e9)), finite=finite(out),
                                           rel_err_fp16_vs_fp32=rel_error(out, ref),
                                           occupancy_agreement=float(((out > 0) == (ref > 0)).float().mean())))
    del decoder

    config = DINOv3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128) \
        if args.smoke else DINOv3Config()
    with torch.device(device):
        dino = DINOv3ViT(config).eval()
    dino = checkpoint_roundtrip(report, dino, "dinov3", workdir, device)
    c, layers, mlp = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    for size in (512, 1024):
        images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(8)).to(device)
        with torch.no_grad():
            tokens, ms, peak = timed(lambda: dino(images), device)
        n = tokens.shape[1]
        flops = layers * (2 * n * (4 * c * c + 2 * c * mlp) + 4 * n * n * c)
        report.add(f"dinov3_{size}px", dict(tokens=n, ms=ms, peak_GiB=peak,
                                            floor_ms=flops / (rates["float32"] * 1e12) * 1e3,
                                            ratio=ms / (flops / (rates["float32"] * 1e9)), finite=finite(tokens)))


def run(args) -> None:
    report = Report(Path(args.out))
    device = args.device
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    info = dict(python=platform.python_version(), torch=torch.__version__, device=device,
                date=time.strftime("%Y-%m-%d %H:%M"), smoke=args.smoke)
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    report.add("machine", info)
    voxels, flags = load_voxels(Path(args.data))
    if args.smoke:
        keep = ((voxels - voxels[len(voxels) // 2]).abs() < 64).all(1)  # a patch of the surface: small but real
        voxels, flags = voxels[keep], flags[keep]
    size = 512 if args.smoke else 8192
    rates = {name: matmul_rate(getattr(torch, name), device, size if name != "float32" else size // 2)
             for name in ("bfloat16", "float16", "float32")}
    report.add("matmul_TFLOPs", rates)
    for section in args.sections:
        start = time.perf_counter()
        try:
            if section == "flows":
                bench_flows(report, args, voxels, rates, workdir)
            elif section == "vaes":
                bench_vaes(report, args, voxels, flags, rates, workdir)
            elif section == "dense":
                bench_ss_decoder_and_dino(report, args, rates, workdir)
            elif section == "lowmem":
                bench_low_memory(report, args, voxels, flags)
        except Exception as error:  # keep going: a failed section must not lose the others' numbers
            report.add(f"error/{section}", f"{type(error).__name__}: {error}")
        if device == "cuda":
            torch.cuda.empty_cache()
        report.log(f"section {section} took {time.perf_counter() - start:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--mesh", type=Path, default=MESH)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--data", default=str(DATA))
    r.add_argument("--workdir", default="/tmp/omnivox_bench_ckpts")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--smoke", action="store_true", help="tiny models on a corner of the data (checks the script)")
    r.add_argument("--sections", nargs="+", default=["flows", "vaes", "dense"])
    r.add_argument("--resolutions", nargs="+", type=int, default=[512, 1024, 1536],
                   help="pipeline resolutions whose latent grids (R/16) give the sparse token sets")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
