"""Benchmark the image-to-3D pipeline end to end on one GPU: per-stage time and peak memory, planner budgets.

Full-size TRELLIS.2 networks with random weights (bf16 flows, fp16 VAEs, fp32 DINOv3, as released) run through
`ImageTo3DPipeline.run` exactly as a user's call would, with the released sampler settings (12 steps per stage,
CFG 7.5 with rescale and interval), for the pipeline types ``512``, ``1024_cascade`` and ``1536_cascade``.

Random weights cannot produce a realistic shape, so token counts come from a real asset instead: the sparse
structure stage runs (its time is measured) but its output is replaced by the structure of a real converted
asset (Spot, converted to an O-Voxel at 1024 and coarsened to the 32^3 grid), and in the cascades the decoder's
upsampling runs (timed) but the high-resolution token set is again the real asset's (64^3 or 96^3 latent grid).
The decoders predict their own subdivisions from random weights (zero subdivision bias: about half of the
children survive, as on real surfaces).

Reported per type: wall time per stage and in total (second run; the first, cold run is listed too), peak
allocated GPU memory per stage (weights included), the compute floor (FLOPs of the flows, decoders and DINOv3
divided by the GEMM rates measured in the same run) and our ratio to it; then ``1024_cascade`` again with the
models in host memory and ``max_memory="16GB"`` (the planner's offload plan), whose peak must stay below 16 GB.

``views`` measures multi-view conditioning (docs/multiview.md): the same runs with 1, 2, 3, 4 views of the
object (the example image and mirrored / turned copies; random weights make their content irrelevant) in both
modes, with the real token sets, so each added view's cost in time and peak memory shows against the one-view run
of the same process (a cold run first compiles and captures everything).

Usage:
    python bench/bench_pipelines.py prepare                  # here: real token sets -> bench/.pipeline_data/
    PYTHONUNBUFFERED=1 python bench/bench_pipelines.py run --out results/     # on the GPU machine
    python bench/bench_pipelines.py run --smoke --out /tmp/smoke              # tiny pipeline on CPU
    PYTHONUNBUFFERED=1 python bench/bench_pipelines.py views --out results/   # multi-view, on the GPU machine
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_models import FlopCounter, Report, flow_flops, make_informative, matmul_rate, sync  # noqa: E402
from omnivox.models import DINOv3Config, DINOv3ViT, build_model  # noqa: E402
from omnivox.pipelines.config import Normalization, PipelineConfig  # noqa: E402
from omnivox.pipelines.image_to_3d import ImageTo3DPipeline  # noqa: E402
from omnivox.pipelines.samplers import network_calls  # noqa: E402
from omnivox.pipelines.testing import (SHAPE_MEAN, SHAPE_STD, TEX_MEAN, TEX_STD, make_test_pipeline,  # noqa: E402
                                       released_samplers)

DATA = Path(__file__).resolve().parent / ".pipeline_data" / "spot_tokens.npz"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "assets"
MESH = SHARED / "mesh" / "spot" / "spot_triangulated.obj"
IMAGE = SHARED / "images" / "5a020584b95cf3db3b6420e9b09fb93e7c0f4046e61076e5b4c65c63dc1f5837.webp"
FLOW = dict(model_channels=1536, cond_channels=1024, num_blocks=30, num_heads=12, mlp_ratio=5.3334,
            dtype="bfloat16")
GIB = 2 ** 30
RUNS = itertools.count()  # pipeline runs started in this process (each gets its own token count, see Stages.fixed)


# ---------------------------------------------------------------------------------------------------- data
def prepare(args) -> None:
    """Convert the mesh at 1024 and store its latent token sets (32^3, 64^3, 96^3) and the example image."""
    from PIL import Image

    from omnivox.assets import load_asset
    from omnivox.ovoxel import mesh_to_dual_grid

    scene = load_asset(args.mesh).normalized()
    coords, _, _ = mesh_to_dual_grid(scene.vertices, scene.faces, 1024)
    coords = np.asarray(coords).astype(np.int64)
    sets = {f"tokens_{r}": np.unique(coords * r // 1024 // 16, axis=0).astype(np.int16) for r in (512, 1024, 1536)}
    image = np.asarray(Image.open(args.image).convert("RGBA"))
    DATA.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(DATA, image=image, voxels_1024=np.int64(len(coords)), **sets)
    print(f"wrote {DATA}: {len(coords)} voxels at 1024; tokens " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()))


# ------------------------------------------------------------------------------------------------ models
def full_size_models(device) -> dict:
    """Every role of a 1024_cascade / 1536_cascade / 512 run, full size, random weights, released dtypes."""
    specs = {
        "sparse_structure_flow_model": ("SparseStructureFlowModel", dict(resolution=16, in_channels=8, out_channels=8)),
        "shape_slat_flow_model_512": ("SLatFlowModel", dict(resolution=32, in_channels=32, out_channels=32)),
        "shape_slat_flow_model_1024": ("SLatFlowModel", dict(resolution=64, in_channels=32, out_channels=32)),
        "tex_slat_flow_model_512": ("SLatFlowModel", dict(resolution=32, in_channels=64, out_channels=32)),
        "tex_slat_flow_model_1024": ("SLatFlowModel", dict(resolution=64, in_channels=64, out_channels=32)),
    }
    models = {}
    torch.manual_seed(0)  # the same random weights in every process: decoders then keep the same voxels
    for seed, (role, (name, args)) in enumerate(specs.items()):
        model = build_model(name, {**FLOW, **args}, device=device).eval()
        make_informative(model, seed)
        models[role] = model
    models["sparse_structure_decoder"] = build_model("SparseStructureDecoder", {}, device=device).eval()
    for role, name in (("shape_slat_decoder", "FlexiDualGridVaeDecoder"), ("tex_slat_decoder", "SparseUnetVaeDecoder")):
        model = build_model(name, {}, device=device).eval()
        make_informative(model, 10)
        models[role] = model
    with torch.device(device):
        models["image_cond_model"] = DINOv3ViT(DINOv3Config()).eval()
    return models


def pipeline_with(models: dict, device, max_memory=None) -> ImageTo3DPipeline:
    config = PipelineConfig(root=Path("."), models={}, samplers=released_samplers(12),
                            shape_normalization=Normalization(torch.tensor(SHAPE_MEAN), torch.tensor(SHAPE_STD)),
                            tex_normalization=Normalization(torch.tensor(TEX_MEAN), torch.tensor(TEX_STD)),
                            image_encoder=None, image_encoder_name="random DINOv3")
    pipe = ImageTo3DPipeline(config, device=device, max_memory=max_memory)
    pipe.models._models.update(models)
    return pipe


# ------------------------------------------------------------------------------------------ instrumentation
class Stages:
    """Wraps the pipeline's stage methods: wall time and peak allocated memory per call; real token sets."""

    def __init__(self, pipe: ImageTo3DPipeline, tokens: dict, device) -> None:
        self.device = torch.device(device)
        self.records: list = []
        self.same_tokens = False
        # Timing a stage needs a sync at its start and end, which stops the pipeline from queueing one stage's
        # work while the GPU still runs the previous one; totals come from runs without (see run_type).
        self.sync_stages = True
        self.overlap = True  # pipe.overlap_decoding in runs without stage syncs
        self.run_index = 0
        self.tokens = tokens
        self.pipe = pipe
        # The class's methods bound to this pipeline (not instance attributes a previous wrapper may have set).
        originals = {name: getattr(type(pipe), name).__get__(pipe) for name in
                     ("encode_image", "sample_sparse_structure", "sample_latent", "cascade_coords", "decode_shape",
                      "decode_material")}

        def timed(label_of, fn, replace=None):
            def wrapped(*args, **kwargs):
                if not self.sync_stages:
                    out = fn(*args, **kwargs)
                    return replace(args, kwargs, out) if replace else out
                sync(self.device)
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                out = fn(*args, **kwargs)
                sync(self.device)
                seconds = time.perf_counter() - start
                peak = torch.cuda.max_memory_allocated() / GIB if self.device.type == "cuda" else float("nan")
                self.records.append(dict(stage=label_of(args, kwargs, out), s=seconds, peak_GiB=peak))
                return replace(args, kwargs, out) if replace else out
            return wrapped

        pipe.encode_image = timed(lambda a, k, o: f"condition_{a[1]}", originals["encode_image"])
        pipe.sample_sparse_structure = timed(lambda a, k, o: "sparse_structure", originals["sample_sparse_structure"],
                                             lambda a, k, o: self.fixed("tokens_512", a[2]))
        pipe.sample_latent = timed(lambda a, k, o: f"{a[6]} ({len(a[1])} tokens)", originals["sample_latent"])
        pipe.cascade_coords = timed(lambda a, k, o: "cascade_upsample", originals["cascade_coords"],
                                    lambda a, k, o: (self.fixed(f"tokens_{a[2]}", 1), a[2]))
        pipe.decode_shape = timed(lambda a, k, o: f"decode_shape ({len(o.shape.coords)} voxels)",
                                  originals["decode_shape"])
        pipe.decode_material = timed(lambda a, k, o: "decode_material", originals["decode_material"])

    def begin_run(self) -> None:
        self.records.clear()
        self.run_index = next(RUNS)

    def fixed(self, key: str, samples: int) -> torch.Tensor:
        """The real token set ``key`` for ``samples`` samples. Unless ``same_tokens``, run ``k`` of the process
        drops ``7 k`` random cells, so every run has a new token count, as every new image has: caches keyed by
        shape (cuDNN attention plans, CUDA graphs) then cannot make a repeated run look faster than a new one."""
        cells = torch.from_numpy(self.tokens[key].astype(np.int64))
        if not self.same_tokens and self.run_index:
            keep = np.random.default_rng(self.run_index).permutation(len(cells))[7 * self.run_index:]
            cells = cells[np.sort(keep)]
        rows = [torch.cat([torch.full((len(cells), 1), b), cells], 1) for b in range(samples)]
        return torch.cat(rows).to(torch.int32)


