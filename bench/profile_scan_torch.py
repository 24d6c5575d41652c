"""Stage timings of the torch (GPU) mesh -> dual grid path, for finding its bottleneck."""

import sys
import time

import numpy as np
import torch

from omnivox.ovoxel.grid import Grid
from omnivox.ovoxel.kernels import scan_torch as st
from omnivox.ovoxel.dual_grid import boundary_edges

data = np.load(sys.argv[1])
G = int(sys.argv[2])
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
v = torch.from_numpy(data["vertices"]).to(dev)
f = torch.from_numpy(data["faces"].astype(np.int64)).to(dev)
grid = Grid.make(G)
edges = torch.from_numpy(boundary_edges(data["faces"].astype(np.int64), len(data["vertices"]))).to(dev)
for rep in range(2):
    marks = []

    def mark(name):
        sync()
        marks.append((name, time.perf_counter()))

    mark("start")
    res = torch.as_tensor(grid.resolution, device=dev)
    tris = (v - torch.as_tensor(grid.lo, device=dev)).float()[f]
    tri, axis, owner, point = st.scan_crossings(tris, grid)
    mark("scan")
    normals, Qt = st.plane_quadrics(tris)
    inc = st._incidences(owner, axis).reshape(-1, 3)
    keys, vox = st._first_touch(st._keys(inc, res))
    mark("first_touch")
    n = len(keys)
    coords = torch.stack([keys // (res[1] * res[2]), keys // res[2] % res[1], keys % res[2]], 1)
    sorted_keys, sort_idx = torch.sort(st._keys(coords, res))
    psum = st.segment_sum(point.repeat_interleave(4, 0), vox, n).float()
    mark("psum")
    ft, fv = st._face_pairs(tris, normals, grid, sorted_keys, sort_idx)
    mark("face_pairs")
    be, bv, Qb = st._boundary_pairs(tris.new_zeros(0), edges, grid, sorted_keys, sort_idx) if False else (None, None, None)
    Q = st.segment_sum(torch.cat([Qt[tri.repeat_interleave(4)].double(), Qt[ft].double()]), torch.cat([vox, fv]), n)
    mark("Q segment_sum")
    dual = st.solve(Q, coords, grid)
    mark("solve")
    print(" ".join(f"{b[0]}={1000 * (b[1] - a[1]):.1f}ms" for a, b in zip(marks, marks[1:])), f"N={n}", flush=True)

if dev.type == "cuda":
    from torch.profiler import ProfilerActivity, profile

    from omnivox.ovoxel import mesh_to_dual_grid

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        mesh_to_dual_grid(v, f, G)
        sync()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=40))
