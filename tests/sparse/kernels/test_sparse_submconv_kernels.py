"""Triton convolution kernels against the PyTorch path: in Triton's CPU interpreter, and on CUDA."""

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omnivox.sparse import SparseTensor, functional as SF
from tests.conftest import HANG_GUARD_S

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_every_triton_launcher_has_a_reference():
    pytest.importorskip("triton")
    triton_mod = importlib.import_module("omnivox.sparse.kernels.triton.submconv")
    reference = importlib.import_module("omnivox.sparse.kernels.reference")
    launchers = [n for n, f in inspect.getmembers(triton_mod, inspect.isfunction)
                 if n.endswith("_triton") and f.__module__ == triton_mod.__name__ and not n.startswith("_")]
    assert "submanifold_conv3d_triton" in launchers
    for name in launchers:
        if name in ("implicit_gemm_triton", "weight_and_bias_grad_triton"):
            continue  # building blocks of the two public launchers below
        if name == "submanifold_conv3d_gradients_triton":
            continue  # the backward plus grad_out.sum(0): checked against both in the interpreter below
        assert hasattr(reference, name.replace("_triton", "_reference")), name


def test_triton_kernels_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, str(HERE / "triton_interpret_check.py"), "7"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


# ----------------------------------------------------------------------------------- tile rules
SHARED_MEMORY_LIMITS = (99 * 1024, 163 * 1024, 227 * 1024)  # consumer (sm_86/89), A100, H100 opt-in per block


@pytest.mark.parametrize("limit", SHARED_MEMORY_LIMITS)
def test_tile_rules_fit_shared_memory_and_share_one_schedule(limit):
    pytest.importorskip("triton")
    T = importlib.import_module("omnivox.sparse.kernels.triton.submconv")
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        block_rows = set()
        for c_in, c_out in [(c, c) for c in (16, 64, 128, 256, 512, 1024)] + [(5, 130), (1024, 6)]:
            tiles = T.forward_tiles(c_in, c_out, dtype, limit)
            assert T.shared_memory_bytes(tiles, dtype) <= limit, (dtype, c_in, c_out, tiles)
            assert tiles.num_stages >= 2 and tiles.block_m >= 16 and tiles.block_k >= 16
            block_rows.add(tiles.block_rows)
            wtiles = T.weight_grad_tiles(c_in, c_out, dtype, limit)
            assert T.shared_memory_bytes(wtiles, dtype, weight_grad=True) <= limit, (dtype, c_in, c_out, wtiles)
        # forward and input gradient of every layer share one cached schedule per map
        assert len(block_rows) == 1, (dtype, block_rows)
    wide = T.forward_tiles(256, 256, torch.bfloat16, 227 * 1024)
    assert wide.block_m == 256  # one program covers a 256-channel row: neighbour rows gathered once


