"""Profile the torch (GPU) mesh -> dual grid path: wall time, then the top kernels (torch profiler).

    PYTHONPATH=. python bench/profile_scan_torch.py bench/.data/torus.npz 1024
"""

import sys
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from omnivox.ovoxel import mesh_to_dual_grid

data = np.load(sys.argv[1])
G = int(sys.argv[2])
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
v = torch.from_numpy(data["vertices"]).to(dev)
f = torch.from_numpy(data["faces"].astype(np.int64)).to(dev)
for _ in range(3):
    sync()
    t = time.perf_counter()
    coords, _, _ = mesh_to_dual_grid(v, f, G)
    sync()
    print(f"N={len(coords)} {1000 * (time.perf_counter() - t):.1f} ms", flush=True)
activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
with profile(activities=activities) as prof:
    mesh_to_dual_grid(v, f, G)
    sync()
key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
print(prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=40))