def floor_seconds(pipeline_type: str, tokens: dict, rates: dict, decoder_flops: float, smoke: bool) -> float:
    """FLOPs of one run / measured GEMM rates (flows bf16, decoders fp16, DINOv3 fp32)."""
    if smoke:
        return float("nan")
    samplers = released_samplers(12)
    c, hidden, blocks = 1536, int(1536 * 5.3334), 30
    cond = 1029 if pipeline_type == "512" else 4101
    lr = len(tokens["tokens_512"])
    hr = {"512": lr, "1024_cascade": len(tokens["tokens_1024"]),
          "1536_cascade": len(tokens["tokens_1536"])}[pipeline_type]
    flops = network_calls(samplers["sparse_structure"]) * flow_flops([4096], 1029, c, hidden, blocks, 1024)
    if pipeline_type != "512":
        flops += network_calls(samplers["shape_slat"]) * flow_flops([lr], 1029, c, hidden, blocks, 1024)
    flops += network_calls(samplers["shape_slat"]) * flow_flops([hr], cond, c, hidden, blocks, 1024)
    flops += network_calls(samplers["tex_slat"]) * flow_flops([hr], cond, c, hidden, blocks, 1024)
    bf16 = flops / (rates["bfloat16"] * 1e12)
    dino = 0.0
    for n in ((1029,) if pipeline_type == "512" else (1029, 4101)):
        dino += 24 * (2 * n * (4 * 1024 ** 2 + 2 * 1024 * 4096) + 4 * n * n * 1024)
    return bf16 + decoder_flops / (rates["float16"] * 1e12) + dino / (rates["float32"] * 1e12)