def _compile_for_sm90(kernel, signature, constexprs, tiles):
    """Compile ``kernel`` for an H100 without a GPU (Triton's bundled ptxas), pointers and channel counts
    16-divisible as the launch specialises them."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(signature)
    aligned = [i for i, name in enumerate(names)
               if signature[name].startswith("*") or name in ("K", "M", "share_stride")]
    source = ASTSource(kernel, signature, constexprs, {(i,): [["tt.divisibility", 16]] for i in aligned})
    try:
        return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": tiles.num_warps, "num_stages": tiles.num_stages})
    except Exception as error:  # no CUDA backend in this Triton build
        pytest.skip(f"cannot compile for sm_90 here: {type(error).__name__}: {str(error)[:200]}")


@pytest.mark.parametrize("channels,mirrored", [(64, False), (128, False), (256, False), (128, True)])
def test_rule_tiles_compile_for_h100_within_the_shared_memory_model(channels, mirrored):
    """The rule's configurations compile for sm_90, pipeline their gathers (several operand buffers, waits that
    leave copies in flight), and use the shared memory `shared_memory_bytes` predicts (plus the small index
    buffers), so the fitting rule is right: for the forward and the input gradient (the weight read in place,
    along K or along M), and for the weight gradient with the bias gradient's own loop on the centre tap."""
    T = importlib.import_module("omnivox.sparse.kernels.triton.submconv")
    dtype = torch.bfloat16
    tiles = T.forward_tiles(channels, channels, dtype)
    signature = {"feats_ptr": "*bf16", "order_ptr": "*i32", "slot_offsets_ptr": "*i32", "slot_taps_ptr": "*i32",
                 "slot_neighbors_ptr": "*i32", "weight_ptr": "*bf16", "bias_ptr": "*bf16", "out_ptr": "*bf16",
                 "N": "i32", "K": "i32", "M": "i32", "MIRRORED": "constexpr", "HAS_BIAS": "constexpr",
                 "PRECISION": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "BLOCK_M": "constexpr"}
    constexprs = {"MIRRORED": mirrored, "HAS_BIAS": not mirrored, "PRECISION": "tf32", "BLOCK_N": tiles.block_rows,
                  "BLOCK_K": tiles.block_k, "BLOCK_M": tiles.block_m}
    compiled = _compile_for_sm90(T._submconv_fwd_kernel, signature, constexprs, tiles)
    predicted = T.shared_memory_bytes(tiles, dtype)
    assert predicted <= compiled.metadata.shared <= predicted + 4096, (compiled.metadata.shared, predicted)
    assert "async_copy_global_to_local" in compiled.asm["ttgir"]
    assert T._operand_buffers(tiles.num_stages) >= 3  # at least two gathers in flight under one MMA
    if mirrored:
        return

    wtiles = T.weight_grad_tiles(channels, channels, dtype)
    signature = {"feats_ptr": "*bf16", "grad_out_ptr": "*bf16", "share_bounds_ptr": "*i32", "pair_rows_ptr": "*i32",
                 "pair_neighbors_ptr": "*i32", "out_ptr": "*fp32", "bias_out_ptr": "*fp32", "K": "i32", "M": "i32",
                 "splits": "i32", "share_stride": "i32", "CENTER": "constexpr", "HAS_BIAS": "constexpr",
                 "PRECISION": "constexpr", "BLOCK_P": "constexpr", "BLOCK_K": "constexpr", "BLOCK_M": "constexpr"}
    constexprs = {"CENTER": 13, "HAS_BIAS": True, "PRECISION": "tf32", "BLOCK_P": wtiles.block_rows,
                  "BLOCK_K": wtiles.block_k, "BLOCK_M": wtiles.block_m}
    compiled = _compile_for_sm90(T._submconv_weight_grad_kernel, signature, constexprs, wtiles)
    predicted = T.shared_memory_bytes(wtiles, dtype, weight_grad=True)
    assert predicted <= compiled.metadata.shared <= predicted + 4096, (compiled.metadata.shared, predicted)
    # both loops (with and without the bias sums) are pipelined
    assert compiled.asm["ttgir"].count("async_copy_global_to_local") >= 4


def _registers_per_thread(compiled) -> int:
    """Registers per thread of a compiled kernel, read from its cubin (``EIATTR_REGCOUNT`` in ``.nv.info``)."""
    import struct

    cubin = compiled.asm["cubin"]
    shoff = struct.unpack_from("<Q", cubin, 0x28)[0]
    entry_size, count, names_index = struct.unpack_from("<HHH", cubin, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * entry_size) for i in range(count)]
    names = sections[names_index][4]
    for section in sections:
        name = cubin[names + section[0]:cubin.index(b"\0", names + section[0])]
        if name != b".nv.info":
            continue
        data, i = cubin[section[4]:section[4] + section[5]], 0
        while i < len(data):
            form, attribute = data[i], data[i + 1]
            if form == 4:  # sized value: (symbol, value) for the register count
                size = struct.unpack_from("<H", data, i + 2)[0]
                if attribute == 0x2F:
                    return struct.unpack_from("<II", data, i + 4)[1]
                i += 4 + size
            else:
                i += {3: 4, 2: 3}.get(form, 2)
    raise AssertionError("no register count in the cubin")


