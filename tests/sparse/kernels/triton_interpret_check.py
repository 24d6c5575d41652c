"""Run the Triton conv kernels in Triton's CPU interpreter and compare them with float64 references.

Started by test_sparse_submconv_kernels.py in a subprocess with TRITON_INTERPRET=1 (the interpreter must be
chosen before triton is imported, so it cannot run inside the pytest process). Exits non-zero on a mismatch.
bf16 is left out: the interpreter's bf16 dot product is wrong (a Triton interpreter bug, seen with triton
3.6); bf16 is covered by the GPU tests.

Cases: the tile rules at several channel counts (incl. counts that are no multiple of any tile), explicit tiny
tiles that make every loop of the kernels run several, ragged times (row blocks, K chunks, output tiles,
weight-gradient splits), and a hand-made table with a block of rows that have no neighbour at all and a
block whose rows have all 27.
"""

import sys

import numpy as np
import torch
from triton.runtime import interpreter

from omnivox.sparse.kernels import reference as R
from omnivox.sparse.kernels import schedule as S
from omnivox.sparse.kernels.triton import submconv as T
from omnivox.sparse.maps import NeighborMap

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}
TINY_TILES = T.TileConfig(block_rows=32, block_k=16, block_m=16, num_warps=4, num_stages=3)


def _patch_interpreter_scalar_index() -> None:
    # The interpreter stores scalars as 1-element arrays and converts them with int(array), which
    # numpy >= 2.4 rejects for 1-D arrays; loops with run-time bounds need it.
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


class Checker:
    def __init__(self):
        self.failures = []

    def check(self, label, got, want, expected_dtype, tol):
        err = rel(got, want)
        print(f"{label}: rel err {err:.2e}")
        if not err <= tol or got.dtype != expected_dtype or got.shape != want.shape:
            self.failures.append((label, err, got.dtype, tuple(got.shape)))


def random_coords(g):
    occ = torch.rand(3, 8, 8, 8, generator=g) < 0.3
    occ[1] = False  # empty batch item
    occ[2] = False
    occ[2, 7, 0, 7] = True  # single boundary voxel
    occ[0, 0, 0, 0] = occ[0, 7, 7, 7] = True
    coords = occ.nonzero().int()
    return coords[torch.randperm(coords.shape[0], generator=g)]


def check_convolution(checker, g, nmap, dtype, c_in, c_out, window, tiles=None, weight_tiles=None):
    n = nmap.num_voxels
    feats = torch.randn(n, c_in, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, 27, c_in, generator=g, dtype=torch.float64)
    bias = torch.randn(c_out, generator=g, dtype=torch.float64)
    grad_out = torch.randn(n, c_out, generator=g, dtype=torch.float64)
    # float64 reference on the same rounded inputs
    f, w, b, go = feats.to(dtype), weight.to(dtype), bias.to(dtype), grad_out.to(dtype)
    ref = R.submanifold_conv3d_reference(f.double(), nmap.table, w.double(), b.double())
    gi_ref, gw_ref = R.submanifold_conv3d_backward_reference(go.double(), f.double(), nmap.table, w.double())
    out = T.submanifold_conv3d_triton(f, nmap, w, b, sort_window=window, tiles=tiles)
    gi, gw = T.submanifold_conv3d_backward_triton(go, f, nmap, w, sort_window=window, tiles=tiles,
                                                   weight_tiles=weight_tiles)
    label = (f"{dtype} Ci={c_in} Co={c_out} window={window if window < n else 'all'} "
             f"tiles={'rule' if tiles is None else 'tiny'}")
    tol = TOLERANCE[dtype]
    checker.check(f"{label} forward", out, ref, dtype, tol)
    checker.check(f"{label} grad_input", gi, gi_ref, dtype, tol)
    checker.check(f"{label} grad_weight", gw, gw_ref, dtype, tol)


