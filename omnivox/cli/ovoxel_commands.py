"""O-Voxel commands: demo, info."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from omnivox.cli.main import app


@app.command()
def demo(
    out: Path = typer.Option(Path("omnivox-demo"), "--out", "-o", help="Output folder."),
    resolution: int = typer.Option(256, "--resolution", "-r", help="Grid resolution per axis."),
) -> None:
    """Build textured shapes in code, convert them to O-Voxel and back (.vxz, .ply, textured .glb), report fidelity."""
    from omnivox.cli.checks import fail, output_folder

    try:
        output_folder(out, "--out")
        if not 1 <= resolution <= 4096:  # omnivox.ovoxel.grid.MAX_RESOLUTION
            raise ValueError(f"--resolution must be in [1, 4096], got {resolution}")
    except ValueError as error:
        raise fail("demo", error) from error
    typer.echo("loading torch and numba...")
    from omnivox.demo import run_demo

    results = run_demo(out, resolution, log=typer.echo)
    typer.echo(f"O-Voxel round trip at {resolution}^3 (mesh -> O-Voxel -> .vxz -> mesh), outputs in {out}/")
    header = (f"{'shape':<8} {'tris':>6} {'voxels':>9} {'Chamfer x1e6':>13} {'normal cons.':>13} "
              f"{'.vxz KiB':>9} {'geom s':>7} {'mat s':>7} {'io s':>6} {'mesh s':>7} {'glb s':>6}")
    typer.echo(header)
    typer.echo("-" * len(header))
    for r in results:
        typer.echo(f"{r.name:<8} {r.triangles:>6} {r.voxels:>9,} {r.chamfer_x1e6:>13.4f} {r.normal_consistency:>13.5f} "
                   f"{r.vxz_bytes / 1024:>9.1f} {r.seconds_geometry:>7.3f} {r.seconds_materials:>7.3f} "
                   f"{r.seconds_write_read:>6.3f} {r.seconds_extract:>7.3f} {r.seconds_export:>6.2f}")
    typer.echo(f"metrics: {out / 'metrics.json'}")


@app.command()
def info(
    path: Path = typer.Argument(..., help="A .vxz file."),
    as_json: bool = typer.Option(False, "--json", help="Print the header as JSON."),
) -> None:
    """Show a .vxz file's resolution, voxel count and attributes (reads the header only)."""
    from omnivox.cli.checks import fail, input_file
    from omnivox.ovoxel.io.vxz import read_vxz_info  # the header reader alone: no numba, no torch

    try:
        header = read_vxz_info(input_file(path, (".vxz",)))
    except (OSError, ValueError) as error:
        raise fail("info", error) from error
    chunks = header.get("chunks", [])
    size = header["chunk_size"]
    # The grid is not stored; the smallest power of two holding every chunk is what the data implies.
    extent = max((max(c["idx"]) + 1 for c in chunks), default=1) * size
    summary = {
        "file": str(path),
        "num_voxel": header["num_voxel"],
        "attributes": {name: channels for name, channels in header["attr"]},
        "chunk_size": size,
        "chunks": len(chunks),
        "min_resolution": extent,
        "filter": header["filter"],
        "compression": header["compression"],
        "source_up_axis": header.get("source_up_axis"),
        "compression_level": header["compression_level"],
        "raw_size": header["raw_size"],
        "compressed_size": header["compressed_size"],
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    # The file does not store its grid; its chunks only bound it (a 128^3 asset sits in one 256^3 chunk).
    typer.echo(f"{path}: {summary['num_voxel']:,} voxels in {summary['chunks']} chunk(s) of {size}^3 "
               f"(the grid is not stored; the chunks span {extent}^3)")
    typer.echo("attributes: " + ", ".join(f"{k} ({v})" for k, v in summary["attributes"].items()))
    source_up = summary["source_up_axis"]
    typer.echo("frame: Z-up" + (f" (converted from a {source_up.upper()}-up file)" if source_up else
                                " (the file does not say which way its source stood)"))
    typer.echo(f"storage: {summary['compression']} level {summary['compression_level']}, filter {summary['filter']}, "
               f"{summary['raw_size']:,} -> {summary['compressed_size']:,} bytes")
