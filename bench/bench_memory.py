"""Small GPUs: 8-bit flow weights (accuracy, speed) and the memory planner under 6, 8 and 12 GB budgets.

Full-size TRELLIS.2 networks with random weights (as `bench_pipelines.py`: bf16 flows, fp16 SC-VAEs, fp32 DINOv3) on
the real-asset token sets of ``bench/.pipeline_data`` (Spot: 2,776 / 11,242 / 25,397 latent tokens). Sections:

* ``layers``: one Linear of each flow shape at the 512 and 1024 token counts (CFG batch of 2): bf16, int8
  (dequantize + GEMM), ``torch._weight_int8pack_mm``, fp8 (row-quantized activations + ``torch._scaled_mm``).
* ``accuracy``: each flow (structure, shape 512, shape 1024, texture 1024) in int8 and fp8 against the same model
  in bf16: relative error of every block Linear's output on the inputs the bf16 forward gives it (PyTorch block
  path, hooks), and of one whole forward (the pipeline's fused path); then the sparse structure of a full 12-step
  sampling run with the same seed (occupied voxels: intersection over union with bf16's).
* ``encoder``: DINOv3 in int8 and fp8 against float32: relative error of the conditioning tokens at 512 and
  1024 px on the example image (also part of ``accuracy``), and its weight bytes.
* ``resident``: ``1024_cascade`` with every model on the GPU, bf16 / fp8 / int8 flows: a first run on the full
  token sets (its shape and material latents are compared across formats: same seed, same tokens), then warm runs
  on new token counts (the times), peak allocated memory, weight bytes.
* ``budgets``: the planner's runs with models in host memory: plan (printed), then ``run`` inside
  `capped_device_memory` (the CUDA allocator held to the budget), time, peak allocated and reserved memory.

Usage:
    python bench/bench_pipelines.py prepare                                # once, here: Spot's token sets
    PYTHONUNBUFFERED=1 python bench/bench_memory.py run --out results/     # GPU machine
    python bench/bench_memory.py cpu --out results_cpu/                    # the CPU path (float32; 40 min on 2 cores)
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python bench/bench_memory.py run --out r2/ --sections budgets \
        --configs int8:1024_cascade:8GB int8:512:6GB                         # budget runs only
    python bench/bench_memory.py run --smoke --out /tmp/smoke              # script check with tiny models on CPU
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_models import Report, sync  # noqa: E402
from bench.bench_pipelines import (DATA, Stages, full_size_models, load_inputs, machine_info,  # noqa: E402
                                   pipeline_with)
from omnivox.models.quantize import (QuantizedLinear, quantizable_linears, quantize_model,  # noqa: E402
                                     weights_dtype_for)
from omnivox.pipelines.memory import parse_memory  # noqa: E402
from omnivox.pipelines.placement import capped_device_memory, module_bytes  # noqa: E402
from omnivox.sparse import SparseTensor  # noqa: E402

GIB = 2 ** 30
FORMATS = ("int8", "fp8")
FLOWS = ("sparse_structure_flow_model", "shape_slat_flow_model_512", "shape_slat_flow_model_1024",
         "tex_slat_flow_model_512", "tex_slat_flow_model_1024")
LAYER_SHAPES = {"to_qkv": (1536, 4608), "to_out": (1536, 1536), "mlp.0": (1536, 8192), "mlp.2": (8192, 1536)}
TOKEN_RUNS = itertools.count(1)  # warm runs get new token counts (Stages.fixed drops 7 k cells in run k)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def cuda_ms(fn, iters: int = 10) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def with_8bit_weights(models: dict, weights_dtype, device) -> dict:
    """``models`` with every flow and DINOv3 replaced by a quantized copy, as ``weights_dtype=`` loads them (None:
    ``models`` itself)."""
    if weights_dtype is None:
        return dict(models)
    out = dict(models)
    for role in FLOWS + ("image_cond_model",):
        if role in models:
            out[role] = quantize_model(copy.deepcopy(models[role]), weights_dtype_for(models[role], weights_dtype),
                                       work_device=device)
    return out


# ---------------------------------------------------------------------------------------------- layers
def section_layers(report: Report, device, smoke: bool) -> None:
    if device.type != "cuda":
        report.add("layers", "skipped (needs CUDA)")
        return
    for rows in (2 * 2776, 2 * 11242):
        for name, (k, n) in LAYER_SHAPES.items():
            linear = nn.Linear(k, n, device=device, dtype=torch.bfloat16)
            x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)
            int8, fp8 = (QuantizedLinear.from_linear(linear, f) for f in FORMATS)
            flops = 2 * rows * k * n
            result = {}
            with torch.no_grad():
                result["bf16_ms"] = cuda_ms(lambda: linear(x))
                result["int8_ms"] = cuda_ms(lambda: int8(x))
                result["fp8_ms"] = cuda_ms(lambda: fp8(x))
                result["dequantize_int8_ms"] = cuda_ms(lambda: int8.weight)
                scale = int8.weight_scale.to(torch.bfloat16)
                try:
                    result["weight_int8pack_mm_ms"] = cuda_ms(lambda: torch._weight_int8pack_mm(x, int8.codes, scale),
                                                              iters=3)
                except (RuntimeError, NotImplementedError) as error:
                    result["weight_int8pack_mm_ms"] = f"{type(error).__name__}: {str(error)[:120]}"
                if name == "mlp.0":
                    result["bf16_gemm_gelu_epilogue_ms"] = cuda_ms(
                        lambda: torch._addmm_activation(linear.bias, x, linear.weight.t(), use_gelu=True))
                    result["int8_dequantized_gemm_gelu_epilogue_ms"] = cuda_ms(
                        lambda: torch._addmm_activation(int8.bias, x, int8.weight.t(), use_gelu=True))
                    result["fp8_gemm_then_gelu_ms"] = cuda_ms(lambda: F.gelu(fp8(x), approximate="tanh"))
            result["bf16_TFLOPs"] = flops / result["bf16_ms"] / 1e9
            result["fp8_TFLOPs"] = flops / result["fp8_ms"] / 1e9
            report.add(f"layers/{rows}/{name}", result)


# -------------------------------------------------------------------------------------------- accuracy
def flow_inputs(role: str, config, tokens: dict, conds: dict, device):
    """(args, kwargs) of one forward of ``role`` (a model with ``config``) on the real token set at ``t = 0.7``."""
    gen = torch.Generator().manual_seed(1)
    t = torch.tensor([700.0], device=device)
    if role == "sparse_structure_flow_model":
        r, c = config.resolution, config.in_channels
        return (torch.randn(1, c, r, r, r, generator=gen).to(device), t, conds[512]), {}
    channels = config.in_channels - (32 if role.startswith("tex") else 0)
    key = "tokens_512" if role.endswith("512") else "tokens_1024"
    cells = torch.from_numpy(tokens[key].astype(np.int64))
    coords = torch.cat([torch.zeros(len(cells), 1, dtype=torch.int64), cells], 1).to(torch.int32)
    x = SparseTensor.from_coords(coords, torch.randn(len(coords), channels, generator=gen), 1).to(device)
    cond = conds[512 if role.endswith("512") else 1024]
    kwargs = {}
    if role.startswith("tex"):
        kwargs["concat_cond"] = x.replace(torch.randn(len(coords), config.in_channels - channels,
                                                      generator=gen).to(device))
    return (x, t, cond), kwargs


def layer_errors(model: nn.Module, quantized: dict, args, kwargs) -> dict:
    """Per block Linear: relative error of each 8-bit layer's output against the bf16 layer on the same input (the
    input the bf16 forward feeds it). PyTorch block path, so every layer is called as a module."""
    names = dict((m, n) for n, m in quantizable_linears(model))
    errors = {fmt: {} for fmt in quantized}
    layers = {fmt: dict(quantizable_linears_of(q)) for fmt, q in quantized.items()}

    def hook(module, inputs, output):
        name = names[module]
        for fmt in quantized:
            errors[fmt][name] = relative(layers[fmt][name](inputs[0]), output)

    handles = [m.register_forward_hook(hook) for m in names]
    model.set_fused_kernels(False)
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        model.set_fused_kernels(True)
        for handle in handles:
            handle.remove()
    return errors


def quantizable_linears_of(model: nn.Module):
    for name, module in model.blocks.named_modules(prefix="blocks"):
        if isinstance(module, QuantizedLinear):
            yield name, module


def summarize_layers(errors: dict) -> dict:
    kinds = {}
    for name, value in errors.items():
        kind = name.split(".", 2)[2]  # blocks.i.<kind>
        kinds.setdefault(kind, []).append(value)
    values = list(errors.values())
    return dict(layers=len(values), median=statistics.median(values), max=max(values),
                per_kind={k: dict(median=statistics.median(v), max=max(v)) for k, v in kinds.items()})


def section_accuracy(report: Report, models: dict, quantized: dict, tokens: dict, conds: dict, device,
                     smoke: bool) -> None:
    for role in ("sparse_structure_flow_model", "shape_slat_flow_model_512", "shape_slat_flow_model_1024",
                 "tex_slat_flow_model_1024"):
        args, kwargs = flow_inputs(role, models[role].config, tokens, conds, device)
        per_layer = layer_errors(models[role], {f: quantized[f][role] for f in FORMATS}, args, kwargs)
        result = {}
        with torch.no_grad():
            reference = models[role](*args, **kwargs)
            reference = reference.feats if isinstance(reference, SparseTensor) else reference
            for fmt in FORMATS:
                out = quantized[fmt][role](*args, **kwargs)
                out = out.feats if isinstance(out, SparseTensor) else out
                result[fmt] = dict(forward=relative(out, reference), per_layer=summarize_layers(per_layer[fmt]))
        result["tokens"] = int(reference.shape[0]) if reference.dim() == 2 else 4096
        report.add(f"accuracy/{role}", result)


def section_structure_sampling(report: Report, pipes: dict, image, smoke: bool) -> None:
    """The sparse structure of a full 12-step structure sampling run, same seed, per format: IoU with bf16's."""
    from omnivox.pipelines.image_to_3d import ImageTo3DPipeline

    occupied = {}
    for fmt, pipe in pipes.items():
        picture = pipe.prepare_image(image, True)
        cond = pipe.encode_image(picture, 512)
        plan = pipe.plan("512")
        coords = ImageTo3DPipeline.sample_sparse_structure(
            pipe, cond, 32, 1, torch.Generator().manual_seed(0), pipe.sampler_params("sparse_structure"), plan)
        occupied[fmt] = {tuple(c) for c in coords[:, 1:].tolist()}
    base = occupied["bf16"]
    report.add("sampling/sparse_structure", {
        fmt: dict(voxels=len(v), iou_with_bf16=len(v & base) / max(1, len(v | base))) for fmt, v in occupied.items()})


