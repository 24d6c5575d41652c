"""Benchmark of omnivox.sparse: submanifold conv (Triton vs plain PyTorch), and varlen attention.

Needs torch only (triton on GPU). Run on a CUDA machine:

    PYTHONUNBUFFERED=1 python bench/bench_sparse.py --coords bench/.sparse_data/bunny_1024.npy --out results.md

and on a CPU machine (plain PyTorch path at N ~ 100K, C = 64):

    python bench/bench_sparse.py --cpu --coords bench/.sparse_data/bunny_1024.npy

Coordinates: ``--coords`` is a ``(N, 3)`` integer ``.npy`` of active voxels on a 1024 grid (made from a real
mesh with ``omnivox.ovoxel.mesh_to_dual_grid``; see docs/benchmarks/sparse.md). The coarser levels of the
SC-VAE (512, 256, 128, 64) are the parents of the previous level, as space-to-channel produces them.
Without ``--coords`` a one-voxel-thick sphere shell (radius 0.4 R) is used, the reference's benchmark shape.

Reported per shape: neighbour-map build time, bf16 forward and forward+backward times, "valid" TFLOP/s
(2 x real neighbour pairs x Ci x Co per forward; backward counts twice that) against the measured bf16
matmul rate, the bytes a forward must move (features in and out, the int32 neighbour map, the weights)
against the measured copy bandwidth, the speed-up over the plain PyTorch path, and the first-call time
(Triton compilation). Timings are medians of ``triton.testing.do_bench``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np
import torch

from omnivox.sparse import SparseTensor, attention as SA, functional as SF

LEVELS = [(1024, 64), (512, 128), (256, 256), (128, 512), (64, 1024)]  # (grid resolution, channels)


def shell_coords(resolution: int, device) -> torch.Tensor:
    r = resolution
    ax = torch.arange(r, device=device, dtype=torch.float32) - (r - 1) / 2
    xyz = []
    for x0 in range(0, r, 64):  # slab by slab to bound memory at R = 1024
        xs = ax[x0:x0 + 64]
        d = (xs[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2).sqrt()
        idx = ((d - 0.4 * r).abs() < 0.5).nonzero()
        idx[:, 0] += x0
        xyz.append(idx)
    return torch.cat(xyz).int()


def asset_coords(path: str, resolution: int, device) -> torch.Tensor:
    """The voxels a real mesh occupies on a ``resolution`` grid (the SC-VAE's top level for that asset)."""
    from omnivox.assets import load_asset
    from omnivox.ovoxel import mesh_to_dual_grid

    scene = load_asset(path).normalized()
    vertices = torch.as_tensor(scene.vertices, dtype=torch.float32, device=device)
    faces = torch.as_tensor(scene.faces, dtype=torch.int64, device=device)
    coords, _, _ = mesh_to_dual_grid(vertices, faces, resolution)
    return torch.as_tensor(coords, device=device).to(torch.int32)


def level_coords(xyz: torch.Tensor, levels: int) -> list:
    """Coordinates of the finest level and of ``levels - 1`` successive 2x parent levels, (N, 4) int32."""
    coords = torch.cat([torch.zeros_like(xyz[:, :1]), xyz], 1).int()
    out = [coords]
    for _ in range(levels - 1):
        coarse, _ = SF.space_to_channel(SparseTensor.from_coords(out[-1], torch.zeros(out[-1].shape[0], 1,
                                                                                         device=coords.device)))
        out.append(coarse.coords)
    return out


def measure_ceilings(bench):
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = bench(lambda: a @ b)
    matmul_tflops = 2 * n ** 3 / t / 1e9
    src = torch.randn(2 ** 30 // 4, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src))
    copy_tbps = 2 * src.numel() * 4 / t / 1e9
    return matmul_tflops, copy_tbps


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def bench_conv_gpu(coords, c, bench, matmul_tflops, copy_tbps, windows, log):
    from omnivox.sparse.kernels.triton import submconv as T

    n = coords.shape[0]
    g = torch.Generator(device="cuda").manual_seed(n)
    feats = torch.randn(n, c, device="cuda", generator=g).bfloat16()
    weight = (torch.randn(c, 3, 3, 3, c, device="cuda", generator=g) / (27 * c) ** 0.5).bfloat16()
    bias = torch.randn(c, device="cuda", generator=g).bfloat16()
    x = SparseTensor.from_coords(coords, feats)

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    nmap = SF.neighbor_map(x)
    torch.cuda.synchronize()
    map_first_ms = (time.perf_counter() - t0) * 1e3
    map_ms = bench(lambda: SF.neighbor_map(x.without_cache()))
    pairs = int((nmap.table >= 0).sum())
    fwd_flop = 2 * pairs * c * c
    fwd_bytes = n * c * 2 * 2 + n * 27 * 4 + 27 * c * c * 2
    w27 = weight.reshape(c, 27, c)

    row = {"N": n, "C": c, "neighbours/voxel": pairs / n, "map_ms": map_ms, "map_first_ms": map_first_ms}

    # First call = Triton compilation (cold cache on a fresh machine) + row schedule.
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out_t = SF.submanifold_conv3d(x, weight, bias, backend="triton").feats
    torch.cuda.synchronize()
    row["first_fwd_s"] = time.perf_counter() - t0
    out_r = SF.submanifold_conv3d(x, weight, bias, backend="torch").feats
    row["rel_err_vs_torch"] = rel_err(out_t, out_r)

    # Row-ordering variants of the Triton forward (sort window), to pick the default.
    for window in windows:
        w = min(window, n)
        T.submanifold_conv3d_triton(feats, nmap, w27, bias, sort_window=w)  # schedule + warm
        row[f"fwd_ms_window{window}"] = bench(lambda: T.submanifold_conv3d_triton(feats, nmap, w27, bias,
                                                                                   sort_window=w))
    fwd_ms = bench(lambda: SF.submanifold_conv3d(x, weight, bias, backend="triton"))
    torch_fwd_ms = bench(lambda: SF.submanifold_conv3d(x, weight, bias, backend="torch"))

    xf = x.replace(feats.clone().requires_grad_(True))
    wr = weight.clone().requires_grad_(True)
    br = bias.clone().requires_grad_(True)
    cot = torch.randn(n, c, device="cuda", generator=g).bfloat16()

    def fwd_bwd(backend):
        def run():
            out = SF.submanifold_conv3d(xf, wr, br, backend=backend).feats
            out.backward(cot)
        return run

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fwd_bwd("triton")()
    torch.cuda.synchronize()
    row["first_fwd_bwd_s"] = time.perf_counter() - t0
    fwd_bwd_ms = bench(fwd_bwd("triton"))
    torch_fwd_bwd_ms = bench(fwd_bwd("torch"))

    row.update(fwd_ms=fwd_ms, fwd_bwd_ms=fwd_bwd_ms, torch_fwd_ms=torch_fwd_ms, torch_fwd_bwd_ms=torch_fwd_bwd_ms)
    row["fwd_tflops"] = fwd_flop / fwd_ms / 1e9
    row["fwd_frac_matmul"] = row["fwd_tflops"] / matmul_tflops
    row["fwd_bwd_tflops"] = 3 * fwd_flop / fwd_bwd_ms / 1e9
    row["fwd_bwd_frac_matmul"] = row["fwd_bwd_tflops"] / matmul_tflops
    row["fwd_bytes_MB"] = fwd_bytes / 1e6
    row["fwd_frac_copy_bw"] = fwd_bytes / fwd_ms / 1e9 / copy_tbps
    row["speedup_fwd"] = torch_fwd_ms / fwd_ms
    row["speedup_fwd_bwd"] = torch_fwd_bwd_ms / fwd_bwd_ms
    log(str({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    return row


def bench_attention_gpu(bench, matmul_tflops, log):
    rows = []
    heads, head_dim = 12, 128
    for lens in ([9600], [32768], [4800, 4800]):
        n = sum(lens)
        coords = torch.cat([torch.cat([torch.full((m, 1), b), torch.zeros(m, 1), torch.arange(m)[:, None] // 1024,
                                       torch.arange(m)[:, None] % 1024], 1) for b, m in enumerate(lens)]).int().cuda()
        qkv = torch.randn(n, 3, heads, head_dim, device="cuda", dtype=torch.bfloat16)
        x = SparseTensor.from_coords(coords, qkv)
        SA.sparse_self_attention(x)
        ms = bench(lambda: SA.sparse_self_attention(x))
        flop = sum(4 * m * m * head_dim * heads for m in lens)
        row = {"tokens": "x".join(map(str, lens)), "ms": ms, "tokens_per_s": n / ms * 1e3,
               "tflops": flop / ms / 1e9, "frac_matmul": flop / ms / 1e9 / matmul_tflops}
        log(str(row))
        rows.append(row)
    return rows


def bench_cpu(coords_list, log):
    """Plain PyTorch path on CPU at the level closest to N = 100K, C = 64."""
    coords = min(coords_list, key=lambda c: abs(c.shape[0] - 100_000))
    n, c = coords.shape[0], 64
    g = torch.Generator().manual_seed(0)
    x = SparseTensor.from_coords(coords, torch.randn(n, c, generator=g))
    weight = torch.randn(c, 3, 3, 3, c, generator=g) / (27 * c) ** 0.5
    t0 = time.perf_counter()
    SF.neighbor_map(x)
    map_s = time.perf_counter() - t0
    rows = {"N": n, "C": c, "threads": torch.get_num_threads(), "map_s": map_s}
    SF.submanifold_conv3d(x, weight, backend="torch")  # also builds the per-tap row pairs
    for dtype in (torch.float32, torch.bfloat16):
        xd, wd = x.to(dtype), weight.to(dtype)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            SF.submanifold_conv3d(xd, wd, backend="torch")
            times.append(time.perf_counter() - t0)
        rows[f"fwd_s_{str(dtype).split('.')[-1]}"] = sorted(times)[1]
    xf = x.replace(x.feats.clone().requires_grad_(True))
    wf = weight.clone().requires_grad_(True)
    t0 = time.perf_counter()
    SF.submanifold_conv3d(xf, wf, backend="torch").feats.sum().backward()
    rows["fwd_bwd_s_float32"] = time.perf_counter() - t0
    log(str(rows))
    return rows


def markdown(conv_rows, attn_rows, matmul_tflops, copy_tbps, device_name, windows) -> str:
    lines = [f"Machine: {device_name}; torch {torch.__version__}; {datetime.date.today()}",
             f"Measured ceilings (same run): bf16 matmul 8192^3 {matmul_tflops:.0f} TFLOP/s, "
             f"device copy {copy_tbps:.2f} TB/s (read + write)", "",
             "| N | C | nbrs/voxel | map ms | fwd ms | valid TFLOP/s (of matmul) | fwd bytes MB (of copy BW) "
             "| fwd+bwd ms | fwd+bwd TFLOP/s (of matmul) | torch fwd ms | torch fwd+bwd ms | speed-up fwd / fwd+bwd "
             "| first fwd s | first fwd+bwd s | rel err vs torch |",
             "|" + "---|" * 15]
    for r in conv_rows:
        lines.append(
            f"| {r['N']:,} | {r['C']} | {r['neighbours/voxel']:.1f} | {r['map_ms']:.2f} | {r['fwd_ms']:.3f} | "
            f"{r['fwd_tflops']:.0f} ({r['fwd_frac_matmul']:.2f}) | {r['fwd_bytes_MB']:.0f} ({r['fwd_frac_copy_bw']:.2f}) | "
            f"{r['fwd_bwd_ms']:.3f} | {r['fwd_bwd_tflops']:.0f} ({r['fwd_bwd_frac_matmul']:.2f}) | "
            f"{r['torch_fwd_ms']:.2f} | {r['torch_fwd_bwd_ms']:.2f} | {r['speedup_fwd']:.1f} / {r['speedup_fwd_bwd']:.1f} | "
            f"{r['first_fwd_s']:.2f} | {r['first_fwd_bwd_s']:.2f} | {r['rel_err_vs_torch']:.1e} |")
    lines += ["", "Forward ms by sort window (rows sorted by neighbour pattern inside windows of this many rows):", "",
              "| N | C | " + " | ".join(f"window {w}" for w in windows) + " |", "|" + "---|" * (2 + len(windows))]
    for r in conv_rows:
        lines.append(f"| {r['N']:,} | {r['C']} | " + " | ".join(f"{r[f'fwd_ms_window{w}']:.3f}" for w in windows) + " |")
    lines += ["", "| attention tokens | ms | tokens/s | TFLOP/s (of matmul) |", "|---|---|---|---|"]
    for r in attn_rows:
        lines.append(f"| {r['tokens']} | {r['ms']:.2f} | {r['tokens_per_s']:,.0f} | {r['tflops']:.0f} ({r['frac_matmul']:.2f}) |")
    return "\n".join(lines)

# ------------------------------------------------------------------ --vs-flexgemm (issue #19, measurement only)

def reference_conv_subset(coords, feats, weight, bias, rows) -> torch.Tensor:
    """float64 ``out[rows]`` of the submanifold conv as `SF.submanifold_conv3d` defines it (first kernel axis walks
    x), found by binary search on sorted voxel keys: independent of both implementations' neighbour maps."""
    c64 = coords.long()
    span = int(c64[:, 1:].max()) + 3
    key = lambda c: ((c[:, 0] * span + c[:, 1] + 1) * span + c[:, 2] + 1) * span + c[:, 3] + 1
    keys, order = key(c64).sort()
    out = bias.double()[None].repeat(len(rows), 1) if bias is not None else 0
    f64, w64 = feats.double(), weight.double()
    for a in range(3):
        for b in range(3):
            for c in range(3):
                q = c64[rows].clone()
                q[:, 1:] += torch.tensor([a - 1, b - 1, c - 1], device=q.device)
                k = key(q)
                pos = torch.searchsorted(keys, k).clamp(max=len(keys) - 1)
                hit = keys[pos] == k
                src = torch.zeros(len(rows), feats.shape[1], dtype=torch.float64, device=feats.device)
                src[hit] = f64[order[pos[hit]]]
                out = out + src @ w64[:, a, b, c, :].T
    return out


def _load_flexgemm():
    try:
        import flex_gemm
        from flex_gemm.ops import spconv as flex_spconv
        return flex_gemm, flex_spconv, None
    except Exception as error:  # not built: report and go on with ours
        return None, None, f"{type(error).__name__}: {str(error)[:200]}"


def bench_vs_flexgemm_level(coords, c, resolution, bench, device, flex_spconv, log, subset=4096):
    n = coords.shape[0]
    g = torch.Generator(device=device).manual_seed(n)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    feats = torch.randn(n, c, device=device, generator=g).to(dtype)
    weight = (torch.randn(c, 3, 3, 3, c, device=device, generator=g) / (27 * c) ** 0.5).to(dtype)
    bias = torch.randn(c, device=device, generator=g).to(dtype)
    cot = torch.randn(n, c, device=device, generator=g).to(dtype)
    rows = torch.randperm(n, device=device, generator=g)[:subset]
    ref = reference_conv_subset(coords, feats, weight, bias, rows)
    row = {"N": n, "C": c, "R": resolution}

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def first(fn):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    # ours: cached neighbour map (SparseTensor keeps it), Triton on CUDA
    backend = "triton" if device == "cuda" else "torch"
    x = SparseTensor.from_coords(coords, feats)
    row["ours_map_first_ms"] = first(lambda: SF.neighbor_map(x)) * 1e3
    row["ours_map_ms"] = bench(lambda: SF.neighbor_map(x.without_cache()))
    row["ours_pairs_per_voxel"] = int((SF.neighbor_map(x).table >= 0).sum()) / n
    row["ours_first_fwd_s"] = first(lambda: SF.submanifold_conv3d(x, weight, bias, backend=backend))
    out_ours = SF.submanifold_conv3d(x, weight, bias, backend=backend).feats
    row["ours_rel_err_f64"] = rel_err(out_ours[rows], ref)
    row["ours_fwd_ms"] = bench(lambda: SF.submanifold_conv3d(x, weight, bias, backend=backend))
    xf = x.replace(feats.clone().requires_grad_(True))
    wr, br = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)

    def ours_fwd_bwd():
        SF.submanifold_conv3d(xf, wr, br, backend=backend).feats.backward(cot)

    row["ours_first_fwd_bwd_s"] = first(ours_fwd_bwd)
    row["ours_fwd_bwd_ms"] = bench(ours_fwd_bwd)

    def ours_fwd_bwd_fresh():  # as after optimizer.zero_grad(): no accumulation into earlier gradients
        xf.feats.grad = wr.grad = br.grad = None
        ours_fwd_bwd()

    row["ours_fwd_bwd_fresh_ms"] = bench(ours_fwd_bwd_fresh)
    if device == "cuda":  # where the backward time goes: input gradient (forward kernel) vs weight gradient
        from omnivox.sparse.kernels.triton import submconv as T

        nmap, w27 = SF.neighbor_map(x), weight.reshape(c, 27, c)
        row["ours_bwd_input_ms"] = bench(lambda: T.submanifold_conv3d_backward_triton(cot, feats, nmap, w27,
                                                                                      True, False))
        row["ours_bwd_weight_ms"] = bench(lambda: T.submanifold_conv3d_backward_triton(cot, feats, nmap, w27,
                                                                                       False, True))
        # fwd+bwd (fresh gradients) less the forward, input-gradient and weight-gradient launches timed alone:
        # what autograd and the bias gradient add
        row["ours_outside_kernels_ms"] = row["ours_fwd_bwd_fresh_ms"] - (
            row["ours_fwd_ms"] + row["ours_bwd_input_ms"] + row["ours_bwd_weight_ms"])

    if flex_spconv is not None:
        flex_spconv.set_algorithm(flex_spconv.Algorithm.MASKED_IMPLICIT_GEMM_SPLITK)  # their default/benchmark
        shape = torch.Size([1, c, resolution, resolution, resolution])
        fn_cache = flex_spconv.SubMConv3dFunction._compute_neighbor_cache
        coords_c = coords.int().contiguous()
        cache = {}
        row["flex_map_first_ms"] = first(
            lambda: cache.setdefault("c", fn_cache(coords_c, shape, (3, 3, 3), (1, 1, 1), True))) * 1e3
        row["flex_map_ms"] = bench(lambda: fn_cache(coords_c, shape, (3, 3, 3), (1, 1, 1), True))
        nc = cache["c"]

        def flex_fwd(w=weight):
            return flex_spconv.sparse_submanifold_conv3d(feats, coords_c, shape, w, bias, nc)[0]

        row["flex_first_fwd_s"] = first(flex_fwd)
        out_flex = flex_fwd()
        row["flex_rel_err_f64"] = rel_err(out_flex[rows], ref)
        row["flex_vs_ours_rel"] = rel_err(out_flex, out_ours)
        if row["flex_rel_err_f64"] > 0.05:  # tap convention differs? try the flipped kernel, say so
            err = rel_err(flex_fwd(weight.flip(1, 2, 3).contiguous())[rows], ref)
            row["flex_rel_err_f64_flipped_weight"] = err
        row["flex_fwd_ms"] = bench(flex_fwd)
        ff = feats.clone().requires_grad_(True)
        wf, bf = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)

        def flex_fwd_bwd():
            flex_spconv.sparse_submanifold_conv3d(ff, coords_c, shape, wf, bf, nc)[0].backward(cot)

        row["flex_first_fwd_bwd_s"] = first(flex_fwd_bwd)
        row["flex_fwd_bwd_ms"] = bench(flex_fwd_bwd)

        def flex_fwd_bwd_fresh():
            ff.grad = wf.grad = bf.grad = None
            flex_fwd_bwd()

        row["flex_fwd_bwd_fresh_ms"] = bench(flex_fwd_bwd_fresh)
        # gradients against ours (same cotangent)
        xf.feats.grad = None
        wr.grad = None
        ours_fwd_bwd()
        ff.grad = None
        wf.grad = None
        flex_fwd_bwd()
        row["grad_in_rel"] = rel_err(ff.grad, xf.feats.grad)
        row["grad_w_rel"] = rel_err(wf.grad, wr.grad)
        del nc, cache
    log(str({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}))
    return row


def markdown_vs_flexgemm(rows, device_name, flex_note) -> str:
    f = lambda r, k, fmt: format(r[k], fmt) if k in r else "-"
    lines = [f"Submanifold conv 3x3x3, ours (omnivox.sparse, Triton) vs FlexGEMM "
             f"(masked implicit GEMM split-K); {device_name}; torch {torch.__version__}; {datetime.date.today()}; "
             f"FlexGEMM: {flex_note}. Neighbour maps cached; medians of triton.testing.do_bench; "
             "rel err: ||out - ref|| / ||ref|| on 4096 random rows against a float64 reference.", "",
             "| N | C | nbrs/voxel | map ms ours / flex | fwd ms ours / flex | fwd+bwd ms ours / flex "
             "| first fwd s ours / flex | first fwd+bwd s ours / flex | rel err ours / flex | flex vs ours "
             "(out, grad in, grad w) | ours bwd ms: grad in / grad w | fwd+bwd ms, fresh grads, ours / flex "
             "| ours outside kernels ms |",
             "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['N']:,} | {r['C']} | {r['ours_pairs_per_voxel']:.1f} | {f(r, 'ours_map_ms', '.2f')} / "
            f"{f(r, 'flex_map_ms', '.2f')} | {f(r, 'ours_fwd_ms', '.3f')} / {f(r, 'flex_fwd_ms', '.3f')} | "
            f"{f(r, 'ours_fwd_bwd_ms', '.3f')} / {f(r, 'flex_fwd_bwd_ms', '.3f')} | "
            f"{f(r, 'ours_first_fwd_s', '.2f')} / {f(r, 'flex_first_fwd_s', '.2f')} | "
            f"{f(r, 'ours_first_fwd_bwd_s', '.2f')} / {f(r, 'flex_first_fwd_bwd_s', '.2f')} | "
            f"{f(r, 'ours_rel_err_f64', '.1e')} / {f(r, 'flex_rel_err_f64', '.1e')} | "
            f"{f(r, 'flex_vs_ours_rel', '.1e')}, {f(r, 'grad_in_rel', '.1e')}, {f(r, 'grad_w_rel', '.1e')} | "
            f"{f(r, 'ours_bwd_input_ms', '.3f')} / {f(r, 'ours_bwd_weight_ms', '.3f')} | "
            f"{f(r, 'ours_fwd_bwd_fresh_ms', '.3f')} / {f(r, 'flex_fwd_bwd_fresh_ms', '.3f')} | "
            f"{f(r, 'ours_outside_kernels_ms', '.3f')} |")
    lines += ["", "fwd+bwd: gradients accumulate into the previous step's (an add over feats, weight and bias per "
              "step, both sides); fresh grads: set to None before each step, as after `zero_grad()`. Ours outside "
              "kernels: fwd+bwd (fresh) less fwd, grad in and grad w timed alone."]
    return "\n".join(lines)


def tile_candidates(c: int, dtype) -> list:
    """(name, forward tiles or None, weight-gradient tiles or None, sort window): the rule, then one change at a
    time (pipelining depth, K step, output width, rows per block, warps, sort window) to check the rule."""
    from dataclasses import replace

    from omnivox.sparse.kernels.triton import submconv as T

    rule, wrule = T.forward_tiles(c, c, dtype), T.weight_grad_tiles(c, c, dtype)
    everything = T.DEFAULT_SORT_WINDOW
    fwd = [("rule", rule, everything),
           ("stages 3 (1 gather in flight)", replace(rule, num_stages=3), everything),
           ("stages 7 (3 in flight)" if rule.num_stages < 7 else "stages 5 (2 in flight)",
            replace(rule, num_stages=7 if rule.num_stages < 7 else 5), everything),
           ("rows 64", replace(rule, block_rows=64), everything),
           ("sorted in windows of 65536 rows", rule, 65536)]
    if c >= 128:
        fwd.append(("K step 128", replace(rule, block_k=128, num_stages=5), everything))
    if rule.block_m >= 256:
        fwd.append(("output tile 128", replace(rule, block_m=128), everything))
    if rule.num_warps == 8:
        fwd.append(("4 warps", replace(rule, num_warps=4), everything))
    wgrad = [("rule", wrule), ("stages 3", replace(wrule, num_stages=3)), ("stages 7", replace(wrule, num_stages=7)),
             ("8 warps", replace(wrule, num_warps=8)), ("32 pairs per step", replace(wrule, block_rows=32))]
    return ([(f"fwd {name}", tiles, None, window) for name, tiles, window in fwd]
            + [(f"grad w {name}", None, tiles, everything) for name, tiles in wgrad])


def sweep_tiles_level(coords, c, bench, log, out_of_time, dtype=torch.bfloat16) -> list:
    """Forward and weight-gradient times of `tile_candidates` on one level, outputs compared with the rule's.
    Each candidate's first call (compilation, new schedule) is reported too. Runs where ``coords`` are (CUDA;
    the CPU only under TRITON_INTERPRET=1, as a dry run)."""
    from omnivox.sparse.kernels.triton import submconv as T

    n, device = coords.shape[0], coords.device

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    g = torch.Generator(device=device).manual_seed(n + 1)
    feats = torch.randn(n, c, device=device, generator=g).to(dtype)
    weight = (torch.randn(c, 27, c, device=device, generator=g) / (27 * c) ** 0.5).to(dtype)
    bias = torch.randn(c, device=device, generator=g).to(dtype)
    cot = torch.randn(n, c, device=device, generator=g).to(dtype)
    nmap = SF.neighbor_map(SparseTensor.from_coords(coords, feats))
    rows, base = [], {}
    for name, tiles, wtiles, window in tile_candidates(c, dtype):
        if out_of_time():
            log(f"sweep N={n} C={c}: out of time before {name}")
            break
        if tiles is not None:
            def run():
                return T.submanifold_conv3d_triton(feats, nmap, weight, bias, sort_window=window, tiles=tiles)
            config = tiles
        else:
            def run():
                return T.submanifold_conv3d_backward_triton(cot, feats, nmap, weight, False, True,
                                                            weight_tiles=wtiles)[1]
            config = wtiles
        kind = name.split(" ")[0] + (" w" if wtiles is not None else "")
        try:
            sync()
            t0 = time.perf_counter()
            out = run()
            sync()
            first_s = time.perf_counter() - t0
            ms = bench(run)
        except Exception as error:  # a configuration that does not compile or fit: report, go on
            log(f"sweep N={n} C={c} {name}: failed {type(error).__name__}: {str(error)[:160]}")
            continue
        base.setdefault(kind, (ms, out))
        row = {"N": n, "C": c, "config": name, "tiles": str(config), "window": window if window < n else "all",
               "ms": ms, "vs_rule": base[kind][0] / ms, "first_s": first_s, "rel_diff": rel_err(out, base[kind][1])}
        log(str({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
        rows.append(row)
    return rows


def markdown_sweep(rows) -> str:
    lines = ["Tile and schedule candidates (bf16; one change from the rule at a time; medians of do_bench, "
             "rep 100 ms; 'rule / this' above 1 = the candidate is faster; rel diff = against the rule's output):", "",
             "| N | C | candidate | tiles | ms | rule / this | first call s | rel diff |", "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['N']:,} | {r['C']} | {r['config']} | {r['tiles'].replace('TileConfig', '')} | "
                     f"{r['ms']:.3f} | {r['vs_rule']:.2f} | {r['first_s']:.2f} | {r['rel_diff']:.1e} |")
    return "\n".join(lines)


def run_vs_flexgemm(args, log) -> None:
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    flex_gemm, flex_spconv, why = _load_flexgemm() if device == "cuda" else (None, None, "no CUDA device")
    flex_note = f"{getattr(flex_gemm, '__file__', '?')}" if flex_gemm is not None else f"not available ({why})"
    log(f"flexgemm: {flex_note}")
    top = 64 if args.smoke else 1024
    if args.asset:
        xyz = asset_coords(args.asset, top, device)
    elif args.coords:
        xyz = torch.from_numpy(np.load(args.coords).astype(np.int32)).to(device)
    else:
        xyz = shell_coords(top, device)
    levels = 2 if args.smoke else args.levels
    coords_list = level_coords(xyz, levels)
    log(f"levels N = {[c.shape[0] for c in coords_list]}")
    if device == "cuda":
        import triton.testing

        def bench(fn):
            return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        device_name = torch.cuda.get_device_name()
    else:
        def bench(fn):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return sorted(times)[1]
        device_name = f"CPU ({torch.get_num_threads()} threads, float32: bf16 is GPU-only here)"
    started = time.perf_counter()

    def out_of_time() -> bool:
        return args.time_budget is not None and time.perf_counter() - started > args.time_budget

    rows, sweep_rows = [], []

    def tables() -> str:
        text = markdown_vs_flexgemm(rows, device_name, flex_note)
        return text + ("\n\n" + markdown_sweep(sweep_rows) if sweep_rows else "")

    def save() -> None:  # after every step, so that a run cut short keeps what it measured
        if args.out:
            with open(args.out, "w") as f:
                f.write(tables() + "\n\n" + "\n".join(log.lines) + "\n")

    for level, coords in enumerate(coords_list):
        c = LEVELS[level][1] if not args.smoke else 16 * 2 ** level
        if level < args.from_level:
            continue
        if out_of_time():
            log(f"vs-flexgemm N={coords.shape[0]} C={c}: skipped, past --time-budget {args.time_budget} s")
            continue
        try:
            rows.append(bench_vs_flexgemm_level(coords, c, top >> level, bench, device, flex_spconv, log))
        except Exception as exc:  # keep the other shapes' numbers when one fails
            log(f"vs-flexgemm N={coords.shape[0]} C={c} failed: {exc!r}")
        if device == "cuda":
            torch.cuda.empty_cache()
        save()
    if args.sweep and device == "cuda":
        def bench_short(fn):
            return triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median")

        for level, coords in enumerate(coords_list):
            c = LEVELS[level][1] if not args.smoke else 16 * 2 ** level
            if level >= args.from_level and c in args.sweep_channels and not out_of_time():
                sweep_rows += sweep_tiles_level(coords, c, bench_short, log, out_of_time)
                torch.cuda.empty_cache()
                save()
    print(tables())
    save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coords", help="(N, 3) integer .npy of voxels on a 1024 grid")
    parser.add_argument("--asset", help="a mesh file: its surface voxels on a 1024 grid are the coordinates")
    parser.add_argument("--cpu", action="store_true", help="time the plain PyTorch path on the CPU only")
    parser.add_argument("--out", help="write the markdown tables here")
    parser.add_argument("--levels", type=int, default=5)
    parser.add_argument("--from-level", type=int, default=0,
                        help="with --vs-flexgemm: measure levels from this one on (0 = the finest)")
    parser.add_argument("--vs-flexgemm", action="store_true",
                        help="ours against FlexGEMM's submanifold conv (bench/build_reference.sh builds it)")
    parser.add_argument("--smoke", action="store_true", help="with --vs-flexgemm: a 64^3 shell, 2 small levels")
    parser.add_argument("--sweep", action="store_true",
                        help="with --vs-flexgemm: afterwards, time other tile configurations and sort windows of ours")
    parser.add_argument("--sweep-channels", type=int, nargs="+", default=[128, 256],
                        help="levels (by channel count) the sweep runs on")
    parser.add_argument("--time-budget", type=float,
                        help="with --vs-flexgemm: seconds after which remaining levels and sweep steps are skipped")
    args = parser.parse_args()
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    log.lines = lines
    if args.vs_flexgemm:
        run_vs_flexgemm(args, log)
        return

    device = "cpu" if args.cpu else "cuda"
    if args.asset:
        xyz = asset_coords(args.asset, 1024, device)
        source = args.asset
    elif args.coords:
        xyz = torch.from_numpy(np.load(args.coords).astype(np.int32)).to(device)
        source = args.coords
    else:
        xyz = shell_coords(1024, device)
        source = "sphere shell r = 0.4 R"
    coords_list = level_coords(xyz, args.levels)
    log(f"coords: {source}; levels N = {[c.shape[0] for c in coords_list]}")

    if args.cpu:
        log(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, {datetime.date.today()}")
        bench_cpu(coords_list, log)
        return

    import triton.testing

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")

    device_name = torch.cuda.get_device_name()
    matmul_tflops, copy_tbps = measure_ceilings(bench)
    log(f"{device_name}: matmul {matmul_tflops:.0f} TFLOP/s, copy {copy_tbps:.2f} TB/s")
    windows = [1, 512, 4096, 1 << 30]
    conv_rows = []
    for coords, (_, c) in zip(coords_list, LEVELS):
        try:
            conv_rows.append(bench_conv_gpu(coords, c, bench, matmul_tflops, copy_tbps, windows, log))
        except Exception as exc:  # keep the other shapes' numbers when one fails
            log(f"conv N={coords.shape[0]} C={c} failed: {exc!r}")
        torch.cuda.empty_cache()
    attn_rows = bench_attention_gpu(bench, matmul_tflops, log)
    table = markdown(conv_rows, attn_rows, matmul_tflops, copy_tbps, device_name, windows)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
