"""Run the Triton conv kernels in Triton's CPU interpreter and compare them with the PyTorch path.

Started by test_sparse_submconv_kernels.py in a subprocess with TRITON_INTERPRET=1 (the interpreter must be
chosen before triton is imported, so it cannot run inside the pytest process). Exits non-zero on a mismatch.
bf16 is left out: the interpreter's bf16 dot product is wrong (a Triton interpreter bug, seen with triton
3.6); bf16 is covered by the GPU tests.
"""

import sys

import numpy as np
import torch
from triton.runtime import interpreter

from omnivox.sparse.kernels import reference as R
from omnivox.sparse.kernels.triton import submconv as T
from omnivox.sparse.maps import NeighborMap


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


def main() -> int:
    _patch_interpreter_scalar_index()
    g = torch.Generator().manual_seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    occ = torch.rand(3, 7, 7, 7, generator=g) < 0.3
    occ[1] = False  # empty batch item
    occ[2] = False
    occ[2, 6, 0, 6] = True  # single boundary voxel
    occ[0, 0, 0, 0] = occ[0, 6, 6, 6] = True
    coords = occ.nonzero().int()
    nmap = NeighborMap(R.neighbor_map_reference(coords))
    failures = []
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
        for c_in, c_out, window in ((20, 37, 1), (16, 16, 8), (5, 130, 4096)):
            feats = torch.randn(coords.shape[0], c_in, generator=g).to(dtype)
            weight = torch.randn(c_out, 27, c_in, generator=g).to(dtype)
            bias = torch.randn(c_out, generator=g)
            grad_out = torch.randn(coords.shape[0], c_out, generator=g).to(dtype)
            out = T.submanifold_conv3d_triton(feats, nmap, weight, bias, sort_window=window)
            ref = R.submanifold_conv3d_reference(feats, nmap.table, weight, bias)
            gi, gw = T.submanifold_conv3d_backward_triton(grad_out, feats, nmap, weight, sort_window=window)
            gi_ref, gw_ref = R.submanifold_conv3d_backward_reference(grad_out, feats, nmap.table, weight)
            for name, a, b in (("forward", out, ref), ("grad_input", gi, gi_ref), ("grad_weight", gw, gw_ref)):
                err = rel(a, b)
                print(f"{dtype} Ci={c_in} Co={c_out} window={window} {name}: rel err {err:.2e}")
                if not err <= tol or a.dtype != b.dtype or a.shape != b.shape:
                    failures.append((dtype, c_in, c_out, name, err))
    print("FAILURES", failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