@pytest.mark.parametrize("channels", [128, 1024])
@pytest.mark.parametrize("out_type", ["*fp32", "*bf16"])
def test_weight_grad_kernel_with_bias_keeps_two_programs_per_sm(channels, out_type):
    """The centre tap's bias sums must not raise the weight-gradient kernel's registers past what two programs
    per SM allow (a (rows, Co) fp32 accumulator took it to 162 registers at 128 x 128 tiles with 8 warps), for
    fp32 share sums and for the gradient written straight in bf16 (one share)."""
    T = importlib.import_module("omnivox.sparse.kernels.triton.submconv")
    wtiles = T.weight_grad_tiles(channels, channels, torch.bfloat16)
    signature = {"feats_ptr": "*bf16", "grad_out_ptr": "*bf16", "share_bounds_ptr": "*i32", "pair_rows_ptr": "*i32",
                 "pair_neighbors_ptr": "*i32", "out_ptr": out_type, "bias_out_ptr": out_type, "K": "i32", "M": "i32",
                 "splits": "i32", "share_stride": "i32", "CENTER": "constexpr", "HAS_BIAS": "constexpr",
                 "PRECISION": "constexpr", "BLOCK_P": "constexpr", "BLOCK_K": "constexpr", "BLOCK_M": "constexpr"}
    constexprs = {"CENTER": 13, "HAS_BIAS": True, "PRECISION": "tf32", "BLOCK_P": wtiles.block_rows,
                  "BLOCK_K": wtiles.block_k, "BLOCK_M": wtiles.block_m}
    compiled = _compile_for_sm90(T._submconv_weight_grad_kernel, signature, constexprs, wtiles)
    registers = _registers_per_thread(compiled)
    threads = 32 * wtiles.num_warps
    assert 2 * threads * registers <= 65536, (registers, wtiles)
    assert 2 * compiled.metadata.shared <= T.DEFAULT_SHARED_MEMORY, compiled.metadata.shared


# ------------------------------------------------------------------------------------------- CUDA
def _shell_coords(resolution: int, batch: int, device) -> torch.Tensor:
    """One-voxel-thick sphere shells (surface-like, ~10 neighbours per voxel), one per batch item, plus an
    empty batch item in the middle."""
    r = resolution
    ax = torch.arange(r, device=device, dtype=torch.float32) - (r - 1) / 2
    d = (ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2).sqrt()
    shell = (d - 0.4 * r).abs() < 0.5
    xyz = shell.nonzero().int()
    parts = [torch.cat([torch.full_like(xyz[:, :1], b), xyz], 1) for b in range(batch) if b != 1]
    return torch.cat(parts)


CUDA_CASES = [  # (resolution, Ci, Co)
    (24, 16, 16),
    (32, 64, 64),
    (20, 37, 130),
    (16, 256, 256),
    (12, 6, 1024),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("resolution,c_in,c_out", CUDA_CASES)
def test_triton_matches_torch_on_cuda(dtype, tol, resolution, c_in, c_out):
    g = torch.Generator(device="cuda").manual_seed(resolution * 1000 + c_in)
    coords = _shell_coords(resolution, 3, "cuda")
    feats = torch.randn(coords.shape[0], c_in, device="cuda", generator=g).to(dtype)
    weight = (torch.randn(c_out, 3, 3, 3, c_in, device="cuda", generator=g) / (27 * c_in) ** 0.5).to(dtype)
    bias = torch.randn(c_out, device="cuda", generator=g).to(dtype)
    cot = torch.randn(coords.shape[0], c_out, device="cuda", generator=g).to(dtype)
    results = {}
    for backend in ("triton", "torch"):
        x = SparseTensor.from_coords(coords, feats.clone().requires_grad_(True), batch_size=3)
        w = weight.clone().requires_grad_(True)
        b = bias.clone().requires_grad_(True)
        out = SF.submanifold_conv3d(x, w, b, backend=backend)
        (out.feats.float() * cot.float()).sum().backward()
        results[backend] = (out.feats.detach(), x.feats.grad, w.grad, b.grad)
    for name, a, b in zip(("out", "grad_in", "grad_w", "grad_b"), results["triton"], results["torch"]):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) <= tol, f"{name}: {rel_err(a, b):.3e}"


