"""Render every asset in ../shared/assets with `omnivox render` (PBR panel + 8-view grid) to look at them.

    python bench/render_all_assets.py [--out /tmp/renders] [--resolution 256]

Prints one line per asset with the time it took; the PNGs land in ``--out`` (outside the repository).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from typer.testing import CliRunner

from omnivox.cli import app

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl")
# `omnivox render` takes STL files as Z-up (the 3D-printing convention, which the Thingi10K files follow); these two
# trimesh test parts were saved Y-up (their thin / short axis is y), so they get `--up y` here.
UP_OVERRIDES = {"1002_tray_bottom.STL": "y", "large_block.STL": "y"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/renders"))
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--only", default="", help="substring filter on the asset path")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in ASSETS.rglob("*") if p.suffix.lower() in SUFFIXES and args.only in str(p))
    runner = CliRunner()
    for path in files:
        start = time.perf_counter()
        target = args.out / f"{path.stem}.png"
        up = ["--up", UP_OVERRIDES[path.name]] if path.name in UP_OVERRIDES else []
        result = runner.invoke(app, ["render", str(path), "-o", str(target), "--panel", "--grid",
                                     "--resolution", str(args.resolution), *up])
        status = "ok" if result.exit_code == 0 else f"FAILED: {result.output.strip()[-300:]}"
        print(f"{path.relative_to(ASSETS)}: {time.perf_counter() - start:.1f} s {status}", flush=True)


if __name__ == "__main__":
    main()