# ------------------------------------------------------------------------------------------------------ run
def run_type(report: Report, pipe: ImageTo3DPipeline, tokens: dict, image, pipeline_type: str, rates: dict,
             smoke: bool, label: str, repeats: int = 3, same_tokens: bool = False) -> None:
    """Run ``pipeline_type`` ``repeats`` times: a cold run, then warm runs alternating between one with a sync at
    every stage boundary (``warm_stages``: the per-stage times) and one without (``warm``: the total)."""
    stages = Stages(pipe, tokens, pipe.device)
    counters = []
    stages.same_tokens = same_tokens
    for attempt in range(repeats):
        stages.begin_run()
        stages.sync_stages = attempt % 2 == 1 or attempt == 0
        pipe.overlap_decoding = not stages.sync_stages  # one stage at a time where stages are timed
        name = "cold" if attempt == 0 else "warm_stages" if stages.sync_stages else "warm"
        counters = [FlopCounter(pipe.models.get(r)) for r in ("shape_slat_decoder", "tex_slat_decoder")]
        if pipe.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(pipe.device)
        start = time.perf_counter()
        output = pipe.run(image, seed=0, pipeline_type=pipeline_type)
        (asset,) = output
        sync(pipe.device)
        total = time.perf_counter() - start
        decoder_flops = sum(c.close() for c in counters)
        floor = floor_seconds(pipeline_type, tokens, rates, decoder_flops, smoke)
        run_peak = torch.cuda.max_memory_allocated() / GIB if pipe.device.type == "cuda" else float("nan")
        reserved = torch.cuda.max_memory_reserved() / GIB if pipe.device.type == "cuda" else float("nan")
        report.add(f"{label}/{name}", dict(
            total_s=total, floor_s=floor, ratio=total / floor if floor == floor else None, peak_GiB=run_peak,
            peak_reserved_GiB=reserved, voxels=len(asset.coords), resolution=asset.resolution,
            faces=len(asset.faces), stages=list(stages.records),
            plan=str(output.plan) if output.plan is not None else None))