def check_weight_grad_splits(checker, g, nmap, dtype):
    """Several shares of rows per tap (split-K), summed deterministically."""
    n, c_in, c_out = nmap.num_voxels, 17, 16
    feats = torch.randn(n, c_in, generator=g).to(dtype)
    grad_out = torch.randn(n, c_out, generator=g).to(dtype)
    pairs = S.tap_pairs(nmap.table)
    tiles = T.TileConfig(block_rows=16, block_k=16, block_m=16, num_warps=4, num_stages=2)
    got, _ = T.weight_and_bias_grad_triton(feats, grad_out, pairs, tiles, 1 << 20, torch.float32)
    _, want = R.submanifold_conv3d_backward_reference(grad_out.double(), feats.double(), nmap.table,
                                                      torch.zeros(c_out, 27, c_in, dtype=torch.float64),
                                                      needs_input_grad=False)
    checker.check(f"{dtype} weight grad in {-(-n // 64)} row shares", got, want, torch.float32,
                  TOLERANCE[dtype])
    again, _ = T.weight_and_bias_grad_triton(feats, grad_out, pairs, tiles, 1 << 20, torch.float32)
    if not torch.equal(got, again):
        checker.failures.append((f"{dtype} weight grad not deterministic", 0.0, got.dtype, tuple(got.shape)))


def check_hand_made_table(checker, g, dtype):
    """Rows 0-15 have no neighbour at all (their block has no slot: output = bias), rows 16-31 have all 27
    taps, the last block is ragged. The forward needs no symmetric map, so any table is a valid input."""
    n = 16 * 3 + 5
    table = torch.randint(-1, n, (n, 27), generator=g, dtype=torch.int32)
    table[:16] = -1
    table[16:32] = torch.randint(0, n, (16, 27), generator=g, dtype=torch.int32)
    nmap = NeighborMap(table)
    feats = torch.randn(n, 19, generator=g).to(dtype)
    weight = torch.randn(23, 27, 19, generator=g).to(dtype)
    bias = torch.randn(23, generator=g)
    schedule = S.block_schedule(table, 16, sort_window=1)
    assert schedule.slot_offsets[1] == 0 and schedule.slot_offsets[2] == 27, schedule.slot_offsets
    out = T.submanifold_conv3d_triton(feats, nmap, weight, bias, sort_window=1, tiles=TINY_TILES)
    ref = R.submanifold_conv3d_reference(feats.double(), table, weight.double(), bias.double())
    checker.check(f"{dtype} hand-made table forward", out, ref, dtype, TOLERANCE[dtype])
    if not torch.equal(out[:16].double(), bias.to(dtype).double().expand(16, -1)):
        checker.failures.append((f"{dtype} rows without neighbours are not the bias", 0.0, out.dtype, (16,)))


def main() -> int:
    _patch_interpreter_scalar_index()
    g = torch.Generator().manual_seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    coords = random_coords(g)
    nmap = NeighborMap(R.neighbor_map_reference(coords))
    print(f"{nmap.num_voxels} voxels")
    checker = Checker()
    rule_cases = {torch.float32: ((20, 37, 1), (5, 130, 4096), (70, 64, S.GLOBAL_SORT)),
                  torch.float16: ((16, 16, 8), (5, 130, 4096), (70, 64, S.GLOBAL_SORT))}
    for dtype, cases in rule_cases.items():
        for c_in, c_out, window in cases:  # a fresh map each time: schedules built from scratch
            check_convolution(checker, g, NeighborMap(nmap.table), dtype, c_in, c_out, window)
        check_hand_made_table(checker, g, dtype)
    # The loops' ragged ends, once: 5 row blocks (last 31 rows), 2 K chunks (16 + 4), 2 output tiles (16 + 8).
    check_convolution(checker, g, NeighborMap(nmap.table), torch.float32, 20, 24, S.GLOBAL_SORT,
                      tiles=TINY_TILES, weight_tiles=TINY_TILES)
    check_weight_grad_splits(checker, g, nmap, torch.float32)
    print("FAILURES", checker.failures)
    return 1 if checker.failures else 0


if __name__ == "__main__":
    sys.exit(main())
