"""Where a warm image-to-3D run spends its time, per stage: wall time, GPU-busy time, top kernels, host gaps.

Runs `ImageTo3DPipeline.run` with the full-size random-weight networks of `bench_pipelines.py` (same fixed Spot
token sets), warms up, then times each variant (``--variants``) over ``--repeats`` warm runs and profiles one
run of the first variant with ``torch.profiler``. For every stage it reports the wall time, the time the GPU
was busy (union of kernel intervals inside the stage), and the kernels that took the most GPU time, so one can
tell launch- or host-bound stages (busy << wall) from compute-bound ones.

Variants (each switches one thing on the same pipeline and models):

* ``default``: the pipeline as shipped;
* ``no_graphs``: ``pipe.cuda_graphs = False`` (every flow call eager);
* ``cudnn_sparse``: the sparse flows use cuDNN attention first (SDPA's default on Hopper) instead of flash;
* ``unfused``: the PyTorch block path (``set_fused_kernels(False)``);
* ``no_overlap``: ``pipe.overlap_decoding = False`` (shape decoding after the texture stage);
* ``same_tokens``: every run on the identical token sets (by default each run has a new token count, as a new
  image would, see `bench_pipelines.Stages.fixed`).

``--sync-report`` runs one more run under ``torch.cuda.set_sync_debug_mode("warn")`` and lists the source lines
that made the host wait for the GPU, with counts.

Usage::

    PYTHONUNBUFFERED=1 python bench/profile_pipeline.py --out results/ --variants default no_graphs cudnn
    python bench/profile_pipeline.py --smoke --out /tmp/p      # CPU check with the tiny test pipeline
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_models import Report, sync  # noqa: E402
from bench.bench_pipelines import DATA, Stages, full_size_models, pipeline_with  # noqa: E402
from omnivox.pipelines.runtime import GraphedCall  # noqa: E402
from omnivox.pipelines.image_to_3d import ImageTo3DPipeline  # noqa: E402
from omnivox.pipelines.testing import make_test_pipeline  # noqa: E402

VARIANTS = ("default", "no_graphs", "cudnn_sparse", "unfused", "same_tokens", "no_overlap")


@contextlib.contextmanager
def variant(stages: Stages, name: str):
    """Switch the pipeline of ``stages`` into variant ``name`` for the duration of the block."""
    from torch.nn.attention import SDPBackend

    from omnivox.models import flow

    pipe = stages.pipe
    models = [m for m in pipe.models._models.values() if hasattr(m, "set_fused_kernels")]
    graphs, backends = pipe.cuda_graphs, list(flow.VARIABLE_LENGTH_ATTENTION)
    try:
        pipe.cuda_graphs = graphs and name != "no_graphs"
        stages.overlap = name != "no_overlap"
        stages.same_tokens = name == "same_tokens"
        for model in models:
            model.set_fused_kernels(name != "unfused")
        if name == "cudnn_sparse":
            flow.VARIABLE_LENGTH_ATTENTION[:0] = [SDPBackend.CUDNN_ATTENTION]
        yield
    finally:
        pipe.cuda_graphs, stages.same_tokens, stages.overlap = graphs, False, True
        flow.VARIABLE_LENGTH_ATTENTION[:] = backends
        for model in models:
            model.set_fused_kernels(True)


def sync_report(stages: Stages, image, pipeline_type: str) -> dict:
    """``file:line -> count`` of the host synchronisations of one run (bench files excluded)."""
    import warnings
    from collections import Counter

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            one_run(stages.pipe, stages, image, pipeline_type)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    lines = Counter(f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}" for w in caught
                    if "ynchroniz" in str(w.message) and "/bench/" not in w.filename)
    return dict(lines.most_common())


def one_run(pipe, stages: Stages, image, pipeline_type: str, synced: bool = True) -> dict:
    """One run; ``synced``: with a sync at every stage boundary, which gives per-stage times (see `Stages`)."""
    stages.begin_run()
    stages.sync_stages = synced
    pipe.overlap_decoding = stages.overlap and not synced  # one stage at a time where stages are timed
    sync(pipe.device)
    start = time.perf_counter()
    pipe.run(image, seed=0, pipeline_type=pipeline_type)
    sync(pipe.device)
    total = time.perf_counter() - start
    per_stage = {r["stage"].split(" (")[0]: round(r["s"], 4) for r in stages.records}
    per_stage["other"] = round(total - sum(per_stage.values()), 4)
    return dict(total_s=round(total, 4), stages=per_stage)


def with_markers(stages: Stages) -> None:
    """Wrap the stage methods (already timed by `Stages`) in profiler ranges named after the method, and the
    steps inside decoding (the two decoders, mesh extraction, orientation)."""
    import omnivox.ovoxel.extract as extract

    pipe = stages.pipe
    for role in ("shape_slat_decoder", "tex_slat_decoder"):
        model = pipe.models.get(role)
        model.forward = marked_call(model.forward, role)
    extract.dual_grid_to_mesh = marked_call(extract.dual_grid_to_mesh, "dual_grid_to_mesh")
    extract.orient_faces = marked_call(extract.orient_faces, "orient_faces (worker thread)")
    GraphedCall._capture = marked_call(GraphedCall._capture, "graph_capture")
    for model in pipe.models._models.values():
        if hasattr(model, "prepare_condition"):
            model.prepare_condition = marked_call(model.prepare_condition, "prepare_condition")
    for name in ("encode_image", "sample_sparse_structure", "sample_latent", "cascade_coords", "decode_shape",
                 "decode_material", "prepare_image"):
        fn = getattr(pipe, name)

        def marked(*args, _fn=fn, _name=name, **kwargs):
            label = _name if _name != "sample_latent" else f"sample_latent:{args[7]}"
            with torch.profiler.record_function(f"stage/{label}"):
                return _fn(*args, **kwargs)
        setattr(pipe, name, marked)


def marked_call(fn, label: str):
    def marked(*args, **kwargs):
        with torch.profiler.record_function(f"stage/{label}"):
            return fn(*args, **kwargs)
    return marked


def union_length(intervals) -> float:
    total, end = 0.0, -float("inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def idle_gaps(prof, min_gap_us: float = 200.0) -> dict:
    """GPU idle time of the profiled run by the stage the host was in (innermost ``stage/*`` range at the gap's
    middle), over gaps of at least ``min_gap_us``: where the GPU waited on the host."""
    from torch.autograd import DeviceType

    events = prof.events()
    marks = [e for e in events if e.name.startswith("stage/") and e.device_type == DeviceType.CPU]
    main = next((e.thread for e in marks if e.name == "stage/run"), None)
    ranges = sorted(((e.time_range.start, e.time_range.end, e.name[len("stage/"):]) for e in marks
                     if e.thread == main), key=lambda r: r[0])  # the main thread's stages (not the worker's)
    run = next((r for r in ranges if r[2] == "run"), None)
    kernels = sorted((e.time_range.start, e.time_range.end) for e in events
                     if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start
                     and not e.name.startswith("stage/"))
    if run is None or not kernels:
        return {}
    by_stage, busy_until = defaultdict(float), run[0]
    points = kernels + [(run[1], run[1])]
    for start, end in points:
        if start - busy_until >= min_gap_us:
            middle = (busy_until + start) / 2
            inside = [r for r in ranges if r[0] <= middle <= r[1]]
            label = min(inside, key=lambda r: r[1] - r[0])[2] if inside else "outside"
            by_stage[label] += start - busy_until
        busy_until = max(busy_until, end)
    total = sum(by_stage.values())
    out = {k: round(v / 1e3, 1) for k, v in sorted(by_stage.items(), key=lambda kv: -kv[1])}
    out["total_idle_ms"] = round(total / 1e3, 1)
    out["run_ms"] = round((run[1] - run[0]) / 1e3, 1)
    return out


def analyse(prof) -> dict:
    """Per ``stage/*`` range: wall ms, GPU-busy ms (kernel union) and the 8 kernels with the most GPU time."""
    from torch.autograd import DeviceType

    events = prof.events()
    ranges = [(e.name[len("stage/"):], e.time_range.start, e.time_range.end) for e in events
              if e.name.startswith("stage/") and e.device_type == DeviceType.CPU]
    # GPU-side copies of the profiler ranges ("gpu_user_annotation") are not kernels.
    kernels = [(e.name, e.time_range.start, e.time_range.end) for e in events
               if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start
               and not e.name.startswith("stage/")]
    out = {}
    for label, start, end in ranges:
        inside = [(name, max(a, start), min(b, end)) for name, a, b in kernels if b > start and a < end]
        busy = union_length([(a, b) for _, a, b in inside])
        by_name = defaultdict(float)
        for name, a, b in inside:
            by_name[name[:90]] += b - a
        top = sorted(by_name.items(), key=lambda kv: -kv[1])[:8]
        key = label if label not in out else f"{label}#{sum(k.startswith(label) for k in out)}"
        out[key] = dict(wall_ms=round((end - start) / 1e3, 2), gpu_busy_ms=round(busy / 1e3, 2),
                        kernels=len(inside), kernel_ms=round(sum(by_name.values()) / 1e3, 2),
                        top=[(n, round(t / 1e3, 2)) for n, t in top])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--type", default="512")
    parser.add_argument("--variants", nargs="*", default=["default"], choices=VARIANTS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--sync-report", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny test pipeline on the CPU (checks the script)")
    args = parser.parse_args()
    report = Report(args.out)
    from PIL import Image

    data = np.load(DATA)
    tokens = {k: data[k] for k in ("tokens_512", "tokens_1024", "tokens_1536")}
    image = Image.fromarray(data["image"], mode="RGBA")
    if args.smoke:
        device = torch.device("cpu")
        tokens = {k: v[::25] for k, v in tokens.items()}
        pipe = ImageTo3DPipeline.from_pretrained(make_test_pipeline(args.out / "tiny"), device=device)
    else:
        device = torch.device("cuda")
        report.add("machine", dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                                   date=time.strftime("%Y-%m-%d %H:%M")))
        pipe = pipeline_with(full_size_models(device), device)
    stages = Stages(pipe, tokens, device)
    for _ in range(2):
        report.add("warm-up", one_run(pipe, stages, image, args.type))
    for name in args.variants:
        with variant(stages, name):
            one_run(pipe, stages, image, args.type)  # settle (captures, autotuning) in this variant
            runs = [one_run(pipe, stages, image, args.type, synced=False) for _ in range(args.repeats)]
            breakdown = one_run(pipe, stages, image, args.type)
        report.add(f"variant/{name}", dict(totals=[r["total_s"] for r in runs], stages_synced=breakdown))
    if args.sync_report and device.type == "cuda":
        report.add("host_syncs", sync_report(stages, image, args.type))
    if args.no_profile:
        return
    from torch.profiler import ProfilerActivity, profile

    with_markers(stages)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name in args.variants:
        with variant(stages, name):
            one_run(pipe, stages, image, args.type)
            with profile(activities=activities) as prof:
                with torch.profiler.record_function("stage/run"):
                    result = one_run(pipe, stages, image, args.type, synced=False)
        report.add(f"profiled_run/{name} (no stage syncs)", result)
        report.add(f"gpu_idle_by_host_stage_ms/{name}", idle_gaps(prof))
    for label, entry in analyse(prof).items():
        report.add(f"profile/{label}", entry)
    host = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70)
    (args.out / "host_ops.txt").write_text(host)
    report.log("host ops by self CPU time written to host_ops.txt")


if __name__ == "__main__":
    main()