def load_inputs(path) -> tuple:
    """The prepared inputs (``prepare``): the npz, its token sets by resolution, and the RGBA condition image."""
    from PIL import Image

    data = np.load(path)
    tokens = {k: data[k] for k in ("tokens_512", "tokens_1024", "tokens_1536")}
    return data, tokens, Image.fromarray(data["image"], mode="RGBA")


def machine_info(device: torch.device, smoke: bool, tokens: dict, **extra) -> dict:
    """What a results file says about the run: versions, device (and GPU name and capability), date in UTC."""
    info = dict(python=platform.python_version(), torch=torch.__version__, device=str(device),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), smoke=smoke,
                tokens={k: int(len(v)) for k, v in tokens.items()}, **extra)
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()))
    return info


def run(args) -> None:
    report = Report(Path(args.out))
    device = torch.device(args.device)
    data, tokens, image = load_inputs(args.data)
    report.add("machine", machine_info(device, args.smoke, tokens, voxels_1024=int(data["voxels_1024"])))
    size = 512 if args.smoke else 8192
    rates = {name: matmul_rate(getattr(torch, name), device, size if name != "float32" else size // 2)
             for name in ("bfloat16", "float16", "float32")}
    report.add("matmul_TFLOPs", rates)
    if args.smoke:
        tokens = {k: v[::25] for k, v in tokens.items()}
        folder = make_test_pipeline(Path(args.out) / "tiny")
        pipe = ImageTo3DPipeline.from_pretrained(folder, device=device)
        models = None
    else:
        start = time.perf_counter()
        models = full_size_models(device)
        report.log(f"built full-size models in {time.perf_counter() - start:.1f} s")
        for model in models.values():
            if hasattr(model, "set_fused_kernels"):
                model.set_fused_kernels(not args.unfused)
        report.add("fused_kernels", not args.unfused)
        pipe = pipeline_with(models, device)
    for pipeline_type in args.types:
        try:
            run_type(report, pipe, tokens, image, pipeline_type, rates, args.smoke, pipeline_type,
                     repeats=args.repeats, same_tokens=args.same_tokens)
        except Exception as error:  # keep the other types' numbers
            report.add(f"error/{pipeline_type}", f"{type(error).__name__}: {error}")
    if args.budget and models is not None:
        for model in models.values():
            model.to("cpu")
        torch.cuda.empty_cache()
        pipe = pipeline_with(models, device, max_memory=args.budget)
        try:
            run_type(report, pipe, tokens, image, "1024_cascade", rates, args.smoke,
                     f"1024_cascade_budget_{args.budget}", same_tokens=args.same_tokens)
        except Exception as error:
            report.add("error/budget", f"{type(error).__name__}: {error}")


def view_images(image, count: int) -> list:
    """``count`` distinct views made from one image (mirrored, turned): the cost does not depend on content."""
    from PIL import Image

    variants = [image, image.transpose(Image.FLIP_LEFT_RIGHT), image.transpose(Image.ROTATE_90),
                image.transpose(Image.ROTATE_270), image.transpose(Image.FLIP_TOP_BOTTOM)]
    if count > len(variants):
        raise ValueError(f"at most {len(variants)} views, got {count}")
    return variants[:count]


def run_views(args) -> None:
    """Time and peak memory of runs with 1..N views in each multi-view mode (module docstring)."""
    report = Report(Path(args.out))
    device = torch.device(args.device)
    data, tokens, image = load_inputs(args.data)
    report.add("machine", machine_info(device, args.smoke, tokens))
    if args.smoke:
        tokens = {k: v[::25] for k, v in tokens.items()}
        pipe = ImageTo3DPipeline.from_pretrained(make_test_pipeline(Path(args.out) / "tiny"), device=device)
    else:
        start = time.perf_counter()
        pipe = pipeline_with(full_size_models(device), device)
        report.log(f"built full-size models in {time.perf_counter() - start:.1f} s")
    stages = Stages(pipe, tokens, pipe.device)
    stages.sync_stages = False  # totals only: stages overlap as in a user's run
    configs = [("single", 1)] + [(mode, count) for mode in args.modes for count in args.views if count > 1]
    for pipeline_type in args.types:
        for attempt, (mode, count) in enumerate([("cold", 1)] + configs):
            stages.begin_run()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            start = time.perf_counter()
            try:
                if count == 1:
                    output = pipe.run(image, seed=0, pipeline_type=pipeline_type)
                else:
                    output = pipe.run(images=view_images(image, count), multiview_mode=mode, seed=0,
                                      pipeline_type=pipeline_type)
            except Exception as error:  # keep the other configurations' numbers
                report.add(f"error/{pipeline_type}/{mode}/{count}", f"{type(error).__name__}: {error}")
                continue
            sync(device)
            total = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else float("nan")
            stage_plan = output.plan.stage("shape_slat") if output.plan is not None else None
            report.add(f"{pipeline_type}/{mode}/{count}", dict(
                total_s=total, peak_GiB=peak, voxels=len(output[0].coords),
                shape_tokens=len(stages.fixed("tokens_1024" if pipeline_type != "512" else "tokens_512", 1)),
                plan_peak_GiB=output.plan.peak_bytes / GIB if output.plan is not None else None,
                token_chunk=stage_plan.token_chunk if stage_plan is not None else None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--mesh", type=Path, default=MESH)
    p.add_argument("--image", type=Path, default=IMAGE)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--data", type=Path, default=DATA)
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--types", nargs="*", default=["512", "1024_cascade", "1536_cascade"])
    r.add_argument("--budget", default="16GB", help="max_memory for the planner run ('' to skip)")
    r.add_argument("--smoke", action="store_true", help="tiny test pipeline (CPU check of the script)")
    r.add_argument("--repeats", type=int, default=3,
                   help="runs per type: cold, then warm runs alternating with / without stage syncs")
    r.add_argument("--same-tokens", action="store_true",
                   help="every run on the identical token sets (default: each run drops a few cells, see Stages.fixed)")
    r.add_argument("--unfused", action="store_true",
                   help="flow blocks on the PyTorch path instead of the Triton block kernels (the baseline)")
    v = sub.add_parser("views", help="multi-view conditioning: time and memory per added view")
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--data", type=Path, default=DATA)
    v.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    v.add_argument("--types", nargs="*", default=["512"])
    v.add_argument("--views", nargs="*", type=int, default=[2, 3, 4])
    v.add_argument("--modes", nargs="*", default=["stochastic", "multidiffusion"])
    v.add_argument("--smoke", action="store_true", help="tiny test pipeline (CPU check of the script)")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args)
    elif args.command == "views":
        run_views(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