# ------------------------------------------------------------------------------------------ pipeline runs
class Capture:
    """Wraps ``pipe.sample_latent`` (after `Stages`): the latents of the latest run, in call order."""

    def __init__(self, pipe) -> None:
        self.latents: list = []
        inner = pipe.sample_latent

        def capture(*args, **kwargs):
            out = inner(*args, **kwargs)
            self.latents.append(out.float().cpu())
            return out
        pipe.sample_latent = capture


def timed_run(pipe, stages: Stages, image, pipeline_type: str, token_run: int) -> dict:
    stages.run_index = token_run
    gc.collect()
    at_start = None
    if pipe.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        at_start = torch.cuda.memory_reserved() / GIB
    sync(pipe.device)
    start = time.perf_counter()
    output = pipe.run(image, seed=0, pipeline_type=pipeline_type)
    sync(pipe.device)
    seconds = time.perf_counter() - start
    cuda = pipe.device.type == "cuda"
    return dict(s=seconds, peak_GiB=torch.cuda.max_memory_allocated() / GIB if cuda else None,
                reserved_GiB=torch.cuda.max_memory_reserved() / GIB if cuda else None,
                reserved_at_start_GiB=at_start, voxels=len(output[0].coords),
                plan=str(output.plan) if output.plan is not None else None)


