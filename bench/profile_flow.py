"""Profile one full-size flow transformer call as the pipeline's sampler makes it (bf16, random weights).

The shape flow (``SLatFlowModel``, 1.3B, 30 blocks, width 1536) runs on Spot's 2,776-token set (the ``512``
pipeline's latent) with the sampler's batch shapes: 1 item (unguided steps) and 2 items (both CFG passes in one
batch); the dense sparse-structure flow (4,096 tokens) runs at batch 2. Per variant it prints ms per call and a
``torch.profiler`` summary: the top CUDA and CPU ops by self time, kernel launches and host synchronisations
(``cudaStreamSynchronize``, ``aten::item`` / ``_local_scalar_dense``, device-to-host copies) per call.

Variants, each on the same weights and inputs:

* ``eager`` / ``graph``: the PyTorch block path (``set_fused_kernels(False)``), run eagerly or replayed from a CUDA
  graph (`omnivox.pipelines.runtime.GraphedCall`);
* ``fused`` / ``fused graph``: the same with the Triton block kernels (`omnivox.models.kernels.triton.block`), the
  default.

Each line also gives the relative difference to ``eager``.

Usage::

    PYTHONPATH=. python bench/profile_flow.py                 # GPU machine
    PYTHONPATH=. python bench/profile_flow.py --smoke         # CPU check with a tiny model (no profile tables)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omnivox.models import build_model  # noqa: E402
from omnivox.pipelines.runtime import GraphedCall  # noqa: E402
from omnivox.sparse.tensor import SparseTensor  # noqa: E402

DATA = Path(__file__).resolve().parent / ".pipeline_data"
FLOW = dict(model_channels=1536, cond_channels=1024, num_blocks=30, num_heads=12, mlp_ratio=5.3334,
            dtype="bfloat16")
SMOKE = dict(model_channels=96, cond_channels=64, num_blocks=2, num_heads=2, mlp_ratio=2.0, dtype="float32")
SYNC_NAMES = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::item", "aten::_local_scalar_dense",
              "cudaMemcpyAsync")


def with_and_without_fusion(model, eager, graphed_plain, graphed_fused, inputs) -> dict:
    """The four variants as zero-argument calls; each switches the model's kernels before running."""
    def use(fused, fn):
        def call():
            model.set_fused_kernels(fused)
            return fn()
        return call

    return {"eager": use(False, eager), "graph": use(False, lambda: graphed_plain(*inputs)),
            "fused": use(True, eager), "fused graph": use(True, lambda: graphed_fused(*inputs))}


def per_call_ms(fn, device, iters: int) -> float:
    fn()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def profile(fn, label: str, calls: int = 3) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    counts = {e.key: e.count for e in events}
    launches = sum(c for k, c in counts.items() if k in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                         "cuLaunchKernelEx", "cudaGraphLaunch"))
    print(f"\n=== profile {label}: per call over {calls} calls ===")
    print(f"kernel/graph launches per call: {launches / calls:.0f}; " + "; ".join(
        f"{name} {counts.get(name, 0) / calls:g}" for name in SYNC_NAMES))
    print(events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU (checks the script)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    config = SMOKE if args.smoke else FLOW
    do_profile = device.type == "cuda" and not args.no_profile
    torch.manual_seed(0)
    points = np.load(DATA / "spot_tokens.npz")["tokens_512"]
    if args.smoke:
        points = points[::25]
    coords = torch.from_numpy(np.ascontiguousarray(points)).int().to(device)
    rows = len(coords)
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"{rows} tokens, {time.strftime('%Y-%m-%d %H:%M')}")

    model = build_model("SLatFlowModel", {**config, "resolution": 32, "in_channels": 32, "out_channels": 32},
                        device=device).eval()
    with torch.no_grad():  # non-zero adaLN / output layers so the outputs are informative
        for linear in (model.adaLN_modulation[1], model.out_layer):
            linear.weight.normal_(0, 0.02)
    results = {}
    for batch in (1, 2):
        bcoords = torch.cat([torch.cat([torch.full((rows, 1), b, dtype=torch.int32, device=device), coords], 1)
                             for b in range(batch)])
        tokens = SparseTensor.from_coords(bcoords, torch.randn(batch * rows, 32, device=device), batch)
        t = torch.full((batch,), 700.0, device=device)
        cond = torch.randn(batch, 1029, config["cond_channels"], device=device)

        def forward(feats, t, cond, tokens=tokens):
            return model(tokens.replace(feats), t, cond).feats

        def eager(feats=tokens.feats, t=t, cond=cond):
            return forward(feats, t, cond)

        variants = with_and_without_fusion(model, eager, GraphedCall(forward), GraphedCall(forward),
                                           (tokens.feats, t, cond))
        with torch.no_grad():
            model.set_fused_kernels(False)
            reference = eager()
            for name, fn in variants.items():
                ms = per_call_ms(fn, device, args.iters)
                out = fn()
                err = ((out.float() - reference.float()).norm() / reference.float().norm()).item()
                results[(batch, name)] = ms
                print(f"SLat {rows}-token set, batch {batch}, {name}: {ms:.2f} ms per call; relative difference to "
                      f"eager {err:.2e}")
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("error")  # raises if the forward synchronises with the host
                try:
                    variants["fused"]()
                    print(f"batch {batch}: fused eager forward ran under sync_debug_mode='error' (no host sync)")
                except RuntimeError as error:
                    print(f"batch {batch}: eager forward synchronises: {error}")
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            if do_profile:
                for name, fn in variants.items():
                    profile(fn, f"SLat batch {batch} {name}")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    dense = build_model("SparseStructureFlowModel", {**config, "resolution": 16, "in_channels": 8,
                                                     "out_channels": 8}, device=device).eval()
    with torch.no_grad():
        for linear in (dense.adaLN_modulation[1], dense.out_layer):
            linear.weight.normal_(0, 0.02)
    x = torch.randn(2, 8, 16, 16, 16, device=device)
    t = torch.full((2,), 700.0, device=device)
    cond = torch.randn(2, 1029, config["cond_channels"], device=device)
    variants = with_and_without_fusion(dense, lambda: dense(x, t, cond), GraphedCall(dense), GraphedCall(dense),
                                       (x, t, cond))
    with torch.no_grad():
        dense.set_fused_kernels(False)
        reference = dense(x, t, cond)
        for name, fn in variants.items():
            ms = per_call_ms(fn, device, args.iters)
            err = ((fn() - reference).norm() / reference.norm()).item()
            results[("dense 2", name)] = ms
            print(f"dense SS flow 4096 tokens, batch 2, {name}: {ms:.2f} ms per call; relative difference {err:.2e}")
        if do_profile:
            for name in ("eager", "fused"):
                profile(variants[name], f"dense SS batch 2 {name}")
    print("\nsummary (ms per call):", {f"{b}/{n}": round(v, 2) for (b, n), v in results.items()})


if __name__ == "__main__":
    main()
