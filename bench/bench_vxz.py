"""Benchmark `.vxz` writing and reading on a sphere shell of about one million voxels.

Usage:
    python bench/bench_vxz.py [--resolution 512] [--repeat 3] [--compressions lzma deflate zstd none]

For every filter x compression it reports the file size and the best-of-``repeat`` write and read times, as
seconds and as MB/s of raw data (12 bytes of int32 coordinates + the attribute bytes per voxel). Baselines
measured in the same run, on the same data:

* ``codec s``: the time the compressor alone needs for exactly the streams the writer compresses (taken from an
  uncompressed file with the same filter); ``x codec`` = write time / codec time, so 1.0 means no overhead
  beyond the unavoidable compression.
* ``npz``: ``np.savez_compressed`` / ``np.load`` of the same arrays (what a user might use instead).

A second table writes many small files (a shell at ``--small-resolution``, one chunk), where the fixed cost per
compressed stream dominates.
"""

from __future__ import annotations

import argparse
import io as stdio
import json
import platform
import struct
import time

import numpy as np

from omnivox.ovoxel import io
from omnivox.ovoxel.io import compression as codecs

FILTERS = ("none", "parent", "neighbor")


def sphere_shell(resolution: int, seed: int = 0):
    """Voxels within one voxel of a sphere of radius 0.4 * resolution, with smooth PBR-like attributes."""
    rng = np.random.default_rng(seed)
    radius = 0.4 * resolution
    centre = resolution / 2
    coords = []
    for x in range(resolution):  # slice by slice: a dense 512^3 grid would need gigabytes
        yz = np.stack(np.meshgrid(np.arange(resolution), np.arange(resolution), indexing="ij"), -1).reshape(-1, 2)
        distance = np.sqrt((x + 0.5 - centre) ** 2 + ((yz + 0.5 - centre) ** 2).sum(1))
        hits = yz[np.abs(distance - radius) < 1.0]
        coords.append(np.concatenate([np.full((len(hits), 1), x), hits], axis=1))
    coords = np.concatenate(coords)
    rng.shuffle(coords)  # converters emit voxels in no particular order
    unit = coords / resolution
    attrs = {
        "base_color": (unit * 255).astype(np.uint8),
        "metallic": (np.sin(unit[:, 0] * 6) * 120 + 128).astype(np.uint8),
        "roughness": rng.integers(100, 104, len(coords), dtype=np.uint8),
        "alpha": np.full(len(coords), 255, np.uint8),
    }
    return coords, attrs


def best_time(function, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compressions", nargs="+", default=["lzma", "deflate", "zstd", "none"])
    parser.add_argument("--small-resolution", type=int, default=64)
    parser.add_argument("--small-files", type=int, default=50)
    args = parser.parse_args()

    coords, attrs = sphere_shell(args.resolution)
    raw_bytes = 12 * len(coords) + sum(v.size for v in attrs.values())
    raw_mb = raw_bytes / 1e6
    print(f"# {platform.processor() or platform.machine()}, {platform.python_version()}, numpy {np.__version__}")
    print(f"# sphere shell at {args.resolution}^3: {len(coords)} voxels, {raw_mb:.1f} MB raw, "
          f"chunk_size {args.chunk_size}, best of {args.repeat}")

    # Warm the numba kernels so that compilation is not timed.
    io.decode_vxz(io.encode_vxz(coords[:1000], {k: v[:1000] for k, v in attrs.items()}, filter="parent"))
    io.decode_vxz(io.encode_vxz(coords[:1000], {k: v[:1000] for k, v in attrs.items()}, filter="neighbor"))

    print("| compression | filter | size MB | write s | write MB/s | read s | read MB/s | codec s | x codec |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for codec in args.compressions:
        level = codecs.resolve_level(codec, None)
        for filter_name in FILTERS:
            write_s, data = best_time(lambda: io.encode_vxz(coords, attrs, chunk_size=args.chunk_size,
                                                            filter=filter_name, compression=codec), args.repeat)
            read_s, (read_coords, _) = best_time(lambda: io.decode_vxz(data), args.repeat)
            if len(read_coords) != len(coords):
                raise RuntimeError("round trip lost voxels")
            streams = raw_streams(io.encode_vxz(coords, attrs, chunk_size=args.chunk_size, filter=filter_name,
                                                compression="none"))
            codec_s, _ = best_time(lambda: [codecs.make_compressor(codec, level)(b) for b in streams], args.repeat)
            ratio = "-" if codec == "none" else f"{write_s / codec_s:.2f}"  # copying bytes is not a baseline
            print(f"| {codec} | {filter_name} | {len(data) / 1e6:.2f} | {write_s:.3f} | {raw_mb / write_s:.1f} | "
                  f"{read_s:.3f} | {raw_mb / read_s:.1f} | {codec_s:.3f} | {ratio} |")

    def save_npz():
        buffer = stdio.BytesIO()
        np.savez_compressed(buffer, coord=coords.astype(np.uint16), **attrs)
        return buffer.getvalue()

    npz_write, npz_data = best_time(save_npz, args.repeat)

    def load_npz():
        with np.load(stdio.BytesIO(npz_data)) as archive:
            return {name: archive[name] for name in archive.files}

    npz_read, _ = best_time(load_npz, args.repeat)
    print(f"| npz baseline | - | {len(npz_data) / 1e6:.2f} | {npz_write:.3f} | {raw_mb / npz_write:.1f} | "
          f"{npz_read:.3f} | {raw_mb / npz_read:.1f} | - | - |")

    small_coords, small_attrs = sphere_shell(args.small_resolution, seed=1)
    print(f"\n# small files: shell at {args.small_resolution}^3, {len(small_coords)} voxels, "
          f"{len(small_attrs) + 1} streams per file, {args.small_files} files, filter 'parent'")
    print("| compression | level | files/s write | files/s read |")
    print("| --- | --- | --- | --- |")
    for codec, level in [("lzma", None), ("lzma", 6), ("deflate", None), ("zstd", None), ("none", None)]:
        if codec not in args.compressions:
            continue
        start = time.perf_counter()
        files = [io.encode_vxz(small_coords, small_attrs, filter="parent", compression=codec,
                               compression_level=level) for _ in range(args.small_files)]
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        for data in files:
            io.decode_vxz(data)
        read_s = time.perf_counter() - start
        shown = codecs.resolve_level(codec, level)
        print(f"| {codec} | {shown} | {args.small_files / write_s:.1f} | {args.small_files / read_s:.1f} |")


def raw_streams(data: bytes) -> list:
    """The stored streams of an uncompressed .vxz file."""
    start = struct.unpack(">I", data[4:8])[0]
    header, binary = json.loads(data[8:start]), data[start:]
    streams = []
    for entry in header["chunks"]:
        blob = binary[entry["ptr"][0]:entry["ptr"][0] + entry["ptr"][1]]
        streams += [blob[span[0]:span[0] + span[1]] for key, span in entry.items() if key not in ("idx", "ptr")]
    return streams


if __name__ == "__main__":
    main()
