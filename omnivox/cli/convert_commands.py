"""`omnivox convert`: a 3D asset file -> one O-Voxel `.vxz` file with geometry and PBR attributes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from omnivox.cli.main import app
from omnivox.cli.checks import ASSET_SUFFIXES, compute_device, fail, input_file, output_file
from omnivox.cli.progress import progress_bar


@app.command()
def convert(
    source: Path = typer.Argument(..., help="Input asset: .glb, .gltf, .obj, .ply or .stl."),
    output: Path = typer.Argument(..., help="Output .vxz file."),
    resolution: int = typer.Option(512, "--resolution", "-r", help="Grid resolution per axis."),
    device: Optional[str] = typer.Option(None, help="Where to compute: cpu or cuda (default: cuda when available)."),
    mip_level_offset: float = typer.Option(0.0, help="Added to every texture's mip level (negative = sharper)."),
    emissive: bool = typer.Option(False, help="Also store the emissive colour (3 channels)."),
    compression: str = typer.Option("lzma", help="vxz codec: lzma, deflate, zstd or none."),
    up: Optional[str] = typer.Option(None, "--up", help="Up axis of the file: y or z (default: y for .glb/.gltf/.obj, "
                                               "z for .stl/.ply). The O-Voxel is Z-up."),
    allow_outside_refs: bool = typer.Option(False, "--allow-outside-refs", help="Follow buffer, image and material "
                                            "references that leave the asset's folder (trusted files only)."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Write the file even if no voxel is occupied."),
) -> None:
    """Load an asset, turn it Z-up, fit it into the unit box and write its O-Voxel (vertices, intersected,
    materials); the file's up axis is recorded in the .vxz header."""
    import time

    start = time.perf_counter()
    try:
        input_file(source, ASSET_SUFFIXES, "input asset")
        output_file(output, (".vxz",))
        if up is not None and up not in ("y", "z"):
            raise ValueError(f"--up must be y or z, got {up!r}")
        if not 1 <= resolution <= 4096:  # omnivox.ovoxel.grid.MAX_RESOLUTION
            raise ValueError(f"--resolution must be in [1, 4096], got {resolution}")
        from omnivox.ovoxel.io.compression import make_compressor, resolve_level

        make_compressor(compression, resolve_level(compression, None))  # an unknown or missing codec fails here
        from omnivox.assets import load_asset
        from omnivox.ovoxel.io import write_vxz
        from omnivox.ovoxel.convert import scene_to_ovoxel

        device = compute_device(device)
        if device == "cpu":
            from omnivox.ovoxel.kernels import kernels_need_compiling

            if kernels_need_compiling():
                typer.echo("compiling CPU kernels with numba (first run only, about 1-2 minutes)...", err=True)
        progress = progress_bar()
        progress("convert", 0, 3)
        scene = load_asset(source, up_axis=up, allow_outside=allow_outside_refs).normalized()
        progress("convert", 1, 3)
        record = scene_to_ovoxel(scene, resolution, mip_level_offset=mip_level_offset, emissive=emissive,
                                 device=device)
        coords = record.pop("coords")
        if len(coords) == 0 and not allow_empty:
            raise ValueError(f"{source}: {scene.num_faces} triangles but no voxel at {resolution}^3 (degenerate or "
                             "zero-area geometry); pass --allow-empty to write an empty file")
        output.parent.mkdir(parents=True, exist_ok=True)
        progress("convert", 2, 3)
        write_vxz(output, coords, record, compression=compression, source_up_axis=scene.source_up_axis)
        progress("convert", 3, 3)
    except (ValueError, TypeError, OSError, ImportError, MemoryError) as error:
        raise fail("convert", error) from error
    typer.echo(
        f"{source} -> {output}: {len(coords)} voxels at {resolution}^3, {scene.num_faces} triangles, "
        f"{len(scene.materials)} materials, attributes {', '.join(record)}, {scene.source_up_axis.upper()}-up file "
        f"({time.perf_counter() - start:.2f} s)"
    )