@pytest.mark.gpu
def test_auto_backend_on_cuda_matches_float64():
    g = torch.Generator(device="cuda").manual_seed(5)
    coords = _shell_coords(20, 2, "cuda")
    feats = torch.randn(coords.shape[0], 32, device="cuda", generator=g)
    weight = torch.randn(48, 3, 3, 3, 32, device="cuda", generator=g)
    x = SparseTensor.from_coords(coords, feats)
    out = SF.submanifold_conv3d(x, weight)  # auto -> triton on CUDA
    ref = SF.submanifold_conv3d(x.to(torch.float64), weight.double(), backend="torch")
    assert rel_err(out.feats, ref.feats) <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("channels,tile_args", [
    (128, (128, 64, 128, 8, 3)),  # one gather in flight
    (128, (128, 128, 64, 4, 7)),  # 128-channel K steps, narrow output tiles, four operand buffers
    (256, (128, 64, 128, 8, 5)),  # two 128-channel output tiles per row block
    (96, (64, 32, 32, 4, 5)),  # other row blocks; ragged K and output tiles
])
def test_triton_explicit_tiles_match_float64_on_cuda(channels, tile_args):
    """Configurations other than the rule's (the benchmark's candidates) compute the same convolution."""
    T = importlib.import_module("omnivox.sparse.kernels.triton.submconv")
    R = importlib.import_module("omnivox.sparse.kernels.reference")
    tiles = T.TileConfig(*tile_args)
    wtiles = T.TileConfig(64, min(tiles.block_k, 64), min(tiles.block_m, 64), 4, tiles.num_stages)
    g = torch.Generator(device="cuda").manual_seed(channels)
    coords = _shell_coords(20, 2, "cuda")
    nmap = SF.neighbor_map(SparseTensor.from_coords(coords, torch.zeros(coords.shape[0], 1, device="cuda")))
    n = coords.shape[0]
    feats = torch.randn(n, channels, device="cuda", generator=g).bfloat16()
    weight = (torch.randn(channels, 27, channels, device="cuda", generator=g) / (27 * channels) ** 0.5).bfloat16()
    grad_out = torch.randn(n, channels, device="cuda", generator=g).bfloat16()
    out = T.submanifold_conv3d_triton(feats, nmap, weight, None, tiles=tiles)
    gi, gw = T.submanifold_conv3d_backward_triton(grad_out, feats, nmap, weight, tiles=tiles, weight_tiles=wtiles)
    ref = R.submanifold_conv3d_reference(feats.double(), nmap.table, weight.double(), None)
    gi_ref, gw_ref = R.submanifold_conv3d_backward_reference(grad_out.double(), feats.double(), nmap.table,
                                                             weight.double())
    for name, a, b in (("out", out, ref), ("grad_in", gi, gi_ref), ("grad_w", gw, gw_ref)):
        assert rel_err(a, b) <= 1e-2, f"{name}: {rel_err(a, b):.3e}"


