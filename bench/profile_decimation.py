"""Where the GPU decimation's time goes (issue 16): the early step of the export, `mesh/spot` at 1024^3.

Converts the asset on the device, then runs `collapse.decimate_in_rounds` from the extracted surface to the export's
face budget three times: the first warms the kernels, the second is timed round by round (each round synchronised),
the third runs under `torch.profiler` and lists the operators by device time and the host-side synchronisations.

Usage (GPU machine): python bench/profile_decimation.py --resolution 1024 --out results/profile.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_end_to_end import convert_real_asset  # noqa: E402
from bench.bench_pipelines import MESH  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mesh", type=Path, default=MESH)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--target", type=int, default=200_000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from omnivox.ovoxel import collapse, meshops_torch

    device = torch.device(args.device)
    asset = convert_real_asset(args.mesh, args.resolution, device)
    vertices = asset.vertices.to(device)
    faces = meshops_torch.drop_degenerate_and_duplicate_faces(vertices, asset.faces.to(device).long())
    lines = [f"{args.mesh.name} at {args.resolution}^3: {len(faces):,} faces -> {args.target:,}, "
             f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}"]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    collapse.decimate_in_rounds(vertices, faces, args.target)  # warm-up
    sync()

    rounds = []
    original = collapse._collapse_round

    def timed_round(v, f, q, target, considered):
        sync()
        start = time.perf_counter()
        out = original(v, f, q, target, considered)
        sync()
        rounds.append((len(f), considered, out[3], out[4], time.perf_counter() - start))
        return out

    collapse._collapse_round = timed_round
    sync()
    start = time.perf_counter()
    _, out_faces = collapse.decimate_in_rounds(vertices, faces, args.target)
    sync()
    total = time.perf_counter() - start
    collapse._collapse_round = original
    lines.append(f"whole decimation {total:.3f} s, {len(rounds)} rounds, {len(out_faces):,} faces out")
    lines.append("faces_in considered applied candidates ms")
    lines += [f"{f:>10,} {c:>10,} {a:>9,} {n:>10,} {s * 1e3:8.1f}" for f, c, a, n, s in rounds]

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        collapse.decimate_in_rounds(vertices, faces, args.target)
        sync()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    lines.append(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60))
    lines.append(prof.key_averages().table(sort_by="cpu_time_total", row_limit=20, max_name_column_width=60))
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text[:6000])


if __name__ == "__main__":
    main()