def section_resident(report: Report, model_sets: dict, tokens: dict, image, device, warm: dict) -> None:
    latents = {}
    for fmt, models in model_sets.items():
        pipe = pipeline_with(models, device)
        stages = Stages(pipe, tokens, device)
        stages.sync_stages = False
        capture = Capture(pipe)
        weights = sum(module_bytes(m) for m in models.values())
        flow_weights = sum(module_bytes(models[r]) for r in FLOWS if r in models)
        runs = []
        for attempt in range(1 + warm[fmt]):
            capture.latents.clear()
            try:
                runs.append(timed_run(pipe, stages, image, "1024_cascade", 0 if attempt == 0 else next(TOKEN_RUNS)))
            except torch.OutOfMemoryError as error:
                runs.append(dict(error=str(error)[:300]))
            if attempt == 0:
                latents[fmt] = list(capture.latents)
            runs[-1].pop("plan", None)
        report.add(f"resident/1024_cascade/{fmt}", dict(
            weights_GiB=weights / GIB, flow_weights_GiB=flow_weights / GIB, first_run=runs[0],
            warm_s=[r.get("s") for r in runs[1:]], warm=runs[1:]))
        del pipe, stages, capture
        gc.collect()
        torch.cuda.empty_cache() if device.type == "cuda" else None
    stages_names = ["shape_slat_lr (512 flow, 2,776 tokens)", "shape_slat (1024 flow, 11,242 tokens)",
                    "tex_slat (1024 texture flow)"]
    errors = {}
    for fmt in model_sets:
        if fmt == "bf16" or len(latents.get(fmt, [])) != len(latents["bf16"]):
            continue
        errors[fmt] = {name: relative(a, b) for name, a, b in zip(stages_names, latents[fmt], latents["bf16"])}
    report.add("sampling/1024_cascade_latents_vs_bf16", errors)