# ---------------------------------------------------- backward: bias and weight gradients in one kernel
def check_gradients_in_interpreter() -> int:
    """Run in a subprocess with TRITON_INTERPRET=1 (see `test_fused_gradients_in_interpreter`); returns the number
    of failed checks. fp32 and fp16 (the interpreter's bf16 dot product is wrong), against float64."""
    from tests.sparse.kernels.triton_interpret_check import _patch_interpreter_scalar_index, random_coords

    _patch_interpreter_scalar_index()
    from omnivox.sparse.kernels import SubmanifoldConv3dFunction, reference as R, schedule as S
    from omnivox.sparse.kernels.triton import submconv as T
    from omnivox.sparse.maps import NeighborMap

    failures = []

    def check(label, got, want, dtype, tol):
        err = rel_err(got, want)
        ok = err <= tol and got.dtype == dtype and got.shape == want.shape and got.is_contiguous()
        print(f"{label}: rel err {err:.2e} {got.dtype} {tuple(got.shape)}{'' if ok else '  FAILED'}")
        if not ok:
            failures.append(label)

    g = torch.Generator().manual_seed(19)
    nmap = NeighborMap(R.neighbor_map_reference(random_coords(g)))
    n = nmap.num_voxels
    tiny = T.TileConfig(block_rows=16, block_k=16, block_m=16, num_warps=4, num_stages=2)
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-3}
    pairs = S.tap_pairs(nmap.table)
    # one share (straight into the outputs) and 3 shares of 64 rows (n = 171: the last one ragged) added by the
    # second kernel; ragged K and M tiles (16 + 4 / 16 + 8, and 5 / 16 + 4); bias gradients in fp32 and fp16
    cases = ((torch.float32, 20, 24, 1, torch.float32), (torch.float32, 20, 24, 1 << 20, torch.float32),
             (torch.float32, 20, 24, 1 << 20, None), (torch.float16, 5, 20, 1, torch.float16),
             (torch.float16, 5, 20, 1 << 20, torch.float32))
    for dtype, c_in, c_out, target, bias_dtype in cases:
        feats = torch.randn(n, c_in, generator=g).to(dtype)
        grad_out = torch.randn(n, c_out, generator=g).to(dtype)
        _, gw_ref = R.submanifold_conv3d_backward_reference(grad_out.double(), feats.double(), nmap.table,
                                                            torch.zeros(c_out, 27, c_in, dtype=torch.float64),
                                                            needs_input_grad=False)
        label = f"{dtype} Ci={c_in} Co={c_out} programs={target} bias={bias_dtype}"
        gw, gb = T.weight_and_bias_grad_triton(feats, grad_out, pairs, tiny, target, dtype, bias_dtype)
        check(f"{label} grad_weight", gw, gw_ref, dtype, tolerance[dtype])
        if bias_dtype is None:
            if gb is not None:
                failures.append(f"{label}: a bias gradient nobody asked for")
            continue
        check(f"{label} grad_bias", gb, grad_out.double().sum(0), bias_dtype, tolerance[dtype])
        if target > 1 and dtype == torch.float32:
            gw2, gb2 = T.weight_and_bias_grad_triton(feats, grad_out, pairs, tiny, target, dtype, bias_dtype)
            if not (torch.equal(gw, gw2) and torch.equal(gb, gb2)):
                failures.append(f"{label}: two runs differ")

    # autograd through the Triton backend: every combination of the three gradients, with and without bias
    dtype, c_in, c_out = torch.float32, 12, 20
    feats = torch.randn(n, c_in, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, 27, c_in, generator=g, dtype=torch.float64) / 9
    bias = torch.randn(c_out, generator=g, dtype=torch.float64)
    cot = torch.randn(n, c_out, generator=g, dtype=torch.float64)
    gi_ref, gw_ref = R.submanifold_conv3d_backward_reference(cot, feats, nmap.table, weight)
    combinations = [(True, needs) for needs in ((True, True, True), (False, True, False), (False, False, True),
                                                (True, False, True))]
    combinations += [(False, (True, True, False)), (False, (False, True, False))]
    for with_bias, needs in combinations:
        leaves = [t.to(dtype).requires_grad_(need) for t, need in zip((feats, weight, bias), needs)]
        out = SubmanifoldConv3dFunction.apply(leaves[0], leaves[1], leaves[2] if with_bias else None, nmap,
                                              "triton")
        (out.double() * cot).sum().backward()
        label = f"autograd bias={with_bias} needs={needs}"
        for leaf, need, want, name in zip(leaves, needs, (gi_ref, gw_ref, cot.sum(0)), ("in", "w", "b")):
            if name == "b" and not with_bias:
                continue
            if not need:
                if leaf.grad is not None:
                    failures.append(f"{label}: grad_{name} computed")
                continue
            check(f"{label} grad_{name}", leaf.grad, want, dtype, tolerance[dtype])

    # a table whose centre is not the row itself: no fused bias sum, the launcher says why
    table = nmap.table.clone()
    table[0, 13] = -1
    if S.tap_pairs(table).centre_is_self or not pairs.centre_is_self:
        failures.append("centre_is_self")
    try:
        T.weight_and_bias_grad_triton(feats.float(), cot.float(), S.tap_pairs(table), tiny, 1, torch.float32,
                                      torch.float32)
        failures.append("no error for a bias gradient on a map without centre pairs")
    except ValueError as error:
        print("raised:", error)
    _, _, gb = T.submanifold_conv3d_gradients_triton(cot.float(), feats.float(), NeighborMap(table),
                                                     weight.float(), False, True, torch.float32)
    check("bias gradient without centre pairs (one sum)", gb, cot.sum(0), torch.float32, 1e-5)
    # empty input: zeros of the right shapes and dtypes, no launch
    empty = NeighborMap(torch.zeros(0, 27, dtype=torch.int32))
    gw, gb = T.weight_and_bias_grad_triton(torch.zeros(0, 3), torch.zeros(0, 5), S.tap_pairs(empty.table), tiny,
                                           1, torch.float16, torch.float32)
    if gw.shape != (5, 27, 3) or gw.dtype != torch.float16 or gw.abs().sum() != 0 or gb.shape != (5,) \
            or gb.abs().sum() != 0:
        failures.append("empty input")
    print("FAILURES", failures)
    return len(failures)


def test_fused_gradients_in_interpreter():
    """Weight and bias gradients from one kernel (1 or 3 shares, ragged tiles, with / without bias, fp32 / fp16
    outputs) against float64, bit-equal over two runs; the autograd glue for every needs_input_grad pattern."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = ("from tests.sparse.kernels.test_sparse_submconv_kernels import check_gradients_in_interpreter as c; "
            "raise SystemExit(c())")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("resolution,c_in,c_out", CUDA_CASES)  # the shapes above: their kernels are compiled
def test_fused_gradients_match_float64_on_cuda(dtype, tol, resolution, c_in, c_out):
    """Bias gradient from the weight-gradient kernel, weight gradient in its final layout and dtype: against
    float64, for every pattern of needed gradients, with and without bias, bit-equal over two runs."""
    g = torch.Generator(device="cuda").manual_seed(resolution * 7 + c_out)
    coords = _shell_coords(resolution, 3, "cuda")
    n = coords.shape[0]
    feats = torch.randn(n, c_in, device="cuda", generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, 3, 3, 3, c_in, device="cuda", generator=g, dtype=torch.float64) / (27 * c_in) ** 0.5
    bias = torch.randn(c_out, device="cuda", generator=g, dtype=torch.float64)
    cot = torch.randn(n, c_out, device="cuda", generator=g, dtype=torch.float64)
    # float64 reference on the rounded inputs
    feats, weight, bias, cot = (t.to(dtype).double() for t in (feats, weight, bias, cot))
    x64 = SparseTensor.from_coords(coords, feats.clone().requires_grad_(True), batch_size=3)
    w64, b64 = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    (SF.submanifold_conv3d(x64, w64, b64, backend="torch").feats * cot).sum().backward()
    want = {"in": x64.feats.grad, "w": w64.grad, "b": b64.grad}
    for with_bias, needs in [(True, (True, True, True)), (True, (False, True, True)), (True, (True, False, True)),
                             (False, (True, True, False)), (False, (False, True, False))]:
        runs = []
        for _ in range(2):
            leaves = [t.to(dtype).requires_grad_(need) for t, need in zip((feats, weight, bias), needs)]
            x = SparseTensor.from_coords(coords, leaves[0], batch_size=3)
            out = SF.submanifold_conv3d(x, leaves[1], leaves[2] if with_bias else None, backend="triton")
            out.feats.backward(cot.to(dtype))
            runs.append([leaf.grad for leaf in leaves])
        for name, need, got, again in zip(("in", "w", "b"), needs, *runs):
            if not need or (name == "b" and not with_bias):
                continue
            label = f"bias={with_bias} needs={needs} grad_{name}"
            assert got.dtype == dtype and got.shape == want[name].shape and got.is_contiguous(), label
            assert rel_err(got, want[name]) <= tol, f"{label}: {rel_err(got, want[name]):.3e}"
            assert torch.equal(got, again), f"{label}: two runs differ"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_and_bias_gradient_shares_on_cuda(dtype):
    """Many shares (split-K far past the rule's) and a single one give the same sums, against float64."""
    T = importlib.import_module("omnivox.sparse.kernels.triton.submconv")
    R = importlib.import_module("omnivox.sparse.kernels.reference")
    S = importlib.import_module("omnivox.sparse.kernels.schedule")
    g = torch.Generator(device="cuda").manual_seed(3)
    coords = _shell_coords(28, 2, "cuda")
    nmap = SF.neighbor_map(SparseTensor.from_coords(coords, torch.zeros(coords.shape[0], 1, device="cuda")))
    n, c_in, c_out = coords.shape[0], 48, 80
    feats = torch.randn(n, c_in, device="cuda", generator=g).to(dtype)
    grad_out = torch.randn(n, c_out, device="cuda", generator=g).to(dtype)
    _, gw_ref = R.submanifold_conv3d_backward_reference(grad_out.double(), feats.double(), nmap.table,
                                                        torch.zeros(c_out, 27, c_in, dtype=torch.float64,
                                                                    device="cuda"), needs_input_grad=False)
    gb_ref = grad_out.double().sum(0)
    pairs = S.tap_pairs(nmap.table)
    tiles = T.weight_grad_tiles(c_in, c_out, dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for target in (1, 1 << 14):
        gw, gb = T.weight_and_bias_grad_triton(feats, grad_out, pairs, tiles, target, dtype, torch.float32)
        assert rel_err(gw, gw_ref) <= tol and rel_err(gb, gb_ref) <= 1e-5, target
        gw2, gb2 = T.weight_and_bias_grad_triton(feats, grad_out, pairs, tiles, target, dtype, torch.float32)
        assert torch.equal(gw, gw2) and torch.equal(gb, gb2), target