def section_budgets(report: Report, model_sets: dict, tokens: dict, image, device, configs) -> None:
    for fmt, pipeline_type, budget in configs:
        pipe = pipeline_with(model_sets[fmt], device, max_memory=budget)
        stages = Stages(pipe, tokens, device)
        stages.sync_stages = False
        hr = {"512": "tokens_512", "1024_cascade": "tokens_1024", "1536_cascade": "tokens_1536"}[pipeline_type]
        label = f"budgets/{pipeline_type}/{budget}/{fmt}"
        try:
            plan = pipe.plan(pipeline_type, latent_tokens=len(tokens[hr]), lr_tokens=len(tokens["tokens_512"]))
            plan.check_budget()
        except ValueError as error:
            report.add(label, dict(refused=str(error)))
            continue
        budget_bytes = parse_memory(budget)
        try:
            # Twice: the first run also moves the offloaded models' host copies into page-locked memory.
            with capped_device_memory(device, budget_bytes):
                first = timed_run(pipe, stages, image, pipeline_type, next(TOKEN_RUNS))
                result = timed_run(pipe, stages, image, pipeline_type, next(TOKEN_RUNS))
            result["first_s"] = first.get("s")
        except torch.OutOfMemoryError as error:
            result = dict(error=f"OutOfMemoryError: {str(error)[:400]}")
        result.update(planned_peak_GiB=plan.peak_bytes / GIB, budget_GiB=budget_bytes / GIB, offload=plan.offload,
                      under_budget=(result.get("reserved_GiB") or 1e9) <= budget_bytes / GIB)
        report.add(label, result)
        for model in model_sets[fmt].values():  # a resident plan moved them to the device for good
            model.to("cpu")
        del pipe, stages
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def section_refusal(report: Report, model_sets: dict, tokens: dict, device) -> None:
    """The error a budget too small for a run gives, before any work."""
    pipe = pipeline_with(model_sets["int8"], device, max_memory="3GB")
    try:
        pipe.plan("1536_cascade", latent_tokens=len(tokens["tokens_1536"])).check_budget()
        report.add("refusal/1536_cascade/3GB", "no error (unexpected)")
    except ValueError as error:
        report.add("refusal/1536_cascade/3GB", str(error))


# ------------------------------------------------------------------------------------------------ main
def run(args) -> None:
    report = Report(Path(args.out))
    device = torch.device(args.device)
    data, tokens, image = load_inputs(args.data)
    report.add("machine", machine_info(device, args.smoke, tokens))
    if "layers" in args.sections:
        section_layers(report, device, args.smoke)
    if args.smoke:
        from omnivox.pipelines.image_to_3d import ImageTo3DPipeline
        from omnivox.pipelines.testing import make_test_pipeline

        tokens = {k: v[::25] for k, v in tokens.items()}
        pipe = ImageTo3DPipeline.from_pretrained(make_test_pipeline(Path(args.out) / "tiny"), device=device)
        models = {role: pipe.models.get(role) for role in pipe.config.models}
        models["image_cond_model"] = pipe.models.get("image_cond_model")
    else:
        start = time.perf_counter()
        models = full_size_models(device)
        report.log(f"built full-size models in {time.perf_counter() - start:.1f} s")
    model_sets = {"bf16": models}
    for fmt in FORMATS:
        start = time.perf_counter()
        model_sets[fmt] = with_8bit_weights(models, fmt, device)
        report.log(f"quantized the flows and DINOv3 to {fmt} in {time.perf_counter() - start:.1f} s")
    pipes = {fmt: pipeline_with(m, device) for fmt, m in model_sets.items()}
    picture = pipes["bf16"].prepare_image(image, True)
    conds = {size: pipes["bf16"].encode_image(picture, size) for size in (512, 1024)}
    if "encoder" in args.sections or "accuracy" in args.sections:
        for fmt in FORMATS:  # DINOv3's conditioning tokens against float32's, same picture
            report.add(f"accuracy/image_cond_model/{fmt}", dict(
                weights_GiB=module_bytes(model_sets[fmt]["image_cond_model"]) / GIB,
                float32_weights_GiB=module_bytes(models["image_cond_model"]) / GIB,
                **{f"relative_error_{size}px": relative(pipes[fmt].encode_image(picture, size), conds[size])
                   for size in (512, 1024)}))
    if "accuracy" in args.sections:
        section_accuracy(report, models, model_sets, tokens, conds, device, args.smoke)
        section_structure_sampling(report, pipes, image, args.smoke)
    del pipes
    gc.collect()
    if "resident" in args.sections:
        section_resident(report, model_sets, tokens, image, device, dict(bf16=2, fp8=2, int8=1))
    if "budgets" in args.sections:
        for models_of_format in model_sets.values():
            for model in models_of_format.values():
                model.to("cpu")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        section_refusal(report, model_sets, tokens, device)
        configs = [tuple(text.split(":")) for text in args.configs]
        section_budgets(report, model_sets, tokens, image, device, configs)


def run_cpu(args) -> None:
    """The CPU path (float32 compute, as the pipelines run on CPUs): the 512 shape flow, full size, random weights."""
    from bench.bench_models import make_informative
    from omnivox.models import build_model
    from omnivox.pipelines.samplers import FlowEulerSampler
    from omnivox.pipelines.testing import released_samplers

    report = Report(Path(args.out))
    torch.set_num_threads(args.threads)
    report.add("machine", dict(python=platform.python_version(), torch=torch.__version__, cpu=platform.processor(),
                               threads=torch.get_num_threads(),
                               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
    data = np.load(args.data)
    flow_args = dict(model_channels=1536, cond_channels=1024, num_blocks=30, num_heads=12, mlp_ratio=5.3334,
                     resolution=32, in_channels=32, out_channels=32, dtype="float32")
    if args.smoke:
        flow_args.update(model_channels=96, num_blocks=2, num_heads=2)
    torch.manual_seed(0)
    model = build_model("SLatFlowModel", flow_args).eval()
    make_informative(model, 1)
    quantized = {fmt: quantize_model(copy.deepcopy(model), fmt) for fmt in FORMATS}
    report.add("cpu/weights_GiB", dict(float32=module_bytes(model) / GIB,
                                       **{f: module_bytes(q) / GIB for f, q in quantized.items()}))
    gen = torch.Generator().manual_seed(2)
    cond = torch.randn(1, 1029, 1024, generator=gen)
    tokens = {"tokens_512": data["tokens_512"]}
    (x, t, _), _ = flow_inputs("shape_slat_flow_model_512", model.config, tokens, {512: cond}, torch.device("cpu"))
    start = time.perf_counter()
    per_layer = layer_errors(model, quantized, (x, t, cond), {})
    report.log(f"per-layer pass {time.perf_counter() - start:.1f} s")
    result = {}
    with torch.no_grad():
        start = time.perf_counter()
        reference = model(x, t, cond).feats
        result["float32_forward_s"] = time.perf_counter() - start
        for fmt, q in quantized.items():
            start = time.perf_counter()
            out = q(x, t, cond).feats
            result[fmt] = dict(forward=relative(out, reference), forward_s=time.perf_counter() - start,
                               per_layer=summarize_layers(per_layer[fmt]))
    result["tokens"] = len(reference)
    report.add("cpu/accuracy/shape_slat_flow_model_512", result)
    # A full 12-step sampling run (CFG 7.5, rescale 0.5, interval [0.6, 1]) on a subset of the tokens, same noise.
    keep = x.coords[:: args.sampling_stride]
    noise = torch.randn(len(keep), 32, generator=torch.Generator().manual_seed(3))
    template = SparseTensor.from_coords(keep, noise, 1)
    params = released_samplers(12)["shape_slat"]
    finals = {}
    for fmt, net in [("float32", model), *quantized.items()]:
        def velocity(feats, step, condition, net=net):
            with torch.no_grad():
                return net(template.replace(feats), torch.full((1,), 1000.0 * step), condition).feats
        start = time.perf_counter()
        finals[fmt] = FlowEulerSampler().sample(velocity, noise, cond, torch.zeros_like(cond), params)
        report.log(f"sampling {fmt}: {time.perf_counter() - start:.1f} s")
    report.add("cpu/sampling/shape_slat_512", dict(
        tokens=len(keep), steps=12, **{f: relative(finals[f], finals["float32"]) for f in FORMATS}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--data", type=Path, default=DATA)
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--sections", nargs="*", default=["layers", "accuracy", "resident", "budgets"])
    r.add_argument("--smoke", action="store_true", help="tiny test pipeline (CPU check of the script)")
    r.add_argument("--configs", nargs="*", default=[
        "int8:1024_cascade:8GB", "int8:512:6GB", "bf16:1024_cascade:8GB", "int8:1536_cascade:8GB",
        "int8:1024_cascade:12GB", "int8:512:12GB", "int8:512:8GB", "int8:1536_cascade:12GB"],
        help="budget runs, FORMAT:TYPE:BUDGET (FORMAT bf16, int8 or fp8)")
    c = sub.add_parser("cpu")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--data", type=Path, default=DATA)
    c.add_argument("--threads", type=int, default=torch.get_num_threads())
    c.add_argument("--sampling-stride", type=int, default=8, help="every n-th token in the sampling run")
    c.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
